"""Does a smaller statistics sample hurt where the gradient sits in few rows?

A bag-of-embeddings classifier (a 4,000 x 32 embedding, 128,330 parameters,
over the 65,536 above which the presets sample their statistics) on token
sequences drawn from a Zipf law: a batch of 32 x 16 tokens touches a few
hundred of the 4,000 rows, so most sampled blocks of the embedding's
gradient are zero and the few that are not are extrapolated. ``ae_adamw``
is trained with exact statistics and with samples of each size asked, from
the same initialisation and data order per seed; the script prints the final
held-out cross-entropy (mean and 95 % interval over seeds) and the number of
steps the clip scaled the gradient down.

  JAX_PLATFORMS=cpu python benchmarks/sample_size.py
  JAX_PLATFORMS=cpu python benchmarks/sample_size.py --samples 65536 16384 \
      --seeds 1 2 3 4 5 --rates 1e-3 1e-2
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ae_jax as ae
from ae_jax import presets

VOCAB, DIM, CLASSES, LENGTH, BATCH = 4000, 32, 10, 16, 32


def tokens(seed: int, n: int):
  """``n`` sequences of Zipf(1.1) tokens and their teacher labels."""
  rng = np.random.default_rng(seed)
  p = 1.0 / np.arange(1, VOCAB + 1) ** 1.1
  teacher = np.random.default_rng(1000).normal(size=(VOCAB, CLASSES))
  x = rng.choice(VOCAB, size=(n, LENGTH), p=p / p.sum())
  return jnp.asarray(x), jnp.asarray(teacher[x].sum(1).argmax(-1))


def loss_fn(params, x, y):
  logits = params["emb"][x].mean(1) @ params["w"] + params["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def run(sample, rate: float, seed: int, steps: int):
  """Final held-out loss and clipped steps of ``ae_adamw(rate)`` with
  ``presets.STATS_SAMPLE = sample`` (None: exact statistics)."""
  presets.STATS_SAMPLE = sample
  key = jax.random.PRNGKey(seed)
  params = {"emb": jax.random.normal(key, (VOCAB, DIM)) * 0.1,
            "w": jax.random.normal(jax.random.fold_in(key, 1),
                                   (DIM, CLASSES)) * 0.1,
            "b": jnp.zeros(CLASSES)}
  tx = ae.ae_adamw(rate)
  state = tx.init(params)
  xs, ys = tokens(seed, steps * BATCH)
  x_test, y_test = tokens(seed + 500, 4000)

  @jax.jit
  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params, value=loss)
    clipped = ae.signals(state)["clip"] < 0.999
    return optax.apply_updates(params, updates), state, clipped

  clipped = 0
  for t in range(steps):
    batch = slice(t * BATCH, (t + 1) * BATCH)
    params, state, c = step(params, state, xs[batch], ys[batch])
    clipped += int(c)
  return float(loss_fn(params, x_test, y_test)), clipped


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--samples", type=int, nargs="+", default=[65536, 16384],
                  help="sample sizes (exact statistics always run too)")
  ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
  ap.add_argument("--rates", type=float, nargs="+", default=[1e-3, 1e-2])
  ap.add_argument("--steps", type=int, default=600)
  args = ap.parse_args(argv)
  default = presets.STATS_SAMPLE
  print("| rate | statistics | held-out CE (mean ± 95 %) | per seed | "
        "clipped steps |")
  print("| --- | --- | --- | --- | --- |")
  try:
    for rate in args.rates:
      for sample in [None] + args.samples:
        res = [run(sample, rate, s, args.steps) for s in args.seeds]
        losses = np.array([r[0] for r in res])
        half = 1.96 * losses.std(ddof=1) / np.sqrt(len(losses))
        name = "exact" if sample is None else f"sample {sample}"
        print(f"| {rate:g} | {name} | {losses.mean():.4f} ± {half:.4f} | "
              f"{' / '.join(f'{v:.4f}' for v in losses)} | "
              f"{sum(r[1] for r in res)} |", flush=True)
  finally:
    presets.STATS_SAMPLE = default
  return 0


if __name__ == "__main__":
  raise SystemExit(main())

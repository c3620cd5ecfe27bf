"""AE-Swarm throughput: vmapped population vs M sequential runs (issue #3 item 3).

For each population size M, the same AE-AdamW members (small MLP, one
regression task) train ``steps`` member steps each, four ways:

* ``sequential``: M single-trajectory runs, one after the other (one jitted
  ``lax.fori_loop`` runner, called per member);
* ``vmap``: the lock-step vmapped mode with equal budgets;
* ``chunked``: unequal budgets (a soft selection's allocation of the same
  total), members one by one in one jitted ``lax.scan`` (``chunk=1``: no
  masked step is paid);
* ``chunked-4``: the same in vmapped chunks of 4 members of similar budget
  (a little masking inside a chunk);
* ``vmap-masked``: the same unequal budgets in the vmapped mode, which pays
  ``M * max B`` member steps; its rate counts only the honoured steps;
* ``adamw``: the ratio ``vmap`` / ``sequential`` for the same members with
  plain ``optax.adamw`` (no AE controller): a reference for how well the
  member's own forward and backward pass batches on this machine;
* ``AE/adamw``: the vmapped AE population's member steps per second over
  those of the same population of plain ``optax.adamw`` members (the core
  issue's population target, >= 0.9).

Prints member steps per second and the ratio to ``sequential``, side by side.
Compilation is excluded (one warm-up call each); each figure is the best of
``--repeats`` timed calls, taken in interleaved rounds (every round times
each mode once; since 2026-12-07, before that one mode's calls in a row).

  python benchmarks/swarm.py            # M in {4, 16, 64}
  python benchmarks/swarm.py --quick    # M in {4, 16}, fewer steps
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import swarm


def _best_times(runs: dict, repeats: int) -> dict[str, float]:
  """Best wall time of each run over ``repeats`` rounds, interleaved: every
  round times each run once, so a slow spell of the shared machine hits all
  of them alike rather than one mode's whole series."""
  best = {name: float("inf") for name in runs}
  for _ in range(repeats):
    for name, fn in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      best[name] = min(best[name], time.perf_counter() - start)
  return best


def _population(family, m: int, hidden: int):
  """M members of ``family`` (same key: same parameters for every family)."""
  return swarm.init_population(
      jax.random.PRNGKey(1), lambda k: swarm.init_mlp(k, (10, hidden, 1)),
      family, swarm.reference_priors(m, 3e-4))


def _modes(family, pop, data, steps: int, batch: int):
  """``(sequential, trainer)``: M single-member runs one after the other,
  and ``trainer(mode, chunk)``, a jitted :func:`swarm.train`."""
  single = jax.jit(swarm.member_runner(family, swarm.mse_loss, batch))
  members = [swarm.member(pop, i) for i in range(len(pop.steps))]

  def sequential():
    return [single(mb, data, steps)[0].params for mb in members]

  def trainer(mode, chunk=1):
    return jax.jit(lambda p, b, d: swarm.train(
        p, b, d, family=family, loss_fn=swarm.mse_loss, batch_size=batch,
        mode=mode, chunk=chunk)[0].params)

  return sequential, trainer


def measure(m: int, steps: int, *, hidden: int, batch: int, repeats: int
            ) -> dict[str, float]:
  """Member steps per second of each mode at population size ``m``."""
  data = swarm.regression_data(jax.random.PRNGKey(0))
  family = swarm.ae_adamw_family(3e-4)
  pop = _population(family, m, hidden)
  total = m * steps
  equal = jnp.full([m], steps, jnp.int32)
  scores = jax.random.uniform(jax.random.PRNGKey(2), (m,))
  weights, _ = swarm.swarm_weights(scores, 5.0)
  unequal = swarm.allocate_budgets(weights, total, steps // 4)
  assert int(unequal.sum()) == total

  sequential, trainer = _modes(family, pop, data, steps, batch)
  vmapped, chunked = trainer("vmap"), trainer("chunked")
  chunked4 = trainer("chunked", min(4, m))
  # A reference: the same members with plain optax.adamw (no controller),
  # vmapped vs sequential.
  plain = swarm.adamw_family()
  plain_pop = _population(plain, m, hidden)
  plain_sequential, plain_trainer = _modes(plain, plain_pop, data, steps,
                                           batch)
  plain_vmapped = plain_trainer("vmap")
  runs = {
      "sequential": sequential,
      "vmap": lambda: vmapped(pop, equal, data),
      "chunked": lambda: chunked(pop, unequal, data),
      "chunked-4": lambda: chunked4(pop, unequal, data),
      "vmap-masked": lambda: vmapped(pop, unequal, data),
      "plain-sequential": plain_sequential,
      "plain-vmap": lambda: plain_vmapped(plain_pop, equal, data),
  }
  for fn in runs.values():
    jax.block_until_ready(fn())   # compile
  rates = {name: total / t for name, t in _best_times(runs, repeats).items()}
  rates["max_budget"] = float(unequal.max())
  return rates


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="M in {4, 16} and 100 steps per member")
  parser.add_argument("--sizes", type=int, nargs="+", default=None)
  parser.add_argument("--steps", type=int, default=None,
                      help="member steps each (default 400; 100 quick)")
  parser.add_argument("--hidden", type=int, default=32,
                      help="MLP hidden width (10 -> hidden -> 1)")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  sizes = args.sizes or ([4, 16] if args.quick else [4, 16, 64])
  steps = args.steps or (100 if args.quick else 400)
  print(f"AE-AdamW members, MLP 10-{args.hidden}-1, batch {args.batch}, "
        f"{steps} member steps each; jax {jax.__version__} on "
        f"{jax.devices()[0].platform} ({os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()})")
  header = (f"{'M':>4} {'sequential':>11} {'vmap':>11} {'chunked':>11} "
            f"{'chunked-4':>11} {'vmap-masked':>11} | {'vmap':>6} "
            f"{'chunk':>6} {'chunk4':>6} {'masked':>6} {'maxB/B':>6} "
            f"{'adamw':>6} {'AE/adamw':>8}")
  print("member steps per second (honoured steps / wall time); right: "
        "ratio to sequential, the largest unequal budget / mean budget, and "
        "vmap / sequential for plain optax.adamw members; AE/adamw: the "
        "vmapped AE population's rate over the vmapped optax.adamw one's")
  print(header)
  print("-" * len(header))
  for m in sizes:
    r = measure(m, steps, hidden=args.hidden, batch=args.batch,
                repeats=args.repeats)
    seq = r["sequential"]
    ratio = lambda k: f"{r[k] / seq:>5.2f}x"
    print(f"{m:>4} {seq:>11.0f} {r['vmap']:>11.0f} {r['chunked']:>11.0f} "
          f"{r['chunked-4']:>11.0f} {r['vmap-masked']:>11.0f} | "
          f"{ratio('vmap')} {ratio('chunked')} {ratio('chunked-4')} "
          f"{ratio('vmap-masked')} {r['max_budget'] / steps:>6.2f} "
          f"{r['plain-vmap'] / r['plain-sequential']:>5.2f}x "
          f"{r['vmap'] / r['plain-vmap']:>7.2f}x",
          flush=True)


if __name__ == "__main__":
  main()

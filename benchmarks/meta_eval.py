"""Meta-learned gains against the default gains (issue #4 item 5).

For each of 5 seeds: meta-train the gains of ``ae_sgdm`` (smooth mode,
α₀ = 0.02, β₀ = 0.9, K = 100 steps) on the task family {random least squares,
student-teacher tanh MLPs} of varied scale and conditioning
(``ae.meta.meta_train``, Adam on the relative offsets, 40 outer steps of 4
tasks per family); then evaluate the learned gains and the default gains on
16 held-out tasks per family (drawn from keys never used in training) and
on the least-squares tasks at 4× the training horizon (K = 400, target 1%),
and on one task from outside the family (scikit-learn digits, a 64-32-10 tanh MLP
with cross-entropy on unscaled pixels, 300 steps). Same tasks, same
initialisation and minibatch order for both.

Metrics per seed: mean time-to-target (first step with the validation gap
``L - floor`` at most 5% of the initial gap; K + 1 when not reached) and the
median final validation loss over the tasks. Printed: mean ± 95% interval
(Student t) over the 5 seeds.

  JAX_PLATFORMS=cpu python benchmarks/meta_eval.py [--seeds 5]
"""

import argparse
import time

import jax
import numpy as np

import ae_jax as ae
from ae_jax import meta
from ae_jax.bench.demo import t_interval

CONFIG = meta.InnerConfig(steps=100, learning_rate=0.02, momentum=0.9)
DIGITS_STEPS = 300


def evaluate_seed(seed: int, meta_steps: int) -> dict:
  families = [meta.least_squares_family(), meta.mlp_family()]
  result = meta.meta_train(families, key=jax.random.PRNGKey(seed),
                           config=CONFIG, meta_steps=meta_steps,
                           tasks_per_step=4)
  default = ae.default_gains(meta.coefficient_names(CONFIG))
  rows = {}
  for i, family in enumerate(families):
    # Held-out keys: a stream meta_train never draws from.
    tasks = meta.sample_tasks(family, jax.random.PRNGKey(10_000 + 97 * seed + i),
                              16)
    for label, gains in (("default", default), ("meta", result.gains)):
      ev = meta.evaluate(gains, family, tasks, CONFIG)
      rows[(family.name, label)] = (float(ev.steps_to_target.mean()),
                                    float(np.median(ev.final_loss)),
                                    float(ev.reached.mean()))
  # Beyond the training horizon: the same held-out least-squares tasks,
  # trained 4x longer than the meta-training unroll.
  family = families[0]
  tasks = meta.sample_tasks(family, jax.random.PRNGKey(10_000 + 97 * seed), 16)
  long = CONFIG._replace(steps=4 * CONFIG.steps)
  for label, gains in (("default", default), ("meta", result.gains)):
    ev = meta.evaluate(gains, family, tasks, long, target=0.01)
    rows[("least_squares, K = 400, target 1%", label)] = (
        float(ev.steps_to_target.mean()), float(np.median(ev.final_loss)),
        float(ev.reached.mean()))
  digits, task = meta.digits_task(jax.random.PRNGKey(seed))
  stacked = jax.tree.map(lambda x: x[None], task)
  config = CONFIG._replace(steps=DIGITS_STEPS)
  for label, gains in (("default", default), ("meta", result.gains)):
    ev = meta.evaluate(gains, digits, stacked, config, target=0.2)
    rows[("digits (out of family)", label)] = (
        float(ev.steps_to_target.mean()), float(np.median(ev.final_loss)),
        float(ev.reached.mean()))
  rows["meta_loss"] = (float(result.history["meta_loss"][:5].mean()),
                       float(result.history["meta_loss"][-5:].mean()))
  rows["gains"] = result.gains
  return rows


def fmt(values, digits=3):
  mean, half = t_interval(values)
  return f"{mean:.{digits}g} ± {half:.2g}"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--meta-steps", type=int, default=40)
  args = parser.parse_args(argv)
  start = time.perf_counter()
  per_seed = [evaluate_seed(seed, args.meta_steps) for seed in range(args.seeds)]
  keys = [k for k in per_seed[0] if isinstance(k, tuple)]
  print(f"{args.seeds} seeds, {time.perf_counter() - start:.0f} s, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}")
  print("| task | gains | time-to-target (steps) | final val loss (median) "
        "| tasks reaching target |")
  print("| --- | --- | ---: | ---: | ---: |")
  for key in keys:
    cols = list(zip(*[s[key] for s in per_seed]))
    print(f"| {key[0]} | {key[1]} | {fmt(cols[0])} | {fmt(cols[1])} | "
          f"{fmt(cols[2], 2)} |")
  first, last = zip(*[s["meta_loss"] for s in per_seed])
  print(f"\nmeta-loss (mean log gap ratio over the run), first 5 outer steps "
        f"{fmt(first)} -> last 5 {fmt(last)}")
  gains = [s["gains"] for s in per_seed]
  for name in ("progress", "variance", "phase", "leak"):
    vals = [float(g.drive["learning_rate"]._asdict()[name]) for g in gains]
    print(f"learned learning_rate.{name}: {fmt(vals)}")
  for name in gains[0].eta:
    print(f"learned eta[{name}]: {fmt([float(g.eta[name]) for g in gains])}")
  print(f"learned gauge eta: {fmt([float(g.gauge) for g in gains])}")
  for name in gains[0].filters:
    print(f"learned filter {name}: "
          f"{fmt([float(g.filters[name]) for g in gains], 4)}")


if __name__ == "__main__":
  main()

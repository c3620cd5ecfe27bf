"""Batches drawn with replacement against shuffled epochs: where α settles.

The benchmark tasks draw every batch independently, with replacement
(``ae_jax.bench.tasks._sample``). Training loops usually read shuffled
epochs instead: each example once per epoch. Within an epoch those batches
are negatively correlated (their gradients sum to the full gradient). So
near a stationary point, cos(g_t, d_{t-1}) reads negative at any step size,
and a step-size law built on it reads that as an overshoot. This script runs
each method on the same tasks under both samplers (same initialisation, same
data, the same number of steps) and prints the final metric, the training
loss over the last 100 steps and, for the AE presets, α at the end. The
``<preset>@epochs`` methods are the preset told the epoch length
(``batches_per_epoch``): the step-size law then cuts α only on an epoch's
first batches (or an overshoot) and reads every batch while α climbs. Drawn
with replacement they are the preset, so only their epochs row is run.

  JAX_PLATFORMS=cpu python -m benchmarks.epochs [--seeds 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform

import numpy as np

from ae_jax.bench import optimizers as O
from ae_jax.bench import runner as R
from ae_jax.bench import tasks as T

METHODS = ("ae_adam", "ae_adam@epochs", "ae_adamw", "ae_adamw@epochs",
           "ae_sgdm", "ae_sgdm@epochs", "adamw", "mechanize_adam", "prodigy")
# (label, registered task, overrides): few batches per epoch first, where
# the correlation is strongest.
CASES = (
    ("regression, 256 examples, batch 32 (8 batches per epoch)", "regression",
     {"n_train": 256, "batch_size": 32}),
    ("regression, 4,096 examples, batch 64 (64 per epoch)", "regression", {}),
    ("digits_cnn, 1,347 examples, batch 64 (21 per epoch)", "digits_cnn", {}),
)


def _row(res) -> tuple[str, str, str]:
  final = " / ".join(f"{v:.4g}" for v in res.metric[:, -1])
  train = " / ".join(f"{v:.2g}" for v in np.nanmean(res.loss[:, -100:], 1))
  lr = res.coefficients.get("learning_rate")
  alpha = "—" if lr is None else " / ".join(f"{v:.2g}" for v in lr[:, -1])
  return final, train, alpha


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--methods", default=",".join(METHODS))
  args = ap.parse_args(argv)
  seeds = list(range(1, args.seeds + 1))
  print(f"{datetime.date.today()} | {platform.machine()}, {os.cpu_count()} "
        f"cores | seeds {seeds[0]}..{seeds[-1]} (per seed: a / b / c)\n")
  for label, name, overrides in CASES:
    tasks = {s: T.get(name, sampling=s, **overrides)
             for s in T.SAMPLINGS}
    task = tasks["replacement"]
    lines = [f"**{label}**", "",
             "| method | sampling | final metric | training loss, last 100 "
             "steps | α at the end |", "| --- | --- | --- | --- | --- |"]
    for method in args.methods.split(","):
      for sampling, sampled_task in tasks.items():
        if method.endswith(O.EPOCHS) and sampling == "replacement":
          continue
        final, train, alpha = _row(R.run(sampled_task, method, seeds))
        lines.append(f"| {method} | {sampling} | {final} | {train} | "
                     f"{alpha} |")
    print(f"{lines[0]} ({task.metric_name}, {task.steps} steps)\n")
    print("\n".join(lines[2:]) + "\n", flush=True)


if __name__ == "__main__":
  main()

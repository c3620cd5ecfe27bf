"""Choosing AE-Swarm's selection temperature β and consensus step κ by measurement.

The spread case (``ae_jax.bench.swarm_spread``: 8 self-tuning AE-AdamW
members over four decades of rates, rank selection, the profile ``quick``
budget) is run with the swarm alone at several (β, κ), on *tuning* seeds
that the evaluation (``ae-jax swarm --spread --seeds 5``: seeds 0-4) never
uses. The seeds set initialisation, minibatch order and samplers; the data
sets are fixed, so the tuning reads the same validation sets the evaluation
reports. The cache key holds (β, κ, task, setting, seed, reading) and its
file the members' leak, not the profile or the laws: delete the cache after
changing the spread case's sizes or the members' laws. Every run stores
both readings of the spread case (``best``: the lowest validation loss at
any evaluation, the primary figure; ``final``: the best member's at the
end); ``--figure`` picks the one reported. For each point it prints that
loss per (task, setting), mean over the tuning seeds, and the geometric mean
over (task, setting) of that loss divided by the best point's loss in the
same (task, setting): 1 means best everywhere. The defaults are the point
with the smallest geometric mean.

  JAX_PLATFORMS=cpu python benchmarks/swarm_beta.py                   # β × κ
  JAX_PLATFORMS=cpu python benchmarks/swarm_beta.py --betas 2 --kappas 0.2,0.5
  JAX_PLATFORMS=cpu python benchmarks/swarm_beta.py --report-only     # cached
  JAX_PLATFORMS=cpu python benchmarks/swarm_beta.py --report-only --figure final
  JAX_PLATFORMS=cpu python benchmarks/swarm_beta.py --report-only \
      --cache benchmarks/results/swarm_beta_leak0.json   # unanchored members

Results are cached in ``benchmarks/results/swarm_beta_leak<Γ>.json`` (Γ the
members' :data:`ae_jax.swarm.SELF_TUNING_LEAK`; one entry per (β, κ, task,
setting, seed, reading)), so an interrupted sweep resumes; the report
covers every cached point that has all (task, setting) pairs and seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform

import jax
import numpy as np

from ae_jax import swarm
from ae_jax.bench import swarm_spread

# The grid of the anchored members' tuning (2026-12-07); the first tuning's
# β = 5 … 50 and κ = 0.2, 0.5 lost on the geo-mean (RESULTS.md) and are left out.
BETAS = (0.0, 1.0, 2.0, 4.0)
KAPPAS = (0.0, 0.05)
TUNING_SEEDS = (100, 101, 102)
# One cache per member family: the members' leak toward their start
# (swarm.SELF_TUNING_LEAK) is in the file name, so a changed default starts a
# fresh cache instead of mixing families. The first tuning (2026-12-05,
# ``results/swarm_beta.json``) read the swarm's best member at the end of
# training, with the laws of that day; ``swarm_beta_leak0.json`` (2026-12-07,
# the laws since the progress gate and its restart, unanchored members)
# stores both readings of every run, as does ``swarm_beta_leak1.json``
# (2026-12-07, the anchored members that ship: the grid above); the report
# reads ``--figure`` (default ``best``, the spread case's primary figure).
CACHE = (pathlib.Path(__file__).parent / "results"
         / f"swarm_beta_leak{swarm.SELF_TUNING_LEAK:g}.json")
FIGURES = swarm_spread.FIGURES


def _key(point, task, setting, seed, figure) -> str:
  beta, kappa = point
  return f"{beta:g}|{kappa:g}|{task}|{setting}|{seed}|{figure}"


def _points(cache: dict) -> list[tuple[float, float]]:
  return sorted({(float(k.split("|")[0]), float(k.split("|")[1]))
                 for k in cache})


def sweep(points, tasks, settings, seeds, cache: dict,
          path: pathlib.Path = CACHE) -> dict:
  """Fills ``cache`` with the swarm's validation loss per key (both
  readings of each run) and writes it to ``path`` after each (task,
  setting)."""
  for point in points:
    for task in tasks:
      for setting in settings:
        todo = [s for s in seeds
                if any(_key(point, task, setting, s, f) not in cache
                       for f in FIGURES)]
        if not todo:
          continue
        res = swarm_spread.compare_figures(
            tasks=(task,), settings=(setting,), seeds=todo, beta=point[0],
            kappa=point[1], methods=("swarm",), log=None)
        for i, seed in enumerate(todo):
          losses = {f: float(res[f][(task, setting)]["swarm"][i])
                    for f in FIGURES}
          for figure, loss in losses.items():
            cache[_key(point, task, setting, seed, figure)] = loss
          print(f"beta {point[0]:>5g} kappa {point[1]:>5g}  {task:10s} "
                f"{setting:12s} seed {seed} "
                + " ".join(f"{f} {v:.5g}" for f, v in losses.items()),
                flush=True)
        path.write_text(json.dumps(cache, indent=1, sort_keys=True))
  return cache


def report(tasks, settings, seeds, cache: dict, figure: str = "best"):
  """Markdown table: mean validation loss (of the ``figure`` reading) per
  (β, κ) and (task, setting), and the geometric mean of the ratio to the
  best point; returns the table and the best point."""
  means, cached = {}, _points(cache)
  for point in cached:
    for task in tasks:
      for setting in settings:
        vals = [cache.get(_key(point, task, setting, s, figure))
                for s in seeds]
        if None in vals:
          continue
        means[point, task, setting] = float(np.mean(vals))
  pairs = [(t, s) for t in tasks for s in settings]
  points = [b for b in cached if all((b,) + p in means for p in pairs)]
  if not points:
    return "(no point has every (task, setting) yet)", None
  best = {p: min(means[(b,) + p] for b in points) for p in pairs}
  head = (["β", "κ"] + [f"{t} / {s}" for t, s in pairs]
          + ["geo-mean ÷ best"])
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  geo = {}
  for point in points:
    logs = [math.log(means[(point,) + p] / best[p]) for p in pairs]
    geo[point] = math.exp(sum(logs) / len(logs)) if logs else math.nan
    cells = [f"{means[(point,) + p]:.5g}" for p in pairs]
    lines.append(f"| {point[0]:g} | {point[1]:g} | " + " | ".join(cells)
                 + f" | {geo[point]:.4f} |")
  chosen = min(geo, key=geo.get)
  return "\n".join(lines), chosen


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--betas", default=",".join(f"{b:g}" for b in BETAS))
  p.add_argument("--kappas", default=",".join(f"{k:g}" for k in KAPPAS))
  p.add_argument("--tasks", default=",".join(swarm_spread.TASKS))
  p.add_argument("--settings", default=",".join(swarm_spread.SETTINGS))
  p.add_argument("--seeds", default=",".join(map(str, TUNING_SEEDS)))
  p.add_argument("--figure", default="best", choices=FIGURES)
  p.add_argument("--cache", type=pathlib.Path, default=CACHE,
                 help="the cache file (default: this family's, %(default)s)")
  p.add_argument("--report-only", action="store_true")
  a = p.parse_args()
  points = [(float(b), float(k)) for b in a.betas.split(",")
            for k in a.kappas.split(",")]
  tasks, settings = a.tasks.split(","), a.settings.split(",")
  seeds = tuple(int(s) for s in a.seeds.split(","))
  if set(seeds) & set(range(5)):
    raise SystemExit("tuning seeds must not overlap the evaluation seeds 0-4")
  if a.cache != CACHE and not a.report_only:
    # The sweep runs the default family; another family's cache would mix.
    raise SystemExit(f"--cache {a.cache} is for --report-only: a sweep runs "
                     f"the default family (leak {swarm.SELF_TUNING_LEAK:g}) "
                     f"and writes {CACHE}")
  cache = json.loads(a.cache.read_text()) if a.cache.exists() else {}
  if not a.report_only:
    sweep(points, tasks, settings, seeds, cache, a.cache)
  print(f"\n{platform.platform()}, {jax.default_backend()}, jax "
        f"{jax.__version__}; tuning seeds {list(seeds)}; mean validation "
        f"loss of the swarm (rank selection, profile quick; reading "
        f"{a.figure!r})\n")
  text, chosen = report(tasks, settings, seeds, cache, a.figure)
  print(text)
  if chosen:
    print(f"\nbest (β, κ): ({chosen[0]:g}, {chosen[1]:g})")


if __name__ == "__main__":
  main()

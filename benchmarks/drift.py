"""Drift: time-to-recover and regret on the three drift tasks (experiments 4, 5 and the rotating
regression of prediction 3).

  JAX_PLATFORMS=cpu python -m benchmarks.drift [--seeds 5] [--methods ...] [--tasks ...]

Every method starts at its registry default (``adamw`` and ``ae_adamw`` at 1e-3: "from the same
starting rate"), with the same initialisation and data order (seeds 1..N). Per run:

* **time to recover** (``metrics.time_to_recover`` on the per-step training loss, window 25,
  tolerance 10 %, against the run's own level just before the switch; a switch never recovered
  counts as the whole period), averaged over the switches. It rewards a run that was *worse* before
  the switch (its own level is easier to get back to), so the script also reports
* **time to a common level**: the same clock, against one level per switch for every method, the
  pre-switch level of the hindsight-best fixed ``adamw`` rate (median over seeds);
* **time to an attainable level**: the same, against the higher of that level and the one the
  hindsight-best fixed rate itself reaches by the end of the new phase. Where the new phase is
  harder than the old one (``drift_digits``' clean → noise switch), no method, the reference
  included, gets back to the pre-switch level, and the common reading counts the whole period for
  every method there; the attainable one still tells them apart. Both are printed per switch;
* **regret**: AUC of the task metric minus the AUC of the best fixed ``adamw`` rate in hindsight
  (``metrics.hindsight_best`` over a grid of 7 rates 1e-4 … 1e-1 on the same seeds; positive = worse);
* the final metric.

Prints one table per task and the summary the issue asks for (``ae_adamw`` against ``adamw`` and
``mechanize_adam``), writes ``benchmarks/results/drift.json``, a figure per task and the
``<!-- drift:begin -->`` … ``<!-- drift:end -->`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform

import numpy as np

from ae_jax.bench import metrics as M
from ae_jax.bench import runner as R
from ae_jax.bench import tasks as T

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
FIGURES = ROOT / "benchmarks" / "figures"
BEGIN, END = "<!-- drift:begin -->", "<!-- drift:end -->"

TASKS = ("drift_regression", "drift_digits", "drift_classes")
METHODS = ("ae_adamw", "ae_adam", "ae_sgdm", "adamw", "sgdm", "mechanize_adam", "prodigy",
           "dadapt_adamw", "dog", "cocob", "schedule_free_adamw", "adamw_plateau")
HINDSIGHT_GRID = tuple(float(x) for x in np.logspace(-4, -1, 7))


def _recover(res: R.Result, task) -> np.ndarray:
  steps = np.arange(res.loss.shape[-1])
  return M.mean_time_to_recover(res.loss, steps, task.switch_every)


def _common_levels(reference_loss, period, window=25):
  """Per switch, the median over seeds of the reference run's mean training
  loss over the last ``window`` steps before the switch."""
  ends = range(period, reference_loss.shape[-1], period)
  return [float(np.median(reference_loss[:, e - window:e].mean(-1))) for e in ends]


def _attainable_levels(reference_loss, period, window=25):
  """Per switch, the higher of the common level (:func:`_common_levels`) and
  the reference's own level over the last ``window`` steps of the new phase
  (median over seeds): a level the hindsight-best fixed rate shows can be
  reached within the phase."""
  common = _common_levels(reference_loss, period, window)
  ends = range(2 * period, reference_loss.shape[-1] + 1, period)
  reached = [float(np.median(reference_loss[:, e - window:e].mean(-1))) for e in ends]
  return [max(c, r) for c, r in zip(common, reached)]


def switch_times(loss, period, levels, tolerance=0.1, window=25):
  """Per seed and switch, the steps after the switch until the
  ``window``-step moving average of ``loss`` is within ``tolerance`` of
  ``levels[k]`` (the period where it never is), shape ``(seeds, switches)``;
  the moving average's clock is its window's middle."""
  loss = np.atleast_2d(np.asarray(loss, float))
  kernel = np.ones(window) / window
  out = np.full((loss.shape[0], len(levels)), float(period))
  for i, row in enumerate(loss):
    for k, level in enumerate(levels):
      start = (k + 1) * period
      seg = np.convolve(row[start:start + period], kernel, "valid")
      hit = np.flatnonzero(np.isfinite(seg) & (seg <= (1 + tolerance) * level))
      if hit.size:
        out[i, k] = float(hit[0]) + window // 2
  return out


def measure(task, methods, seeds) -> dict:
  """Per-method per-seed time-to-recover, regret and final metric on ``task``."""
  grid = [R.run(task, "adamw", seeds, learning_rate=lr) for lr in HINDSIGHT_GRID]
  best_i, reference = M.hindsight_best(np.stack([g.metric for g in grid]),
                                       grid[0].eval_steps, task.higher_is_better)
  levels = _common_levels(grid[best_i].loss, task.switch_every)
  attainable = _attainable_levels(grid[best_i].loss, task.switch_every)
  out = {"hindsight_lr": HINDSIGHT_GRID[best_i], "levels": levels,
         "attainable_levels": attainable, "methods": {}, "curves": {}}
  for name in methods:
    res = R.run(task, name, seeds)
    lr = res.coefficients.get("learning_rate")
    common = switch_times(res.loss, task.switch_every, levels)
    reached = switch_times(res.loss, task.switch_every, attainable)
    out["methods"][name] = {
        "ttr": _recover(res, task).tolist(),
        "ttl": common.mean(-1).tolist(),
        "tta": reached.mean(-1).tolist(),
        "ttl_switch": common.mean(0).tolist(),
        "tta_switch": reached.mean(0).tolist(),
        "regret": M.regret(res.metric, res.eval_steps, reference,
                           task.higher_is_better).tolist(),
        "final": M.final(res.metric).tolist(),
    }
    out["curves"][name] = {"loss": np.nanmedian(res.loss, 0).tolist(),
                           "lr": None if lr is None else np.median(lr, 0).tolist()}
  return out


def _fmt(values, digits=3):
  return M.fmt_ci(np.asarray(values, float), digits)


def table(task, data) -> str:
  lines = [f"**{task.name}** — {task.description}; switch every {task.switch_every} steps, "
           f"{task.steps} steps; hindsight-best fixed adamw rate {data['hindsight_lr']:.2g}",
           "", f"| method | time to recover (own level) | time to common level | "
           f"time to attainable level | regret ({task.metric_name} AUC) | "
           f"final {task.metric_name} |",
           "| --- | --- | --- | --- | --- | --- |"]
  for name, m in data["methods"].items():
    lines.append(f"| {name} | {_fmt(m['ttr'], 3)} | {_fmt(m['ttl'], 3)} | "
                 f"{_fmt(m['tta'], 3)} | {_fmt(m['regret'], 3)} | "
                 f"{_fmt(m['final'], 4)} |")
  return "\n".join(lines + ["", switch_table(data)])


def switch_table(data) -> str:
  """Mean steps over seeds per switch, to the common / attainable level."""
  fmt = lambda xs: " / ".join(f"{x:.0f}" for x in xs)
  levels = lambda key: " / ".join(f"{x:.3g}" for x in data[key])
  lines = [f"Per switch (mean over seeds), to the common level ({levels('levels')}) "
           f"and to the attainable level ({levels('attainable_levels')}):", "",
           "| method | to common level, per switch | to attainable level, per switch |",
           "| --- | --- | --- |"]
  for name, m in data["methods"].items():
    lines.append(f"| {name} | {fmt(m['ttl_switch'])} | {fmt(m['tta_switch'])} |")
  return "\n".join(lines)


def verdicts(task, data) -> list[str]:
  m = data["methods"]
  if not {"ae_adamw", "adamw", "mechanize_adam"} <= set(m):
    return []
  mean = lambda key: [float(np.mean(m[k][key]))
                      for k in ("ae_adamw", "adamw", "mechanize_adam")]
  ae_f, ad_f = float(np.mean(m["ae_adamw"]["final"])), float(np.mean(m["adamw"]["final"]))
  better_final = ae_f >= ad_f if task.higher_is_better else ae_f <= ad_f
  parts, verdict = [], []
  for key, label in (("ttr", "own level"), ("ttl", "common level"),
                     ("tta", "attainable level")):
    ae_t, ad_t, me_t = mean(key)
    parts.append(f"to the {label} {ae_t:.1f} = {ae_t / ad_t:.2f}x adamw ({ad_t:.1f}), "
                 f"mechanize {me_t:.1f}")
    ok = ae_t <= 0.5 * ad_t and ae_t <= me_t and better_final
    verdict.append(f"{label} {'holds' if ok else 'fails'}")
  return [f"{task.name}: ae_adamw time {'; '.join(parts)}; final {ae_f:.4g} vs "
          f"adamw {ad_f:.4g} — target (<= 0.5x adamw, <= mechanize, final no worse): "
          + ", ".join(verdict)]


def plot(task, data, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (a0, a1) = plt.subplots(1, 2, figsize=(12, 4))
  for name in ("ae_adamw", "adamw", "mechanize_adam", "prodigy"):
    c = data["curves"].get(name)
    if c is None:
      continue
    loss = np.asarray(c["loss"])
    k = np.ones(25) / 25
    a0.semilogy(np.convolve(loss, k, "valid"), label=name)
    if c["lr"] is not None:
      a1.semilogy(c["lr"], label=name)
  for ax in (a0, a1):
    for s in range(task.switch_every, task.steps, task.switch_every):
      ax.axvline(s, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
  a0.set_title(f"{task.name}: training loss (median over seeds, 25-step mean)")
  a1.set_title("AE learning rate (median over seeds)")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def write_results(md: str):
  text = RESULTS_MD.read_text()
  block = f"{BEGIN}\n{md}\n{END}"
  if BEGIN in text:
    head, rest = text.split(BEGIN, 1)
    text = head + block + rest.split(END, 1)[1]
  else:
    marker = "## Experiment 17"
    text = text.replace(marker, block + "\n\n" + marker, 1)
  RESULTS_MD.write_text(text)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seeds", type=int, default=5)
  ap.add_argument("--tasks", default=",".join(TASKS))
  ap.add_argument("--methods", default=",".join(METHODS))
  ap.add_argument("--no-write", action="store_true", help="print only")
  args = ap.parse_args(argv)
  seeds = list(range(1, args.seeds + 1))
  methods = args.methods.split(",")
  blocks, lines, everything = [], [], {}
  for name in args.tasks.split(","):
    task = T.get(name)
    data = measure(task, methods, seeds)
    everything[name] = data
    blocks.append(table(task, data))
    lines += verdicts(task, data)
    print(blocks[-1], "\n", flush=True)
    if not args.no_write:
      FIGURES.mkdir(exist_ok=True)
      path = FIGURES / f"{name}.png"
      plot(task, data, path)
      blocks.append(f"![{name}](figures/{path.name})")
  for line in lines:
    print(line)
  if args.no_write:
    return
  out = ROOT / "benchmarks" / "results"
  out.mkdir(exist_ok=True)
  (out / "drift.json").write_text(json.dumps(everything))
  stamp = (f"{datetime.date.today()} | {platform.machine()}, {os.cpu_count()} cores | "
           f"seeds 1..{args.seeds}")
  md = "\n\n".join(
      ["## Drift: time to recover and regret (issue: self-tuning, item 4)",
       f"`JAX_PLATFORMS=cpu python -m benchmarks.drift --seeds {args.seeds}` — {stamp}. "
       "Time to recover: steps after each switch until the 25-step mean training loss is back "
       "within 10 % of its level just before the switch (never = the whole period), mean over "
       "switches; time to common level: the same, against the pre-switch level of the "
       "hindsight-best fixed adamw rate, one level for every method; time to attainable level: the "
       "same, against the higher of that level and the one the hindsight-best rate reaches by the "
       "end of the new phase (a harder new phase can make the pre-switch level unreachable for "
       "every method); regret: AUC of the metric minus that of the best fixed adamw rate in hindsight "
       "(positive = worse). 95 % intervals over seeds."] + blocks
      + ["**Targets**\n\n" + "\n".join(f"- {line}" for line in lines)])
  write_results(md)


if __name__ == "__main__":
  main()

"""Tables and figures of harness results, and :func:`compare` (the core of
``ae-jax compare``)."""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from ae_jax.bench import metrics as M
from ae_jax.bench import optimizers as O
from ae_jax.bench import runner as R
from ae_jax.bench.tasks import Task

COLUMNS = ("optimizer", "lr", "final", "time-to-target", "AUC",
           "NaN/inf steps", "diverged", "oscillation", "var log γ")


def row(res: R.Result, task: Task) -> dict[str, str]:
  """One table row: mean ± 95% t-interval over seeds of each metric."""
  s = res.summary(task)
  n = len(res.seeds)
  reached = int(np.isfinite(s["ttt"]).sum())
  ttt = M.fmt_ci(s["ttt"], 3) if reached else f"never (0/{n})"
  if 0 < reached < n:
    ttt = ttt.replace(f" ({reached}/{n})", "") + f" ({reached}/{n})"
  return {
      "optimizer": res.optimizer,
      "lr": f"{res.learning_rate:.3g}",
      "final": M.fmt_ci(s["final"], 4),
      "time-to-target": ttt,
      "AUC": M.fmt_ci(s["auc"], 4),
      "NaN/inf steps": str(int(np.sum(s["nonfinite"]))),
      "diverged": f"{int(np.sum(s['diverged']))}/{n}",
      "oscillation": M.fmt_ci(s["oscillation"], 3),
      "var log γ": (M.fmt_ci(s["var_log_gamma"], 3)
                    if "var_log_gamma" in s else "—"),
  }


def markdown_table(rows: Sequence[dict], columns=COLUMNS) -> str:
  lines = ["| " + " | ".join(columns) + " |",
           "| " + " | ".join("---" for _ in columns) + " |"]
  lines += ["| " + " | ".join(r.get(c, "") for c in columns) + " |"
            for r in rows]
  return "\n".join(lines)


def text_table(rows: Sequence[dict], columns=COLUMNS) -> str:
  widths = [max(len(c), *(len(r.get(c, "")) for r in rows)) for c in columns]
  fmt = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))
  out = [fmt(columns), fmt(["-" * w for w in widths])]
  out += [fmt([r.get(c, "") for c in columns]) for r in rows]
  return "\n".join(out)


def _plt():
  import matplotlib
  if not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _band(ax, x, ys, label, log=False):
  ys = np.asarray(ys, float)
  mean = np.nanmean(ys, 0)
  if ys.shape[0] > 1:
    half = (M.t_quantile(ys.shape[0] - 1) * np.nanstd(ys, 0, ddof=1)
            / math.sqrt(ys.shape[0]))
  else:
    half = np.zeros_like(mean)
  line, = ax.plot(x, mean, label=label, lw=1.2)
  lo = mean - half
  if log:
    lo = np.where(lo > 0, lo, mean * 0.5)
  ax.fill_between(x, lo, mean + half, alpha=0.2, color=line.get_color())


def _smooth(y, w):
  if w <= 1 or y.shape[-1] < w:
    return y
  k = np.ones(w) / w
  return np.apply_along_axis(lambda r: np.convolve(r, k, "valid"), -1, y)


def _save(plt, fig, legend_ax, path, title):
  legend_ax.legend(fontsize=7)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def plot_curves(results: Sequence[R.Result], task: Task, path: str,
                title: str | None = None) -> str:
  """Metric (left) and smoothed training loss (right), mean ± 95% bands."""
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  log_metric = not task.higher_is_better
  for res in results:
    _band(axes[0], res.eval_steps, res.metric, res.optimizer, log_metric)
    w = max(1, res.steps // 100)
    sm = _smooth(res.loss, w)
    _band(axes[1], np.arange(sm.shape[-1]) + w - 1, sm, res.optimizer, True)
  if log_metric:
    axes[0].set_yscale("log")
  axes[0].axhline(task.target, color="k", ls=":", lw=0.8)
  axes[0].set(xlabel="step", ylabel=task.metric_name,
              title=f"{task.name}: {task.metric_name} (target dotted)")
  axes[1].set(xlabel="step", ylabel="training loss (moving average)",
              yscale="log", title="training loss")
  return _save(plt, fig, axes[0], path, title)


def plot_coefficients(results: Sequence[R.Result], path: str,
                      title: str | None = None) -> str | None:
  """Coefficient trajectories (α, β/β1, β2) and γ, mean over seeds, of the
  results that record them (AE and windowed peers); ``None`` if none."""
  with_coefs = [r for r in results if r.coefficients]
  if not with_coefs:
    return None
  plt = _plt()
  panels = [("learning_rate", "α (learning rate)", "log"),
            ("b1", "β1 / momentum", "linear"),
            ("b2", "1 - β2", "log"), ("gamma", "γ (effective step)", "log")]
  fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
  for ax, (key, label, scale) in zip(axes, panels):
    for r in with_coefs:
      src = r.signals if key == "gamma" else r.coefficients
      k = "momentum" if key == "b1" and "b1" not in src else key
      if k not in src:
        continue
      y = np.nanmean(src[k], 0)
      if key == "b2":
        y = 1 - y
      ax.plot(np.arange(y.size), y, lw=1, label=r.optimizer)
    ax.set(title=label, xlabel="step", yscale=scale)
  return _save(plt, fig, axes[0], path, title)


def plot_lr_sensitivity(sweeps: dict[str, tuple], task: Task, path: str
                        ) -> str:
  """Final metric against initial learning rate, per method:
  ``sweeps[name] = (grid, finals (len(grid), seeds))``; diverged runs are
  drawn at the top of the axis."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.5, 4))
  finite = np.concatenate([np.asarray(f, float)[np.isfinite(f)].ravel()
                           for _, f in sweeps.values()] or [np.ones(1)])
  cap = np.nanmax(finite) * 2 if finite.size else 1.0
  for name, (grid, finals) in sweeps.items():
    f = np.asarray(finals, float)
    f = np.where(np.isfinite(f), f, cap)
    ax.plot(grid, np.median(f, -1), marker="o", ms=3, label=name)
  ax.set(xscale="log", yscale="log" if not task.higher_is_better else
         "linear", xlabel="initial learning rate",
         ylabel=f"final {task.metric_name} (median over seeds)",
         title=f"{task.name}: learning-rate sensitivity")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def run_many(task: Task, names: Sequence[str], seeds: Sequence[int], *,
             steps: int | None = None, delay: int = 0,
             learning_rates: dict | None = None, verbose: bool = True
             ) -> tuple[list[R.Result], list[dict], list[str]]:
  """:func:`runner.run` for each optimizer name; returns the results, their
  table rows and the reasons of the ones skipped (tensor-optix missing)."""
  results, rows, skipped = [], [], []
  for name in names:
    spec = O.get(name)
    if spec.windowed and O.tox_available():
      skipped.append(f"{name}: {O.tox_available()}")
      continue
    lr = (learning_rates or {}).get(name)
    res = R.run(task, spec, seeds, steps, learning_rate=lr, delay=delay)
    results.append(res)
    rows.append(row(res, task))
    if verbose:
      print(f"    {task.name} {name}: {res.wall_s:.1f} s", flush=True)
  return results, rows, skipped


def compare(task: Task, optimizers: Sequence[str], seeds: int = 5,
            steps: int | None = None, out: str | None = None,
            learning_rates: dict | None = None, delay: int = 0,
            verbose: bool = True) -> tuple[list[R.Result], list[dict]]:
  """Runs every optimizer on ``task`` with seeds ``1..seeds`` (seed 0 is
  kept for tuning ``name@tuned``), prints the table and, with ``out``,
  writes ``<out>/<task>_curves.png`` and ``<out>/<task>_coefficients.png``.

  Optimizers that cannot run (tensor-optix not installed) are skipped with
  a printed reason, never silently.
  """
  eval_seeds = list(range(1, seeds + 1))
  results, rows, skipped = run_many(task, O.expand(list(optimizers)),
                                    eval_seeds, steps=steps, delay=delay,
                                    learning_rates=learning_rates,
                                    verbose=verbose)
  if verbose:
    print(f"\n{task.name}: {task.description}; {results[0].steps if results else steps} "
          f"steps, seeds {eval_seeds[0]}..{eval_seeds[-1]}, target "
          f"{task.metric_name} {'>=' if task.higher_is_better else '<='} "
          f"{task.target:g}\n")
    print(text_table(rows))
    for s in skipped:
      print(f"skipped {s}")
  if out and results:
    os.makedirs(out, exist_ok=True)
    p1 = plot_curves(results, task, os.path.join(out, f"{task.name}_curves.png"))
    p2 = plot_coefficients(results, os.path.join(
        out, f"{task.name}_coefficients.png"))
    if verbose:
      print("\nwrote " + ", ".join(p for p in (p1, p2) if p))
  return results, rows

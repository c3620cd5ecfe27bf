"""The starting-rate robustness sweep: every method started at 7 values of
its start knob on every ranking task and the drift tasks.

  JAX_PLATFORMS=cpu python -m benchmarks.robustness            # full sweep
  JAX_PLATFORMS=cpu python -m benchmarks.robustness --methods ae_adamw,ae_sgdm
  JAX_PLATFORMS=cpu python -m benchmarks.robustness --report-only

(run from the repository root). Each method's start knob and its 7 starts
are ``OptSpec.start_name`` / ``start_grid`` of the registry
(:mod:`ae_jax.bench.optimizers`): the learning rate 1e-5 ... 1 for the
Adam family, the same relative range around the default for the SGD-type
rates, the initial estimate 1e-2 ... 1e4 times its default for the
parameter-free peers. Each (task, method) is one jitted run vmapped over
starts x seeds where the start may be traced, else one run per start
(:func:`ae_jax.bench.runner.run_grid`).

Per (task, start) cell and method, over the evaluation seeds (1, 2, 3; seed
0 is kept for tuning):

* the median final metric, and whether it reaches the task's target
  (``task.reached``; a non-finite metric counts as not reached);
* the median *final loss*: the final metric where lower is better (MSE,
  f(x), perplexity), the final held-out loss (``task.eval_loss``) on the
  accuracy tasks; a non-finite final loss of a seed counts as +inf.

Figures per method, over a group of tasks: (a) the number of cells whose
median final metric reaches the target; (b) the geometric mean over cells
of the method's median final loss divided by the best median final loss of
any method in that cell, each ratio capped at ``RATIO_CAP`` (a diverged,
non-finite cell counts as the cap; losses are floored at ``LOSS_FLOOR``
first; a cell where every method is non-finite counts 1 for all).

Results are cached per (task, method) in ``benchmarks/results/robustness/
<profile>/``: a run computes the methods of ``--methods`` afresh (default:
every default method not yet cached; ``--fresh``: every default method) and
merges the cached results of the other default methods (matching seeds,
steps and starts; ``--no-merge``: none). It prints the
summary table, writes ``benchmarks/figures/robustness_heatmap.png`` and the
section of ``benchmarks/RESULTS.md`` between ``<!-- robustness:begin -->``
and ``<!-- robustness:end -->``.

Every task draws its batches with replacement. ``--sampling epochs`` reruns
the tasks that have a finite training set with shuffled epochs instead, as
a training loop reads them (``ae_jax.bench.tasks._sample``; cached under
``<task>_epochs``). It prints the same figures and writes nothing to
RESULTS.md: a measurement of the step-size law's known limit there
(RESULTS.md, "Shuffled epochs").
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import time

import numpy as np

from ae_jax.bench import optimizers as O
from ae_jax.bench import report
from ae_jax.bench import runner as R
from ae_jax.bench import tasks as T

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "results" / "robustness"
FIGURE = ROOT / "benchmarks" / "figures" / "robustness_heatmap.png"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- robustness:begin -->", "<!-- robustness:end -->"

RATIO_CAP = 1e4      # a ratio to the best (and a non-finite cell) counts this
LOSS_FLOOR = 1e-12   # losses below count as this (no division by zero)

BASE_TASKS = ("regression", "quadratic", "rosenbrock", "deep_linear",
              "digits_cnn", "mnist1d_cnn", "char_lm")
# Tasks that chose a default of the laws (docs/laws.md). mnist1d_cnn and
# resnet_digits joined on 2026-12-05: the progress gate of the reversal
# weight was diagnosed on them (seeds 0 and 1).
TUNING_TASKS = ("regression", "quadratic", "deep_linear", "digits_cnn",
                "mnist1d_cnn", "resnet_digits")
DEFAULT_METHODS = ("ae_sgdm", "ae_adam", "ae_adamw", "adamw", "sgdm",
                   "prodigy", "dadapt_adamw", "mechanize_adam", "dog", "cocob",
                   "schedule_free_adamw", "adamw_plateau", "tox_spsa")
AE_PRESETS = ("ae_sgdm", "ae_adam", "ae_adamw")
SEEDS = (1, 2, 3)

# Step budgets per profile: ``None`` = the task's registered budget. The
# targets are the registered ones in every profile.
PROFILES = {
    # CPU-sized (2 shared cores): the three slowest tasks shortened; 13
    # methods x 7 starts x 3 seeds = 273 runs per task.
    "quick": {"char_lm": 200, "mnist1d_cnn": 500, "resnet_digits": 300},
    # every task at its registered budget
    "full": {},
}


def default_tasks() -> list[str]:
  """The ranking tasks, then every registered ``drift_*`` task and
  ``resnet_digits`` (picked up from the registry when present)."""
  extra = [n for n in T.names()
           if n.startswith("drift_") or n == "resnet_digits"]
  return list(BASE_TASKS) + [n for n in extra if n not in BASE_TASKS]


def group_of(task_name: str) -> str:
  return "tuning" if task_name in TUNING_TASKS else "held-out"


# ---- the two figures (pure numpy) ------------------------------------------


def seed_median(values, bad: float) -> np.ndarray:
  """Median over the last axis (seeds), a non-finite value counted as
  ``bad`` (``+inf`` for a loss, ``-inf`` for an accuracy)."""
  v = np.asarray(values, float)
  return np.median(np.where(np.isfinite(v), v, bad), axis=-1)


def median_metric(task: T.Task, finals) -> np.ndarray:
  """Per start, the median final metric over seeds; ``finals``: (K, S)."""
  return seed_median(finals, -math.inf if task.higher_is_better else math.inf)


def reached(task: T.Task, finals) -> np.ndarray:
  """Per start, whether the median final metric meets the target."""
  with np.errstate(invalid="ignore"):
    return np.asarray(task.reached(median_metric(task, finals)), bool)


def final_loss(task: T.Task, final_metric, final_held_out) -> np.ndarray:
  """The loss of figure (b): the metric where lower is better, the held-out
  loss on accuracy tasks."""
  return np.asarray(final_held_out if task.higher_is_better
                    else final_metric, float)


def ratios_to_best(median_losses) -> np.ndarray:
  """``(M, K)`` median final losses (methods x starts) -> each divided by
  the best (smallest) of its column, capped at ``RATIO_CAP``; a non-finite
  loss is the cap; a column with no finite loss is 1."""
  x = np.asarray(median_losses, float)
  x = np.where(np.isfinite(x), np.maximum(x, LOSS_FLOOR), np.inf)
  best = np.min(x, axis=0, keepdims=True)
  with np.errstate(invalid="ignore", divide="ignore"):
    r = x / best
  r = np.where(np.isfinite(r), np.minimum(r, RATIO_CAP), RATIO_CAP)
  return np.where(np.isfinite(best), r, 1.0)


def geo_mean(ratios) -> float:
  r = np.asarray(ratios, float).ravel()
  return float(np.exp(np.mean(np.log(r)))) if r.size else math.nan


def cells(task: T.Task, by_method: dict) -> dict:
  """Per method of ``by_method[name] = {"final_metric": (K, S),
  "final_held_out": (K, S)}``: ``{"median": (K,), "reached": (K,),
  "loss": (K,), "ratio": (K,)}``."""
  names = list(by_method)
  out = {}
  for n in names:
    d = by_method[n]
    out[n] = {"median": median_metric(task, d["final_metric"]),
              "reached": reached(task, d["final_metric"]),
              "loss": seed_median(final_loss(task, d["final_metric"],
                                             d["final_held_out"]), math.inf)}
  r = ratios_to_best(np.stack([out[n]["loss"] for n in names]))
  for n, row in zip(names, r):
    out[n]["ratio"] = row
  return out


def summarize(table: dict, task_names) -> dict:
  """``table[task][method]`` of :func:`cells` -> per method over
  ``task_names``: ``(cells reached, cells, geometric-mean ratio)``."""
  out = {}
  methods = {m for t in task_names for m in table[t]}
  for m in methods:
    got = [table[t][m] for t in task_names if m in table[t]]
    if not got:
      continue
    reach = int(sum(int(np.sum(c["reached"])) for c in got))
    total = int(sum(len(c["reached"]) for c in got))
    out[m] = (reach, total, geo_mean(np.concatenate([c["ratio"]
                                                     for c in got])))
  return out


# ---- running and caching ---------------------------------------------------


_COMMIT: list[str] = []


def _commit() -> str:
  """The git commit (``+dirty`` if ae_jax/, the harness included, has
  uncommitted changes) when this process first asked: main() asks at start, before any
  run, so a record names the code the process imported, not a later HEAD."""
  if not _COMMIT:
    _COMMIT.append(_git_commit())
  return _COMMIT[0]


def _git_commit() -> str:
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "ae_jax"],
                           cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")
  except Exception:  # pylint: disable=broad-except
    return "unknown"


def machine() -> str:
  import jax
  import optax
  return (f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} "
          f"cores | {jax.default_backend()} | jax {jax.__version__} | optax "
          f"{optax.__version__} | Python {platform.python_version()}")


def cache_path(profile: str, task: str, method: str) -> pathlib.Path:
  return CACHE / profile / f"{task}__{method}.json"


def _tolist(a):
  return np.asarray(a, float).tolist()


def record(task: T.Task, spec: O.OptSpec, g: R.GridResult, profile: str
           ) -> dict:
  """The JSON record of one (task, method) grid run."""
  tail = max(1, g.steps // 20)
  return {
      "task": task.name, "method": spec.name, "profile": profile,
      "steps": int(g.steps), "eval_every": task.eval_every,
      "seeds": [int(s) for s in g.seeds], "starts": _tolist(g.starts),
      "start_name": spec.start_name, "mode": g.mode, "note": g.note,
      "wall_s": float(g.wall_s), "date": datetime.date.today().isoformat(),
      "commit": _commit(), "machine": machine(),
      "final_metric": _tolist(g.metric[..., -1]),
      "final_held_out": _tolist(g.held_out_loss[..., -1]),
      # the training loss the optimizer saw, mean of the last 5% of steps
      "final_train_loss": _tolist(np.mean(g.loss[..., -tail:], axis=-1)),
      "eval_steps": [int(s) for s in g.eval_steps],
      "metric_curve": _tolist(g.metric),
  }


def load(path: pathlib.Path, seeds, steps: int, spec: O.OptSpec):
  """The cached record if it matches (seeds, steps, starts), else None."""
  if not path.exists():
    return None
  d = json.loads(path.read_text())
  same = (d["seeds"] == list(seeds)
          and np.allclose(d["starts"], spec.start_grid, rtol=1e-6)
          and d.get("requested_steps") == steps)
  return d if same else None


def run_pair(task: T.Task, name: str, seeds, steps: int, profile: str
             ) -> dict:
  spec = O.get(name)
  g = R.run_grid(task, spec, spec.start_grid, seeds, steps)
  d = record(task, spec, g, profile)
  d["requested_steps"] = steps
  path = cache_path(profile, task.name, name)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(d, indent=0))
  return d


def build_task(name: str, profile: str,
               sampling: str = "replacement") -> T.Task:
  """The registered task ``name`` at ``profile``'s budget; with ``sampling``
  other than ``"replacement"``, its batches drawn that way (``"epochs"``:
  shuffled epochs, ``tasks._sample``), under its own name (``regression`` →
  ``regression_epochs``, so it caches apart). Raises ValueError for a task
  without a finite training set to draw from that way."""
  kw = {}
  steps = PROFILES[profile].get(name)
  if steps:
    kw["steps"] = steps
  if sampling != "replacement":
    if "sampling" not in inspect.signature(T.REGISTRY[name]).parameters:
      raise ValueError(f"{name} does not take sampling={sampling!r}")
    kw["sampling"] = sampling
  return T.get(name, **kw)


def _as_arrays(d):
  return {"final_metric": np.asarray(d["final_metric"], float),
          "final_held_out": np.asarray(d["final_held_out"], float)}


# ---- output ------------------------------------------------------------------


def _fmt_ratio(r):
  return f"{r:.3g}"


def summary_rows(table, groups, methods):
  sums = {g: summarize(table, ts) for g, ts in groups.items() if ts}
  rows = []
  for m in methods:
    row = {"method": m}
    for g in groups:
      if g in sums and m in sums[g]:
        k, n, gm = sums[g][m]
        row[f"reached ({g})"] = f"{k}/{n}"
        row[f"geo-mean ratio ({g})"] = _fmt_ratio(gm)
      else:
        row[f"reached ({g})"] = row[f"geo-mean ratio ({g})"] = "—"
    rows.append(row)
  cols = ["method"] + [c for g in groups for c in
                       (f"reached ({g})", f"geo-mean ratio ({g})")]
  return rows, cols, sums


def per_task_rows(table, tasks, methods):
  """``(rows, columns)`` of figure (b) per task: each method's geometric
  mean over the task's cells, so the table shows which tasks carry the
  overall figure (their geometric mean when every task has as many cells)."""
  rows = []
  for m in methods:
    row = {"method": m}
    for t in tasks:
      c = table[t].get(m)
      row[t] = "—" if c is None else _fmt_ratio(geo_mean(c["ratio"]))
    rows.append(row)
  return rows, ["method", *tasks]


def heatmap(table, tasks, methods, path) -> str:
  """One panel per method: tasks x starts, colour log10(ratio to the best),
  a dot where the median final metric reaches the target."""
  plt = report._plt()  # pylint: disable=protected-access
  n = len(methods)
  ncol = min(4, n)
  nrow = math.ceil(n / ncol)
  fig, axes = plt.subplots(nrow, ncol, squeeze=False,
                           figsize=(3.8 * ncol, (0.3 * len(tasks) + 1.6)
                                    * nrow), constrained_layout=True)
  vmax = math.log10(RATIO_CAP)
  im = None
  for ax, m in zip(axes.ravel(), methods):
    spec = O.get(m)
    z = np.full((len(tasks), 7), np.nan)
    dots = []
    for i, t in enumerate(tasks):
      c = table[t].get(m)
      if c is None:
        continue
      z[i] = np.log10(c["ratio"])
      dots += [(j, i) for j, ok in enumerate(c["reached"]) if ok]
    im = ax.imshow(z, cmap="magma_r", vmin=0, vmax=vmax, aspect="auto")
    if dots:
      xs, ys = zip(*dots)
      ax.scatter(xs, ys, s=10, c="deepskyblue", edgecolors="k",
                 linewidths=0.4)
    ax.set_yticks(range(len(tasks)))
    ax.set_yticklabels(tasks, fontsize=6)
    ax.set_xticks(range(7))
    ax.set_xticklabels([f"{v:.0e}" for v in spec.start_grid], fontsize=5,
                       rotation=60)
    ax.set_title(f"{m}\n{spec.start_name}", fontsize=7)
  for ax in axes.ravel()[n:]:
    ax.axis("off")
  if im is not None:
    cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.5)
    cb.set_label(f"log10(final loss / best in cell), capped at "
                 f"{vmax:g}; dot: target reached", fontsize=7)
  fig.suptitle("Starting-rate robustness (median over seeds)", fontsize=9)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return str(path)


def _cell(task, c, j):
  v = c["median"][j]
  s = f"{v:.3g}" if math.isfinite(v) else "nan"
  if c["reached"][j]:
    s = f"**{s}**"
  return f"{s} ({c['ratio'][j]:.2g})"


def markdown(table, tasks, methods, built, records, groups, seeds, profile,
             fig_path, argv_line, task_walls, registered) -> str:
  rows, cols, _ = summary_rows(table, groups, methods)
  knob_rows = [{"method": m, "start knob": O.get(m).start_name,
                "default": f"{O.get(m).start_default:g}",
                "starts": ", ".join(f"{v:.2g}" for v in O.get(m).start_grid)}
               for m in methods]
  budget_rows = []
  for t in tasks:
    task = built[t]
    steps = {records[t][m]["steps"] for m in records[t]}
    budget_rows.append({
        "task": t, "group": group_of(t),
        "steps": "/".join(str(s) for s in sorted(steps)),
        "registered steps": str(registered[t]),
        "metric": task.metric_name,
        "target": f"{'≥' if task.higher_is_better else '≤'} "
                  f"{task.target:g}",
        "loss of (b)": ("held-out loss" if task.higher_is_better
                        else task.metric_name),
        # compile + run of every method's grid, from the records
        "wall s": f"{sum(d['wall_s'] for d in records[t].values()):.0f}"})
  prov = {}
  for t in tasks:
    for m, d in records[t].items():
      prov.setdefault(m, set()).add(f"{d['date']} {d['commit']}")
  prov_rows = [{"method": m, "computed (date commit)": "; ".join(sorted(
      prov.get(m, {"—"}))), "mode": "/".join(sorted(
          {records[t][m]["mode"] for t in tasks if m in records[t]}))}
               for m in methods]
  parts = [
      BEGIN,
      "## Starting-rate robustness (the self-tuning issue's primary figure)",
      f"`{argv_line}` — profile `{profile}`, evaluation seeds "
      f"{', '.join(map(str, seeds))} (seed 0 is kept for tuning).",
      f"```\n{datetime.date.today().isoformat()} | {machine()}\n```",
      "Every method is started at 7 values of its start knob (below) on "
      "every task. Per (task, start) cell: the median over seeds of the "
      "final metric; **(a)** cells whose median reaches the task's target; "
      "**(b)** the geometric mean over cells of the method's median final "
      "loss ÷ the best median final loss of any method in that cell (final "
      "loss: the final metric where lower is better, the final held-out "
      "cross-entropy on accuracy tasks; a seed's non-finite loss counts as "
      f"+inf, each ratio is capped at {RATIO_CAP:g}, so a diverged cell "
      f"counts {RATIO_CAP:g}; losses below {LOSS_FLOOR:g} count as "
      f"{LOSS_FLOOR:g}). 1 = best in every cell. Tuning tasks: "
      f"{', '.join(TUNING_TASKS)}; every other task is held out.",
      report.markdown_table(rows, cols),
      f"![robustness heat map]({os.path.relpath(fig_path, RESULTS_MD.parent)})",
      "Figure (b) per task: the geometric mean of the ratio over the task's "
      "7 cells (every task has 7, so a method's figure over a group is the "
      "geometric mean of its tasks' values; a cell at the cap costs a "
      f"task {RATIO_CAP:g}^(1/7) = {RATIO_CAP ** (1 / 7):.3g}×):",
      report.markdown_table(*per_task_rows(table, tasks, methods)),
      "Start knobs (`OptSpec.start_name` / `start_grid` in "
      "`ae_jax/bench/optimizers.py`):",
      report.markdown_table(knob_rows, ("method", "start knob", "default",
                                        "starts")),
      "Tasks and budgets (targets are the registered ones; wall s: the "
      "summed compile + run time of the methods' grids as recorded, on the "
      "machines and loads they ran under):",
      report.markdown_table(budget_rows, ("task", "group", "steps",
                                          "registered steps", "metric",
                                          "target", "loss of (b)",
                                          "wall s")),
      "Provenance of each method's cached results (results of different "
      "code versions may be merged; `vmapped`: one jitted run over starts × "
      "seeds, `loop`: one run per start):",
      report.markdown_table(prov_rows, ("method", "computed (date commit)",
                                        "mode")),
  ]
  cell_parts = ["<details><summary>Per-task cells: median final metric "
                "(bold: target reached) and, in parentheses, the ratio of "
                "(b)</summary>"]
  for t in tasks:
    task = built[t]
    trows = []
    for m in methods:
      c = table[t].get(m)
      if c is None:
        continue
      trows.append({"method": m, **{f"start {j + 1}": _cell(task, c, j)
                                    for j in range(7)}})
    cell_parts += [f"**{t}** ({task.metric_name}, target "
                   f"{'≥' if task.higher_is_better else '≤'} "
                   f"{task.target:g})",
                   report.markdown_table(trows, ["method"] + [
                       f"start {j + 1}" for j in range(7)])]
  cell_parts.append("</details>")
  parts += ["\n\n".join(cell_parts), END]
  return "\n\n".join(parts)


def write_section(section: str) -> None:
  text = RESULTS_MD.read_text()
  if BEGIN in text and END in text:
    head, rest = text.split(BEGIN, 1)
    text = head + section + rest.split(END, 1)[1]
  else:
    # Near the top of the measured results: before the first section.
    i = text.find("\n## ")
    i = len(text) if i < 0 else i + 1
    text = text[:i] + section + "\n\n" + text[i:]
  RESULTS_MD.write_text(text)


def ae_line(sums, groups) -> str:
  parts = []
  for m in AE_PRESETS:
    if m not in sums.get("all", {}):
      continue
    k, n, gm = sums["all"][m]
    extra = ", ".join(f"{g} {sums[g][m][0]}/{sums[g][m][1]} "
                      f"{_fmt_ratio(sums[g][m][2])}"
                      for g in groups if g != "all" and g in sums
                      and m in sums[g])
    parts.append(f"{m} {k}/{n} reached, geo-mean ratio {_fmt_ratio(gm)} "
                 f"({extra})")
  return "AE presets: " + "; ".join(parts)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tasks", default=None,
                  help="comma-separated (default: the ranking tasks + "
                       "drift_* + resnet_digits)")
  ap.add_argument("--methods", default=None,
                  help="comma-separated; computed afresh, merged with the "
                       "cached default methods (default: every default "
                       "method, cached ones reused)")
  ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
  ap.add_argument("--profile", choices=sorted(PROFILES), default="quick")
  ap.add_argument("--fresh", action="store_true",
                  help="recompute every method asked even if cached (the "
                       "other default methods are still merged)")
  ap.add_argument("--no-merge", action="store_true",
                  help="report only the methods asked, no cached others")
  ap.add_argument("--report-only", action="store_true",
                  help="only rebuild the table, figure and RESULTS section "
                       "from the cache")
  ap.add_argument("--no-write", action="store_true",
                  help="print only: no figure, no RESULTS.md section")
  ap.add_argument("--sampling", choices=("replacement", "epochs"),
                  default="replacement",
                  help="how the tasks draw their batches; 'epochs' (shuffled "
                       "epochs) runs the tasks that have a finite training "
                       "set, caches them apart and only prints (the "
                       "primary figure draws with replacement)")
  argv = sys.argv[1:] if argv is None else list(argv)
  args = ap.parse_args(argv)
  _commit()
  seeds = [int(s) for s in args.seeds.split(",")]
  if 0 in seeds:
    print("note: seed 0 is the tuning seed; it is kept out of evaluations "
          "elsewhere in the harness")
  task_names = list(dict.fromkeys(args.tasks.split(",") if args.tasks
                                  else default_tasks()))
  explicit = args.methods.split(",") if args.methods else []
  methods = list(dict.fromkeys(explicit or DEFAULT_METHODS))
  merged = ([] if args.no_merge else
            [m for m in DEFAULT_METHODS if m not in methods])
  for m in methods:
    O.get(m)  # unknown names fail before any run
  argv_line = "JAX_PLATFORMS=cpu python -m benchmarks.robustness" + (
      " " + " ".join(argv) if argv else "")

  built, records, table, task_walls, registered = {}, {}, {}, {}, {}
  t_start = time.perf_counter()
  for t in task_names:
    try:
      task = build_task(t, args.profile, args.sampling)
    except (ImportError, ValueError) as e:
      print(f"{t}: not run ({e})")
      continue
    built[t] = task
    registered[t] = (T.get(t).steps if PROFILES[args.profile].get(t)
                     else task.steps)
    steps = R._round_steps(task.steps, task.eval_every)  # pylint: disable=protected-access
    print(f"== {t}: {steps} steps (registered {registered[t]}), target "
          f"{task.metric_name} {'>=' if task.higher_is_better else '<='} "
          f"{task.target:g}, group {group_of(t)}", flush=True)
    records[t] = {}
    t0 = time.perf_counter()
    ran = False
    for m in methods + merged:
      spec = O.get(m)
      path = cache_path(args.profile, task.name, m)
      cached = load(path, seeds, steps, spec)
      must_run = (m in methods and not args.report_only
                  and (bool(explicit) or args.fresh or cached is None))
      if must_run and spec.windowed and O.tox_available():
        # Cannot run here; its cached results (if any) are still merged.
        print(f"   {m}: not rerun ({O.tox_available()})")
        must_run = False
      if must_run:
        tm = time.perf_counter()
        d = run_pair(task, m, seeds, steps, args.profile)
        ran = True
        print(f"   {m:20s} {d['mode']:7s} {time.perf_counter() - tm:7.1f} s"
              + (f"  [{d['note'][:70]}]" if d["note"] and
                 d["mode"] == "loop" else ""), flush=True)
      elif cached is not None:
        d = cached
      else:
        continue
      records[t][m] = d
    if ran:
      task_walls[t] = time.perf_counter() - t0
      print(f"   {t}: {task_walls[t]:.0f} s", flush=True)
    if records[t]:
      table[t] = cells(task, {m: _as_arrays(d)
                              for m, d in records[t].items()})
  tasks = [t for t in task_names if t in table]
  if not tasks:
    print("no results to report (nothing ran and nothing is cached for "
          "these tasks and methods)")
    return 0
  shown = [m for m in list(DEFAULT_METHODS) + explicit
           if any(m in table[t] for t in tasks)]
  shown = list(dict.fromkeys(shown))
  groups = {"all": tasks,
            "tuning": [t for t in tasks if group_of(t) == "tuning"],
            "held-out": [t for t in tasks if group_of(t) == "held-out"]}
  rows, cols, sums = summary_rows(table, groups, shown)
  print(f"\nstarting-rate robustness, profile {args.profile}, seeds "
        f"{seeds}, {len(tasks)} tasks x 7 starts; steps: "
        + ", ".join(f"{t} {sorted({records[t][m]['steps'] for m in records[t]})[-1]}"
                    for t in tasks))
  print(f"(a) cells whose median final metric reaches the target; (b) "
        f"geometric mean of final loss / best in cell (cap {RATIO_CAP:g})")
  print(f"tuning tasks: {', '.join(groups['tuning'])}; held-out: "
        f"{', '.join(groups['held-out'])}\n")
  print(report.text_table(rows, cols))
  print(f"\nwall time of this run: {time.perf_counter() - t_start:.0f} s")
  if args.sampling != "replacement" and not args.no_write:
    print(f"sampling {args.sampling}: printed only; the RESULTS section and "
          f"figure stay the primary figure's (batches with replacement)")
  elif not args.no_write and tasks:
    fig = heatmap(table, tasks, shown, FIGURE)
    write_section(markdown(table, tasks, shown, built, records, groups, seeds,
                           args.profile, fig, argv_line, task_walls,
                           registered))
    print(f"wrote {os.path.relpath(fig, ROOT)} and the robustness section "
          f"of {os.path.relpath(RESULTS_MD, ROOT)}")
  print(ae_line(sums, groups))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())

"""The optimizer-level experiments of the theory, run with the harness.

  JAX_PLATFORMS=cpu python benchmarks/experiments.py --profile quick
  JAX_PLATFORMS=cpu python benchmarks/experiments.py --profile quick --only 1,13
  python benchmarks/experiments.py --assemble     # rebuild RESULTS.md only

Each experiment writes ``benchmarks/results/<profile>/exp<id>.json`` (its
markdown, its rows of the predictions table and its time-to-target per
optimizer) and its PNG figures to ``benchmarks/figures/``; every run then
regenerates the section of ``benchmarks/RESULTS.md`` between
``<!-- harness:begin -->`` and ``<!-- harness:end -->`` from all the JSON
files present (date, machine, profile, tables, predictions, ranking).

Protocol: seeds 1..N for evaluation (N = 5), seed 0 only for tuning
``name@tuned`` on a log grid; the same initialisation, data order and step
budget for every optimizer (see :mod:`ae_jax.bench.runner`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import sys
import time

import numpy as np

from ae_jax.bench import metrics as M
from ae_jax.bench import optimizers as O
from ae_jax.bench import report
from ae_jax.bench import runner as R
from ae_jax.bench import tasks as T

ROOT = pathlib.Path(__file__).resolve().parents[1]

FIGURES = ROOT / "benchmarks" / "figures"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- harness:begin -->", "<!-- harness:end -->"

PROFILES = {
    # CPU-sized: each experiment a few minutes on 2 shared cores.
    "quick": dict(seeds=5, scale=1, sens_seeds=3),
    # GPU-sized: 10x the steps, batch 256 (theory: 50k steps, bs 256).
    "full": dict(seeds=10, scale=10, sens_seeds=5),
}

EXPERIMENTS = {}


def experiment(eid, title):
  def deco(fn):
    EXPERIMENTS[eid] = (title, fn)
    return fn
  return deco


def _fig(name):
  FIGURES.mkdir(parents=True, exist_ok=True)
  return str(FIGURES / name)


def _rel(path):
  return os.path.relpath(path, RESULTS_MD.parent)


def _run_all(task, names, seeds, delay=0, learning_rates=None):
  results, rows, skipped = report.run_many(
      task, names, seeds, delay=delay, learning_rates=learning_rates)
  return results, rows, [f"`{s.split(':')[0]}` skipped: "
                         f"{s.split(': ', 1)[1]}" for s in skipped]


def _ttt_means(results, task):
  out = {}
  for r in results:
    ttt = r.summary(task)["ttt"]
    out[r.optimizer] = (float(np.mean(ttt)) if np.all(np.isfinite(ttt))
                        else math.nan)
  return out


def _task_header(task, seeds):
  return (f"Task `{task.name}`: {task.description}; {task.steps} steps, "
          f"seeds {seeds[0]}..{seeds[-1]}, target {task.metric_name} "
          f"{'≥' if task.higher_is_better else '≤'} {task.target:g}. "
          "Cells: mean ± 95% t-interval over seeds; time-to-target over the "
          "seeds that reached it (k/N when not all did); oscillation = RMS "
          "of log-loss around its 25-step moving average.")


def _tuning_note(results):
  notes = []
  for r in results:
    if r.tuning:
      g = ", ".join(f"{x:.2g}" for x in r.tuning["grid"])
      notes.append(f"`{r.optimizer}`: lr {r.learning_rate:.3g} from grid "
                   f"[{g}] on seed 0")
  return ("Tuned: " + "; ".join(notes) + ".") if notes else ""


# ---------------------------------------------------------------------------


@experiment("1", "Experiment 1: static regression, all peers")
def exp1(p):
  seeds = list(range(1, p["seeds"] + 1))
  task = T.get("regression", steps=1000 * p["scale"],
               batch_size=64 if p["scale"] == 1 else 256)
  names = (O.GROUPS["defaults"] + O.GROUPS["schedules"]
           + O.GROUPS["parameter_free"] + ["adafactor", "ae_adafactor"]
           + O.GROUPS["tensor_optix"] + O.GROUPS["tuned"])
  results, rows, skipped = _run_all(task, names, seeds)
  curves = report.plot_curves(
      [r for r in results if r.optimizer in
       ("adamw", "adamw@tuned", "ae_adamw", "ae_sgdm", "sgdm@tuned",
        "prodigy", "schedule_free_adamw", "adamw_cosine", "tox_spsa")],
      task, _fig("exp1_regression_curves.png"))
  coefs = report.plot_coefficients(results, _fig("exp1_coefficients.png"))
  # Learning-rate sensitivity: final loss vs initial lr over 1e-5 .. 1.
  grid = np.logspace(-5, 0, 6)
  sens_seeds = list(range(1, p["sens_seeds"] + 1))
  sweeps = {}
  for name in ("adamw", "sgdm", "adamw_cosine", "ae_adamw", "ae_sgdm",
               "schedule_free_adamw", "prodigy"):
    t0 = time.perf_counter()
    sweeps[name] = (grid, R.lr_sweep(task, name, grid, sens_seeds))
    print(f"    sensitivity {name}: {time.perf_counter() - t0:.1f} s",
          flush=True)
  sens = report.plot_lr_sensitivity(sweeps, task,
                                    _fig("exp1_lr_sensitivity.png"))
  sens_rows = []
  for name, (g, f) in sweeps.items():
    cells = {f"{lr:.0e}": (f"{np.median(v):.3g}" if np.all(np.isfinite(v))
                           else "nan") for lr, v in zip(g, f)}
    sens_rows.append({"optimizer": name, **cells})
  sens_cols = ["optimizer"] + [f"{lr:.0e}" for lr in grid]
  md = "\n\n".join(filter(None, [
      _task_header(task, seeds), report.markdown_table(rows),
      _tuning_note(results), "\n".join(f"* {s}" for s in skipped),
      f"![curves]({_rel(curves)})", f"![coefficients]({_rel(coefs)})" if coefs
      else "",
      f"Learning-rate sensitivity: median final {task.metric_name} over "
      f"seeds {sens_seeds[0]}..{sens_seeds[-1]} against the initial (for "
      "AE) or constant learning rate (for prodigy: its multiplier). "
      "`ae_sgdm`'s α is in the EMA-momentum convention: at α it takes the "
      "steps of `sgdm` at α/10.",
      report.markdown_table(sens_rows, sens_cols),
      f"![lr sensitivity]({_rel(sens)})"]))
  return {"markdown": md, "ttt": {task.name: _ttt_means(results, task)},
          "budgets": {task.name: task.steps}, "predictions": []}


@experiment("13", "Experiment 13: hyper-cliff (absurd initial learning rate)")
def exp13(p):
  seeds = list(range(1, p["seeds"] + 1))
  task = T.get("regression", steps=1000 * p["scale"])
  # 1000x the default rate of each family (ae_sgdm's α is in the EMA
  # convention: 100 takes the steps of sgdm at 10).
  lrs = {"adamw": 1.0, "ae_adamw": 1.0, "ae_adam": 1.0, "adamw_plateau": 1.0,
         "sgdm": 10.0, "ae_sgdm": 100.0,
         # the optional AE-10 safety law (laws.safety), off in the presets
         "ae_adam+safety": 1.0, "ae_adamw+safety": 1.0,
         "ae_sgdm+safety": 100.0}
  results, rows, _ = _run_all(task, list(lrs), seeds, learning_rates=lrs)
  preds = []
  for r, row in zip(results, rows):
    tts = M.time_to_stability(r.loss)
    row["time to stability"] = M.fmt_ci(tts, 3)
    d = r.summary(task).get("max_dlog_lr")
    row["max Δlog α"] = f"{np.nanmax(d):.3g}" if d is not None else "—"
    if r.optimizer in ("ae_adamw", "ae_sgdm", "ae_adamw+safety",
                       "ae_sgdm+safety"):
      nan_steps = int(M.nonfinite(r.loss).sum())
      stable = np.isfinite(tts).all()
      preds.append({
          "prediction": f"hyper-cliff, {r.optimizer} at {r.learning_rate:g}:"
                        " no NaN, stabilises without restart",
          "measured": f"{nan_steps} NaN/inf steps; stable on "
                      f"{int(np.isfinite(tts).sum())}/{len(seeds)} seeds "
                      f"(step {M.fmt_ci(tts, 3)}); max Δlog α "
                      f"{row['max Δlog α']}",
          "verdict": "holds" if nan_steps == 0 and stable else "fails"})
  cols = ("optimizer", "lr", "final", "NaN/inf steps", "diverged",
          "time to stability", "max Δlog α", "time-to-target")
  curves = report.plot_curves(results, task, _fig("exp13_hypercliff.png"))
  coefs = report.plot_coefficients(results, _fig("exp13_coefficients.png"))
  md = "\n\n".join([
      _task_header(task, seeds) + " Every optimizer starts at 1000x its "
      "family's default rate. Time to stability: first step after which the "
      "training loss stays finite and below its initial value. "
      "`+safety`: the preset with the optional AE-10 safety law "
      "(`canonical_laws(..., safety=True)`: α falls while the filtered loss "
      "stays 10% above its best level).",
      report.markdown_table(rows, cols), f"![curves]({_rel(curves)})",
      f"![coefficients]({_rel(coefs)})"])
  return {"markdown": md, "predictions": preds}


def _gauge(p, kind):
  seeds = list(range(1, p["seeds"] + 1))
  names = ["sgdm", "ae_sgdm", "ae_sgdm+gauge", "adamw", "ae_adamw"]
  variants = ([(f"c={c:g}", T.scaled(T.get("regression",
                                           steps=1000 * p["scale"]), c))
               for c in (0.1, 1.0, 10.0)] if kind == "scale" else
              [(f"bs={b}", T.get("regression", batch_size=b,
                                 steps=1000 * p["scale"]))
               for b in (64, 256, 1024)])
  table = {n: {} for n in names}
  all_rows, per_variant = [], {}
  for label, task in variants:
    results, rows, _ = _run_all(task, names, seeds)
    per_variant[label] = (task, results)
    for r, row in zip(results, rows):
      table[r.optimizer][label] = r.summary(task)
      row["variant"] = label
      all_rows.append(row)
  labels = [l for l, _ in variants]
  preds, sum_rows = [], []
  for n in names:
    ttt = [np.nanmean(table[n][l]["ttt"]) if np.isfinite(
        table[n][l]["ttt"]).all() else math.nan for l in labels]
    finals = [np.mean(table[n][l]["final"]) for l in labels]
    spread = ((max(ttt) - min(ttt)) / min(ttt) if all(map(math.isfinite, ttt))
              else math.nan)
    sum_rows.append({"optimizer": n,
                     **{f"ttt {l}": f"{t:.0f}" if math.isfinite(t) else
                        "not all" for l, t in zip(labels, ttt)},
                     **{f"final {l}": f"{f:.3g}" for l, f in zip(labels,
                                                                 finals)},
                     "ttt spread": f"{spread:.0%}" if math.isfinite(spread)
                     else "—"})
    if n.startswith("ae_"):
      preds.append({
          "prediction": f"gauge robustness ({'loss scale' if kind == 'scale' else 'batch size'}), {n}: "
                        "time-to-target within 10% across " + ", ".join(labels),
          "measured": "ttt " + " / ".join(
              f"{t:.0f}" if math.isfinite(t) else "never" for t in ttt)
                      + (f" (spread {spread:.0%})" if math.isfinite(spread)
                         else ""),
          "verdict": "holds" if math.isfinite(spread) and spread <= 0.10
                     else "fails"})
  cols = (["optimizer"] + [f"ttt {l}" for l in labels]
          + [f"final {l}" for l in labels] + ["ttt spread"])
  figs = []
  for label, (task, results) in per_variant.items():
    figs.append(report.plot_curves(
        results, task, _fig(f"exp{'10' if kind == 'scale' else '9'}_"
                            f"{label.replace('=', '')}.png"), title=label))
  task0 = variants[0][1]
  md = "\n\n".join([
      _task_header(task0, seeds).replace(f"`{task0.name}`", "`regression` "
                                         + ("× c" if kind == "scale" else
                                            "at three batch sizes")),
      "Time-to-target (mean over seeds, all seeds must reach it) and final "
      "test MSE; spread = (max - min) / min of the time-to-target.",
      report.markdown_table(sum_rows, cols),
      "<details><summary>full table</summary>\n\n" + report.markdown_table(
          all_rows, ("variant",) + report.COLUMNS) + "\n\n</details>",
      " ".join(f"![{l}]({_rel(f)})" for l, f in zip(labels, figs))])
  return {"markdown": md, "predictions": preds}


@experiment("10", "Experiment 10: loss scale x0.1 / x10 (gauge robustness)")
def exp10(p):
  return _gauge(p, "scale")


@experiment("9", "Experiment 9: batch size 64 / 256 / 1024 (gauge robustness)")
def exp9(p):
  return _gauge(p, "batch")


def _worse_beyond_ci(task, ref, alt) -> list[str]:
  """The metrics on which ``alt`` is worse than ``ref`` beyond both 95%
  intervals (the intervals do not overlap): final metric, AUC,
  time-to-target (unreached = 2x budget), NaN/inf steps."""
  sign = -1.0 if task.higher_is_better else 1.0
  worse = []
  for key, label in (("final", "final"), ("auc", "AUC"), ("ttt", "time-to-target")):
    a, b = ref[key], alt[key]
    if key == "ttt":
      a = np.where(np.isfinite(a), a, 2 * task.steps)
      b = np.where(np.isfinite(b), b, 2 * task.steps)
    else:
      a, b = sign * np.asarray(a, float), sign * np.asarray(b, float)
    ma, ha, _ = M.t_interval(a)
    mb, hb, _ = M.t_interval(b)
    if math.isfinite(mb) and math.isfinite(ma) and mb - hb > ma + ha:
      worse.append(label)
    elif not math.isfinite(mb) and math.isfinite(ma):
      worse.append(label)
  if alt["nonfinite"].sum() > ref["nonfinite"].sum():
    worse.append("NaN/inf steps")
  return worse


@experiment("18", "Experiment 18: law knock-outs and knock-ins")
def exp18(p):
  seeds = list(range(1, p["seeds"] + 1))
  tasks = [T.get("regression", steps=1000 * p["scale"]),
           T.get("deep_linear", steps=1500 * p["scale"]),
           T.get("digits_cnn", steps=600 * p["scale"]),
           T.get("drift_regression")]
  blocks, preds, verdict = [], [], {}
  for base in ("ae_sgdm", "ae_adamw", "ae_sgdm_noise"):
    if base == "ae_sgdm_noise":
      names = [base, f"{base}-no_noise"]
    else:
      names = ([base] + [f"{base}-no_{law}" for law in O.KNOCKOUTS if law != "noise"]
               + [f"{base}+{law}" for law in O.ADD_ONS])
    for task in tasks:
      results, rows, _ = _run_all(task, names, seeds)
      ref = results[0].summary(task)
      for r, row in zip(results[1:], rows[1:]):
        worse = _worse_beyond_ci(task, ref, r.summary(task))
        row["worse than the preset (95% CI)"] = ", ".join(worse) or "—"
        verdict.setdefault(r.optimizer, []).append((task.name, worse))
      rows[0]["worse than the preset (95% CI)"] = "(preset)"
      blocks.append(f"**{base} on {task.name}**\n\n" + report.markdown_table(
          rows, report.COLUMNS + ("worse than the preset (95% CI)",)))
  for name, per_task in verdict.items():
    hits = [f"{t}: {', '.join(w)}" for t, w in per_task if w]
    if "-no_" in name:
      law = name.split("-no_")[1]
      preds.append({
          "prediction": f"knock-out of the canonical {law} law ({name.split('-no_')[0]}) "
                        "degrades a metric beyond the 95% interval on some task",
          "measured": "; ".join(hits) or "no task",
          "verdict": "holds" if hits else "fails"})
    else:
      base, law = name.split("+")
      preds.append({
          "prediction": f"the opt-in {law} law ({base}) stays out of the canonical chain: "
                        "adding it does not help (informative; 'worse' lists where it hurts)",
          "measured": "; ".join(hits) or "no metric worse beyond the interval",
          "verdict": "informative"})
  md = "\n\n".join([
      "Knock-outs (`-no_<law>`: a law of the canonical chain removed) and knock-ins "
      "(`+<law>`: an opt-in law added) of `ae_sgdm` and `ae_adamw` at their default rates on "
      f"four tasks, seeds {seeds[0]}..{seeds[-1]}; the noise law acts only from σ₀ > 0 "
      "(`ae_sgdm_noise`, σ₀ = 1e-3). 'worse': the variant's 95% interval lies entirely on the "
      "bad side of the preset's (final metric, AUC, time-to-target with unreached = 2x "
      "budget), or it has more NaN/inf steps."] + blocks)
  return {"markdown": md, "predictions": preds}


@experiment("7", "Experiment 7: quadratic bowl with k-step stale gradients")
def exp7(p):
  seeds = list(range(1, p["seeds"] + 1))
  task = T.get("quadratic", steps=600 * p["scale"])
  names = ["sgdm", "ae_sgdm", "ae_sgdm+resonance", "adamw", "ae_adamw",
           "ae_adamw+resonance"]
  blocks, preds = [], []
  out = {}
  for k in (0, 4, 8):
    lrs = {n: 0.5 if "sgdm" in n else 0.05 for n in names}
    results, rows, _ = _run_all(task, names, seeds, delay=k,
                                learning_rates=lrs)
    for r, row in zip(results, rows):
      rho = r.signals.get("rho")
      row["mean ρ"] = f"{np.nanmean(rho):.2f}" if rho is not None else "—"
      out[(k, r.optimizer)] = r.summary(task)
    blocks.append(f"**delay k = {k}**\n\n" + report.markdown_table(
        rows, report.COLUMNS + ("mean ρ",)))
    fig = report.plot_curves(results, task, _fig(f"exp7_delay{k}.png"),
                             title=f"stale gradients, k = {k}")
    blocks.append(f"![k={k}]({_rel(fig)})")
    for base in ("ae_sgdm", "ae_adamw"):
      on, off = out[(k, f"{base}+resonance")], out[(k, base)]
      o_on, o_off = np.mean(on["oscillation"]), np.mean(off["oscillation"])
      f_on, f_off = np.mean(on["final"]), np.mean(off["final"])
      drop = 1 - o_on / o_off if o_off > 0 else math.nan
      preds.append({
          "prediction": f"resonance control, {base}, k = {k}: oscillation "
                        "lower with AE-5 at no loss of speed",
          "measured": f"oscillation {o_on:.3g} vs {o_off:.3g} without "
                      f"(drop {drop:.0%}); final f {f_on:.3g} vs {f_off:.3g}",
          "verdict": ("holds" if o_on < o_off and f_on <= 1.1 * f_off
                      else "fails")})
  md = "\n\n".join([
      _task_header(task, seeds) + " Gradients (and the loss the optimizer "
      "sees) are computed at the parameters of k steps earlier. Rates: "
      "0.5 for the SGD family, 0.05 for the Adam family (both stable at "
      "k = 0)."] + blocks)
  return {"markdown": md, "predictions": preds}


@experiment("8", "Experiment 8: Rosenbrock and a deep linear network")
def exp8(p):
  names = (O.GROUPS["defaults"] + ["prodigy", "dog", "schedule_free_adamw",
                                   "adamw_cosine"])
  return _sweep_tasks(p, [("rosenbrock", "exp8_rosenbrock"),
                          ("deep_linear", "exp8_deep_linear")], names)


def _sweep_tasks(p, tasks, names):
  """Each (task name, figure stem) at its registered steps x profile scale:
  table, curves and coefficient figures, time-to-target for the ranking.
  A task whose optional dependency is missing is reported, not run."""
  seeds = list(range(1, p["seeds"] + 1))
  md, ttt, budgets = [], {}, {}
  for tname, stem in tasks:
    try:
      base = T.get(tname)
    except ImportError as e:
      md.append(f"`{tname}` not run: {e}")
      continue
    task = T.get(tname, steps=base.steps * p["scale"])
    results, rows, _ = _run_all(task, names, seeds)
    fig = report.plot_curves(results, task, _fig(f"{stem}.png"))
    cf = report.plot_coefficients(results, _fig(f"{stem}_coefs.png"))
    md += [_task_header(task, seeds), report.markdown_table(rows),
           f"![{tname}]({_rel(fig)}) ![coefs]({_rel(cf)})"]
    ttt[task.name] = _ttt_means(results, task)
    budgets[task.name] = task.steps
  return {"markdown": "\n\n".join(md), "ttt": ttt, "budgets": budgets,
          "predictions": []}


@experiment("2", "Experiment 2: image classification (digits and MNIST-1D "
                "CNNs)")
def exp2(p):
  names = (O.GROUPS["defaults"] + ["adamw_cosine", "prodigy",
                                   "schedule_free_adamw"])
  return _sweep_tasks(p, [("digits_cnn", "exp2_digits"),
                          ("mnist1d_cnn", "exp2_mnist1d")], names)


@experiment("3", "Experiment 3: language modelling (byte-level transformer)")
def exp3(p):
  seeds = list(range(1, p["seeds"] + 1))
  big = {} if p["scale"] == 1 else dict(batch_size=64, context=128,
                                         d_model=128, layers=4)
  task = T.get("char_lm", steps=800 * p["scale"], **big)
  names = ["adamw", "adamw_warmup_cosine", "prodigy", "schedule_free_adamw",
           "sgdm", "ae_sgdm", "ae_adam", "ae_adamw"]
  results, rows, _ = _run_all(task, names, seeds)
  betas = []
  for r, row in zip(results, rows):
    s = r.summary(task)
    n = len(r.seeds)
    row["NaN/inf steps"] = (f"{int(s['nonfinite'].sum())} "
                            f"({s['nonfinite'].sum() / (n * r.steps):.1%})")
    if "b1" in r.coefficients:
      b1, b2 = r.coefficients["b1"], r.coefficients["b2"]
      betas.append(
          f"`{r.optimizer}`: β1 {np.mean(b1[:, 0]):.3f} → "
          f"{np.mean(b1[:, -1]):.3f} (seed range {b1[:, -1].min():.3f}–"
          f"{b1[:, -1].max():.3f}), β2 {np.mean(b2[:, 0]):.4f} → "
          f"{np.mean(b2[:, -1]):.4f} ({b2[:, -1].min():.4f}–"
          f"{b2[:, -1].max():.4f})")
  fig = report.plot_curves(results, task, _fig("exp3_char_lm.png"))
  cf = report.plot_coefficients(results, _fig("exp3_char_lm_coefs.png"))
  md = "\n\n".join([
      _task_header(task, seeds) + " NaN/inf steps: count (share of all "
      "steps); oscillation as in the other tables.",
      report.markdown_table(rows),
      "β1/β2 trajectories (mean over seeds, start → end of the budget): "
      + "; ".join(betas) + ".",
      f"![char_lm]({_rel(fig)}) ![coefs]({_rel(cf)})"])
  return {"markdown": md, "ttt": {task.name: _ttt_means(results, task)},
          "budgets": {task.name: task.steps}, "predictions": []}


@experiment("16", "Experiment 16: SGDm, Adam, AdamW, Adafactor with and "
                  "without AE")
def exp16(p):
  seeds = list(range(1, p["seeds"] + 1))
  pairs = [("sgdm", "ae_sgdm"), ("adam", "ae_adam"), ("adamw", "ae_adamw"),
           ("adafactor", "ae_adafactor")]
  names = [n for pair in pairs for n in pair]
  md, preds, ttt, budgets = [], [], {}, {}
  for tname in ("regression", "deep_linear", "digits_cnn"):
    base = T.get(tname)
    task = T.get(tname, steps=base.steps * p["scale"])
    results, rows, _ = _run_all(task, names, seeds)
    by = {r.optimizer: r.summary(task) for r in results}
    sign = -1 if task.higher_is_better else 1
    for plain, with_ae in pairs:
      a, b = by[plain], by[with_ae]
      fa, fb = np.mean(a["final"]), np.mean(b["final"])
      ta = np.mean(np.where(np.isfinite(a["ttt"]), a["ttt"], 2 * task.steps))
      tb = np.mean(np.where(np.isfinite(b["ttt"]), b["ttt"], 2 * task.steps))
      better_final = sign * fb <= sign * fa
      preds.append({
          "prediction": f"{task.name}: {with_ae} no worse than {plain} at "
                        "its default rate (final metric and time-to-target)",
          "measured": f"final {fb:.4g} vs {fa:.4g}; time-to-target "
                      f"{tb:.0f} vs {ta:.0f} (unreached = 2x budget)",
          "verdict": "holds" if better_final and tb <= ta else "fails"})
    fig = report.plot_curves(results, task, _fig(f"exp16_{tname}.png"))
    md += [_task_header(task, seeds), report.markdown_table(rows),
           f"![{tname}]({_rel(fig)})"]
    ttt[task.name] = _ttt_means(results, task)
    budgets[task.name] = task.steps
  md.insert(0, "Each base optimizer at its usual default rate (Optax's "
               "defaults: SGDm 1e-2, Adam/AdamW 1e-3, Adafactor 1e-2) against "
               "the same optimizer with AE adapting its coefficients from "
               "the same initial values (`ae_sgdm` from α = 0.1: its base is "
               "SGD with EMA momentum, whose α is 1/(1 − β) = 10 times the "
               "heavy-ball rate of `optax.sgd`, so both take the same first "
               "steps). Adafactor + AE adapts only the "
               "learning rate (`inject_hyperparams` cannot trace "
               "Adafactor's other arguments).")
  # The ranking already has these tasks from experiments 1, 2 and 8 with
  # more peers; only report the pairs here.
  del ttt, budgets
  return {"markdown": "\n\n".join(md), "predictions": preds}


@experiment("17", "Experiment 17: memory and wall-time overhead")
def exp17(p):
  try:
    from benchmarks import overhead  # python -m benchmarks.experiments
  except ImportError:  # python benchmarks/experiments.py: its folder is first
    import overhead
  sizes = [1e5, 1e6] if p["scale"] == 1 else [1e6, 1e7, 1e8]
  rows = []
  for total in sizes:
    rows += overhead.bench(int(total), rounds=10, calls=5)
  cols = tuple(rows[0])
  md = "\n\n".join([
      "`benchmarks/overhead.py` at small sizes (the full measurement at 1M "
      "and 10M parameters is the section 'Experiment 17' near the top of "
      "this file): jitted `update + apply_updates`, parameters and state "
      "donated, optimizers interleaved, 10 rounds of 5 calls.",
      report.markdown_table([{c: (f"{r[c]:.3g}" if isinstance(r[c], float)
                                  else str(r[c])) for c in cols}
                             for r in rows], cols)])
  return {"markdown": md, "predictions": []}


# ---------------------------------------------------------------------------


def _drift_experiment(p, name, what):
  """Experiments 4 and 5 on the drift tasks of ``benchmarks/drift.py`` (the
  same measurement: time to recover, time to a common level, regret against
  the hindsight-best fixed adamw rate), every peer of its method list."""
  try:
    from benchmarks import drift  # python -m benchmarks.experiments
  except ModuleNotFoundError:  # python benchmarks/experiments.py
    import drift
  seeds = list(range(1, p["seeds"] + 1))
  base = T.get(name)
  task = T.get(name, steps=base.steps * p["scale"])
  data = drift.measure(task, list(drift.METHODS), seeds)
  fig = _fig(f"exp_{name}.png")
  drift.plot(task, data, fig)
  m = data["methods"]
  ratio = lambda k, a, b: float(np.mean(m[a][k])) / float(np.mean(m[b][k]))
  preds = [{
      "prediction": f"{what}: AE halves the recovery steps after a switch "
                    "(ae_adamw ≤ 0.5x adamw from the same start)",
      "measured": f"ae_adamw / adamw time to recover (own level) "
                  f"{ratio('ttr', 'ae_adamw', 'adamw'):.2f}x, to the common "
                  f"level {ratio('ttl', 'ae_adamw', 'adamw'):.2f}x; / "
                  f"mechanize {ratio('ttl', 'ae_adamw', 'mechanize_adam'):.2f}x"
                  " (common level)",
      "verdict": ("holds" if ratio("ttr", "ae_adamw", "adamw") <= 0.5
                  and ratio("ttl", "ae_adamw", "adamw") <= 0.5 else "fails")}]
  md = "\n\n".join([
      f"Seeds {seeds[0]}..{seeds[-1]}; every method from its registry default "
      "rate, same initialisation and data order. Time to recover: steps after "
      "each switch until the 25-step mean training loss is back within 10 % "
      "of its own pre-switch level (never = the whole period); time to "
      "common level: the same against the pre-switch level of the "
      "hindsight-best fixed adamw rate, one level for all; time to "
      "attainable level: the same against the higher of that level and the "
      "one the hindsight-best rate reaches by the end of the new phase; "
      "regret: AUC of "
      "the metric minus that of the hindsight-best fixed adamw rate "
      "(positive = worse). The same measurement as the drift section "
      "(`python -m benchmarks.drift`).",
      drift.table(task, data), "\n".join(f"* {v}" for v in
                                         drift.verdicts(task, data)),
      f"![{name}]({_rel(fig)})"])
  return {"markdown": md, "predictions": preds}


@experiment("4", "Experiment 4: rotating input corruptions (drift_digits)")
def exp4(p):
  return _drift_experiment(p, "drift_digits",
                           "rotating corruptions (noise, blur, permutation)")


@experiment("5", "Experiment 5: class-subset shift (drift_classes)")
def exp5(p):
  return _drift_experiment(p, "drift_classes", "class-subset shift")


def _register_menu():
  """The menu experiments of :mod:`ae_jax.bench.menu` (6, 11, 12, 14, 15,
  curriculum), run and assembled like the optimizer experiments above."""
  from ae_jax.bench import menu
  for eid in menu.ids():
    exp = menu.get(eid)
    EXPERIMENTS[eid] = (exp.title,
                        lambda p, exp=exp: exp.run(p, str(FIGURES)))


_register_menu()


def machine_line() -> str:
  import jax
  import optax
  return (f"{datetime.date.today().isoformat()} | {platform.machine()}, "
          f"{os.cpu_count()} cores | {jax.default_backend()} | jax "
          f"{jax.__version__} | optax {optax.__version__} | Python "
          f"{platform.python_version()}")


def results_dir(profile):
  d = ROOT / "benchmarks" / "results" / profile
  d.mkdir(parents=True, exist_ok=True)
  return d


def assemble(profile: str) -> str:
  """The RESULTS.md section from every ``exp*.json`` of ``profile``."""
  d = results_dir(profile)
  order = list(EXPERIMENTS)
  found = {}
  for f in d.glob("exp*.json"):
    data = json.loads(f.read_text())
    found[data["id"]] = data
  parts = [BEGIN, f"## The experiment harness (issue #6), profile `{profile}`",
           f"Generated by `JAX_PLATFORMS=cpu python benchmarks/experiments.py "
           f"--profile {profile}` (harness: `ae_jax/bench/`). Each "
           "experiment's line gives the date, machine and wall time of its "
           "own run.",
           "Ran: " + (", ".join(e for e in order if e in found) or "none")
           + ". Not run in this profile: "
           + (", ".join(e for e in order if e not in found) or "none") + ". "
           "Sum of their wall times: "
           f"{sum(d['wall_s'] for d in found.values()) / 60:.0f} min."]
  preds, ttt, budgets = [], {}, {}
  for eid in order:
    if eid not in found:
      continue
    data = found[eid]
    parts += [f"### {data['title']}",
              f"```\n{data['machine']} | profile {profile} | "
              f"{data['wall_s']:.0f} s\n```", data["markdown"]]
    preds += data.get("predictions", [])
    ttt.update(data.get("ttt", {}))
    budgets.update(data.get("budgets", {}))
  if preds:
    parts += ["### Falsifiable predictions",
              report.markdown_table(preds, ("prediction", "measured",
                                            "verdict"))]
  if ttt:
    rank = M.normalised_ranking(ttt, budgets)
    rows = [{"optimizer": o, "median normalised time-to-target": f"{v:.2f}",
             "tasks": str(sum(o in t for t in ttt.values()))}
            for o, v in sorted(rank.items(), key=lambda kv: kv[1])]
    parts += ["### Ranking across tasks",
              "Per task, each optimizer's mean time-to-target (a run where "
              "some seed never reached the target counts 2x the budget) "
              "divided by the best optimizer's; the median over the tasks "
              f"({', '.join(ttt)}). 1.00 = fastest everywhere.",
              report.markdown_table(rows, ("optimizer",
                                           "median normalised time-to-target",
                                           "tasks"))]
  parts.append(END)
  section = "\n\n".join(parts)
  text = RESULTS_MD.read_text()
  if BEGIN in text and END in text:
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    text = head + section + tail
  else:
    text = text.rstrip() + "\n\n" + section + "\n"
  RESULTS_MD.write_text(text)
  return section


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--profile", choices=sorted(PROFILES), default="quick")
  ap.add_argument("--only", default=None,
                  help="comma-separated experiment ids (default: all): "
                       + ", ".join(EXPERIMENTS))
  ap.add_argument("--assemble", action="store_true",
                  help="only rebuild the RESULTS.md section")
  args = ap.parse_args(argv)
  p = PROFILES[args.profile]
  ids = list(EXPERIMENTS) if not args.only else args.only.split(",")
  if not args.assemble:
    for eid in ids:
      title, fn = EXPERIMENTS[eid]
      print(f"== {title}", flush=True)
      t0 = time.perf_counter()
      data = fn(p)
      data.update(id=eid, title=title, machine=machine_line(),
                  wall_s=time.perf_counter() - t0)
      (results_dir(args.profile) / f"exp{eid}.json").write_text(
          json.dumps(data, indent=1, default=float))
      print(f"   done in {data['wall_s']:.0f} s", flush=True)
  assemble(args.profile)
  return 0


if __name__ == "__main__":
  sys.exit(main())

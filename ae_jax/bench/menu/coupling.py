"""Experiment 12: the coupling curve (log α against log 1/(1 − β1)).

The theory (§10 prediction 1, menu item 12): "best regions obey a negative
correlation between log α and log 1/(1 − β)"; measured by sweeping AE,
logging ``ζ = (log α_t, log 1/(1 − β1_t))`` over training, and relating the
region the runs occupy to how well they do.

**The sweep**: ``ae_adamw`` from every start of a grid, initial rate α0 ∈
Adam's 7-point grid 1e-5 .. 1 (:data:`ae_jax.bench.optimizers.ADAM_GRID`)
times initial β1 ∈ {0.5, 0.8, 0.9, 0.97}, on every seed 1..N, on two
harness tasks: ``regression`` (a tanh MLP on noisy linear data, minibatch)
and ``rosenbrock`` (the deterministic 2-D valley, where momentum matters).
The shipped ``ae_adamw`` gives β1 no drive (``docs/laws.md``: measured, the
theory's rows cost final loss), so β1 would stay at its start and every
trajectory would be a vertical line; the sweep therefore runs the theory's
rows: ``ae_adamw+drive`` (β1 tracks ρ, falls with V; α's row on top of the
step-size law), and, as a mechanism check, ``+drive+coupling`` (AE-7 with
the canonical C = -0.1 between α and β1, which *imposes* a negative
coupling; its correlation is not evidence for the prediction).

All 28 starts x N seeds of one task and variant are one jitted run,
``vmap``-ped over starts and seeds, each start and seed with the same
initialisation and minibatches as every other start of that seed. A traced
α0 is the preset built at 1e-3 followed by ``scale(α0 / 1e-3)`` (Ω, the
warm start and the brake are relative to α0 and every law acts on log α,
so this is the run started at α0; ``tests/test_robustness_sweep.py``); the
recorded α is rescaled by the same factor. β1's start is traced directly.

**Measures**, on the trajectory after a warm-up (the first 10% of steps,
while α climbs from its warm start ``1e-3 α0``):

* occupancy: the 2-D histogram of ζ over all runs' steps (figure), and the
  mean log final metric of the runs visiting each cell;
* within-run: the Pearson and Spearman correlation of log α and
  log 1/(1 − β1) along each run's trajectory;
* the region of the best runs: the best quartile of runs by final held-out
  metric (ties broken by the mean log metric over the curve); the
  correlation of all their pooled trajectory points (the region they
  occupy), with a bootstrap interval over runs, against the same for the
  other runs;
* across runs: the Spearman correlation of the run's within-run r with its
  log final metric (Fisher-z interval).
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

import ae_jax as ae
from ae_jax.bench import menu
from ae_jax.bench import metrics as M
from ae_jax.bench import optimizers as O
from ae_jax.bench import report
from ae_jax.bench import runner as R
from ae_jax.bench import tasks as T

UNIT = 1e-3                       # the static α0 of the traced-rate runs
ALPHA_STARTS = O.ADAM_GRID
BETA1_STARTS = (0.5, 0.8, 0.9, 0.97)
TASKS = ("regression", "rosenbrock")
STEPS = 1000                      # quick-profile budget (x profile["scale"])
WARMUP = 0.1                      # fraction of steps left out of ζ
VARIANTS = {"ae_adamw+drive": dict(drive=True),
            "ae_adamw+drive+coupling": dict(drive=True, coupling=True)}
PRIMARY = "ae_adamw+drive"
BOOTSTRAP = 1000


# ---- the measures (pure numpy) ---------------------------------------------


def coordinates(learning_rate, b1):
  """ζ = (log α, log 1/(1 − β1)), elementwise."""
  lr = np.asarray(learning_rate, float)
  b1 = np.asarray(b1, float)
  return np.log(lr), -np.log1p(-b1)


def _pearson_rows(x, y):
  x = x - x.mean(-1, keepdims=True)
  y = y - y.mean(-1, keepdims=True)
  den = np.sqrt(np.sum(x * x, -1) * np.sum(y * y, -1))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, np.sum(x * y, -1) / den, np.nan)


def trajectory_correlation(za, zb):
  """Pearson and Spearman correlation of ``za`` and ``zb`` along the last
  axis (``nan`` where one of them is constant)."""
  za = np.asarray(za, float)
  zb = np.asarray(zb, float)
  ra = stats.rankdata(za, axis=-1)
  rb = stats.rankdata(zb, axis=-1)
  return _pearson_rows(za, zb), _pearson_rows(ra, rb)


def occupancy(za, zb, bins, ranges):
  """The fraction of all points ``(za, zb)`` (any shapes, flattened) in
  each cell of a ``bins`` x ``bins`` grid over ``ranges = ((a0, a1), (b0,
  b1))``; points outside are dropped from the count, not the total."""
  za = np.ravel(np.asarray(za, float))
  zb = np.ravel(np.asarray(zb, float))
  ok = np.isfinite(za) & np.isfinite(zb)
  hist, ea, eb = np.histogram2d(za[ok], zb[ok], bins=bins, range=ranges)
  return hist / max(int(ok.sum()), 1), ea, eb


def fisher_interval(r, n):
  """95% interval of a correlation ``r`` from ``n`` pairs (Fisher z)."""
  if not np.isfinite(r) or n <= 3:
    return math.nan, math.nan
  z = np.arctanh(np.clip(r, -0.999999, 0.999999))
  half = 1.959964 / math.sqrt(n - 3)
  return float(np.tanh(z - half)), float(np.tanh(z + half))


def pooled_correlation(za, zb, runs, n_boot=BOOTSTRAP, seed=0):
  """Pearson r of the pooled points of the ``runs`` (a boolean mask over
  the leading axis of ``za``/``zb``, shape (runs, steps)) and its 95%
  bootstrap interval, resampling runs."""
  za = np.asarray(za, float)[runs]
  zb = np.asarray(zb, float)[runs]
  if za.shape[0] == 0:
    return math.nan, math.nan, math.nan

  def r_of(a, b):
    ok = np.isfinite(a) & np.isfinite(b)
    return float(_pearson_rows(a[ok], b[ok])) if ok.sum() > 2 else math.nan

  r = r_of(za.ravel(), zb.ravel())
  rng = np.random.default_rng(seed)
  boots = []
  for _ in range(n_boot):
    pick = rng.integers(0, za.shape[0], za.shape[0])
    boots.append(r_of(za[pick].ravel(), zb[pick].ravel()))
  if not np.isfinite(boots).any():
    return r, math.nan, math.nan
  lo, hi = np.nanpercentile(boots, [2.5, 97.5])
  return r, float(lo), float(hi)


def best_quartile(final, tiebreak):
  """Mask of the best 25% of runs (lowest ``final``; ties by ``tiebreak``;
  non-finite finals rank last)."""
  final = np.where(np.isfinite(final), final, np.inf)
  order = np.lexsort((np.asarray(tiebreak, float), final))
  mask = np.zeros(len(final), bool)
  mask[order[:max(1, len(final) // 4)]] = True
  return mask


# ---- the sweep ---------------------------------------------------------------


def _spec(flags: dict):
  """An :class:`OptSpec` for the runner's builders and ``at(α0, β1_0)``."""
  chain = ae.canonical_laws(O.AE_NAMES["ae_adamw"], **flags)

  def at(alpha0, beta1):
    return optax.chain(ae.ae_adamw(UNIT, b1=beta1, laws_chain=chain),
                       optax.scale(alpha0 / UNIT))

  spec = O.OptSpec("ae_adamw_sweep", lambda lr, n: at(lr, 0.9), UNIT,
                   needs_value=True, is_ae=True, family="adamw")
  return spec, at


def sweep(task: T.Task, flags: dict, seeds, steps: int,
          alphas=ALPHA_STARTS, betas=BETA1_STARTS) -> dict:
  """Every start (α0, β1_0) of ``alphas`` x ``betas`` on every seed, one
  jitted run vmapped over starts and seeds. Returns per run (leading axis
  ``starts x seeds``, start-major): ``alpha0``, ``beta1``, ``seed``, the
  per-step ``learning_rate`` (true α) and ``b1``, and the ``metric`` at
  ``eval_steps``."""
  spec, at = _spec(flags)
  every = task.eval_every
  steps = max(every, (steps // every) * every)

  def one(alpha0, beta1, seed):
    tx = at(alpha0, beta1)
    init_one, chunk, evaluate = R._builders(  # pylint: disable=protected-access
        task, spec, tx, every, 0)
    carry = init_one(seed)
    m0 = evaluate(carry[0], carry[1])

    def chunk_kept(c, i):
      c, (recs, m) = chunk(c, i)
      return c, ({k: recs[k] for k in ("c:learning_rate", "c:b1")}, m)

    _, (recs, ms) = jax.lax.scan(chunk_kept, carry, jnp.arange(steps // every))
    return recs, jnp.concatenate([m0[None], ms])

  grid = jax.vmap(jax.vmap(one, in_axes=(None, None, 0)),
                  in_axes=(0, 0, None))
  a, b = np.meshgrid(np.asarray(alphas, float), np.asarray(betas, float),
                     indexing="ij")
  a, b = a.ravel(), b.ravel()
  recs, ms = jax.jit(grid)(jnp.asarray(a, jnp.float32),
                           jnp.asarray(b, jnp.float32),
                           jnp.asarray(seeds, jnp.int32))
  ms = np.asarray(jax.block_until_ready(ms), float)
  k, s = len(a), len(seeds)
  lr = np.asarray(recs["c:learning_rate"], float).reshape(k, s, -1)
  lr = lr * (a / UNIT)[:, None, None]
  b1 = np.asarray(recs["c:b1"], float).reshape(k, s, -1)
  flat = lambda x: x.reshape((k * s,) + x.shape[2:])  # noqa: E731
  return {"alpha0": np.repeat(a, s), "beta1": np.repeat(b, s),
          "seed": np.tile(np.asarray(seeds), k), "learning_rate": flat(lr),
          "b1": flat(b1), "metric": flat(ms),
          "eval_steps": np.arange(0, steps + 1, every), "steps": steps}


def summarise(out: dict, warmup: float = WARMUP) -> dict:
  """Per-run measures of a :func:`sweep` (module docstring)."""
  skip = int(out["steps"] * warmup)
  za, zb = coordinates(out["learning_rate"][:, skip:], out["b1"][:, skip:])
  final = M.final(out["metric"])
  with np.errstate(divide="ignore", invalid="ignore"):
    logm = np.log10(np.maximum(out["metric"], 1e-12))
  tiebreak = np.where(np.isfinite(logm).all(-1), logm.mean(-1), np.inf)
  best = best_quartile(final, tiebreak)
  pearson, spearman = trajectory_correlation(za, zb)
  log_final = np.log10(np.maximum(np.where(np.isfinite(final), final,
                                           np.inf), 1e-12))
  ok = np.isfinite(pearson) & np.isfinite(log_final)
  rho = (stats.spearmanr(pearson[ok], log_final[ok])[0] if ok.sum() > 3
         else math.nan)
  return {"za": za, "zb": zb, "final": final, "log_final": log_final,
          "best": best, "pearson": pearson, "spearman": spearman,
          "region_best": pooled_correlation(za, zb, best),
          "region_rest": pooled_correlation(za, zb, ~best & np.isfinite(
              final)),
          "r_vs_loss": (float(rho),) + fisher_interval(rho, int(ok.sum())),
          "n": len(final)}


def _ci3(triple, digits=2) -> str:
  r, lo, hi = triple
  if not np.isfinite(r):
    return "—"
  return f"{r:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


# ---- the report --------------------------------------------------------------


def _row(task: str, variant: str, s: dict) -> dict:
  b = s["best"]
  rest = ~b & np.isfinite(s["final"])
  return {"task": f"`{task}`", "variant": f"`{variant}`",
          "runs": str(s["n"]),
          "final metric: best quartile / rest": (
              f"{M.fmt_ci(s['final'][b], 3)} / "
              f"{M.fmt_ci(s['final'][rest], 3)}"),
          "span of log 1/(1 − β1) in a run": M.fmt_ci(
              np.ptp(s["zb"], axis=-1), 2),
          "within-run r: best quartile": M.fmt_ci(s["pearson"][b], 2),
          "within-run r: rest": M.fmt_ci(s["pearson"][rest], 2),
          "within-run Spearman: best / rest": (
              f"{M.fmt_ci(s['spearman'][b], 2)} / "
              f"{M.fmt_ci(s['spearman'][rest], 2)}"),
          "region r: best quartile [bootstrap 95%]": _ci3(s["region_best"]),
          "region r: rest": _ci3(s["region_rest"]),
          "Spearman(within-run r, log final) [Fisher 95%]": _ci3(
              s["r_vs_loss"])}


COLUMNS = ("task", "variant", "runs", "final metric: best quartile / rest",
           "span of log 1/(1 − β1) in a run", "within-run r: best quartile",
           "within-run r: rest",
           "within-run Spearman: best / rest",
           "region r: best quartile [bootstrap 95%]", "region r: rest",
           "Spearman(within-run r, log final) [Fisher 95%]")


def _start_table(out: dict, task: T.Task) -> str:
  """Mean final metric over seeds per start (α0 rows, β1_0 columns)."""
  final = M.final(out["metric"])
  rows = []
  for a in ALPHA_STARTS:
    row = {"α0": f"{a:.2g}"}
    for b in BETA1_STARTS:
      sel = np.isclose(out["alpha0"], a) & np.isclose(out["beta1"], b)
      row[f"β1_0 = {b:g}"] = (f"{np.mean(final[sel]):.3g}" if sel.any()
                              else "—")
    rows.append(row)
  return (f"`{task.name}` ({task.metric_name} at the end, mean over seeds, "
          f"`{PRIMARY}`):\n\n" + report.markdown_table(rows, tuple(rows[0])))


def _predictions(summ: dict) -> list[dict]:
  preds = []
  for task in TASKS:
    s = summ[(task, PRIMARY)]
    r, lo, hi = s["region_best"]
    b = s["best"]
    within = M.t_interval(s["pearson"][b])
    coupled = summ[(task, "ae_adamw+drive+coupling")]["region_best"]
    preds.append({
        "prediction": f"Coupling curve (`{task}`): the best-performing runs "
                      "occupy a region with a negative correlation between "
                      "log α and log 1/(1 − β1)",
        "measured": (f"`{PRIMARY}`: region r of the best quartile "
                     f"{_ci3((r, lo, hi))} (rest {_ci3(s['region_rest'])}); "
                     f"within-run r of the best quartile "
                     f"{M.fmt_ci(s['pearson'][b], 2)}; with AE-7 imposed "
                     f"(C = -0.1): region r {_ci3(coupled)}"),
        "verdict": ("holds" if np.isfinite(hi) and hi < 0
                    and within[0] + within[1] < 0 else "fails")})
  return preds


def _ranges(s: dict):
  za, zb = s["za"], s["zb"]
  ok = np.isfinite(za) & np.isfinite(zb)
  pad = lambda lo, hi: (lo - 0.05 * (hi - lo + 1e-9),  # noqa: E731
                        hi + 0.05 * (hi - lo + 1e-9))
  return (pad(za[ok].min(), za[ok].max()), pad(zb[ok].min(), zb[ok].max()))


def _figure(summ: dict, figures: str, bins: int = 40) -> str:
  plt = report._plt()  # pylint: disable=protected-access
  os.makedirs(figures, exist_ok=True)
  fig, axes = plt.subplots(len(TASKS), 3, figsize=(15, 4.2 * len(TASKS)),
                           squeeze=False)
  for row, task in zip(axes, TASKS):
    s = summ[(task, PRIMARY)]
    ranges = _ranges(s)
    extent = (*ranges[0], *ranges[1])
    occ, _, _ = occupancy(s["za"], s["zb"], bins, ranges)
    with np.errstate(divide="ignore"):
      im = row[0].imshow(np.log10(occ.T), origin="lower", aspect="auto",
                         extent=extent, cmap="viridis")
    fig.colorbar(im, ax=row[0], label="log10 fraction of steps")
    steps = s["za"].shape[1]
    w = np.repeat(s["log_final"], steps)
    ok = np.isfinite(s["za"].ravel()) & np.isfinite(w)
    num, _, _ = np.histogram2d(s["za"].ravel()[ok], s["zb"].ravel()[ok],
                               bins=bins, range=ranges, weights=w[ok])
    cnt, _, _ = np.histogram2d(s["za"].ravel()[ok], s["zb"].ravel()[ok],
                               bins=bins, range=ranges)
    with np.errstate(invalid="ignore"):
      im = row[1].imshow((num / cnt).T, origin="lower", aspect="auto",
                         extent=extent, cmap="magma_r")
    fig.colorbar(im, ax=row[1], label="mean log10 final metric")
    b = s["best"]
    occ_b, _, _ = occupancy(s["za"][b], s["zb"][b], bins, ranges)
    with np.errstate(divide="ignore"):
      im = row[2].imshow(np.log10(occ_b.T), origin="lower", aspect="auto",
                         extent=extent, cmap="viridis")
    fig.colorbar(im, ax=row[2], label="log10 fraction of steps")
    row[0].set(title=f"{task}: occupancy, all {s['n']} runs",
               ylabel="log 1/(1 − β1)")
    row[1].set(title=f"{task}: performance of the runs visiting a cell")
    row[2].set(title=f"{task}: occupancy, best quartile "
                     f"(r = {s['region_best'][0]:+.2f})")
    for ax in row:
      ax.set_xlabel("log α")
  return menu.save_figure(fig, figures, "exp12_coupling_occupancy.png", dpi=100)


def _protocol(tasks: dict, seeds: list, steps: dict) -> str:
  desc = "; ".join(f"`{n}` ({t.description}, {steps[n]} steps, "
                   f"{t.metric_name})" for n, t in tasks.items())
  return (
      f"Sweep: `ae_adamw` with the theory's drive rows (`{PRIMARY}`, "
      "`canonical_laws(..., drive=True)`: the shipped preset gives β1 no "
      "drive, so β1 would not move) and, as a mechanism check, with AE-7's "
      "coupling too (`ae_adamw+drive+coupling`, C = −0.1, which imposes a "
      "negative coupling). Starts α0 ∈ {"
      + ", ".join(f"{a:.2g}" for a in ALPHA_STARTS) + "} x β1_0 ∈ {"
      + ", ".join(f"{b:g}" for b in BETA1_STARTS) + f"}}, seeds {seeds[0]}.."
      f"{seeds[-1]}: {len(ALPHA_STARTS) * len(BETA1_STARTS) * len(seeds)} "
      f"runs per task and variant, one jitted run vmapped over starts x "
      f"seeds (same initialisation and minibatches per seed). Tasks: {desc}. "
      f"ζ = (log α, log 1/(1 − β1)) per step after the first "
      f"{100 * WARMUP:.0f}% of steps. Best quartile: the 25% of runs with "
      "the lowest final held-out metric (ties by the mean log metric). "
      "Within-run r: Pearson (and Spearman) of log α and log 1/(1 − β1) "
      "along a run, mean ± 95% t-interval over the runs of the group. "
      "Span: max − min of log 1/(1 − β1) along a run (all runs). "
      "Region r: Pearson r of the pooled trajectory points of the group "
      f"(the region it occupies), 95% bootstrap interval over runs "
      f"({BOOTSTRAP} resamples). Last column: across all runs, the "
      "Spearman correlation of within-run r with log10 final metric "
      "(positive: the more negative the coupling, the lower the loss). "
      "Verdict \"holds\" when both the region r and the within-run r of "
      "the best quartile have their intervals below 0.")


@menu.register("12", "Experiment 12: the coupling curve",
               "occupancy of (log α, log 1/(1 − β1)) over an ae_adamw sweep "
               "of starting α0 x β1 on regression and rosenbrock, and its "
               "correlation with performance")
def run(profile: dict, figures: str | None) -> dict:
  """The sweep of every variant on every task; see the module docstring."""
  scale = int(profile.get("scale", 1))
  seeds = list(range(1, int(profile["seeds"]) + 1))
  tasks = {n: T.get(n, steps=STEPS * scale) for n in TASKS}
  outs, summ = {}, {}
  for name, task in tasks.items():
    for variant, flags in VARIANTS.items():
      outs[(name, variant)] = sweep(task, flags, seeds, task.steps)
      summ[(name, variant)] = summarise(outs[(name, variant)])
  rows = [_row(t, v, summ[(t, v)]) for (t, v) in summ]
  md = [_protocol(tasks, seeds, {n: outs[(n, PRIMARY)]["steps"]
                                 for n in tasks}),
        report.markdown_table(rows, COLUMNS)]
  md += [_start_table(outs[(n, PRIMARY)], t) for n, t in tasks.items()]
  figs = []
  if figures is not None:
    figs.append(_figure(summ, figures))
    md.append(f"![coupling](figures/{os.path.basename(figs[-1])})")
  return {"markdown": "\n\n".join(md), "predictions": _predictions(summ),
          "figures": figs}

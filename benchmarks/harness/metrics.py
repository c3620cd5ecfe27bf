"""Metrics of a run, as the theory defines them ("How to measure").

Every function takes numpy arrays whose last axis is time and works on any
leading axes (seeds, ...). Curves are evaluation metrics sampled at
``steps``; ``loss`` arrays are the per-step training losses.

* :func:`time_to_target`: first evaluation step where the metric meets the
  target (``nan`` if never).
* :func:`auc`: the area under the metric curve over steps, normalised by the
  span (the curve's time average; lower is better for losses).
* :func:`final`: the metric at the fixed budget.
* :func:`nonfinite`: the number of NaN/inf training losses.
* :func:`diverged`: a non-finite loss, or a loss above ``factor`` times the
  first one.
* :func:`oscillation`: RMS of the log-loss around its centred moving average
  (the loss's jitter once its trend is removed).
* :func:`var_log_gamma`: variance of log γ (the effective step) after a
  warm-up.
* :func:`time_to_stability`: first step after which the loss stays finite
  and below its initial value (the hyper-cliff).
* :func:`max_abs_dlog`: the largest per-step |Δ log α|.
* :func:`t_interval`: mean and Student-t 95% half-width over seeds.
"""

from __future__ import annotations

import math
import warnings

import numpy as np


def _reached(curve, target, higher_is_better):
  curve = np.asarray(curve, float)
  with np.errstate(invalid="ignore"):
    ok = curve >= target if higher_is_better else curve <= target
  return ok & np.isfinite(curve)


def time_to_target(curve, steps, target, higher_is_better=False):
  """First ``steps[i]`` where ``curve[..., i]`` meets ``target``; ``nan``
  where it never does."""
  ok = _reached(curve, target, higher_is_better)
  steps = np.asarray(steps, float)
  first = np.argmax(ok, axis=-1)
  return np.where(ok.any(axis=-1), steps[first], np.nan)


def auc(curve, steps):
  """Trapezoidal area under ``curve`` over ``steps`` divided by the span;
  ``inf`` when the curve has a non-finite point (a loss that blew up)."""
  curve = np.asarray(curve, float)
  steps = np.asarray(steps, float)
  span = steps[-1] - steps[0]
  area = np.sum((curve[..., 1:] + curve[..., :-1]) * 0.5 * np.diff(steps),
                axis=-1)
  area = area / span if span > 0 else curve[..., 0]
  return np.where(np.isfinite(curve).all(axis=-1), area, np.inf)


def final(curve):
  return np.asarray(curve, float)[..., -1]


def nonfinite(loss):
  return np.sum(~np.isfinite(np.asarray(loss, float)), axis=-1)


def diverged(loss, factor=10.0):
  """A non-finite loss, or one above ``factor`` x the first loss."""
  loss = np.asarray(loss, float)
  with np.errstate(invalid="ignore"):
    high = np.any(loss > factor * np.abs(loss[..., :1]), axis=-1)
  return high | (nonfinite(loss) > 0)


def _moving_average(x, window):
  kernel = np.ones(window) / window
  pad = window // 2
  xp = np.pad(x, (pad, window - 1 - pad), mode="edge")
  return np.convolve(xp, kernel, mode="valid")


def oscillation(loss, window=25, skip=0):
  """RMS of ``log loss`` minus its centred ``window``-step moving average,
  from step ``skip`` on; ``inf`` if the loss is ever non-finite. A loss
  that is not always positive uses ``(loss - average) / mean |loss|``."""
  loss = np.asarray(loss, float)
  flat = loss.reshape(-1, loss.shape[-1])
  out = np.empty(flat.shape[0])
  for i, row in enumerate(flat):
    if not np.all(np.isfinite(row)):
      out[i] = np.inf
      continue
    w = min(window, len(row))
    if np.all(row > 0):
      log = np.log(row)
      resid = log - _moving_average(log, w)
    else:  # a loss that can be <= 0 (noisy quadratic): relative residual
      resid = (row - _moving_average(row, w)) / max(np.mean(np.abs(row)),
                                                    1e-30)
    out[i] = np.sqrt(np.mean(resid[skip:] ** 2))
  return out.reshape(loss.shape[:-1])


def var_log_gamma(gamma, skip=50):
  """Variance of log γ over steps ``skip:`` (non-positive γ ignored)."""
  g = np.asarray(gamma, float)[..., skip:]
  with np.errstate(divide="ignore", invalid="ignore"):
    lg = np.where((g > 0) & np.isfinite(g), np.log(g), np.nan)
  if lg.shape[-1] < 2:
    return np.full(lg.shape[:-1], np.nan)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-nan rows -> nan
    return np.nanvar(lg, axis=-1)


def time_to_stability(loss, reference=None):
  """First step from which the loss is finite and below ``reference``
  (default: the first loss) for the rest of the run; ``nan`` if the last
  loss is not."""
  loss = np.asarray(loss, float)
  ref = loss[..., :1] if reference is None else np.asarray(reference)[..., None]
  with np.errstate(invalid="ignore"):
    ok = np.isfinite(loss) & (loss < ref)
  # ok from t to the end  <=>  suffix-all; scan from the end.
  suffix = np.flip(np.logical_and.accumulate(np.flip(ok, -1), axis=-1), -1)
  first = np.argmax(suffix, axis=-1)
  return np.where(suffix[..., -1], first.astype(float), np.nan)


def max_abs_dlog(coef):
  """Largest ``|log a_{t+1} - log a_t|`` over the run."""
  c = np.asarray(coef, float)
  with np.errstate(divide="ignore", invalid="ignore"):
    d = np.abs(np.diff(np.log(c), axis=-1))
  return np.nanmax(np.where(np.isfinite(d), d, np.nan), axis=-1)


_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447,
        7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086,
        30: 2.042}


def t_quantile(df: int) -> float:
  """Two-sided 95% Student-t quantile with ``df`` degrees of freedom."""
  if df in _T95:
    return _T95[df]
  try:
    from scipy import stats
    return float(stats.t.ppf(0.975, df))
  except ImportError:  # pragma: no cover
    return 1.96


def t_interval(values) -> tuple[float, float, int]:
  """``(mean, half-width of the 95% t-interval, n)`` over the finite
  entries (half-width ``nan`` with fewer than 2)."""
  v = np.asarray(values, float).ravel()
  v = v[np.isfinite(v)]
  n = v.size
  if n == 0:
    return math.nan, math.nan, 0
  if n == 1:
    return float(v[0]), math.nan, 1
  return (float(v.mean()), t_quantile(n - 1) * float(v.std(ddof=1))
          / math.sqrt(n), n)


def fmt_ci(values, digits=4) -> str:
  mean, half, n = t_interval(values)
  total = np.asarray(values).size
  if n == 0:
    return f"— (0/{total})"
  suffix = "" if n == total else f" ({n}/{total})"
  if not math.isfinite(half):
    return f"{mean:.{digits}g}{suffix}"
  return f"{mean:.{digits}g} ± {half:.2g}{suffix}"


def normalised_ranking(ttt: dict[str, dict[str, float]], budgets: dict,
                       penalty: float = 2.0) -> dict[str, float]:
  """Median over tasks of each optimizer's time-to-target divided by the
  best optimizer's on that task.

  Args:
    ttt: ``task -> optimizer -> mean time-to-target`` (``nan``: not
      reached by every seed; counted as ``penalty`` x the task's budget).
    budgets: ``task -> step budget``.
  """
  per_opt: dict[str, list[float]] = {}
  for task, row in ttt.items():
    vals = {o: (v if np.isfinite(v) else penalty * budgets[task])
            for o, v in row.items()}
    best = min(vals.values())
    best = best if best > 0 else 1.0
    for o, v in vals.items():
      per_opt.setdefault(o, []).append(max(v, 1.0) / max(best, 1.0))
  return {o: float(np.median(v)) for o, v in per_opt.items()}

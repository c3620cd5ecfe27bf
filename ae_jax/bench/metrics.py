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

Drifting tasks (``Task.switch_every = P``; see ``tasks``):

* :func:`switch_steps`: the switches ``k P`` a curve spans.
* :func:`time_to_recover`: per switch, the steps until the (smoothed)
  curve is back within a tolerance of its pre-switch level (capped at ``P``
  when it never is); :func:`mean_time_to_recover` averages over switches.
* :func:`regret`: AUC of the curve minus AUC of a reference curve (the
  best fixed rate in hindsight, :func:`hindsight_best`), normalised by the
  span.
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


# --------------------------------------------------------------------------
# Drifting tasks (tasks with ``switch_every``): recovery after a switch and
# regret against a reference.


def _sample_phase(steps, switch_every, at_switch):
  """The phase (``0, 1, ...``, not cycled) each sample belongs to."""
  steps = np.asarray(steps, float)
  if at_switch == "new":       # curve[t] belongs to the phase of step t
    return np.floor(steps / switch_every)
  if at_switch == "old":       # the value after t steps: phase of t - 1
    return np.floor(np.maximum(steps - 1, 0) / switch_every)
  raise ValueError(f"at_switch must be 'new' or 'old', not {at_switch!r}")


def switch_steps(steps, switch_every: int, at_switch: str = "new"):
  """The switches ``k * switch_every`` (``k >= 1``) with at least one
  sample of the phase before and one of the phase after them in ``steps``
  (``at_switch`` as in :func:`time_to_recover`)."""
  phase = _sample_phase(steps, switch_every, at_switch)
  if phase.size == 0:
    return np.zeros(0)
  ks = [k for k in range(1, int(phase.max()) + 1)
        if (phase == k - 1).any() and (phase == k).any()]
  return np.asarray(ks, float) * switch_every


def time_to_recover(curve, steps, switch_every: int, *,
                    tolerance: float = 0.1, window: int = 25,
                    relative: bool = True, higher_is_better: bool = False,
                    at_switch: str = "new", never: float | None = None,
                    reference: str = "pre_switch"):
  """Steps after each switch until the curve is back at its pre-switch level.

  For every switch ``s = k * switch_every`` (those of :func:`switch_steps`):

  * the *pre-switch level* ``L`` is the mean of the old phase's samples
    that measure its last ``window`` steps (at least its last sample; with
    ``at_switch="old"`` and evaluations every ``window`` steps or more, the
    evaluation at the switch itself);
  * the curve of the new phase is smoothed by a centred moving average over
    ``window`` steps that uses only samples of the new phase (so the old
    phase and the next one never leak in);
  * the recovery time is ``steps[i] - s`` for the first new-phase sample
    ``i`` whose smoothed value is within the tolerance: ``<= L + tol`` for a
    loss (``>= L - tol`` with ``higher_is_better``), where ``tol =
    tolerance * |L|`` if ``relative`` else ``tolerance``; i.e. the number of
    new-phase steps the optimizer needed;
  * if no sample of the phase gets there (or ``L`` or the curve is not
    finite), the value is ``never``: by default ``switch_every``, the cap.

  ``reference="phase_best"`` replaces ``L`` by the best smoothed value of
  the new phase itself (the time to settle near the phase's own best; it
  always recovers, even when the new phase is harder than the old one, e.g.
  ``drift_digits``'s noisy phase, where the pre-switch level cannot be
  reached).

  ``at_switch`` says to which phase the sample taken *at* a switch step
  belongs: ``"new"`` for per-step training losses (``loss[t]`` is the loss
  of step ``t``'s batch, phase ``t // P``; pass ``steps = arange(T)``);
  ``"old"`` for a task's ``metric_at`` curves at ``Result.eval_steps`` (the
  evaluation after ``s`` steps measures the phase of step ``s - 1``).

  Args:
    curve: ``(..., T)`` samples (training loss or evaluation metric).
    steps: ``(T,)`` the step of each sample.
    switch_every: the period ``P`` of the drift.
    tolerance: the allowed distance to the pre-switch level (relative by
      default: 0.1 = within 10%).
    window: the smoothing window, in steps (1: no smoothing).
    relative: the tolerance is a fraction of ``|L|`` (else absolute).
    higher_is_better: for accuracies.
    at_switch: ``"new"`` or ``"old"``, above.
    never: the value of a switch with no recovery (default ``switch_every``).
    reference: ``"pre_switch"`` (default) or ``"phase_best"``, above.

  Returns:
    ``(..., K)`` recovery times, one per switch (leading axes kept).
  """
  if reference not in ("pre_switch", "phase_best"):
    raise ValueError("reference must be 'pre_switch' or 'phase_best', not "
                     f"{reference!r}")
  curve = np.asarray(curve, float)
  steps = np.asarray(steps, float)
  never = float(switch_every if never is None else never)
  half = window / 2.0
  switches = switch_steps(steps, switch_every, at_switch)
  phase = _sample_phase(steps, switch_every, at_switch)
  measured = steps - (1.0 if at_switch == "old" else 0.0)
  flat = curve.reshape(-1, curve.shape[-1])
  out = np.full((flat.shape[0], len(switches)), never)
  for j, s in enumerate(switches):
    k = round(s / switch_every)
    old_idx = np.flatnonzero(phase == k - 1)
    new_idx = np.flatnonzero(phase == k)
    recent = old_idx[measured[old_idx] >= s - window]
    recent = recent if recent.size else old_idx[-1:]
    # centred moving average within the new phase; nan if a non-finite
    # sample is in the window
    near = np.abs(steps[new_idx][:, None] - steps[new_idx][None]) <= half
    v = flat[:, new_idx]
    bad = ~np.isfinite(v)
    sums = np.where(bad, 0.0, v) @ near.T
    with np.errstate(invalid="ignore", divide="ignore"):
      smooth = np.where(bad.astype(float) @ near.T > 0, np.nan,
                        sums / near.sum(axis=1))
      if reference == "pre_switch":
        level = flat[:, recent].mean(axis=-1)
      else:  # the best finite smoothed value of the new phase
        finite = np.isfinite(smooth)
        level = np.where(finite, smooth,
                         -np.inf if higher_is_better else np.inf)
        level = level.max(-1) if higher_is_better else level.min(-1)
      tol = tolerance * np.abs(level) if relative else np.full_like(
          level, tolerance)
      ok = ((smooth >= (level - tol)[:, None]) if higher_is_better else
            (smooth <= (level + tol)[:, None]))
    ok &= np.isfinite(level)[:, None]
    first = np.argmax(ok, axis=-1)
    out[:, j] = np.where(ok.any(axis=-1), steps[new_idx][first] - s, never)
  return out.reshape(curve.shape[:-1] + (len(switches),))


def mean_time_to_recover(curve, steps, switch_every: int, **kwargs):
  """:func:`time_to_recover` averaged over the switches (``(...)``; ``nan``
  when the run has no switch)."""
  t = time_to_recover(curve, steps, switch_every, **kwargs)
  if t.shape[-1] == 0:
    return np.full(t.shape[:-1], np.nan)
  return t.mean(axis=-1)


def regret(curve, steps, reference_curve, higher_is_better: bool = False):
  """AUC of ``curve`` minus AUC of ``reference_curve`` (both :func:`auc`:
  trapezoids over ``steps`` divided by the span), signed so that positive
  is worse than the reference (``reference - curve`` for
  ``higher_is_better``). The reference is typically the best fixed learning
  rate in hindsight (:func:`hindsight_best`); it broadcasts against
  ``curve``'s leading axes. ``inf`` when ``curve`` has a non-finite point
  (either direction), ``nan`` when only the reference has one."""
  curve = np.asarray(curve, float)
  reference_curve = np.asarray(reference_curve, float)
  a = auc(curve, steps)
  b = auc(reference_curve, steps)
  with np.errstate(invalid="ignore"):
    diff = b - a if higher_is_better else a - b
  ok_ref = np.isfinite(reference_curve).all(axis=-1)
  diff = np.where(ok_ref, diff, np.nan)
  return np.where(np.isfinite(curve).all(axis=-1), diff, np.inf)


def hindsight_best(curves, steps, higher_is_better: bool = False):
  """The best fixed setting in hindsight: ``curves`` is ``(G, ..., E)``, one
  curve per grid point (e.g. learning rate) and seed; returns ``(g,
  curves[g])`` for the grid point ``g`` with the best mean :func:`auc` over
  the other leading axes (non-finite runs rank last)."""
  a = auc(curves, steps)
  score = a.reshape(a.shape[0], -1).mean(axis=-1)
  score = np.where(np.isfinite(score), score,
                   -np.inf if higher_is_better else np.inf)
  g = int(np.argmax(score) if higher_is_better else np.argmin(score))
  return g, np.asarray(curves, float)[g]

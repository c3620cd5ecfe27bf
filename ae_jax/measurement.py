"""AE-1, measurement: causal, bias-corrected, differentiable signal filters.

The coefficient laws never look at raw observables. Every step the loss
:math:`\\ell_t`, an optional reward :math:`r_t` and a handful of global
reductions of the gradient are folded into low-pass filters (EMAs):

.. math::

  T_t = \\mathrm{LP}(\\ell_t - \\ell_{t-1}),\\quad
  V_t = \\mathrm{LP}\\big((\\ell_t - \\mathrm{LP}(\\ell_t))^2\\big),\\quad
  R_t = \\mathrm{LP}(r_t - r_{t-1}),

  \\rho_t = \\cos\\angle(g_t, m_{t-1}),\\quad
  S_t = \\mathrm{LP}(\\mathrm{Var}(g_t)),\\quad
  V^\\star = \\mathrm{LP}(V),\\ S^\\star = \\mathrm{LP}(S),\\quad
  \\gamma_t = \\alpha_t \\lVert g_t \\rVert.

Everything here works on scalars; the only parameter-sized work is
:func:`gradient_stats`, five global reductions that XLA fuses into one pass.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import optax

from ae_jax import _packing

# Filters are either the standard zero-initialised EMA with Adam's bias
# correction ("debiased"), or the reference implementation's EMA, which starts
# at the first sample and still divides by (1 - beta^t) ("reference").
FILTER_MODES = ("debiased", "reference")


class GradStats(NamedTuple):
  """Global reductions of a gradient pytree (scalars, at least float32).

  Attributes:
    size: number of gradient elements over all leaves.
    sum: sum of the elements.
    sumsq: sum of squares, ``‖g‖²``.
    dot: inner product of the gradient with the phase reference (the base
      optimizer's momentum, or the previous gradient).
    ref_sumsq: squared norm of the phase reference.
    nonfinite: number of non-finite gradient entries seen (before they
      were sanitised; on sampled coordinates when sampling, plus the small
      sampled leaves :func:`ae_jax.adapt` checks whole, where an entry can
      count twice: only a count above 0 is read).
    horizon_dot: inner product of the gradient with the long-horizon
      reference (``ae.adapt``'s ``horizon``: the recent displacement), or
      ``()`` without one.
    horizon_sumsq: squared norm of the long-horizon reference, or ``()``.
    peak: the largest finite ``|g|`` entry seen (before the clamp to the
      overflow bound; on sampled coordinates when sampling), or ``()``.
      :func:`ae_jax.adapt` scales a gradient whose peak is beyond the bound
      down to it.
  """

  size: chex.Array
  sum: chex.Array
  sumsq: chex.Array
  dot: chex.Array
  ref_sumsq: chex.Array
  nonfinite: chex.Array
  horizon_dot: chex.Array = ()
  horizon_sumsq: chex.Array = ()
  peak: chex.Array = ()


class Signals(NamedTuple):
  """The filtered signals :math:`s_t` of AE-1 (scalars).

  Attributes:
    loss: the loss as measured (non-finite values replaced, clamped).
    loss_mean: the low-passed loss LP(ℓ).
    T: trend, low-passed loss difference (negative while improving).
    T_scale: low-passed ``|ℓ_t - ℓ_{t-1}|``; ``T / T_scale`` is a
      scale-free progress measure in [-1, 1].
    V: loss variance around its running mean.
    R: low-passed reward difference.
    R_scale: low-passed ``|r_t - r_{t-1}|``.
    rho: cosine of the gradient and the phase reference, in [-1, 1].
    S: low-passed variance of the gradient's elements.
    V_star: running reference of ``V``.
    S_star: running reference of ``S``.
    gnorm: the gradient norm ``‖g_t‖``.
    gamma: the effective step ``α_t ‖g_t‖`` of the step that was applied.
    brake: 1.0 where the emergency brake fired this step, else 0.0.
    clip: the factor in (0, 1] the gradient is scaled by before the base
      update (``FilterConfig.grad_clip``; 1 when it is off or idle).
    rho_horizon: cosine of the gradient and minus the recent displacement
      (``ae.adapt``'s ``horizon``), the long-horizon ρ; equal to ``rho``
      without one.
  """

  loss: chex.Array
  loss_mean: chex.Array
  T: chex.Array
  T_scale: chex.Array
  V: chex.Array
  R: chex.Array
  R_scale: chex.Array
  rho: chex.Array
  S: chex.Array
  V_star: chex.Array
  S_star: chex.Array
  gnorm: chex.Array
  gamma: chex.Array
  brake: chex.Array
  clip: chex.Array
  rho_horizon: chex.Array


class FilterState(NamedTuple):
  """EMA accumulators behind :class:`Signals` (scalars)."""

  count: chex.Array  # samples seen so far, int32
  prev_loss: chex.Array
  prev_reward: chex.Array
  reward_seen: chex.Array  # 1.0 once a reward has been passed
  loss_mean: chex.Array
  T: chex.Array
  T_scale: chex.Array
  V: chex.Array
  R: chex.Array
  R_scale: chex.Array
  S: chex.Array
  V_star: chex.Array
  S_star: chex.Array
  G: chex.Array  # low-passed norm of the (clipped) gradient
  # consecutive absurd gradients so far (their steps are skipped up to
  # ABSURD_PATIENCE in a row)
  absurd_run: chex.Array


class FilterConfig(NamedTuple):
  """Decays of the AE-1 filters.

  The fields may be traced values (they are gains of AE-9), except ``mode``.

  Attributes:
    loss_mean: decay of the loss mean used by ``V`` (reference ``beta_mu``).
    trend: decay of ``T``, ``T_scale``, ``R`` and ``R_scale`` (``beta_T``).
    variance: decay of ``V`` (``beta_V``).
    grad_variance: decay of ``S`` (``beta_S``).
    reference: decay of ``V*`` and ``S*`` (``beta_star``).
    mode: ``"debiased"`` (zero-initialised EMA, Adam's bias correction) or
      ``"reference"`` (the reference code's EMA, for parity).
    loss_limit: losses are clamped to ``±loss_limit``; a non-finite loss is
      replaced by ``loss_limit``.
    variance_clip: the loss deviation is clamped to this before squaring.
    hold_bad_loss: a non-finite loss, or one beyond ``loss_limit``, is read
      as a repeat of the last good loss (the step says nothing about the
      loss statistics); the reference feeds ``loss_limit`` into its filters,
      which then read a variance spike for hundreds of steps.
    grad_clip: a gradient whose norm exceeds ``grad_clip`` times the
      low-passed norm of the previous (clipped) gradients is scaled down to
      that (``Signals.clip``; the low-pass has decay ``grad_norm``), so an
      absurd gradient never reaches the parameters at full size and the
      limit can grow by at most ``1 + (1 - grad_norm)(grad_clip - 1)`` per
      step. ``None`` (default) never clips.
    grad_norm: decay of the low-passed gradient norm ``G``.
  """

  loss_mean: Any = 0.98
  trend: Any = 0.90
  variance: Any = 0.95
  grad_variance: Any = 0.95
  reference: Any = 0.99
  mode: str = "debiased"
  loss_limit: float = 1e8
  variance_clip: float = 1e6
  hold_bad_loss: bool = True
  grad_clip: float | None = None
  grad_norm: Any = 0.95


_TINY = 1e-12


def controller_dtype() -> jnp.dtype:
  """Dtype of coefficient and signal state: float64 under x64, else float32.

  Never lower than float32, whatever the parameters' dtype (bfloat16 models
  keep their coefficients in float32).
  """
  return jnp.result_type(float)


def validate_filter_config(config: FilterConfig) -> None:
  """Raises ValueError naming the first invalid field of ``config``."""
  if config.mode not in FILTER_MODES:
    raise ValueError(
        f"FilterConfig.mode must be one of {FILTER_MODES}, got {config.mode!r}")
  for field in ("loss_mean", "trend", "variance", "grad_variance",
                "reference"):
    value = getattr(config, field)
    if isinstance(value, jax.core.Tracer):
      continue
    if not 0.0 <= float(value) < 1.0:
      raise ValueError(
          f"FilterConfig.{field} is a decay and must lie in [0, 1), got "
          f"{value!r}")
  for field in ("loss_limit", "variance_clip"):
    if not float(getattr(config, field)) > 0.0:
      raise ValueError(f"FilterConfig.{field} must be positive")
  if config.grad_clip is not None and not float(config.grad_clip) >= 1.0:
    raise ValueError(f"FilterConfig.grad_clip must be >= 1 (a multiple of "
                     f"the running gradient norm) or None, got "
                     f"{config.grad_clip!r}")
  if (not isinstance(config.grad_norm, jax.core.Tracer)
      and not 0.0 <= float(config.grad_norm) < 1.0):
    raise ValueError(f"FilterConfig.grad_norm is a decay and must lie in "
                     f"[0, 1), got {config.grad_norm!r}")


def init_filters(dtype=None) -> FilterState:
  """Returns zeroed filter accumulators."""
  dtype = dtype or controller_dtype()
  # Distinct buffers (not one shared zero), so the state can be donated.
  fields = {f: jnp.zeros([], dtype) for f in FilterState._fields}
  fields["count"] = jnp.zeros([], jnp.int32)
  return FilterState(**fields)


def init_signals(dtype=None) -> Signals:
  """Returns the signals reported before the first step (all zero)."""
  dtype = dtype or controller_dtype()
  signals = Signals(*(jnp.zeros([], dtype) for _ in Signals._fields))
  return signals._replace(clip=jnp.ones([], dtype))


def ema(moment, sample, decay, count, mode: str):
  """One step of a scalar EMA; returns ``(new_moment, estimate)``.

  Args:
    moment: the accumulator.
    sample: the new sample.
    decay: the EMA decay ``β``.
    count: number of samples already folded in (before ``sample``).
    mode: ``"debiased"`` or ``"reference"``, see :class:`FilterConfig`.
  """
  return _ema_step(moment, sample, decay, 1 - decay, count, mode)


def emas(moments, samples, decays, count, mode: str):
  """Several scalar EMAs of one ``count`` (see :func:`ema`) as one vector
  update.

  The same operations as :func:`ema` on each entry, in one fused loop:
  XLA:CPU gives a scalar with several consumers a kernel of its own, so each
  scalar EMA's bias-corrected estimate cost one (nine in :func:`measure`).
  The values equal :func:`ema`'s to rounding (XLA may contract a multiply
  and an add into one FMA in one form and not the other).

  Args:
    moments: the accumulators, scalars of one dtype (batch them with
      ``jax.vmap``, not with a leading axis).
    samples: the new samples, one per accumulator.
    decays: the decays ``β``, one per accumulator (floats or scalars).
    count: number of samples already folded in (before ``samples``).
    mode: ``"debiased"`` or ``"reference"``, see :class:`FilterConfig`.

  Returns:
    ``(new_moments, estimates)``: two tuples of scalars, in the order of
    ``moments``.
  """
  dtype = jnp.result_type(*moments)
  if any(jnp.result_type(m) != dtype for m in moments):
    raise ValueError(f"ae_jax.measurement.emas: the moments must share one "
                     f"dtype, got {[str(jnp.result_type(m)) for m in moments]}")
  # β^t in at least the default float's precision, as ema's float β gets
  # it (Optax's bias_correction: a low-precision β rounds to 1).
  wide = jnp.promote_types(dtype, jnp.result_type(float))

  def stack(xs, as_dtype=dtype):
    return _packing.assemble([jnp.reshape(jnp.asarray(x, as_dtype), (1,))
                              for x in xs], ())

  # 1 - β formed per decay as ema forms it (in Python for a float β).
  moment, estimate = _ema_step(stack(moments), stack(samples), stack(decays),
                               stack([1 - d for d in decays]), count, mode,
                               wide_decay=stack(decays, wide))
  n = len(moments)
  return (tuple(moment[i] for i in range(n)),
          tuple(estimate[i] for i in range(n)))


def _ema_step(moment, sample, decay, complement, count, mode, *,
              wide_decay=None):
  # Optax's update_moment and bias_correction, written out so that a vector
  # of decays can carry its complements 1 - β (see emas); ``wide_decay`` is
  # β for the power β^t.
  wide_decay = decay if wide_decay is None else wide_decay
  t = count + 1
  if mode == "debiased":
    moment = complement * sample + decay * moment
    return moment, moment / (1 - wide_decay**t).astype(moment.dtype)
  # The reference seeds the accumulator with the first sample, then divides
  # by (1 - β^t) anyway (its estimate of a constant c at t = 2 is
  # c / (1 - β²)). Kept exactly so reference_agent can match it.
  first = count == 0
  moment = jnp.where(first, sample, decay * moment + complement * sample)
  correction = jnp.maximum(1.0 - wide_decay**t.astype(moment.dtype), 1e-12)
  return moment, jnp.where(first, sample,
                           moment / correction.astype(moment.dtype))


def overflow_bound(size: int, dtype) -> float:
  """The largest entry magnitude whose square, summed over ``size``
  entries, stays finite in ``dtype`` (with a factor 4 of headroom for
  ``Σg·m`` and the EMAs).

  Gradient entries beyond it are read as ``±bound`` by the statistics, and
  :func:`ae_jax.adapt` scales such a gradient so its largest entry reaches
  the base at that size, so a finite but absurd gradient (1e19 in
  float32, whose square overflows) never turns ``‖g‖²`` into inf and an EMA
  into ``inf - inf``. Real gradients are many decades below it (9e14 per
  entry at 1e8 float32 parameters).
  """
  return math.sqrt(float(jnp.finfo(dtype).max) / (4.0 * max(int(size), 1)))


def clamp(x, bound: float):
  """``x`` with entries clipped to ``±bound`` (a no-op beyond its dtype's
  range)."""
  if bound >= float(jnp.finfo(x.dtype).max):
    return x
  return jnp.clip(x, -bound, bound)


def _finite_peak(g, dtype):
  """The largest finite ``|g|`` (0 for none), in ``dtype``."""
  a = jnp.abs(g.astype(dtype))
  return jnp.max(jnp.where(jnp.isfinite(a), a, jnp.zeros([], dtype)),
                 initial=jnp.zeros([], dtype))


def _leaf_sums(g, m, dtype, inf_value, bound, h=None):
  """(Σg, Σg², Σg·m, Σm², #non-finite) of one leaf (or of sampled blocks of
  it), and (Σg·h, Σh²) with a long-horizon reference ``h``; non-finite
  entries of ``g`` sanitised to 0 / ±inf_value and every entry clamped to
  ``±bound`` (:func:`overflow_bound`). Also the leaf's finite peak
  ``max |g|``, separately (a maximum, not a sum)."""
  nonfinite = jnp.sum(~jnp.isfinite(g)).astype(dtype)
  peak = _finite_peak(g, dtype)
  g = clamp(jnp.nan_to_num(g.astype(dtype), nan=0.0, posinf=inf_value,
                           neginf=-inf_value), bound)
  sums = [jnp.sum(g), jnp.sum(g * g)]
  if m is None:
    sums += [jnp.zeros([], dtype)] * 2 + [nonfinite]
  else:
    m = clamp(jnp.nan_to_num(m.astype(dtype)), bound)
    sums += [jnp.sum(g * m), jnp.sum(m * m), nonfinite]
  if h is not None:
    h = clamp(jnp.nan_to_num(h.astype(dtype)), bound)
    sums += [jnp.sum(g * h), jnp.sum(h * h)]
  return sums, peak


# Statistics over at most this many elements (every preset's: exact up to
# EXACT_STATS_UP_TO = 65,536 elements, sampled above) are reduced as one
# concatenated vector: five reductions, whatever the number of leaves, where
# per-leaf reductions made compile time grow with the pytree (10.4 s against
# 1.4 s at 400 leaves). Larger exact statistics keep per-leaf sums, which
# need no copy.
CONCAT_LIMIT = 2**20


def _explicit_mesh(x):
  """The mesh of ``x`` if an Explicit axis shards it, else None."""
  mesh = getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None)
  if (mesh is not None and not mesh.empty
      and jax.sharding.AxisType.Explicit in tuple(mesh.axis_types)):
    return mesh
  return None


def _flat(x):
  """``x`` as a vector; an Explicitly sharded leaf is replicated first (it
  cannot be reshaped in place; only small statistics come here)."""
  if _explicit_mesh(x) is not None:
    x = jax.sharding.reshard(x, jax.sharding.PartitionSpec())
  return jnp.ravel(x)


def adam_direction(m, nu, eps):
  """``m / (sqrt(nu) + eps)``: Adam's direction without its bias
  corrections (scalars a cosine does not see)."""
  return m / (jnp.sqrt(nu) + jnp.asarray(eps, nu.dtype))


def _element_weights(pairs, dtype):
  """Each concatenated element's extrapolation scale, for ``pairs`` that
  list every scaled leaf before the unscaled ones; None when all are 1.

  The scaled part is cut into equal units (a sampled block each) and the
  weight read from a table of one scale per unit: one fusion, where a
  broadcast per leaf concatenated added a kernel per leaf to the step."""
  sizes = [g.size for g, _, scale in pairs if scale != 1.0]
  if not sizes:
    return None
  unit = math.gcd(*sizes)
  table = np.concatenate([np.full(g.size // unit, scale)
                          for g, _, scale in pairs if scale != 1.0])
  index = lax.iota(jnp.int32, sum(g.size for g, _, _ in pairs))
  scaled = index < sum(sizes)
  unit_index = jnp.minimum(index // unit, table.size - 1)
  return jnp.where(scaled, jnp.asarray(table, dtype)[unit_index],
                   jnp.ones([], dtype))


def _concatenated_stats(pairs, dtype, inf_value, bound, horizons=None,
                        second=None):
  """The sums of :func:`_leaf_sums` over all ``pairs`` at once, each
  element weighted by its leaf's extrapolation scale (and the two of the
  long-horizon reference, with ``horizons``, one per pair). With
  ``second = (nu leaves, eps)`` the reference read is Adam's direction
  m / (√ν + ε), computed on the concatenated vectors: a per-leaf division
  would be one more kernel per leaf, and compile time grows with kernels."""
  # Scaled leaves (sampled blocks) first, for _element_weights; the sums do
  # not depend on the order.
  order = sorted(range(len(pairs)), key=lambda i: pairs[i][2] == 1.0)
  pairs = [pairs[i] for i in order]
  if horizons is not None:
    horizons = [horizons[i] for i in order]
  if second is not None:
    second = ([second[0][i] for i in order], second[1])
  g = jnp.concatenate([_flat(g).astype(dtype) for g, _, _ in pairs])
  weight = _element_weights(pairs, dtype)
  weigh = (lambda x: x) if weight is None else (lambda x: weight * x)
  nonfinite = (~jnp.isfinite(g)).astype(dtype)
  peak = _finite_peak(g, dtype)
  g = clamp(jnp.nan_to_num(g, nan=0.0, posinf=inf_value, neginf=-inf_value),
            bound)
  wg = weigh(g)
  if pairs[0][1] is None:
    rows = [wg, wg * g, nonfinite]
  else:
    m = jnp.concatenate([_flat(m).astype(dtype) for _, m, _ in pairs])
    if second is not None:
      nus, eps = second
      m = adam_direction(
          m, jnp.concatenate([_flat(v).astype(dtype) for v in nus]), eps)
    m = clamp(jnp.nan_to_num(m), bound)
    rows = [wg, wg * g, wg * m, weigh(m * m), nonfinite]
  if horizons is not None:
    h = jnp.concatenate([_flat(h).astype(dtype) for h in horizons])
    h = clamp(jnp.nan_to_num(h), bound)
    rows += [wg * h, weigh(h * h)]
  # One reduction of the stacked rows: five separate ones cost 1.6x as much
  # (93 against 57 µs over 65,536 elements on a CPU).
  sums = list(jnp.sum(jnp.stack(rows), axis=1))
  if pairs[0][1] is None:
    sums = sums[:2] + [jnp.zeros([], dtype)] * 2 + sums[2:]
  return sums, peak


def _stats(pairs, size, dtype, inf_value, horizons=None,
           second=None, bound=None) -> GradStats:
  if bound is None:
    bound = overflow_bound(size, dtype)
  if pairs and sum(g.size for g, _, _ in pairs) <= CONCAT_LIMIT:
    sums, peak = _concatenated_stats(pairs, dtype, inf_value, bound,
                                     horizons, second)
    return GradStats(jnp.asarray(size, dtype), *sums)._replace(peak=peak)
  if second is not None:
    nus, eps = second
    pairs = [(g, adam_direction(m, v, eps), k)
             for (g, m, k), v in zip(pairs, nus)]
  extra = 0 if horizons is None else 2
  totals = [jnp.zeros([], dtype) for _ in range(5 + extra)]
  peak = jnp.zeros([], dtype)
  for i, (g, m, scale) in enumerate(pairs):
    sums, leaf_peak = _leaf_sums(g, m, dtype, inf_value, bound,
                                 None if horizons is None else horizons[i])
    scales = [scale] * 4 + [1.0] + [scale] * extra  # counts: not extrapolated
    totals = [t + x * k for t, x, k in zip(totals, sums, scales)]
    peak = jnp.maximum(peak, leaf_peak)
  return GradStats(jnp.asarray(size, dtype), *totals)._replace(peak=peak)


def unusable_entries(leaves, dtype):
  """``(count, peak)`` of ``leaves`` (small arrays), in one fusion over
  their concatenation: how many entries are non-finite, and the largest
  finite ``|entry|`` (the :class:`GradStats` fields ``nonfinite`` and
  ``peak`` for entries the statistics do not read)."""
  flat = jnp.concatenate([_flat(x).astype(dtype) for x in leaves])
  return (jnp.sum(~jnp.isfinite(flat)).astype(dtype),
          _finite_peak(flat, dtype))


def gradient_stats(grads, reference=None, dtype=None, *,
                   inf_value=0.0, horizon=None, second_moment=None,
                   eps=0.0, bound=None) -> GradStats:
  """Exact global reductions of ``grads`` over all leaves.

  Args:
    grads: gradient pytree (any float dtype; accumulated in ``dtype``);
      non-finite entries are counted, then read as 0 (NaN) or
      ±``inf_value``.
    reference: phase reference with the structure of ``grads`` (the base's
      momentum or the previous gradient), or None (``ρ`` is then 0).
    dtype: accumulation dtype, :func:`controller_dtype` by default.
    inf_value: the value ±inf entries are read as.
    horizon: a long-horizon reference with the structure of ``grads`` (the
      recent displacement, :func:`ae_jax.adapt`'s ``horizon``), or None.
    second_moment: a second moment ν with the structure of ``grads``, or
      None: with it the reference read is Adam's direction
      ``reference / (sqrt(ν) + eps)``, computed after the leaves are
      concatenated (no kernel per leaf).
    eps: Adam's ε of that direction.
    bound: the entry bound the statistics clamp to, :func:`overflow_bound`
      of the size and ``dtype`` by default (a smaller one, the base's, may
      be given).
  """
  dtype = dtype or controller_dtype()
  leaves = jax.tree.leaves(grads)
  refs = (jax.tree.leaves(reference) if reference is not None
          else [None] * len(leaves))
  size = sum(x.size for x in leaves)
  second = (None if second_moment is None or reference is None
            else (jax.tree.leaves(second_moment), eps))
  return _stats([(g, m, 1.0) for g, m in zip(leaves, refs)], size, dtype,
                inf_value, _horizon_leaves(horizon), second, bound)


def _horizon_leaves(horizon):
  return None if horizon is None else jax.tree.leaves(horizon)


# -- sampled statistics -------------------------------------------------------
#
# On a CPU a reduction cannot share the update's pass over memory, so exact
# statistics cost a second pass over g and the momentum (+30% per step at 10M
# parameters, more once the donated momentum has to be copied to be read
# before its in-place update). Large models therefore estimate them from
# about K elements in randomly placed contiguous blocks, and keep the
# *reference* blocks (momentum or gradient) from the end of the previous
# step, so nothing reads a buffer that the update overwrites.

SAMPLE_BLOCK = 1024

# Models up to this many parameters get exact statistics whatever the sample
# size :func:`ae_jax.adapt` is given: one concatenated reduction is cheap
# there, and exact.
EXACT_STATS_UP_TO = 2**16


class PhaseSample(NamedTuple):
  """Blocks of the phase reference kept for the next step's ρ.

  Attributes:
    starts: the int32 start offsets of every sampled block, leaf by leaf
      (:func:`leaf_starts` splits them with the plan): one array, so that a
      step writes one buffer for them, not one per leaf.
    blocks: per leaf, the reference's values there, shape
      ``(blocks, SAMPLE_BLOCK)``, or the whole leaf in its own shape (and
      sharding).
  """

  starts: jax.Array
  blocks: tuple


def sample_plan(grads, budget: int, *,
                exact_up_to: int | None = None) -> tuple[int, ...] | None:
  """Blocks per leaf for an element ``budget``; 0 keeps a leaf whole.

  Returns None (the statistics are then exact) when the pytree has no more
  than ``exact_up_to`` elements (default: ``budget``), or when the sample
  would read as many entries as the pytree has (many leaves of a few blocks
  each, or none larger than a block, every leaf then kept whole): the exact
  path reads them without keeping a copy of the reference or gathering
  blocks (RESULTS.md, "Compile time": 2,000 leaves of 128 entries).
  """
  leaves = jax.tree.leaves(grads)
  size = sum(x.size for x in leaves)
  if size <= max(budget, exact_up_to or 0):
    return None
  plan = tuple(0 if x.size <= SAMPLE_BLOCK else
               max(1, -(-budget * x.size // (size * SAMPLE_BLOCK)))
               for x in leaves)
  read = sum(x.size if b == 0 else b * SAMPLE_BLOCK
             for x, b in zip(leaves, plan))
  return None if read >= size else plan


def draw_starts(key, grads, plan) -> jax.Array:
  """Random block offsets for the leaves of ``grads`` under ``plan``, all
  in one int32 vector, leaf by leaf (:func:`leaf_starts`).

  A block is the window ``[s, s + SAMPLE_BLOCK)`` of its leaf's flat
  entries with ``s`` uniform over ``1 - SAMPLE_BLOCK ... n - 1``, the part
  outside the leaf read as 0 (:func:`take_blocks`): every element lies in
  exactly ``SAMPLE_BLOCK`` of the ``n + SAMPLE_BLOCK - 1`` windows, so each
  has the same chance of being read and the sums are unbiased
  (:func:`block_scale`). All offsets come from one draw (each leaf's bounded
  by its size): a draw per leaf added about 30 XLA kernels per leaf to the
  step.
  """
  leaves = jax.tree.leaves(grads)
  bounds = np.concatenate([np.full(b, x.size, np.int64)
                           for x, b in zip(leaves, plan) if b])
  return jax.random.randint(key, bounds.shape, 1 - SAMPLE_BLOCK,
                            jnp.asarray(bounds, jnp.int32), jnp.int32)


def leaf_starts(starts, plan) -> tuple:
  """The offsets of :func:`draw_starts` split per leaf (a scalar 0 for a
  leaf kept whole), as :func:`take_blocks` reads them."""
  out, used = [], 0
  for blocks in plan:
    if blocks == 0:
      out.append(jnp.zeros([], jnp.int32))
    else:
      out.append(starts[used:used + blocks])
      used += blocks
  return tuple(out)


def block_scale(size: int, blocks: int) -> float:
  """What the sums over ``blocks`` windows of a leaf of ``size`` elements
  are multiplied by to be unbiased (:func:`draw_starts`): each element is
  read with probability ``SAMPLE_BLOCK / (size + SAMPLE_BLOCK - 1)`` per
  block."""
  return (size + SAMPLE_BLOCK - 1) / (blocks * SAMPLE_BLOCK)


def _gather(x, index):
  """``x[index]`` (a tuple of integer arrays), replicated: under an
  Explicit mesh axis a gather from a sharded leaf must say where its result
  lives."""
  mesh = _explicit_mesh(x)
  if mesh is not None:
    return x.at[index].get(out_sharding=jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))
  return x[index]


def _window_index(starts, size: int):
  """Where each block's entries sit: the flat index ``low + i`` of its
  ``i``-th entry, ``low`` the start clamped into a leaf of ``size``
  entries, and whether that entry is inside the window ``[s, s +
  SAMPLE_BLOCK)`` (and the leaf). Every read path uses this layout, so the
  blocks of two trees at one ``starts`` pair up element by element."""
  low = jnp.clip(starts, 0, max(size - SAMPLE_BLOCK, 0))
  index = low[:, None] + jnp.arange(SAMPLE_BLOCK, dtype=starts.dtype)[None]
  # index - B < s rather than index < s + B: no int32 overflow near 2**31.
  inside = ((index >= starts[:, None])
            & (index - SAMPLE_BLOCK < starts[:, None]))
  if size < SAMPLE_BLOCK:  # the block runs past the leaf whatever its start
    inside &= index < size
  return low, index, inside


def _windows(flat, starts):
  """The blocks of ``flat`` at ``starts`` (``n >= SAMPLE_BLOCK``) in the
  layout of :func:`_window_index`: one slice of ``SAMPLE_BLOCK`` entries per
  block at its clamped start (it holds the window's entries), masked.

  One fusion per leaf, where blocks that wrapped around the end took three
  (a slice of the end, one of the start and a shift), and compile time
  grows with fusions (RESULTS.md, "Compile time").
  """
  low, _, inside = _window_index(starts, flat.shape[0])
  rows = jax.vmap(
      lambda t: lax.dynamic_slice(flat, (t,), (SAMPLE_BLOCK,)))(low)
  return jnp.where(inside, rows, jnp.zeros([], flat.dtype))


def take_blocks(tree, starts) -> tuple:
  """The blocks of each leaf of ``tree`` at ``starts`` (whole small leaves,
  in their own shape): the entries of the window ``[s, s + SAMPLE_BLOCK)``
  of the leaf's flat entries, zeros for the part outside the leaf, laid out
  by :func:`_window_index`. An Explicitly sharded leaf is never reshaped
  (it cannot be in place) and is gathered element by element; any other of
  at least ``SAMPLE_BLOCK`` elements is read as a flat vector, in
  contiguous slices (:func:`_windows`); a smaller one (which
  :func:`sample_plan` keeps whole) by its element index."""
  out = []
  for x, s in zip(jax.tree.leaves(tree), starts):
    if s.ndim == 0:
      out.append(x)
    elif x.size >= SAMPLE_BLOCK and _explicit_mesh(x) is None:
      out.append(_windows(jnp.ravel(x), s))
    else:
      _, flat_index, inside = _window_index(s, x.size)
      flat_index = jnp.minimum(flat_index, x.size - 1)
      if _explicit_mesh(x) is not None:
        values = _gather(x, jnp.unravel_index(flat_index, x.shape))
      else:
        values = jnp.ravel(x).at[flat_index].get(mode="promise_in_bounds")
      out.append(jnp.where(inside, values, jnp.zeros([], x.dtype)))
  return tuple(out)


def sampled_gradient_stats(grads, sample: PhaseSample, plan, dtype=None, *,
                           inf_value=0.0, horizon=None,
                           bound=None) -> GradStats:
  """:class:`GradStats` estimated on the blocks of ``sample``.

  Sums over a leaf's blocks are rescaled by :func:`block_scale`, which
  makes them unbiased over the draw of the offsets; ρ is the cosine
  of the gradient and the reference on the sampled coordinates.

  Args:
    grads: this step's gradient.
    sample: offsets drawn at the previous step and the reference's blocks
      there (the momentum or gradient after the previous step).
    plan: the blocks per leaf the offsets were drawn for
      (:func:`sample_plan`).
    dtype: accumulation dtype.
    inf_value: the value ±inf entries are read as.
    horizon: the whole long-horizon reference (structure of ``grads``), or
      None; it is read on the same blocks.
    bound: the entry bound (:func:`gradient_stats`).
  """
  dtype = dtype or controller_dtype()
  leaves = jax.tree.leaves(grads)
  size = sum(x.size for x in leaves)
  starts = leaf_starts(sample.starts, plan)
  g_blocks = take_blocks(grads, starts)
  pairs = []
  for x, blocks, g, m in zip(leaves, plan, g_blocks, sample.blocks):
    scale = block_scale(x.size, blocks) if blocks else 1.0
    pairs.append((g, m, scale))
  horizons = (None if horizon is None
              else list(take_blocks(horizon, starts)))
  return _stats(pairs, size, dtype, inf_value, horizons, bound=bound)


def safe_sqrt(x):
  """``sqrt`` with a finite derivative at 0 (0 there), for meta-gradients."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def sanitize_loss(loss, limit: float):
  """Replaces a non-finite loss by ``limit`` and clamps to ``±limit``."""
  loss = jnp.where(jnp.isfinite(loss), loss, limit)
  return jnp.clip(loss, -limit, limit)


def _reward_delta(state: FilterState, config: FilterConfig, reward):
  """``(reward_now, r_delta)``: the reward to hold and the sample of its
  trend (0 when no reward is given)."""
  dtype = state.loss_mean.dtype
  if reward is None:
    return state.prev_reward, jnp.zeros([], dtype)
  reward_now = sanitize_loss(jnp.asarray(reward, dtype), config.loss_limit)
  # The first reward starts the trend at 0, even if it arrives after step 0.
  r_delta = jnp.where(state.reward_seen > 0, reward_now - state.prev_reward,
                      0.0)
  return reward_now, r_delta


def _gradient_variance(stats: GradStats):
  """The variance of the gradient's entries (the sample S filters)."""
  size = jnp.maximum(stats.size, 1.0)
  gmean = stats.sum / size
  return jnp.maximum(stats.sumsq / size - gmean * gmean, 0.0) + _TINY


# Consecutive absurd gradients (above the brake's absolute limit) whose steps
# are skipped; beyond that many in a row they are not a spike but the
# problem's scale (a run thrown far out on Rosenbrock, where ‖g‖ ~ 1e7, or a
# loss summed over a large batch) and are read like any other gradient: the
# relative clip scales them to its limit and they enter the running norm,
# which then grows to them at its bounded rate. A run that skipped them all
# stayed frozen for good. An absurd gradient within the clip's limit of the
# running norm is not skipped at all: the norm already says it is the scale.
ABSURD_PATIENCE = 8


def _clip_factor(state: FilterState, config: FilterConfig, gnorm,
                 grad_limit: float | None):
  """``(clip, G accumulator, absurd run)``: the relative clip's factor (1
  when ``config.grad_clip`` is off; 0, a skipped step, for an absurd norm
  above ``grad_limit`` that is also above the clip's limit, unless
  :data:`ABSURD_PATIENCE` absurd ones came just before), the running norm
  of the clipped gradients and the count of consecutive absurd gradients."""
  dtype = state.loss_mean.dtype
  clip = jnp.ones([], dtype)
  if config.grad_clip is not None:
    # The limit reads the filter before this step (debiased), so a spike
    # cannot raise its own ceiling.
    limit = config.grad_clip * state.G / jnp.maximum(
        1.0 - jnp.asarray(config.grad_norm, dtype)
        ** state.count.astype(dtype), _TINY)
    # No limit before the first gradient that entered the running norm.
    clip = jnp.where((state.G <= 0) | ~jnp.isfinite(gnorm), 1.0,
                     jnp.minimum(1.0, limit / gnorm))
  absurd = skip = jnp.zeros([], bool)
  if config.grad_clip is not None and grad_limit is not None:
    absurd = jnp.isfinite(gnorm) & (gnorm > grad_limit)
    # Once the running norm itself has grown to such gradients they are no
    # spike: skipping them again whenever ‖g‖ re-crossed the limit kicked a
    # momentum run ringing at that scale (a skipped step every ~10).
    spike = (state.G <= 0) | (gnorm > limit)
    skip = absurd & spike & (state.absurd_run < ABSURD_PATIENCE)
    clip = jnp.where(skip, 0.0, clip)
  g_acc = optax.tree.update_moment(jnp.where(jnp.isfinite(gnorm),
                                             clip * gnorm, 0.0),
                                   state.G, config.grad_norm, order=1)
  run = jnp.where(absurd, state.absurd_run + 1.0, 0.0)
  return clip, jnp.where(skip, state.G, g_acc), run


def _cosine(dot, gnorm, ref_sumsq):
  """cos(g, r) from ``g·r``, ``‖g‖`` and ``‖r‖²``; 0 for a zero ``r``."""
  ref_norm = safe_sqrt(ref_sumsq)
  return jnp.where(ref_norm > 0,
                   jnp.clip(dot / (gnorm * (ref_norm + _TINY)), -1.0, 1.0),
                   0.0)


def measure(state: FilterState, config: FilterConfig, loss, stats: GradStats,
            reward=None, *, grad_limit: float | None = None,
            ) -> tuple[Signals, FilterState]:
  """Folds one step's observables into the filters (AE-1).

  Args:
    state: the filter accumulators.
    config: the filter decays.
    loss: scalar loss of this step (may be non-finite: it is sanitised).
    stats: :func:`gradient_stats` of this step's (sanitised) gradient.
    reward: optional scalar reward.
    grad_limit: with ``config.grad_clip`` on, a finite gradient whose norm
      exceeds this absolute limit (the brake's) is absurd: its step is
      skipped (``clip = 0``, the base sees a zero gradient), the first one
      included, and it does not enter the running norm the relative clip
      reads; after :data:`ABSURD_PATIENCE` of them in a row they are read
      like any other gradient (clipped to the relative limit, then part of
      the running norm).

  Returns:
    ``(signals, new_state)``. ``signals.gamma`` and ``signals.brake`` are
    left at 0 for the controller to fill in.
  """
  dtype = state.loss_mean.dtype
  mode = config.mode
  count = state.count
  first = count == 0
  raw = jnp.asarray(loss, dtype)
  loss = sanitize_loss(raw, config.loss_limit)
  measured = loss
  if config.hold_bad_loss:
    bad = ~jnp.isfinite(raw) | (jnp.abs(raw) > config.loss_limit)
    loss = jnp.where(bad & ~first, state.prev_loss, jnp.where(bad, 0.0, loss))

  delta = jnp.where(first, 0.0, loss - state.prev_loss)
  reward_now, r_delta = _reward_delta(state, config, reward)
  # The filters by dependency level: two vector updates, then V*'s own.
  ((loss_mean, t_acc, ts_acc, r_acc, rs_acc, s_acc),
   (loss_mean_hat, trend, trend_scale, reward_trend, reward_scale,
    grad_var)) = emas(
        (state.loss_mean, state.T, state.T_scale, state.R, state.R_scale,
         state.S),
        (loss, delta, jnp.abs(delta), r_delta, jnp.abs(r_delta),
         _gradient_variance(stats)),
        (config.loss_mean, config.trend, config.trend, config.trend,
         config.trend, config.grad_variance), count, mode)

  deviation = loss - loss_mean_hat
  deviation = jnp.clip(jnp.where(jnp.isfinite(deviation), deviation, 0.0),
                       -config.variance_clip, config.variance_clip)
  (v_acc, ss_acc), (variance, s_star) = emas(
      (state.V, state.S_star), (deviation * deviation + _TINY, grad_var),
      (config.variance, config.reference), count, mode)
  vs_acc, v_star = ema(state.V_star, variance, config.reference, count, mode)

  gnorm = safe_sqrt(stats.sumsq) + _TINY
  clip, g_acc, absurd_run = _clip_factor(state, config, gnorm, grad_limit)
  rho = _cosine(stats.dot, gnorm, stats.ref_sumsq)
  # The displacement points against the gradients that made it: its
  # negative is the momentum's side, where ρ > 0 says "too short".
  rho_horizon = (rho if isinstance(stats.horizon_dot, tuple) else
                 _cosine(-stats.horizon_dot, gnorm, stats.horizon_sumsq))

  v_star = jnp.maximum(v_star, _TINY)
  s_star = jnp.maximum(s_star, _TINY)

  zero = jnp.zeros([], dtype)
  signals = Signals(loss=measured, loss_mean=loss_mean_hat, T=trend, T_scale=trend_scale, V=variance,
                    R=reward_trend, R_scale=reward_scale, rho=rho, S=grad_var,
                    V_star=v_star, S_star=s_star, gnorm=gnorm, gamma=zero,
                    brake=zero, clip=clip, rho_horizon=rho_horizon)
  new_state = FilterState(
      count=optax.safe_increment(count), prev_loss=loss,
      prev_reward=reward_now,
      reward_seen=(state.reward_seen if reward is None
                   else jnp.ones_like(state.reward_seen)),
      loss_mean=loss_mean, T=t_acc, T_scale=ts_acc,
      V=v_acc, R=r_acc, R_scale=rs_acc, S=s_acc, V_star=vs_acc,
      S_star=ss_acc, G=g_acc, absurd_run=absurd_run.astype(dtype))
  return signals, new_state

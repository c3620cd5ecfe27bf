"""Canonical AE optimizers (theory section 6): AE-SGDm, AE-Adam, AE-AdamW.

Each preset is :func:`ae_jax.adapt` around an ``inject_hyperparams`` base with
the canonical laws of :func:`canonical_laws`:

* α (``learning_rate``) rises with progress and phase alignment, falls with
  loss variance, is held to the effective step γ* by the gauge (AE-SGDm; the
  Adam presets leave the gauge out, see docs/laws.md) and shrunk on
  oscillation by the resonance clamp;
* β / β1 (``momentum``, ``b1``) tracks ρ (``tanh(ρ - ρ*)``);
* β2 (``b2``) rises with the loss variance V;
* ε (``eps``) grows with instability and relaxes with step quality;
* λ (``weight_decay``) is carried with its leak only (the theory gives it no
  drive);
* σ (``sigma``) follows the noise law AE-4 when started above 0; at 0 (the
  default, as in the reference) it stays 0 and no noise is drawn.

``docs/laws.md`` lists every default and where it departs from the
reference implementation, with the reason.
"""


import math
import numbers
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax import laws
from ae_jax import measurement
# The canonical gains live beside their laws (ae_jax/laws.py); the presets
# read them from there and re-export them under their old names.
from ae_jax.laws import (CANONICAL_COUPLING, CANONICAL_DRIVE, CANONICAL_ETA,
                         CANONICAL_GAUGE_ETA, CANONICAL_HYPERGRADIENT,
                         CANONICAL_MAX_STEP, CANONICAL_NOISE,
                         CANONICAL_TEMPERATURES, HYPERGRADIENT_ALTERNATION,
                         HYPERGRADIENT_DECAY,
                         HYPERGRADIENT_PROGRESS_GATE,
                         HYPERGRADIENT_PROGRESS_RESET,
                         HYPERGRADIENT_OVERSHOOT_STEPS,
                         HYPERGRADIENT_PROGRESS_WEIGHT,
                         HYPERGRADIENT_REVERSAL_WEIGHT, SGDM_OVERSHOOT_STEPS,
                         SGDM_PROGRESS_RESET, SGDM_PROGRESS_WEIGHT,
                         SGDM_REVERSAL_WEIGHT)
from ae_jax._adapt import adapt
from ae_jax.coefficient import Coefficient, check_positive
from ae_jax._controller import Brake

LEARNING_RATE = "learning_rate"
SIGMA = "sigma"

# Gradient statistics of models above 65,536 parameters
# (measurement.EXACT_STATS_UP_TO) are estimated from a random sample of this
# many elements (measurement.sampled_gradient_stats). 16K rather than 64K:
# the step at 1e5 parameters ~2.6x -> ~1.9x optax.adamw, with char_lm and a
# sparse-row embedding probe unchanged (benchmarks/RESULTS.md, "A smaller
# sample").
STATS_SAMPLE = 2**14

# A gradient above this multiple of its running norm is scaled down to it
# (measurement.FilterConfig.grad_clip).
GRAD_CLIP = 4.0
# Ω of α relative to the given rate α₀, and the warm start: α begins at
# WARM_START · α₀ and climbs on the hypergradient (a decade in ~12 steps).
# Five decades up so that from any start of the sweep's range (1e-5 ... 1
# for Adam) α can reach any other (docs/laws.md, "Warm start and Ω").
LEARNING_RATE_RANGE = (1e-6, 1e5)
WARM_START = 1e-3
# ae_sgdm starts at its given rate: its travel cap bounds the first step to
# TRAVEL_RADIUS (1 + ‖θ₀‖) and lowers α to match, whatever α₀, which is the
# warm start's job, and a low start then climbs no extra three decades
# (docs/laws.md, "ae_sgdm starts at its rate"). Without the cap it warm-starts
# like the Adam presets.
SGDM_WARM_START = 1.0
# ae_sgdm's travel cap (ae.adapt's travel_cap): no step longer than
# TRAVEL_CAP times the road travelled so far plus TRAVEL_RADIUS (1 + ‖θ₀‖)
# (docs/laws.md, "Travel cap"). SGD's step length is α‖m‖, unbounded in the
# gradient's scale: from a rate 1000x too high its first step threw
# Rosenbrock's iterate to f ~ 1e8.
TRAVEL_CAP = 1.0
# γ of the displacement ae_sgdm's step-size law reads ρ against while the
# loss falls (docs/laws.md, "Long horizon"): about the last 100 steps.
PHASE_HORIZON = 0.99
TRAVEL_RADIUS = 1e-3
FILTER_DECAYS = ("loss_mean", "trend", "variance", "grad_variance",
                 "reference")


class LawGains(NamedTuple):
  """Every gain of the canonical law chain, as one pytree (AE-9).

  Pass it to :func:`canonical_laws` or a preset (``ae_sgdm(..., gains=g)``)
  inside the function you differentiate, and ``jax.grad`` reaches every
  field::

    def meta_loss(gains):
      tx = ae.ae_sgdm(0.05, gains=gains, smooth=True)
      ...  # train K steps with lax.scan, return a validation loss
    meta_grads = jax.grad(meta_loss)(ae.default_gains(['learning_rate',
                                                       'momentum']))

  Attributes:
    drive: ``name -> DriveGains``: W_p (``progress``), W_v (``variance``),
      W_r (``reward``), W_c (``phase``), the tanh phase row (``phase_tanh``)
      and Γ (``leak``) of AE-2.
    eta: ``name -> η``, the meta-steps of AE-3.
    phase: W_m, the resonance law's phase gain on α (AE-5).
    coupling: C of AE-7, a 2×2 array over (α, the momentum-like
      coefficient).
    gauge: η_γ of AE-8.
    hypergradient: κ_max of the step-size law :func:`ae_jax.laws.hypergradient`.
    noise: κ_s, κ_u, κ_v, κ_a of AE-4 (``stall``, ``uncertainty``,
      ``instability``, ``quality``).
    filters: the AE-1 filter decays (``loss_mean``, ``trend``, ``variance``,
      ``grad_variance``, ``reference``; see
      :class:`ae_jax.measurement.FilterConfig`).
    temperatures: τ_p, τ_v, τ_r of the drive features.
  """

  drive: dict
  eta: dict
  phase: Any
  coupling: Any
  gauge: Any
  noise: dict
  filters: dict
  temperatures: dict
  hypergradient: Any = CANONICAL_HYPERGRADIENT


def default_gains(names: Sequence[str], dtype=None) -> LawGains:
  """The canonical gains for the coefficients ``names``, as arrays.

  Args:
    names: the adapted coefficients (e.g. ``['learning_rate', 'momentum',
      'sigma']`` for :func:`ae_sgdm`).
    dtype: dtype of the leaves (default: the controller dtype, float64
      under x64).
  """
  dtype = dtype or measurement.controller_dtype()

  def arr(x):
    return jnp.asarray(x, dtype)

  defaults = measurement.FilterConfig()
  return LawGains(
      drive={n: jax.tree.map(arr, CANONICAL_DRIVE[n]) for n in names
             if n in CANONICAL_DRIVE},
      eta={n: arr(CANONICAL_ETA[n]) for n in names if n in CANONICAL_ETA},
      phase=arr(0.0),
      coupling=arr([[0.0, CANONICAL_COUPLING], [CANONICAL_COUPLING, 0.0]]),
      gauge=arr(CANONICAL_GAUGE_ETA),
      noise={k: arr(v) for k, v in CANONICAL_NOISE.items()},
      filters={f: arr(getattr(defaults, f)) for f in FILTER_DECAYS},
      temperatures={k: arr(v) for k, v in CANONICAL_TEMPERATURES.items()},
      hypergradient=arr(CANONICAL_HYPERGRADIENT))


def filter_config(gains: LawGains | None) -> measurement.FilterConfig:
  """The presets' :class:`ae_jax.measurement.FilterConfig`: ``gains``'
  decays and the relative gradient clip :data:`GRAD_CLIP`."""
  decays = {} if gains is None else gains.filters
  return measurement.FilterConfig(grad_clip=GRAD_CLIP, **decays)


def _resolve_gains(names, gains, eta) -> LawGains:
  """``gains`` as a full :class:`LawGains`: the canonical gains with a
  mapping's drive rows and ``eta`` overrides, or a given ``LawGains`` as is;
  checks that every name has a meta-step."""
  if not isinstance(gains, LawGains):
    full = default_gains(names)._replace(
        drive=dict(CANONICAL_DRIVE, **(gains or {})),
        eta=dict(CANONICAL_ETA, **(eta or {})))
    # Plain floats keep the default chain free of device constants.
    gains = full._replace(
        phase=0.0, gauge=CANONICAL_GAUGE_ETA, noise=dict(CANONICAL_NOISE),
        coupling=[[0.0, CANONICAL_COUPLING], [CANONICAL_COUPLING, 0.0]],
        temperatures=dict(CANONICAL_TEMPERATURES),
        hypergradient=CANONICAL_HYPERGRADIENT)
  elif eta is not None:
    raise ValueError("canonical_laws: pass eta inside the LawGains, not as "
                     "a separate argument")
  unknown = [n for n in names if n not in gains.eta]
  if unknown:
    raise ValueError(
        f"canonical_laws: no canonical gains for {unknown} (it knows "
        f"{sorted(gains.eta)}); build the chain for other coefficients from "
        f"ae_jax.laws, e.g. optax.chain(ae.laws.drive(...), "
        f"ae.laws.evolve(...))")
  return gains


def canonical_laws(names: Sequence[str], *, step_size: str = LEARNING_RATE,
                   hypergradient: bool = True, noise: bool = True,
                   budget: bool = False, resonance: bool = False,
                   gauge: bool = False, coupling: bool = False,
                   drive: bool | None = None, safety: bool = False,
                   safety_forget: float = 1.0, gauge_warmup: int = 50,
                   reversal_weight: float = HYPERGRADIENT_REVERSAL_WEIGHT,
                   progress_gate: float | None = HYPERGRADIENT_PROGRESS_GATE,
                   progress_weight: float = HYPERGRADIENT_PROGRESS_WEIGHT,
                   progress_reset: float | None = HYPERGRADIENT_PROGRESS_RESET,
                   alternation: float | None = HYPERGRADIENT_ALTERNATION,
                   overshoot_steps: int = HYPERGRADIENT_OVERSHOOT_STEPS,
                   horizon: bool = False,
                   batches_per_epoch: int | None = None,
                   gains: Mapping[str, laws.DriveGains] | LawGains | None = None,
                   eta: Mapping[str, float] | None = None,
                   smooth=False) -> optax.GradientTransformationExtraArgs:
  """The canonical law chain for the coefficients ``names``.

  By default: AE-3's evolution, the step-size law
  :func:`ae_jax.laws.hypergradient` (α follows the sign of its own
  hypergradient) and AE-4 on σ when σ is adapted. Every other law is
  opt-in: each was measured not to help at the canonical gains, or is inert
  under them (AE-6's trust region: the step-size law never exceeds it;
  ``docs/laws.md``), and each flag adds or removes one (the knock-outs and
  knock-ins of experiment 18).

  Args:
    names: the adapted coefficients.
    step_size: the coefficient that plays α.
    hypergradient: the step-size law.
    noise: AE-4 on ``sigma`` (only if ``sigma`` is in ``names``).
    budget: AE-6's per-step trust region (:data:`CANONICAL_MAX_STEP`).
    resonance: AE-5's clamp (α / 1.25 on a variance spike or oscillation).
    gauge: AE-8.
    coupling: AE-7 (only if α and a momentum-like coefficient are present).
    drive: AE-2 with :data:`CANONICAL_DRIVE` (the theory's rows); ``None``
      turns it on exactly when ``gains`` is given.
    safety: AE-10 enforced (:func:`ae_jax.laws.safety`): α falls while the
      filtered loss stays 10% above its best level. Off by default.
    safety_forget: the safety law's ``forget`` (1: its best level is a
      running minimum; below 1 it forgets upward, see ``docs/laws.md``).
    gauge_warmup: steps before the gauge calibrates γ*.
    reversal_weight: the step-size law's weight of a reversal against an
      alignment (:func:`ae_jax.laws.hypergradient`). Use 1 around a sign
      base (Lion, signSGD): a coordinate at its optimum reverses at any α
      there, so a reversal says less about α.
    progress_gate: reversals weigh ``reversal_weight`` only once the loss's
      improvement z-score falls below this, and ``progress_weight`` while
      the loss still falls (:func:`ae_jax.laws.hypergradient`); ``None``:
      always ``reversal_weight``.
    progress_weight: see ``progress_gate``.
    progress_reset: a loss jump (the gate's z-score below minus this)
      restarts the gate's slow mean (:func:`ae_jax.laws.hypergradient`;
      only with a gate); ``None``: off. ``ae_sgdm`` passes ``None``: with
      ``horizon`` the restarted gate read the old phase's displacement
      right after a drift switch (``docs/laws.md``), so pass ``None``
      with ``horizon=True`` unless measured otherwise.
    alternation: a step whose ρ flips sign against the last one with
      ρ_t ρ_{t-1} < −``alternation`` reads as a full reversal
      (:func:`ae_jax.laws.hypergradient`); ``None``: off.
    overshoot_steps: a clipped gradient while the loss rises above its
      running mean reads as a full reversal from the ``overshoot_steps``-th
      such step in a row on (:func:`ae_jax.laws.hypergradient`).
      ``ae_sgdm`` passes 1.
    horizon: while the loss falls, the step-size law reads ρ against the
      recent displacement (:func:`ae_jax.laws.hypergradient`'s
      ``horizon``; the optimizer must measure it: ``ae.adapt``'s
      ``horizon``). ``ae_sgdm`` turns it on.
    batches_per_epoch: the batches come in shuffled epochs of this many:
      the step-size law cuts α only on an epoch's first batches or an
      overshoot, and reads every batch while α climbs
      (:func:`ae_jax.laws.hypergradient`); ``None``: batches drawn
      independently.
    gains: a :class:`LawGains` (every gain, may be traced: AE-9), or
      overrides of :data:`CANONICAL_DRIVE` rows.
    eta: overrides of :data:`CANONICAL_ETA` (with a mapping ``gains``).
    smooth: AE-9 smooth gates in the noise law, the budget and the
      resonance clamp (``True``: :data:`ae_jax.laws.DEFAULT_TEMPERATURE`; a
      number is the temperature). The brake and Π_Ω belong to the
      controller: pass ``smooth`` to the preset or :func:`ae_jax.adapt` too.
  """
  names = list(names)
  if drive is None:
    drive = gains is not None
  gains = _resolve_gains(names, gains, eta)
  rows, steps = gains.drive, gains.eta
  chain = []
  if drive:
    chain.append(laws.drive({n: rows[n] for n in names if n in rows},
                            **gains.temperatures))
  if noise and SIGMA in names:
    chain.append(laws.noise(SIGMA, **gains.noise, smooth=smooth))
  momentum_like = [n for n in ("momentum", "b1") if n in names]
  if coupling and step_size in names and momentum_like:
    pair = [step_size, momentum_like[0]]
    chain.append(laws.coupling(gains.coupling, pair))
  chain.append(laws.evolve({n: steps[n] for n in names if n in steps}))
  if hypergradient and step_size in names:
    chain.append(laws.hypergradient(
        step_size, gain=gains.hypergradient, decay=HYPERGRADIENT_DECAY,
        reversal_weight=reversal_weight, progress_weight=progress_weight,
        alternation=alternation, horizon=horizon,
        overshoot_steps=overshoot_steps, progress_reset=progress_reset,
        batches_per_epoch=batches_per_epoch,
        # With equal weights the gate has nothing to switch (but says when
        # to read the long-horizon ρ).
        progress_gate=(None if _same(reversal_weight, progress_weight)
                       and not horizon else progress_gate)))
  if gauge and step_size in names:
    chain.append(laws.gauge(step_size, eta=gains.gauge, warmup=gauge_warmup,
                            calibration=1.0))
  if safety and step_size in names:
    chain.append(laws.safety(step_size, forget=safety_forget, smooth=smooth))
  if budget:
    # The trust region only: a power budget's dual (``bound``) throttled the
    # hypergradient's climb from a low start.
    chain.append(laws.budget(
        {n: CANONICAL_MAX_STEP[n] for n in names if n in CANONICAL_MAX_STEP},
        smooth=smooth))
  if resonance and step_size in names:
    chain.append(laws.resonance(step_size, phase_gain=gains.phase,
                                smooth=smooth))
  return optax.chain(*chain)


def _same(a, b) -> bool:
  number = (int, float)
  return isinstance(a, number) and isinstance(b, number) and a == b


def _float32_at_least(tree) -> jnp.dtype:
  dtype = optax.tree.dtype(tree, "highest") if jax.tree.leaves(tree) else None
  if dtype is None or jnp.finfo(dtype).bits < 32:
    return jnp.float32
  return dtype


def injected(factory, *, static_args: Sequence[str] = (),
             **hyperparams) -> optax.GradientTransformationExtraArgs:
  """``optax.inject_hyperparams(factory, static_args)(**hyperparams)`` whose
  hyperparameters are never held below float32 (bfloat16 parameters would
  otherwise round β2 = 0.999 to 1): the base to hand to :func:`ae_jax.adapt`.

  Example::

    inner = ae.injected(optax.adafactor, learning_rate=1e-2,
                        static_args=("min_dim_size_to_factor",))
  """

  def build(tree):
    return optax.inject_hyperparams(
        factory, static_args=tuple(static_args),
        hyperparam_dtype=_float32_at_least(tree))(**hyperparams)

  def init_fn(params):
    # Strongly typed leaves: inject_hyperparams holds integer hyperparameters
    # (adafactor's decay_offset) weakly typed at init but not after an
    # update, which would recompile a jitted step on its second call.
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=x.dtype),
                        build(params).init(params))

  def update_fn(updates, state, params=None, **extra_args):
    new_updates, new_state = build(updates).update(updates, state, params,
                                                   **extra_args)
    # float32 hyperparameters promote low-precision moments (optax's mu,
    # ema) and updates; keep the state's dtypes fixed so it can be a
    # lax.scan carry, and return updates in the gradients' dtype, as optax.
    return (optax.tree.cast_like(new_updates, updates),
            optax.tree.cast_like(new_state, state))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def ema_sgd(learning_rate, momentum=0.0) -> optax.GradientTransformation:
  """SGD with EMA ("dampened") momentum, the reference's base optimizer.

  .. math:: m_t = \\mu m_{t-1} + (1-\\mu) g_t,\\qquad \\Delta\\theta = -\\alpha m_t

  Unlike ``optax.sgd``'s heavy-ball trace, changing μ leaves the effective
  step α unchanged, so AE can move μ without moving the step size.
  """
  return optax.chain(optax.ema(momentum, debias=False),
                     optax.scale_by_learning_rate(learning_rate))


def _specs(spec_args: Mapping[str, tuple]) -> list[Coefficient]:
  return [Coefficient(name, *args) for name, args in spec_args.items()]


# Ω of a coefficient given as an array (traced, e.g. by inject_hyperparams,
# which traces every numeric argument) without explicit bounds: Ω cannot be
# made relative to a value unknown at construction, so it is left open.
# Such a value is floored here so a traced 0 (σ, λ) keeps z finite.
_ARRAY_FLOOR = 1e-30


def _is_array(value) -> bool:
  return isinstance(value, (jax.Array, np.ndarray, np.generic))


def _relative_bounds(name, value, bounds, low, high):
  if bounds is not None:
    return bounds
  if _is_array(value):
    return _ARRAY_FLOOR, math.inf
  return value * low, value * high


def _check_number(name, value, *, allow_schedule=False):
  """TypeError unless ``value`` is a real number or a scalar array (or, with
  ``allow_schedule``, a callable)."""
  if allow_schedule and callable(value):
    return
  if _is_array(value):
    if jnp.ndim(value) != 0:
      raise TypeError(f"{name} must be a scalar, got shape {jnp.shape(value)}")
    kind = jnp.result_type(value)
    if not (jnp.issubdtype(kind, jnp.floating)
            or jnp.issubdtype(kind, jnp.integer)):
      raise TypeError(f"{name} must be a real number, got dtype {kind}")
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    kind = "an Optax schedule or " if allow_schedule else ""
    raise TypeError(f"{name} must be {kind}a real number, got "
                    f"{type(value).__name__} {value!r}")


def _check_bounds(name, bounds, *, below_one=False):
  """ValueError unless ``bounds`` is ``None`` or ``(lower, upper)`` with
  ``0 <= lower <= upper`` (and ``upper < 1`` for a momentum)."""
  if bounds is None:
    return
  try:
    lo, hi = (float(b) for b in bounds)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a pair (lower, upper) of numbers, got "
                     f"{bounds!r}") from None
  if not (math.isfinite(lo) and 0.0 <= lo <= hi):
    raise ValueError(f"{name} must satisfy 0 <= lower <= upper, got "
                     f"{bounds!r}")
  if below_one and not hi < 1.0:
    raise ValueError(f"{name}: a momentum lies in [0, 1) (at 1 the EMA "
                     f"stops following the gradient); got upper={hi}")


def _rate(learning_rate, bounds, default: float):
  """Splits ``learning_rate`` into the static α₀ the preset is built at,
  Ω, and the ``step_scale`` of :func:`ae_jax.adapt` that carries the rest.

  * a number: α₀ itself, no factor;
  * a scalar array or a traced value (``vmap`` over rates,
    ``inject_hyperparams``) without explicit bounds: the preset is built at
    the static ``default`` and its updates are scaled by
    ``learning_rate / default``. Every law acts on log α and Ω is relative
    to α₀, so this is the optimizer built at that rate, Ω following it;
  * a schedule ``s``: built at ``s(0)`` (``default`` if that is 0), updates
    scaled by ``s(t) / s(0)``: the schedule is the shape the closed loop
    modulates, the laws find the level.
  """
  _check_number("learning_rate", learning_rate, allow_schedule=True)
  if callable(learning_rate):
    with jax.ensure_compile_time_eval():
      start = float(learning_rate(0))
    if not (math.isfinite(start) and start >= 0):
      raise ValueError(f"learning_rate: the schedule must start at a "
                       f"finite rate >= 0, got {start}")
    anchor = start if start > 0 else default
    return anchor, bounds, lambda count: learning_rate(count) / anchor
  if _is_array(learning_rate) and bounds is None:
    if not isinstance(learning_rate, jax.core.Tracer):
      check_positive("", learning_rate=float(learning_rate))
    return default, None, learning_rate / default
  check_positive("", learning_rate=learning_rate)
  return learning_rate, bounds, None


def _lr_spec(learning_rate, bounds, warm_start):
  lo, hi = _relative_bounds("learning_rate", learning_rate, bounds,
                            *LEARNING_RATE_RANGE)
  check_positive("", warm_start=warm_start)
  init = learning_rate * warm_start
  if not isinstance(init, jax.core.Tracer):
    init = min(max(float(init), lo), hi)
  return Coefficient(LEARNING_RATE, init, lo, hi, learning_rate, "log")


def _pinned_at_zero_or_log(name, value, bounds):
  """A log-parametrised coefficient, or one pinned at 0 when it starts there
  (0 is a fixed point of the multiplicative law AE-3). An array value is
  never pinned (it may be traced: the choice must not depend on it)."""
  if _is_array(value):
    if not isinstance(value, jax.core.Tracer) and float(value) < 0:
      raise ValueError(f"{name} must be >= 0, got {value}")
    lo = bounds[0] if bounds[0] > 0 else _ARRAY_FLOOR
    return Coefficient(name, jnp.maximum(value, lo), lo, bounds[1], None,
                       "log")
  if float(value) < 0:
    raise ValueError(f"{name} must be >= 0, got {value}")
  if float(value) == 0:
    return Coefficient(name, 0.0, 0.0, 0.0, None, "linear")
  return Coefficient(name, value, *bounds, None, "log")


def _sigma_spec(sigma, bounds):
  # σ = None or 0 (the default) pins the noise off; no noise is drawn. The
  # default is None, not 0.0, so inject_hyperparams (which traces every
  # numeric argument) leaves it static and the state identical.
  sigma = 0.0 if sigma is None else sigma
  return _pinned_at_zero_or_log(
      SIGMA, sigma, _relative_bounds("sigma", sigma, bounds, 1e-3, 1e2))


def _finish(inner, specs, laws_chain, *, delayed, seed, gains, smooth,
            momentum="auto", step_scale=None, travel_cap=None, horizon=None,
            batches_per_epoch=None, **law_flags):
  names = [c.name for c in specs]
  cap = {n: 0.5 for n in ("momentum", "b1") if n in names}
  if laws_chain is None:
    laws_chain = canonical_laws(names, gains=gains, smooth=smooth,
                                horizon=horizon is not None,
                                batches_per_epoch=batches_per_epoch,
                                **law_flags)
  elif batches_per_epoch is not None:
    raise ValueError("batches_per_epoch configures the canonical step-size "
                     "law; with a laws_chain, pass it to "
                     "ae.laws.hypergradient in that chain instead")
  return adapt(inner, specs, laws_chain,
               brake=Brake(scale={LEARNING_RATE: 0.1}, cap=cap),
               filters=filter_config(gains), delayed=delayed, seed=seed,
               momentum=momentum, stats_sample=STATS_SAMPLE, smooth=smooth,
               step_scale=step_scale, travel_cap=travel_cap,
               travel_radius=TRAVEL_RADIUS, horizon=horizon)


def ae_sgdm(learning_rate: optax.ScalarOrSchedule = 1e-1,
            momentum: float = 0.9, *,
            sigma: float | None = None, learning_rate_bounds=None,
            warm_start: float | None = None,
            momentum_bounds=(0.0, 0.99), sigma_bounds=None,
            laws_chain=None, delayed: bool = False, seed: int = 0,
            gains: LawGains | None = None, smooth=False,
            travel_cap: float | None = TRAVEL_CAP,
            horizon: float | None = PHASE_HORIZON,
            batches_per_epoch: int | None = None,
            ) -> optax.GradientTransformationExtraArgs:
  """AE-SGDm: SGD with EMA momentum whose step size α finds itself.

  .. math::

    m_t = \\beta m_{t-1} + (1-\\beta)\\,c_t g_t,\\qquad
    \\theta_{t+1} = \\theta_t - \\alpha_t m_t,

    \\log\\alpha_{t+1} = \\Pi_\\Omega\\big(\\log\\alpha_t + \\kappa_t h_t\\big),
    \\qquad h_t = \\frac{\\mathrm{LP}(\\tilde\\rho_t)}
      {\\sqrt{\\mathrm{LP}(\\tilde\\rho_t^2)}},\\qquad
    \\rho_t = \\cos\\angle(g_t, m_{t-1})

  By default only α adapts, by the step-size law
  (:func:`ae_jax.laws.hypergradient`): ρ > 0 says the last step was too
  short, ρ < 0 that it overshot, and α moves by up to κ_t = 0.2 in log space
  per step while the sign of the filtered ρ holds (an Rprop gain that
  shrinks when it flips). α starts at the given rate and may travel in
  Ω = α₀·[1e-6, 1e5]; c_t is the relative gradient clip; a travel cap bounds
  each step by the distance travelled so far (DoG's idea: the first step is
  at most 1e-3 (1 + ‖θ₀‖) long, so a rate far too high starts where the
  cap puts it), and
  while the loss falls ρ is also read against the recent displacement
  (``horizon``). ``docs/laws.md`` ("The canonical chain", "Preset defaults")
  gives each default and the measurement that chose it.

  β (``momentum``) and σ are coefficients in the state
  (:func:`ae_jax.coefficients` reads them) but stay at their initial values
  (β drifts by ~1e-6 per step under Ω's barrier) unless ``laws_chain`` adds a
  law that moves them, e.g. the theory's drive
  (``canonical_laws(names, drive=True)``); σ > 0 adds AE-4's noise law. The
  base is SGD with EMA momentum (:func:`ema_sgd`), so that moving β does not
  move the step size. Its α is therefore ``1 / (1 - β)`` times Optax's
  heavy-ball rate: ``ae_sgdm(0.1, 0.9)`` starts with the same steps as
  ``optax.sgd(1e-2, momentum=0.9)``, which is why the default α is 0.1.

  Args:
    learning_rate: initial α (EMA-momentum convention; a heavy-ball rate
      ``lr`` with momentum β corresponds to ``lr / (1 - β)``).
    momentum: initial β (EMA momentum, see :func:`ema_sgd`).
    sigma: initial parameter-noise σ (``None`` or 0: no noise).
    learning_rate_bounds: Ω for α (default: 1e-6 α₀ to 1e5 α₀).
    warm_start: α begins at ``warm_start · learning_rate`` and climbs on
      its hypergradient; ``None``: :data:`SGDM_WARM_START` (1, the given
      rate) with the travel cap, :data:`WARM_START` (1e-3) without it.
    momentum_bounds: Ω for β.
    sigma_bounds: Ω for σ when σ > 0 (default: 1e-3 σ₀ to 1e2 σ₀).
    laws_chain: replaces :func:`canonical_laws` (e.g. for a knock-out).
    delayed: see :func:`ae_jax.adapt`.
    seed: noise seed.
    gains: a :class:`LawGains` (may be traced, for meta-gradients: AE-9);
      default :func:`default_gains`. Its filter decays are used even with
      a custom ``laws_chain``.
    smooth: AE-9 smooth mode: every hard gate (stall, resonance, brake,
      Π_Ω, budget clips) is replaced by its smooth surrogate; ``True`` uses
      :data:`ae_jax.laws.DEFAULT_TEMPERATURE`, a number is the temperature.
    travel_cap: no step longer than this times the road travelled so far
      plus :data:`TRAVEL_RADIUS` ``(1 + ‖θ₀‖)``; α is lowered to meet it
      (:func:`ae_jax.adapt`'s ``travel_cap``). ``None``: no cap.
    horizon: γ of the recent displacement that the step-size law reads ρ
      against while the loss falls (:func:`ae_jax.adapt`'s ``horizon``,
      :func:`ae_jax.laws.hypergradient`'s; one more parameter-sized
      buffer). ``None``: the one-step ρ throughout.
    batches_per_epoch: B when the batches come in shuffled epochs of B
      (each example once per epoch; count from the first ``update``): the
      step-size law cuts α only on an epoch's first batches or an
      overshoot, and reads every batch while α climbs. Within an epoch the
      batches are anticorrelated, and read every step ρ sent α to Ω's floor
      (:func:`ae_jax.laws.hypergradient`). ``None``: batches drawn
      independently.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``value=``
    (the minibatch loss).

  Examples:
    >>> import jax, jax.numpy as jnp, optax, ae_jax as ae
    >>> loss = lambda p: jnp.sum((p - 3.0) ** 2)
    >>> params = jnp.zeros(4)
    >>> opt = ae.ae_sgdm(0.1)
    >>> state = opt.init(params)
    >>> @jax.jit
    ... def step(params, state):
    ...   value, grad = jax.value_and_grad(loss)(params)
    ...   updates, state = opt.update(grad, state, params, value=value)
    ...   return optax.apply_updates(params, updates), state
    >>> for _ in range(200):
    ...   params, state = step(params, state)
    >>> bool(loss(params) < 1e-3)
    True

  References:
    Baydin et al., `Online Learning Rate Adaptation with Hypergradient
    Descent <https://arxiv.org/abs/1703.04782>`_, ICLR 2018;
    Riedmiller and Braun, `A direct adaptive method for faster
    backpropagation learning: the RPROP algorithm
    <https://doi.org/10.1109/ICNN.1993.298623>`_, ICNN 1993;
    Ivgi, Hinder and Carmon, `DoG is SGD's Best Friend: A Parameter-Free
    Dynamic Step Size Schedule <https://arxiv.org/abs/2302.12022>`_,
    ICML 2023.
  """
  alpha0, learning_rate_bounds, step_scale = _rate(
      learning_rate, learning_rate_bounds, 1e-1)
  if warm_start is None:
    warm_start = SGDM_WARM_START if travel_cap is not None else WARM_START
  _check_common(momentum=momentum, sigma=sigma, warm_start=warm_start,
                learning_rate_bounds=learning_rate_bounds,
                sigma_bounds=sigma_bounds)
  _check_bounds("momentum_bounds", momentum_bounds, below_one=True)
  inner = injected(ema_sgd, learning_rate=alpha0, momentum=momentum)
  specs = [_lr_spec(alpha0, learning_rate_bounds, warm_start),
           Coefficient("momentum", momentum, *momentum_bounds, 0.9
                       if momentum_bounds[0] <= 0.9 <= momentum_bounds[1]
                       else None, "linear"),
           _sigma_spec(sigma, sigma_bounds)]
  return _finish(inner, specs, laws_chain, delayed=delayed, seed=seed,
                 gains=gains, smooth=smooth, step_scale=step_scale,
                 reversal_weight=SGDM_REVERSAL_WEIGHT,
                 progress_weight=SGDM_PROGRESS_WEIGHT,
                 progress_reset=SGDM_PROGRESS_RESET,
                 overshoot_steps=SGDM_OVERSHOOT_STEPS, travel_cap=travel_cap,
                 horizon=horizon, batches_per_epoch=batches_per_epoch)


def _check_common(*, warm_start, learning_rate_bounds, sigma_bounds,
                  **numbers_):
  """Type checks shared by the presets (names the field)."""
  for name, value in numbers_.items():
    if not (name == "sigma" and value is None):
      _check_number(name, value)
  _check_number("warm_start", warm_start)
  _check_bounds("learning_rate_bounds", learning_rate_bounds)
  if learning_rate_bounds is not None and not float(
      learning_rate_bounds[0]) > 0:
    raise ValueError(f"learning_rate_bounds: the lower bound must be > 0 "
                     f"(α is log-parametrised), got {learning_rate_bounds!r}")
  _check_bounds("sigma_bounds", sigma_bounds)


def _adam_specs(learning_rate, b1, b2, eps, sigma, learning_rate_bounds,
                sigma_bounds, warm_start, eps_bounds=None):
  _check_common(b1=b1, b2=b2, eps=eps, sigma=sigma, warm_start=warm_start,
                learning_rate_bounds=learning_rate_bounds,
                sigma_bounds=sigma_bounds)
  _check_bounds("eps_bounds", eps_bounds)
  check_positive("", learning_rate=learning_rate, eps=eps)
  for name, beta in (("b1", b1), ("b2", b2)):
    if not isinstance(beta, jax.core.Tracer) and not 0.0 < float(beta) < 1.0:
      raise ValueError(f"{name} must lie in (0, 1), got {beta}")
  if _is_array(b2):  # traced, or may be: Ω must not depend on the value
    b2_bounds = (0.9, 0.99999)
  else:
    # Strictly around b2 (a logit coordinate), whatever b2 in (0, 1) is.
    b2_bounds = (min(0.9, b2 - 0.5 * (1 - b2)), max(0.99999, b2 + 0.5 * (1 - b2)))
  eps_bounds = _relative_bounds("eps", eps, eps_bounds, 1e-2, 1e4)
  return [
      _lr_spec(learning_rate, learning_rate_bounds, warm_start),
      Coefficient("b1", b1, 0.0, 0.999, None, "logit"),
      Coefficient("b2", b2, *b2_bounds, None, "logit"),
      Coefficient("eps", eps, eps_bounds[0], max(eps_bounds[1], 1e-6), None,
                  "log"),
      _sigma_spec(sigma, sigma_bounds),
  ]


def adamw_coefficients(learning_rate: optax.ScalarOrSchedule = 1e-3,
                       b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                       weight_decay: float = 1e-4, *,
                       sigma: float | None = None,
                       learning_rate_bounds=None, weight_decay_bounds=None,
                       sigma_bounds=None, eps_bounds=None,
                       warm_start: float = WARM_START) -> list[Coefficient]:
  """The :class:`Coefficient` specs that :func:`ae_adamw` adapts, for the
  same arguments (the order, bounds and parametrisations it uses).

  Code that acts on an AE-AdamW state from outside (the coefficient
  consensus of :mod:`ae_jax.swarm`) needs Ω and the coordinates, which the
  optimizer itself does not expose. For a traced rate without bounds or a
  schedule, these are the specs at the static α₀ the preset is built at
  (see :func:`ae_adamw`).
  """
  alpha0, learning_rate_bounds, _ = _rate(learning_rate, learning_rate_bounds,
                                          1e-3)
  _check_bounds("weight_decay_bounds", weight_decay_bounds)
  _check_number("weight_decay", weight_decay)
  specs = _adam_specs(alpha0, b1, b2, eps, sigma,
                      learning_rate_bounds, sigma_bounds, warm_start,
                      eps_bounds)
  specs.insert(4, _pinned_at_zero_or_log(
      "weight_decay", weight_decay,
      _relative_bounds("weight_decay", weight_decay, weight_decay_bounds,
                       1e-2, 1e2)))
  return specs


def ae_adam(learning_rate: optax.ScalarOrSchedule = 1e-3, b1: float = 0.9,
            b2: float = 0.999, eps: float = 1e-8, *, sigma: float | None = None,
            learning_rate_bounds=None, warm_start: float = WARM_START,
            sigma_bounds=None, eps_bounds=None, laws_chain=None,
            delayed: bool = False, seed: int = 0,
            gains: LawGains | None = None, smooth=False,
            batches_per_epoch: int | None = None,
            ) -> optax.GradientTransformationExtraArgs:
  """AE-Adam: Adam whose step size α finds itself.

  .. math::

    u_t = -\\alpha_t\\, \\hat m_t / (\\sqrt{\\hat v_t} + \\epsilon),\\qquad
    \\log\\alpha_{t+1} = \\Pi_\\Omega\\big(\\log\\alpha_t + \\kappa_t h_t\\big),
    \\qquad \\rho_t = \\cos\\angle\\big(g_t, \\hat m_{t-1} /
      (\\sqrt{\\hat v_{t-1}} + \\epsilon)\\big)

  with :math:`h_t` the step-size law's filtered sign of ρ
  (:func:`ae_jax.laws.hypergradient`, see :func:`ae_sgdm`), measured against
  the preconditioned momentum, the direction Adam last stepped in. α starts
  at ``warm_start · learning_rate`` and may travel in Ω = α₀·[1e-6, 1e5];
  the gradient passes the relative clip first. Reversals weigh 2 once the
  loss stops improving (the short-horizon correction, ``docs/laws.md``,
  "Reversal weight", "Progress gate").

  β1, β2, ε and σ are coefficients in the state (:func:`ae_jax.coefficients`
  reads them) but stay at their initial values unless ``laws_chain`` adds a
  law that moves them (``canonical_laws(names, drive=True)``: the theory's
  rows, β1 tracking ρ, β2 rising with the variance); σ > 0 adds AE-4's noise
  law. The gauge (AE-8) is left out: Adam's step does not scale with ‖g‖, so
  α‖g‖ is not its effective step.

  Args:
    learning_rate: initial α.
    b1: initial β1.
    b2: initial β2.
    eps: initial ε.
    sigma: initial parameter-noise σ (``None`` or 0: no noise).
    learning_rate_bounds: Ω for α (default: 1e-6 α₀ to 1e5 α₀).
    warm_start: α begins at ``warm_start · learning_rate`` and climbs on
      its hypergradient (1 starts at the given rate).
    sigma_bounds: Ω for σ when σ > 0.
    laws_chain: replaces :func:`canonical_laws`.
    delayed: see :func:`ae_jax.adapt`.
    seed: noise seed.
    gains: a :class:`LawGains` (may be traced); see :func:`ae_sgdm`.
    smooth: AE-9 smooth mode; see :func:`ae_sgdm`.
    batches_per_epoch: shuffled epochs of this many batches; see
      :func:`ae_sgdm`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``value=``
    (the minibatch loss).

  Examples:
    >>> import jax, jax.numpy as jnp, optax, ae_jax as ae
    >>> loss = lambda p: jnp.sum((p - 3.0) ** 2)
    >>> params = jnp.zeros(4)
    >>> opt = ae.ae_adam(1.0)  # 1000x the usual rate
    >>> state = opt.init(params)
    >>> @jax.jit
    ... def step(params, state):
    ...   value, grad = jax.value_and_grad(loss)(params)
    ...   updates, state = opt.update(grad, state, params, value=value)
    ...   return optax.apply_updates(params, updates), state
    >>> for _ in range(300):
    ...   params, state = step(params, state)
    >>> bool(loss(params) < 1e-3)
    True

  References:
    Kingma and Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, ICLR 2015;
    Baydin et al., `Online Learning Rate Adaptation with Hypergradient
    Descent <https://arxiv.org/abs/1703.04782>`_, ICLR 2018.
  """
  alpha0, learning_rate_bounds, step_scale = _rate(
      learning_rate, learning_rate_bounds, 1e-3)
  specs = _adam_specs(alpha0, b1, b2, eps, sigma,
                      learning_rate_bounds, sigma_bounds, warm_start,
                      eps_bounds)
  inner = injected(optax.adam, learning_rate=alpha0, b1=b1, b2=b2, eps=eps)
  return _finish(inner, specs, laws_chain, delayed=delayed, seed=seed,
                 gains=gains, smooth=smooth, step_scale=step_scale,
                 batches_per_epoch=batches_per_epoch)


def adamw_decay_at(rate):
  """``optax.adamw`` whose decoupled weight decay runs at a fixed ``rate``.

  .. math::

    u_t = -\\alpha_t \\, \\hat m_t / (\\sqrt{\\hat v_t} + \\epsilon)
          - r \\, \\lambda_t \\, \\theta_{t-1}

  where ``optax.adamw`` has :math:`\\alpha_t \\lambda_t` in place of
  :math:`r \\lambda_t`. The base of :func:`ae_adamw`, with :math:`r` the
  user's learning rate: the laws adapt α, and the decay stays the one the
  user set. Coupled to the adapted α (as before 2026-12-07), the decay grew
  with it (10-1,000x ``optax.adamw``'s at the same λ on the class-shift
  task, where α rose to 0.01-1) and held Rosenbrock at f ~ 1e-6 from every
  start (``benchmarks/RESULTS.md``, "Weight decay at the user's rate").

  Args:
    rate: the rate :math:`r` the decay runs at (a positive scalar).

  Returns:
    A factory with ``optax.adamw``'s hyperparameters (``learning_rate``,
    ``b1``, ``b2``, ``eps``, ``weight_decay``), for
    :func:`injected`.

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, 2019.
  """

  def adamw(learning_rate, b1, b2, eps, weight_decay):
    # α > 0 always: Ω's floor is a positive fraction of α0.
    return optax.adamw(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
                       weight_decay=weight_decay * rate / learning_rate)

  return adamw


def ae_adamw(learning_rate: optax.ScalarOrSchedule = 1e-3, b1: float = 0.9,
             b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-4,
             *, sigma: float | None = None, learning_rate_bounds=None,
             warm_start: float = WARM_START,
             weight_decay_bounds=None, sigma_bounds=None, eps_bounds=None,
             laws_chain=None,
             delayed: bool = False, seed: int = 0,
             gains: LawGains | None = None, smooth=False,
             batches_per_epoch: int | None = None,
             ) -> optax.GradientTransformationExtraArgs:
  """AE-AdamW: AdamW whose step size finds itself; decay at the user's rate.

  .. math::

    u_t = -\\alpha_t\\, \\hat m_t / (\\sqrt{\\hat v_t} + \\epsilon)
      - r\\,\\lambda\\,\\theta_{t-1}

  with α adapted as in :func:`ae_adam` (the step-size law,
  :func:`ae_jax.laws.hypergradient`) and the decoupled decay at the user's
  ``learning_rate`` r (:func:`adamw_decay_at`), not at the adapted α. β1,
  β2, ε, λ and σ are coefficients in the state but stay at their initial
  values unless ``laws_chain`` adds a law that moves them
  (``canonical_laws(names, drive=True)``); σ > 0 adds AE-4's noise law.

  Args:
    learning_rate: initial α.
    b1: initial β1.
    b2: initial β2.
    eps: initial ε.
    weight_decay: initial λ (decoupled, as in ``optax.adamw``); 0 keeps it
      at 0. The parameters decay by ``learning_rate · λ`` per step (times
      the schedule's shape with a schedule), what ``optax.adamw`` does at
      that rate, whatever rate α the laws adapt to: AdamW decouples the
      decay from the gradient step's rate (Loshchilov & Hutter, 2019), so
      tuning α leaves it alone (:func:`adamw_decay_at`).
    sigma: initial parameter-noise σ (``None`` or 0: no noise).
    learning_rate_bounds: Ω for α (default: 1e-6 α₀ to 1e5 α₀).
    warm_start: α begins at ``warm_start · learning_rate`` and climbs on
      its hypergradient (1 starts at the given rate).
    weight_decay_bounds: Ω for λ (default: 1e-2 λ₀ to 1e2 λ₀).
    sigma_bounds: Ω for σ when σ > 0.
    laws_chain: replaces :func:`canonical_laws`.
    delayed: see :func:`ae_jax.adapt`.
    seed: noise seed.
    gains: a :class:`LawGains` (may be traced); see :func:`ae_sgdm`.
    smooth: AE-9 smooth mode; see :func:`ae_sgdm`.
    batches_per_epoch: shuffled epochs of this many batches; see
      :func:`ae_sgdm`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``value=``
    (the minibatch loss).

  Examples:
    >>> import jax, jax.numpy as jnp, optax, ae_jax as ae
    >>> loss = lambda p: jnp.sum((p - 3.0) ** 2)
    >>> params = jnp.zeros(4)
    >>> opt = ae.ae_adamw(1e-5, weight_decay=1e-4)  # 100x too low a rate
    >>> state = opt.init(params)
    >>> @jax.jit
    ... def step(params, state):
    ...   value, grad = jax.value_and_grad(loss)(params)
    ...   updates, state = opt.update(grad, state, params, value=value)
    ...   return optax.apply_updates(params, updates), state
    >>> for _ in range(300):
    ...   params, state = step(params, state)
    >>> bool(loss(params) < 1e-3)
    True

  References:
    Loshchilov and Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019;
    Baydin et al., `Online Learning Rate Adaptation with Hypergradient
    Descent <https://arxiv.org/abs/1703.04782>`_, ICLR 2018.
  """
  alpha0, learning_rate_bounds, step_scale = _rate(
      learning_rate, learning_rate_bounds, 1e-3)
  specs = adamw_coefficients(
      alpha0, b1, b2, eps, weight_decay, sigma=sigma,
      learning_rate_bounds=learning_rate_bounds,
      weight_decay_bounds=weight_decay_bounds, sigma_bounds=sigma_bounds,
      eps_bounds=eps_bounds, warm_start=warm_start)
  inner = injected(adamw_decay_at(alpha0), learning_rate=alpha0, b1=b1,
                   b2=b2, eps=eps, weight_decay=weight_decay)
  return _finish(inner, specs, laws_chain, delayed=delayed, seed=seed,
                 gains=gains, smooth=smooth, step_scale=step_scale,
                 batches_per_epoch=batches_per_epoch)

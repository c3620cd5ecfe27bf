"""The normal form: any Optax optimizer as an AE optimizer.

.. math::

  \\theta_{t+1} = \\theta_t - \\alpha_t P_t(a_t, s_t)\\, g_t + \\xi_t,\\qquad
  a_{t+1} = \\Pi_\\Omega\\big(a_t \\odot \\exp(\\eta_a u_t)\\big)

:func:`adapt` wraps an optimizer built with ``optax.inject_hyperparams``
(the base, giving :math:`P_t`), runs a :func:`ae_jax.controller` on its
hyperparameters, writes the coefficients back into the base's
``hyperparams`` (no recompilation) and adds the parameter noise
:math:`\\xi_t` of AE-4.

Data flow of one ``update(grads, state, params, value=loss)``::

  grads ─► gradient_stats(raw g, momentum) ─► controller ─► a_{t+1} ─► hyperparams
        └─► nan_to_num ─► base.update (with a_{t+1}) ─► updates ─(+ξ)─►

That is the default, the reference's timing: ``a_{t+1}`` is computed from step
t's gradient and applied to it, so the emergency brake acts on the very step
that tripped it. With ``delayed=True`` the base update runs with ``a_t`` and
the controller's ``a_{t+1}`` waits for the next step, so exact reductions over
``g`` do not hold up the update. With the sampled statistics of large models
the two cost the same (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import optax

from ae_jax import _controller as controller_lib
from ae_jax import laws as laws_lib
from ae_jax import measurement
from ae_jax.coefficient import Coefficient, as_specs

_TINY = 1e-30

# Fields of Optax states that hold a first moment, in order of preference.
MOMENTUM_FIELDS = ("mu", "trace", "ema")
# Fields of Optax states that hold a second moment (Adam's ``nu``): the phase
# reference is then the preconditioned momentum, the direction Adam applies.
SECOND_MOMENT_FIELDS = ("nu",)
_INJECT_STATES = (optax.InjectStatefulHyperparamsState,
                  optax.InjectHyperparamsState)


class AdaptState(NamedTuple):
  """State of :func:`adapt`.

  Attributes:
    inner_state: the base optimizer's state; its ``hyperparams`` hold the
      coefficients it will apply next.
    controller: the :class:`ae_jax.ControllerState`.
    phase_ref: what ρ of the next step is measured against, when it cannot
      be read from ``inner_state``: ``()`` when the base's momentum is read
      directly; the previous gradient when the base has no momentum; with
      sampled statistics, a :class:`ae_jax.measurement.PhaseSample` (blocks
      of the momentum or gradient, a few thousand numbers).
    key: PRNG key of the parameter noise ξ_t and the sampled statistics;
      carried unchanged from step to step when neither is drawn (exact
      statistics and no σ).
    travel: the :class:`Travel` of the travel cap, ``()`` without one.
    displacement: with a ``horizon`` γ, the recent displacement
      :math:`D_t = \\gamma D_{t-1} + \\Delta\\theta_t` (a parameter-shaped
      buffer) that the long-horizon ρ is measured against; ``()`` without.
  """

  inner_state: Any
  controller: controller_lib.ControllerState
  phase_ref: Any
  key: chex.PRNGKey
  travel: Any = ()
  displacement: Any = ()


class Travel(NamedTuple):
  """State of :func:`adapt`'s travel cap.

  Attributes:
    path: the length of the road travelled, the sum of the lengths of the
      steps applied so far.
    radius: r₀, the length allowed before any travel.
  """

  path: chex.Array
  radius: chex.Array


def _inject_states(tree):
  return [s for s in jax.tree.leaves(
      tree, is_leaf=lambda x: isinstance(x, _INJECT_STATES))
          if isinstance(s, _INJECT_STATES)]


def _probe(inner):
  """The inner state for a scalar parameter, computed eagerly."""
  with jax.ensure_compile_time_eval():
    try:
      return inner.init(jnp.zeros([], jnp.float32))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(
          f"adapt: could not initialise the inner optimizer on a probe "
          f"parameter ({type(e).__name__}: {e})") from e


def _moments(state, field: str):
  """Values of ``field`` in ``state``, outside any ``hyperparams`` dict."""
  return [value for path, value in optax.tree.get_all_with_path(state, field)
          if not any(getattr(k, "name", getattr(k, "key", None))
                     == "hyperparams" for k in path)]


def _parameter_shaped_field(state, candidates) -> str | None:
  """The first of ``candidates`` that is a parameter-shaped field of
  ``state`` (probed on a scalar parameter), or None."""
  for field in candidates:
    for value in _moments(state, field):
      leaves = jax.tree.leaves(value)
      if len(leaves) == 1 and jnp.shape(leaves[0]) == ():
        return field
  return None


def _find_momentum_field(state, momentum) -> str | None:
  if momentum is None:
    return None
  candidates = MOMENTUM_FIELDS if momentum == "auto" else (momentum,)
  field = _parameter_shaped_field(state, candidates)
  if field is not None:
    return field
  if momentum != "auto":
    raise ValueError(f"adapt: momentum={momentum!r} is not a parameter-shaped "
                     f"field of the inner optimizer's state")
  return None


def _read_momentum(inner_state, field: str, grads):
  structure = jax.tree.structure(grads)
  for value in _moments(inner_state, field):
    if jax.tree.structure(value) == structure:
      return value
  raise ValueError(f"adapt: the inner state's {field!r} does not match the "
                   f"gradient's structure")


def _find_second_moment_field(state, momentum_field) -> str | None:
  if momentum_field is None:
    return None
  return _parameter_shaped_field(state, SECOND_MOMENT_FIELDS)


def _hyperparam(inner_state, name: str, default):
  for s in _inject_states(inner_state):
    if name in s.hyperparams:
      return s.hyperparams[name]
  return default


def _direction_moments(inner_state, momentum_field, second_field, grads):
  """``(m, nu, eps)`` of the base's last step: its momentum, its second
  moment (None without one) and Adam's ε."""
  mu = _read_momentum(inner_state, momentum_field, grads)
  if second_field is None:
    return mu, None, None
  return (mu, _read_momentum(inner_state, second_field, grads),
          _hyperparam(inner_state, "eps", 1e-8))


def _phase_reference(inner_state, momentum_field, second_field, grads,
                     take=None):
  """The direction of the step the base applied last: its momentum, divided
  by ``sqrt(nu) + eps`` when it keeps a second moment (Adam's direction,
  without the bias corrections, scalars that a cosine does not see).

  ``take`` (a pytree -> pytree function such as sampled blocks) is applied
  to the moments before the division, so only what it keeps is computed.
  """
  take = take or (lambda tree: tree)
  mu, nu, eps = _direction_moments(inner_state, momentum_field, second_field,
                                   grads)
  if nu is None:
    return take(mu)
  return jax.tree.map(lambda m, v: measurement.adam_direction(m, v, eps),
                      take(mu), take(nu))


def write_hyperparams(inner_state, values: dict):
  """Writes ``values`` into the base optimizer's ``hyperparams`` (cast to
  their dtype); names absent from ``hyperparams`` are skipped."""

  def write(node):
    if not isinstance(node, _INJECT_STATES):
      return node
    hps = dict(node.hyperparams)
    for name, value in values.items():
      if name in hps:
        hps[name] = jnp.array(value, dtype=jnp.asarray(hps[name]).dtype)
    return node._replace(hyperparams=hps)

  return jax.tree.map(write, inner_state,
                      is_leaf=lambda x: isinstance(x, _INJECT_STATES))


def _adopt_overrides(cstate, inner_state, specs):
  """The controller state with every hyperparameter that was changed from
  outside (``optax.tree.set``, :func:`set_coefficients`) since the last
  update adopted: its ``z`` and value move to the new value (projected on
  Ω), so the laws continue from there instead of overwriting it."""
  z, values = dict(cstate.z), dict(cstate.values)
  for c in specs:
    held = _hyperparam(inner_state, c.name, None)
    if held is None:
      continue
    held = jnp.asarray(held)
    # What this optimizer wrote last, in the dtype it was written in.
    changed = held != values[c.name].astype(held.dtype)
    dtype = values[c.name].dtype
    new = jnp.clip(held.astype(dtype), c.lower, c.upper)
    values[c.name] = jnp.where(changed, new, values[c.name])
    z[c.name] = jnp.where(changed, c.to_z(new).astype(dtype), z[c.name])
  return cstate._replace(z=type(cstate.z)(z), values=type(cstate.values)(values))


def set_coefficients(state, **values):
  """Overrides adapted coefficients in an AE state, mid-run.

  Writes the values into the base optimizer's ``hyperparams`` (what
  ``optax.tree.set(state, learning_rate=x)`` does too); at the next
  ``update`` the controller adopts them (its ``z`` moves there, projected
  on Ω) and the laws continue from the new value. Works inside ``jit``;
  every AE part of the state that adapts a name gets it.

  Example::

    state = ae.set_coefficients(state, learning_rate=1e-4)

  Raises:
    ValueError: if a name is not a hyperparameter of any AE part's base
      optimizer (the noise σ, adapted outside the base, cannot be set).
  """
  unboxed = controller_lib._unboxed(state)  # pylint: disable=protected-access
  known = set()
  for _, node in controller_lib._find_all(unboxed, AdaptState):  # pylint: disable=protected-access
    for s in _inject_states(node.inner_state):
      known |= set(s.hyperparams)
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"set_coefficients: {unknown} are not hyperparameters of "
                     f"an AE optimizer in this state (it has {sorted(known)})")

  def write(node):
    if not isinstance(node, AdaptState):
      return node
    return node._replace(inner_state=write_hyperparams(node.inner_state,
                                                       values))

  return jax.tree.map(write, state, is_leaf=lambda x: isinstance(x, AdaptState))


def _grad_factor(clip, filters, shrink):
  """The scalar the base's gradient is multiplied by: the clip factor (when
  clipping is on) times ``shrink`` (when given); None for neither."""
  if filters.grad_clip is None:
    return shrink
  return clip if shrink is None else clip * shrink


def sanitize(grads, inf_value=0.0, bound=None):
  """NaN → 0, ±inf → ±inf_value, and (with a ``bound``) every finite entry
  beyond ``±bound`` clipped to it, elementwise (fuses into the update).

  With ``inf_value=0`` an entry beyond the bound becomes 0 as an infinite
  one does: it carries no usable size. :func:`_base_gradient` applies the
  same test (to the gradient after the step's scale) in the sampled leaves
  it cannot check whole; the test is a square, a compare and a select per
  entry, where the general form costs seven (measured: 1.15 → 0.80 ms per
  step of ``ae_adamw`` at 1M parameters). A non-zero ``inf_value`` is the
  reference's.
  """
  if float(inf_value) == 0.0:
    def clean(g):
      if not jnp.issubdtype(g.dtype, jnp.floating):
        return g
      return jnp.where(_usable(g, bound), g, jnp.zeros((), g.dtype))
  else:
    def clean(g):
      g = jnp.nan_to_num(g, nan=0.0, posinf=inf_value, neginf=-inf_value)
      return g if bound is None else measurement.clamp(g, bound)

  return jax.tree.map(clean, grads)


def _usable(g, bound):
  """Where the entries of ``g`` are finite and within ``±bound``."""
  top = float(jnp.finfo(g.dtype).max)
  if bound is None or bound >= top:
    # A bound the dtype cannot hold (float16 under a float32 bound) would
    # read as inf and let ±inf through.
    return jnp.isfinite(g)
  if bound * bound <= top:
    # g² ≤ bound² is the same test as |g| ≤ bound (NaN and ±inf fail it,
    # and so does an entry whose square overflows); XLA:CPU compiles it
    # faster in each leaf's fusions than a select keyed on abs(g) (ae_adamw
    # at 50 leaves: ~0.6 s of ~6.5; RESULTS.md).
    return g * g <= jnp.asarray(bound * bound, g.dtype)
  return jnp.abs(g) <= bound


def _overflow_bound(grads, dtype) -> float:
  """The entry bound under which neither the statistics (in ``dtype``) nor
  the base's squares (in the gradient's dtype) overflow."""
  leaves = jax.tree.leaves(grads)
  bound = measurement.overflow_bound(sum(x.size for x in leaves), dtype)
  for x in leaves:
    # A base squares each entry (Adam's ν) in the gradient's own dtype.
    # Below 32 bits that overflows at moderate values already (float16 at
    # 256), which is Optax's behaviour too, and is left alone.
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits >= 32:
      bound = min(bound, measurement.overflow_bound(1, x.dtype))
  return bound


def reseed(state, key):
  """Replaces the PRNG key of every :class:`AdaptState` in ``state``.

  ``tx.init`` seeds from the static ``seed``, so the members of a vmapped
  population would all draw the same noise ξ_t and sample positions; give
  each its own key::

    keys = jax.random.split(jax.random.PRNGKey(0), members)
    states = jax.vmap(lambda p, k: ae.reseed(tx.init(p), k))(params, keys)
  """
  return jax.tree.map(
      lambda s: s._replace(key=key) if isinstance(s, AdaptState) else s,
      state, is_leaf=lambda s: isinstance(s, AdaptState))


def adapt(inner: optax.GradientTransformation,
          coefficients: Sequence[Coefficient | str],
          laws: optax.GradientTransformation, *,
          filters: measurement.FilterConfig = measurement.FilterConfig(),
          brake: controller_lib.Brake | None = None,
          step_size: str = "learning_rate",
          noise: str | None = "sigma",
          momentum: str | None = "auto",
          delayed: bool = False,
          seed: int = 0,
          stats_sample: int | None = None,
          energy_weight=0.05,
          smooth=False,
          step_scale=None,
          travel_cap: float | None = None,
          travel_radius: float = 1e-3,
          horizon: float | None = None) -> optax.GradientTransformationExtraArgs:
  """Drives the hyperparameters of ``inner`` with the AE laws every step.

  Example::

    inner = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    tx = ae.adapt(inner, [ae.Coefficient('learning_rate', lower=1e-6,
                                         upper=1e-1)],
                  laws=ae.canonical_laws(['learning_rate']))
    updates, state = tx.update(grads, state, params, value=loss)

  Args:
    inner: the base optimizer, built with ``optax.inject_hyperparams``.
    coefficients: :class:`Coefficient` specs (or names, for default specs)
      of the adapted hyperparameters. An ``init`` of ``None`` takes the
      inner optimizer's value. The coefficient named ``noise`` need not be
      a hyperparameter of ``inner``: it is the σ of the parameter noise.
    laws: the law chain over the coefficients (see :mod:`ae_jax.laws`).
    filters: the AE-1 filter configuration.
    brake: the emergency brake (default: α / 10 on a non-finite or extreme
      loss or gradient).
    step_size: the coefficient playing α in γ = α‖g‖.
    noise: the coefficient giving σ of ξ_t ~ σ N(0, I), or None.
    momentum: the field of the inner state that ρ is measured against
      (``"auto"`` searches ``mu``, ``trace``, ``ema``); ``None``, or none
      found, measures ρ against the previous gradient, kept in the state.
    delayed: steer step t+1 with step t's statistics (see the module doc);
      ``False`` (default) applies them at step t, as the reference does.
    seed: seed of the PRNG key (noise ξ_t and sampled statistics).
    stats_sample: estimate the gradient statistics from about this many
      sampled elements (see
      :func:`ae_jax.measurement.sampled_gradient_stats`) on a model with
      more parameters than this and than
      ``measurement.EXACT_STATS_UP_TO`` (65,536); smaller models, and
      ``None``, get exact statistics.
    energy_weight: weight of the leak term in the Lyapunov energy.
    smooth: AE-9 smooth brake, projection and travel cap (see
      :func:`ae_jax.controller`); the laws take their own ``smooth``.
    step_scale: a factor on the base's update, before the noise ξ_t: a
      number or array (may be traced), or a schedule ``count -> factor``
      (an Optax schedule, called with the number of updates done). The
      presets use it for traced and scheduled learning rates: the laws
      evolve α around a fixed α₀ and the factor carries the user's rate
      (see :func:`ae_jax.ae_adamw`). ``γ`` in the signals includes it.
    travel_cap: C, or ``None`` (no cap). α is lowered where needed so that
      no step is longer than C times the road travelled so far plus r₀:
      :math:`\\alpha_t s_t \\|m_t\\| \\le C\\,(\\sum_{k<t}\\|\\Delta\\theta_k\\|
      + r_0)`, ``s_t`` the ``step_scale``. The first step is then at most
      C r₀ long, and the length can at most grow (1 + C)-fold per step
      (the idea of DoG's r_ε and distance travelled: Ivgi et al. 2023). For
      a base whose momentum is an EMA of the gradient (``ae.ema_sgd``):
      its new length follows exactly from the step's statistics, so the
      cap costs no pass over the parameters. Applied to the rate the base
      uses, never below Ω's floor; the controller's α is lowered to it too.
    travel_radius: r₀ relative to the parameters' initial scale:
      ``travel_radius * (1 + ‖θ₀‖)``.
    horizon: γ in (0, 1), or ``None`` (off): keep the recent displacement
      :math:`D_t = \\gamma D_{t-1} + \\Delta\\theta_t` (one more
      parameter-shaped buffer) and report
      :math:`\\rho^H_t = \\cos\\angle(g_t, -D_{t-1})` as
      ``signals.rho_horizon``, which :func:`ae_jax.laws.hypergradient` reads
      with ``horizon=True`` while the loss falls. The statistics' one
      reduction gains two rows (sampled: on the same blocks).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    the loss as ``value=`` and accepts a ``reward=``.

  Raises:
    ValueError: if ``inner`` was not built with ``inject_hyperparams``, a
      coefficient is not among its hyperparameters, or any configuration
      field is invalid (the message names it).
  """
  hyperparams, scheduled = _hyperparams_of(inner)
  specs = _resolve_specs(coefficients, hyperparams, scheduled, noise)
  names = tuple(c.name for c in specs)
  _check_config(names, hyperparams, step_size, noise, stats_sample)
  ctrl = controller_lib.controller(
      specs, laws, filters=filters, brake=brake, step_size=step_size,
      energy_weight=energy_weight, smooth=smooth)
  probe = _probe(inner)
  momentum_field = _find_momentum_field(probe, momentum)
  second_field = _find_second_moment_field(probe, momentum_field)
  _check_travel(travel_cap, travel_radius, names, hyperparams, step_size,
                momentum_field, second_field)
  if (horizon is not None and not isinstance(horizon, jax.core.Tracer)
      and not 0.0 < float(horizon) < 1.0):
    raise ValueError(f"adapt: horizon must be a decay in (0, 1) or None, "
                     f"got {horizon!r}")
  wiring = _Wiring(
      inner=inner, ctrl=ctrl, names=names, filters=filters,
      step_size=step_size, noise=_drawn_noise(specs, noise),
      momentum_field=momentum_field,
      second_field=second_field,
      inf_value=(brake or controller_lib.Brake()).inf_value,
      stats_sample=None if stats_sample is None else int(stats_sample),
      delayed=delayed, seed=seed, step_scale=step_scale,
      travel_cap=travel_cap, travel_radius=travel_radius,
      temperature=laws_lib.temperature(smooth), horizon=horizon)
  return optax.GradientTransformationExtraArgs(_init_fn(wiring),
                                               _update_fn(wiring))


class _Wiring(NamedTuple):
  """What :func:`adapt` resolved at construction, shared by init and
  update."""

  inner: optax.GradientTransformation
  ctrl: controller_lib.Controller
  names: tuple[str, ...]
  filters: measurement.FilterConfig
  step_size: str | None
  noise: str | None          # None also when σ is pinned (draws nothing)
  momentum_field: str | None
  second_field: str | None
  inf_value: float
  stats_sample: int | None
  delayed: bool
  seed: int
  step_scale: Any
  travel_cap: Any             # None, a number, or traced (inject_hyperparams)
  travel_radius: Any
  temperature: Any            # AE-9: None for the hard cap
  horizon: float | None       # γ of the displacement, or None

  def plan(self, tree):
    """The sampled statistics' blocks per leaf, or None (exact)."""
    return (None if self.stats_sample is None
            else measurement.sample_plan(
                tree, self.stats_sample,
                exact_up_to=measurement.EXACT_STATS_UP_TO))


def _hyperparams_of(inner) -> tuple[dict, set]:
  """``(name -> value, scheduled names)`` of ``inner``'s injected
  hyperparameters; a ValueError if it has none or a name twice."""
  injected = _inject_states(_probe(inner))
  if not injected:
    raise ValueError(
        "adapt: the inner optimizer must be built with "
        "optax.inject_hyperparams(...) so its hyperparameters can be "
        "written each step; e.g. optax.inject_hyperparams(optax.adam)"
        "(learning_rate=1e-3)")
  hyperparams, scheduled = {}, set()
  for s in injected:
    scheduled |= set(getattr(s, "hyperparams_states", {}))
    for name, value in s.hyperparams.items():
      if name in hyperparams:
        raise ValueError(f"adapt: hyperparameter {name!r} appears in more "
                         f"than one inject_hyperparams state")
      hyperparams[name] = value
  return hyperparams, scheduled


def _resolve_specs(coefficients, hyperparams, scheduled, noise) -> list:
  """Each coefficient's spec, its ``init`` defaulting to the inner
  optimizer's value (σ's to 0)."""
  specs = []
  for c in as_specs(coefficients):
    c = c if isinstance(c, Coefficient) else Coefficient(c)
    if c.name in scheduled:
      raise ValueError(
          f"adapt: hyperparameter {c.name!r} is a schedule; inject_hyperparams "
          f"recomputes it every step, overwriting what AE writes. Pass a "
          f"number for it")
    if c.name in hyperparams:
      default = hyperparams[c.name]
      if not isinstance(default, jax.core.Tracer):
        default = float(default)
      specs.append(c.resolve(default))
    elif c.name == noise:
      specs.append(c.resolve(0.0 if c.init is None else None))
    else:
      raise ValueError(
          f"adapt: coefficient {c.name!r} is not a hyperparameter of the "
          f"inner optimizer (it has {sorted(hyperparams)})")
  return specs


def _check_config(names, hyperparams, step_size, noise, stats_sample):
  if step_size is not None and step_size not in names and (
      step_size not in hyperparams):
    raise ValueError(
        f"adapt: step_size={step_size!r} is neither an adapted coefficient "
        f"({list(names)}) nor a hyperparameter of the inner optimizer "
        f"({sorted(hyperparams)}); pass one of them or None")
  if noise is not None and not isinstance(noise, str):
    raise TypeError(f"adapt: noise must be a coefficient name or None, got "
                    f"{noise!r}")
  if stats_sample is not None and not int(stats_sample) >= 1:
    raise ValueError(f"adapt: stats_sample must be a positive element "
                     f"count or None, got {stats_sample}")


def _check_travel(cap, radius, names, hyperparams, step_size, momentum_field,
                  second_field):
  if cap is None:
    return
  # A traced value (inject_hyperparams traces the presets' numbers) is
  # checked by whoever chose it.
  for name, value in (("travel_cap", cap), ("travel_radius", radius)):
    if isinstance(value, jax.core.Tracer):
      continue
    if not (math.isfinite(float(value)) and float(value) > 0):
      raise ValueError(f"adapt: {name} must be a positive number"
                       f"{' or None' if name == 'travel_cap' else ''}, got "
                       f"{value!r}")
  if step_size not in names:
    raise ValueError(f"adapt: travel_cap lowers the adapted step size, but "
                     f"step_size={step_size!r} is not among the adapted "
                     f"coefficients {list(names)}")
  if momentum_field != "ema" or second_field is not None or (
      "momentum" not in hyperparams):
    raise ValueError(
        "adapt: travel_cap needs a base whose momentum is an EMA of the "
        "gradient with a 'momentum' hyperparameter (ae.ema_sgd), from which "
        f"the step's length follows; this base's momentum field is "
        f"{momentum_field!r}" + (f" with a second moment {second_field!r}"
                                 if second_field else ""))


def _drawn_noise(specs, noise) -> str | None:
  """The σ coefficient's name if it can be non-zero: a σ held at a single
  value (σ = 0 by default) draws no noise at all."""
  spec = next((c for c in specs if c.name == noise), None)
  if spec is None or spec.lower == spec.upper == 0.0:
    return None
  return noise


def _init_fn(w: _Wiring):
  def init_fn(params):
    cstate = w.ctrl.init()
    inner_state = w.inner.init(params)
    for s in _inject_states(inner_state):
      for name in w.names:
        held = jnp.asarray(s.hyperparams.get(name, 0.0)).dtype
        if jnp.issubdtype(held, jnp.floating) and jnp.finfo(held).bits < 32:
          raise ValueError(
              f"adapt: the inner optimizer holds {name!r} in {held} "
              f"(inject_hyperparams uses the parameters' dtype), too coarse "
              f"to adapt (b2 = 0.999 rounds to 1 in bfloat16). Build it with "
              f"ae.injected(...) or inject_hyperparams(..., "
              f"hyperparam_dtype=jnp.float32)")
    inner_state = write_hyperparams(inner_state, cstate.values)
    key = jax.random.PRNGKey(w.seed)
    plan = w.plan(params)
    if plan is not None:
      starts = measurement.draw_starts(jax.random.fold_in(key, 1), params,
                                       plan)
      zeros = jax.tree.map(jnp.zeros_like, params)
      phase_ref = measurement.PhaseSample(starts, measurement.take_blocks(
          zeros, measurement.leaf_starts(starts, plan)))
    elif w.momentum_field:
      phase_ref = ()
    else:
      phase_ref = jax.tree.map(jnp.zeros_like, params)
    travel = ()
    if w.travel_cap is not None:
      dtype = cstate.energy.dtype
      scale = optax.tree.norm(params).astype(dtype)
      travel = Travel(path=jnp.zeros([], dtype),
                      radius=w.travel_radius * (1.0 + scale))
    displacement = (() if w.horizon is None
                    else jax.tree.map(jnp.zeros_like, params))
    return AdaptState(inner_state=inner_state, controller=cstate,
                      phase_ref=phase_ref, key=key, travel=travel,
                      displacement=displacement)

  return init_fn


def _add_noise(updates, sigma, key):
  def noisy(u):
    xi = optax.tree.random_like(key, u)
    return jax.tree.map(lambda a, b: a + (sigma * b).astype(a.dtype), u, xi)

  return jax.lax.cond(sigma > 0, noisy, lambda u: u, updates)


# Sampled leaves up to this many entries are checked whole for unusable
# entries, in one reduction over their concatenation, rather than entry by
# entry in the base's fusions: small leaves (biases, norms) are most of a
# large pytree's leaves and little of its entries (RESULTS.md, "Compile
# time": 200 leaves of 112-3,296 entries).
CHECK_WHOLE_UP_TO = 4 * measurement.SAMPLE_BLOCK


def _read_whole(leaves, plan) -> list[bool]:
  """Per leaf, whether this step checks every entry: the statistics read it
  whole (exact, or a leaf the sample keeps whole), or it is a sampled float
  leaf of up to ``CHECK_WHOLE_UP_TO`` entries (:func:`_statistics`)."""
  if plan is None:
    return [True] * len(leaves)
  return [b == 0 or (jnp.issubdtype(g.dtype, jnp.floating)
                     and g.size <= CHECK_WHOLE_UP_TO)
          for g, b in zip(leaves, plan)]


def _statistics(w: _Wiring, raw, state: AdaptState, plan, dtype, bound):
  """The step's :class:`ae_jax.measurement.GradStats` of the raw gradient
  against the phase reference. Its ``nonfinite`` count (for the brake and
  :func:`_base_gradient`) and ``peak`` cover every entry
  :func:`_read_whole` lists."""
  horizon = None if w.horizon is None else state.displacement
  if plan is not None:
    stats = measurement.sampled_gradient_stats(
        raw, state.phase_ref, plan, dtype=dtype, inf_value=w.inf_value,
        horizon=horizon, bound=bound)
    leaves = jax.tree.leaves(raw)
    small = [g for g, b, whole in zip(leaves, plan, _read_whole(leaves, plan))
             if b and whole]
    if not small:
      return stats
    count, peak = measurement.unusable_entries(small, dtype)
    return stats._replace(nonfinite=stats.nonfinite + count,
                          peak=jnp.maximum(stats.peak, peak))
  if not w.momentum_field:
    return measurement.gradient_stats(raw, state.phase_ref, dtype,
                                      inf_value=w.inf_value, horizon=horizon,
                                      bound=bound)
  # Adam's direction m / (sqrt(nu) + eps) is formed inside the statistics,
  # after the leaves are concatenated (no kernel per leaf).
  mu, nu, eps = _direction_moments(state.inner_state, w.momentum_field,
                                   w.second_field, raw)
  return measurement.gradient_stats(raw, mu, dtype, inf_value=w.inf_value,
                                    horizon=horizon, second_moment=nu,
                                    eps=eps, bound=bound)


def _entry_guard(w: _Wiring, stats, bound):
  """``(skip, shrink)``, two scalars that make the raw gradient usable by the
  base (:func:`_base_gradient`); ``(None, None)`` with a non-zero
  ``inf_value`` (the reference's), which cleans entry by entry.

  With ``inf_value=0`` (every preset's), a step whose statistics count a
  non-finite entry is skipped (the base gets a zero gradient), as Optax's
  ``apply_if_finite`` skips one; the brake fires on the same count (with
  ``Brake.nonfinite_grad``, the default). A
  finite gradient whose largest entry is beyond ``bound`` is scaled down by
  ``shrink`` so that entry sits at the bound, keeping its direction (the
  clip then sizes the step). One decision per step: a compare and select per
  entry in each of the base's per-leaf fusions was about a third of the
  step's compile time (RESULTS.md, "Compile time").
  """
  if float(w.inf_value) != 0.0:
    return None, None
  # peak > bound > 0: the division is safe where it is taken. The where()
  # keeps the scale exactly 1 within the bound: XLA may compile the
  # division alone as a product with a reciprocal (ad5d9a7, reverted).
  shrink = jnp.where(stats.peak > bound,
                     bound / jnp.maximum(stats.peak, bound), 1.0)
  return stats.nonfinite > 0, shrink


def _base_gradient(w: _Wiring, raw, skip, shrink, plan, bound):
  """``raw`` with no unusable entry, before ``shrink`` (which the caller
  folds into the clip's product): zeros when ``skip``; entries the
  statistics cannot see (large sampled leaves) are also cleaned one by one
  (:func:`sanitize`), as ``shrink`` cannot have seen them."""
  if skip is None:
    return sanitize(raw, w.inf_value, bound)
  leaves, treedef = jax.tree.flatten(raw)
  out = []
  for g, whole in zip(leaves, _read_whole(leaves, plan)):
    if jnp.issubdtype(g.dtype, jnp.floating):
      g = jnp.where(skip, jnp.zeros((), g.dtype), g)
      if not whole:
        g = jnp.where(_usable(g * shrink.astype(g.dtype), bound), g,
                      jnp.zeros((), g.dtype))
    out.append(g)
  return jax.tree.unflatten(treedef, out)


def _next_phase_ref(w: _Wiring, inner_state, grads, plan, key):
  """What the next step's ρ reads: blocks of this step's momentum (or
  gradient), from the new state; the whole gradient without a momentum;
  nothing when the momentum itself is read then."""
  if plan is None:
    return () if w.momentum_field else grads
  starts = measurement.draw_starts(key, grads, plan)
  per_leaf = measurement.leaf_starts(starts, plan)
  take = lambda tree: measurement.take_blocks(tree, per_leaf)
  if not w.momentum_field:
    return measurement.PhaseSample(starts, take(grads))
  # The blocks are taken from the moments before Adam's division, so that
  # only the sampled entries of m / (sqrt(nu) + eps) are computed.
  return measurement.PhaseSample(starts, _phase_reference(
      inner_state, w.momentum_field, w.second_field, grads, take=take))


def _next_displacement(w: _Wiring, displacement, updates):
  """D_t = γ D_{t-1} + Δθ_t with a ``horizon`` γ (``()`` without one)."""
  if w.horizon is None:
    return displacement
  return jax.tree.map(lambda d, u: w.horizon * d + u.astype(d.dtype),
                      displacement, updates)


def _capped_rate(w: _Wiring, applied, inner_state, stats, clip, factor,
                 travel: Travel):
  """The rate the base applies this step under the travel cap (no higher
  than ``applied``'s, no lower than Ω's floor; smooth with a temperature,
  AE-9), whether the cap bound, and the new :class:`Travel`.

  For the EMA momentum m_t = β m_{t-1} + (1 - β) c g_t (c the clip factor)
  the step's length α s ‖m_t‖ follows from the statistics already reduced:
  ‖m_t‖² = β² ‖m_{t-1}‖² + 2 β (1 - β) c g·m_{t-1} + ((1 - β) c)² ‖g‖²."""
  alpha = applied[w.step_size]
  dtype = stats.sumsq.dtype
  beta = jnp.asarray(applied["momentum"] if "momentum" in applied
                     else _hyperparam(inner_state, "momentum", 0.0), dtype)
  new = (1.0 - beta) * clip
  square = (beta * beta * stats.ref_sumsq + 2.0 * beta * new * stats.dot
            + new * new * stats.sumsq)
  per_rate = jnp.sqrt(jnp.maximum(square, _TINY))
  if factor is not None:
    per_rate = per_rate * jnp.maximum(jnp.abs(factor), _TINY)
  limit = w.travel_cap * (travel.path + travel.radius)
  # A non-finite length is the brake's business, not the cap's.
  finite = jnp.isfinite(per_rate)
  ceiling = limit / jnp.where(finite, per_rate, 1.0)
  # Never below Ω's floor: Ω is the range the user declared.
  spec = _step_spec(w)
  if spec.lower > 0:
    ceiling = jnp.exp(laws_lib.soft_max(jnp.log(ceiling),
                                        math.log(spec.lower), w.temperature))
  over = finite & (alpha > ceiling)
  if w.temperature is None:
    alpha = jnp.where(over, ceiling, alpha)
  else:   # AE-9: a soft min in log α
    alpha = jnp.where(finite, jnp.exp(laws_lib.soft_min(
        jnp.log(jnp.maximum(alpha, _TINY)), jnp.log(ceiling),
        w.temperature)), alpha)
  length = jnp.where(finite, alpha * per_rate, 0.0)
  return alpha, over, Travel(path=travel.path + length,
                             radius=travel.radius)


def _step_spec(w: _Wiring) -> Coefficient:
  return next(c for c in w.ctrl.specs if c.name == w.step_size)


def _lower_rate(w: _Wiring, cstate, ceiling):
  """The controller's α no higher than ``ceiling`` (its z re-encoded)."""
  spec = _step_spec(w)
  alpha = jnp.minimum(cstate.values[w.step_size], ceiling)
  values = dict(cstate.values)
  z = dict(cstate.z)
  values[w.step_size] = alpha
  z[w.step_size] = spec.to_z(jnp.maximum(alpha, _TINY))
  return cstate._replace(z=type(cstate.z)(z),
                         values=type(cstate.values)(values))


def _check_value(value) -> None:
  """The loss an AE update reads: required, and a scalar."""
  if value is None:
    raise TypeError(
        "this ae_jax optimizer's update requires the loss as the keyword "
        "argument `value`, e.g. tx.update(grads, state, params, value=loss)")
  if jnp.ndim(value) != 0:
    raise TypeError(f"`value` must be the scalar loss, got shape "
                    f"{jnp.shape(value)}")


def _update_fn(w: _Wiring):
  inner_update = optax.with_extra_args_support(w.inner).update

  def update_fn(updates, state: AdaptState, params=None, *, value=None,
                reward=None, **extra_args):
    _check_value(value)
    dtype = state.controller.energy.dtype
    bound = _overflow_bound(updates, dtype)
    state = state._replace(controller=_adopt_overrides(
        state.controller, state.inner_state, w.ctrl.specs))
    plan = w.plan(updates)
    if plan is None and w.noise is None:
      # Nothing draws (exact statistics, no parameter noise): the key is
      # carried unchanged rather than paying a threefry split per step.
      key = stats_key = noise_key = state.key
    else:
      key, stats_key, noise_key = jax.random.split(state.key, 3)
    stats = _statistics(w, updates, state, plan, dtype, bound)
    skip, shrink = _entry_guard(w, stats, bound)
    extra_args = dict(extra_args, value=value)
    if reward is not None:
      extra_args["reward"] = reward

    values, cstate = w.ctrl.step(state.controller, value, stats, reward)
    # Computed once here: without the barrier XLA copies the controller's
    # scalar chain into every per-leaf fusion of the base's update.
    values, cstate = jax.lax.optimization_barrier((values, cstate))
    grad_factor = _grad_factor(cstate.signals.clip, w.filters, shrink)
    grads = _base_gradient(w, updates, skip, shrink, plan, bound)
    scaled = (grads if grad_factor is None else jax.tree.map(
        lambda g: (g * grad_factor.astype(g.dtype)
                   if jnp.issubdtype(g.dtype, jnp.floating) else g), grads))
    factor = None
    if w.step_scale is not None:
      factor = (w.step_scale(state.controller.count)
                if callable(w.step_scale) else w.step_scale)
      factor = jnp.asarray(factor, dtype)
    travel, inner_before = state.travel, state.inner_state
    if w.travel_cap is not None:
      alpha, over, travel = _capped_rate(
          w, state.controller.values if w.delayed else values,
          state.inner_state, stats, cstate.signals.clip, factor, travel)
      # Delayed, the controller's α is next step's: only lowered where the
      # cap bound this step (else it could never rise above the last one).
      cstate = _lower_rate(w, cstate, jnp.where(over, alpha, jnp.inf)
                           if w.delayed else alpha)
      cstate = cstate._replace(signals=cstate.signals._replace(
          gamma=alpha * cstate.signals.gnorm))
      values = dict(cstate.values)
      if w.delayed:
        inner_before = write_hyperparams(inner_before, {w.step_size: alpha})
    if w.delayed:
      # Step t's coefficients steer step t+1; without clipping the update
      # does not depend on the controller step.
      applied = dict(state.controller.values)
      if w.travel_cap is not None:
        applied[w.step_size] = alpha
      updates, inner_state = inner_update(scaled, inner_before, params,
                                          **extra_args)
      alpha = applied[w.step_size] if w.step_size in applied else 1.0
      cstate = cstate._replace(signals=cstate.signals._replace(
          gamma=alpha * cstate.signals.gnorm))
      inner_state = write_hyperparams(inner_state, values)
    else:
      applied = values
      updates, inner_state = inner_update(
          scaled, write_hyperparams(state.inner_state, values), params,
          **extra_args)

    if factor is not None:
      updates = jax.tree.map(lambda u: u * factor.astype(u.dtype), updates)
      cstate = cstate._replace(signals=cstate.signals._replace(
          gamma=factor * cstate.signals.gamma))
    if w.noise is not None:
      updates = _add_noise(updates, applied[w.noise], noise_key)
    phase_ref = _next_phase_ref(w, inner_state, grads, plan, stats_key)
    return updates, AdaptState(
        inner_state=inner_state, controller=cstate, phase_ref=phase_ref,
        key=key, travel=travel,
        displacement=_next_displacement(w, state.displacement, updates))

  return update_fn

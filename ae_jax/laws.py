"""The AE laws AE-2 ... AE-8 and AE-10 as composable Optax transformations.

The coefficient layer is itself an Optax problem. Its ``params`` are the
coefficients in unconstrained coordinates ``z`` (a dict ``name -> scalar``,
see :mod:`ae_jax.coefficient`); its ``updates`` start as zeros, become the
drive field :math:`u_t` (AE-2, AE-4, AE-7), are turned into a log-step
:math:`\\Delta z` by the evolution law (AE-3), and are then corrected by the
gauge (AE-8), the budget (AE-6) and the resonance clamp (AE-5). The
controller adds ``Δz`` to ``z`` and projects onto Ω. Every law receives
the same keyword arguments:

* ``signals``: the :class:`ae_jax.measurement.Signals` of this step (AE-1);
* ``coefficients``: the current coefficient values ``a_t`` (a dict);
* ``geometry``: a :class:`Geometry` with anchors and bounds in ``z``.

So a law set is a plain ``optax.chain``; leaving a law out of the chain is
the knock-out of experiment 18. Order matters and follows the reference:
drive terms first, then :func:`evolve`, then step corrections::

  laws = optax.chain(
      ae.laws.drive({...}),        # AE-2   u  = W φ(s) - Γ (z - z̄)
      ae.laws.noise(),             # AE-4   u_σ += stall/uncertainty/...
      ae.laws.coupling(C, names),  # AE-7   u  += C tanh(ζ - ζ̄)
      ae.laws.evolve({...}),       # AE-3   Δz = η (u - ∇ψ_Ω(z))
      ae.laws.gauge(),             # AE-8   Δz_α += η_γ (γ* - α‖g‖)/γ*
      ae.laws.budget({...}),       # AE-6   Δz /= sqrt(1 + λ), |Δz| ≤ max
      ae.laws.resonance(),         # AE-5   Δz_α -= log(1 + κ) on oscillation
  )

:func:`safety` (AE-10 enforced: α falls while the loss level sits above its
best) is optional and goes before the budget.

All gains may be traced values, so ``jax.grad`` reaches them (AE-9).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax import measurement
from ae_jax.coefficient import check_nonnegative, check_positive

_TINY = 1e-12


class Geometry(NamedTuple):
  """Static facts about the coefficients, in ``z`` coordinates (dicts).

  Attributes:
    anchor: the anchors :math:`\\bar z` of the leak term.
    anchor_value: the anchors :math:`\\bar a` as values.
    lower: lower bounds of ``z`` (``-inf`` where unbounded).
    upper: upper bounds of ``z`` (``+inf`` where unbounded).
    width: width of the barrier ψ_Ω in ``z`` (1% of the interval, at most
      0.5), so it acts only next to a face of Ω.
  """

  anchor: Mapping[str, Any]
  anchor_value: Mapping[str, Any]
  lower: Mapping[str, Any]
  upper: Mapping[str, Any]
  width: Mapping[str, Any]


def _check_names(law: str, names, params) -> None:
  missing = sorted(set(names) - set(params))
  if missing:
    raise ValueError(
        f"ae_jax.laws.{law}: no coefficient named {missing}; the controller "
        f"adapts {sorted(params)}")


def _add(updates: dict, name: str, term) -> dict:
  updates = dict(updates)
  updates[name] = updates[name] + jnp.asarray(term, updates[name].dtype)
  return updates


def _stateless(law: str, names, update_fn) -> optax.GradientTransformationExtraArgs:
  """A law without state; ``init`` checks the coefficient names it uses."""

  def init_fn(params):
    _check_names(law, names, params)
    return optax.EmptyState()

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# -- AE-9: smooth surrogates of the hard gates -------------------------------

# Temperature used by ``smooth=True``. Each gate reads its argument in its
# own natural unit (a relative margin, a log ratio, a fraction of a bound), so
# one number fits all of them; docs/laws.md lists each surrogate.
DEFAULT_TEMPERATURE = 0.1


def temperature(smooth) -> Any:
  """The gate temperature selected by a ``smooth`` argument.

  ``False``/``None``/``0`` select the hard gates (``None`` is returned),
  ``True`` selects :data:`DEFAULT_TEMPERATURE`, a positive number is used as
  is (it may be traced).
  """
  if smooth is None or smooth is False:
    return None
  if smooth is True:
    return DEFAULT_TEMPERATURE
  if isinstance(smooth, jax.core.Tracer):
    return smooth
  if not float(smooth) >= 0:
    raise ValueError(f"smooth must be a bool or a temperature >= 0, got "
                     f"{smooth!r}")
  return None if float(smooth) == 0 else float(smooth)


def gate(margin, temp):
  """``1{margin > 0}``, or ``sigmoid(margin / temp)`` when ``temp`` is set."""
  margin = jnp.asarray(margin)
  if temp is None:
    return (margin > 0).astype(margin.dtype)
  return jax.nn.sigmoid(margin / temp)


def either(a, b):
  """Soft OR of two gates in [0, 1] (exactly ``a | b`` for 0/1 gates)."""
  return 1.0 - (1.0 - a) * (1.0 - b)


def soft_max(x, lower, temp):
  """``max(x, lower)``; ``lower + temp·softplus((x - lower)/temp)`` when smooth.

  The surrogate is above ``max`` by at most ``temp·log 2`` (at ``x = lower``).
  """
  if temp is None:
    return jnp.maximum(x, lower)
  return lower + temp * jax.nn.softplus((x - lower) / temp)


def soft_min(x, upper, temp):
  """``min(x, upper)``, smooth like :func:`soft_max`."""
  if temp is None:
    return jnp.minimum(x, upper)
  return upper - temp * jax.nn.softplus((upper - x) / temp)


def soft_clip(x, lower, upper, temp):
  """``clip(x, lower, upper)`` with infinite bounds skipped; smooth when
  ``temp`` is set (exact clip as ``temp → 0``)."""
  if temp is None:
    return jnp.clip(x, lower, upper)
  if math.isfinite(lower):
    x = soft_max(x, lower, temp)
  if math.isfinite(upper):
    x = soft_min(x, upper, temp)
  return x


# -- AE-2: drive --------------------------------------------------------------


class DriveGains(NamedTuple):
  """Gains of one coefficient's row of the drive field (AE-2).

  .. math::

    u = W_p \\tanh(-\\hat T/\\tau_p) - W_v\\,\\phi_V + W_r \\tanh(\\hat R/\\tau_r)
        + W_c(\\rho - \\rho^\\star) + W_{c'} \\tanh(\\rho - \\rho^\\star)
        - \\Gamma (z - \\bar z)

  A positive gain pushes the coefficient in the theory's direction (up with
  progress, down with variance, ...); a negative gain reverses it, e.g. β2
  *rises* with variance. Fields may be traced.
  """

  progress: Any = 0.0     # W_p
  variance: Any = 0.0     # W_v
  reward: Any = 0.0       # W_r
  phase: Any = 0.0        # W_c (AE-2) and W_m (AE-5), linear in ρ
  phase_tanh: Any = 0.0   # the canonical AE-SGDm momentum row, tanh(ρ - ρ*)
  leak: Any = 0.0         # Γ


# The theory's drive rows, by coefficient name. Not in the presets' chain by
# default: measured, they moved β1, β2 and the momentum open-loop and cost
# final loss (docs/laws.md, AE-2); ``canonical_laws(..., drive=True)`` or a
# ``LawGains`` (meta-learning) brings them back.
CANONICAL_DRIVE = {
    "learning_rate": DriveGains(progress=1.0, variance=1.0, phase=0.5,
                                leak=0.01),
    "momentum": DriveGains(phase_tanh=0.8, variance=0.6, leak=0.05),
    "b1": DriveGains(phase_tanh=0.5, variance=0.3, leak=0.05),
    "b2": DriveGains(variance=-0.5, leak=0.05),
    "eps": DriveGains(variance=-0.5, phase=-0.5, leak=0.05),
    "weight_decay": DriveGains(leak=0.05),
}
# The drive temperatures τ_p, τ_v, τ_r (the defaults of :func:`drive`).
CANONICAL_TEMPERATURES = {"tau_p": 1.0, "tau_v": 1.0, "tau_r": 1.0}


def drive_features(signals: measurement.Signals, *, rho_star=0.3,
                   tau_p=1.0, tau_v=1.0, tau_r=1.0, normalize: bool = True,
                   center: bool = True) -> dict[str, jax.Array]:
  """The bounded features φ(s) that the drive gains multiply.

  Args:
    signals: this step's signals.
    rho_star: the phase target ρ*.
    tau_p: progress temperature.
    tau_v: variance temperature.
    tau_r: reward temperature.
    normalize: divide ``T`` and ``R`` by their running absolute scale, making
      progress and reward scale-free in [-1, 1] (the reference does not).
    center: use ``softplus((V/V* - 1)/τ_v) - log 2``, which is 0 when the
      variance sits at its reference; the reference's ``softplus(V/V*/τ_v)``
      is a constant downward pull of about -1.3 W_v at steady state.
  """
  trend, reward = signals.T, signals.R
  if normalize:
    trend = trend / (signals.T_scale + _TINY)
    reward = reward / (signals.R_scale + _TINY)
  ratio = signals.V / signals.V_star
  if center:
    variance = jax.nn.softplus((ratio - 1.0) / tau_v) - math.log(2.0)
  else:
    variance = jax.nn.softplus(ratio / tau_v)
  phase = signals.rho - rho_star
  return dict(progress=jnp.tanh(-trend / tau_p), variance=variance,
              reward=jnp.tanh(reward / tau_r), phase=phase,
              phase_tanh=jnp.tanh(phase))


def drive(gains: Mapping[str, DriveGains], *, rho_star=0.3,
          tau_p=CANONICAL_TEMPERATURES["tau_p"],
          tau_v=CANONICAL_TEMPERATURES["tau_v"],
          tau_r=CANONICAL_TEMPERATURES["tau_r"], normalize: bool = True,
          center: bool = True) -> optax.GradientTransformationExtraArgs:
  """AE-2, the constitutive drive: adds :math:`u_t` to the updates.

  .. math::

    u_t = W_p\\tanh(-\\hat T_t/\\tau_p) - W_v\\,\\phi_V
          + W_r\\tanh(\\hat R_t/\\tau_r) + W_c(\\rho_t-\\rho^\\star)
          + W_{c'}\\tanh(\\rho_t-\\rho^\\star) - \\Gamma(z_t-\\bar z)

  with, by default, the normalised trend :math:`\\hat T = T / \\mathrm{LP}|\\Delta
  \\ell|` and the centred variance term :math:`\\phi_V =
  \\mathrm{softplus}((V/V^\\star - 1)/\\tau_v) - \\log 2`; ``normalize=False,
  center=False`` give the theory's literal :math:`\\tanh(-T/\\tau_p)` and
  :math:`\\mathrm{softplus}(V/(\\tau_v V^\\star))` (see :func:`drive_features`).
  The barrier term :math:`-\\nabla\\psi_\\Omega` is applied by :func:`evolve`.

  Args:
    gains: ``name -> DriveGains``; coefficients not listed get no drive.
    rho_star: the phase target ρ*.
    tau_p: progress temperature.
    tau_v: variance temperature.
    tau_r: reward temperature.
    normalize: see :func:`drive_features`.
    center: see :func:`drive_features`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` over the coefficients.

  Examples:
    >>> import ae_jax as ae
    >>> laws = ae.laws.drive(
    ...     {"learning_rate": ae.laws.DriveGains(progress=1.0, variance=1.0)})
    >>> rows = ae.laws.CANONICAL_DRIVE   # the theory's rows, by name

  References:
    Kivinen and Warmuth, `Exponentiated Gradient versus Gradient Descent for
    Linear Predictors <https://doi.org/10.1006/inco.1996.2612>`_,
    Information and Computation 132(1), 1997 (the multiplicative update the
    drive feeds through :func:`evolve`).
  """
  gains = dict(gains)
  for name, row in gains.items():
    if not isinstance(row, DriveGains):
      raise ValueError(f"ae_jax.laws.drive: gains[{name!r}] must be a "
                       f"DriveGains, got {type(row).__name__}")

  def update_fn(updates, state, params=None, *, signals, geometry,
                **extra_args):
    del extra_args
    phi = drive_features(signals, rho_star=rho_star, tau_p=tau_p,
                         tau_v=tau_v, tau_r=tau_r, normalize=normalize,
                         center=center)
    for name, w in gains.items():
      u = (w.progress * phi["progress"] - w.variance * phi["variance"]
           + w.reward * phi["reward"] + w.phase * phi["phase"]
           + w.phase_tanh * phi["phase_tanh"]
           - w.leak * (params[name] - geometry.anchor[name]))
      updates = _add(updates, name, u)
    return updates, state

  return _stateless("drive", gains, update_fn)


# -- AE-4: noise law ----------------------------------------------------------

# κ_s, κ_u, κ_v, κ_a: the canonical gains of the noise law (its defaults).
CANONICAL_NOISE = {"stall": 0.5, "uncertainty": 0.4, "instability": 0.4,
                   "quality": 0.2}


def noise(coefficient: str = "sigma", *, stall=CANONICAL_NOISE["stall"],
          uncertainty=CANONICAL_NOISE["uncertainty"],
          instability=CANONICAL_NOISE["instability"],
          quality=CANONICAL_NOISE["quality"], stall_threshold=0.25,
          quality_target=0.5, smooth=False,
          ) -> optax.GradientTransformationExtraArgs:
  """AE-4, the noise law: the drive of the exploration temperature σ.

  .. math::

    u_\\sigma = \\kappa_s \\mathbf{1}\\{|T_t| < \\epsilon_T\\}
      + \\kappa_u \\frac{S_t}{S^\\star} - \\kappa_v \\frac{V_t}{V^\\star}
      + \\kappa_a (A_t - A^\\star),\\qquad
    \\epsilon_T = \\tau_T \\sqrt{V^\\star},\\ A_t = (\\rho_t + 1)/2.

  With :func:`evolve` this is :math:`\\log\\sigma_{t+1} = \\log\\sigma_t +
  \\eta_\\sigma u_\\sigma`. The parameter noise
  :math:`\\xi_t \\sim \\sigma_t \\mathcal N(0, I)` itself is drawn by
  :func:`ae_jax.adapt` from the PRNG key in its state.

  Args:
    coefficient: name of the σ coefficient (log-parametrised).
    stall: κ_s, push on a relative stall.
    uncertainty: κ_u, push with gradient variance.
    instability: κ_v, pull with loss variance.
    quality: κ_a, push with step quality.
    stall_threshold: τ_T of the stall test.
    quality_target: A*.
    smooth: replace the stall indicator by
      ``sigmoid((1 - |T|/ε_T) / τ)`` (AE-9); ``True`` uses
      :data:`DEFAULT_TEMPERATURE`, a number is the temperature τ.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` over the coefficients.

  Examples:
    >>> import optax, ae_jax as ae
    >>> laws = optax.chain(ae.laws.noise("sigma"),
    ...                    ae.laws.evolve({"sigma": 0.01}))

  References:
    Neelakantan et al., `Adding Gradient Noise Improves Learning for Very
    Deep Networks <https://arxiv.org/abs/1511.06807>`_, 2015;
    Welling and Teh, Bayesian Learning via Stochastic Gradient Langevin
    Dynamics, ICML 2011.
  """
  temp = temperature(smooth)

  def update_fn(updates, state, params=None, *, signals, **extra_args):
    del params, extra_args
    eps_t = stall_threshold * jnp.sqrt(signals.V_star)
    stalled = gate(1.0 - jnp.abs(signals.T) / eps_t, temp)
    step_quality = 0.5 * (signals.rho + 1.0)
    u = (stall * stalled
         + uncertainty * signals.S / signals.S_star
         - instability * signals.V / signals.V_star
         + quality * (step_quality - quality_target))
    return _add(updates, coefficient, u), state

  return _stateless("noise", [coefficient], update_fn)


# -- AE-7: coupling -----------------------------------------------------------

_MOMENTUM_LIKE = ("momentum", "b1", "b2", "beta", "beta1", "beta2", "decay")

# The canonical off-diagonal of C over (α, the momentum-like coefficient): a
# mild negative α ↔ β coupling (the theory's prediction 1). Off in the
# presets by default (``canonical_laws(..., coupling=True)``).
CANONICAL_COUPLING = -0.1


def coupling_feature(name: str, value):
  """ζ of AE-7: ``log(1/(1-a))`` for momentum-like coefficients, else ``log a``."""
  value = jnp.asarray(value)
  if name in _MOMENTUM_LIKE:
    return -jnp.log1p(-jnp.minimum(value, 1.0 - 1e-7))
  return jnp.log(jnp.maximum(value, _TINY))


def coupling(matrix, names: Sequence[str], *, center: bool = True,
             saturate: bool = True) -> optax.GradientTransformationExtraArgs:
  """AE-7, coupling: :math:`u \\mathrel{+}= C\\,\\tanh(\\zeta_t - \\bar\\zeta)`.

  .. math::

    \\zeta_t = [\\log\\alpha_t,\\ \\log\\tfrac{1}{1-\\beta_t},\\
               \\log\\sigma_t,\\ \\log\\lambda_t, \\dots]^\\top

  Args:
    matrix: the ``len(names) x len(names)`` matrix C (may be traced). Row i
      drives ``names[i]``; column j reads ``ζ(names[j])``.
    names: the coefficients C acts on, in order.
    center: subtract ζ at the anchors (the theory's ``Cζ`` uncentred is a
      constant drift that the leak must cancel); ``False`` is the theory's
      literal form.
    saturate: pass ``ζ - ζ̄`` through ``tanh``, so a coefficient pinned far
      from its anchor (α at its floor is -6.9 in log) cannot outvote the
      other coefficient's own drive; ``False`` is linear, as the theory.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` over the coefficients.

  Examples:
    >>> import ae_jax as ae
    >>> c = ae.laws.CANONICAL_COUPLING
    >>> law = ae.laws.coupling([[0.0, c], [c, 0.0]],
    ...                        ["learning_rate", "momentum"])

  References:
    Smith, Kindermans, Ying and Le, `Don't Decay the Learning Rate, Increase
    the Batch Size <https://arxiv.org/abs/1711.00489>`_, ICLR 2018 (the SGD
    noise scale ε/(1 − m) couples the rate and the momentum).
  """
  names = tuple(names)
  matrix = jnp.asarray(matrix)
  if matrix.shape != (len(names), len(names)):
    raise ValueError(f"ae_jax.laws.coupling: matrix must have shape "
                     f"{(len(names), len(names))} for names {names}, got "
                     f"{matrix.shape}")

  def update_fn(updates, state, params=None, *, coefficients, geometry,
                **extra_args):
    del params, extra_args
    zeta = jnp.stack([coupling_feature(n, coefficients[n]) for n in names])
    if center:
      zeta = zeta - jnp.stack([coupling_feature(n, geometry.anchor_value[n])
                               for n in names]).astype(zeta.dtype)
    if saturate:
      zeta = jnp.tanh(zeta)
    drive_terms = matrix.astype(zeta.dtype) @ zeta
    for i, name in enumerate(names):
      updates = _add(updates, name, drive_terms[i])
    return updates, state

  return _stateless("coupling", names, update_fn)


# -- AE-3: evolution ----------------------------------------------------------


def _static_zero(gain) -> bool:
  # A gain known at trace time to be 0 (not a tracer, which meta-learning
  # differentiates through) lets a law leave its term out of the program.
  return isinstance(gain, (int, float)) and gain == 0


def _infinite(bound) -> bool:
  # A bound known at trace time to be ±inf adds exactly 0 to ψ_Ω and its
  # gradient: leaving its side out keeps the traced program small (most
  # coefficients are bounded on one side in z, e.g. a logit's none).
  return isinstance(bound, (int, float)) and math.isinf(bound)


def barrier(z, lower, upper, width=0.5):
  """The smooth barrier ψ_Ω(z): ~0 inside Ω, growing linearly past a bound.

  .. math::

    \\psi_\\Omega(z) = w\\,\\mathrm{softplus}\\big((z - z_{\\max})/w\\big)
      + w\\,\\mathrm{softplus}\\big((z_{\\min} - z)/w\\big)
  """
  total = jnp.zeros_like(z)
  if not _infinite(upper):
    total = total + width * jax.nn.softplus((z - upper) / width)
  if not _infinite(lower):
    total = total + width * jax.nn.softplus((lower - z) / width)
  return total


def barrier_gradient(z, lower, upper, width=0.5):
  """:math:`\\nabla\\psi_\\Omega(z)` of :func:`barrier`, in closed form.

  .. math::

    \\nabla\\psi_\\Omega(z) = \\sigma\\big((z - z_{\\max})/w\\big)
      - \\sigma\\big((z_{\\min} - z)/w\\big)

  (the same as ``jax.grad(barrier)``, at a fraction of its traced size).
  """
  push = jnp.zeros_like(z)
  if not _infinite(upper):
    push = push + jax.nn.sigmoid((z - upper) / width)
  if not _infinite(lower):
    push = push - jax.nn.sigmoid((lower - z) / width)
  return push


def _stacked_sides(zs, lowers, uppers, widths):
  """``(z, w, ((upper side argument, mask), (lower side argument, mask)))``
  for several scalar coefficients stacked into one vector: the arguments
  ``(z - z_max)/w`` and ``(z_min - z)/w`` of ψ_Ω's two sides, an infinite
  bound's side masked off (its bound replaced by 0, so nothing is inf)."""
  z = jnp.stack([jnp.asarray(x) for x in zs])
  w = jnp.stack([jnp.asarray(x, z.dtype) for x in widths])
  sides = []
  for bounds, sign in ((uppers, 1.0), (lowers, -1.0)):
    finite = np.array([not _infinite(b) for b in bounds])
    bound = jnp.stack([jnp.asarray(0.0 if _infinite(b) else b, z.dtype)
                       for b in bounds])
    sides.append((sign * (z - bound) / w, finite))
  return z, w, sides


def _barrier_gradients(zs, lowers, uppers, widths) -> list:
  """:func:`barrier_gradient` of several scalar coefficients, computed as
  one vector: each coefficient's sigmoids were a kernel of their own (XLA
  does not duplicate an expensive scalar into its consumers)."""
  if not zs:
    return []
  z, _, ((up, up_on), (low, low_on)) = _stacked_sides(zs, lowers, uppers,
                                                       widths)
  zero = jnp.zeros_like(z)
  push = (jnp.where(up_on, jax.nn.sigmoid(up), zero)
          - jnp.where(low_on, jax.nn.sigmoid(low), zero))
  return list(push)


def _barriers(zs, lowers, uppers, widths):
  """:func:`barrier` of several scalar coefficients as one vector."""
  z, w, ((up, up_on), (low, low_on)) = _stacked_sides(zs, lowers, uppers,
                                                      widths)
  zero = jnp.zeros_like(z)
  return (jnp.where(up_on, w * jax.nn.softplus(up), zero)
          + jnp.where(low_on, w * jax.nn.softplus(low), zero))


# The canonical meta-steps η of AE-3 (per step, in z units).
CANONICAL_ETA = {
    "learning_rate": 0.01, "momentum": 0.01, "b1": 0.01, "b2": 0.01,
    "eps": 0.01, "weight_decay": 0.01, "sigma": 0.01,
}


def evolve(eta: Mapping[str, Any], *, barrier_gain=1.0,
           barrier_width=None) -> optax.GradientTransformationExtraArgs:
  """AE-3, multiplicative evolution: turns the drive into a step in ``z``.

  .. math::

    a_{t+1} = \\Pi_\\Omega\\big(a_t \\odot \\exp(\\eta_a u_t)\\big)
    \\iff z_{t+1} = \\Pi_\\Omega\\big(z_t + \\eta_a (u_t - \\nabla\\psi_\\Omega(z_t))\\big)

  for log-parametrised coefficients. The projection Π_Ω is applied by the
  controller after the whole chain, so no law can leave Ω.

  Args:
    eta: ``name -> η`` meta-steps; unlisted coefficients do not move.
    barrier_gain: weight of the smooth barrier ψ_Ω (0 disables it).
    barrier_width: width of ψ_Ω in ``z`` units; None uses
      ``geometry.width`` (1% of each coefficient's interval, at most 0.5).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` over the coefficients: its
    updates are the steps Δz.

  Examples:
    >>> import ae_jax as ae
    >>> law = ae.laws.evolve({"learning_rate": 0.01, "momentum": 0.01})
    >>> law = ae.laws.evolve(ae.laws.CANONICAL_ETA)

  References:
    Kivinen and Warmuth, `Exponentiated Gradient versus Gradient Descent for
    Linear Predictors <https://doi.org/10.1006/inco.1996.2612>`_,
    Information and Computation 132(1), 1997.
  """
  eta = dict(eta)
  check_nonnegative("ae_jax.laws.evolve: ", barrier_gain=barrier_gain,
                    **{f"eta[{n!r}]": v for n, v in eta.items()})
  check_positive("ae_jax.laws.evolve: ", barrier_width=barrier_width)

  def update_fn(updates, state, params=None, *, geometry, **extra_args):
    del extra_args
    steps = {name: (eta[name] * u if name in eta else jnp.zeros_like(u))
             for name, u in updates.items()}
    if _static_zero(barrier_gain):
      return steps, state
    pushed = [n for n in updates if n in eta]
    width = lambda n: (geometry.width[n] if barrier_width is None
                       else barrier_width)
    pushes = _barrier_gradients(
        [params[n] for n in pushed], [geometry.lower[n] for n in pushed],
        [geometry.upper[n] for n in pushed], [width(n) for n in pushed])
    for name, push in zip(pushed, pushes):
      steps[name] = eta[name] * (updates[name] - barrier_gain * push)
    return steps, state

  return _stateless("evolve", eta, update_fn)


# -- AE-8: gauge --------------------------------------------------------------


class GaugeState(NamedTuple):
  """State of :func:`gauge`: the γ tracker and the calibrated target γ*."""

  count: chex.Array
  track: chex.Array
  target: chex.Array  # γ*; 0 until calibrated when auto


# η_γ of the gauge in the presets (``canonical_laws(..., gauge=True)``;
# ae_sgdm's chain). The law's own default, 1e-3, is the reference's.
CANONICAL_GAUGE_ETA = 1e-2


def gauge(coefficient: str = "learning_rate", *, eta=1e-3, target=None,
          warmup: int = 200, calibration=0.8, track_decay=0.99,
          fallback=None, filter_mode: str = "debiased",
          ) -> optax.GradientTransformationExtraArgs:
  """AE-8, the gauge: steers the effective step γ = α‖g‖ toward γ*.

  .. math::

    \\log\\alpha_{t+1} = \\log\\alpha_t
      + \\eta_\\gamma \\frac{\\gamma^\\star - \\alpha_t\\|g_t\\|}{\\gamma^\\star}

  Args:
    coefficient: the step-size coefficient α (log-parametrised).
    eta: η_γ.
    target: a fixed γ*; ``None`` auto-calibrates γ* after ``warmup`` steps
      as ``calibration`` times the tracked γ.
    warmup: steps before auto-calibration.
    calibration: γ* = calibration · LP(γ) at the end of the warm-up.
    track_decay: decay of the γ tracker.
    fallback: γ* used during the warm-up. ``None`` (default) keeps the gauge
      idle until calibrated; the reference uses its ``gamma_star`` (1e-2),
      which pulls α toward 1e-2/‖g‖ before anything is known of the problem.
    filter_mode: EMA flavour of the tracker, see
      :class:`ae_jax.measurement.FilterConfig`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` over the coefficients.

  Examples:
    >>> import ae_jax as ae
    >>> law = ae.laws.gauge("learning_rate", eta=ae.laws.CANONICAL_GAUGE_ETA,
    ...                     warmup=50)

  References:
    Hazan, Levy and Shalev-Shwartz, `Beyond Convexity: Stochastic
    Quasi-Convex Optimization <https://arxiv.org/abs/1507.02030>`_, NeurIPS
    2015 (normalised gradient descent: a step of fixed length α‖g‖).
  """
  check_positive("ae_jax.laws.gauge: ", target=target,
                 calibration=calibration)
  check_nonnegative("ae_jax.laws.gauge: ", eta=eta)
  if int(warmup) < 0:
    raise ValueError(f"ae_jax.laws.gauge: warmup must be >= 0, got {warmup}")

  def init_fn(params):
    _check_names("gauge", [coefficient], params)
    dtype = params[coefficient].dtype
    fixed = 0.0 if target is None else target
    return GaugeState(count=jnp.zeros([], jnp.int32),
                      track=jnp.zeros([], dtype),
                      target=jnp.asarray(fixed, dtype))

  def update_fn(updates, state, params=None, *, signals, coefficients,
                **extra_args):
    del params, extra_args
    alpha = coefficients[coefficient]
    gamma = jnp.abs(alpha * signals.gnorm)
    track, tracked = measurement.ema(state.track, gamma, track_decay,
                                     state.count, filter_mode)
    count = optax.safe_increment(state.count)
    if target is None:
      calibrate = (state.target <= 0) & (count > warmup)
      gamma_star = jnp.where(
          calibrate, calibration * jnp.maximum(tracked, _TINY), state.target)
    else:
      gamma_star = state.target
    ready = gamma_star > 0
    if fallback is not None:
      active_target = jnp.where(ready, gamma_star, fallback)
      ready = jnp.ones_like(ready)
    else:
      active_target = jnp.where(ready, gamma_star, 1.0)
    step = eta * (active_target - gamma) / (active_target + _TINY)
    updates = _add(updates, coefficient, jnp.where(ready, step, 0.0))
    return updates, GaugeState(count=count, track=track, target=gamma_star)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# -- AE-5 phase term, hypergradient form ------------------------------------


# κ_max of the canonical step-size law (its default ``gain``) and the decay
# of its ρ filter in the presets.
CANONICAL_HYPERGRADIENT = 0.2
HYPERGRADIENT_DECAY = 0.5
# Reversals count twice in the Adam presets (docs/laws.md, "Reversal
# weight"); ae_sgdm keeps 1 (the robustness sweep measured 2 costing it 3
# held-out cells).
HYPERGRADIENT_REVERSAL_WEIGHT = 2.0
SGDM_REVERSAL_WEIGHT = 1.0
# ... but only once the loss has stopped improving (docs/laws.md, "Progress
# gate"): the threshold of the progress z-score and the loss filters. While
# the loss still falls, reversals weigh the progress weight instead: 1 for
# the Adam presets, 0.3 for ae_sgdm (its greedy rate was too low on the
# CNNs), pulled toward 1 as the mean square of ρ nears 1 (deterministic
# gradients: without that pull, 0.5 broke the reference quadratic's hold
# below 1e-6).
HYPERGRADIENT_PROGRESS_GATE = 1.0
HYPERGRADIENT_PROGRESS_WEIGHT = 1.0
SGDM_PROGRESS_WEIGHT = 0.3
HYPERGRADIENT_PROGRESS_DECAYS = (0.9, 0.99)
# A loss jump restarts the gate's slow mean (docs/laws.md, "A jump restarts
# the slow mean"): where the improvement z-score falls below minus this, the
# slow mean is set to the fast one, so the fall after a drift switch reads
# as progress instead of as a rise over the old phase's level.
HYPERGRADIENT_PROGRESS_RESET = 3.0
# ae_sgdm keeps it off: with its long-horizon ρ, a restarted gate read the
# displacement of the old phase right after a switch (drift_regression's
# time to the common level 233 -> 370 steps).
SGDM_PROGRESS_RESET = None
# A step whose ρ flips sign against the last one with ρ_t ρ_{t-1} below
# minus this reads as a full reversal (docs/laws.md, "A flip reads as a
# reversal").
HYPERGRADIENT_ALTERNATION = 0.5
# A clipped gradient while the loss rises reads as an overshoot only as the
# second such step in a row in the Adam presets (docs/laws.md, "A lone spike
# is not an overshoot"): at a classification loss's floor single heavy-tailed
# batches trip it every ~8th step and held Adam's α near 1e-8 for a phase of
# drift_classes. ae_sgdm keeps 1 (with 2 its held-out loss on the drift
# tasks rose 0.29 -> 1.9: the lone trips are the brake on its α there).
HYPERGRADIENT_OVERSHOOT_STEPS = 2
SGDM_OVERSHOOT_STEPS = 1
# Sharpness of the progress gate's sigmoid, per unit of z.
_PROGRESS_SHARPNESS = 4.0


class HypergradientState(NamedTuple):
  """State of :func:`hypergradient`: EMAs of ρ and ρ², the current gain κ_t
  and the last normalised hypergradient; with a progress gate, the fast and
  slow EMAs of the loss and the slow EMA of its squared deviation (``()``
  without one); with an alternation threshold, the last measured ρ (``()``
  without one); with ``overshoot_steps`` n > 1, the number of clipped steps
  with a rising loss in a row, saturated at n (``()`` with 1)."""

  count: chex.Array
  mean: chex.Array
  square: chex.Array
  gain: chex.Array
  last: chex.Array
  loss_fast: chex.Array = ()
  loss_slow: chex.Array = ()
  loss_var: chex.Array = ()
  rho_last: chex.Array = ()
  streak: chex.Array = ()


def hypergradient(coefficient: str = "learning_rate", *,
                  gain=CANONICAL_HYPERGRADIENT,
                  min_gain=None, grow=1.2, shrink=0.5, decay=0.7,
                  square_decay=0.99, reversal_weight=1.0,
                  progress_gate=None, progress_weight=1.0,
                  progress_decays=HYPERGRADIENT_PROGRESS_DECAYS,
                  progress_reset=HYPERGRADIENT_PROGRESS_RESET,
                  alternation=None, horizon=False, overshoot_steps=1,
                  batches_per_epoch=None, filter_mode: str = "debiased",
                  smooth=False) -> optax.GradientTransformationExtraArgs:
  r"""The step size follows the sign of its own hypergradient (AE-5 phase term).

  .. math::

    h_t = \frac{\mathrm{LP}_{\beta}(\tilde\rho_t)}{\sqrt{\max(
      \mathrm{LP}_{\beta_2}(\tilde\rho_t^2), \mathrm{LP}_{\beta}(\tilde\rho_t)^2)}},
    \qquad \tilde\rho_t = \rho_t\,(1 + (w_t - 1)[\rho_t < 0]),\qquad
    \rho_t = \cos\angle(g_t, d_{t-1}),\qquad
    \Delta\log\alpha_t \mathrel{+}= \kappa_t h_t,

    w_t = \tilde w_p + (w - \tilde w_p)\,\sigma\big(4(\zeta - p_t)\big),
    \qquad \tilde w_p = 1 - (1 - w_p)\big(1 - \mathrm{LP}_{\beta_2}(\tilde\rho^2)
      \big),\qquad
    p_t = \frac{\mathrm{LP}_{\beta_s}(\ell_t) - \mathrm{LP}_{\beta_f}(\ell_t)}
      {\sqrt{(1 - \beta_f)\,\mathrm{LP}_{\beta_s}\big((\ell_t -
       \mathrm{LP}_{\beta_s}(\ell_t))^2\big)}}

    \kappa_{t+1} = \Pi_{[\kappa_{\min}, \kappa_{\max}]}\big(\kappa_t \cdot
      (\text{grow if } h_t h_{t-1} > 0 \text{ else shrink})\big)

  where :math:`d_{t-1}` is the direction of the step the base applied last
  (the momentum, preconditioned for Adam: ``ae.adapt`` measures ρ there).
  With a progress gate ζ, :math:`p_t` is a z-score of the loss's recent
  improvement (its slow mean minus its fast mean, over the fast mean's noise
  scale) and reversals weigh :math:`w` only once it falls below ζ, where the
  loss has stopped improving, and :math:`w_p` while it still falls; without
  one, :math:`w_t = w`. Where :math:`p_t < -r` (``progress_reset``: the loss
  jumped far above its slow mean, a drift switch) the slow mean restarts at
  the fast one, :math:`\mathrm{LP}_{\beta_s}(\ell_t) \leftarrow
  \mathrm{LP}_{\beta_f}(\ell_t)`.
  A step whose gradient was clipped (``signals.clip < 1``, see
  :class:`ae_jax.measurement.FilterConfig`) while the loss rose above its
  running mean counts as ρ = −1, a reversal (with ``overshoot_steps`` n,
  only the n-th such step in a row and those after it); so does, with an alternation
  threshold c, a step whose ρ flipped sign against the last one with
  :math:`\rho_t\rho_{t-1} < -c` (a period-2 oscillation).
  With ``horizon``, while the loss still falls ρ is read against the recent
  displacement instead, :math:`\rho^H_t = \cos\angle(g_t, -D_{t-1})`,
  :math:`D_t = \gamma D_{t-1} + \Delta\theta_t` (``ae.adapt``'s
  ``horizon`` γ), in the share the loss's progress, the one-step
  sign's inconclusiveness and the gradient noise give it:
  :math:`\rho \leftarrow \rho_t + (1 - s_t)(1 - |h_{t-1}|)
  (1 - \mathrm{LP}_{\beta_2}(\tilde\rho^2))(\rho^H_t - \rho_t)`,
  :math:`s_t = \sigma(4(\zeta - p_t))`.
  With ``batches_per_epoch`` B (shuffled epochs), a step reads ρ (and
  moves α) only on the first :math:`\lceil B/8\rceil` batches of an epoch,
  on an overshoot, or while :math:`h_{t-1} > 0`; on the other steps α,
  the filters and κ hold.
  The derivative of the loss with respect to :math:`\log\alpha` is
  :math:`-\alpha_{t-1} g_t^\top d_{t-1}`, so ρ > 0 says the last step was
  too short and ρ < 0 that it overshot. Dividing the filtered ρ by its RMS
  makes :math:`h_t` scale-free and near ±1 whenever the sign is consistent.
  The gain itself adapts like Rprop's step: it grows while the sign of
  :math:`h` holds (α travels up to κ_max per step in log space, a decade in
  ``log 10 / κ_max`` steps, from a bad start or after a drift switch) and
  shrinks when it flips (small steps around the equilibrium, where the sign
  is noise).

  Args:
    coefficient: the step-size coefficient (log-parametrised).
    gain: κ_max, the largest log-step per step, also the initial κ.
    min_gain: κ_min (default ``gain / 20``).
    grow: factor of κ when the sign of h holds.
    shrink: factor of κ when the sign of h flips.
    decay: decay of the EMA of ρ.
    square_decay: decay of the EMA of ρ².
    reversal_weight: w > 0, the weight of a reversal (ρ < 0) against an
      alignment (on a stalled loss, with a progress gate). The greedy hypergradient's equilibrium overestimates the
      rate that is best over a horizon when gradients are noise-dominated
      (Wu et al. 2018); w > 1 moves it down. With consistent signs h is ±1
      whatever w, so the climb from a bad start keeps its speed.
    progress_gate: ζ, or ``None`` (reversals always weigh ``w``). With a
      number, reversals weigh ``w`` only while the loss's improvement
      z-score :math:`p_t` is below ζ (a sigmoid of slope 4 between), 1 while
      the loss is still falling clearly: the short-horizon correction is for
      a loss at its noise floor, and while it falls the greedy rate is
      not too high (the canonical chain uses
      :data:`HYPERGRADIENT_PROGRESS_GATE`).
    progress_weight: :math:`w_p` > 0, the weight of a reversal while the loss
      still falls clearly (with a progress gate). Below 1 it raises the
      equilibrium rate during training: the greedy (one-step) rate is too
      small while the loss falls, the other side of the short-horizon bias
      (Wu et al. 2018). That bias comes from gradient noise, so the weight
      applied is pulled toward 1 by the mean square of ρ (about 1 on
      deterministic gradients, 0.03-0.1 on minibatches): :math:`\tilde w_p`.
    progress_decays: ``(β_f, β_s)``, the decays of the loss's fast and slow
      means for :math:`p_t` (β_s also filters the squared deviation).
    progress_reset: r > 0, or ``None`` (off); acts only with a progress
      gate: where :math:`p_t < -r` the slow mean restarts at the fast mean.
      After a jump of the loss (the task changed) the slow mean remembers
      the old, lower level for ~100 steps, so :math:`p_t` stayed below 0,
      read as a stall, through the fast fall that follows, and reversals
      weighed ``reversal_weight`` just when α should climb back
      (``docs/laws.md``). A smooth gate under AE-9.
    alternation: c in (0, 1], or ``None`` (off): a step with
      :math:`\rho_t\rho_{t-1} < -c` counts as ρ = −1. Two strongly
      aligned measurements of opposite sign in a row are a stiff direction
      overshooting back and forth; the filtered ρ averages them to ~0 and
      the flipping sign shrinks the gain κ, so without this α stayed at
      the unstable rate while the oscillation grew (``ae_sgdm`` thrown out
      of Rosenbrock's valley). Minibatch ρ (RMS 0.15-0.3) rarely reaches
      it: both factors must exceed ``sqrt(c)`` in size.
    overshoot_steps: n >= 1: a clipped gradient while the loss is above its
      running mean reads as ρ = −1 only as the n-th such step in a row (and
      every one after it). An instability grows over steps; a single batch
      from a heavy-tailed gradient distribution (a classification loss near
      its floor) trips the clip and the loss together once, and with n = 1
      those lone trips, about one step in eight there, held Adam's α near
      1e-8 (``docs/laws.md``, "A lone spike is not an overshoot").
    horizon: while the loss falls clearly (the progress gate, which it
      needs), read ρ against the recent displacement
      (``signals.rho_horizon``, measured by :func:`ae_jax.adapt` with a
      ``horizon``; without one it equals ρ and this is a no-op). The
      one-step hypergradient sees the stiff directions' overshoot, whose
      back-and-forth a sum of steps cancels: with momentum SGD on a CNN it
      held α ~6x below the best fixed rate (``docs/laws.md``, "Long
      horizon"). At the floor the one-step ρ is kept: against the
      displacement ρ reads the floor's own wander as alignment. So it is
      on deterministic gradients (mean square of ρ near 1), where the
      one-step reading has no noise bias to correct.
    batches_per_epoch: B >= 1, or ``None`` (batches drawn independently):
      the batches come in shuffled epochs of B, counted from this
      transformation's first step. Within an epoch the batches' gradients
      sum to the full gradient, so a batch is anticorrelated with the
      epoch's earlier batches, which the direction :math:`d_{t-1}` holds:
      near a stationary point ρ read -0.12 to -0.26 at any α (8 batches per
      epoch) and the law cut α to Ω's floor. An epoch's first batches see a
      direction built mostly from earlier epochs' batches, independent of
      them, so only they (or an overshoot) may cut α; while α climbs every
      batch is read (``docs/laws.md``, "Batches drawn without
      replacement").
    filter_mode: EMA flavour, see :class:`ae_jax.measurement.FilterConfig`.
    smooth: AE-9: the sign test becomes ``sigmoid(h_t h_{t-1} / τ)``;
      ``True`` uses :data:`DEFAULT_TEMPERATURE`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` over the coefficients.

  Examples:
    >>> import optax, ae_jax as ae
    >>> laws = optax.chain(
    ...     ae.laws.evolve({"learning_rate": 0.01}),
    ...     ae.laws.hypergradient("learning_rate",
    ...                           decay=ae.laws.HYPERGRADIENT_DECAY,
    ...                           reversal_weight=2.0,
    ...                           progress_gate=1.0))

  References:
    Baydin et al., `Online Learning Rate Adaptation with Hypergradient
    Descent <https://arxiv.org/abs/1703.04782>`_, ICLR 2018;
    Riedmiller and Braun, `A direct adaptive method for faster
    backpropagation learning: the RPROP algorithm
    <https://doi.org/10.1109/ICNN.1993.298623>`_, ICNN 1993;
    Wu, Ren, Liao and Grosse, `Understanding Short-Horizon Bias in
    Stochastic Meta-Optimization <https://arxiv.org/abs/1803.02021>`_,
    ICLR 2018.
  """
  temp = temperature(smooth)
  check_positive("ae_jax.laws.hypergradient: ", gain=gain, grow=grow,
                 shrink=shrink, min_gain=min_gain,
                 reversal_weight=reversal_weight,
                 progress_weight=progress_weight)
  progress_reset, overshoot_steps, batches_per_epoch = (
      _checked_hypergradient_options(progress_gate, progress_decays,
                                     progress_reset, horizon, overshoot_steps,
                                     alternation, batches_per_epoch))

  def init_fn(params):
    _check_names("hypergradient", [coefficient], params)
    dtype = params[coefficient].dtype
    zero = lambda: jnp.zeros([], dtype)
    loss = ((zero(), zero(), zero()) if progress_gate is not None
            else ((), (), ()))
    return HypergradientState(count=jnp.zeros([], jnp.int32), mean=zero(),
                              square=zero(),
                              gain=jnp.asarray(gain, dtype), last=zero(),
                              loss_fast=loss[0], loss_slow=loss[1],
                              loss_var=loss[2],
                              rho_last=(() if alternation is None
                                        else zero()),
                              streak=(() if overshoot_steps == 1 else
                                      jnp.zeros([], jnp.int32)))

  def update_fn(updates, state, params=None, *, signals, **extra_args):
    del params, extra_args
    measured = jnp.asarray(signals.rho, state.mean.dtype)
    rho_square = _rho_square(state, square_decay)
    if progress_gate is None:
      weight, stalled, loss_state = reversal_weight, 1.0, ((), (), ())
    else:
      weight, stalled, loss_state = _gated_weight(
          state, signals.loss, reversal_weight, progress_weight,
          progress_gate, progress_decays, progress_reset, filter_mode,
          rho_square, temp)
    rising = (signals.clip < 1.0) & (signals.loss > signals.loss_mean)
    if overshoot_steps == 1:
      streak, overshoot = (), rising
    else:
      # Saturates at n: the count only needs to say "n in a row".
      streak = jnp.where(rising, jnp.minimum(state.streak + 1,
                                             overshoot_steps), 0)
      overshoot = streak >= overshoot_steps
    rho = _read_rho(state, signals, weight, stalled, overshoot, rho_square,
                    horizon=horizon, alternation=alternation, temp=temp)
    (mean, square), (mean_hat, square_hat) = measurement.emas(
        (state.mean, state.square), (rho, rho * rho), (decay, square_decay),
        state.count, filter_mode)
    # |h| <= 1: with the faster filter of ρ its mean can outrun the RMS
    # (a jump of ρ from 0 to 0.5 read h ≈ 3 for a few steps).
    h = mean_hat * jax.lax.rsqrt(jnp.maximum(square_hat, mean_hat * mean_hat)
                                 + _TINY)
    # No previous h yet (the first step) counts as a held sign.
    held = jnp.where(state.count == 0, 1.0, gate(h * state.last, temp))
    factor = shrink + (grow - shrink) * held
    lo = gain / 20.0 if min_gain is None else min_gain
    new_gain = jnp.clip(state.gain * factor, lo, gain)
    if batches_per_epoch is not None:
      read = _epoch_read(state, overshoot, batches_per_epoch)
      mean, square, new_gain, h = (
          jnp.where(read, new, old) for new, old in
          ((mean, state.mean), (square, state.square),
           (new_gain, state.gain), (h, state.last)))
      step = jnp.where(read, state.gain * h, 0.0)
    else:
      step = state.gain * h
    new_state = HypergradientState(count=optax.safe_increment(state.count),
                                   mean=mean, square=square,
                                   gain=new_gain.astype(state.gain.dtype),
                                   last=h, loss_fast=loss_state[0],
                                   loss_slow=loss_state[1],
                                   loss_var=loss_state[2],
                                   rho_last=(() if alternation is None
                                             else measured),
                                   streak=streak)
    return _add(updates, coefficient, step), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _checked_hypergradient_options(progress_gate, progress_decays,
                                   progress_reset, horizon, overshoot_steps,
                                   alternation, batches_per_epoch):
  """Validates :func:`hypergradient`'s gate, horizon, overshoot,
  alternation and epoch options at construction; returns the checked
  ``(progress_reset, overshoot_steps, batches_per_epoch)``."""
  progress_reset = _checked_reset(progress_reset)
  if progress_gate is not None:
    _check_progress_gate(progress_gate, progress_decays)
  elif horizon:
    raise ValueError("ae_jax.laws.hypergradient: horizon=True reads the "
                     "long-horizon ρ while the loss falls and needs a "
                     "progress_gate to say when; got progress_gate=None")
  overshoot_steps = _checked_count("overshoot_steps", overshoot_steps)
  if alternation is not None and not 0.0 < float(alternation) <= 1.0:
    raise ValueError(f"ae_jax.laws.hypergradient: alternation must be in "
                     f"(0, 1] or None, got {alternation!r}")
  if batches_per_epoch is not None:
    batches_per_epoch = _checked_count("batches_per_epoch", batches_per_epoch,
                                       " or None")
  return progress_reset, overshoot_steps, batches_per_epoch


def _checked_count(field: str, value, also: str = "") -> int:
  """``value`` as an int >= 1 (bools, floats and strings refused); the
  error names ``field`` and what else it accepts (``also``)."""
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or value < 1):
    raise ValueError(f"ae_jax.laws.hypergradient: {field} must be an "
                     f"integer >= 1{also}, got {value!r}")
  return int(value)


# With shuffled epochs ρ is read, and α moves, on the first
# 1/EPOCH_READ_SHARE of each epoch's batches (at least one), on an overshoot
# and while α climbs (the last h > 0); see _epoch_read.
EPOCH_READ_SHARE = 8


def _epoch_read(state: HypergradientState, overshoot, batches_per_epoch):
  """Whether :func:`hypergradient` reads this step's ρ, with shuffled
  epochs of ``batches_per_epoch`` batches.

  A batch is anticorrelated with the batches of its own epoch that the
  direction d_{t-1} holds, so ρ reads low whatever α; an epoch's first
  batches see a direction built mostly from earlier epochs' batches, which
  they are independent of. A cut of α therefore waits for those batches (or
  an overshoot); while α climbs (the last h > 0) every batch is read, as
  the bias can only slow the climb: reading the first batches alone
  slowed the climb from the warm start ~8-fold and cost the digits CNN its
  training loss within 600 steps (``docs/laws.md``). The share: 1/16 and
  1/32 did better for ``ae_adam`` on one task (64 batches per epoch), but
  over the sweep in shuffled epochs 1/16 took ``ae_adam``'s geo-mean ratio
  from 1.28 to 1.24 and ``ae_sgdm``'s from 1.31 to 1.39
  (``benchmarks/RESULTS.md``, "Shuffled epochs")."""
  position = state.count % batches_per_epoch
  first = position < -(-batches_per_epoch // EPOCH_READ_SHARE)
  return first | overshoot | (state.last > 0)


def _rho_square(state: HypergradientState, square_decay):
  """LP(ρ̃²), debiased and clipped to [0, 1] (1 before any measurement):
  ~1 on deterministic gradients, 0.03-0.1 on minibatches."""
  seen = state.count.astype(state.square.dtype)
  square = jnp.where(state.count > 0, state.square / jnp.maximum(
      1.0 - jnp.asarray(square_decay, state.square.dtype) ** seen, _TINY),
      1.0)
  return jnp.clip(square, 0.0, 1.0)


def _read_rho(state: HypergradientState, signals, weight, stalled,
              overshoot, rho_square, *, horizon, alternation, temp):
  """The ρ̃ that :func:`hypergradient` filters: the measured ρ, the
  long-horizon ρ in its share (with ``horizon``), −1 on an overshoot or a
  flip, and reversals weighted by ``weight``."""
  rho = measured = jnp.asarray(signals.rho, state.mean.dtype)
  if horizon:
    # While the loss falls and the one-step sign is inconclusive (|h|
    # small, near α's equilibrium): the hypergradient over the recent
    # steps. A clear sign (the climb from a bad start, |h| ~ 1) keeps the
    # one-step ρ: after a turn of the road the displacement still points
    # the old way and read low there. So do deterministic gradients
    # (LP(ρ̃²) ~ 1): the bias the horizon corrects comes from gradient
    # noise, and after an overshoot the displacement remembers the long
    # road there and reads "reversal" while the iterate creeps back (a
    # plain quadratic stalled ~150 steps with α cut 1e4-fold).
    share = ((1.0 - stalled) * (1.0 - jnp.abs(state.last))
             * (1.0 - rho_square))
    rho = rho + share * (jnp.asarray(signals.rho_horizon, rho.dtype) - rho)
  # A clipped gradient (beyond FilterConfig.grad_clip times its running
  # norm) while the loss rises above its running mean reads as a full
  # reversal: the last steps overshot, though ρ measured against a momentum
  # can still look aligned (the momentum averages out an oscillation across
  # a narrow valley; ae_sgdm climbed out of Rosenbrock's valley without
  # this). A clipped gradient alone is not one: a spike, or gradients
  # growing out of a tiny start, move no loss.
  rho = jnp.where(overshoot, -1.0, rho)
  if alternation is not None:
    # A stiff direction overshooting back and forth: ρ ~ +1, -1, +1, ...
    # (0 before the first measurement: no flip). Smooth under AE-9.
    flip = gate(-alternation - measured * state.rho_last, temp)
    rho = rho + flip * (-1.0 - rho)
  # Reversals weigh ``weight`` times more than alignments: the one-step
  # (greedy) hypergradient equilibrium sits above the rate that is best over
  # a horizon when the gradient is noise-dominated (short-horizon bias), so
  # α settles where aligned steps outweigh reversals w to 1.
  return jnp.where(rho < 0, weight * rho, rho)


def _checked_reset(reset) -> float | None:
  """``progress_reset`` as a float, or None; checked even without a gate
  (where it has nothing to restart), so a typo is not silently inert."""
  if reset is None:
    return None
  value = math.nan  # bools and strings are refused, not converted
  if not isinstance(reset, (bool, np.bool_, str)):
    try:
      value = float(reset)
    except (TypeError, ValueError):
      pass
  if not 0.0 < value < math.inf:
    raise ValueError(f"ae_jax.laws.hypergradient: progress_reset must be "
                     f"a finite number > 0 or None, got {reset!r}")
  return value


def _check_progress_gate(gate, decays) -> None:
  if not math.isfinite(float(gate)):
    raise ValueError(f"ae_jax.laws.hypergradient: progress_gate must be "
                     f"finite, got {gate!r}")
  try:
    fast, slow = (float(d) for d in decays)
  except (TypeError, ValueError) as e:
    raise ValueError(f"ae_jax.laws.hypergradient: progress_decays must be "
                     f"two decays (fast, slow), got {decays!r}") from e
  if not 0.0 < fast < slow < 1.0:
    raise ValueError(f"ae_jax.laws.hypergradient: progress_decays must "
                     f"satisfy 0 < fast < slow < 1, got {decays!r}")


def _gated_weight(state: HypergradientState, loss, weight, progress_weight,
                  zeta, decays, reset, filter_mode, rho_square, temp):
  """The reversal weight w_t of :func:`hypergradient`'s progress gate, how
  stalled the loss is (s_t in (0, 1)) and the new loss filters: ``weight``
  where the loss's improvement z-score is
  below the gate, ``progress_weight`` where the loss still falls clearly,
  pulled toward 1 by ``rho_square``, the mean square of ρ
  (:func:`_rho_square`): its correction is for noisy gradients, and ρ²
  near 1 says they are not.
  With ``reset`` r, the slow mean handed back restarts at the fast mean
  where the z-score is below −r (a jump of the loss)."""
  fast_decay, slow_decay = decays
  # The greedy rate's short-horizon bias grows with the gradient noise
  # (Wu et al. 2018); |ρ| ~ 1 on deterministic gradients, where the greedy
  # rate is right and a w_p < 1 only drives α into oscillation (the
  # reference quadratic), and |ρ| ~ 0.1-0.4 on minibatches.
  progress_weight = 1.0 - (1.0 - progress_weight) * (1.0 - rho_square)
  loss = jnp.asarray(loss, state.mean.dtype)
  (fast, slow), (fast_hat, slow_hat) = measurement.emas(
      (state.loss_fast, state.loss_slow), (loss, loss),
      (fast_decay, slow_decay), state.count, filter_mode)
  var, var_hat = measurement.ema(state.loss_var, (loss - slow_hat) ** 2,
                                 slow_decay, state.count, filter_mode)
  # The improvement in units of the fast mean's noise: scale-free, ~0 on a
  # noise floor or a plateau, a few units while the loss falls.
  progress = (slow_hat - fast_hat) * jax.lax.rsqrt(
      (1.0 - fast_decay) * var_hat + jnp.finfo(var_hat.dtype).tiny)
  stalled = jax.nn.sigmoid(_PROGRESS_SHARPNESS * (zeta - progress))
  if reset is not None:
    # A jump (a drift switch): restart the slow mean at the fast one, its
    # accumulator scaled so that its debiased value equals the fast mean's.
    # Read from the next step on; this step's weight is the stalled one.
    # β^t in the default float's precision, as measurement.emas debiases
    # (a low-precision β rounds: bf16 0.99 is 0.988).
    wide = jnp.promote_types(slow.dtype, jnp.result_type(float))
    t = (state.count + 1).astype(wide)
    restart = fast_hat * (1.0 - jnp.asarray(slow_decay, wide) ** t
                          ).astype(slow.dtype)
    if temp is None:
      slow = jnp.where(progress < -reset, restart, slow)
    else:
      slow = slow + gate(-reset - progress, temp) * (restart - slow)
  return (progress_weight + (weight - progress_weight) * stalled, stalled,
          (fast, slow, var))


# -- AE-6: budget -------------------------------------------------------------


# The canonical trust region |Δz| per step (AE-6; ``canonical_laws(...,
# budget=True)``): the reference's max_dlog_alpha, max_d_mu, max_dlog_sigma
# and the same order for the others.
CANONICAL_MAX_STEP = {
    "learning_rate": 0.25, "momentum": 0.02, "b1": 0.05, "b2": 0.05,
    "eps": 0.1, "weight_decay": 0.05, "sigma": 0.1,
}


class BudgetState(NamedTuple):
  """State of :func:`budget`: the dual variable λ of the power constraint."""

  dual: chex.Array


def budget(max_step: Mapping[str, Any] | None = None, *, bound=None,
           eta_dual=0.0, weights: Mapping[str, Any] | None = None,
           smooth=False) -> optax.GradientTransformationExtraArgs:
  """AE-6, budget/continuity: bounds the adaptation power of each step.

  .. math::

    \\Delta z \\leftarrow \\frac{\\Delta z}{\\sqrt{1+\\lambda_t}},\\qquad
    \\lambda_{t+1} = \\big[\\lambda_t + \\eta_\\lambda
      (\\|\\Delta z\\|_M^2 - B)\\big]_+

  plus a hard per-coefficient trust region ``|Δz_i| ≤ max_step[i]`` (the
  reference's ``max_dlog_alpha``, ``max_d_mu``, ``max_dlog_sigma``). The
  energy is measured on the step this law outputs, before the projection
  (which can only shorten it).

  Args:
    max_step: ``name -> bound`` on ``|Δz|`` per step (``None`` entries and
      unlisted coefficients are unbounded).
    bound: the power budget B; ``None`` disables the dual variable.
    eta_dual: η_λ.
    weights: the diagonal metric M (default 1 for every coefficient).
    smooth: AE-9 surrogates: the trust region becomes
      ``m·softclip(Δz/m, ±1; τ)`` and ``[·]_+`` becomes
      ``τB·softplus(·/(τB))``; ``True`` uses :data:`DEFAULT_TEMPERATURE`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` over the coefficients.

  Examples:
    >>> import ae_jax as ae
    >>> law = ae.laws.budget(ae.laws.CANONICAL_MAX_STEP)
    >>> law = ae.laws.budget({"learning_rate": 0.25}, bound=0.1,
    ...                      eta_dual=0.5)

  References:
    Conn, Gould and Toint, `Trust-Region Methods
    <https://doi.org/10.1137/1.9780898719857>`_, SIAM 2000.
  """
  temp = temperature(smooth)
  max_step = {k: v for k, v in (max_step or {}).items() if v is not None}
  weights = dict(weights or {})
  check_nonnegative("ae_jax.laws.budget: ", eta_dual=eta_dual)
  check_positive("ae_jax.laws.budget: ", bound=bound,
                 **{f"max_step[{n!r}]": v for n, v in max_step.items()})

  def init_fn(params):
    _check_names("budget", list(max_step) + list(weights), params)
    dtype = next(iter(params.values())).dtype if params else jnp.float32
    return BudgetState(dual=jnp.zeros([], dtype))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    scale = jax.lax.rsqrt(1.0 + state.dual) if bound is not None else 1.0
    steps = {}
    for name, dz in updates.items():
      dz = dz * scale
      if name in max_step:
        bound_i = max_step[name]
        dz = bound_i * soft_clip(dz / bound_i, -1.0, 1.0, temp)
      steps[name] = dz
    dual = state.dual
    if bound is not None:
      power = sum((weights.get(n, 1.0) * jnp.square(d)
                   for n, d in steps.items()), jnp.zeros_like(dual))
      dual = soft_max(dual + eta_dual * (power - bound), 0.0,
                      None if temp is None else temp * bound)
    return steps, BudgetState(dual=dual)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# -- AE-5: resonance ----------------------------------------------------------


def resonance(coefficient: str = "learning_rate", *, variance_max=4.0,
              rho_max=0.95, shrink=0.25, two_sided: bool = False,
              phase_gain=0.0, rho_star=0.3, smooth=False,
              ) -> optax.GradientTransformationExtraArgs:
  """AE-5, the resonance clamp: shrinks α on a variance spike or oscillation.

  .. math::

    \\text{if } V_t > V_{\\max} \\text{ or } \\rho_t < -\\rho_{\\max}:\\quad
    a_{t+1} \\leftarrow a_{t+1} / (1 + \\kappa_{\\text{shrink}})

  with :math:`V_{\\max}` = ``variance_max`` · V*, plus the phase term
  :math:`\\Delta z_\\alpha \\mathrel{+}= W_m(\\rho_t - \\rho^\\star)` (``phase_gain``; 0 by
  default: the canonical presets carry it in :attr:`DriveGains.phase`, which
  has the same form, scaled by η).

  Smooth mode (AE-9) replaces the trigger by the soft OR of
  ``sigmoid(log(V/V_max)/τ)`` and ``sigmoid((-ρ - ρ_max)/((1 - ρ_max)τ))``.

  Args:
    coefficient: the step-size coefficient (log-parametrised).
    variance_max: the variance trigger, as a multiple of V*.
    rho_max: the phase trigger.
    shrink: κ_shrink.
    two_sided: fire on ``|ρ| > ρ_max`` as the reference does. That also fires
      while consecutive gradients are steadily *aligned* (ρ ≈ +1, good
      progress) and drives α to its floor on a plain quadratic; the default
      fires only on oscillation (ρ < -ρ_max).
    phase_gain: W_m, the phase gain on the step size (in z units per step).
    rho_star: ρ* of the phase term.
    smooth: see above; ``True`` uses :data:`DEFAULT_TEMPERATURE`, a number
      is the temperature τ.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` over the coefficients.

  Examples:
    >>> import ae_jax as ae
    >>> law = ae.laws.resonance("learning_rate", variance_max=4.0,
    ...                         shrink=0.25)

  References:
    Jacobs, `Increased Rates of Convergence Through Learning Rate Adaptation
    <https://doi.org/10.1016/0893-6080(88)90003-2>`_, Neural Networks 1(4),
    1988 (delta-bar-delta: cut the rate when successive gradients
    disagree).
  """
  temp = temperature(smooth)

  check_positive("ae_jax.laws.resonance: ", variance_max=variance_max,
                 rho_max=rho_max, shrink=shrink)

  def update_fn(updates, state, params=None, *, signals, **extra_args):
    del params, extra_args
    phase = jnp.abs(signals.rho) if two_sided else -signals.rho
    spike = gate(jnp.log(signals.V / (variance_max * signals.V_star)), temp)
    flip = gate((phase - rho_max) / (1.0 - rho_max + _TINY), temp)
    cut = either(spike, flip) * jnp.log1p(shrink)
    term = phase_gain * (signals.rho - rho_star) - cut
    return _add(updates, coefficient, term), state

  return _stateless("resonance", [coefficient], update_fn)


# -- AE-10: Lyapunov energy ---------------------------------------------------


class SafetyState(NamedTuple):
  """State of :func:`safety`: the lowest filtered loss level seen so far."""

  best: chex.Array


def safety(coefficient: str = "learning_rate", *, margin=0.1, rate=0.05,
           forget=1.0, smooth=False) -> optax.GradientTransformationExtraArgs:
  """AE-10 enforced: lowers α while the filtered loss sits above its best.

  .. math::

    e_t = \\frac{\\mathrm{LP}(\\ell)_t - \\ell^{\\mathrm{best}}_t}
               {|\\ell^{\\mathrm{best}}_t| + \\sqrt{V^\\star_t}} - m,\\qquad
    \\Delta z_\\alpha \\mathrel{-}= r\\,\\mathbf 1\\{e_t > 0\\},

    \\ell^{\\mathrm{best}}_{t} = \\min\\big(\\mathrm{LP}(\\ell)_t,\\;
      \\ell^{\\mathrm{best}}_{t-1} + (1 - f)(\\mathrm{LP}(\\ell)_t
      - \\ell^{\\mathrm{best}}_{t-1})\\big)

  The other laws read signals relative to their own running scale (T / ``mean |ΔT|``,
  V/V*, ρ), so a rate that is too high but finite, where the loss bounces
  on a high plateau, looks like a steady state to them and α stays put (the
  hyper-cliff of experiment 13). The energy of AE-10 is not allowed to rise:
  while the low-passed loss stays more than a fraction ``margin`` above the
  best level seen so far, α falls by ``rate`` in log space per step (α
  halves in ``log 2 / rate`` steps), until the loss is back within the
  margin. With ``forget`` f < 1 the best level forgets upward (a horizon
  of ``1 / (1 - f)`` steps), so a loss that has settled on a higher level
  becomes the reference again; the default f = 1 is a running minimum,
  which can pin α at the floor of Ω after one early bump, while f < 1 lets
  α climb back on a plateau that is too high (measured trade-off in
  ``docs/laws.md``, AE-10). ``√V*`` (the loss's own noise scale) keeps the
  test from firing on noise when the best level is near 0. The relative
  test is invariant to the loss scale. Place it before :func:`budget`, whose
  trust region bounds the cut like any other step. Not in the presets by
  default: pass ``safety=True`` to :func:`ae_jax.canonical_laws`.

  Args:
    coefficient: the step-size coefficient (log-parametrised).
    margin: m, the tolerated relative rise of the loss level above its best.
    rate: r, the log-step cut per step while the test fires.
    forget: f in (0, 1], how much of the best level survives each step
      when the loss sits above it (1: a running minimum).
    smooth: AE-9: the indicator becomes ``sigmoid(e_t / τ)``; ``True`` uses
      :data:`DEFAULT_TEMPERATURE`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` over the coefficients.

  Examples:
    >>> import ae_jax as ae
    >>> law = ae.laws.safety("learning_rate", margin=0.1, rate=0.05)

  References:
    Armijo, `Minimization of Functions Having Lipschitz Continuous First
    Partial Derivatives <https://doi.org/10.2140/pjm.1966.16.1>`_, Pacific
    Journal of Mathematics 16(1), 1966 (accept a rate only while the
    objective decreases enough); Khalil, Nonlinear Systems, 3rd ed.,
    Prentice Hall 2002, ch. 4 (Lyapunov stability).
  """
  temp = temperature(smooth)
  check_positive("ae_jax.laws.safety: ", margin=margin, rate=rate)
  if not isinstance(forget, jax.core.Tracer) and not 0.0 < forget <= 1.0:
    raise ValueError(f"ae_jax.laws.safety: forget must lie in (0, 1], got "
                     f"{forget}")

  def init_fn(params):
    _check_names("safety", [coefficient], params)
    dtype = params[coefficient].dtype
    return SafetyState(best=jnp.full([], jnp.inf, dtype))

  def update_fn(updates, state, params=None, *, signals, **extra_args):
    del params, extra_args
    level = jnp.asarray(signals.loss_mean, state.best.dtype)
    # The best level forgets upward at 1 - forget per step, so a loss that
    # has settled on a higher level becomes the reference again; a
    # non-finite level or best (the initial inf) is not relaxed toward, so
    # f = 1 is exactly the running minimum.
    prev = state.best
    finite = jnp.isfinite(prev) & jnp.isfinite(level)
    relaxed = jnp.where(finite, prev + (1 - forget) * (level - prev), prev)
    best = jnp.minimum(relaxed, level)
    scale = jnp.abs(best) + jnp.sqrt(signals.V_star) + _TINY
    fire = gate((level - best) / scale - margin, temp)
    return _add(updates, coefficient, -rate * fire), SafetyState(best=best)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)



def lyapunov_energy(loss_level, z: Mapping[str, Any], geometry: Geometry, *,
                    weight=0.05):
  """AE-10's closed-loop energy, exposed for monitoring.

  .. math::

    \\mathcal V_t = \\mathrm{LP}(\\ell(\\theta_t))
      + \\tfrac{\\gamma}{2}\\|z_t - \\bar z\\|^2 + \\psi_\\Omega(z_t)
  """
  total = jnp.asarray(loss_level)
  names = list(z)
  if not names:
    return total
  # One vector over the coefficients (a kernel per coefficient otherwise).
  values = jnp.stack([jnp.asarray(z[n]) for n in names])
  anchor = jnp.stack([jnp.asarray(geometry.anchor[n], values.dtype)
                      for n in names])
  terms = (0.5 * weight * jnp.square(values - anchor)
           + _barriers([z[n] for n in names],
                       [geometry.lower[n] for n in names],
                       [geometry.upper[n] for n in names],
                       [geometry.width[n] for n in names]))
  return total + jnp.sum(terms)

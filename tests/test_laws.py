"""The AE laws (AE-2 ... AE-8, AE-10), each in isolation, against hand-computed numbers."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ae_jax as ae
from ae_jax import laws
from ae_jax import measurement
from ae_jax.coefficient import Coefficient
from ae_jax.laws import DriveGains

# Two coefficients: α (log, [1e-4, 1], anchor 1e-2) and β (linear, [0, 0.99],
# anchor 0.9); a third, σ, log-parametrised and unbounded above.
from ae_jax import _controller as controller_lib  # noqa: E402

SPECS = (
    Coefficient("learning_rate", 0.1, 1e-4, 1.0, 1e-2, "log").resolve(),
    Coefficient("momentum", 0.5, 0.0, 0.99, 0.9, "linear").resolve(),
    Coefficient("sigma", 1e-3, 0.0, math.inf, None, "log").resolve(),
)
GEO = controller_lib.geometry(SPECS)
VALUES = {c.name: c.init for c in SPECS}
Z = {c.name: jnp.asarray(c.to_z(c.init), jnp.float32) for c in SPECS}


def signals(**fields):
  return measurement.init_signals()._replace(
      **{k: jnp.asarray(v, jnp.float32) for k, v in fields.items()})


def apply(law, sig, z=None, values=None, updates=None, state=None):
  """One jitted law update from zero updates; returns ``(updates, state)``."""
  z = Z if z is None else z
  values = VALUES if values is None else values
  values = {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
  law = optax.with_extra_args_support(law)
  if state is None:
    state = law.init(z)
  if updates is None:
    updates = jax.tree.map(jnp.zeros_like, z)
  return jax.jit(lambda u, s, z, sig, v: law.update(
      u, s, z, signals=sig, coefficients=v, geometry=GEO))(
          updates, state, z, sig, values)


def as_floats(tree):
  return {k: float(v) for k, v in tree.items()}


# -- AE-2: drive --------------------------------------------------------------

# T = -0.5 with scale 2 (normalised: -0.25), R = 0.3 with scale 0.6
# (normalised: 0.5), V / V* = 2, ρ = 0.8 (ρ - ρ* = 0.5).
SIG = dict(T=-0.5, T_scale=2.0, R=0.3, R_scale=0.6, V=2.0, V_star=1.0,
           rho=0.8, S=1.0, S_star=1.0)


@pytest.mark.parametrize("gains, normalize, center, expected", [
    (DriveGains(progress=2.0), True, True, 2.0 * math.tanh(0.25)),
    (DriveGains(progress=2.0), False, True, 2.0 * math.tanh(0.5)),
    (DriveGains(variance=1.5), True, True,
     -1.5 * (math.log1p(math.e) - math.log(2.0))),
    (DriveGains(variance=1.5), True, False, -1.5 * math.log1p(math.exp(2.0))),
    (DriveGains(variance=-0.5), True, True,
     0.5 * (math.log1p(math.e) - math.log(2.0))),
    (DriveGains(reward=3.0), True, True, 3.0 * math.tanh(0.5)),
    (DriveGains(reward=3.0), False, True, 3.0 * math.tanh(0.3)),
    (DriveGains(phase=0.4), True, True, 0.4 * 0.5),
    (DriveGains(phase_tanh=0.8), True, True, 0.8 * math.tanh(0.5)),
    (DriveGains(leak=0.05), True, True, -0.05 * (math.log(0.1)
                                                  - math.log(1e-2))),
])
def test_drive_terms(gains, normalize, center, expected):
  law = laws.drive({"learning_rate": gains}, rho_star=0.3,
                   normalize=normalize, center=center)
  u, _ = apply(law, signals(**SIG))
  np.testing.assert_allclose(float(u["learning_rate"]), expected, rtol=1e-5)
  assert float(u["momentum"]) == 0.0 and float(u["sigma"]) == 0.0


def test_drive_sums_terms_with_temperatures_and_adds_to_updates():
  g = DriveGains(progress=1.0, variance=1.0, reward=1.0, phase=1.0,
                 phase_tanh=1.0, leak=1.0)
  law = laws.drive({"momentum": g}, rho_star=0.0, tau_p=0.5, tau_v=2.0,
                   tau_r=4.0)
  expected = (math.tanh(0.25 / 0.5)
              - (math.log1p(math.exp(0.5)) - math.log(2.0))
              + math.tanh(0.5 / 4.0) + 0.8 + math.tanh(0.8)
              - (0.5 - 0.9))
  start = {"learning_rate": jnp.float32(1.0), "momentum": jnp.float32(0.25),
           "sigma": jnp.float32(0.0)}
  u, _ = apply(law, signals(**SIG), updates=start)
  np.testing.assert_allclose(float(u["momentum"]), 0.25 + expected,
                             rtol=1e-5)
  assert float(u["learning_rate"]) == 1.0


def test_drive_centred_variance_is_zero_at_reference():
  law = laws.drive({"learning_rate": DriveGains(variance=1.0)})
  u, _ = apply(law, signals(**dict(SIG, V=0.7, V_star=0.7)))
  assert abs(float(u["learning_rate"])) < 1e-6
  law = laws.drive({"learning_rate": DriveGains(variance=1.0)}, center=False)
  u, _ = apply(law, signals(**dict(SIG, V=0.7, V_star=0.7)))
  np.testing.assert_allclose(float(u["learning_rate"]),
                             -math.log1p(math.e), rtol=1e-6)


def test_drive_rejects_non_gains():
  with pytest.raises(ValueError, match="learning_rate"):
    laws.drive({"learning_rate": (1.0, 0.0)})


# -- AE-4: noise --------------------------------------------------------------


def _noise_u(sig, **kw):
  u, _ = apply(laws.noise("sigma", **kw), signals(**sig))
  assert float(u["learning_rate"]) == 0.0
  return float(u["sigma"])


def test_noise_stall_on_and_off():
  only_stall = dict(stall=0.5, uncertainty=0.0, instability=0.0, quality=0.0,
                    stall_threshold=0.25)
  # ε_T = 0.25 sqrt(V*) = 0.25 sqrt(4) = 0.5
  base = dict(V=4.0, V_star=4.0, S=1.0, S_star=1.0, rho=0.0)
  assert _noise_u(dict(base, T=0.4), **only_stall) == pytest.approx(0.5)
  assert _noise_u(dict(base, T=-0.4), **only_stall) == pytest.approx(0.5)
  assert _noise_u(dict(base, T=0.6), **only_stall) == 0.0
  assert _noise_u(dict(base, T=-0.6), **only_stall) == 0.0


def test_noise_terms():
  sig = dict(T=10.0, V=3.0, V_star=2.0, S=5.0, S_star=4.0, rho=0.6)
  zero = dict(stall=0.0, uncertainty=0.0, instability=0.0, quality=0.0)
  assert _noise_u(sig, **dict(zero, uncertainty=0.4)) == pytest.approx(
      0.4 * 5.0 / 4.0)
  assert _noise_u(sig, **dict(zero, instability=0.4)) == pytest.approx(
      -0.4 * 3.0 / 2.0)
  assert _noise_u(sig, **dict(zero, quality=0.2)) == pytest.approx(
      0.2 * (0.8 - 0.5))
  assert _noise_u(sig, **dict(zero, quality=0.2,
                              quality_target=0.9)) == pytest.approx(
                                  0.2 * (0.8 - 0.9))
  total = _noise_u(sig, stall=0.5, uncertainty=0.4, instability=0.4,
                   quality=0.2)
  assert total == pytest.approx(0.5 - 0.6 + 0.06, rel=1e-5)


# -- AE-7: coupling -----------------------------------------------------------


def test_coupling_matrix_times_centred_zeta():
  names = ["learning_rate", "momentum"]
  c = np.array([[0.3, -0.2], [0.5, 0.1]])
  zeta = np.array([math.log(0.1), -math.log(1 - 0.5)])
  zeta_bar = np.array([math.log(1e-2), -math.log(1 - 0.9)])
  # Default: centred and saturated, C tanh(ζ - ζ̄).
  u, _ = apply(laws.coupling(c, names), signals(**SIG))
  np.testing.assert_allclose([u["learning_rate"], u["momentum"]],
                             c @ np.tanh(zeta - zeta_bar), rtol=1e-5)
  u, _ = apply(laws.coupling(c, names, saturate=False), signals(**SIG))
  np.testing.assert_allclose([u["learning_rate"], u["momentum"]],
                             c @ (zeta - zeta_bar), rtol=1e-5)
  u, _ = apply(laws.coupling(c, names, center=False, saturate=False),
               signals(**SIG))
  np.testing.assert_allclose([u["learning_rate"], u["momentum"]], c @ zeta,
                             rtol=1e-5)
  assert float(u["sigma"]) == 0.0


def test_coupling_is_zero_at_the_anchors():
  anchors = {c.name: c.anchor for c in SPECS}
  u, _ = apply(laws.coupling(np.ones((2, 2)), ["learning_rate", "momentum"]),
               signals(**SIG), values=anchors)
  np.testing.assert_allclose(list(as_floats(u).values()), 0.0, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3), (3, 3), (2,), (1, 2)])
def test_coupling_shape_mismatch_raises(shape):
  with pytest.raises(ValueError, match="shape"):
    laws.coupling(np.zeros(shape), ["learning_rate", "momentum"])


# -- AE-3: evolve -------------------------------------------------------------


def test_evolve_scales_by_eta_far_inside():
  # Far inside Ω (no nearby bound) the barrier is ~0: Δz = η u.
  u0 = {"learning_rate": jnp.float32(2.0), "momentum": jnp.float32(-1.0),
        "sigma": jnp.float32(3.0)}
  # α at 1e-2: 4.6 z-units from each bound.
  z = dict(Z, learning_rate=jnp.float32(math.log(1e-2)))
  dz, _ = apply(laws.evolve({"learning_rate": 0.05, "sigma": 0.1}),
                signals(), z=z, updates=u0)
  np.testing.assert_allclose(float(dz["learning_rate"]), 0.05 * 2.0,
                             rtol=1e-3)
  np.testing.assert_allclose(float(dz["sigma"]), 0.3, rtol=1e-6)
  assert float(dz["momentum"]) == 0.0  # not listed: does not move


def test_evolve_barrier_pushes_inward_near_bounds():
  law = laws.evolve({"learning_rate": 0.1}, barrier_gain=1.0,
                    barrier_width=0.5)
  lo, hi = math.log(1e-4), math.log(1.0)
  sigmoid = lambda x: 1 / (1 + math.exp(-x))
  for z, sign in ((hi - 0.1, -1), (lo + 0.1, +1), (hi + 0.3, -1)):
    dz, _ = apply(law, signals(), z=dict(Z, learning_rate=jnp.float32(z)))
    push = sigmoid((z - hi) / 0.5) - sigmoid((lo - z) / 0.5)
    np.testing.assert_allclose(float(dz["learning_rate"]), -0.1 * push,
                               rtol=1e-4)
    assert sign * float(dz["learning_rate"]) > 0.02
  # far inside: ~0
  dz, _ = apply(law, signals(), z=dict(Z, learning_rate=jnp.float32(
      0.5 * (lo + hi))))
  assert abs(float(dz["learning_rate"])) < 1e-5
  # the barrier can be switched off
  dz, _ = apply(laws.evolve({"learning_rate": 0.1}, barrier_gain=0.0),
                signals(), z=dict(Z, learning_rate=jnp.float32(hi - 0.1)))
  assert float(dz["learning_rate"]) == 0.0


@pytest.mark.parametrize("lower,upper", [(-3.0, 2.0), (-math.inf, 2.0),
                                         (-3.0, math.inf),
                                         (-math.inf, math.inf)])
def test_barrier_gradient_is_the_barrier_derivative(lower, upper):
  # The closed form evolve applies equals autodiff of ψ_Ω, value and
  # second derivative (meta-gradients differentiate through the push),
  # also where a bound is infinite and its side is left out.
  z = jnp.linspace(-5.0, 5.0, 41)
  grad = jax.vmap(jax.grad(laws.barrier), (0, None, None, None))
  np.testing.assert_allclose(laws.barrier_gradient(z, lower, upper, 0.5),
                             grad(z, lower, upper, 0.5), rtol=1e-6,
                             atol=1e-7)
  hess = jax.vmap(jax.grad(jax.grad(laws.barrier)), (0, None, None, None))
  np.testing.assert_allclose(
      jax.vmap(jax.grad(laws.barrier_gradient), (0, None, None, None))(
          z, lower, upper, 0.5), hess(z, lower, upper, 0.5), rtol=1e-4,
      atol=1e-6)
  # the same ψ_Ω as the two-sided formula
  full = 0.5 * (jax.nn.softplus((z - upper) / 0.5)
                + jax.nn.softplus((lower - z) / 0.5))
  np.testing.assert_allclose(laws.barrier(z, lower, upper, 0.5), full,
                             rtol=1e-6, atol=1e-7)


def test_evolve_unbounded_coordinates_give_finite_steps():
  # σ is log-parametrised with lower 0 and upper inf: z bounds are ±inf.
  dz, _ = apply(laws.evolve({"sigma": 0.1}), signals(),
                updates=dict(jax.tree.map(jnp.zeros_like, Z),
                             sigma=jnp.float32(1.0)))
  assert float(dz["sigma"]) == pytest.approx(0.1)


# -- AE-8: gauge --------------------------------------------------------------


def test_gauge_idle_during_warmup_then_calibrates():
  law = laws.gauge("learning_rate", eta=0.01, warmup=5, calibration=0.8,
                   track_decay=0.9)
  law = optax.with_extra_args_support(law)
  state = law.init(Z)
  step = jax.jit(lambda s, sig: law.update(
      jax.tree.map(jnp.zeros_like, Z), s, Z, signals=sig,
      coefficients={k: jnp.float32(v) for k, v in VALUES.items()},
      geometry=GEO))
  sig = signals(gnorm=2.0)          # γ = α ‖g‖ = 0.1 * 2 = 0.2
  for _ in range(5):
    dz, state = step(state, sig)
    assert float(dz["learning_rate"]) == 0.0
    assert float(state.target) == 0.0
  dz, state = step(state, sig)      # step 6 > warmup: γ* = 0.8 * 0.2
  np.testing.assert_allclose(float(state.target), 0.16, rtol=1e-5)
  # η (γ* - γ) / γ* = 0.01 (0.16 - 0.2) / 0.16
  np.testing.assert_allclose(float(dz["learning_rate"]), 0.01 * (-0.25),
                             rtol=1e-4)
  # γ* stays fixed once calibrated; γ below γ* pushes α up.
  dz, state = step(state, signals(gnorm=0.8))   # γ = 0.08
  np.testing.assert_allclose(float(state.target), 0.16, rtol=1e-5)
  np.testing.assert_allclose(float(dz["learning_rate"]),
                             0.01 * (0.16 - 0.08) / 0.16, rtol=1e-4)
  assert float(dz["momentum"]) == 0.0


def test_gauge_fixed_target_and_sign():
  law = laws.gauge("learning_rate", eta=0.02, target=0.5, warmup=100)
  # γ = 0.1 * 2 = 0.2 < 0.5: push up by η (0.5 - 0.2) / 0.5
  dz, state = apply(law, signals(gnorm=2.0))
  np.testing.assert_allclose(float(dz["learning_rate"]), 0.02 * 0.6,
                             rtol=1e-5)
  # γ = 0.1 * 10 = 1 > 0.5: push down
  dz, _ = apply(law, signals(gnorm=10.0))
  np.testing.assert_allclose(float(dz["learning_rate"]), -0.02, rtol=1e-5)
  assert float(state.target) == 0.5


def test_gauge_fallback_is_active_during_warmup():
  law = laws.gauge("learning_rate", eta=0.01, warmup=100, fallback=0.4)
  dz, _ = apply(law, signals(gnorm=2.0))   # γ = 0.2, target 0.4
  np.testing.assert_allclose(float(dz["learning_rate"]), 0.01 * 0.5,
                             rtol=1e-5)


def test_gauge_rejects_bad_config():
  with pytest.raises(ValueError, match="target"):
    laws.gauge(target=0.0)
  with pytest.raises(ValueError, match="warmup"):
    laws.gauge(warmup=-1)


# -- AE-6: budget -------------------------------------------------------------


def test_budget_per_coefficient_clip():
  law = laws.budget({"learning_rate": 0.1, "momentum": 0.02, "sigma": None})
  steps = {"learning_rate": jnp.float32(0.5), "momentum": jnp.float32(-0.5),
           "sigma": jnp.float32(7.0)}
  dz, state = apply(law, signals(), updates=steps)
  chex.assert_trees_all_close(
      as_floats(dz), {"learning_rate": 0.1, "momentum": -0.02, "sigma": 7.0})
  assert float(state.dual) == 0.0          # no bound: no dual variable
  small = {"learning_rate": jnp.float32(-0.05), "momentum": jnp.float32(0.01),
           "sigma": jnp.float32(0.0)}
  dz, _ = apply(law, signals(), updates=small)
  chex.assert_trees_all_close(as_floats(dz), as_floats(small))


def test_budget_dual_grows_and_scales_steps():
  law = laws.budget(bound=0.01, eta_dual=1.0)
  steps = {"learning_rate": jnp.float32(0.3), "momentum": jnp.float32(0.4),
           "sigma": jnp.float32(0.0)}
  dz, state = apply(law, signals(), updates=steps)
  chex.assert_trees_all_close(as_floats(dz), as_floats(steps))  # λ₀ = 0
  # power ‖Δz‖² = 0.25 > B: λ = 0.25 - 0.01
  np.testing.assert_allclose(float(state.dual), 0.24, rtol=1e-5)
  dz, state = apply(law, signals(), updates=steps, state=state)
  scale = 1 / math.sqrt(1.24)
  np.testing.assert_allclose(
      [dz["learning_rate"], dz["momentum"]], [0.3 * scale, 0.4 * scale],
      rtol=1e-5)
  np.testing.assert_allclose(float(state.dual), 0.24 + 0.25 / 1.24 - 0.01,
                             rtol=1e-5)
  # below the budget the dual decays, floored at 0
  zero = jax.tree.map(jnp.zeros_like, steps)
  step = jax.jit(lambda s: law.update(zero, s, Z))
  for _ in range(43):
    _, state = step(state)
  np.testing.assert_allclose(float(state.dual),
                             0.24 + 0.25 / 1.24 - 0.01 - 0.43, atol=1e-5)
  _, state = step(state)
  _, state = step(state)
  assert float(state.dual) == 0.0


def test_budget_weights_enter_the_power():
  law = laws.budget(bound=0.01, eta_dual=2.0, weights={"momentum": 4.0})
  steps = {"learning_rate": jnp.float32(0.1), "momentum": jnp.float32(0.1),
           "sigma": jnp.float32(0.0)}
  _, state = apply(law, signals(), updates=steps)
  np.testing.assert_allclose(float(state.dual),
                             2.0 * (0.01 + 4 * 0.01 - 0.01), rtol=1e-5)


def test_budget_rejects_nonpositive_bounds():
  with pytest.raises(ValueError, match="learning_rate"):
    laws.budget({"learning_rate": 0.0})
  with pytest.raises(ValueError, match="bound"):
    laws.budget(bound=-1.0)


# -- AE-5: resonance ----------------------------------------------------------

CUT = math.log1p(0.25)


def _cut(rho, V=1.0, V_star=1.0, **kw):
  dz, _ = apply(laws.resonance("learning_rate", **kw),
                signals(rho=rho, V=V, V_star=V_star))
  assert float(dz["momentum"]) == 0.0
  return float(dz["learning_rate"])


def test_resonance_one_sided_default():
  assert _cut(0.99) == 0.0                 # steady alignment is not punished
  assert _cut(0.0) == 0.0
  assert _cut(-0.99) == pytest.approx(-CUT)
  assert _cut(-0.9) == 0.0                 # inside ρ_max = 0.95
  # variance spike: V > 4 V*
  assert _cut(0.0, V=4.5, V_star=1.0) == pytest.approx(-CUT)
  assert _cut(0.0, V=3.5, V_star=1.0) == 0.0


def test_resonance_two_sided_and_shrink():
  assert _cut(0.99, two_sided=True) == pytest.approx(-CUT)
  assert _cut(-0.99, two_sided=True) == pytest.approx(-CUT)
  assert _cut(0.5, two_sided=True) == 0.0
  assert _cut(-0.99, shrink=1.0) == pytest.approx(-math.log(2.0))
  assert _cut(0.0, V=2.5, V_star=1.0, variance_max=2.0) == pytest.approx(-CUT)
  assert _cut(-0.85, rho_max=0.8) == pytest.approx(-CUT)
  # The cut is in z = log α: α is divided by exactly 1 + shrink.
  assert math.exp(_cut(-0.99)) == pytest.approx(1 / 1.25)


# -- AE-10 enforced: the safety law ---------------------------------------------


def _safety_steps(levels, v_star=0.0, **kw):
  """The α-step of each call for a sequence of loss levels; the best level
  (margin 0.5 and no forgetting unless given)."""
  law = laws.safety(**{"margin": 0.5, "forget": 1.0, **kw})
  state, steps = None, []
  for level in levels:
    u, state = apply(law, signals(loss_mean=level, V_star=v_star),
                     state=state)
    steps.append(float(u["learning_rate"]))
  return steps, float(state.best)


def test_safety_cuts_alpha_only_while_the_level_sits_above_its_best():
  # best 2.0; 2.9 is 45% above (inside m = 0.5), 3.2 is 60% above (fires),
  # then a new best 1.0 makes 1.4 (40%) quiet and 1.6 (60%) fire again.
  steps, best = _safety_steps([2.0, 2.9, 3.2, 1.0, 1.4, 1.6])
  assert steps == pytest.approx([0, 0, -0.05, 0, 0, -0.05])
  assert best == 1.0
  # r and m are the law's arguments
  steps, _ = _safety_steps([2.0, 2.9], margin=0.25, rate=0.2)
  assert steps == pytest.approx([0.0, -0.2])
  # the law's default margin is 10%: 2.3 is 15% above 2.0, 2.1 only 5%
  law = laws.safety()
  _, state = apply(law, signals(loss_mean=2.0))
  assert float(apply(law, signals(loss_mean=2.3), state=state)[0][
      "learning_rate"]) == pytest.approx(-0.05)
  assert float(apply(law, signals(loss_mean=2.1), state=state)[0][
      "learning_rate"]) == 0.0


def test_safety_best_level_forgets_upward():
  # forget f: best ← min(level, best + (1 - f)(level - best)). From best 2.0
  # a level of 4.0 moves it to 4 - 2·0.9^n: 2.2, 2.38, 2.542 (4 is still
  # > 50% above each, so the law fires), 2.6878 (quiet: 4 is 48.8% above).
  steps, best = _safety_steps([2.0, 4.0, 4.0, 4.0, 4.0], forget=0.9)
  assert steps == pytest.approx([0, -0.05, -0.05, -0.05, 0])
  assert best == pytest.approx(4 - 2 * 0.9 ** 4)
  # without forgetting it would fire for as long as the level stays up
  steps, best = _safety_steps([2.0, 4.0, 4.0, 4.0, 4.0])
  assert steps == pytest.approx([0, -0.05, -0.05, -0.05, -0.05]) and best == 2
  # a lower level still resets it at once
  _, best = _safety_steps([2.0, 4.0, 1.0], forget=0.9)
  assert best == 1.0
  # an infinite level leaves the best level alone (with or without
  # forgetting), so the law still fires on the next high level
  for forget in (1.0, 0.9):
    steps, _ = _safety_steps([2.0, float("inf"), 4.0], forget=forget)
    assert steps[2] == pytest.approx(-0.05)
  with pytest.raises(ValueError, match="forget"):
    laws.safety(forget=0.0)
  with pytest.raises(ValueError, match="forget"):
    laws.safety(forget=1.5)


def test_safety_is_scale_invariant_and_ignores_noise_near_zero():
  base, _ = _safety_steps([1.0, 1.2, 1.7, 1.3])
  for c in (1e-3, 1e3):
    scaled, _ = _safety_steps([c * x for x in (1.0, 1.2, 1.7, 1.3)])
    assert scaled == pytest.approx(base)
  # Best 0: a rise of 1e-3 is noise when the loss's own scale is √V* = 0.01.
  quiet, _ = _safety_steps([0.0, 1e-3], v_star=1e-4)
  loud, _ = _safety_steps([0.0, 1e-3], v_star=1e-8)
  assert quiet == [0.0, 0.0] and loud[1] == pytest.approx(-0.05)


def test_safety_smooth_gate_and_validation():
  # smooth: sigmoid(e / τ), e = (3 - 2)/2 - 0.5 = 0 → half the cut
  steps, _ = _safety_steps([2.0, 3.0], smooth=0.1)
  assert steps[1] == pytest.approx(-0.025, rel=1e-5)
  with pytest.raises(ValueError, match="margin"):
    laws.safety(margin=0.0)
  with pytest.raises(ValueError, match="rate"):
    laws.safety(rate=-1.0)


# -- unknown names, chains ----------------------------------------------------

_ALPHA_ONLY = [Coefficient("learning_rate", 0.1, 1e-4, 1.0)]


@pytest.mark.parametrize("law", [
    lambda: laws.drive({"momentum": DriveGains(progress=1.0)}),
    lambda: laws.noise("momentum"),
    lambda: laws.coupling(np.zeros((2, 2)), ["learning_rate", "momentum"]),
    lambda: laws.evolve({"momentum": 0.1}),
    lambda: laws.gauge("momentum"),
    lambda: laws.budget({"momentum": 0.1}),
    lambda: laws.resonance("momentum"),
    lambda: laws.safety("momentum"),
], ids=["drive", "noise", "coupling", "evolve", "gauge", "budget",
        "resonance", "safety"])
def test_law_naming_unknown_coefficient_raises_at_build(law):
  chain = optax.chain(laws.evolve({"learning_rate": 0.1}), law())
  with pytest.raises(ValueError, match="momentum"):
    ae.controller(_ALPHA_ONLY, chain)


def test_controller_runs_a_chain_and_projects():
  # A constant upward drive runs α into its ceiling and stays there.
  ctrl = ae.controller(
      _ALPHA_ONLY,
      optax.chain(laws.drive({"learning_rate": DriveGains(phase=10.0)},
                             rho_star=-1.0),
                  laws.evolve({"learning_rate": 1.0}, barrier_gain=0.0)))
  state = ctrl.init()
  update = jax.jit(lambda s, g: ctrl.update(g, s, value=1.0, reference=g))
  g = jnp.ones(3)
  for _ in range(3):
    values, state = update(state, g)
  assert float(values["learning_rate"]) == pytest.approx(1.0)
  assert float(ae.signals(state)["rho"]) == pytest.approx(1.0)


# -- AE-10: Lyapunov energy ---------------------------------------------------


def test_lyapunov_energy_by_hand():
  softplus = lambda x: math.log1p(math.exp(x))
  lo, hi = math.log(1e-4), math.log(1.0)
  z = {"learning_rate": jnp.float32(0.2),            # past the upper bound
       "momentum": jnp.float32(0.5),
       "sigma": jnp.float32(math.log(1e-3))}
  # Barrier widths: 1% of each interval in z (at most 0.5).
  w_lr, w_mu = 0.01 * (hi - lo), 0.01 * 0.99
  assert GEO.width["learning_rate"] == pytest.approx(w_lr)
  assert GEO.width["momentum"] == pytest.approx(w_mu)
  expected = 1.5
  expected += 0.5 * 0.1 * (0.2 - math.log(1e-2))**2
  expected += w_lr * (softplus((0.2 - hi) / w_lr) + softplus((lo - 0.2) / w_lr))
  expected += 0.5 * 0.1 * (0.5 - 0.9)**2
  expected += w_mu * (softplus((0.5 - 0.99) / w_mu)
                      + softplus((0.0 - 0.5) / w_mu))
  expected += 0.0  # σ sits at its anchor, bounds ±inf: no barrier
  got = jax.jit(lambda z: laws.lyapunov_energy(1.5, z, GEO, weight=0.1))(z)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  # only the loss level moves it one-for-one
  got2 = laws.lyapunov_energy(2.5, z, GEO, weight=0.1)
  np.testing.assert_allclose(float(got2) - float(got), 1.0, rtol=1e-5)

"""The self-tuning step size: laws.hypergradient by hand, the relative
gradient clip, the preconditioned phase reference of ae.adapt, the warm start
and Ω of the presets, and α finding a rate from starts six decades apart."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ae_jax as ae
from ae_jax import laws, measurement


def _signals(rho):
  return measurement.init_signals()._replace(rho=jnp.asarray(rho, jnp.float32))


def _run_law(law, rhos):
  z = {"learning_rate": jnp.zeros([])}
  state = law.init(z)
  steps = []
  for r in rhos:
    dz, state = law.update({"learning_rate": jnp.zeros([])}, state, z,
                           signals=_signals(r))
    steps.append(float(dz["learning_rate"]))
  return np.array(steps), state


def test_hypergradient_by_hand():
  law = laws.hypergradient(gain=0.2, decay=0.5, square_decay=0.5, grow=1.2,
                           shrink=0.5)
  steps, state = _run_law(law, [1.0, 1.0, -1.0])
  # step 1: debiased means 1 and 1, h = 1, κ_0 = 0.2
  # step 2: h = 1 again, κ grew to min(0.2·1.2, 0.2) = 0.2 (capped)
  # step 3: m = (0.5·1 - 1)/(1 + 0.5) ... debiased over 3 samples with b = 0.5:
  #   mean = (0.25·1 + 0.5·1 - 1) / 1.75 = -1/7, square = 1, h = -1/7;
  #   κ_2 = 0.2 (sign held at step 2)
  np.testing.assert_allclose(steps, [0.2, 0.2, -0.2 / 7], rtol=1e-5)
  # the sign flipped at step 3: κ halves
  np.testing.assert_allclose(float(state.gain), 0.1, rtol=1e-6)


def test_hypergradient_is_bounded_and_its_gain_has_a_floor():
  law = laws.hypergradient(gain=0.2, decay=0.7, square_decay=0.99)
  # ρ jumps from 0.01 to 0.5: the fast mean outruns the slow RMS, |h| <= 1.
  steps, _ = _run_law(law, [0.01] * 30 + [0.5] * 10)
  assert np.abs(steps).max() <= 0.2 + 1e-6
  # alternating signs: κ shrinks to its floor κ_max / 20 and stays there
  _, state = _run_law(law, [1.0, -1.0] * 30)
  np.testing.assert_allclose(float(state.gain), 0.01, rtol=1e-5)


def test_hypergradient_smooth_mode_is_differentiable():
  def total(gain):
    law = laws.hypergradient(gain=gain, smooth=True)
    z = {"learning_rate": jnp.zeros([])}
    state = law.init(z)
    out = 0.0
    for r in (0.5, 0.4, -0.3, 0.2):
      dz, state = law.update({"learning_rate": jnp.zeros([])}, state, z,
                             signals=_signals(r))
      out = out + dz["learning_rate"]
    return out
  g = jax.grad(total)(0.2)
  eps = 1e-3
  fd = (total(0.2 + eps) - total(0.2 - eps)) / (2 * eps)
  np.testing.assert_allclose(float(g), float(fd), rtol=1e-2)


def test_grad_clip_scales_a_spike_to_four_times_the_running_norm():
  cfg = measurement.FilterConfig(grad_clip=4.0, grad_norm=0.5)
  state = measurement.init_filters(jnp.float32)
  factors = []
  for norm in (1.0, 1.0, 100.0):
    g = jnp.array([norm, 0.0])
    stats = measurement.gradient_stats(g, None, jnp.float32)
    sig, state = measurement.measure(state, cfg, 1.0, stats)
    factors.append(float(sig.clip))
  # The limit after two unit gradients is 4 × 1 (debiased EMA of 1, 1).
  np.testing.assert_allclose(factors, [1.0, 1.0, 0.04], rtol=1e-5)


def test_grad_clip_off_by_default_and_validated():
  assert measurement.FilterConfig().grad_clip is None
  with pytest.raises(ValueError, match="grad_clip"):
    measurement.validate_filter_config(
        measurement.FilterConfig(grad_clip=0.5))


def test_preset_clips_the_gradient_the_base_sees():
  tx = ae.ae_sgdm(0.1, momentum=0.0, momentum_bounds=(0.0, 0.0),
                  warm_start=1.0)
  p = {"w": jnp.zeros(2)}
  s = tx.init(p)
  for _ in range(3):
    _, s = tx.update({"w": jnp.array([1.0, 0.0])}, s, p, value=1.0)
  u, s = tx.update({"w": jnp.array([1000.0, 0.0])}, s, p, value=1.0)
  clip = float(ae.signals(s)["clip"])
  assert clip < 0.01
  alpha = float(ae.coefficients(s)["learning_rate"])
  np.testing.assert_allclose(float(u["w"][0]), -alpha * 1000.0 * clip,
                             rtol=1e-4)


def test_adam_phase_reference_is_the_preconditioned_momentum():
  # Two coordinates with gradient scales 1 and 100: Adam's direction
  # m/sqrt(ν) is ~(1, 1), the raw momentum ~(1, 100). A gradient (1, -0.01)
  # is aligned with the first and nearly orthogonal to the second.
  tx = ae.ae_adam(1e-3, warm_start=1.0)
  p = jnp.zeros(2)
  s = tx.init(p)
  _, s = tx.update(jnp.array([1.0, 100.0]), s, p, value=1.0)
  _, s = tx.update(jnp.array([1.0, -0.01]), s, p, value=1.0)
  rho = float(ae.signals(s)["rho"])
  d = np.array([1.0, 1.0]) / math.sqrt(2)
  g = np.array([1.0, -0.01]) / np.linalg.norm([1.0, -0.01])
  np.testing.assert_allclose(rho, g @ d, atol=1e-3)


def test_warm_start_and_omega():
  c = ae.coefficients(ae.ae_adamw(2e-3).init(jnp.zeros(3)))
  np.testing.assert_allclose(float(c["learning_rate"]), 2e-6, rtol=1e-5)
  spec = ae.presets.adamw_coefficients(2e-3)[0]
  np.testing.assert_allclose([spec.lower, spec.upper], [2e-9, 20.0],
                             rtol=1e-9)
  c = ae.coefficients(ae.ae_sgdm(0.5, warm_start=1.0).init(jnp.zeros(3)))
  np.testing.assert_allclose(float(c["learning_rate"]), 0.5, rtol=1e-6)
  with pytest.raises(ValueError, match="warm_start"):
    ae.ae_adam(1e-3, warm_start=0.0)


def _lsq(seed=0, dim=10, batch=16):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=dim)
  x = jnp.asarray(rng.normal(size=(400, batch, dim)), jnp.float32)
  y = x @ jnp.asarray(w, jnp.float32)
  return lambda theta, t: 0.5 * jnp.mean(jnp.square(x[t] @ theta - y[t]))


@pytest.mark.parametrize("start", [1e-5, 1e-3, 1.0])
def test_ae_adam_finds_a_rate_from_any_start(start):
  loss = _lsq()
  tx = ae.ae_adam(start)
  theta = jnp.zeros(10)

  @jax.jit
  def step(carry, t):
    theta, s = carry
    value, g = jax.value_and_grad(loss)(theta, t)
    u, s = tx.update(g, s, theta, value=value)
    return (optax.apply_updates(theta, u), s), value

  (theta, s), losses = jax.lax.scan(step, (theta, tx.init(theta)),
                                    jnp.arange(400))
  assert np.isfinite(np.asarray(losses)).all()
  # From 1e-5 and from 1 alike the noiseless problem is solved.
  assert float(loss(theta, 0)) < 1e-3 * float(losses[0])

"""The self-tuning step size: laws.hypergradient by hand, the relative
gradient clip, the preconditioned phase reference of ae.adapt, the warm start
and Ω of the presets, and α finding a rate from starts six decades apart."""

import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ae_jax as ae
from ae_jax import laws, measurement


def _signals(rho):
  return measurement.init_signals()._replace(rho=jnp.asarray(rho, jnp.float32))


def _scan_law(law, signals, rhos, losses=None):
  """Runs ``law`` over the steps' ρ (and losses) in one jitted scan (a
  Python loop of eager steps took most of this module's time); returns
  α's per-step Δz and the final state."""
  z = {"learning_rate": jnp.zeros([])}

  def step(state, xs):
    dz, state = law.update(z, state, z, signals=signals(*xs))
    return state, dz["learning_rate"]

  xs = tuple(jnp.asarray(x, jnp.float32) for x in (rhos, losses)
             if x is not None)
  state, steps = jax.jit(lambda s, xs: jax.lax.scan(step, s, xs))(
      law.init(z), xs)
  return np.asarray(steps), state


def _run_law(law, rhos):
  return _scan_law(law, _signals, rhos)


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


@pytest.mark.parametrize("batches_per_epoch", [None, 2])
def test_hypergradient_smooth_mode_is_differentiable(batches_per_epoch):
  def total(gain):
    law = laws.hypergradient(gain=gain, smooth=True,
                             batches_per_epoch=batches_per_epoch)
    z = {"learning_rate": jnp.zeros([])}
    state = law.init(z)
    out = 0.0
    # With epochs of 2: -0.6 turns h negative, so 0.2 (second of its
    # epoch) is not read, -0.5 (first of the next) is, and 0.3 is not.
    for r in (0.5, 0.4, -0.6, 0.2, -0.5, 0.3):
      dz, state = law.update({"learning_rate": jnp.zeros([])}, state, z,
                             signals=_signals(r))
      out = out + dz["learning_rate"]
    return out
  g = jax.grad(total)(0.2)
  eps = 1e-3
  fd = (total(0.2 + eps) - total(0.2 - eps)) / (2 * eps)
  np.testing.assert_allclose(float(g), float(fd), rtol=1e-2)


def _run_gated(law, rhos, losses):
  return _scan_law(law, lambda r, l: _signals(r)._replace(loss=l), rhos,
                   losses)[0]


def test_progress_gate_weight_by_hand():
  # decays (0.5, 0.75), losses 1 then 0 (debiased EMAs):
  #   fast = (1 + 2·0)/3 = 1/3, slow = (3·1 + 4·0)/7 = 3/7,
  #   var = (0 - 3/7)² · 0.25/0.4375 = 36/343,
  #   p = (3/7 - 1/3) / sqrt(0.5 · 36/343)
  state = laws.HypergradientState(*([jnp.zeros([])] * 8))._replace(
      count=jnp.zeros([], jnp.int32))
  # w = 3, w_p = 0.5, ζ = 0.5: w_t = w̃_p + (3 - w̃_p) sigmoid(4 (0.5 - p)),
  # w̃_p = 1 - 0.5 (1 - LP_0.99(ρ̃²)) (debiased; 1 before any ρ).
  w1, _, state1 = laws._gated_weight(state, 1.0, 3.0, 0.5, 0.5, (0.5, 0.75),
                                     None, "debiased",
                                     laws._rho_square(state, 0.99), None)
  # one sample: no improvement, no spread: p = 0; no ρ yet: w̃_p = 1
  np.testing.assert_allclose(float(w1), 1 + 2 / (1 + math.exp(-4 * 0.5)),
                             rtol=1e-6)
  state1 = laws.HypergradientState(
      jnp.ones([], jnp.int32), *([jnp.zeros([])] * 4), *state1)
  p = (3 / 7 - 1 / 3) / math.sqrt(0.5 * 36 / 343)
  # ρ̃² filtered to 0 (noise-dominated): w̃_p = w_p = 0.5
  w2, _, _ = laws._gated_weight(state1, 0.0, 3.0, 0.5, 0.5, (0.5, 0.75),
                                None, "debiased",
                                laws._rho_square(state1, 0.99), None)
  np.testing.assert_allclose(
      float(w2), 0.5 + 2.5 / (1 + math.exp(-4 * (0.5 - p))), rtol=1e-5)
  # accumulator 0.0036 after one step of decay 0.99: LP = 0.36, w̃_p = 0.68
  state3 = state1._replace(square=jnp.asarray(0.0036))
  w3, _, _ = laws._gated_weight(state3, 0.0, 3.0, 0.5, 0.5, (0.5, 0.75),
                                None, "debiased",
                                laws._rho_square(state3, 0.99), None)
  np.testing.assert_allclose(
      float(w3), 0.68 + 2.32 / (1 + math.exp(-4 * (0.5 - p))), rtol=1e-5)


@pytest.mark.parametrize("mode", ["debiased", "reference"])
def test_progress_reset_by_hand(mode):
  # decays (0.5, 0.75), losses 0 then 1 (the reference's seeded first
  # sample is 0 here too, so both modes read): fast = 2/3, slow = 4/7,
  #   var = (1 - 4/7)² · 0.25/0.4375 = 36/343, p = (4/7 - 2/3) / sqrt(0.5 ·
  #   36/343) = -0.4157. Below -r the slow accumulator restarts at the fast
  #   mean: 2/3 · (1 - 0.75²) = 7/24 (debiased: 2/3); above it, it stays
  #   0.25 · 1 = 1/4.
  state = laws.HypergradientState(*([jnp.zeros([])] * 8))._replace(
      count=jnp.zeros([], jnp.int32))
  args = (3.0, 0.5, 0.5, (0.5, 0.75))
  _, _, filters = laws._gated_weight(state, 0.0, *args, 0.4, mode,
                                     laws._rho_square(state, 0.99), None)
  state1 = laws.HypergradientState(
      jnp.ones([], jnp.int32), *([jnp.zeros([])] * 4), *filters)
  for reset, slow in ((0.4, 7 / 24), (0.5, 1 / 4), (None, 1 / 4)):
    _, _, (fast, new_slow, var) = laws._gated_weight(
        state1, 1.0, *args, reset, mode, laws._rho_square(state1, 0.99),
        None)
    np.testing.assert_allclose(float(fast), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(new_slow), slow, rtol=1e-6)
  # The step after the restart reads the slow mean as an EMA whose history
  # is the fast mean 2/3: loss 1 gives (0.75 · 2/3 · 0.4375 + 0.25) /
  # (1 - 0.75³) = 0.8108 against 0.6757 without the restart, so p rises.
  state2 = laws.HypergradientState(
      jnp.full([], 2, jnp.int32), *([jnp.zeros([])] * 4), fast,
      jnp.asarray(7 / 24), var)
  _, _, (_, slow3, _) = laws._gated_weight(
      state2, 1.0, *args, 0.4, mode, laws._rho_square(state2, 0.99), None)
  np.testing.assert_allclose(float(slow3) / (1 - 0.75**3),
                             (0.75 * 2 / 3 * 0.4375 + 0.25) / (1 - 0.75**3),
                             rtol=1e-6)
  # Smooth (AE-9): a sigmoid of (-r - p) / τ between the two.
  _, _, (_, soft, _) = laws._gated_weight(
      state1, 1.0, *args, 0.4, mode, laws._rho_square(state1, 0.99), 0.1)
  share = 1 / (1 + math.exp(-(-0.4 + 0.4157) / 0.1))
  np.testing.assert_allclose(float(soft), 0.25 + share * (7 / 24 - 0.25),
                             rtol=1e-3)


def test_progress_weight_needs_noisy_gradients():
  # On deterministic gradients (|ρ| ~ 1) the greedy rate is right and a
  # progress weight below 1 only drives α into oscillation (the reference
  # quadratic, tests/test_presets.py): the weight applied stays ~1 however
  # clearly the loss falls. On noisy ones (|ρ| ~ 0.2) it is ~w_p.
  falling = np.exp(-np.arange(200) / 50.0)
  for rms, low, high in ((1.0, 0.99, 1.0), (0.2, 0.3, 0.35)):
    weights = _gate_weights(falling, 1.0, progress_weight=0.3, rho_rms=rms)
    assert low <= weights[30:].min() and weights[30:].max() <= high, (
        rms, weights[30:].min(), weights[30:].max())


def _gate_weights(losses, weight=2.0, gate=1.0, progress_weight=1.0,
                  rho_rms=0.0, reset=laws.HYPERGRADIENT_PROGRESS_RESET):
  """The gate's weights along ``losses``, the law's ρ̃² filter held at
  LP_0.99(ρ̃²) = ``rho_rms``² (debiased)."""
  state = laws.hypergradient(progress_gate=gate).init(
      {"learning_rate": jnp.zeros([])})

  def step(state, xs):
    i, loss = xs
    state = state._replace(square=rho_rms**2 * (1 - 0.99**i))
    w, _, filters = laws._gated_weight(state, loss, weight, progress_weight,
                                       gate, laws.HYPERGRADIENT_PROGRESS_DECAYS,
                                       reset, "debiased",
                                       laws._rho_square(state, 0.99), None)
    return state._replace(count=state.count + 1, loss_fast=filters[0],
                          loss_slow=filters[1], loss_var=filters[2]), w

  steps = jnp.arange(len(losses), dtype=jnp.float32)
  _, out = jax.jit(lambda s, xs: jax.lax.scan(step, s, xs))(
      state, (steps, jnp.asarray(losses, jnp.float32)))
  return np.asarray(out)


def test_progress_gate_weighs_reversals_only_on_a_stalled_loss():
  rng = np.random.default_rng(0)
  noise = 0.01 * rng.normal(size=300)
  falling = np.exp(-np.arange(300) / 100.0) + noise
  flat = 0.5 + noise
  # While the loss falls clearly reversals weigh ~1, on a flat noisy loss ~w.
  assert _gate_weights(falling)[30:200].max() < 1.05
  assert _gate_weights(flat)[20:].mean() > 1.8
  # ae_sgdm-like weights (ρ̃² filtered to 0 here): 0.7 while the loss
  # falls, 1 once it stalls.
  assert _gate_weights(falling, 1.0, progress_weight=0.7)[30:200].max() < 0.72
  assert _gate_weights(flat, 1.0, progress_weight=0.5)[20:].mean() > 0.9
  # Through the law: on the flat loss with zero-mean ρ the gated law pulls α
  # down like w = 2 does; on the falling loss it moves it like w = 1.
  rhos = rng.normal(size=300) * 0.3
  gated = _run_gated(laws.hypergradient(reversal_weight=2.0,
                                        progress_gate=1.0), rhos, flat)
  w1, w2 = (_run_gated(laws.hypergradient(reversal_weight=w), rhos, flat)
            for w in (1.0, 2.0))
  assert gated.sum() < w1.sum() - 0.5
  assert abs(gated.sum() - w2.sum()) < abs(gated.sum() - w1.sum())
  gated = _run_gated(laws.hypergradient(reversal_weight=2.0,
                                        progress_gate=1.0), rhos[:200],
                     falling[:200])
  w1, w2 = (_run_gated(laws.hypergradient(reversal_weight=w), rhos[:200],
                       falling[:200]) for w in (1.0, 2.0))
  assert abs(gated.sum() - w1.sum()) < 0.25 * abs(gated.sum() - w2.sum())


def test_a_loss_jump_restarts_the_gate_so_the_fall_after_it_is_progress():
  rng = np.random.default_rng(2)
  noise = 0.01 * rng.normal(size=600)
  # A loss at its floor (0.05) that jumps to 3 at step 300 (a drift
  # switch) and falls back: 3 e^{-t/40} + 0.05.
  t = np.arange(300)
  losses = np.concatenate([0.05 + noise[:300],
                           3.0 * np.exp(-t / 40.0) + 0.05 + noise[300:]])
  reset = _gate_weights(losses)
  kept = _gate_weights(losses, reset=None)
  # Before the jump the restart never fires: the same weights (to rounding:
  # the two are different programs, compiled at the suite's level 0).
  np.testing.assert_allclose(reset[:300], kept[:300], rtol=1e-6)
  # After it, without the restart the slow mean remembers the floor: the
  # fall reads as a rise (p < 0, a stall) and reversals weigh ~2 for ~70
  # steps; restarted, the fall is progress (~1) from ~45 steps on (the
  # jump's own deviations hold the noise scale up until then).
  assert kept[350:370].min() > 1.95, kept[350:370]
  assert reset[350:400].max() < 1.1, reset[350:400]
  # A flat noisy loss or a clean fall has no jump: nothing changes.
  for curve in (0.5 + noise, np.exp(-np.arange(600) / 100.0) + noise):
    np.testing.assert_allclose(_gate_weights(curve),
                               _gate_weights(curve, reset=None), rtol=1e-6)


def test_presets_wire_the_restart(monkeypatch):
  # The Adam presets' chain restarts the gate at a jump; ae_sgdm's, and a
  # chain told progress_reset=None, do not.
  seen = []
  real = laws.hypergradient

  def spy(*args, **kwargs):
    seen.append(kwargs.get("progress_reset", "default"))
    return real(*args, **kwargs)

  monkeypatch.setattr(laws, "hypergradient", spy)
  ae.canonical_laws(["learning_rate"])
  ae.canonical_laws(["learning_rate"], progress_reset=None)
  ae.ae_adam(1e-3)
  ae.ae_adamw(1e-3)
  ae.ae_sgdm(0.1)
  reset = laws.HYPERGRADIENT_PROGRESS_RESET
  assert seen == [reset, None, reset, reset, laws.SGDM_PROGRESS_RESET]
  assert laws.SGDM_PROGRESS_RESET is None


def test_progress_gate_is_invariant_to_the_loss_scale_and_offset():
  rng = np.random.default_rng(1)
  rhos = rng.normal(size=200) * 0.3
  losses = np.exp(-np.arange(200) / 80.0) + 0.02 * rng.normal(size=200)
  law = lambda: laws.hypergradient(reversal_weight=2.0, progress_gate=1.0)
  np.testing.assert_allclose(_run_gated(law(), rhos, 1e3 * losses + 5.0),
                             _run_gated(law(), rhos, losses), atol=1e-4)


@pytest.mark.parametrize("kwargs, field", [
    ({"progress_gate": float("nan")}, "progress_gate"),
    ({"progress_gate": 1.0, "progress_decays": (0.99, 0.9)},
     "progress_decays"),
    ({"progress_gate": 1.0, "progress_decays": 0.9}, "progress_decays"),
    ({"progress_gate": 1.0, "progress_reset": 0.0}, "progress_reset"),
    ({"progress_gate": 1.0, "progress_reset": -3.0}, "progress_reset"),
    ({"progress_gate": 1.0, "progress_reset": float("inf")},
     "progress_reset"),
    ({"progress_gate": 1.0, "progress_reset": float("nan")},
     "progress_reset"),
    ({"progress_gate": 1.0, "progress_reset": True}, "progress_reset"),
    ({"progress_gate": 1.0, "progress_reset": "3"}, "progress_reset"),
    # checked without a gate too, where it would be silently inert
    ({"progress_gate": None, "progress_reset": -1.0}, "progress_reset"),
])
def test_progress_gate_is_validated(kwargs, field):
  with pytest.raises(ValueError, match=field):
    laws.hypergradient(**kwargs)


def test_canonical_chain_gates_unequal_weights_only():
  def law_state(**kwargs):
    z = {"learning_rate": jnp.zeros([]), "b1": jnp.zeros([])}
    state = ae.canonical_laws(["learning_rate", "b1"], **kwargs).init(z)
    found = [s for s in state if isinstance(s, laws.HypergradientState)]
    assert len(found) == 1
    return found[0]
  # The Adam presets (w = 2, w_p = 1) and ae_sgdm (w = 1, w_p = 0.5) are
  # gated; equal weights leave nothing to switch.
  assert law_state().loss_fast.shape == ()
  assert law_state(reversal_weight=laws.SGDM_REVERSAL_WEIGHT,
                   progress_weight=laws.SGDM_PROGRESS_WEIGHT
                   ).loss_fast.shape == ()
  assert law_state(reversal_weight=1.0).loss_fast == ()
  assert law_state(progress_gate=None).loss_fast == ()


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
  np.testing.assert_allclose([spec.lower, spec.upper], [2e-9, 200.0],
                             rtol=1e-9)
  # From the sweep's lowest start α can reach its highest (1e-5 -> 1).
  assert ae.presets.adamw_coefficients(1e-5)[0].upper >= 1.0
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


@pytest.mark.parametrize("preset", ["ae_sgdm", "ae_adam"])
def test_bench_knockout_of_an_inert_law_is_the_preset(preset,
                                                     default_optimization):
  # The harness rebuilds the chain for knock-outs; with σ0 = 0 the noise law
  # is inert, so "-no_noise" must be the preset step for step (ae_sgdm's
  # reversal weights once differed from the chain's defaults there).
  from ae_jax.bench import optimizers as O
  from ae_jax.bench import tasks as T
  task = T.get("quadratic")   # gradient noise: reversals happen
  key = jax.random.PRNGKey(0)
  runs = []
  for name in (preset, f"{preset}-no_noise"):
    spec = O.get(name)
    tx = spec.factory(spec.default_lr, 100)
    theta = task.init(key)

    def step(carry, t, tx=tx):
      theta, state = carry
      value, g = jax.value_and_grad(task.loss)(theta, task.batch(key, t))
      u, state = tx.update(g, state, theta, value=value)
      return (optax.apply_updates(theta, u), state), None

    # Bit for bit as users compile it (the suite's level 0 rounds the two
    # chains' programs differently in the last place).
    (theta, _), _ = jax.jit(
        lambda c, step=step: jax.lax.scan(step, c, jnp.arange(150)),
        compiler_options=default_optimization)((theta, tx.init(theta)))
    runs.append(np.asarray(jax.flatten_util.ravel_pytree(theta)[0]))
  np.testing.assert_array_equal(runs[0], runs[1])


# -- the alternation rule and the travel cap (ae_sgdm on Rosenbrock) --------


def test_hypergradient_alternation_reads_a_flip_as_a_reversal():
  kw = dict(gain=0.2, decay=0.5, square_decay=0.5, grow=1.2, shrink=0.5)
  law = laws.hypergradient(alternation=0.5, **kw)
  plain = laws.hypergradient(**kw)
  # ρ = 0.8 then -0.8: ρ_t ρ_{t-1} = -0.64 < -0.5, read as a full reversal
  np.testing.assert_allclose(_run_law(law, [0.8, -0.8])[0],
                             _run_law(plain, [0.8, -1.0])[0], rtol=1e-6)
  # 0.6 then -0.6 (-0.36): read as measured
  np.testing.assert_allclose(_run_law(law, [0.6, -0.6])[0],
                             _run_law(plain, [0.6, -0.6])[0], rtol=1e-6)
  # the measured ρ is what the next step compares with, not the -1 read
  _, state = _run_law(law, [0.8, -0.8])
  np.testing.assert_allclose(float(state.rho_last), -0.8, rtol=1e-6)
  # A sustained oscillation: without the rule the flips shrink κ to its
  # floor and α holds; with it α falls.
  osc = [1.0, -1.0] * 20
  assert _run_law(law, osc)[0].sum() < -3.0
  assert abs(_run_law(plain, osc)[0].sum()) < 0.3
  assert plain.init({"learning_rate": jnp.zeros([])}).rho_last == ()
  for bad in (0.0, 1.5, -0.5):
    with pytest.raises(ValueError, match="alternation"):
      laws.hypergradient(alternation=bad)


def _rosenbrock(p):
  x = p["x"]
  return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def _scan(tx, loss_fn, params, steps, record):
  """``steps`` full-batch updates of ``tx`` on ``loss_fn`` (traceable):
  ``record(loss, updates)`` stacked per step, the final parameters and the
  final state."""
  def body(carry, _):
    p, s = carry
    value, g = jax.value_and_grad(loss_fn)(p)
    u, s = tx.update(g, s, p, value=value)
    return (optax.apply_updates(p, u), s), record(value, u)

  (p, s), out = jax.lax.scan(body, (params, tx.init(params)), None,
                             length=steps)
  return out, p, s


def _rosenbrock_scan(tx, x0, steps):
  """``steps`` updates of ``tx`` on Rosenbrock from ``x0`` (traceable): the
  step lengths ‖Δθ‖, the final parameters and the final state."""
  return _scan(tx, _rosenbrock, {"x": x0}, steps,
               lambda value, u: optax.tree.norm(u))


def _rosenbrock_run(tx, x0, steps):
  """Step lengths ‖Δθ‖, the final f and the final state."""
  lengths, p, s = _rosenbrock_scan(tx, x0, steps)
  return np.asarray(lengths, np.float64), float(_rosenbrock(p)), s


@pytest.mark.parametrize("delayed", [False, True])
def test_travel_cap_bounds_each_step_by_the_road_travelled(delayed):
  # ae_sgdm from 1000x its default rate: the warm start's first step alone
  # (α = 0.1, ‖g‖ ~ 230) threw Rosenbrock's iterate out to f ~ 1e8.
  x0 = jnp.array([-1.2, 1.0])
  r0 = ae.presets.TRAVEL_RADIUS * (1.0 + float(jnp.linalg.norm(x0)))
  cap = ae.presets.TRAVEL_CAP
  lengths, final, state = _rosenbrock_run(
      ae.ae_sgdm(100.0, delayed=delayed), x0, 2000)
  np.testing.assert_allclose(lengths[0], cap * r0, rtol=1e-4)
  before = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
  assert np.all(lengths <= cap * (before + r0) * (1 + 1e-4))
  np.testing.assert_allclose(float(state.travel.path), lengths.sum(),
                             rtol=1e-3)
  assert final < 1e-6
  # Without the cap the same start's first step is a thousand times longer.
  free, _, _ = _rosenbrock_run(ae.ae_sgdm(100.0, delayed=delayed,
                                          travel_cap=None), x0, 2)
  assert free[0] > 200 * cap * r0


def test_travel_cap_sees_a_traced_rate():
  # The robustness sweep vmaps the start: the preset is then built at its
  # default and adapt's step scale carries the rest; the cap must measure
  # the step the base applies, so the traced run is the numeric one.
  x0 = {"x": jnp.array([-1.2, 1.0])}

  def first_length(lr):
    tx = ae.ae_sgdm(lr)
    value, g = jax.value_and_grad(_rosenbrock)(x0)
    u, _ = tx.update(g, tx.init(x0), x0, value=value)
    return optax.tree.norm(u)

  traced = jax.vmap(first_length)(jnp.array([0.1, 100.0]))
  numeric = [float(first_length(0.1)), float(first_length(100.0))]
  np.testing.assert_allclose(np.asarray(traced), numeric, rtol=1e-5)
  assert numeric[1] < 10 * numeric[0]   # capped: not 1000x longer


def test_travel_cap_needs_an_ema_momentum_base():
  chain = ae.canonical_laws(["learning_rate"])
  with pytest.raises(ValueError, match="travel_cap needs a base whose "
                                       "momentum is an EMA"):
    ae.adapt(ae.injected(optax.adam, learning_rate=1e-3), ["learning_rate"],
             chain, travel_cap=1.0)
  sgd = ae.injected(ae.ema_sgd, learning_rate=0.1, momentum=0.9)
  with pytest.raises(ValueError, match="travel_radius"):
    ae.adapt(sgd, ["learning_rate"], chain, travel_cap=1.0,
             travel_radius=-1.0)
  with pytest.raises(ValueError, match="travel_cap must be a positive"):
    ae.ae_sgdm(travel_cap=0.0)
  with pytest.raises(ValueError, match="not among the adapted"):
    ae.adapt(sgd, ["momentum"], ae.canonical_laws(["momentum"]),
             travel_cap=1.0)


def test_ae_sgdm_stays_in_rosenbrocks_valley_from_every_start():
  # Before the alternation rule about 1 run in 10 was thrown out of the
  # valley (ρ flipping +1, -1 while the stiff direction grew), and before
  # the travel cap 9 in 10 from α0 = 100. Jittered starts as in the
  # benchmark task; the start rate traced (the sweep's path).
  def final(lr, key):
    x0 = jnp.array([-1.2, 1.0]) + 0.1 * jax.random.normal(key, (2,))
    return _rosenbrock(_rosenbrock_scan(ae.ae_sgdm(lr), x0, 2000)[1])

  rates = jnp.array([1e-3, 0.0464, 15.0, 100.0])
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  finals = np.asarray(jax.jit(jax.vmap(jax.vmap(final, (None, 0)),
                                       (0, None)))(rates, keys))
  assert np.all(finals < 1e-6), finals


def test_travel_cap_smooth_mode_converges_and_differentiates():
  # AE-9: with a temperature the cap is a soft min in log α (and a soft max
  # with Ω's floor); it tends to the hard cap as the temperature falls and
  # carries a finite derivative with respect to the rate.
  x0 = jnp.array([-1.2, 1.0])

  def lengths(smooth, lr=100.0):
    return _rosenbrock_run(ae.ae_sgdm(lr, smooth=smooth), x0, 6)[0]

  hard = lengths(False)
  gaps = [np.abs(lengths(t) / hard - 1).max() for t in (0.1, 0.01, 0.001)]
  assert gaps[2] < gaps[1] < gaps[0] and gaps[2] < 2e-3, gaps

  def path(lr):
    return _rosenbrock_scan(ae.ae_sgdm(lr, smooth=0.1), x0, 3)[2].travel.path

  grad = float(jax.grad(path)(100.0))
  assert np.isfinite(grad)


# -- the long horizon (ae_sgdm's step-size law while the loss falls) -------


def _signals2(rho, rho_horizon):
  return _signals(rho)._replace(
      rho_horizon=jnp.asarray(rho_horizon, jnp.float32))


def _law_means(law, pairs):
  """The law's filtered-ρ accumulator after each (ρ, ρ_H) pair."""
  z = {"learning_rate": jnp.zeros([])}
  state = law.init(z)
  means = []
  for rho, rho_h in pairs:
    _, state = law.update({"learning_rate": jnp.zeros([])}, state, z,
                          signals=_signals2(rho, rho_h))
    means.append(float(state.mean))
  return np.array(means)


def test_hypergradient_horizon_share_by_hand():
  kw = dict(gain=0.2, decay=0.5, square_decay=0.5)
  pairs = [(0.1, 0.7), (-0.1, -0.5), (-0.3, 0.4)]
  # Loss held at 0: the progress z-score is 0, so a gate ζ = -10 reads the
  # loss as falling (s = sigmoid(-40) ~ 0), ζ = +10 as stalled (s ~ 1).
  falling = laws.hypergradient(progress_gate=-10.0, horizon=True, **kw)
  stalled = laws.hypergradient(progress_gate=10.0, horizon=True, **kw)
  plain = laws.hypergradient(**kw)
  # Step 1: no measurement yet, so LP(ρ̃²) counts as 1 (noise-free): ρ
  # whole. Step 2: h_1 = 1 (a clear sign): ρ whole. Step 3: h_2 < 0 and
  # LP(ρ̃²) small (minibatch-like |ρ|): the share (1 - |h_2|)(1 - LP(ρ̃²))
  # of ρ_H.
  means = _law_means(falling, pairs)
  np.testing.assert_allclose(means[:2], _law_means(plain, pairs)[:2],
                             rtol=1e-5)
  # accumulators (decay 0.5) after 0.1, -0.1 and their debiased values
  mean, square = 0.25 * 0.1 - 0.5 * 0.1, 0.25 * 0.01 + 0.5 * 0.01
  h2 = (mean / 0.75) / math.sqrt(max(square / 0.75, (mean / 0.75) ** 2))
  share = (1 - abs(h2)) * (1 - square / 0.75)
  assert 0.6 < share < 0.7, share
  mixed = -0.3 + share * (0.4 + 0.3)
  np.testing.assert_allclose(means[2], 0.5 * mean + 0.5 * mixed, rtol=1e-5)
  # On a stalled loss the one-step ρ throughout.
  np.testing.assert_allclose(_law_means(stalled, pairs),
                             _law_means(plain, pairs), rtol=1e-5)
  with pytest.raises(ValueError, match="progress_gate"):
    laws.hypergradient(horizon=True)


def test_hypergradient_horizon_leaves_noise_free_gradients_alone():
  # ρ = +1, -1, ... (a deterministic overshoot back and forth: h ~ 0, so
  # the sign test alone would hand the whole reading to ρ_H) against a
  # displacement that says "keep going" (ρ_H = 0.5). LP(ρ̃²) = 1: no noise
  # bias to correct, so the one-step reading stays, as without a horizon.
  kw = dict(gain=0.2, decay=0.5, square_decay=0.5)
  pairs = [(1.0 if k % 2 == 0 else -1.0, 0.5) for k in range(12)]
  falling = laws.hypergradient(progress_gate=-10.0, horizon=True, **kw)
  plain = laws.hypergradient(**kw)
  np.testing.assert_allclose(_law_means(falling, pairs),
                             _law_means(plain, pairs), atol=1e-6)


def test_ae_sgdm_finishes_a_plain_quadratic_after_its_overshoot():
  # The climb from the warm start overshoots once (step ~40); then the
  # displacement remembers the long road and, read in full, said "reversal"
  # while the iterate crept back: α fell 1e4-fold and the loss sat at 1.28
  # from step 100 to 220. Deterministic gradients keep the one-step ρ.
  loss = lambda p: jnp.sum((p - 3.0) ** 2)
  values, p, _ = _scan(ae.ae_sgdm(0.1), loss, jnp.zeros(4), 200,
                       lambda value, u: value)
  values = np.asarray(values)
  assert np.any(np.diff(values[20:100]) > 0)  # the loss rose: an overshoot
  assert float(loss(p)) < 1e-3, float(loss(p))  # ... that was recovered


def _quadratic_grad(p):
  return jnp.sum(jnp.array([1.0, 10.0]) * p["x"] ** 2)


def test_adapt_keeps_the_displacement_and_measures_rho_against_it():
  gamma = 0.9
  chain = ae.canonical_laws(["learning_rate"], horizon=True)
  sgd = ae.injected(ae.ema_sgd, learning_rate=0.05, momentum=0.9)
  tx = ae.adapt(sgd, ["learning_rate"], chain, horizon=gamma)
  bare = ae.adapt(sgd, ["learning_rate"], chain)
  p = {"x": jnp.array([1.0, -1.0])}
  state = tx.init(p)
  np.testing.assert_array_equal(np.asarray(state.displacement["x"]), 0.0)
  assert bare.init(p).displacement == ()
  steps, expected = [], np.zeros(2)
  for _ in range(4):
    value, g = jax.value_and_grad(_quadratic_grad)(p)
    u, state = tx.update(g, state, p, value=value)
    # ρ_H of this step: cos(g_t, -D_{t-1}) (0 before any displacement)
    norm = np.linalg.norm(expected)
    want = 0.0 if norm == 0 else float(
        -np.dot(np.asarray(g["x"]), expected)
        / (np.linalg.norm(np.asarray(g["x"])) * norm))
    np.testing.assert_allclose(float(ae.signals(state)["rho_horizon"]), want,
                               atol=1e-5)
    expected = gamma * expected + np.asarray(u["x"])
    steps.append(np.asarray(u["x"]))
    p = optax.apply_updates(p, u)
  np.testing.assert_allclose(np.asarray(state.displacement["x"]), expected,
                             rtol=1e-5)
  # Without a horizon ρ_H is ρ.
  s = bare.init(p)
  value, g = jax.value_and_grad(_quadratic_grad)(p)
  _, s = bare.update(g, s, p, value=value)
  _, s = bare.update(g, s, p, value=value)
  sig = ae.signals(s)
  assert float(sig["rho_horizon"]) == float(sig["rho"])
  for bad in (0.0, 1.0, -0.5):
    with pytest.raises(ValueError, match="horizon"):
      ae.adapt(sgd, ["learning_rate"], chain, horizon=bad)


def test_sampled_statistics_read_the_displacement_on_the_same_blocks(
    monkeypatch):
  key = jax.random.PRNGKey(0)
  g, m, d = (jax.random.normal(k, (4096,)) for k in jax.random.split(key, 3))
  starts, plan = jnp.array([5, 4000], jnp.int32), (2,)
  sample = measurement.PhaseSample(starts, measurement.take_blocks(
      (m,), measurement.leaf_starts(starts, plan)))
  stats = measurement.sampled_gradient_stats((g,), sample, plan,
                                             horizon=(d,))
  (gb,), (db,) = (measurement.take_blocks((x,), (starts,)) for x in (g, d))
  scale = measurement.block_scale(4096, 2)
  np.testing.assert_allclose(float(stats.horizon_dot),
                             scale * float(jnp.sum(gb * db)), rtol=1e-5)
  np.testing.assert_allclose(float(stats.horizon_sumsq),
                             scale * float(jnp.sum(db * db)), rtol=1e-5)
  plain = measurement.sampled_gradient_stats((g,), sample, plan)
  np.testing.assert_allclose(np.asarray(stats[:6]), np.asarray(plain[:6]),
                             rtol=1e-6)
  assert plain.horizon_dot == ()
  # Exact statistics: one concatenated reduction, and per-leaf sums above
  # the concatenation limit, agree.
  exact = measurement.gradient_stats((g, m), (m, g), horizon=(d, g))
  np.testing.assert_allclose(float(exact.horizon_dot),
                             float(jnp.sum(g * d) + jnp.sum(m * g)), rtol=1e-5)
  monkeypatch.setattr(measurement, "CONCAT_LIMIT", 0)
  per_leaf = measurement.gradient_stats((g, m), (m, g), horizon=(d, g))
  np.testing.assert_allclose(np.asarray(per_leaf), np.asarray(exact),
                             rtol=1e-5)


# -- the overshoot rule: a clipped gradient while the loss rises ------------


def _run_overshoot(law, steps):
  """``steps``: (ρ, clip scale, loss) per step, the running loss mean 1."""
  z = {"learning_rate": jnp.zeros([])}
  state, out = law.init(z), []
  for rho, clip, loss in steps:
    sig = _signals(rho)._replace(clip=jnp.float32(clip),
                                 loss=jnp.float32(loss),
                                 loss_mean=jnp.float32(1.0))
    dz, state = law.update(z, state, z, signals=sig)
    out.append(float(dz["learning_rate"]))
  return np.array(out), state


def test_overshoot_needs_the_clip_and_a_rising_loss():
  law = laws.hypergradient(gain=0.2, decay=0.5, square_decay=0.5)
  # the same law fed calm steps with the ρ it should have read
  as_read = lambda rhos: _run_overshoot(law, [(r, 1.0, 1.0) for r in rhos])[0]
  # clipped while the loss rose: read as ρ = -1
  np.testing.assert_allclose(
      _run_overshoot(law, [(0.5, 1.0, 1.0), (0.5, 0.3, 2.0)])[0],
      as_read([0.5, -1.0]), rtol=1e-6)
  # clipped with the loss below its mean, or the loss up unclipped: as measured
  for clip, loss in ((0.3, 0.5), (1.0, 2.0)):
    np.testing.assert_allclose(
        _run_overshoot(law, [(0.5, 1.0, 1.0), (0.5, clip, loss)])[0],
        as_read([0.5, 0.5]), rtol=1e-6)


def test_overshoot_steps_ignores_a_lone_spike():
  kw = dict(gain=0.2, decay=0.5, square_decay=0.5)
  law = laws.hypergradient(overshoot_steps=2, **kw)
  plain = laws.hypergradient(**kw)
  as_read = lambda rhos: _run_overshoot(plain, [(r, 1.0, 1.0) for r in rhos])[0]
  spike = (0.5, 0.3, 2.0)
  # a lone clipped, rising step is read as measured; the second in a row as
  # a reversal, and so is every one after it; a calm step resets the count
  got, state = _run_overshoot(law, [(0.5, 1.0, 1.0), spike, spike, spike,
                                    (0.5, 1.0, 1.0), spike])
  np.testing.assert_allclose(got, as_read([0.5, 0.5, -1.0, -1.0, 0.5, 0.5]),
                             rtol=1e-6)
  assert int(state.streak) == 1
  assert plain.init({"learning_rate": jnp.zeros([])}).streak == ()
  # n = 3: the third in a row is the first reversal; the count saturates
  three = laws.hypergradient(overshoot_steps=3, **kw)
  got, state = _run_overshoot(three, [spike] * 5)
  np.testing.assert_allclose(got, as_read([0.5, 0.5, -1.0, -1.0, -1.0]),
                             rtol=1e-6)
  assert int(state.streak) == 3
  assert laws.hypergradient(overshoot_steps=np.int64(2)).init(
      {"learning_rate": jnp.zeros([])}).streak.dtype == jnp.int32
  for bad in (0, -1, 1.5, True, "2"):
    with pytest.raises(ValueError, match="overshoot_steps must be an integer"):
      laws.hypergradient(overshoot_steps=bad)


def test_presets_overshoot_steps():
  # Adam presets: 2 in a row (a lone heavy-tailed batch is no overshoot),
  # so they carry the streak; ae_sgdm reads every one (its brake at a
  # classification floor) and carries none.
  def law_state(preset):
    state = preset.init({"w": jnp.zeros(3)})
    found = [s for s in state.controller.laws
             if isinstance(s, laws.HypergradientState)]
    assert len(found) == 1
    return found[0]
  assert laws.HYPERGRADIENT_OVERSHOOT_STEPS == 2
  for preset in (ae.ae_adam(), ae.ae_adamw()):
    assert law_state(preset).streak.dtype == jnp.int32
  assert law_state(ae.ae_sgdm()).streak == ()


def test_batches_per_epoch_cuts_alpha_only_on_an_epochs_first_batches():
  kw = dict(gain=0.2, decay=0.5, square_decay=0.5, grow=1.2, shrink=0.5)
  law = laws.hypergradient(batches_per_epoch=3, **kw)
  plain = laws.hypergradient(**kw)
  # While α climbs (the last h > 0) every batch is read: the plain law.
  np.testing.assert_allclose(_run_law(law, [1.0, 0.5, 1.0, 0.8])[0],
                             _run_law(plain, [1.0, 0.5, 1.0, 0.8])[0],
                             rtol=1e-6)
  # After a reversal (h < 0) the epoch's later batches are not read, what
  # they say: α, the filters and κ hold until the next epoch's first batch.
  steps, _ = _run_law(law, [-1.0, 1.0, -1.0, -1.0])
  assert steps[0] == pytest.approx(-0.2) and steps[3] < 0
  np.testing.assert_array_equal(steps[1:3], 0.0)
  held = [_run_law(law, [-1.0] + [0.7] * n)[1] for n in (0, 2)]
  for field in ("mean", "square", "gain", "last"):
    assert getattr(held[0], field) == getattr(held[1], field), field
  # An overshoot (clipped while the loss rose) is read mid-epoch too.
  spike = (0.5, 0.3, 2.0)
  np.testing.assert_allclose(
      _run_overshoot(law, [(-1.0, 1.0, 1.0), spike])[0],
      _run_overshoot(plain, [(-1.0, 1.0, 1.0), (-1.0, 1.0, 1.0)])[0],
      rtol=1e-6)
  assert _run_overshoot(law, [(-1.0, 1.0, 1.0), spike])[0][1] < 0


@pytest.mark.parametrize("bad", [0, -8, 2.5, True, "8"])
def test_batches_per_epoch_is_validated(bad):
  with pytest.raises(ValueError, match="batches_per_epoch must be an integer"):
    laws.hypergradient(batches_per_epoch=bad)
  with pytest.raises(ValueError, match="batches_per_epoch must be an integer"):
    ae.ae_adam(batches_per_epoch=bad)
  # A custom chain holds its own step-size law: the preset cannot set it.
  with pytest.raises(ValueError, match="batches_per_epoch configures"):
    ae.ae_sgdm(batches_per_epoch=8, laws_chain=ae.canonical_laws(
        ["learning_rate", "momentum", "sigma"]))


def _shuffled_epochs(preset, steps=1000, **kwargs):
  """``preset`` on the fault suite's tanh MLP (256 examples) in shuffled
  epochs of 8 batches of 32; returns α / α0 and the full-batch loss at the
  end."""
  from test_faults import _loss, _problem  # pylint: disable=import-outside-toplevel
  params, x, y = _problem(0)
  order_key = jax.random.split(jax.random.PRNGKey(0), 3)[2]   # _problem's x key
  rate = {"ae_adam": 1e-3, "ae_sgdm": 0.1}[preset]
  tx = getattr(ae, preset)(rate, **kwargs)

  def body(carry, i):
    p, s = carry
    order = jax.random.permutation(jax.random.fold_in(order_key, i // 8), 256)
    idx = jax.lax.dynamic_slice(order, ((i % 8) * 32,), (32,))
    loss, g = jax.value_and_grad(_loss)(p, x[idx], y[idx])
    u, s = tx.update(g, s, p, value=loss)
    return (optax.apply_updates(p, u), s), None

  (p, state), _ = jax.jit(lambda: jax.lax.scan(
      body, (params, tx.init(params)), jnp.arange(steps)))()
  return (float(ae.coefficients(state)["learning_rate"]) / rate,
          float(_loss(p, x, y)))


@pytest.mark.parametrize("preset", ["ae_adam", "ae_sgdm"])
def test_batches_per_epoch_keeps_alpha_off_its_floor_in_shuffled_epochs(
    preset):
  """Told the epoch length, the step-size law cuts α only on batches
  independent of the direction, and α settles: over 1,500 steps and three
  seeds of this problem ae_adam ends at α/α0 2.9-3.3 and a full-batch loss
  of 0.0034-0.0036, against 1e-6 and 0.016-0.021 without (ae_sgdm: 1.0-1.1
  and 0.0036-0.0053 against 1e-6 and 0.011-0.014)."""
  alpha, loss = _shuffled_epochs(preset, batches_per_epoch=8)
  _, unaware = _shuffled_epochs(preset)
  assert alpha > 0.1, alpha
  assert loss < 0.7 * unaware, (loss, unaware)


@pytest.mark.xfail(strict=True, reason=(
    "known limit without batches_per_epoch (docs/laws.md, 'Batches drawn "
    "without replacement'): within a shuffled epoch the batches' gradients "
    "are negatively correlated, so near a stationary point rho reads "
    "negative at any step size and the step-size law cuts alpha to the "
    "floor of Omega; strict, so a default that fixes it flips this test"),
    raises=AssertionError)
@pytest.mark.parametrize("preset", ["ae_adam", "ae_sgdm"])
def test_alpha_stays_off_its_floor_under_shuffled_epochs(preset):
  """A tanh MLP on 256 examples in shuffled epochs of 8 batches (the fault
  suite's problem), the law not told the epoch length: alpha should settle,
  not fall to Omega's floor (1e-6 of its rate) while the training loss
  still has room: over 1,500 steps and three seeds of this problem ae_adam
  ends at a full-batch loss of 0.012-0.015, optax.adam(1e-2) at
  0.003-0.006. Drawn with replacement instead, the same runs end with alpha
  at 0.3 (ae_adam) and 0.5 (ae_sgdm) of the rate, and this test passes;
  told the epoch length (``batches_per_epoch``), it passes too (the test
  above)."""
  alpha, _ = _shuffled_epochs(preset)
  assert alpha > 1e-3, alpha   # Omega's floor is 1e-6 of the rate

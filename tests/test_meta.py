"""AE-9: smooth surrogates, gains as data, meta-gradients, ae.meta."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ae_jax as ae
from ae_jax import laws, meta

NAMES = ["learning_rate", "momentum", "sigma"]


# -- the surrogates and their limits -------------------------------------------


def test_gates_match_hand_values_and_tend_to_the_hard_gate():
  assert laws.temperature(False) is None and laws.temperature(0) is None
  assert laws.temperature(True) == laws.DEFAULT_TEMPERATURE
  np.testing.assert_allclose(laws.gate(0.2, 0.1), 1 / (1 + math.exp(-2)),
                             rtol=1e-6)
  np.testing.assert_allclose(laws.soft_max(0.0, 0.0, 0.1), 0.1 * math.log(2),
                             rtol=1e-6)
  np.testing.assert_allclose(laws.soft_min(1.0, 0.0, 0.5),
                             -0.5 * math.log1p(math.exp(-2)), rtol=1e-6)
  np.testing.assert_allclose(laws.either(0.5, 0.5), 0.75)
  x = jnp.linspace(-3.0, 3.0, 61)
  for temp in (1e-1, 1e-2, 1e-3):
    err_gate = jnp.abs(laws.gate(x + 0.05, temp) - (x + 0.05 > 0)).max()
    err_clip = jnp.abs(laws.soft_clip(x, -1.0, 2.0, temp)
                       - jnp.clip(x, -1.0, 2.0)).max()
    assert err_clip <= temp * math.log(2) + 1e-6
    assert err_gate <= 1 / (1 + math.exp(0.05 / temp)) + 1e-6
  # Infinite bounds are skipped, not turned into NaN.
  np.testing.assert_array_equal(laws.soft_clip(x, -math.inf, math.inf, 0.1),
                                x)


def test_bad_smooth_argument_is_refused():
  with pytest.raises(ValueError, match="smooth"):
    ae.ae_sgdm(0.1, smooth=-1.0)


def _quadratic_run(smooth, steps=120, start=0.3):
  """ae_sgdm on an ill-conditioned quadratic whose α hits the resonance
  clamp, the budget clips and the upper face of Ω."""
  scale = jnp.array([10.0, 1.0, 0.1])
  target = jnp.array([1.0, -2.0, 0.5])

  def loss(p):
    return 0.5 * jnp.sum(scale * jnp.square(p - target))

  # The resonance clamp and the trust region (budget) are opt-in: switched
  # on over the default chain (α warm-starts on the floor of Ω, climbs on
  # the hypergradient, presses on the ceiling and is cut on the variance
  # spikes of the stiff direction).
  chain = ae.canonical_laws(["learning_rate", "momentum", "sigma"],
                            resonance=True, budget=True, smooth=smooth)
  # The travel cap (a controller-level guard with its own smooth surrogate,
  # tests/test_self_tuning.py) is off: this run is about the laws' gates.
  tx = ae.ae_sgdm(start, 0.5, learning_rate_bounds=(1e-3, 0.35),
                  smooth=smooth, laws_chain=chain, travel_cap=None)

  def step(carry, _):
    p, s = carry
    value, grads = jax.value_and_grad(loss)(p)
    u, s = tx.update(grads, s, p, value=value)
    return (optax.apply_updates(p, u), s), ae.coefficients(s)["learning_rate"]

  p0 = jnp.zeros(3)
  (p, _), alphas = jax.lax.scan(step, (p0, tx.init(p0)), None, steps)
  return p, alphas


def test_smooth_run_converges_to_the_hard_run_as_temperature_falls(x64):
  p_hard, hard = _quadratic_run(False)
  runs = [_quadratic_run(t) for t in (0.1, 0.01, 0.001)]
  gaps = [float(jnp.abs(p - p_hard).max()) for p, _ in runs]
  assert gaps[0] > 1e-3  # the default temperature is a visible change
  assert gaps[2] < gaps[1] < gaps[0]
  assert gaps[2] < 1e-4
  np.testing.assert_allclose(runs[2][1], hard, rtol=1e-3)


def test_smooth_brake_blends_and_still_fires_on_nonfinite():
  tx = ae.ae_sgdm(0.1, smooth=True)
  p = jnp.zeros(2)
  s = tx.init(p)
  _, s_nan = tx.update(jnp.array([jnp.nan, 1.0]), s, p, value=1.0)
  assert float(ae.signals(s_nan)["brake"]) == 1.0
  assert float(ae.coefficients(s_nan)["learning_rate"]) < 0.011
  # A gradient at the limit fires half the brake.
  ctrl = ae.controller([ae.Coefficient("learning_rate", 0.1, 1e-4, 1.0)],
                       ae.laws.evolve({}), brake=ae.Brake(grad_limit=10.0),
                       smooth=True)
  _, cs = ctrl.update(jnp.array([10.0]), ctrl.init(), value=1.0)
  np.testing.assert_allclose(cs.signals.brake, 0.5, atol=1e-4)
  np.testing.assert_allclose(cs.values["learning_rate"], 0.1 * 10**-0.5,
                             rtol=1e-3)


# -- gains as data: meta-gradients against central finite differences ----------


def _meta_problem():
  """A small least-squares problem, ae_sgdm with every law active: σ > 0
  (AE-4), a reward (W_r, τ_r), W_m ≠ 0 and a short gauge warm-up. The
  resonance clamp (W_m), the gauge (η_γ), the coupling (C) and the trust
  region (budget) are opt-in and switched on here, so each gain acts; the
  drive is on with ``gains``, and the hypergradient (κ) is in the default
  chain."""
  a = jax.random.normal(jax.random.PRNGKey(0), (32, 6))
  b = jax.random.normal(jax.random.PRNGKey(1), (32,))

  def loss(p):
    return 0.5 * jnp.mean(jnp.square(a @ p - b))

  base = ae.default_gains(NAMES)
  drive = dict(base.drive)
  drive["learning_rate"] = drive["learning_rate"]._replace(reward=1.0)
  drive["momentum"] = drive["momentum"]._replace(reward=-0.2, progress=0.2)
  base = base._replace(drive=drive, phase=0.05)
  # Strongly typed leaves of one dtype: a Python float would be weakly typed
  # and recompile the jitted loss when a finite difference replaces it.
  base = jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(float)), base)

  def meta_loss(gains):
    chain = ae.canonical_laws(NAMES, gains=gains, smooth=True,
                              gauge_warmup=5, resonance=True, gauge=True,
                              coupling=True, budget=True)
    # The 1e-3 warm start keeps the travel cap (whose first radius would set
    # α whatever the gains) from binding, so every gain acts on the run.
    tx = ae.ae_sgdm(0.05, 0.5, sigma=1e-3, gains=gains, smooth=True,
                    laws_chain=chain, warm_start=1e-3)

    def step(carry, t):
      p, s = carry
      value, grads = jax.value_and_grad(loss)(p)
      u, s = tx.update(grads, s, p, value=value, reward=jnp.sin(0.3 * t))
      return (optax.apply_updates(p, u), s), None

    p0 = jnp.zeros(6)
    (p, _), _ = meta.unroll(step, (p0, tx.init(p0)), 30, remat=False)
    return loss(p)

  return base, meta_loss


@pytest.fixture(scope="module")
def meta_gradients():
  previous = jax.config.read("jax_enable_x64")
  jax.config.update("jax_enable_x64", True)
  base, meta_loss = _meta_problem()
  f = jax.jit(meta_loss)
  grads = jax.jit(jax.grad(meta_loss))(base)
  yield base, f, grads
  jax.config.update("jax_enable_x64", previous)


def _gain_paths():
  with jax.ensure_compile_time_eval():
    base, _ = _meta_problem()
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(base)[0]:
    for index in np.ndindex(np.shape(leaf)):
      out.append((jax.tree_util.keystr(path), index))
  return out


GAIN_PATHS = _gain_paths()


@pytest.mark.parametrize("path,index", GAIN_PATHS,
                         ids=[f"{p}{list(i) if i else ''}"
                              for p, i in GAIN_PATHS])
def test_meta_gradient_matches_central_differences(meta_gradients, path,
                                                   index):
  base, f, grads = meta_gradients
  flat, treedef = jax.tree_util.tree_flatten_with_path(base)
  position = [jax.tree_util.keystr(p) for p, _ in flat].index(path)
  leaves = [leaf for _, leaf in flat]
  value = np.array(leaves[position], np.float64)
  ad = float(np.asarray(jax.tree.leaves(grads)[position])[index])

  def at(x):
    moved = value.copy()
    moved[index] = x
    new = list(leaves)
    new[position] = jnp.asarray(moved)
    return float(f(jax.tree.unflatten(treedef, new)))

  h = 1e-5 * max(1.0, abs(value[index]))
  fd = (at(value[index] + h) - at(value[index] - h)) / (2 * h)
  assert abs(fd) > 1e-7, f"{path}: the gain does not act on this problem"
  assert abs(ad - fd) <= 1e-4 * abs(fd), (path, ad, fd)


def test_traced_gains_do_not_recompile():
  traces = []
  base, meta_loss = _meta_problem()

  def counted(gains):
    traces.append(1)
    return meta_loss(gains)

  f = jax.jit(counted)
  f(base)
  f(jax.tree.map(lambda x: x * 1.1, base))
  assert len(traces) == 1


# -- unroll ---------------------------------------------------------------------


def _toy_step(w):
  # What is differentiated (w) is closed over, not carried: truncation
  # stops gradients through the carry.
  def step(x, t):
    x = jnp.tanh(w * x + 0.01 * t)
    return x, x
  return step


@pytest.mark.parametrize("kwargs", [dict(remat=False), dict(remat=True),
                                    dict(remat=True, segment=7),
                                    dict(remat=False, truncate=50)])
def test_unroll_equals_a_plain_scan_in_value_and_gradient(kwargs):
  def loss(w, **kw):
    x, xs = meta.unroll(_toy_step(w), jnp.ones(3), 50, **kw)
    return jnp.sum(x) + jnp.sum(xs)

  def plain(w):
    x, xs = jax.lax.scan(_toy_step(w), jnp.ones(3), jnp.arange(50))
    return jnp.sum(x) + jnp.sum(xs)

  w = jnp.array(0.9)
  np.testing.assert_allclose(loss(w, **kwargs), plain(w), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(loss)(w, **kwargs), jax.grad(plain)(w),
                             rtol=1e-5)


def test_truncation_drops_gradient_across_windows():
  def final(w, truncate):
    x, _ = meta.unroll(_toy_step(w), jnp.ones(3), 40, truncate=truncate)
    return jnp.sum(x)

  full = jax.grad(final)(0.9, None)
  window = jax.grad(final)(0.9, 10)
  assert abs(float(window - full)) > 1e-6 * abs(float(full))

  # With truncate=1 only the last step sees w: d/dw sum(tanh(w x + c)).
  def last_step(w):
    x, _ = meta.unroll(_toy_step(jax.lax.stop_gradient(w)), jnp.ones(3), 39,
                       remat=False)
    return jnp.sum(jnp.tanh(w * x + 0.01 * 39))

  np.testing.assert_allclose(jax.grad(final)(0.9, 1), jax.grad(last_step)(0.9),
                             rtol=1e-6)


def test_remat_keeps_less_memory_for_long_unrolls():
  def grad_fn(remat):
    def loss(w):
      x, _ = meta.unroll(lambda x, t: (jnp.tanh(x @ w), None),
                         jnp.ones((1, 64)), 400, remat=remat)
      return jnp.sum(x)
    return jax.jit(jax.grad(loss))

  w = jnp.eye(64) * 0.5
  sizes = []
  for remat in (False, True):
    analysis = grad_fn(remat).lower(w).compile().memory_analysis()
    if analysis is None:
      pytest.skip("this backend reports no memory analysis")
    sizes.append(analysis.temp_size_in_bytes)
  assert sizes[1] < 0.5 * sizes[0], sizes


def test_unroll_refuses_bad_lengths():
  with pytest.raises(ValueError, match="length"):
    meta.unroll(_toy_step(1.0), jnp.ones(3), 0)
  with pytest.raises(ValueError, match="truncate"):
    meta.unroll(_toy_step(1.0), jnp.ones(3), 5, truncate=0)


# -- the meta-parametrisation and meta_train ------------------------------------


def test_reparam_is_identity_at_zero_and_keeps_gains_valid():
  base = ae.default_gains(NAMES)
  zero = meta.zeros_like_gains(base)
  for a, b in zip(jax.tree.leaves(meta.to_gains(zero, base)),
                  jax.tree.leaves(base)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  far = meta.Reparam(jax.tree.map(lambda x: jnp.full_like(x, 30.0), base))
  gains = meta.to_gains(far, base)
  assert all(0 < float(d) < 1 or float(d) == 1.0
             for d in gains.filters.values())
  assert all(float(e) > 0 for e in gains.eta.values())
  assert float(gains.drive["learning_rate"].leak) > 0


def test_meta_train_lowers_the_meta_loss_and_compiles_once():
  family = meta.least_squares_family(dim=4, n_train=32, n_val=16,
                                     batch_size=None)
  config = meta.InnerConfig(steps=30, learning_rate=0.02)
  tasks = meta.sample_tasks(family, jax.random.PRNGKey(7), 4)
  base = ae.default_gains(meta.coefficient_names(config))

  def held_out(gains):
    return float(jnp.mean(jax.vmap(
        lambda t: meta.meta_objective(gains, t, family, config))(tasks)))

  result = meta.meta_train(family, key=jax.random.PRNGKey(0), config=config,
                           meta_steps=6, tasks_per_step=2,
                           meta_optimizer=optax.adam(0.1))
  assert result.history["meta_loss"].shape == (6,)
  assert held_out(result.gains) < held_out(base) - 0.05
  assert result.history["gains"].eta["learning_rate"].shape == (6,)


def test_evaluate_reports_time_to_target_and_censors_misses():
  family = meta.least_squares_family(dim=4, n_train=32, n_val=16,
                                     batch_size=None)
  config = meta.InnerConfig(steps=20, learning_rate=0.05)
  tasks = meta.sample_tasks(family, jax.random.PRNGKey(3), 3)
  gains = ae.default_gains(meta.coefficient_names(config))
  easy = meta.evaluate(gains, family, tasks, config, target=10.0)
  never = meta.evaluate(gains, family, tasks, config, target=1e-12)
  assert np.all(easy.steps_to_target == 1) and np.all(easy.reached)
  assert np.all(never.steps_to_target == 21) and not np.any(never.reached)
  assert easy.val_loss.shape == (3, 20)
  assert easy.coefficients["learning_rate"].shape == (3, 20)


def test_inner_config_names_the_bad_preset():
  with pytest.raises(ValueError, match="preset"):
    meta.coefficient_names(meta.InnerConfig(preset="sgd"))


def test_adamw_preset_takes_traced_gains_and_gives_finite_meta_gradients():
  family = meta.least_squares_family(dim=4, n_train=32, n_val=16,
                                     batch_size=None)
  config = meta.InnerConfig(steps=4, learning_rate=0.05, preset="ae_adamw",
                            remat=False)
  task = family.sample(jax.random.PRNGKey(0))
  gains = ae.default_gains(meta.coefficient_names(config))
  assert set(gains.eta) >= {"b1", "b2", "eps", "weight_decay"}
  grads = jax.grad(lambda g: meta.meta_objective(g, task, family, config))(
      gains)
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
  assert float(jnp.abs(grads.eta["learning_rate"])) > 0

"""Bad input loses nothing: recovery after non-finite steps, configuration
mistakes caught at construction, populations with their own keys, and the
sampled statistics that every preset uses above 65,536 parameters."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ae_jax as ae
from ae_jax import measurement

A = jnp.diag(jnp.array([3.0, 1.0]))
B = jnp.array([1.0, -2.0])
OPTIMUM = -0.5 * float(B @ jnp.linalg.solve(A, B))


def _quadratic(theta):
  return 0.5 * theta @ (A @ theta) - B @ theta


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run_quadratic(tx, steps, bad_step, bad_kind):
  """``steps`` steps on the quadratic; step ``bad_step`` gets an inf gradient
  entry (kind 0) or a NaN loss (kind 1)."""

  def body(carry, t):
    theta, state = carry
    loss, grads = jax.value_and_grad(_quadratic)(theta)
    hit = t == bad_step
    grads = grads.at[0].set(jnp.where(hit & (bad_kind == 0), jnp.inf,
                                      grads[0]))
    loss = jnp.where(hit & (bad_kind == 1), jnp.nan, loss)
    updates, state = tx.update(grads, state, theta, value=loss)
    theta = optax.apply_updates(theta, updates)
    return (theta, state), (_quadratic(theta), jnp.max(jnp.abs(theta)),
                            ae.coefficients(state)["learning_rate"])

  theta = jnp.zeros(2)
  _, out = jax.lax.scan(body, (theta, tx.init(theta)), jnp.arange(steps))
  return out


def test_an_infinite_gradient_entry_costs_one_step_not_the_run():
  tx = ae.ae_sgdm(5e-2, momentum=0.0)
  losses, reach, _ = _run_quadratic(tx, 300, 10, 0)
  clean, clean_reach, _ = _run_quadratic(tx, 300, -1, 0)
  # The entry is read as 0: no jump (a ±1e6 entry at the un-braked rate
  # threw θ to 5e4 and the run never recovered: loss 3.4e9 at step 300).
  assert float(jnp.max(reach)) < 2.0 * float(jnp.max(clean_reach))
  assert np.isfinite(np.asarray(losses)).all()
  # The brake's 10x cut costs time, not the run (seen: gap 5e-5 at step 300
  # against 2e-7 without the bad step; 0.71 at the start).
  assert float(losses[-1]) - OPTIMUM < 1e-3
  assert float(clean[-1]) - OPTIMUM < 1e-6


def test_a_nan_loss_does_not_poison_the_filters():
  tx = ae.ae_adam(1e-2)
  _, _, lr = _run_quadratic(tx, 400, 50, 1)
  _, _, clean_lr = _run_quadratic(tx, 400, -1, 1)
  lr, clean_lr = np.asarray(lr), np.asarray(clean_lr)
  # The brake cuts α 10x at the bad step ...
  np.testing.assert_allclose(lr[50], 0.1 * clean_lr[50], rtol=0.1)
  # ... and that is all: the loss filters read the step as a repeat of the
  # last good loss, so no phantom variance spike keeps clamping α (feeding
  # the clamped 1e8 cut α to its floor, ~1000x, for hundreds of steps).
  assert lr[60:].min() > 0.05 * clean_lr[60:].min()
  assert lr[-1] > 0.2 * clean_lr[-1]


def test_reference_filters_still_see_the_clamped_loss():
  filters = ae.FilterConfig(mode="reference", hold_bad_loss=False)
  state = measurement.init_filters()
  stats = measurement.gradient_stats({"w": jnp.ones(2)})
  _, state = measurement.measure(state, filters, 1.0, stats)
  signals, _ = measurement.measure(state, filters, jnp.nan, stats)
  assert float(signals.T) > 1e6  # the reference's behaviour, kept for parity


def test_scheduled_hyperparameter_is_refused():
  inner = optax.inject_hyperparams(optax.sgd)(
      learning_rate=optax.linear_schedule(0.1, 0.01, 100))
  with pytest.raises(ValueError, match="'learning_rate' is a schedule"):
    ae.adapt(inner, ["learning_rate"], ae.canonical_laws(["learning_rate"]))


def test_low_precision_inner_hyperparams_are_refused():
  inner = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3, b2=0.999)
  tx = ae.adapt(inner, ["learning_rate", "b2"],
                ae.canonical_laws(["learning_rate", "b2"]))
  with pytest.raises(ValueError, match="hyperparam_dtype"):
    tx.init({"w": jnp.ones(3, jnp.bfloat16)})
  # The presets build their base with ae.injected: float32 hyperparameters.
  ae.ae_adam().init({"w": jnp.ones(3, jnp.bfloat16)})


def test_value_must_be_a_scalar():
  tx = ae.ae_adamw()
  params = {"w": jnp.ones(3)}
  with pytest.raises(TypeError, match="scalar"):
    tx.update(params, tx.init(params), params, value=jnp.ones(1))


@pytest.mark.parametrize("b2", [0.9, 0.5, 0.99])
def test_adam_accepts_any_b2_in_the_open_interval(b2):
  tx = ae.ae_adam(b2=b2)
  state = tx.init({"w": jnp.ones(2)})
  np.testing.assert_allclose(float(ae.coefficients(state)["b2"]), b2,
                             rtol=1e-6)


@pytest.mark.parametrize("build, match", [
    (lambda: ae.controller([ae.Coefficient("learning_rate", 1e-2, 1e-4, 1.0)],
                           ae.laws.evolve({"learning_rate": 0.1}),
                           brake=ae.Brake(cap={"learning_rate": -1.0})),
     r"Brake.cap\['learning_rate'\]"),
    (lambda: ae.laws.evolve({"learning_rate": -0.1}), r"eta\['learning_rate'\]"),
    (lambda: ae.laws.gauge(eta=-1.0), "eta"),
    (lambda: ae.laws.budget(eta_dual=-1.0), "eta_dual"),
    (lambda: ae.laws.resonance(shrink=-0.5), "shrink"),
    (lambda: ae.laws.resonance(rho_max=0.0), "rho_max"),
    (lambda: ae.controller(
        [ae.Coefficient("c", 1.0)], ae.laws.evolve({"c": 0.1}),
        brake=ae.Brake(scale={}, inf_value=-1.0), step_size=None),
     "inf_value"),
])
def test_bad_law_and_brake_configuration_raises(build, match):
  with pytest.raises(ValueError, match=match):
    build()


def test_reseed_gives_population_members_their_own_noise():
  tx = ae.ae_sgdm(1e-2, sigma=1e-2)
  params = jnp.zeros((4, 3))
  keys = jax.random.split(jax.random.PRNGKey(0), 4)

  @functools.partial(jax.jit, static_argnums=2)
  def one_step(params, keys, reseed):
    def member(p, k):
      state = tx.init(p)
      state = ae.reseed(state, k) if reseed else state
      updates, _ = tx.update(jnp.zeros_like(p), state, p, value=1.0)
      return updates
    return jax.vmap(member)(params, keys)

  shared = np.asarray(one_step(params, keys, False))
  own = np.asarray(one_step(params, keys, True))
  np.testing.assert_array_equal(shared[0], shared[1])  # the static seed
  assert not np.allclose(own[0], own[1])
  assert np.all(np.abs(own) > 0)


# -- sampled statistics --------------------------------------------------------


def _big_tree(key):
  k1, k2, k3 = jax.random.split(key, 3)
  return {"w": jax.random.normal(k1, (300, 256)),      # 76,800
          "v": jax.random.normal(k2, (5000,)) + 0.5,   # 5,000
          "b": jax.random.normal(k3, (17,))}           # whole, small


def test_sampled_statistics_are_close_to_exact_and_unbiased():
  grads = _big_tree(jax.random.PRNGKey(0))
  ref = jax.tree.map(lambda g, n: 0.8 * g + 0.6 * n, grads,
                     _big_tree(jax.random.PRNGKey(1)))
  plan = measurement.sample_plan(grads, 2**13)
  # Leaves in key order b, v, w: the 17-entry leaf is read whole.
  assert plan is not None and plan[0] == 0 and plan[2] > plan[1] > 0
  exact = measurement.gradient_stats(grads, ref)

  @jax.jit
  def draw(key):
    starts = measurement.draw_starts(key, grads, plan)
    sample = measurement.PhaseSample(starts, measurement.take_blocks(
        ref, measurement.leaf_starts(starts, plan)))
    return measurement.sampled_gradient_stats(grads, sample, plan)

  draws = jax.vmap(draw)(jax.random.split(jax.random.PRNGKey(2), 400))
  for field in ("sum", "sumsq", "dot", "ref_sumsq"):
    mean = float(jnp.mean(getattr(draws, field)))
    np.testing.assert_allclose(mean, float(getattr(exact, field)),
                               rtol=0.05, atol=2.0, err_msg=field)
  one = jax.tree.map(lambda x: x[0], draws)
  rho = lambda s: s.dot / jnp.sqrt(s.sumsq * s.ref_sumsq)
  np.testing.assert_allclose(float(rho(one)), float(rho(exact)), atol=0.05)


def test_many_small_leaves_take_the_exact_path():
  # 100,000 entries, over the presets' sample budget, in leaves no larger
  # than one block: a sample would read every entry, so there is none.
  leaf = measurement.SAMPLE_BLOCK
  small = {f"w{i}": jnp.ones((leaf,)) for i in range(100_000 // leaf)}
  assert measurement.sample_plan(small, 2**16) is None
  state = ae.ae_adamw(1e-3).init(small)
  assert not isinstance(state.phase_ref, measurement.PhaseSample)
  # Leaves of 1,500 entries, 90,000 in all: the budget gives each two
  # blocks, 2,048 reads of 1,500 entries, so exact too.
  over = {f"w{i}": jnp.ones((1500,)) for i in range(60)}
  assert measurement.sample_plan(over, 2**16) is None
  # One large leaf brings the blocks back.
  assert measurement.sample_plan(dict(small, big=jnp.ones(200_000)),
                                 2**16) is not None


def test_presets_sample_16k_elements_above_65536_parameters():
  # Between the sample size and EXACT_STATS_UP_TO the statistics are exact;
  # above, the blocks read about STATS_SAMPLE entries.
  mid = {"w": jnp.ones((200, 250))}                    # 50,000
  assert measurement.sample_plan(mid, 2**14) is not None
  assert measurement.sample_plan(
      mid, 2**14, exact_up_to=measurement.EXACT_STATS_UP_TO) is None
  assert not isinstance(ae.ae_adamw(1e-3).init(mid).phase_ref,
                        measurement.PhaseSample)
  big = {"w": jnp.ones((400, 250))}                    # 100,000
  state = ae.ae_adamw(1e-3).init(big)
  assert isinstance(state.phase_ref, measurement.PhaseSample)
  assert state.phase_ref.starts.size * measurement.SAMPLE_BLOCK == 2**14


def test_sampled_blocks_cover_the_edges_of_a_leaf():
  # All the mass at the two ends: windows that never run off the ends
  # would read them less often than the middle.
  leaf = jnp.zeros(4000).at[:8].set(10.0).at[-8:].set(10.0)
  grads = {"x": leaf, "y": jnp.zeros(4000)}
  plan = measurement.sample_plan(grads, 2048)
  exact = float(measurement.gradient_stats(grads).sumsq)

  def draw(key):
    starts = measurement.draw_starts(key, grads, plan)
    sample = measurement.PhaseSample(starts, measurement.take_blocks(
        grads, measurement.leaf_starts(starts, plan)))
    return measurement.sampled_gradient_stats(grads, sample, plan).sumsq

  mean = float(jnp.mean(jax.vmap(draw)(
      jax.random.split(jax.random.PRNGKey(0), 2000))))
  np.testing.assert_allclose(mean, exact, rtol=0.1)


def test_presets_on_a_large_model_use_samples_and_compile_once():
  params = _big_tree(jax.random.PRNGKey(0))
  tx = ae.ae_adamw(1e-3)
  state = tx.init(params)
  assert isinstance(state.phase_ref, measurement.PhaseSample)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    loss, grads = jax.value_and_grad(
        lambda p: sum(jnp.sum(jnp.square(x - 1.0)) for x in
                      jax.tree.leaves(p)) / 1e5)(params)
    updates, state = tx.update(grads, state, params, value=loss)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  for _ in range(30):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  assert len(traces) == 1
  assert losses[-1] < losses[0]
  signals = ae.signals(state)
  # ρ measured on the samples against the momentum kept from the last step.
  assert 0.5 < float(signals["rho"]) <= 1.0
  assert np.isfinite([float(v) for v in signals.values()]).all()


@pytest.mark.parametrize("sigma, big, advances", [
    (None, False, False),   # exact statistics, no noise: nothing draws
    (1e-3, False, True),    # parameter noise draws ξ_t
    (None, True, True),     # sampled statistics draw their blocks
])
def test_the_key_advances_only_when_something_draws(sigma, big, advances):
  n = 70_000 if big else 64
  params = {"w": jnp.full((n,), 0.1)}
  tx = ae.ae_adamw(1e-3, sigma=sigma)
  state = tx.init(params)
  _, new = jax.jit(lambda g, s, p: tx.update(g, s, p, value=jnp.float32(1.0))
                   )(params, state, params)
  same = np.array_equal(np.asarray(new.key), np.asarray(state.key))
  assert same is not advances

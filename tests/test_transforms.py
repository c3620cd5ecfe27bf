"""JAX transformations over AE optimizers: jit, vmap, grad (AE-9), and
composition with optax.chain."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ae_jax as ae

PRESETS = {"ae_sgdm": ae.ae_sgdm, "ae_adam": ae.ae_adam,
           "ae_adamw": ae.ae_adamw}


def _regression(dtype=jnp.float32):
  a = jax.random.normal(jax.random.PRNGKey(0), (16, 8), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (16,), dtype)
  return lambda p: 0.5 * jnp.mean(jnp.square(a @ p["w"] + p["b"] - b))


def _init_params(key, dtype=jnp.float32):
  return {"w": 0.1 * jax.random.normal(key, (8,), dtype),
          "b": jnp.zeros((), dtype)}


def _scan_train(tx, params, loss_fn, steps):
  def step(carry, _):
    p, s = carry
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = tx.update(g, s, p, value=loss)
    return (optax.apply_updates(p, u), s), loss

  (params, state), losses = jax.lax.scan(step, (params, tx.init(params)),
                                         None, length=steps)
  return params, state, losses


# -- jit ----------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_jit_traces_once(preset):
  tx = PRESETS[preset]()
  loss_fn = _regression()
  traces = []

  @jax.jit
  def step(p, s):
    traces.append(None)  # runs only while tracing
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = tx.update(g, s, p, value=loss)
    return optax.apply_updates(p, u), s, loss

  params = _init_params(jax.random.PRNGKey(2))
  state = tx.init(params)
  losses = []
  for _ in range(10):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  # A state whose dtypes, weak types or structure change in update would
  # retrace on the second call.
  assert len(traces) == 1
  assert step._cache_size() == 1
  assert losses[-1] < losses[0]


# -- vmap ---------------------------------------------------------------------


def test_vmap_population_matches_members():
  tx = ae.ae_adamw(1e-2)
  loss_fn = _regression()
  keys = jax.random.split(jax.random.PRNGKey(3), 4)
  population = jax.vmap(_init_params)(keys)
  run = jax.jit(lambda p: _scan_train(tx, p, loss_fn, 20))

  params, state, losses = jax.jit(jax.vmap(
      lambda p: _scan_train(tx, p, loss_fn, 20)))(population)
  assert losses.shape == (4, 20)
  lrs = ae.coefficients(state)["learning_rate"]
  assert lrs.shape == (4,)
  for i in range(4):
    member = jax.tree.map(lambda x, i=i: x[i], population)
    p_i, s_i, l_i = run(member)
    chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], params),
                                p_i, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(losses[i], l_i, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(lrs[i], ae.coefficients(s_i)["learning_rate"],
                                rtol=1e-5)
  # The members really differ (different starts, different trajectories).
  assert not np.allclose(losses[0], losses[1])


def test_vmap_over_traced_learning_rates():
  loss_fn = _regression()
  params = _init_params(jax.random.PRNGKey(4))
  rates = jnp.array([3e-3, 1e-2, 3e-2, 1e-1])
  bounds = (1e-5, 1.0)  # bounds derived from a traced rate would be traced

  def member(lr):
    tx = ae.ae_sgdm(lr, learning_rate_bounds=bounds)
    p, s, losses = _scan_train(tx, params, loss_fn, 20)
    return p, ae.coefficients(s)["learning_rate"], losses

  p_all, lr_all, l_all = jax.jit(jax.vmap(member))(rates)
  single = jax.jit(member)
  for i in range(4):
    p_i, lr_i, l_i = single(rates[i])
    chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], p_all),
                                p_i, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(l_all[i], l_i, rtol=1e-5, atol=1e-6)
    # α = exp(z) after 20 float32 steps: vmap and single compile to
    # different kernels (seen 1.6e-5 relative apart)
    chex.assert_trees_all_close(lr_all[i], lr_i, rtol=1e-4)
  # and equal to building the optimizer with a concrete Python float
  tx = ae.ae_sgdm(float(rates[2]), learning_rate_bounds=bounds)
  p_c, _, _ = jax.jit(lambda p: _scan_train(tx, p, loss_fn, 20))(params)
  chex.assert_trees_all_close(jax.tree.map(lambda x: x[2], p_all), p_c,
                              rtol=1e-5, atol=1e-6)
  # a larger starting rate makes more progress in 20 steps here
  assert float(l_all[3, -1]) < float(l_all[0, -1])


# -- grad through the laws (AE-9) --------------------------------------------

_NAMES = ["learning_rate", "momentum", "sigma"]


def _final_loss(gain, eta):
  """Final loss of 50 AE-SGDm steps, as a function of the progress gain W_p
  of α and of α's meta-step η."""
  dtype = jnp.asarray(gain).dtype
  loss_fn = _regression(dtype)
  gains = {"learning_rate": ae.laws.DriveGains(
      progress=gain, variance=1.0, phase=0.5, leak=0.01)}
  chain = ae.canonical_laws(_NAMES, gains=gains, eta={"learning_rate": eta})
  # The 1e-3 warm start: the travel cap's first radius would otherwise set α
  # whatever the gains (the preset's default since 2026-12-07).
  tx = ae.ae_sgdm(1e-2, laws_chain=chain, warm_start=1e-3)
  params, _, _ = _scan_train(tx, _init_params(jax.random.PRNGKey(5), dtype),
                             loss_fn, 50)
  return loss_fn(params)


def test_grad_through_laws_float32():
  loss, (d_gain, d_eta) = jax.jit(jax.value_and_grad(
      _final_loss, argnums=(0, 1)))(jnp.float32(1.0), jnp.float32(0.01))
  assert bool(jnp.isfinite(loss))
  assert bool(jnp.isfinite(d_gain)) and bool(jnp.isfinite(d_eta))
  assert abs(float(d_gain)) > 1e-5
  assert abs(float(d_eta)) > 1e-3


def test_grad_through_laws_matches_finite_difference_float64():
  with jax.enable_x64(True):
    gain, eta = jnp.float64(1.0), jnp.float64(0.01)
    value_and_grad = jax.jit(jax.value_and_grad(_final_loss, argnums=(0, 1)))
    _, (d_gain, d_eta) = value_and_grad(gain, eta)
    f = lambda g, e: value_and_grad(g, e)[0]  # one compilation for both
    fd_gain = (f(gain + 1e-4, eta) - f(gain - 1e-4, eta)) / 2e-4
    fd_eta = (f(gain, eta + 1e-5) - f(gain, eta - 1e-5)) / 2e-5
    assert d_gain.dtype == jnp.float64
  # Seen: d/dW_p = -2.3818e-3 and d/dη = 0.13573, both matching to ~1e-9.
  assert abs(float(d_gain)) > 1e-5 and abs(float(d_eta)) > 1e-3
  np.testing.assert_allclose(float(d_gain), float(fd_gain), rtol=1e-3)
  np.testing.assert_allclose(float(d_eta), float(fd_eta), rtol=1e-3)


# -- optax.chain ----------------------------------------------------------------


def test_chain_with_clipping_forwards_value():
  loss_fn = _regression()
  tx = optax.chain(optax.clip_by_global_norm(1.0), ae.ae_adamw(1e-3))
  params = {"w": jnp.full((8,), 10.0), "b": jnp.zeros(())}  # ‖g‖ >> 1
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = tx.update(g, s, p, value=loss)
    return optax.apply_updates(p, u), s, loss, g

  losses = []
  for _ in range(5):
    params, state, loss, grads = step(params, state)
    losses.append(float(loss))
  assert float(optax.tree.norm(grads)) > 1.0
  coefficients = ae.coefficients(state)
  assert set(coefficients) >= {"learning_rate", "b1", "b2", "eps",
                               "weight_decay", "sigma"}
  signals = ae.signals(state)
  # value= reached the AE controller inside the chain ...
  np.testing.assert_allclose(signals["loss"], losses[-1], rtol=1e-6)
  # ... which saw the clipped gradient.
  np.testing.assert_allclose(signals["gnorm"], 1.0, rtol=1e-5)
  assert losses[-1] < losses[0]

  with pytest.raises(TypeError, match="value"):
    tx.update(grads, state, params)

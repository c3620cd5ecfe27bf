"""AE-Swarm and AEEnsemble (issue #3): weights, budgets, consensus, rounds,
unequal budgets, determinism, divergence, sharding."""

import math
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ae_jax as ae
from ae_jax import swarm

SIZES = (3, 8, 1)


def tiny_data(seed=0):
  return swarm.regression_data(jax.random.PRNGKey(seed), n=96, dim=3,
                               n_train=64)


def init_params(key):
  return swarm.init_mlp(key, SIZES)


def tiny_population(m=4, seed=1, weight_decay=1e-4, lr=3e-3):
  family = swarm.ae_adamw_family(lr, weight_decay=weight_decay)
  priors = swarm.reference_priors(m, lr)
  return family, swarm.init_population(jax.random.PRNGKey(seed), init_params,
                                       family, priors)


def cfg(**kw):
  base = dict(pop_size=4, rounds=2, total_steps=40, min_steps=4, beta=50.0,
              kappa=0.2, batch_size=8, mode="chunked", dither=0.5)
  base.update(kw)
  return swarm.SwarmConfig(**base)


_ROUNDS = {}


def run_swarm(config, family, pop, key, **kw):
  """swarm.run with one compiled round per configuration (compiling the AE
  update dominates these tests' time)."""
  if config not in _ROUNDS:
    _ROUNDS[config] = swarm.make_round(config, family, swarm.mse_loss)
  return swarm.run(config, family, swarm.mse_loss, pop, tiny_data(), key,
                   round_fn=_ROUNDS[config], progress=False, **kw)


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_trees_close(a, b, rtol=1e-5, atol=1e-7):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=atol)


# -- weights and budgets -----------------------------------------------------


def test_weights_are_softmax_of_negative_scores():
  s = jnp.array([0.1, 0.3, 0.2])
  w, diverged = swarm.swarm_weights(s, 5.0)
  e = np.exp(-5.0 * np.array([0.1, 0.3, 0.2]))
  np.testing.assert_allclose(w, e / e.sum(), rtol=1e-6)
  assert not diverged.any()
  w0, _ = swarm.swarm_weights(s, 0.0)
  np.testing.assert_allclose(w0, np.full(3, 1 / 3), rtol=1e-6)


def test_nonfinite_score_gets_weight_zero():
  s = jnp.array([0.1, jnp.nan, 0.2, jnp.inf])
  w, diverged = jax.jit(swarm.swarm_weights)(s, 5.0)
  e = np.exp(-5.0 * np.array([0.0, 0.1]))
  np.testing.assert_allclose(w, [e[0] / e.sum(), 0, e[1] / e.sum(), 0],
                             rtol=1e-6)
  np.testing.assert_array_equal(diverged, [False, True, False, True])
  w_all, d_all = swarm.swarm_weights(jnp.array([jnp.nan, jnp.inf]), 5.0)
  np.testing.assert_array_equal(w_all, [0.0, 0.0])
  assert d_all.all()
  # Huge but finite scores do not overflow the softmax.
  w_big, _ = swarm.swarm_weights(jnp.array([1e30, 1e30 + 1e24]), 1.0)
  assert np.isfinite(w_big).all() and np.isclose(w_big.sum(), 1.0)


@pytest.mark.parametrize("weights,total,floor,expected", [
    ([0.5, 0.3, 0.2], 1000, 100, [500, 300, 200]),
    # The floors take 3 x 400 - 3 x 40 from the leader (the reference would
    # subtract it from the lowest-weight member: 400 - 1080 < 0).
    ([0.97, 0.01, 0.01, 0.01], 4000, 400, [2800, 400, 400, 400]),
    ([0.25, 0.25, 0.25, 0.25], 4000, 400, [1000, 1000, 1000, 1000]),
    # round(333.33) x 3 = 999: the largest remainder gets the missing step.
    ([0.3334, 0.3333, 0.3333], 1000, 0, [334, 333, 333]),
    ([0.0, 0.0, 0.0], 10, 1, [4, 3, 3]),   # no weight: even split
])
def test_budgets_hand_computed(weights, total, floor, expected):
  got = swarm.allocate_budgets(jnp.array(weights), total, floor)
  np.testing.assert_array_equal(got, expected)


def test_budgets_sum_floor_rounding_random():
  rng = np.random.default_rng(0)
  allocate = swarm.allocate_budgets
  for m in (2, 5, 16):
    for _ in range(12):
      w = rng.dirichlet(np.full(m, 0.3)).astype(np.float32)
      total = int(rng.integers(m * 10, 5000))
      floor = int(rng.integers(0, total // m + 1))
      b = np.asarray(allocate(jnp.asarray(w), total, floor))
      assert b.sum() == total and (b >= floor).all()
      theory = np.maximum(floor, np.round(w * total))
      if theory.sum() == total:
        np.testing.assert_array_equal(b, theory)
      # Monotone: a higher weight never gets fewer steps.
      order = np.argsort(w)
      assert (np.diff(b[order]) >= 0).all()


def test_budget_floor_validated():
  with pytest.raises(ValueError, match="floor"):
    swarm.allocate_budgets(jnp.ones(4), 100, 30)


@pytest.mark.parametrize("field,value,match", [
    ("pop_size", 0, "pop_size"), ("rounds", 0, "rounds"),
    ("min_steps", 20, "min_steps"), ("beta", -1.0, "beta"),
    ("kappa", 1.5, "kappa"), ("dither", -1e-3, "dither"),
    ("mode", "pmap", "mode"), ("chunk", 3, "chunk"),
    ("batch_size", 0, "batch_size"), ("consensus", "b1", "consensus"),
])
def test_config_validation_names_the_field(field, value, match):
  with pytest.raises(ValueError, match=match):
    cfg(**{field: value})


# -- consensus -----------------------------------------------------------------


def test_adamw_coefficients_match_the_preset():
  specs = ae.presets.adamw_coefficients(3e-4, weight_decay=1e-4)
  state = ae.ae_adamw(3e-4, weight_decay=1e-4).init(jnp.zeros(3))
  values = ae.coefficients(state)
  assert [c.name for c in specs] == ["learning_rate", "b1", "b2", "eps",
                                     "weight_decay", "sigma"]
  for c in specs:
    np.testing.assert_allclose(values[c.name], c.init, rtol=1e-6)
    np.testing.assert_allclose(state.controller.z[c.name], c.to_z(c.init),
                               rtol=1e-6)


def test_consensus_is_a_contraction_toward_the_weighted_mean():
  family, pop = tiny_population(m=3, weight_decay=0.0)
  # Spread β1, β2, ε too (α already differs by prior).
  ctrl = pop.opt_state.controller
  specs = {c.name: c for c in family.coefficients}
  spread = {"b1": jnp.array([0.8, 0.9, 0.95]),
            "b2": jnp.array([0.99, 0.999, 0.9999]),
            "eps": jnp.array([1e-8, 3e-7, 2e-8])}
  z = dict(ctrl.z, **{n: specs[n].to_z(v) for n, v in spread.items()})
  values = dict(ctrl.values, **spread)
  pop = pop._replace(opt_state=pop.opt_state._replace(
      controller=ctrl._replace(z=z, values=values)))
  before = swarm.member_coefficients(pop.opt_state)
  z_before = pop.opt_state.controller.z
  w = jnp.array([0.5, 0.2, 0.3])
  kappa = 0.3
  new_state, means = jax.jit(
      lambda s, w: swarm.consensus(s, w, kappa, family.coefficients))(
          pop.opt_state, w)
  after = swarm.member_coefficients(new_state)
  specs = {c.name: c for c in family.coefficients}
  coords = {"learning_rate": np.log, "eps": np.log,
            "b1": lambda v: v, "b2": lambda v: v}
  for name, to_c in coords.items():
    c_old = to_c(np.asarray(before[name], np.float64))
    c_new = to_c(np.asarray(after[name], np.float64))
    c_bar = float(np.sum(np.asarray(w) * c_old))
    np.testing.assert_allclose(means[name], c_bar, rtol=1e-5)
    np.testing.assert_allclose(np.abs(c_new - c_bar),
                               (1 - kappa) * np.abs(c_old - c_bar),
                               rtol=1e-3, atol=1e-7)
    assert specs[name].lower <= after[name].min()
    assert after[name].max() <= specs[name].upper
    # values, z and the inner hyperparams agree.
    np.testing.assert_allclose(
        specs[name].from_z(new_state.controller.z[name]), after[name],
        rtol=1e-6)
    np.testing.assert_allclose(
        new_state.inner_state.hyperparams[name], after[name], rtol=1e-6)
  # Pinned λ = 0 and σ = 0 stay untouched, bit for bit.
  for name in ("weight_decay", "sigma"):
    np.testing.assert_array_equal(after[name], before[name])
    np.testing.assert_array_equal(new_state.controller.z[name],
                                  z_before[name])
  np.testing.assert_array_equal(after["weight_decay"], 0.0)
  # κ = 0 changes nothing; κ = 1 sets every member to c̄.
  same, _ = swarm.consensus(pop.opt_state, w, 0.0, family.coefficients)
  np.testing.assert_allclose(swarm.member_coefficients(same)["b1"],
                             before["b1"], rtol=1e-6)
  full, means = swarm.consensus(pop.opt_state, w, 1.0, family.coefficients)
  np.testing.assert_allclose(swarm.member_coefficients(full)["b1"],
                             np.full(3, means["b1"]), rtol=1e-5)


def test_consensus_ignores_a_nan_member():
  family, pop = tiny_population(m=3)
  z = dict(pop.opt_state.controller.z)
  z["learning_rate"] = z["learning_rate"].at[1].set(jnp.nan)
  values = dict(pop.opt_state.controller.values)
  values["learning_rate"] = values["learning_rate"].at[1].set(jnp.nan)
  state = pop.opt_state._replace(controller=pop.opt_state.controller._replace(
      z=z, values=values))
  # Even with a positive weight, its NaN coefficient is left out of c̄.
  new_state, means = swarm.consensus(state, jnp.array([0.4, 0.3, 0.3]), 0.5,
                                     family.coefficients)
  lr = np.asarray(swarm.member_coefficients(new_state)["learning_rate"])
  assert np.isfinite(means["learning_rate"])
  assert np.isfinite(lr[[0, 2]]).all()
  expected = 0.5 * (np.log(np.asarray(pop.prior["learning_rate"])[[0, 2]])
                    + means["learning_rate"])
  np.testing.assert_allclose(np.log(lr[[0, 2]]), expected, rtol=1e-5)


def test_consensus_leaves_parameters_alone():
  family, pop = tiny_population()
  state, _ = swarm.consensus(pop.opt_state, jnp.full(4, 0.25), 0.5,
                             family.coefficients)
  # Only coefficients move: moments and counts are identical.
  assert_trees_equal(state.inner_state.inner_state,
                     pop.opt_state.inner_state.inner_state)


# -- rounds ----------------------------------------------------------------


def test_unequal_budgets_equal_single_runs_and_compile_once():
  family, pop = tiny_population()
  data = tiny_data()
  traces = []

  def loss_fn(params, x, y):
    traces.append(1)
    return swarm.mse_loss(params, x, y)

  budgets = jnp.array([3, 11, 0, 6])
  results = {}
  for mode, chunk in (("chunked", 1), ("chunked", 2), ("vmap", 1)):
    fn = jax.jit(lambda p, b, d: swarm.train(
        p, b, d, family=family, loss_fn=loss_fn, batch_size=8, mode=mode,
        chunk=chunk))
    results[mode, chunk] = fn(pop, budgets, data)
    n = len(traces)
    fn(pop, jnp.array([5, 5, 5, 5]), data)   # new budgets: no new trace
    fn(pop, jnp.array([1, 2, 3, 14]), data)
    assert len(traces) == n
  single = jax.jit(swarm.member_runner(family, swarm.mse_loss, 8))
  for i, b in enumerate(np.asarray(budgets)):
    alone, loss = single(swarm.member(pop, i), data, int(b))
    assert int(alone.steps) == b
    for (mode, chunk), (got, losses) in results.items():
      rtol = 0 if (mode, chunk) == ("chunked", 1) else 1e-5
      assert_trees_close(swarm.member(got, i).params, alone.params,
                         rtol=rtol, atol=0 if rtol == 0 else 1e-7)
      np.testing.assert_allclose(losses[i], loss, rtol=1e-5)
  assert np.isnan(results["chunked", 1][1][2])   # budget 0: no loss


def test_run_compiles_one_round_function_and_records_history():
  family, pop = tiny_population()
  traces = []

  def loss_fn(params, x, y):
    traces.append(1)
    return swarm.mse_loss(params, x, y)

  config = cfg(rounds=3, mode="chunked")
  round_fn = swarm.make_round(config, family, loss_fn)
  _, history = swarm.run(config, family, loss_fn, pop, tiny_data(),
                         jax.random.PRNGKey(0), round_fn=round_fn,
                         progress=False)
  n = len(traces)
  assert n > 0
  swarm.run(config, family, loss_fn, pop, tiny_data(), jax.random.PRNGKey(1),
            round_fn=round_fn, progress=False)
  assert len(traces) == n
  assert round_fn._cache_size() == 1
  assert history.scores.shape == (3, 4) and history.weights.shape == (3, 4)
  np.testing.assert_array_equal(history.budgets.sum(axis=1), 40)
  assert (history.budgets >= 4).all()
  np.testing.assert_array_equal(history.budgets[0], [10, 10, 10, 10])
  # Round r+1's budgets follow round r's weights.
  for r in range(2):
    np.testing.assert_array_equal(
        history.budgets[r + 1],
        swarm.allocate_budgets(jnp.asarray(history.weights[r]), 40, 4))
  np.testing.assert_allclose(history.weights.sum(axis=1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(history.best, history.scores.min(axis=1))
  assert set(history.coefficients) >= {"learning_rate", "b1", "b2", "eps"}
  std = history.coefficient_std()["learning_rate"]
  assert std.shape == (3,) and (std > 0).all()
  assert "round" in history.table() and not history.events


def test_run_is_deterministic_given_keys_and_never_copies_parameters():
  family, pop = tiny_population()
  a, ha = run_swarm(cfg(), family, pop, jax.random.PRNGKey(0))
  b, hb = run_swarm(cfg(), family, pop, jax.random.PRNGKey(0))
  assert_trees_equal(a, b)
  np.testing.assert_array_equal(ha.scores, hb.scores)
  # A different dither key: a different run.
  c, _ = run_swarm(cfg(), family, pop, jax.random.PRNGKey(7))
  assert not np.array_equal(np.asarray(a.params[0]["w"]),
                            np.asarray(c.params[0]["w"]))
  # No copying: no two members end with the same parameters.
  w = np.asarray(a.params[0]["w"]).reshape(4, -1)
  for i in range(4):
    for j in range(i + 1, 4):
      assert not np.allclose(w[i], w[j])


def test_rejuvenate_dithers_only_the_worst_member_by_its_learning_rate():
  family, pop = tiny_population()
  s = jnp.array([0.3, 0.9, jnp.nan, 0.1])   # worst finite: member 1
  key = jax.random.PRNGKey(3)
  out = jax.jit(lambda p, s: swarm.rejuvenate(p, s, 0.5, key))(pop, s)
  lr = np.asarray(pop.prior["learning_rate"])
  leaves, new = jax.tree.leaves(pop.params), jax.tree.leaves(out.params)
  keys = jax.random.split(key, len(leaves))
  for old, got, k in zip(leaves, new, keys):
    for i in (0, 2, 3):
      np.testing.assert_array_equal(got[i], old[i])
    noise = jax.random.normal(k, old.shape)[1]
    np.testing.assert_allclose(got[1], old[1] + 0.5 * lr[1] * noise,
                               rtol=1e-5, atol=1e-9)
  none = swarm.rejuvenate(pop, jnp.full(4, jnp.nan), 0.5, key)
  assert_trees_equal(none.params, pop.params)


def test_diverged_member_gets_weight_zero_and_a_log_entry():
  family, pop = tiny_population()
  params = jax.tree.map(lambda a: a.at[2].set(jnp.nan), pop.params)
  pop = pop._replace(params=params)
  with pytest.warns(RuntimeWarning, match=r"member\(s\) \[2\] diverged"):
    out, history = run_swarm(cfg(), family, pop, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(history.diverged[:, 2], True)
  assert not history.diverged[:, [0, 1, 3]].any()
  np.testing.assert_array_equal(history.weights[:, 2], 0.0)
  np.testing.assert_allclose(history.weights.sum(axis=1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(history.budgets[1, 2], 4)   # the floor
  assert len(history.events) == 2 and "round 1" in history.events[0]
  for name, v in history.coefficients.items():
    assert np.isfinite(v[:, [0, 1, 3]]).all(), name
  for leaf in jax.tree.leaves(swarm.member(out, 0)):
    assert np.isfinite(np.asarray(leaf, np.float64)).all()
  assert np.isfinite(history.best).all()


def test_population_validation():
  family = swarm.ae_adamw_family(3e-3)
  with pytest.raises(ValueError, match="leading"):
    swarm.init_population(jax.random.PRNGKey(0), init_params, family,
                          {"learning_rate": jnp.ones(3) * 3e-3,
                           "progress": jnp.ones(4), "variance": jnp.ones(4)})
  with pytest.raises(ValueError, match="outside"):
    swarm.init_population(jax.random.PRNGKey(0), init_params, family,
                          {"learning_rate": jnp.array([3e-3, 1.0]),
                           "progress": jnp.ones(2), "variance": jnp.ones(2)})
  _, pop = tiny_population()
  with pytest.raises(ValueError, match="pop_size"):
    swarm.run(cfg(pop_size=2, total_steps=8), family, swarm.mse_loss, pop,
              tiny_data(), jax.random.PRNGKey(0), progress=False)


def test_priors_diversify_members():
  family, pop = tiny_population()
  np.testing.assert_allclose(pop.prior["learning_rate"],
                             3e-3 * np.array([0.7, 0.9, 1.1, 1.3]), rtol=1e-6)
  np.testing.assert_allclose(pop.prior["progress"], [0.8, 0.9, 1.0, 1.1],
                             rtol=1e-6)
  lr = swarm.member_coefficients(pop.opt_state)["learning_rate"]
  np.testing.assert_allclose(lr, pop.prior["learning_rate"], rtol=1e-6)
  keys = np.asarray(pop.key)
  assert len({tuple(k) for k in keys}) == 4


def test_plot_history_returns_a_figure(tmp_path):
  import matplotlib
  matplotlib.use("Agg")
  family, pop = tiny_population()
  _, history = run_swarm(cfg(), family, pop, jax.random.PRNGKey(0))
  fig = swarm.plot_history(history, path=tmp_path / "h.png")
  assert len(fig.axes) >= 6
  assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


# -- AEEnsemble --------------------------------------------------------------


def test_ensemble_step_weights_and_contraction():
  family, pop = tiny_population(m=3)
  data = tiny_data()
  step = swarm.ensemble_step(family, swarm.mse_loss, beta=2.0, kappa=0.25)
  x, y = data.x_train[:16], data.y_train[:16]
  new, info = step(pop, x, y)
  losses = np.asarray(info.losses, np.float64)
  e = np.exp(-2.0 * (losses - losses.min()))
  np.testing.assert_allclose(info.weights, e / e.sum(), rtol=1e-5)
  np.testing.assert_array_equal(new.steps, 1)
  # The same members stepped alone, then nudged by hand.
  lr_after_step = []
  for i in range(3):
    m = swarm.member(pop, i)
    t = family.make(m.prior)
    loss, g = jax.value_and_grad(swarm.mse_loss)(m.params, x, y)
    _, s = t.update(g, m.opt_state, m.params, value=loss)
    lr_after_step.append(float(ae.coefficients(s)["learning_rate"]))
  c = np.log(lr_after_step)
  c_bar = float(np.sum(np.asarray(info.weights) * c))
  np.testing.assert_allclose(
      np.log(swarm.member_coefficients(new.opt_state)["learning_rate"]),
      0.75 * c + 0.25 * c_bar, rtol=1e-5)
  with pytest.raises(ValueError, match="kappa"):
    swarm.ensemble(family.coefficients, kappa=2.0)


# -- devices -----------------------------------------------------------------

SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from ae_jax import swarm
    assert jax.device_count() == 4, jax.devices()
    data = swarm.regression_data(jax.random.PRNGKey(0), n=96, dim=3,
                                 n_train=64)
    family = swarm.ae_adamw_family(3e-3)
    init = lambda k: swarm.init_mlp(k, (3, 8, 1))
    pop = swarm.init_population(jax.random.PRNGKey(1), init, family,
                                swarm.reference_priors(8, 3e-3))
    # The lock-step mode, the one to shard (chunked was checked the same way
    # when written; it gathers members across devices and takes minutes).
    for mode in ("vmap",):
      cfg = swarm.SwarmConfig(pop_size=8, rounds=2, total_steps=80,
                              min_steps=4, beta=50., kappa=0.2,
                              batch_size=8, dither=0.1, mode=mode)
      ref, h_ref = swarm.run(cfg, family, swarm.mse_loss, pop, data,
                             jax.random.PRNGKey(2), progress=False)
      mesh = jax.make_mesh((4,), ("pop",))
      got, h = swarm.run(cfg, family, swarm.mse_loss, pop, data,
                         jax.random.PRNGKey(2), mesh=mesh, progress=False)
      for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                   atol=1e-7)
        assert len(b.sharding.device_set) == 4, b.sharding
        assert b.sharding.spec[0] == "pop", b.sharding
        assert len(b.addressable_shards) == 4
        assert b.addressable_shards[0].data.shape[0] == 2
      np.testing.assert_allclose(h.scores, h_ref.scores, rtol=1e-5)
      np.testing.assert_array_equal(h.budgets, h_ref.budgets)
    print("SHARDED-OK")
""")


def test_sharded_population_equals_single_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4 "
             + os.environ.get("XLA_FLAGS", ""))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  out = subprocess.run([sys.executable, "-c", SHARDED], env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "SHARDED-OK" in out.stdout


def test_shard_population_validates_the_mesh():
  _, pop = tiny_population(m=3)
  mesh = jax.make_mesh((1,), ("pop",))   # Explicit axes: made Auto
  with pytest.raises(ValueError, match="no axis"):
    swarm.shard_population(pop, mesh, axis="data")
  sharded = swarm.shard_population(pop, mesh)
  assert_trees_equal(sharded, pop)

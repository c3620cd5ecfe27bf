"""ae.machine.run: one while_loop, accept predicates, vmap over problems."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ae_jax as ae

A = jnp.diag(jnp.array([3.0, 1.0]))
B = jnp.array([1.0, -2.0])


def _quadratic(b):
  return lambda theta: 0.5 * theta @ (A @ theta) - b @ theta


def _optimum(b):
  return float(-0.5 * b @ jnp.linalg.solve(A, b))


def test_default_predicate_halts_at_the_optimum_not_before(x64):
  f = _quadratic(B)
  tx = ae.ae_sgdm(5e-2, momentum=0.0)
  result = jax.jit(lambda p: ae.machine.run(f, p, tx, 300))(jnp.zeros(2))
  steps = int(result.steps)
  assert bool(result.accepted) and 1 < steps < 300
  gap = float(f(result.params)) - _optimum(B)
  assert 0.0 <= gap < 1e-6
  # Not before: the step before it was still farther from the optimum; the
  # log stops where the run did.
  losses = np.asarray(result.log["loss"])
  assert losses[steps - 2] - _optimum(B) > gap
  assert np.isnan(losses[steps:]).all() and np.isfinite(losses[:steps]).all()
  assert result.log["learning_rate"].shape == (300,)


def test_reference_predicate_accepts_at_step_one_on_its_own_quadratic(x64):
  # Reference defect 2: loss 0 at θ = 0 already satisfies loss <= 1e-6.
  f = _quadratic(B)
  result = ae.machine.run(f, jnp.zeros(2), ae.ae_sgdm(5e-2, momentum=0.0),
                          300, accept=ae.machine.reference_accept(
                              eps_loss=1e-6, gamma_min=1e-5, v_max=1e-3))
  assert int(result.steps) == 1 and bool(result.accepted)
  assert float(f(result.params)) - _optimum(B) > 1.0


def test_progress_predicate_is_scale_free(x64):
  for scale in (1e-3, 1.0, 1e3):
    f = lambda theta, s=scale: s * _quadratic(B)(theta)
    tx = ae.ae_adam(5e-2)
    result = ae.machine.run(f, jnp.zeros(2), tx, 2000,
                            accept=ae.machine.progress_accept(rtol=1e-10))
    assert bool(result.accepted), scale
    gap = (float(f(result.params)) - scale * _optimum(B)) / scale
    assert gap < 1e-6, (scale, gap)


def test_budget_runs_out_without_acceptance():
  result = ae.machine.run(_quadratic(B), jnp.zeros(2), optax.sgd(1e-4), 20)
  assert int(result.steps) == 20 and not bool(result.accepted)
  assert np.isfinite(np.asarray(result.log["loss"])).all()
  assert set(result.log) == {"loss", "gnorm"}  # a plain optimizer


def test_vmap_over_problems_each_stops_on_its_own():
  bs = jnp.array([[1.0, -2.0], [0.1, 0.1], [3.0, 1.0]])
  tx = ae.ae_sgdm(5e-2, momentum=0.0)
  solve = lambda b: ae.machine.run(_quadratic(b), jnp.zeros(2), tx, 300)
  batched = jax.jit(jax.vmap(solve))(bs)
  assert bool(jnp.all(batched.accepted))
  assert len(set(np.asarray(batched.steps).tolist())) > 1
  for i in range(3):
    single = solve(bs[i])
    assert int(single.steps) == int(batched.steps[i])
    np.testing.assert_allclose(np.asarray(single.params),
                               np.asarray(batched.params[i]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(single.log["loss"]),
                               np.asarray(batched.log["loss"][i]),
                               rtol=1e-6)


def test_run_compiles_once():
  traces = []
  f = _quadratic(B)
  tx = ae.ae_adamw(1e-2)

  @jax.jit
  def go(p):
    traces.append(1)
    return ae.machine.run(f, p, tx, 50)

  for start in (jnp.zeros(2), jnp.ones(2), -jnp.ones(2)):
    go(start)
  assert len(traces) == 1


def test_cli_machine_prints_the_trajectory_tables(capsys):
  from ae_jax.bench import cli
  assert cli.main(["machine", "--max-steps", "60", "--every", "30"]) == 0
  out = capsys.readouterr().out
  assert "quadratic" in out and "copy task" in out
  assert out.count(" step |") == 2 and "alpha" in out and "recall" in out

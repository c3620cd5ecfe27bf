"""Experiment 11 (plateau escape): the task, the noise law on it, the report."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax.bench import menu
from ae_jax.bench import runner as R
from ae_jax.bench import tasks as T
from ae_jax.bench.menu import plateau


def test_the_plateau_is_flat_at_the_start():
  task = plateau.plateau_task(steps=100)
  level = dict(task.config)["plateau_level"]
  assert T.get("plateau", steps=100).target == pytest.approx(task.target)
  assert task.target == pytest.approx(plateau.EXIT_FRACTION * level)

  @jax.jit
  @jax.vmap
  def start(seed):
    k_init, k_data = jax.random.split(jax.random.PRNGKey(seed))
    params = task.init(k_init)
    grads = jax.grad(task.loss)(params, task.batch(k_data, 0))
    return task.metric(params), {n: jnp.max(jnp.abs(g))
                                 for n, g in grads.items()}

  metric, grads = start(jnp.arange(1, 6))
  np.testing.assert_allclose(metric, level, rtol=1e-5)
  # Every weight sees an exactly zero gradient (all units saturated); only
  # the output bias gets the minibatch mean of the residual.
  for name in ("w1", "b1", "w2"):
    np.testing.assert_array_equal(grads[name], 0.0)
  assert np.all(grads["b2"] > 0)


def test_the_plateau_task_is_solvable_from_outside_the_plateau():
  # The same teacher, the student started in the linear region (biases 0):
  # plain adamw fits it far below the exit threshold.
  task = plateau.plateau_task(steps=300, margin=-3.0, gain=1.0)
  res = R.run(task, "adamw", [1], learning_rate=1e-2)
  assert np.all(res.metric[:, -1] < 0.5 * task.target)


def test_the_noise_law_raises_sigma_and_exits():
  task = plateau.plateau_task(steps=700)
  spec = plateau.methods()[f"ae_adamw, σ law from {plateau.SIGMA0:g}"]
  res = R.run(task, spec, [1, 2])
  sigma = res.coefficients["sigma"]
  assert np.all(sigma > 0)
  exits = plateau.exit_steps(res.metric, res.eval_steps, task.target)
  assert np.all(np.isfinite(exits))
  at = plateau.at_exit(sigma, res.eval_steps, exits)
  assert np.all(at > 3 * plateau.SIGMA0)  # it rose on the stall
  # The seeds draw different noise (reseeded keys), so they differ.
  assert not np.allclose(sigma[0], sigma[1])


def test_exit_and_relapse_on_hand_curves():
  steps = np.array([0, 10, 20, 30, 40])
  curves = np.array([[1.0, 0.9, 0.4, 0.3, 0.2],     # exits at 20, stays
                     [1.0, 0.4, 0.6, 0.3, 0.3],     # exits at 10, relapses
                     [1.0, 1.0, 1.0, 1.0, 1.0],     # never
                     [1.0, 0.4, 0.3, np.nan, 0.3]])  # non-finite after exit
  np.testing.assert_array_equal(
      plateau.exit_steps(curves, steps, 0.5), [20, 10, np.nan, 10])
  np.testing.assert_array_equal(plateau.relapsed(curves, 0.5),
                                [False, True, False, True])
  coef = np.arange(20.0).reshape(4, 5)
  np.testing.assert_array_equal(
      plateau.at_exit(coef, steps, np.array([2.0, 1.0, np.nan, 4.0])),
      [1.0, 5.0, np.nan, 18.0])


def _fake_result(task, label, seeds):
  """A synthetic Result: flat for the peers, an exit (and for the law a
  relapse) for the noisy AE rows, with a σ record where σ > 0."""
  steps = 200
  eval_steps = np.arange(0, steps + 1, task.eval_every)
  n, level = len(seeds), task.target / plateau.EXIT_FRACTION
  metric = np.full((n, len(eval_steps)), level)
  coefs = {}
  law = "σ law" in label
  if "fixed 0.01" in label or law:
    metric[:, 5:] = 0.1 * level
  if law:
    metric[:, 15:] = 2 * level
    coefs["sigma"] = np.geomspace(1e-3, 1e-1, steps)[None].repeat(n, 0)
  elif "fixed" in label:
    coefs["sigma"] = np.full((n, steps), 1e-2 if "0.01" in label else 1e-3)
  loss = np.full((n, steps), level) * (1 + 0.01 * np.sin(np.arange(steps)))
  return R.Result(task.name, label, 1e-3, np.asarray(seeds), steps, loss,
                  eval_steps, metric, {}, coefs)


def test_run_assembles_its_report(monkeypatch, tmp_path):
  labels = iter(plateau.methods())
  monkeypatch.setattr(plateau.R, "run", lambda task, spec, seeds:
                      _fake_result(task, next(labels), seeds))
  monkeypatch.setattr(plateau, "noise_drive", lambda task, spec, seed, n: {
      k: np.full(n, v) for k, v in (("stall", 0.5), ("uncertainty", 0.4),
                                    ("instability", -0.4),
                                    ("quality", 0.0))})
  out = menu.get("11").run(dict(seeds=3, scale=1), str(tmp_path))
  assert {"markdown", "predictions", "figures"} <= set(out)
  assert "| method | exited |" in out["markdown"]
  assert "(figures/exp11_plateau_sigma.png)" in out["markdown"]
  assert all((tmp_path / p.split("/")[-1]).exists() for p in out["figures"])
  assert len(out["predictions"]) == 4
  for row in out["predictions"]:
    assert set(row) == {"prediction", "measured", "verdict"}
    assert row["verdict"] in ("holds", "fails")
  # σ rose and the law exited where σ0 fixed did not; then it relapsed.
  assert [r["verdict"] for r in out["predictions"]] == [
      "holds", "holds", "fails", "fails"]

"""Scale-free selection and the spread case (``ae-jax swarm --spread``)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ae_jax as ae
from ae_jax import swarm
from ae_jax.bench import cli, swarm_spread


@pytest.mark.parametrize("selection", ["rank", "standardized"])
def test_selection_is_scale_free(selection):
  s = jnp.array([0.1001, 0.1003, 0.1002, 0.1000])
  w, _ = swarm.swarm_weights(s, 5.0, selection)
  w_scaled, _ = swarm.swarm_weights(1e4 * s + 7.0, 5.0, selection)
  np.testing.assert_allclose(w, w_scaled, rtol=2e-3)  # float32 of 1e4 s
  # Scores 1e-4 apart still separate (raw: uniform to 3 decimals).
  assert w[3] > 2 * w[1]
  w_raw, _ = swarm.swarm_weights(s, 5.0, "raw")
  np.testing.assert_allclose(w_raw, 0.25, atol=1e-3)


def test_rank_scores_hand_computed():
  s = jnp.array([3.0, 1.0, jnp.nan, 2.0, 2.0])
  u = swarm.selection_scores(s, "rank")
  # finite: 1 (rank 0), 2, 2 (tied: 1.5), 3 (rank 3); M_f - 1 = 3.
  np.testing.assert_allclose(u, [1.0, 0.0, np.inf, 0.5, 0.5])
  w, diverged = jax.jit(swarm.swarm_weights, static_argnums=2)(s, 2.0, "rank")
  e = np.exp(-2.0 * np.array([1.0, 0.0, 0.5, 0.5]))
  np.testing.assert_allclose(np.asarray(w)[[0, 1, 3, 4]], e / e.sum(),
                             rtol=1e-6)
  assert w[2] == 0 and diverged[2]


def test_standardized_equal_scores_are_uniform():
  w, _ = swarm.swarm_weights(jnp.full([4], 0.3), 5.0, "standardized")
  np.testing.assert_allclose(w, 0.25, rtol=1e-6)


def test_selection_validated():
  with pytest.raises(ValueError, match="SwarmConfig.selection"):
    swarm.SwarmConfig(selection="softmax")
  with pytest.raises(ValueError, match="selection"):
    swarm.selection_scores(jnp.ones(3), "best")


def test_self_tuning_family_takes_per_member_b1_and_weight_decay():
  family = swarm.self_tuning_family()
  priors = {k: jnp.asarray(v) for k, v in
            swarm_spread.starts("coefficients", 4).items()}
  pop = swarm.init_population(jax.random.PRNGKey(0),
                              lambda k: swarm.init_mlp(k, (10, 8, 1)),
                              family, priors)
  values = swarm.member_coefficients(pop.opt_state)
  for name in ("learning_rate", "b1", "weight_decay"):
    np.testing.assert_allclose(values[name], priors[name], rtol=1e-5)
  # Four decades of rates, β1 and λ shuffled against them.
  np.testing.assert_allclose(np.asarray(priors["learning_rate"])[[0, -1]],
                             [1e-5, 1e-1],
                             rtol=1e-5)
  assert not np.all(np.diff(np.asarray(priors["b1"])) > 0)


@pytest.mark.parametrize("name", ["digits_cnn", "char_lm"])
def test_spread_tasks_build_and_have_a_finite_loss(name):
  task = swarm_spread.TASK_BUILDERS[name]()
  params = task.init_params(jax.random.PRNGKey(0))
  loss = task.loss_fn(params, task.data.x_val[:16], task.data.y_val[:16])
  # Near log(10) / log(vocab) at initialisation: a classification loss.
  assert np.isfinite(loss) and 1.0 < float(loss) < 8.0


def test_pbt_replaces_a_diverged_member():
  task = swarm_spread.regression_task()
  hp = {"learning_rate": np.array([1e-3, 3e-3, 1e-2, 1e3], np.float32)}
  fig = swarm_spread.run_pbt(task, jax.random.PRNGKey(0), hp, steps=40,
                             rounds=4)
  assert math.isfinite(fig.final)
  # The best checkpoint is never worse than the end.
  assert fig.best <= fig.final


def test_cli_spread_runs_every_method_and_prints_the_ratio_last(capsys):
  # The "coefficients" setting: β1 and λ spread too (Optuna's and PBT's
  # wider search), every method once at a tiny size.
  code = cli.main(["swarm", "--spread", "--seeds", "1", "--tasks",
                   "regression", "--settings", "coefficients", "--pop-size",
                   "4",
                   "--steps", "48",
                   "--no-progress"])
  text = capsys.readouterr().out
  out = text.strip().splitlines()
  assert code == 0
  for m in swarm_spread.METHODS:
    assert f"| {m} | " in text, m
  assert "nan ±" not in text and "inf ±" not in text
  assert out[-1].startswith("swarm/best-baseline best validation loss ratio:")
  assert out[-2].startswith("swarm/best-baseline final validation loss ratio:")
  float(out[-1].split(":")[1])


@pytest.mark.parametrize("method", ["swarm", "hindsight", "pbt", "optuna"])
def test_every_method_reads_its_best_checkpoint(method):
  # Every method is evaluated at the same cadence and its figure `best` is
  # the lowest of those evaluations (before 2026-12-05 Optuna alone was):
  # never above `final`.
  task = swarm_spread.regression_task()
  hp = {"learning_rate": np.array([1e-3, 3e-3, 1e-2, 3.0], np.float32)}
  fig = swarm_spread.RUNNERS[method](task, jax.random.PRNGKey(0), hp,
                                     steps=40, rounds=4, beta=2.0, kappa=0.05,
                                     selection="rank")
  assert math.isfinite(fig.best) and fig.best <= fig.final


def test_best_checkpoint_is_below_the_end_when_the_run_overfits():
  # AdamW at 0.1 on the regression MLP: validation loss 0.017 at an
  # intermediate evaluation, 0.038 at the end (2026-12-05).
  task = swarm_spread.regression_task()
  hp = {"learning_rate": np.array([0.1], np.float32)}
  fig = swarm_spread.run_hindsight(task, jax.random.PRNGKey(0), hp,
                                   steps=400, rounds=8)
  assert fig.best < 0.8 * fig.final


def test_beta_sweep_report_picks_the_point_best_on_every_pair():
  from benchmarks import swarm_beta as SB
  tasks, settings, seeds = ("a", "b"), ("rates",), (100, 101)
  cache = {}
  losses = {(2.0, 0.05): (1.0, 2.0), (5.0, 0.05): (1.1, 2.4),
            (2.0, 0.5): (1.0, 2.2)}
  for point, (la, lb) in losses.items():
    for seed in seeds:
      cache[SB._key(point, "a", "rates", seed, "best")] = la
      cache[SB._key(point, "b", "rates", seed, "best")] = lb
      # The other reading of the same runs ranks the points the other way.
      cache[SB._key(point, "a", "rates", seed, "final")] = 1 / la
      cache[SB._key(point, "b", "rates", seed, "final")] = 1 / lb
  # A point with a missing seed is left out of the report, not averaged.
  cache[SB._key((50.0, 0.05), "a", "rates", 100, "best")] = 0.1
  text, best = SB.report(tasks, settings, seeds, cache)
  assert best == (2.0, 0.05)
  rows = {line.split("|")[1].strip() + "/" + line.split("|")[2].strip():
          float(line.split("|")[-2]) for line in text.splitlines()[2:]}
  assert "50/0.05" not in rows
  assert rows["2/0.05"] == 1.0
  # Geometric mean of the ratios to the best point: sqrt(1.1 * 1.2).
  assert abs(rows["5/0.05"] - (1.1 * 1.2) ** 0.5) < 1e-4
  assert SB.report(tasks, settings, seeds, cache, "final")[1] == (5.0, 0.05)
  assert SB.report(tasks, settings, seeds, {})[1] is None


def test_defaults_are_the_point_the_committed_beta_sweep_chose():
  # SwarmConfig's (β, κ) are the spread case's measured choice: the
  # committed cache of benchmarks/swarm_beta.py (the shipped member family,
  # tuning seeds) must pick them on the primary reading.
  import json
  from benchmarks import swarm_beta as SB
  cache = json.loads(SB.CACHE.read_text())
  _, best = SB.report(swarm_spread.TASKS, swarm_spread.SETTINGS,
                      SB.TUNING_SEEDS, cache)
  assert best == (swarm.SwarmConfig.beta, swarm.SwarmConfig.kappa)
  # The reference example keeps the reference's raw selection, β 5, κ 0.05.
  from ae_jax.bench import swarm_demo
  ref = swarm_demo.configs()["swarm"]
  assert (ref.selection, ref.beta, ref.kappa) == ("raw", 5.0, 0.05)


def test_cli_gives_each_swarm_mode_its_own_defaults(monkeypatch):
  # `ae-jax swarm --spread` runs the measured (β, κ); `ae-jax swarm` the
  # reference example's; an explicit --beta / --kappa wins in both.
  from ae_jax.bench import swarm_demo
  seen = {}

  def fake_spread(**kw):
    seen["spread"] = (kw["beta"], kw["kappa"])
    raise ValueError("stop")  # the CLI reports it and returns 2

  def fake_reference(**kw):
    seen["reference"] = (kw["beta"], kw["kappa"])

  monkeypatch.setattr(swarm_spread, "compare_figures", fake_spread)
  monkeypatch.setattr(swarm_demo, "run_example", fake_reference)
  assert cli.main(["swarm", "--spread", "--no-progress"]) == 2
  assert seen["spread"] == (swarm.SwarmConfig.beta, swarm.SwarmConfig.kappa)
  assert cli.main(["swarm", "--no-progress"]) == 0
  assert seen["reference"] == (5.0, 0.05)
  cli.main(["swarm", "--spread", "--beta", "3", "--kappa", "0.2"])
  cli.main(["swarm", "--beta", "3", "--kappa", "0.2"])
  assert seen["spread"] == seen["reference"] == (3.0, 0.2)


def test_throughput_benchmark_times_its_modes_in_interleaved_rounds():
  # benchmarks/swarm.py: every round times each mode once (a slow spell of
  # the machine hits all modes alike), each figure the best over rounds.
  from benchmarks import swarm as SW
  calls = []
  runs = {name: (lambda name=name: calls.append(name) or jnp.zeros(()))
          for name in ("a", "b", "c")}
  best = SW._best_times(runs, 3)
  assert calls == ["a", "b", "c"] * 3
  assert set(best) == {"a", "b", "c"}
  assert all(0 <= t < 1 for t in best.values())


def _alpha_under_noise(family, start, moved_to, steps=200):
  """α of one member of ``family`` (prior ``start``) after its α was set to
  ``moved_to`` and ``steps`` steps of pure-noise gradients at a constant
  loss: the step-size law's sign is noise there."""
  params = {"w": jnp.zeros(64)}
  tx = family.make({"learning_rate": jnp.float32(start)})
  state = ae.set_coefficients(tx.init(params), learning_rate=moved_to)

  def step(carry, key):
    p, s = carry
    u, s = tx.update({"w": jax.random.normal(key, (64,))}, s, p,
                     value=jnp.float32(1.0))
    return (optax.apply_updates(p, u), s), None

  (_, state), _ = jax.lax.scan(step, (params, state),
                               jax.random.split(jax.random.PRNGKey(0), steps))
  return float(ae.coefficients(state)["learning_rate"])


def test_self_tuning_family_anchors_each_member_at_its_start():
  # Moved 10x above its start (as a consensus nudge would), an anchored
  # member's α comes back to its own start, not the family's midpoint
  # sqrt(1e-7 * 10) = 1e-3 (measured: ~1.2e-4 after 200 steps, 1 % of the
  # log-gap a step); without the leak it stays where it was put.
  anchored = _alpha_under_noise(swarm.self_tuning_family(), 1e-4, 1e-3)
  plain = _alpha_under_noise(swarm.self_tuning_family(leak=0.0), 1e-4, 1e-3)
  assert abs(math.log(anchored / 1e-4)) < 0.4
  assert plain > 2.5e-4
  assert swarm.SELF_TUNING_LEAK == 1.0


@pytest.mark.parametrize("leak", [-0.1, float("nan"), float("inf"), True,
                                  "1", np.float32(-1.0)])
def test_self_tuning_family_refuses_a_bad_leak(leak):
  with pytest.raises(ValueError, match="leak"):
    swarm.self_tuning_family(leak=leak)

"""Experiment 6 (AE-RL): PPO on gymnax under reward-scale drift.

One tiny CartPole run (24 updates, 2 seeds, phases of 8 updates) is shared
by the tests; it is compiled at XLA:CPU's fast-compile level, and
``menu.rl.run`` on the same configuration reuses the compiled program.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("gymnax")

from ae_jax.bench import menu  # noqa: E402
from ae_jax.bench.menu import rl  # noqa: E402

CFG = rl.PPOConfig(env="CartPole-v1", updates=24, rescale_every=8)
SEEDS = [1, 2]


@pytest.fixture(scope="module")
def records():
  return rl.run_method(CFG, "ae_rl", SEEDS, fast_compile=True)


def test_ppo_loop_jits_vmaps_and_learns_cartpole(records):
  assert records["true_return"].shape == (len(SEEDS), CFG.updates)
  ret = records["true_return"]
  assert np.all(np.isfinite(ret))
  # A random policy lasts ~20 steps; 12k environment steps of PPO do better.
  assert np.all(ret[:, :2].mean(-1) < 35.0)
  assert np.all(ret[:, -4:].mean(-1) > 60.0)
  # The seeds are different runs.
  assert not np.allclose(ret[0], ret[1])


def test_reward_rescaling_happens_at_the_phase_boundaries(records):
  expected = np.repeat([1.0, 10.0, 0.1], CFG.rescale_every)
  np.testing.assert_allclose(records["scale"], np.tile(expected, (2, 1)),
                             rtol=1e-6)
  np.testing.assert_allclose(records["shift"], 0.0)
  # The agent's reward is a r + b of the environment's, update by update.
  np.testing.assert_allclose(
      records["seen_reward"],
      records["scale"] * records["true_reward"] + records["shift"],
      rtol=1e-5)
  # CartPole pays 1 per step: the agent sees 1, 10, 0.1 per step.
  np.testing.assert_allclose(records["seen_reward"], records["scale"],
                             rtol=1e-5)
  # Before the first rescale the agent's return is the true one; after the
  # x10 one (once its episodes all began in the new phase), ten times it.
  np.testing.assert_allclose(records["seen_return"][:, :8],
                             records["true_return"][:, :8], rtol=1e-5)
  a, b = jax.vmap(lambda u: rl.reward_transform(u, 8))(jnp.arange(40))
  np.testing.assert_allclose(np.asarray(a)[::8], [1, 10, 0.1, 1, 1],
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(b)[::8], [0, 0, 0, 1, 0])


def test_ae_rl_knobs_move_and_stay_in_bounds(records):
  ent, clip = records["ent_coef"], records["clip"]
  assert np.all((ent >= 1e-4 - 1e-9) & (ent <= 0.1 + 1e-9))
  assert np.all((clip >= 0.05 - 1e-6) & (clip <= 0.4 + 1e-6))
  assert np.ptp(ent) > 1e-4 and np.ptp(clip) > 1e-3
  # AE-Adam's step size moved from its start, and γ is recorded.
  assert np.ptp(records["lr"]) > 0
  assert np.all(records["gamma"] > 0)


def _drive_controller(rewards, losses):
  ctrl = rl.rl_controller()

  def body(state, inputs):
    reward, loss = inputs
    values, state = ctrl.update(None, state, value=loss, reward=reward)
    return state, (values["ent_coef"], values["clip"])

  _, (ent, clip) = jax.lax.scan(body, ctrl.init(), (rewards, losses))
  return np.asarray(ent), np.asarray(clip)


def test_entropy_coefficient_follows_the_reward_progress():
  t = jnp.arange(60.0)
  calm = jnp.zeros(60)
  ent_up, _ = _drive_controller(10.0 + 2.0 * t, calm)      # improving
  ent_down, _ = _drive_controller(130.0 - 2.0 * t, calm)   # degrading
  # R > 0 is the exploitation pressure: the entropy coefficient falls; a
  # falling return raises it (AE-RL, drive gain reward = -1).
  assert ent_up[-1] < 0.7 * 0.01
  assert ent_down[-1] > 1.3 * 0.01
  assert np.all(np.diff(ent_up[1:30]) <= 1e-9)
  assert np.all(np.diff(ent_down[1:30]) >= -1e-9)


def test_clip_narrows_when_the_policy_loss_turns_unstable():
  key = jax.random.PRNGKey(0)
  noise = jax.random.normal(key, (120,))
  flat = jnp.full(120, 100.0)
  steady = 1e-3 * noise
  burst = jnp.where(jnp.arange(120) >= 60, 0.5 * noise, steady)
  _, clip_calm = _drive_controller(flat, steady)
  _, clip_burst = _drive_controller(flat, burst)
  np.testing.assert_allclose(clip_calm[:60], clip_burst[:60], rtol=1e-6)
  assert clip_burst[-1] < 0.8 * clip_calm[-1]


def test_run_returns_the_report(records, tmp_path):
  del records  # compiles the program run() reuses
  methods = ("ae_rl",) + (("tox_spsa",) if rl.tox_available() is None
                          else ())
  profile = dict(seeds=len(SEEDS), scale=1, envs=("CartPole-v1",),
                 methods=methods, updates=CFG.updates,
                 rescale_every=CFG.rescale_every, fast_compile=True)
  out = menu.get("6").run(profile, str(tmp_path / "figures"))
  assert set(out) >= {"markdown", "predictions", "figures"}
  assert "CartPole-v1" in out["markdown"]
  assert "time-to-recover" in out["markdown"]
  assert "](figures/exp6_cartpole_return.png)" in out["markdown"]
  assert out["figures"] and all(os.path.exists(p) for p in out["figures"])
  assert out["predictions"]
  for row in out["predictions"]:
    assert set(row) == {"prediction", "measured", "verdict"}
    assert row["verdict"] in ("holds", "fails")
  assert any("γ" in row["prediction"] for row in out["predictions"])

"""Experiment 14 (AEONet): the capacity controller, the gated net, the report.

The controller is checked on a controlled loss plant (steady progress, then
a variance spike); the network and the training loop on a tiny budget (one
compiled program for every method, vmapped over seeds).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax.bench import menu
from ae_jax.bench.menu import aeonet

TINY = aeonet.Config(n_blocks=3, steps=100, eval_every=20, warmup=10)


def _plant(spike: bool, steps: int = 400, warmup: int = 50):
  """Capacity and dropout under a loss that falls steadily (small noise);
  with ``spike``, it jumps by 0/3 on alternate steps 250..269."""
  ctrl = aeonet.capacity_controller(8)
  t = jnp.arange(steps)
  noise = 0.02 * jax.random.normal(jax.random.PRNGKey(0), (steps,))
  loss = jnp.exp(-t / 150.0) + noise
  loss = loss + jnp.where(spike & (t >= 250) & (t < 270), 3.0 * (t % 2), 0.0)

  def body(cstate, inputs):
    cstate = aeonet.controller_step(ctrl, cstate, *inputs, warmup)
    return cstate, cstate.values

  _, values = jax.lax.scan(body, ctrl.init(), (loss, t))
  return {k: np.asarray(v) for k, v in values.items()}


def test_capacity_grows_with_progress_and_shrinks_on_a_variance_spike():
  calm, shocked = _plant(False), _plant(True)
  cap, cap_s = calm["capacity"], shocked["capacity"]
  # Held during the warm-up, then grown by the steady progress.
  np.testing.assert_allclose(cap[:50], 1.0, rtol=1e-6)
  assert cap[249] > 3.0 * cap[0]
  assert np.all((cap_s >= 0.0) & (cap_s <= 8.0))
  np.testing.assert_allclose(cap[:250], cap_s[:250], rtol=1e-6)
  # The spike raises V far above V*: capacity (and dropout) are cut.
  assert cap_s[280] < 0.3 * cap[280]
  assert cap_s[280] < 0.5 * cap_s[249]
  assert shocked["dropout"][280] < 0.5 * calm["dropout"][280]
  assert calm["dropout"][249] > calm["dropout"][0]


def test_staircase_opens_blocks_in_turn():
  gates = aeonet.staircase(jnp.float32(2.5), 4)
  np.testing.assert_allclose(gates, [1.0, 1.0, 0.5, 0.0])
  for c in (0.0, 1.3, 4.0):
    np.testing.assert_allclose(aeonet.staircase(jnp.float32(c), 4).sum(), c,
                               rtol=1e-6)


def test_a_closed_block_is_the_identity_and_gets_no_gradient():
  params = aeonet.init_params(jax.random.PRNGKey(0), TINY)
  w2 = jax.random.normal(jax.random.PRNGKey(1), params["blocks"]["w2"].shape)
  params["blocks"]["w2"] = w2
  gates = jnp.array([1.0, 0.0, 1.0])
  x = jax.random.normal(jax.random.PRNGKey(3), (16, 64))
  y = jnp.arange(16) % 10
  noise = jax.random.uniform(jax.random.PRNGKey(2), (3, 16, TINY.hidden))
  grads = jax.jit(jax.grad(lambda p: aeonet._ce(
      aeonet.forward(p, x, gates, 0.2, noise), y)))(params)
  for name in ("w1", "b1", "w2", "b2"):
    assert float(jnp.abs(grads["blocks"][name][1]).max()) == 0.0
    assert float(jnp.abs(grads["blocks"][name][0]).max()) > 0.0
  other = jax.tree.map(lambda a: a, params)
  other["blocks"]["w2"] = w2.at[1].multiply(-3.0)
  fwd = jax.jit(lambda p: aeonet.forward(p, x, gates, 0.0))
  np.testing.assert_allclose(fwd(params), fwd(other), rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
  """One tiny ``run`` (seeds 1, 2); also the raw outputs of its one
  compiled training program."""
  seen = {}
  run_methods = aeonet.run_methods

  def spy(*args, **kwargs):
    seen.update(run_methods(*args, **kwargs))
    return seen

  figures = tmp_path_factory.mktemp("figures")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(aeonet, "config", lambda profile: TINY)
    mp.setattr(aeonet, "run_methods", spy)
    report = aeonet.run({"seeds": 2, "scale": 1}, str(figures))
  return report, seen


def test_training_jits_vmaps_and_beats_chance(tiny_report):
  _, outs = tiny_report
  assert set(outs) == set(aeonet.METHODS)
  for m, out in outs.items():
    assert out["gate"].shape == (2, TINY.steps)
    assert out["acc"].shape == (2, TINY.steps // TINY.eval_every + 1)
    assert np.all(out["acc"][:, -1] > 0.5), m  # chance is 0.1
    assert np.all(np.isfinite(out["loss"]))
  # Fixed depth: every gate stays 1, dropout stays at its value.
  np.testing.assert_array_equal(outs["full"]["gate"], 1.0)
  np.testing.assert_allclose(outs["full"]["dropout"], TINY.dropout)
  ae_gate = outs["aeonet"]["gate"]
  assert np.all((ae_gate >= 0) & (ae_gate <= 1))
  np.testing.assert_allclose(ae_gate[:, :TINY.warmup],
                             TINY.capacity_init / TINY.n_blocks, rtol=1e-6)
  # Learned gates move under the gradient; the seeds differ.
  learned = outs["learned"]["gate"]
  assert np.abs(learned[:, -1] - 0.5).max() > 1e-3
  assert not np.allclose(outs["full"]["loss"][0], outs["full"]["loss"][1])


def test_run_returns_a_well_formed_report(tiny_report):
  report, _ = tiny_report
  assert {"markdown", "predictions", "figures"} <= set(report)
  assert "±" in report["markdown"]
  assert "](figures/exp14_aeonet.png)" in report["markdown"]
  assert all(p.endswith(".png") for p in report["figures"])
  import os
  assert all(os.path.exists(p) for p in report["figures"])
  assert len(report["predictions"]) == 3
  for row in report["predictions"]:
    assert set(row) == {"prediction", "measured", "verdict"}
    assert row["verdict"] in ("holds", "fails")
    assert row["measured"]


def test_registered():
  assert menu._REGISTRY["14"].run is aeonet.run

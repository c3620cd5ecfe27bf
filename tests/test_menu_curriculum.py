"""AE-Curriculum: the strength controller, the shift augmentation, the report.

The controller is checked on a controlled loss plant (steady progress, then
a variance spike); training on a tiny budget (one compiled program for every
method, vmapped over seeds).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax.bench import menu
from ae_jax.bench.menu import aeonet, curriculum

TINY = curriculum.Config(steps=100, eval_every=20, warmup=10)


def _plant(leak: float, spike: bool, steps: int = 400, warmup: int = 50,
           flat_from: int | None = None):
  """The strength under a steadily falling loss (small noise); ``spike``
  adds a 0/3 jump on alternate steps 250..269; ``flat_from`` freezes the
  loss's trend from that step on (no progress)."""
  ctrl = curriculum.strength_controller(curriculum.Config(), leak)
  t = jnp.arange(steps)
  noise = 0.02 * jax.random.normal(jax.random.PRNGKey(0), (steps,))
  trend_t = t if flat_from is None else jnp.minimum(t, flat_from)
  loss = jnp.exp(-trend_t / 150.0) + noise
  loss = loss + jnp.where(spike & (t >= 250) & (t < 270), 3.0 * (t % 2), 0.0)

  def body(cstate, inputs):
    cstate = aeonet.controller_step(ctrl, cstate, *inputs, warmup)
    return cstate, cstate.values["strength"]

  _, s = jax.lax.scan(body, ctrl.init(), (loss, t))
  return np.asarray(s)


def test_strength_grows_with_progress_and_backs_off_on_a_spike():
  calm, shocked = _plant(0.0, False), _plant(0.0, True)
  s0 = curriculum.Config().s_init
  np.testing.assert_allclose(calm[:50], s0, rtol=1e-5)
  assert calm[249] > 5.0 * s0
  assert np.all((shocked >= 0.0) & (shocked <= curriculum.Config().s_max))
  np.testing.assert_allclose(calm[:250], shocked[:250], rtol=1e-5)
  assert shocked[280] < 0.2 * calm[280]


def test_the_leak_pulls_the_strength_back_without_progress():
  ratchet = _plant(0.0, False, steps=1000, flat_from=200)
  leaky = _plant(0.05, False, steps=1000, flat_from=200)
  # Once the loss is flat (and V has settled onto V*), nothing drives the
  # strength: without a leak it holds, with one it returns toward its start.
  assert ratchet[999] > 0.9 * ratchet[400]
  assert leaky[999] < 0.5 * leaky[400]
  assert np.all(leaky[150:] < ratchet[150:])


def test_shift_images_translates_and_keeps_zero_strength_exact():
  img = jnp.zeros((2, 8, 8)).at[:, 3, 3].set(1.0)
  # Rows of u: (dy, dx) = s (2u - 1), per image.
  u = jnp.array([[1.0, 0.5], [0.5, 0.0]])
  out = np.asarray(curriculum.shift_images(img, 1.0, u))
  assert out[0, 4, 3] == pytest.approx(1.0)   # one pixel down
  assert out[1, 3, 2] == pytest.approx(1.0)   # one pixel left
  np.testing.assert_allclose(out.sum((1, 2)), 1.0, rtol=1e-6)
  half = np.asarray(curriculum.shift_images(img, 0.5, u))
  np.testing.assert_allclose(half[0, 3:5, 3], [0.5, 0.5], atol=1e-6)
  rand = jax.random.uniform(jax.random.PRNGKey(0), (2, 2))
  np.testing.assert_allclose(curriculum.shift_images(img, 0.0, rand), img)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
  """One tiny ``run`` (seeds 1, 2) and the raw outputs of its one compiled
  training program."""
  seen = {}
  run_methods = curriculum.run_methods

  def spy(*args, **kwargs):
    seen.update(run_methods(*args, **kwargs))
    return seen

  figures = tmp_path_factory.mktemp("figures")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(curriculum, "config", lambda profile: TINY)
    mp.setattr(curriculum, "run_methods", spy)
    report = curriculum.run({"seeds": 2, "scale": 1}, str(figures))
  return report, seen


def test_training_jits_vmaps_and_beats_chance(tiny_report):
  _, outs = tiny_report
  assert set(outs) == set(curriculum.METHODS)
  for m, out in outs.items():
    assert out["strength"].shape == (2, TINY.steps)
    assert out["acc"].shape == (2, TINY.steps // TINY.eval_every + 1)
    assert np.all(out["acc"][:, -1] > 0.4), m  # chance is 0.1
  np.testing.assert_array_equal(outs["fixed_0"]["strength"], 0.0)
  np.testing.assert_allclose(outs["fixed_mid"]["strength"], TINY.s_max / 2)
  np.testing.assert_allclose(outs["fixed_high"]["strength"], TINY.s_max)
  np.testing.assert_allclose(outs["linear"]["strength"][0],
                             TINY.s_max * np.arange(TINY.steps) / TINY.steps,
                             rtol=1e-5, atol=1e-6)
  for m in ("ae", "ae_leak"):
    s = outs[m]["strength"]
    np.testing.assert_allclose(s[:, :TINY.warmup], TINY.s_init, rtol=1e-5)
    assert np.all((s >= 0) & (s <= TINY.s_max))
    assert np.abs(s[:, -1] - TINY.s_init).max() > 1e-3  # it moved


def test_run_returns_a_well_formed_report(tiny_report):
  report, _ = tiny_report
  assert {"markdown", "predictions", "figures"} <= set(report)
  assert "±" in report["markdown"]
  assert "](figures/expcurriculum_strength.png)" in report["markdown"]
  assert all(os.path.exists(p) for p in report["figures"])
  assert len(report["predictions"]) == 3
  for row in report["predictions"]:
    assert set(row) == {"prediction", "measured", "verdict"}
    assert row["verdict"] in ("holds", "fails")
    assert row["measured"]


def test_registered():
  assert menu._REGISTRY["curriculum"].run is curriculum.run

"""Experiment 12 (the coupling curve): the measures on hand-computed cases,
the sweep's bookkeeping and the report."""

import math

import numpy as np
import pytest

import ae_jax as ae
from ae_jax.bench import menu
from ae_jax.bench import optimizers as O
from ae_jax.bench import runner as R
from ae_jax.bench import tasks as T
from ae_jax.bench.menu import coupling


def test_coordinates():
  za, zb = coupling.coordinates([1e-3, 1.0], [0.9, 0.0])
  np.testing.assert_allclose(za, [math.log(1e-3), 0.0])
  np.testing.assert_allclose(zb, [math.log(10.0), 0.0], atol=1e-12)


def test_trajectory_correlation_by_hand():
  za = np.array([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0],
                 [0.0, 1.0, 2.0, 3.0]])
  zb = np.array([[3.0, 2.0, 1.0, 0.0],      # a line down: -1, -1
                 [0.0, 1.0, 4.0, 9.0],      # monotone, convex
                 [5.0, 5.0, 5.0, 5.0]])     # constant: undefined
  pearson, spearman = coupling.trajectory_correlation(za, zb)
  # dx = (-1.5, -.5, .5, 1.5), dy = (-3.5, -2.5, .5, 5.5):
  # r = 15 / sqrt(5 * 49)
  np.testing.assert_allclose(pearson[:2], [-1.0, 15 / math.sqrt(245)])
  np.testing.assert_allclose(spearman[:2], [-1.0, 1.0])
  assert np.isnan(pearson[2]) and np.isnan(spearman[2])


def test_occupancy_by_hand():
  za = np.array([0.1, 0.1, 0.9, 0.9, 5.0])
  zb = np.array([0.1, 0.9, 0.9, 0.9, 0.5])   # the last point lies outside
  occ, ea, eb = coupling.occupancy(za, zb, 2, ((0, 1), (0, 1)))
  # occ[i, j]: za in bin i, zb in bin j; fractions of all 5 points
  np.testing.assert_allclose(occ, [[0.2, 0.2], [0.0, 0.4]])
  np.testing.assert_allclose(ea, [0, 0.5, 1])
  np.testing.assert_allclose(eb, [0, 0.5, 1])


def test_fisher_interval():
  lo, hi = coupling.fisher_interval(0.0, 103)
  assert lo == pytest.approx(-math.tanh(1.959964 / 10))
  assert hi == pytest.approx(math.tanh(1.959964 / 10))
  lo, hi = coupling.fisher_interval(-0.5, 28)
  assert lo < -0.5 < hi < 0
  assert all(math.isnan(v) for v in coupling.fisher_interval(0.3, 3))


def test_best_quartile_breaks_ties():
  final = np.array([0.0, 0.0, 1.0, 2.0, np.nan, 0.5, 3.0, 4.0])
  tiebreak = np.array([5.0, 1.0, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(np.flatnonzero(
      coupling.best_quartile(final, tiebreak)), [0, 1])
  tiebreak[1] = 9.0
  final[0] = np.inf
  np.testing.assert_array_equal(np.flatnonzero(
      coupling.best_quartile(final, tiebreak)), [1, 5])


def test_pooled_correlation():
  t = np.linspace(0, 1, 20)
  za = np.stack([t, t + 1, t + 2])
  zb = np.stack([-t, -t - 1, 3 * t])
  runs = np.array([True, True, False])
  r, lo, hi = coupling.pooled_correlation(za, zb, runs, n_boot=50)
  np.testing.assert_allclose([r, lo, hi], -1.0, atol=1e-9)
  r, lo, hi = coupling.pooled_correlation(za, zb, ~runs, n_boot=50)
  assert r == pytest.approx(1.0) and math.isnan(lo) is False


@pytest.fixture(scope="module")
def tiny_sweep():
  task = T.get("rosenbrock", steps=60)
  return coupling.sweep(task, coupling.VARIANTS[coupling.PRIMARY], [1, 2], 60,
                        alphas=(1e-3, 1e-2), betas=(0.8, 0.9))


def test_the_sweep_covers_the_grid_and_rescales_alpha(tiny_sweep):
  out = tiny_sweep
  np.testing.assert_allclose(out["alpha0"], [1e-3] * 4 + [1e-2] * 4)
  np.testing.assert_allclose(out["beta1"], [0.8, 0.8, 0.9, 0.9] * 2,
                             rtol=1e-6)
  np.testing.assert_array_equal(out["seed"], [1, 2] * 4)
  assert out["learning_rate"].shape == out["b1"].shape == (8, 60)
  assert out["metric"].shape == (8, len(out["eval_steps"]))
  # The warm start is 1e-3 α0; the first step is the same for every α0.
  np.testing.assert_allclose(out["learning_rate"][:, 0] / out["alpha0"],
                             out["learning_rate"][0, 0] / 1e-3, rtol=1e-4)
  np.testing.assert_allclose(out["learning_rate"][:, 0] / out["alpha0"],
                             1e-3, rtol=0.3)
  # The traced start (preset at 1e-3, updates scaled by α0 / 1e-3, α
  # rescaled) is the run built at α0 itself: compare with the runner.
  chain = ae.canonical_laws(O.AE_NAMES["ae_adamw"], drive=True)
  spec = O.OptSpec("direct", lambda lr, n: ae.ae_adamw(
      lr, b1=0.9, laws_chain=chain), 1e-2, needs_value=True, is_ae=True)
  direct = R.run(T.get("rosenbrock", steps=60), spec, [2])
  np.testing.assert_allclose(out["learning_rate"][7],
                             direct.coefficients["learning_rate"][0],
                             rtol=1e-3)
  np.testing.assert_allclose(out["b1"][7], direct.coefficients["b1"][0],
                             rtol=1e-4)
  np.testing.assert_allclose(out["b1"][:, 0], out["beta1"], atol=0.01)
  s = coupling.summarise(out)
  assert s["best"].sum() == 2 and s["za"].shape == (8, 54)


def test_run_assembles_its_report(tiny_sweep, monkeypatch, tmp_path):
  monkeypatch.setattr(coupling, "sweep",
                      lambda task, flags, seeds, steps: tiny_sweep)
  out = menu.get("12").run(dict(seeds=2, scale=1), str(tmp_path))
  assert {"markdown", "predictions", "figures"} <= set(out)
  assert "| task | variant | runs |" in out["markdown"]
  assert "(figures/exp12_coupling_occupancy.png)" in out["markdown"]
  assert (tmp_path / "exp12_coupling_occupancy.png").exists()
  assert len(out["predictions"]) == len(coupling.TASKS)
  for row in out["predictions"]:
    assert set(row) == {"prediction", "measured", "verdict"}
    assert row["verdict"] in ("holds", "fails")

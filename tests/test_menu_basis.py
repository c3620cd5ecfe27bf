"""Experiment 15 (AEO-Eq): the λ controller on a plant, recovery on an easy
seed, the helpers and the report."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax.bench import menu
from ae_jax.bench.menu import basis


def _lam_run(values, variance=0.0):
  cfg = basis.Config()
  ctrl = basis.controller(cfg, variance)

  def body(state, v):
    values_, state = ctrl.update(None, state, value=v)
    return state, values_["lam"]

  _, lams = jax.lax.scan(body, ctrl.init(), jnp.asarray(values, jnp.float32))
  return np.asarray(lams)


def test_lambda_follows_its_drive_on_a_plant():
  t = np.arange(300)
  falling = _lam_run(np.exp(-t / 100.0))
  rising = _lam_run(1.0 + t / 100.0)
  lam0 = basis.Config().lam_init
  # progress = +1: λ rises while the (validation) loss falls ...
  assert falling[-1] > 10 * lam0
  assert np.all(np.diff(falling[10:]) >= -1e-7)
  # ... and falls while it rises; always inside Ω, within the budget.
  assert rising[-1] < 0.1 * lam0
  lo, hi = basis.Config().lam_bounds
  for lam in (falling, rising):
    assert np.all((lam >= lo * (1 - 1e-5)) & (lam <= hi * (1 + 1e-5)))
    assert np.max(np.abs(np.diff(np.log(lam)))) <= 0.1 + 1e-5


def test_lambda_backs_off_on_a_variance_spike():
  t = np.arange(400)
  calm = 0.5 + 0.05 * np.exp(-t / 100.0) * np.sin(t)   # jitter dies out
  spiky = calm + np.where((t >= 200) & (t < 220), 0.5 * (t % 2), 0.0)
  a = _lam_run(calm, variance=1.0)
  b = _lam_run(spiky, variance=1.0)
  np.testing.assert_allclose(a[:200], b[:200], rtol=1e-6)
  lam0 = basis.Config().lam_init
  assert a[199] > 1.5 * lam0 and a[-1] > 3 * lam0   # calmer: V < V*, λ up
  assert b[230] < 0.5 * a[230]               # the spike pulls it down


def test_library_and_dataset():
  f = basis.library(np.array([0.0, 1.0]))
  assert f.shape == (2, len(basis.NAMES))
  np.testing.assert_allclose(f[1, basis.NAMES.index("x²")], 1.0)
  np.testing.assert_allclose(f[0, basis.NAMES.index("exp(-x)")], 1.0)
  cfg = basis.Config()
  d = basis.dataset(3, cfg)
  assert d["f"].shape == (cfg.n_train, len(basis.NAMES))
  np.testing.assert_allclose(d["f"].mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(d["f"].std(0), 1.0, rtol=1e-4)
  np.testing.assert_array_equal(basis.dataset(3, cfg)["y"], d["y"])


def test_active_set_and_refit():
  w = np.zeros(len(basis.NAMES))
  w[basis.NAMES.index("sin x")] = 0.7
  w[basis.NAMES.index("cos x")] = 0.04      # below the threshold
  w[basis.NAMES.index("x²")] = -0.6
  assert basis.active_set(w) == basis.TRUE
  # Noise-free targets on the true bases: the refit on them is exact.
  d = basis.dataset(1, basis.Config())
  cols = [basis.NAMES.index("sin x"), basis.NAMES.index("x²")]
  exact = {"f": d["f"], "y": d["f"][:, cols] @ [0.7, -0.6] + 0.2,
           "f_test": d["f_test"],
           "y_test": d["f_test"][:, cols] @ [0.7, -0.6] + 0.2}
  assert basis.refit_mse(exact, basis.TRUE) < 1e-8
  assert basis.refit_mse(exact, frozenset({"sin x"})) > 1e-2


def test_ae_lambda_recovers_sin_and_x2_on_an_easy_seed():
  cfg = basis.Config()
  out = basis.run_ae(basis.stacked([1], cfg), cfg, basis.W_V[0])
  assert out["sets"][0] == basis.TRUE
  assert out["refit"][0] < 1.5 * cfg.noise ** 2
  assert out["lam"][0, -1] > 10 * cfg.lam_init   # λ rose


def test_run_assembles_its_report(monkeypatch, tmp_path):
  monkeypatch.setattr(basis, "config",
                      lambda profile: basis.Config(steps=200))
  monkeypatch.setattr(basis, "W_V", basis.W_V[:1])
  out = menu.get("15").run(dict(seeds=2, scale=1), str(tmp_path))
  assert {"markdown", "predictions", "figures"} <= set(out)
  assert "| method | test MSE |" in out["markdown"]
  assert "LassoCV (sklearn)" in out["markdown"]
  assert "(figures/exp15_basis_lambda.png)" in out["markdown"]
  assert (tmp_path / "exp15_basis_lambda.png").exists()
  assert len(out["predictions"]) == 3
  for row in out["predictions"]:
    assert set(row) == {"prediction", "measured", "verdict"}
    assert row["verdict"] in ("holds", "fails")


@pytest.mark.parametrize("factor", [2.0])
def test_descent_end(factor):
  val = np.array([[4.0, 3.0, 1.5, 1.0, 1.2], [9.0, 1.0, 1.0, 1.0, 1.0]])
  np.testing.assert_array_equal(basis.descent_end(val, factor), [2, 1])

"""Parity of ``ae.reference_agent`` with the theory's own PyTorch ``AEAgent``.

The oracle is ``../shared/theory/reference/AE.py`` beside the checkout, run
unchanged in float64; ``reference_agent`` must follow it step by step to
1e-9 relative, its defects included (shared/README.md, defect 1).
"""

import importlib.util
import math
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ae_jax as ae

REFERENCE_DIR = (Path(__file__).resolve().parents[1].parent / "shared" /
                 "theory" / "reference")
if os.environ.get("CI"):
  # CI installs torch 2.13.0 and has ../shared: parity must run there, never
  # skip.
  import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  assert (REFERENCE_DIR / "AE.py").exists(), f"no reference at {REFERENCE_DIR}"
else:
  torch = pytest.importorskip("torch")
  if not (REFERENCE_DIR / "AE.py").exists():
    pytest.skip(f"reference code not found at {REFERENCE_DIR}",
                allow_module_level=True)
# Loaded from its file (it is not a package); registered so its dataclasses
# can find their module.
_SPEC = importlib.util.spec_from_file_location("ae_reference_torch",
                                               REFERENCE_DIR / "AE.py")
_AE = sys.modules["ae_reference_torch"] = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_AE)
AEAgent, AEConfig = _AE.AEAgent, _AE.AEConfig

RTOL = 1e-9
STEPS = 300


def _close(name, step, mine, theirs):
  """Relative 1e-9, or both exactly 0."""
  mine, theirs = np.asarray(mine, np.float64), np.asarray(theirs, np.float64)
  exact_zero = (mine == 0.0) & (theirs == 0.0)
  err = np.abs(mine - theirs)
  ok = exact_zero | (err <= RTOL * np.abs(theirs))
  assert ok.all(), (f"step {step}: {name} = {mine} (ae_jax) vs {theirs} "
                    f"(AE.py), relative error "
                    f"{np.max(err / np.maximum(np.abs(theirs), 1e-300))}")


def _run_parity(loss_jax, loss_torch, dim, init_alpha, init_mu, cfg,
                batches):
  """Runs both agents on the same batches; compares every step.

  Returns the lists of reference logs and of JAX thetas.
  """
  agent = AEAgent(dim=dim, cfg=AEConfig(dtype=torch.float64, **cfg), seed=0,
                  init_alpha=init_alpha, init_mu=init_mu, init_sigma=0.0)
  tx = ae.reference_agent(init_alpha=init_alpha, init_mu=init_mu,
                          init_sigma=0.0, **cfg)
  theta = jnp.zeros(dim, jnp.float64)
  state = tx.init(theta)
  assert ae.coefficients(state)["learning_rate"].dtype == jnp.float64

  @jax.jit
  def step(theta, state, batch):
    loss, grad = jax.value_and_grad(loss_jax)(theta, *batch)
    updates, state = tx.update(grad, state, theta, value=loss)
    return optax.apply_updates(theta, updates), state, loss

  logs, thetas = [], []
  for t, batch in enumerate(batches):
    tbatch = [torch.from_numpy(np.asarray(x)) for x in batch]
    log = agent.step(lambda th: loss_torch(th, *tbatch))
    theta, state, loss = step(theta, state,
                              tuple(jnp.asarray(x) for x in batch))
    c, s = ae.coefficients(state), ae.signals(state)
    _close("loss", t, loss, log["loss"])
    _close("alpha", t, c["learning_rate"], log["alpha"])
    _close("mu", t, c["momentum"], log["mu"])
    _close("sigma", t, c["sigma"], log["sigma"])
    for key in ("T", "V", "S", "rho", "gamma", "gnorm"):
      _close(key, t, s[key], log[key])
    _close("theta", t, theta, agent.theta.detach().numpy())
    logs.append(log)
    thetas.append(np.asarray(theta))
  return logs, thetas


# -- case A: the reference's quadratic, where its defect shows ----------------

A = np.diag([3.0, 1.0])
B = np.array([1.0, -2.0])
QUAD_CFG = dict(sigma_min=0.0, sigma_max=0.0, auto_gamma=True,
                auto_gamma_warmup=20, alpha_min=1e-6, alpha_max=0.3)


def _quad_jax(theta):
  return 0.5 * theta @ (jnp.asarray(A) @ theta) - jnp.asarray(B) @ theta


def _quad_torch(theta):
  a, b = torch.from_numpy(A), torch.from_numpy(B)
  return 0.5 * theta @ (a @ theta) - b @ theta


def test_parity_quadratic_reproduces_the_defect(x64):
  logs, thetas = _run_parity(_quad_jax, _quad_torch, 2, 5e-2, 0.0, QUAD_CFG,
                             [()] * STEPS)
  # Defect 1: steady alignment (ρ ≈ +1) fires the two-sided clamp every
  # step; α is at its floor by step 50 and the loss stalls near -0.9075,
  # far from the optimum -2.1667.
  alphas = np.array([log["alpha"] for log in logs])
  assert alphas[49] == pytest.approx(1e-6, rel=1e-9)
  assert (alphas[49:] <= 1e-6 * (1 + 1e-9)).all()
  assert max(log["rho"] for log in logs[5:50]) > 0.95
  final = float(_quad_jax(jnp.asarray(thetas[-1])))
  assert final == pytest.approx(-0.9075, abs=1e-3)
  optimum = -0.5 * B @ np.linalg.solve(A, B)
  assert final - optimum > 1.2


# -- case B: noisy minibatch least squares ------------------------------------


def _lsq_jax(theta, x, y):
  return 0.5 * jnp.mean(jnp.square(x @ theta - y))


def _lsq_torch(theta, x, y):
  return 0.5 * torch.mean(torch.square(x @ theta - y))


def _lsq_batches(dim=10, batch=32, steps=STEPS, seed=0):
  rng = np.random.default_rng(seed)
  w_star = rng.normal(size=dim)
  out = []
  for _ in range(steps):
    x = rng.normal(size=(batch, dim))
    y = x @ w_star + 0.3 * rng.normal(size=batch)
    out.append((x, y))
  return out, w_star


@pytest.mark.parametrize("init_mu", [0.0, 0.9])
def test_parity_minibatch_least_squares(x64, init_mu):
  batches, w_star = _lsq_batches()
  cfg = dict(sigma_min=0.0, sigma_max=0.0)
  logs, thetas = _run_parity(_lsq_jax, _lsq_torch, 10, 1e-2, init_mu, cfg,
                             batches)
  # Not a vacuous comparison: the coefficients did move, and training did.
  alphas = np.array([log["alpha"] for log in logs])
  mus = np.array([log["mu"] for log in logs])
  assert np.ptp(alphas) > 1e-3 and np.ptp(mus) > 1e-5
  # The run crosses the reference's discrete branches too: the resonance
  # clamp (α / 1.25 within one step) and the gauge's calibration (step 201).
  assert (alphas[1:] / alphas[:-1] < 0.85).sum() >= 2
  assert (np.linalg.norm(thetas[-1] - w_star)
          < 0.5 * np.linalg.norm(w_star))
  assert math.isfinite(logs[-1]["loss"])

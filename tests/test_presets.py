"""The canonical presets: defaults that work, the usage contract, the laws' behaviour."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ae_jax as ae


class Trajectory(NamedTuple):
  theta: jax.Array          # (steps, ...) parameters after each step
  coefficients: dict        # name -> (steps,) coefficient values
  signals: dict             # name -> (steps,) signals
  state: Any                # the final optimizer state


def run(tx, loss_fn, steps, theta0, *, observe=True) -> Trajectory:
  """``steps`` steps of ``tx`` on ``loss_fn(theta, t)`` in one jitted
  ``lax.scan``; ``observe=False`` for a plain Optax optimizer (no
  ``value=``, no coefficients to record)."""

  def body(carry, t):
    theta, state = carry
    loss, grad = jax.value_and_grad(loss_fn)(theta, t)
    extra = {"value": loss} if observe else {}
    updates, state = tx.update(grad, state, theta, **extra)
    theta = optax.apply_updates(theta, updates)
    if not observe:
      return (theta, state), (theta, {}, {})
    return (theta, state), (theta, ae.coefficients(state), ae.signals(state))

  @jax.jit
  def scan(theta0):
    init = (theta0, tx.init(theta0))
    return jax.lax.scan(body, init, jnp.arange(steps))

  (_, state), (thetas, coefficients, signals) = scan(theta0)
  to_np = lambda tree: {k: np.asarray(v) for k, v in tree.items()}
  return Trajectory(np.asarray(thetas), to_np(coefficients), to_np(signals),
                    state)


def run_pair(tx, loss_fn, steps, theta0, args) -> list[Trajectory]:
  """Two runs of ``tx`` in one compiled program: ``loss_fn(theta, t, arg)``
  for each of the two ``args`` (a pytree with a leading axis of 2)."""

  def one(arg):
    def body(carry, t):
      theta, state = carry
      loss, grad = jax.value_and_grad(loss_fn)(theta, t, arg)
      updates, state = tx.update(grad, state, theta, value=loss)
      theta = optax.apply_updates(theta, updates)
      return (theta, state), (theta, ae.coefficients(state),
                              ae.signals(state))
    return jax.lax.scan(body, (theta0, tx.init(theta0)), jnp.arange(steps))

  (_, states), (thetas, coefficients, signals) = jax.jit(jax.vmap(one))(args)
  pick = lambda tree, i: {k: np.asarray(v[i]) for k, v in tree.items()}
  return [Trajectory(np.asarray(thetas[i]), pick(coefficients, i),
                     pick(signals, i), jax.tree.map(lambda x: x[i], states))
          for i in range(2)]


def history(trajectory, name):
  return trajectory.coefficients[name]


def signal_history(trajectory, name):
  return trajectory.signals[name]


# -- (a) defaults that work: the reference's quadratic ------------------------

QA = np.diag([3.0, 1.0])
QB = np.array([1.0, -2.0])
Q_OPT = -0.5 * QB @ np.linalg.solve(QA, QB)   # -2.1667


def quad(theta, t=None):
  del t
  return 0.5 * theta @ (jnp.asarray(QA) @ theta) - jnp.asarray(QB) @ theta


def gaps(trajectory):
  th = np.asarray(trajectory.theta, np.float64)
  return 0.5 * np.einsum("ti,ij,tj->t", th, QA, th) - th @ QB - Q_OPT


def first_below(g, tol=1e-6):
  below = np.flatnonzero(g < tol)
  return int(below[0]) + 1 if below.size else None


def test_ae_sgdm_beats_sgd_on_the_reference_quadratic(x64):
  assert Q_OPT == pytest.approx(-2.1666667, rel=1e-6)
  steps = 300
  sgd = gaps(run(optax.sgd(5e-2), quad, steps, jnp.zeros(2), observe=False))
  traj = run(ae.ae_sgdm(5e-2, momentum=0.0), quad, steps, jnp.zeros(2))
  assert traj.coefficients["learning_rate"].dtype == np.float64
  adaptive = gaps(traj)
  hit_sgd, hit_ae = first_below(sgd), first_below(adaptive)
  assert hit_sgd is not None and 130 <= hit_sgd <= 155   # about 142
  assert hit_ae is not None and hit_ae <= hit_sgd
  assert (adaptive[hit_ae - 1:] < 1e-6).all()          # and it stays there


def test_reference_agent_stalls_on_the_same_quadratic(x64):
  """The defect the presets fix (shared/README.md, defect 1): the reference's
  two-sided resonance clamp fires on steady alignment and α collapses."""
  tx = ae.reference_agent(init_alpha=5e-2, init_mu=0.0, init_sigma=0.0,
                          sigma_min=0.0, sigma_max=0.0, auto_gamma=True,
                          auto_gamma_warmup=20, alpha_min=1e-6,
                          alpha_max=0.3)
  traj = run(tx, quad, 300, jnp.zeros(2))
  assert float(quad(traj.theta[-1])) == pytest.approx(-0.9075, abs=1e-3)
  assert gaps(traj).min() > 1.0
  assert history(traj, "learning_rate")[-1] == pytest.approx(1e-6)


# -- (b) the usage contract ---------------------------------------------------

PARAMS = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}


@pytest.mark.parametrize("factory, names", [
    (lambda: ae.ae_adamw(learning_rate=1e-3),
     {"learning_rate", "b1", "b2", "eps", "weight_decay", "sigma"}),
    (lambda: ae.ae_adam(learning_rate=1e-3),
     {"learning_rate", "b1", "b2", "eps", "sigma"}),
    (lambda: ae.ae_sgdm(learning_rate=1e-2),
     {"learning_rate", "momentum", "sigma"}),
])
def test_usage_contract(factory, names):
  tx = factory()
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  state = tx.init(PARAMS)
  assert set(ae.coefficients(state)) == names
  # float32 by default (also checks that the x64 fixtures restore the flag)
  assert ae.coefficients(state)["learning_rate"].dtype == jnp.float32
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  updates, state = jax.jit(
      lambda g, s, p: tx.update(g, s, p, value=1.0))(grads, state, PARAMS)
  assert jax.tree.structure(updates) == jax.tree.structure(PARAMS)
  assert set(ae.coefficients(state)) == names
  sig = ae.signals(state)
  assert {"T", "V", "R", "rho", "S", "gamma"} <= set(sig)
  for value in sig.values():
    assert np.isfinite(float(value))
  with pytest.raises(TypeError, match="value"):
    tx.update(grads, state, PARAMS)


def test_initial_values_are_the_arguments():
  args = dict(b1=0.8, b2=0.99, eps=1e-6, weight_decay=1e-3)
  order = ["learning_rate", "b1", "b2", "eps", "weight_decay", "sigma"]
  # By default α warm-starts at warm_start = 1e-3 times the given rate (and
  # climbs on its hypergradient); every other coefficient is its argument.
  c = ae.coefficients(ae.ae_adamw(3e-4, **args).init(PARAMS))
  np.testing.assert_allclose([c[n] for n in order],
                             [3e-7, 0.8, 0.99, 1e-6, 1e-3, 0.0], rtol=1e-5)
  # warm_start=1.0 starts exactly at the arguments.
  c = ae.coefficients(ae.ae_adamw(3e-4, warm_start=1.0, **args).init(PARAMS))
  np.testing.assert_allclose([c[n] for n in order],
                             [3e-4, 0.8, 0.99, 1e-6, 1e-3, 0.0], rtol=1e-5)
  # Ω of α is the given rate times [1e-6, 1e5], its anchor the given rate;
  # a warm start below an explicit Ω starts on its floor.
  (lr,) = [s for s in ae.presets.adamw_coefficients(3e-4, **args)
           if s.name == "learning_rate"]
  np.testing.assert_allclose([lr.init, lr.lower, lr.upper, lr.anchor],
                             [3e-7, 3e-10, 30.0, 3e-4], rtol=1e-12)
  c = ae.coefficients(ae.ae_adamw(3e-4, learning_rate_bounds=(1e-5, 1e-3),
                                  **args).init(PARAMS))
  np.testing.assert_allclose(c["learning_rate"], 1e-5, rtol=1e-5)


# -- (c) bounds and the canonical laws' behaviour -----------------------------


def _lsq_problem(dim=8, batch=16, steps=200, seed=0, noise=0.5):
  rng = np.random.default_rng(seed)
  w_star = rng.normal(size=dim)
  x = rng.normal(size=(steps, batch, dim))
  y = x @ w_star + noise * rng.normal(size=(steps, batch))
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)

  def loss(theta, t):
    return 0.5 * jnp.mean(jnp.square(x[t] @ theta - y[t]))

  return loss, jnp.zeros(dim)


def _assert_inside(trajectory, bounds):
  for name, (lo, hi) in bounds.items():
    values = history(trajectory, name)
    assert np.isfinite(values).all(), name
    # float32 round trip through z: a relative ulp or two
    assert values.min() >= lo - 1e-6 * abs(lo), (name, values.min(), lo)
    assert values.max() <= hi + 1e-6 * abs(hi), (name, values.max(), hi)


ADAMW_NAMES = ["learning_rate", "b1", "b2", "eps", "weight_decay", "sigma"]


def test_adamw_coefficients_stay_inside_bounds_on_a_noisy_run():
  loss, theta0 = _lsq_problem()
  bounds = {
      "learning_rate": (1e-3, 5e-2), "b1": (0.0, 0.999),
      "b2": (0.9, 0.99999), "eps": (1e-10, 1e-4),
      "weight_decay": (1e-6, 1e-2), "sigma": (0.0, 0.0)}
  # The default: the warm start 5e-2 * 1e-3 lies below Ω, so α starts on
  # its floor and the hypergradient carries it up; no default law moves the
  # other coefficients.
  tx = ae.ae_adamw(5e-2, learning_rate_bounds=(1e-3, 5e-2), eps=1e-8,
                   weight_decay=1e-4)
  assert float(ae.coefficients(tx.init(theta0))["learning_rate"]) == (
      pytest.approx(1e-3, rel=1e-5))
  traj = run(tx, loss, 200, theta0)
  _assert_inside(traj, bounds)
  assert np.ptp(history(traj, "learning_rate")) > 1e-4  # α moved
  for name, value in [("b1", 0.9), ("b2", 0.999), ("eps", 1e-8),
                      ("weight_decay", 1e-4)]:
    np.testing.assert_allclose(history(traj, name), value, rtol=1e-5)
  assert float(loss(traj.theta[-1], 199)) < float(loss(theta0, 199))
  # Every opt-in law on (the drive moves β1, β2, ε), α started on its
  # ceiling (warm_start=1.0), where progress pushes it: all stay in Ω.
  chain = ae.canonical_laws(ADAMW_NAMES, drive=True, resonance=True,
                            gauge=True, coupling=True)
  tx = ae.ae_adamw(5e-2, learning_rate_bounds=(1e-3, 5e-2), eps=1e-8,
                   weight_decay=1e-4, warm_start=1.0, laws_chain=chain)
  traj = run(tx, loss, 200, theta0)
  _assert_inside(traj, bounds)
  assert np.ptp(history(traj, "learning_rate")) > 1e-4  # α moved
  assert np.ptp(history(traj, "b1")) > 1e-4  # the coefficients moved
  assert float(loss(traj.theta[-1], 199)) < float(loss(theta0, 199))


def test_sgdm_learning_rate_presses_on_its_ceiling_and_stays_below():
  loss, theta0 = _lsq_problem()
  # α starts on its ceiling; progress and the gauge push it up.
  tx = ae.ae_sgdm(1e-2, learning_rate_bounds=(1e-4, 1e-2), momentum=0.5)
  traj = run(tx, loss, 200, theta0)
  _assert_inside(traj, {"learning_rate": (1e-4, 1e-2),
                        "momentum": (0.0, 0.99)})
  assert history(traj, "learning_rate").max() >= 1e-2 * (1 - 1e-6)


def test_sgdm_with_noise_stays_inside_bounds():
  loss, theta0 = _lsq_problem(seed=1)
  tx = ae.ae_sgdm(0.1, momentum=0.9, sigma=1e-3,
                  learning_rate_bounds=(1e-3, 0.2))
  traj = run(tx, loss, 200, theta0)
  _assert_inside(traj, {"learning_rate": (1e-3, 0.2),
                        "momentum": (0.0, 0.99), "sigma": (1e-6, 1e-1)})
  sigma = history(traj, "sigma")
  assert np.ptp(sigma) > 0   # σ > 0 follows the noise law
  assert np.isfinite(traj.theta[-1]).all()


def _ramp_or_ravine(theta, t, arg):
  """``p·θ + (-1)^t q·θ``. Ramp: q = 0, a constant gradient, consecutive
  gradients aligned (ρ = +1). Ravine: progress along p, a sign-alternating
  pull along q ⟂ p, ρ between -0.3 and -0.9 against the momentum (which
  keeps its p component)."""
  p, q = arg
  sign = 1.0 - 2.0 * (t % 2)
  return p @ theta + sign * (q @ theta)


RAMP_AND_RAVINE = (jnp.array([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]]),
                   jnp.array([[0.0, 0.0, 0.0, 0.0], [0.0, 10.0, 0.0, 0.0]]))


def _ramp(theta, t):
  return _ramp_or_ravine(theta, t, (RAMP_AND_RAVINE[0][0],
                                    RAMP_AND_RAVINE[1][0]))


ADAM_NAMES = ["learning_rate", "b1", "b2", "eps", "sigma"]


def test_b1_tracks_rho():
  # b1's drive row (0.5 tanh(ρ - ρ*), ρ* = 0.3, + variance and leak) is
  # opt-in. The hypergradient is off and α starts at the given rate, as the
  # drive-only presets did: on this unbounded linear loss the hypergradient
  # (ρ ≈ 1 on the ramp) would climb α to its ceiling, the accelerating loss
  # would read as V/V* ≈ 4-12, and the variance row, not the phase row
  # under test, would pull b1 down.
  chain = ae.canonical_laws(ADAM_NAMES, drive=True, hypergradient=False)
  aligned, ravine = run_pair(ae.ae_adam(1e-2, warm_start=1.0,
                                        laws_chain=chain),
                             _ramp_or_ravine, 300, jnp.zeros(4),
                             RAMP_AND_RAVINE)
  rho_up = signal_history(aligned, "rho")[1:]
  rho_down = signal_history(ravine, "rho")[20:]
  b1_up, b1_down = history(aligned, "b1"), history(ravine, "b1")
  assert rho_up.min() > 0.99
  # For Adam, ρ is measured against the preconditioned momentum
  # mu / (sqrt(nu) + eps), the direction Adam applies, not mu. In the ravine
  # g = (1, ∓10, 0, 0); sqrt(nu) is (1, 10) up to a common factor, so the
  # direction is d ∝ (1, ±r) with r = (1 - β1) / (1 + β1) (the EMA of the
  # alternating ±10, divided by 10), and
  #   ρ = (1 - 10 r) / (sqrt(101) sqrt(1 + r²)):
  # 0.047 at β1 = 0.9, positive while β1 > 9/11, and always far below
  # ρ* = 0.3 (it was < -0.3 against mu), so b1's phase row is negative:
  # 0.5 tanh(ρ - ρ*) < 0.5 tanh(-0.2) while ρ < 0.1.
  r = (1 - b1_down[:-1]) / (1 + b1_down[:-1])
  predicted = (1 - 10 * r) / (np.sqrt(101) * np.sqrt(1 + r * r))
  np.testing.assert_allclose(signal_history(ravine, "rho")[50:],
                             predicted[49:], rtol=0.02)
  assert rho_down.min() > 0.0 and rho_down.max() < 0.1
  assert b1_up[-1] > 0.91                    # rose from 0.9
  assert b1_down[-1] < 0.85                  # fell from 0.9
  assert (b1_down[50:] < 0.9).all() and (np.diff(b1_down[50:]) < 0).mean() > 0.9
  assert (b1_up[10:] > b1_down[10:]).all()


def test_sgdm_momentum_tracks_rho():
  # The momentum's drive row (0.8 tanh(ρ - ρ*) + variance and leak) is
  # opt-in; hypergradient off and α at the given rate as in
  # test_b1_tracks_rho (the climbing α would pull the momentum down on the
  # ramp through the variance row). ema_sgd keeps no second moment: ρ is
  # still measured against the momentum.
  chain = ae.canonical_laws(SGDM_NAMES, drive=True, hypergradient=False)
  aligned, ravine = run_pair(ae.ae_sgdm(1e-2, momentum=0.9, warm_start=1.0,
                                        laws_chain=chain), _ramp_or_ravine,
                             100, jnp.zeros(4), RAMP_AND_RAVINE)
  assert signal_history(aligned, "rho")[1:].min() > 0.99
  assert signal_history(ravine, "rho")[20:].max() < -0.5
  mu_up, mu_down = history(aligned, "momentum"), history(ravine, "momentum")
  assert (mu_down[10:] < mu_up[10:] - 0.05).all()
  assert mu_down[-1] < 0.4


def test_sgdm_momentum_at_its_anchor_is_a_fixed_point_without_drive():
  # Leak only (anchor 0.9): no drive, coupling, gauge, budget or resonance;
  # the barrier is documented as ~0 inside Omega.
  chain = ae.canonical_laws(SGDM_NAMES, drive=False, gauge=False,
                            resonance=False, coupling=False, budget=False)
  traj = run(ae.ae_sgdm(1e-2, momentum=0.9, laws_chain=chain), _ramp, 100,
             jnp.zeros(4))
  np.testing.assert_allclose(history(traj, "momentum"), 0.9, atol=0.01)


def test_b2_rises_when_the_loss_variance_spikes():
  steps, spike = 140, 80
  rng = np.random.default_rng(0)
  jolt = np.where(np.arange(steps) >= spike, 5.0 * rng.normal(size=steps), 0)
  jolt = jnp.asarray(jolt, jnp.float32)

  def bowl(theta, t):
    del t
    return 0.5 * jnp.sum(jnp.square(theta - 1.0))

  # Same gradients in both runs; only the reported loss jolts after `spike`
  # (the jolt is a constant in θ). b2's variance row (drive) and the
  # resonance clamp are opt-in: switched on, over the default chain.
  chain = ae.canonical_laws(ADAM_NAMES, drive=True, resonance=True)
  calm, noisy = run_pair(ae.ae_adam(1e-2, laws_chain=chain),
                         lambda theta, t, scale: bowl(theta, t)
                         + jax.lax.stop_gradient(scale * jolt[t]),
                         steps, jnp.zeros(4), jnp.array([0.0, 1.0]))
  b2_calm, b2_noisy = history(calm, "b2"), history(noisy, "b2")
  np.testing.assert_allclose(b2_noisy[:spike], b2_calm[:spike], rtol=1e-6)
  ratio = signal_history(noisy, "V") / signal_history(noisy, "V_star")
  assert ratio[spike:spike + 10].max() > 4.0
  # In z = logit coordinates β2 moved up by well over a step's worth.
  logit = lambda b: np.log((b - 0.9) / (0.99999 - b))
  assert logit(b2_noisy[-1]) - logit(b2_calm[-1]) > 0.2
  assert b2_noisy[-1] > b2_calm[-1] > 0.999
  # and the variance spike shrank α (resonance, variance drive)
  lr_calm, lr_noisy = (history(calm, "learning_rate"),
                       history(noisy, "learning_rate"))
  assert lr_noisy[spike + 10] < 0.5 * lr_calm[spike + 10]


# -- (d) the canonical law knock-outs -----------------------------------------

SGDM_NAMES = ["learning_rate", "momentum", "sigma"]
# Laws of the default chain (noise: σ is adapted), and the opt-in laws.
DEFAULT_LAWS = ["hypergradient", "noise"]
OPT_IN_LAWS = ["budget", "resonance", "gauge", "coupling", "drive", "safety"]


def test_knockouts_build_chains_that_run():
  loss, theta0 = _lsq_problem(steps=5)
  z = {n: jnp.zeros([]) for n in SGDM_NAMES}
  # noise on σ, evolve, hypergradient
  assert len(ae.canonical_laws(SGDM_NAMES).init(z)) == 3
  finals = {}
  for flag in [None] + DEFAULT_LAWS + OPT_IN_LAWS:
    kwargs = {} if flag is None else {flag: flag in OPT_IN_LAWS}
    chain = ae.canonical_laws(SGDM_NAMES, **kwargs)
    assert isinstance(chain, optax.GradientTransformationExtraArgs)
    if flag in DEFAULT_LAWS:
      assert len(chain.init(z)) == 2, flag     # exactly one law removed
    elif flag in OPT_IN_LAWS:
      assert len(chain.init(z)) == 4, flag     # exactly one law added
    traj = run(ae.ae_sgdm(1e-2, sigma=1e-3, laws_chain=chain), loss, 5,
               theta0)
    for name, values in traj.coefficients.items():
      assert np.isfinite(values).all(), (flag, name)
    assert np.isfinite(traj.theta).all(), flag
    finals[flag] = {k: float(v[-1]) for k, v in traj.coefficients.items()}
  # Laws that act from the first step change the coefficients when knocked
  # out (noise on σ, the hypergradient on α) or in (the drive; the coupling,
  # since α warm-starts 1e-3 below its anchor and the centred ζ_α saturates).
  # The gauge waits 50 steps, the clamp needs an oscillation or a spike, the
  # trust region (budget) binds only on large steps (|hypergradient| <=
  # 0.2 < 0.25), the safety law on a loss 10% above its best level.
  for flag in ("noise", "hypergradient", "coupling", "drive"):
    assert finals[flag] != finals[None], flag


def test_knocking_out_every_driver_freezes_alpha():
  # Every law that drives α off: the hypergradient (default) and the opt-in
  # drive, gauge, resonance, coupling and safety. α starts at the given rate
  # (warm_start=1.0), inside Ω, so the barrier below is the only force. The
  # travel cap, not a law, is off too (it would lower α on the first steps).
  chain = ae.canonical_laws(SGDM_NAMES, hypergradient=False, drive=False,
                            gauge=False, resonance=False, coupling=False,
                            safety=False)
  lo, hi = 1e-5, 1e-1
  traj = run(ae.ae_sgdm(1e-2, learning_rate_bounds=(lo, hi), warm_start=1.0,
                        laws_chain=chain, travel_cap=None), quad, 30,
             jnp.zeros(2))
  lr = history(traj, "learning_rate")
  # Only the smooth barrier acts (width w = 1% of the log-interval, at most
  # 0.5; meta-step 0.01): log α drifts by -0.01 ψ'(log α), where
  # ψ'(z) = σ((z - log hi)/w) - σ((log lo - z)/w).
  sig = lambda x: 1 / (1 + np.exp(-x))
  z = np.log(1e-2)
  w = min(0.5, 0.01 * (np.log(hi) - np.log(lo)))
  push = sig((z - np.log(hi)) / w) - sig((np.log(lo) - z) / w)
  np.testing.assert_allclose(np.diff(np.log(lr)), -0.01 * push, rtol=0.05,
                             atol=1e-9)
  assert np.abs(lr / 1e-2 - 1).max() < 5e-3
  # The default chain (the hypergradient) moves α from the same start.
  full = history(run(ae.ae_sgdm(1e-2, learning_rate_bounds=(lo, hi),
                                warm_start=1.0), quad, 30, jnp.zeros(2)),
                 "learning_rate")
  assert np.abs(full / 1e-2 - 1).max() > 2e-2


def test_resonance_knockout_shrinks_alpha_less_on_a_too_large_step():
  # α = 0.8 on curvature 3: the stiff direction oscillates and grows
  # (|1 - 0.8 * 3| = 1.4 > 1), ρ ≈ -1.
  # The clamp is opt-in: both runs start at α = 0.8 (warm_start=1.0) with
  # the drive on and the hypergradient off (ρ ≈ -1 would cut α by e^-0.2 a
  # step by itself), and differ only in the resonance law.
  steps = 40
  laws = dict(drive=True, hypergradient=False)
  # The travel cap is off: it would shorten the first steps below the
  # oscillation this test needs.
  full = run(
      ae.ae_sgdm(0.8, momentum=0.0, warm_start=1.0, travel_cap=None,
                 laws_chain=ae.canonical_laws(SGDM_NAMES, resonance=True,
                                              **laws)),
      quad, steps, jnp.zeros(2))
  knocked = run(
      ae.ae_sgdm(0.8, momentum=0.0, warm_start=1.0, travel_cap=None,
                 laws_chain=ae.canonical_laws(SGDM_NAMES, resonance=False,
                                              **laws)),
      quad, steps, jnp.zeros(2))
  assert signal_history(knocked, "rho")[2:10].max() < -0.9
  lr_full = history(full, "learning_rate")
  lr_knocked = history(knocked, "learning_rate")
  assert lr_full[10] < 0.75 * lr_knocked[10]
  assert lr_full[:10].min() < 0.6 * 0.8     # the clamp cut α fast
  assert lr_knocked[:4].min() > 0.75        # without it α barely moved yet
  assert lr_full[-1] < lr_knocked[-1]


def test_ema_sgd_alpha_is_heavy_ball_rate_over_one_minus_beta():
  # ema_sgd(α, β) takes exactly the steps of optax.sgd(α (1 - β), β): the
  # conversion the ae_sgdm docstring states.
  grads = [jnp.array([1.0, -2.0]), jnp.array([0.5, 3.0]),
           jnp.array([-1.0, 0.25])]
  ema, heavy = ae.ema_sgd(0.1, 0.9), optax.sgd(0.01, momentum=0.9)
  s_ema, s_heavy = ema.init(grads[0]), heavy.init(grads[0])
  for g in grads:
    u_ema, s_ema = ema.update(g, s_ema)
    u_heavy, s_heavy = heavy.update(g, s_heavy)
    np.testing.assert_allclose(u_ema, u_heavy, rtol=1e-6)
  # and at the same α the two conventions differ
  u_other, _ = ae.ema_sgd(0.01, 0.9).update(grads[0],
                                            ae.ema_sgd(0.01, 0.9).init(grads[0]))
  assert not np.allclose(u_other, heavy.update(grads[0],
                                               heavy.init(grads[0]))[0])


def test_ae_sgdm_default_starts_like_optax_sgd_default():
  # The default α = 0.1 (EMA momentum 0.9) is optax.sgd(1e-2, momentum=0.9):
  # started at the given rate (warm_start=1.0) the first update is the same
  # before AE has moved anything (delayed: step 0 runs with the initial
  # coefficients; the gradient clip has no limit before the first gradient;
  # the travel cap, which would shorten it, off).
  ref = optax.sgd(1e-2, momentum=0.9)
  g = jax.tree.map(lambda p: jnp.full_like(p, 0.7), PARAMS)
  u_ref, _ = ref.update(g, ref.init(PARAMS), PARAMS)
  tx = ae.ae_sgdm(delayed=True, warm_start=1.0, travel_cap=None)
  u, _ = tx.update(g, tx.init(PARAMS), PARAMS, value=1.0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               u, u_ref)
  # Without the cap the default warm-starts α at 1e-3 of the rate: its first
  # step is 1e-3 of optax.sgd's.
  tx = ae.ae_sgdm(delayed=True, travel_cap=None)
  u, _ = tx.update(g, tx.init(PARAMS), PARAMS, value=1.0)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, 1e-3 * b, rtol=1e-6),
      u, u_ref)
  # With it (the default) α starts at the rate, and the cap shortens the
  # first step to its radius 1e-3 (1 + ‖θ₀‖), the same direction: whatever
  # the rate, as far as the warm start took it.
  norm = lambda t: float(optax.tree.norm(t))
  radius = ae.presets.TRAVEL_RADIUS * (1.0 + norm(PARAMS))
  for rate in (0.1, 100.0):
    tx = ae.ae_sgdm(rate, delayed=True)
    u, _ = tx.update(g, tx.init(PARAMS), PARAMS, value=1.0)
    np.testing.assert_allclose(norm(u), radius, rtol=1e-4)
    np.testing.assert_allclose(
        optax.tree.vdot(u, u_ref) / (norm(u) * norm(u_ref)), 1.0, rtol=1e-6)


@pytest.mark.parametrize("lr", [1e-3, 0.1])
def test_adamw_decays_at_the_users_rate_whatever_alpha(lr):
  # A zero gradient leaves the decay alone in the update: lr · λ · θ per
  # step (optax.adamw's at that rate), while α sits at its warm start
  # 1e-3 · lr; before 2026-12-07 the decay ran at α (1e-3 of this).
  params = {"w": jnp.array([1.0, -2.0, 0.5])}
  tx = ae.ae_adamw(lr, weight_decay=0.1)
  state = tx.init(params)
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, value=jnp.float32(1.0)))
  updates, state = update({"w": jnp.zeros(3)}, state, params)
  np.testing.assert_allclose(updates["w"], -lr * 0.1 * params["w"], rtol=1e-5)
  alpha = float(ae.coefficients(state)["learning_rate"])
  assert alpha < 2e-3 * lr
  # The base: Adam's step at α (its first step is α · sign(g)), the
  # decay at the given rate.
  base = ae.presets.adamw_decay_at(lr)(1e-2, 0.9, 0.999, 1e-8, 0.1)
  grads = {"w": jnp.array([0.3, -0.1, 0.2])}
  updates, _ = base.update(grads, base.init(params), params)
  np.testing.assert_allclose(
      updates["w"], -1e-2 * np.sign(grads["w"]) - lr * 0.1 * params["w"],
      rtol=1e-4)

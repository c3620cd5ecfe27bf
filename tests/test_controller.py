"""The controller on coefficients that are not optimizer hyperparameters.

AE-RL (an entropy temperature and a KL penalty) and AE-Curriculum (an
augmentation strength), each on a small deterministic plant.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ae_jax as ae

REWARDS = jnp.array([0.2, 0.5, 1.0])  # a 3-armed bandit, arm 2 is best


def _expected_reward(logits, temperature):
  probs = jax.nn.softmax(logits / temperature)
  return jnp.sum(probs * REWARDS), probs


def _train_bandit(adapt_temperature: bool, steps: int = 300):
  """Entropy-regularised policy gradient; the temperature is the coefficient.

  The policy is softmax(logits / τ); the objective is E[r] + τ H(π). AE-RL:
  the reward delta R is the exploitation pressure, pulling τ down while the
  return improves.
  """
  ctrl = ae.controller(
      [ae.Coefficient("temperature", init=2.0, lower=0.05, upper=5.0)],
      optax.chain(
          ae.laws.drive({"temperature": ae.laws.DriveGains(reward=-1.0)}),
          ae.laws.evolve({"temperature": 0.05 if adapt_temperature else 0.0}),
          ae.laws.budget({"temperature": 0.1})),
      step_size=None)

  def objective(logits, temperature):
    ret, probs = _expected_reward(logits, temperature)
    entropy = -jnp.sum(probs * jnp.log(probs + 1e-12))
    return ret + 0.1 * temperature * entropy, ret

  def body(carry, _):
    logits, cstate = carry
    temperature = cstate.values["temperature"]
    (_, ret), grad = jax.value_and_grad(objective, has_aux=True)(
        logits, temperature)
    logits = logits + 0.5 * grad  # ascent
    _, cstate = ctrl.update(grad, cstate, value=-ret, reward=ret)
    return (logits, cstate), (ret, temperature)

  (logits, cstate), (returns, temps) = jax.lax.scan(
      body, (jnp.zeros(3), ctrl.init()), None, length=steps)
  return returns, temps, cstate


def test_rl_temperature_falls_as_the_return_improves():
  returns, temps, cstate = jax.jit(_train_bandit, static_argnums=(0, 1))(
      True)
  returns, temps = np.asarray(returns), np.asarray(temps)
  assert returns[-1] > returns[0] + 0.3
  # The reward delta is positive while the policy improves: τ is driven down.
  assert temps[-1] < 0.5 * temps[0]
  assert np.all(np.diff(temps[:100]) <= 1e-6)
  assert np.all((temps >= 0.05 - 1e-6) & (temps <= 5.0 + 1e-6))
  assert float(ae.signals(cstate)["R"]) >= 0.0


def test_rl_adaptive_temperature_beats_the_fixed_one():
  adaptive, _, _ = jax.jit(_train_bandit, static_argnums=(0, 1))(True)
  fixed, temps, _ = jax.jit(_train_bandit, static_argnums=(0, 1))(False)
  np.testing.assert_allclose(np.asarray(temps), 2.0, rtol=1e-6)
  # Same plant, same budget: annealing the temperature from the reward
  # exploits better than holding it at its initial value.
  assert float(adaptive[-1]) > float(fixed[-1]) + 0.05


def _kl_penalty_run(noise_scale: float, steps: int = 200):
  """A KL-penalty coefficient that rises with the instability of the loss."""
  ctrl = ae.controller(
      [ae.Coefficient("kl_penalty", init=0.1, lower=1e-3, upper=10.0)],
      optax.chain(
          ae.laws.drive({"kl_penalty": ae.laws.DriveGains(
              variance=-1.0, leak=0.05)}),
          ae.laws.evolve({"kl_penalty": 0.05})),
      step_size=None)
  key = jax.random.PRNGKey(0)
  noise = jax.random.normal(key, (steps,))
  # A loss that decays; from step 100 it becomes unstable (bursts).
  t = jnp.arange(steps)
  burst = jnp.where(t >= 100, noise_scale * noise * (1 + t / 50.0), 0.0)
  losses = jnp.exp(-t / 50.0) + burst

  def body(cstate, loss):
    values, cstate = ctrl.update(None, cstate, value=loss)
    return cstate, values["kl_penalty"]

  _, kls = jax.lax.scan(body, ctrl.init(), losses)
  return np.asarray(kls)


def test_rl_kl_penalty_rises_with_instability():
  calm = _kl_penalty_run(0.0)
  unstable = _kl_penalty_run(1.0)
  np.testing.assert_allclose(calm[:100], unstable[:100], rtol=1e-6)
  assert unstable[-1] > 2.0 * calm[-1]
  assert unstable[-1] > unstable[99]


def _curriculum(spike: bool, steps: int = 240):
  """Augmentation strength s: grows while training progresses, backs off on
  a variance spike. The plant is linear regression on inputs corrupted with
  noise of standard deviation s."""
  ctrl = ae.controller(
      [ae.Coefficient("strength", init=0.05, lower=0.0, upper=1.0,
                      param="logit")],
      optax.chain(
          ae.laws.drive({"strength": ae.laws.DriveGains(
              progress=1.0, variance=2.0, leak=0.0)}),
          ae.laws.evolve({"strength": 0.05}),
          ae.laws.budget({"strength": 0.2})),
      step_size=None)
  key = jax.random.PRNGKey(1)
  kx, kn, kw = jax.random.split(key, 3)
  x = jax.random.normal(kx, (steps, 32, 4))
  eps = jax.random.normal(kn, (steps, 32, 4))
  w_true = jax.random.normal(kw, (4,))

  def loss_fn(w, xb, s, eb):
    return jnp.mean((((xb + s * eb) @ w) - xb @ w_true) ** 2)

  def body(carry, inputs):
    w, cstate = carry
    t, xb, eb = inputs
    s = cstate.values["strength"]
    loss, grad = jax.value_and_grad(loss_fn)(w, xb, s, eb)
    # An injected disturbance: the measured loss jumps for 10 steps.
    shock = jnp.where(spike & (t >= 150) & (t < 160), 5.0 * (t % 2), 0.0)
    w = w - 0.05 * grad
    _, cstate = ctrl.update(grad, cstate, value=loss + shock)
    return (w, cstate), s

  (_, _), strengths = jax.lax.scan(
      body, (jnp.zeros(4), ctrl.init()), (jnp.arange(steps), x, eps))
  return np.asarray(strengths)


def test_curriculum_strength_grows_with_progress_and_backs_off_on_spikes():
  calm = _curriculum(False)
  shocked = _curriculum(True)
  assert np.all((calm >= 0.0) & (calm <= 1.0))
  # Early, the loss falls steadily: the strength is raised.
  assert calm[100] > 2.0 * calm[0]
  np.testing.assert_allclose(calm[:150], shocked[:151][:150], rtol=1e-5)
  # The spike raises V far above V*: the strength is cut.
  assert shocked[165] < 0.8 * calm[165]


def test_controller_requires_value():
  ctrl = ae.controller([ae.Coefficient("c", init=1.0)],
                       ae.laws.evolve({"c": 0.1}), step_size=None)
  with pytest.raises(TypeError, match="value"):
    ctrl.update(None, ctrl.init())


def test_controller_rejects_unknown_law_names():
  with pytest.raises(ValueError, match="nope"):
    ae.controller([ae.Coefficient("c", init=1.0)],
                  ae.laws.evolve({"nope": 0.1}), step_size=None)

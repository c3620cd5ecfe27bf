"""AE optimizers inside flax.nnx: nnx.Optimizer, nnx.jit, value= forwarding,
and reading coefficients and signals from the NNX optimizer state."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ae_jax as ae

nnx = pytest.importorskip("flax.nnx")


class MLP(nnx.Module):

  def __init__(self, rngs):
    self.hidden = nnx.Linear(3, 16, rngs=rngs)
    self.out = nnx.Linear(16, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))


def _data():
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 3))
  y = jnp.sin(x @ jnp.array([1.0, -2.0, 0.5]))[:, None]
  return x, y


@nnx.jit
def _train_step(model, optimizer, x, y):
  def loss_fn(m):
    return jnp.mean(jnp.square(m(x) - y))

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads, value=loss)
  return loss


def test_nnx_optimizer_trains_and_exposes_coefficients():
  model = MLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, ae.ae_adamw(1e-2), wrt=nnx.Param)
  x, y = _data()
  initial = ae.coefficients(optimizer.opt_state)
  # The presets warm-start: α begins at warm_start (1e-3) times the given
  # rate and climbs on its hypergradient.
  assert float(initial["learning_rate"]) == pytest.approx(1e-3 * 1e-2,
                                                          rel=1e-5)

  losses = [float(_train_step(model, optimizer, x, y)) for _ in range(50)]
  assert all(np.isfinite(losses))
  assert losses[-1] < 0.7 * losses[0]

  # flax 0.12 deprecates Variable.value: reading the state must not touch it.
  with warnings.catch_warnings():
    warnings.simplefilter("error", DeprecationWarning)
    coefficients = ae.coefficients(optimizer.opt_state)
    signals = ae.signals(optimizer.opt_state)
  assert set(coefficients) == {"learning_rate", "b1", "b2", "eps",
                               "weight_decay", "sigma"}
  for value in list(coefficients.values()) + list(signals.values()):
    assert isinstance(value, jax.Array), type(value)
    assert not isinstance(value, nnx.Variable)
    assert value.shape == ()
    assert bool(jnp.isfinite(value))
  # The state holds the last step: value= reached the controller, and the
  # controller moved the coefficients.
  assert float(signals["loss"]) == pytest.approx(losses[-1], rel=1e-5)
  assert float(signals["gnorm"]) > 0
  assert float(coefficients["learning_rate"]) != pytest.approx(
      float(initial["learning_rate"]), rel=1e-4)
  # The step count of the controller advanced once per step.
  counts = [leaf for leaf in jax.tree.leaves(
      jax.tree.map(lambda v: v.get_value(), optimizer.opt_state,
                   is_leaf=lambda v: isinstance(v, nnx.Variable)))
            if leaf.dtype == jnp.int32 and leaf.shape == ()]
  assert 50 in [int(c) for c in counts]


def test_nnx_update_requires_value():
  model = MLP(nnx.Rngs(1))
  optimizer = nnx.Optimizer(model, ae.ae_sgdm(1e-2), wrt=nnx.Param)
  x, y = _data()
  grads = nnx.grad(lambda m: jnp.mean(jnp.square(m(x) - y)))(model)
  with pytest.raises(TypeError, match="value"):
    optimizer.update(model, grads)
  nnx.jit(lambda o, m, g: o.update(m, g, value=jnp.float32(1.0)))(
      optimizer, model, grads)
  assert float(ae.signals(optimizer.opt_state)["loss"]) == 1.0

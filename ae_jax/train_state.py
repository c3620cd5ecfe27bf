"""Flax Linen: a ``TrainState`` whose ``apply_gradients`` forwards the loss.

``flax.training.train_state.TrainState.apply_gradients(grads=g, value=loss)``
treats ``value`` as a dataclass field to replace, so the AE optimizer never
sees the loss and raises its "requires value" TypeError. This subclass passes
``value=`` (and ``reward=``) to ``tx.update`` and is otherwise Flax's::

  from ae_jax.train_state import TrainState

  state = TrainState.create(apply_fn=model.apply, params=params,
                            tx=ae.ae_adamw(1e-3))

  @jax.jit
  def train_step(state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    return state.apply_gradients(grads=grads, value=loss)
"""

from __future__ import annotations

import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
  """``flax.training.train_state.TrainState`` for AE optimizers."""

  def apply_gradients(self, *, grads, value=None, reward=None, **kwargs):
    """Updates ``step``, ``params`` and ``opt_state`` (and ``**kwargs``).

    Args:
      grads: gradients with the structure of ``params``.
      value: the loss of this step, passed to ``tx.update`` (AE optimizers
        require it; plain Optax ones ignore it).
      reward: an optional reward, passed to ``tx.update`` (AE-RL).
      **kwargs: other dataclass fields to ``.replace()``.

    Returns:
      The updated state, ``step`` incremented by one.
    """
    extra = {}
    if value is not None:
      extra["value"] = value
    if reward is not None:
      extra["reward"] = reward
    owg = train_state.OVERWRITE_WITH_GRADIENT
    if owg in grads:
      grads_with_opt, params_with_opt = grads["params"], self.params["params"]
    else:
      grads_with_opt, params_with_opt = grads, self.params
    updates, new_opt_state = optax.with_extra_args_support(self.tx).update(
        grads_with_opt, self.opt_state, params_with_opt, **extra)
    new_params = optax.apply_updates(params_with_opt, updates)
    if owg in grads:
      new_params = {"params": new_params, owg: grads[owg]}
    return self.replace(step=self.step + 1, params=new_params,
                        opt_state=new_opt_state, **kwargs)

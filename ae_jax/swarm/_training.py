"""Training members for their budgets (lock-step vmap or chunked) and scoring them."""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp
import optax

from ae_jax.swarm._config import Family, MODES
from ae_jax.swarm._population import Data, Population, member


def member_runner(family: Family, loss_fn: Callable, batch_size: int
                  ) -> Callable:
  """``run(member, data, n_steps) -> (member, mean train loss)`` for ONE member.

  ``n_steps`` may be traced: the loop is a ``lax.fori_loop`` with a dynamic
  trip count, so one compilation serves every budget. Under ``vmap`` with a
  batched ``n_steps`` the loop runs ``max n_steps`` iterations and masks the
  finished members (JAX's batched while loop).
  """

  def run(m: Population, data: Data, n_steps):
    tx = optax.with_extra_args_support(family.make(m.prior))
    n_train = data.x_train.shape[0]

    def body(i, carry):
      params, opt_state, total = carry
      idx = jax.random.randint(jax.random.fold_in(m.key, m.steps + i),
                               (batch_size,), 0, n_train)
      loss, grads = jax.value_and_grad(loss_fn)(params, data.x_train[idx],
                                                data.y_train[idx])
      updates, opt_state = tx.update(grads, opt_state, params, value=loss)
      return optax.apply_updates(params, updates), opt_state, total + loss

    zero = jnp.zeros([], jnp.float32)
    params, opt_state, total = jax.lax.fori_loop(
        0, n_steps, body, (m.params, m.opt_state, zero))
    n_steps = jnp.asarray(n_steps, jnp.int32)
    mean_loss = jnp.where(n_steps > 0, total / jnp.maximum(n_steps, 1),
                          jnp.nan)
    return m._replace(params=params, opt_state=opt_state,
                      steps=m.steps + n_steps), mean_loss

  return run


def train(pop: Population, budgets: chex.Array, data: Data, *,
          family: Family, loss_fn: Callable, batch_size: int,
          mode: str = "chunked", chunk: int = 1
          ) -> tuple[Population, chex.Array]:
  """Member i trains ``budgets[i]`` steps; returns the population and each
  member's mean training loss over its steps (NaN for a budget of 0).

  ``mode="vmap"``: all members in lock-step; equal budgets run unmasked
  (``lax.cond`` picks the branch at run time), unequal ones cost
  ``M * max(budgets)`` member steps. ``mode="chunked"``: members sorted by
  budget, ``chunk`` at a time (vmapped within a chunk, a ``lax.scan`` over
  chunks); cost ``Σ_chunks chunk * max(budget in chunk)``, exactly
  ``Σ budgets`` for ``chunk=1``. Jittable; the budgets may be traced.
  """
  run = member_runner(family, loss_fn, batch_size)
  budgets = jnp.asarray(budgets, jnp.int32)
  size = budgets.shape[0]
  if mode == "vmap":
    def lock(_):
      return jax.vmap(run, in_axes=(0, None, None))(pop, data, budgets[0])

    def masked(_):
      return jax.vmap(run, in_axes=(0, None, 0))(pop, data, budgets)

    return jax.lax.cond(jnp.all(budgets == budgets[0]), lock, masked, None)
  if mode != "chunked":
    raise ValueError(f"train: mode must be one of {MODES}, got {mode!r}")
  if size % chunk:
    raise ValueError(f"train: chunk={chunk} must divide the population "
                     f"size {size}")
  order = jnp.argsort(budgets).reshape(size // chunk, chunk)

  def one_chunk(carry, idx):
    p, losses = carry
    if chunk == 1:
      i = idx[0]
      sub, loss = run(member(p, i), data, budgets[i])
      p = jax.tree.map(lambda a, b: a.at[i].set(b), p, sub)
      return (p, losses.at[i].set(loss)), None
    sub = jax.tree.map(lambda a: a[idx], p)
    sub, loss = jax.vmap(run, in_axes=(0, None, 0))(sub, data, budgets[idx])
    p = jax.tree.map(lambda a, b: a.at[idx].set(b), p, sub)
    return (p, losses.at[idx].set(loss)), None

  losses = jnp.zeros([size], jnp.float32)
  (pop, losses), _ = jax.lax.scan(one_chunk, (pop, losses), order)
  return pop, losses


def scores(pop: Population, data: Data, loss_fn: Callable) -> chex.Array:
  """Each member's mean loss on the whole validation set (lower is better)."""
  return jax.vmap(lambda p: loss_fn(p, data.x_val, data.y_val))(pop.params)

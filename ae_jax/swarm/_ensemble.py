"""AEEnsemble: the reference's per-step consensus."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import optax

from ae_jax.coefficient import Coefficient
from ae_jax.swarm._config import CONSENSUS, Family
from ae_jax.swarm._consensus import consensus
from ae_jax.swarm._population import Population
from ae_jax.swarm._selection import swarm_weights


class EnsembleInfo(NamedTuple):
  """What an ensemble step reports: the members' losses, their weights and
  the weighted means c̄ (consensus coordinates)."""

  losses: chex.Array
  weights: chex.Array
  means: dict


class Ensemble(NamedTuple):
  """See :func:`ensemble`."""

  update: Callable[[Any, chex.Array], tuple[Any, EnsembleInfo]]


def ensemble(coefficients: Sequence[Coefficient], *, beta: float = 2.0,
             kappa: float = 0.25, names: Sequence[str] = CONSENSUS
             ) -> Ensemble:
  """The reference ``AEEnsemble``: a per-step coefficient consensus.

  .. math::

    w = \\mathrm{softmax}(-\\beta (L - \\min L)),\\qquad
    c^{(i)} \\leftarrow \\Pi_\\Omega\\big((1-\\kappa) c^{(i)}
      + \\kappa \\textstyle\\sum_j w_j c^{(j)}\\big)

  ``update(opt_state, losses)`` acts on stacked AE states after every
  member's step (usually ``jax.vmap`` of ``tx.update``); jittable. The
  reference averages α, μ, σ linearly; here the coordinates are the
  swarm's (log α, linear β), and a non-finite loss gets weight 0.

  Raises:
    ValueError: if ``beta < 0`` or ``kappa`` lies outside [0, 1].
  """
  if not (math.isfinite(beta) and beta >= 0):
    raise ValueError(f"ensemble: beta must be finite and >= 0, got {beta}")
  if not 0.0 <= kappa <= 1.0:
    raise ValueError(f"ensemble: kappa must lie in [0, 1], got {kappa}")

  def update(opt_state, losses):
    w, _ = swarm_weights(losses, beta)
    opt_state, means = consensus(opt_state, w, kappa, coefficients, names)
    return opt_state, EnsembleInfo(losses=jnp.asarray(losses), weights=w,
                                   means=means)

  return Ensemble(update=update)


def ensemble_step(family: Family, loss_fn: Callable, *, beta: float = 2.0,
                  kappa: float = 0.25, names: Sequence[str] = CONSENSUS
                  ) -> Callable:
  """One jitted AEEnsemble step of a population on a shared batch:
  ``step(pop, x, y) -> (pop, EnsembleInfo)``; every member steps on
  ``(x, y)`` (as the reference's agents share one ``loss_fn``), then the
  consensus of :func:`ensemble` runs with the members' losses."""
  ens = ensemble(family.coefficients, beta=beta, kappa=kappa, names=names)

  def one(m: Population, x, y):
    tx = optax.with_extra_args_support(family.make(m.prior))
    loss, grads = jax.value_and_grad(loss_fn)(m.params, x, y)
    updates, opt_state = tx.update(grads, m.opt_state, m.params, value=loss)
    return m._replace(params=optax.apply_updates(m.params, updates),
                      opt_state=opt_state, steps=m.steps + 1), loss

  @jax.jit
  def step(pop: Population, x, y):
    pop, losses = jax.vmap(one, in_axes=(0, None, None))(pop, x, y)
    opt_state, info = ens.update(pop.opt_state, losses)
    return pop._replace(opt_state=opt_state), info

  return step

"""Consensus of the coefficients and the rejuvenation dither."""

from __future__ import annotations

from typing import Any, Sequence

import chex
import jax
import jax.numpy as jnp

from ae_jax._adapt import AdaptState, write_hyperparams
from ae_jax.coefficient import Coefficient
from ae_jax.swarm._config import CONSENSUS
from ae_jax.swarm._population import Population


def _consensus_coordinate(c: Coefficient, z, value):
  return z if c.param == "log" else value


def _from_coordinate(c: Coefficient, coord):
  z = coord if c.param == "log" else c.to_z(coord).astype(coord.dtype)
  return jnp.clip(z, *c.z_bounds())


def nudge(coords: chex.Array, weights: chex.Array, kappa
          ) -> tuple[chex.Array, chex.Array]:
  """:math:`c_i \\leftarrow (1-\\kappa) c_i + \\kappa \\bar c` with
  :math:`\\bar c = \\sum_i w_i c_i / \\sum_i w_i` over the members with
  positive weight and a finite coordinate (so a diverged member's NaN never
  reaches the others). With no such member nothing moves.

  Returns:
    ``(new coordinates, c̄)``.
  """
  use = (weights > 0) & jnp.isfinite(coords)
  wu = jnp.where(use, weights, 0.0)
  wsum = jnp.sum(wu)
  mean = jnp.sum(jnp.where(use, wu * coords, 0.0)) / jnp.where(
      wsum > 0, wsum, 1.0)
  step = jnp.where(wsum > 0, kappa, 0.0)
  return coords + step * (mean - coords), mean


def _adapt_states(tree):
  return [s for s in jax.tree.leaves(
      tree, is_leaf=lambda x: isinstance(x, AdaptState))
          if isinstance(s, AdaptState)]


def consensus(opt_state: Any, weights: chex.Array, kappa,
              coefficients: Sequence[Coefficient],
              names: Sequence[str] = CONSENSUS) -> tuple[Any, dict]:
  """Nudges the stacked members' coefficients toward their weighted mean.

  In the theory's coordinates: ``log`` coefficients (α, ε, λ) in ``z = log
  a``; ``logit`` and ``linear`` ones (β1, β2) in their value. The new value
  is projected onto Ω, written into the controller's ``z`` and ``values``
  and into the base's ``hyperparams`` (so the next step applies it). Pinned
  coefficients (``lower == upper``, e.g. λ = 0) and names outside ``names``
  are untouched. Every ``AdaptState`` in ``opt_state`` is nudged.

  Args:
    opt_state: the stacked optimizer states (leading axis M).
    weights: ``[M]`` selection weights (0 for excluded members).
    kappa: the step κ ∈ [0, 1].
    coefficients: the concrete specs of the adapted coefficients.
    names: the coefficients to nudge.

  Returns:
    ``(opt_state, means)``: the new states and ``name -> c̄`` (in consensus
    coordinates).
  """
  specs = [c for c in coefficients
           if c.name in names and not c.lower == c.upper]
  means = {}

  def nudge_state(s: AdaptState) -> AdaptState:
    ctrl = s.controller
    z, values = dict(ctrl.z), dict(ctrl.values)
    written = {}
    for c in specs:
      if c.name not in z:
        continue
      coord = _consensus_coordinate(c, z[c.name], values[c.name])
      new, means[c.name] = nudge(coord, weights, kappa)
      z[c.name] = _from_coordinate(c, new)
      values[c.name] = c.from_z(z[c.name])
      written[c.name] = values[c.name]
    return s._replace(
        controller=ctrl._replace(z=type(ctrl.z)(z),
                                 values=type(ctrl.values)(values)),
        inner_state=write_hyperparams(s.inner_state, written))

  new_state = jax.tree.map(
      lambda s: nudge_state(s) if isinstance(s, AdaptState) else s,
      opt_state, is_leaf=lambda s: isinstance(s, AdaptState))
  return new_state, means


def member_coefficients(opt_state: Any) -> dict[str, chex.Array]:
  """``name -> [M]`` coefficient values of stacked AE states (empty dict for
  a state without a controller)."""
  found = _adapt_states(opt_state)
  return dict(found[0].controller.values) if found else {}


def rejuvenate(pop: Population, losses: chex.Array, dither, key,
               step_size: str = "learning_rate") -> Population:
  """Dithers the worst member's parameters: :math:`\\theta_w \\mathrel{+}=
  \\sigma_d\\, \\alpha_w\\, \\mathcal N(0, I)` (the reference's
  ``rejuvenate``; α is 1 for a member without that coefficient).

  The worst member is the one with the highest finite score (a diverged
  member's parameters are beyond a dither); with no finite score nothing
  changes. The other members' parameters are returned bit for bit.
  """
  s = jnp.asarray(losses)
  finite = jnp.isfinite(s)
  worst = jnp.argmax(jnp.where(finite, s, -jnp.inf))
  size = s.shape[0]
  hit = (jnp.arange(size) == worst) & finite.any()
  alpha = member_coefficients(pop.opt_state).get(step_size, jnp.ones([size]))
  leaves, treedef = jax.tree.flatten(pop.params)
  keys = jax.random.split(key, len(leaves))
  out = []
  for leaf, k in zip(leaves, keys):
    shape = (size,) + (1,) * (leaf.ndim - 1)
    scale = (dither * alpha).astype(leaf.dtype).reshape(shape)
    noise = jax.random.normal(k, leaf.shape, leaf.dtype)
    out.append(jnp.where(hit.reshape(shape), leaf + scale * noise, leaf))
  return pop._replace(params=jax.tree.unflatten(treedef, out))

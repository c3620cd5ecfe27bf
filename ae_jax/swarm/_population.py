"""The population: members stacked on a leading axis."""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ae_jax._adapt import reseed
from ae_jax.swarm._config import Family


class Population(NamedTuple):
  """M members stacked on the leading axis of every leaf.

  Attributes:
    params: the members' parameters.
    opt_state: their optimizer states.
    prior: their priors (the argument of ``Family.make``).
    key: their data keys: member i's minibatch at its step t is drawn from
      ``fold_in(key[i], t)``, so its data order depends only on its key and
      its own step count, not on the budgets.
    steps: steps each member has taken.
  """

  params: Any
  opt_state: Any
  prior: Any
  key: chex.PRNGKey
  steps: chex.Array


class Data(NamedTuple):
  """Training and validation arrays (shared by every member)."""

  x_train: chex.Array
  y_train: chex.Array
  x_val: chex.Array
  y_val: chex.Array


def pop_size(pop: Population) -> int:
  """M, the number of members."""
  return int(jnp.shape(pop.steps)[0])


def member(pop: Population, i) -> Population:
  """Member ``i`` alone (leaves without the population axis)."""
  return jax.tree.map(lambda a: a[i], pop)


def init_population(key: chex.PRNGKey, init_params: Callable[[Any], Any],
                    family: Family, priors: Any) -> Population:
  """M members from one key.

  Member i gets its own parameter key, data key and optimizer key (the AE
  noise and sampled statistics, see :func:`ae_jax.reseed`), and the i-th
  slice of ``priors``.

  Args:
    key: the PRNG key of the whole population.
    init_params: ``init_params(key) -> params`` of one member.
    family: builds each member's optimizer from its prior.
    priors: a pytree whose leaves have a leading axis of size M.

  Raises:
    ValueError: if the priors' leading axes disagree or a prior lies outside
      Ω of the family's coefficients.
  """
  leaves = jax.tree.leaves(priors)
  sizes = {int(jnp.shape(x)[0]) if jnp.ndim(x) else None for x in leaves}
  if not leaves or len(sizes) != 1 or None in sizes:
    raise ValueError(f"init_population: priors must be a non-empty pytree of "
                     f"arrays with one leading population axis, got leading "
                     f"sizes {sizes}")
  size = sizes.pop()
  for c in family.coefficients:
    if isinstance(priors, Mapping) and c.name in priors:
      values = np.asarray(priors[c.name])
      if not np.all((values >= c.lower) & (values <= c.upper)):
        raise ValueError(f"init_population: prior {c.name!r} = {values} "
                         f"lies outside Ω = [{c.lower}, {c.upper}]")
  k_params, k_data, k_opt = jax.random.split(key, 3)
  params = jax.vmap(init_params)(jax.random.split(k_params, size))

  def init_member(p, prior, k):
    return reseed(family.make(prior).init(p), k)

  opt_state = jax.vmap(init_member)(params, priors,
                                    jax.random.split(k_opt, size))
  return Population(params=params, opt_state=opt_state, prior=priors,
                    key=jax.random.split(k_data, size),
                    steps=jnp.zeros([size], jnp.int32))

"""Sharding a population over devices."""

from __future__ import annotations

import jax

from ae_jax.swarm._population import Population, pop_size


def auto_mesh(mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
  """``mesh`` with every axis of type ``Auto``.

  ``jax.make_mesh`` gives ``Explicit`` axes by default, under which the
  population's gathers (minibatches, chunks) would need an ``out_sharding``
  at every indexing; the swarm lets XLA propagate shardings instead.
  """
  auto = (jax.sharding.AxisType.Auto,) * len(mesh.axis_names)
  if tuple(mesh.axis_types) == auto:
    return mesh
  return jax.sharding.Mesh(mesh.devices, mesh.axis_names, axis_types=auto)


def shard_population(pop: Population, mesh: jax.sharding.Mesh,
                     axis: str = "pop") -> Population:
  """Places every leaf's population axis over ``mesh``'s ``axis``.

  Works for the GPUs of one host (``jax.make_mesh((jax.device_count(),),
  ('pop',))``) and, after ``jax.distributed.initialize()``, over hosts.

  Raises:
    ValueError: if ``axis`` is not a mesh axis or M is not divisible by
      its size.
  """
  if axis not in mesh.shape:
    raise ValueError(f"shard_population: mesh has no axis {axis!r} (axes "
                     f"{tuple(mesh.shape)})")
  size, devices = pop_size(pop), mesh.shape[axis]
  if size % devices:
    raise ValueError(f"shard_population: {size} members cannot be split "
                     f"evenly over {devices} devices of axis {axis!r}")
  return jax.device_put(pop, jax.sharding.NamedSharding(
      auto_mesh(mesh), jax.sharding.PartitionSpec(axis)))

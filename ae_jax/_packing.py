"""Packing a pytree of small arrays into one flat buffer per dtype.

The controller's state is ~50 scalars (z, values, filters, signals, the law
states). Held as ~50 separate arrays, every jitted step receives and returns
~50 buffers: on a CPU the runtime's per-buffer cost (argument handling,
donation, output allocation) was most of the AE step's fixed overhead at
1e4 parameters. Packed, the same state crosses the jit boundary as two or
three buffers (one float vector, one int32 vector); inside the step the
fields are slices of them, which XLA fuses into their consumers.

A :class:`Layout` is static (hashable): the tree structure, and for each
leaf its dtype group, offset and shape. Leading batch dimensions (a
``vmap``-ped or stacked population) are kept in front of the packed axis:
a buffer of a population of M controllers has shape ``(M, n)``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Layout(NamedTuple):
  """Where each leaf of a packed tree lives.

  Attributes:
    treedef: the structure of the unpacked tree.
    leaves: per leaf ``(group, offset, shape)``: its dtype's buffer, its
      first position in it and its own shape (without batch dimensions).
    groups: the dtype names of the buffers, in order.
  """

  treedef: Any
  leaves: tuple
  groups: tuple


def is_concrete(buffers) -> bool:
  return not any(isinstance(b, jax.core.Tracer) for b in buffers)


def _layout(leaves, treedef, batch_ndim: int) -> Layout:
  sizes: dict[str, int] = {}
  where = []
  for x in leaves:
    group = jnp.result_type(x).name
    shape = tuple(jnp.shape(x)[batch_ndim:])
    where.append((group, sizes.get(group, 0), shape))
    sizes[group] = sizes.get(group, 0) + math.prod(shape)
  return Layout(treedef, tuple(where), tuple(sizes))


def assemble(parts: list, batch_shape: tuple):
  """The parts (each ``batch_shape + (k,)``) laid end to end on the last
  axis, as a chain of selects on constant masks rather than a concatenate.

  XLA:CPU fuses neither a many-operand concatenate with its producers nor
  a scalar that has another consumer into it, so with ``jnp.concatenate``
  each packed scalar was computed by a kernel of its own (27 of
  ``ae_adamw``'s 115 kernels at 1e4 parameters); the selects fuse with
  them into one loop. A select copies its operand's bits (a sum of
  zero-padded parts would turn -0.0 into 0.0)."""
  n = sum(p.shape[-1] for p in parts)
  dtype = parts[0].dtype if parts else jnp.float32
  out = jnp.zeros(batch_shape + (n,), dtype)
  index = np.arange(n)
  offset = 0
  for p in parts:
    k = p.shape[-1]
    if k == 0:
      continue
    if k > 1:
      pad = [(0, 0)] * len(batch_shape) + [(offset, n - offset - k)]
      p = jnp.pad(p, pad)
    out = jnp.where((index >= offset) & (index < offset + k), p, out)
    offset += k
  return out


def _concat(layout: Layout, leaves, batch_ndim: int) -> tuple:
  parts: dict[str, list] = {g: [] for g in layout.groups}
  batch_shape = ()
  for x, (group, _, shape) in zip(leaves, layout.leaves):
    x = jnp.asarray(x, group)
    batch_shape = x.shape[:batch_ndim]
    parts[group].append(x.reshape(batch_shape + (math.prod(shape),)))
  return tuple(assemble(parts[g], batch_shape) for g in layout.groups)


@functools.lru_cache(maxsize=256)
def _jitted_concat(layout: Layout, batch_ndim: int):
  return jax.jit(lambda leaves: _concat(layout, leaves, batch_ndim))


def pack(tree, batch_ndim: int = 0) -> tuple[Layout, tuple]:
  """``(layout, buffers)`` of ``tree``; ``batch_ndim`` leading dimensions of
  every leaf are batch dimensions, kept in front of the packed axis."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  layout = _layout(leaves, treedef, batch_ndim)
  if is_concrete(leaves):
    # One dispatch instead of one per leaf (outside jit: init, _replace).
    return layout, _jitted_concat(layout, batch_ndim)(leaves)
  return layout, _concat(layout, leaves, batch_ndim)


def repack(layout: Layout, buffers, old_leaves, tree, batch_ndim: int = 0):
  """The buffers of ``tree`` written over ``buffers``, or None.

  ``old_leaves`` are the leaves ``buffers`` hold; a leaf of ``tree`` that
  is one of them (the same object) is left in place, each other one is
  written at its offset (an in-place ``dynamic_update_slice``). Inside a
  jitted step this is what a ``_replace`` of a few fields should cost:
  packing the whole tree again is a chain of selects over every field,
  which XLA:CPU copies into each consumer's fusion (every leaf's update,
  when a coefficient is changed after the controller step). None when
  ``tree``'s layout is not ``layout`` (the caller packs it afresh).
  """
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  if (treedef != layout.treedef
      or _layout(leaves, treedef, batch_ndim) != layout):
    return None
  by_group = dict(zip(layout.groups, buffers))
  for new, old, (group, offset, shape) in zip(leaves, old_leaves,
                                              layout.leaves):
    if new is old:
      continue
    b = by_group[group]
    part = jnp.asarray(new, group).reshape(b.shape[:-1] + (math.prod(shape),))
    by_group[group] = jax.lax.dynamic_update_slice_in_dim(b, part, offset,
                                                          axis=-1)
  return tuple(by_group[g] for g in layout.groups)


def _unpack(layout: Layout, buffers):
  by_group = dict(zip(layout.groups, buffers))
  leaves = []
  for group, offset, shape in layout.leaves:
    b = by_group[group]
    size = math.prod(shape)
    leaves.append(b[..., offset:offset + size].reshape(b.shape[:-1] + shape))
  return layout.treedef.unflatten(leaves)


@functools.lru_cache(maxsize=256)
def _jitted_unpack(layout: Layout):
  return jax.jit(functools.partial(_unpack, layout))


def unpack(layout: Layout, buffers):
  """The tree that :func:`pack` packed (batch dimensions included)."""
  buffers = tuple(buffers)
  if is_concrete(buffers) and all(isinstance(b, jax.Array) for b in buffers):
    return _jitted_unpack(layout)(buffers)
  return _unpack(layout, buffers)

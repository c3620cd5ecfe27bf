"""A purely functional, differentiable tape for the AE Machine.

An N × D memory ``M`` read and written through soft attention over its cells
(softmax of logits), NTM-lite. Every operation returns a new memory: nothing
is mutated, so a loss may read and write the tape any number of times and
``jax.grad`` / ``jax.vmap`` (a batch of tapes) work as usual. (The reference
``AE_tape.py`` writes into its tensor in place; its copy-task test fails with
"Trying to backward through the graph a second time".)

.. math::

  a = \\mathrm{softmax}(\\ell),\\qquad
  \\mathrm{write}: M \\leftarrow M + a\\,\\delta^\\top,\\qquad
  \\mathrm{read}: r = M^\\top a

A write followed by a read with the same attention returns
:math:`r = \\|a\\|^2 \\delta`: exact only in the limit of sharp attention
(:math:`\\|a\\|^2 \\to 1`), which is what :func:`roundtrip_gain` measures.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp


def init(n_cells: int, cell_dim: int, dtype=None) -> chex.Array:
  """An empty tape of ``n_cells`` × ``cell_dim``."""
  if int(n_cells) < 1 or int(cell_dim) < 1:
    raise ValueError(f"tape.init: n_cells and cell_dim must be >= 1, got "
                     f"{n_cells}, {cell_dim}")
  return jnp.zeros((int(n_cells), int(cell_dim)),
                   dtype or jnp.result_type(float))


def attend(logits: chex.Array) -> chex.Array:
  """Soft attention over the cells: ``softmax(logits)``."""
  return jax.nn.softmax(logits, axis=-1)


def read(memory: chex.Array, attention: chex.Array) -> chex.Array:
  """``r = Mᵀ a``: the attention-weighted sum of the cells."""
  return attention @ memory


def write(memory: chex.Array, attention: chex.Array,
          delta: chex.Array) -> chex.Array:
  """``M + a δᵀ``: an additive write, returning the new tape."""
  return memory + jnp.outer(attention, delta)


def roundtrip_gain(attention: chex.Array) -> chex.Array:
  """``‖a‖²``: a write of δ then a read with attention ``a`` gives ``‖a‖² δ``
  on an empty tape; 1 only for one-hot attention."""
  return jnp.sum(jnp.square(attention), axis=-1)


def entropy(attention: chex.Array) -> chex.Array:
  """Shannon entropy of an attention vector."""
  return -jnp.sum(attention * jnp.log(attention + 1e-12), axis=-1)


class CopyTask(NamedTuple):
  """The reference's copy task: learn to write ``target`` and read it back.

  ``θ = [write vector (D) | write logits (N) | read logits (N)]``; the loss is
  ``½‖r - target‖² - λ_H (H(a_w) + H(a_r)) + λ_w ‖δ‖²`` (the reference's
  entropy term rewards *sharp* attention: it subtracts −H).

  Attributes:
    n_cells: N.
    cell_dim: D.
    target: the vector to store and recall, shape (D,).
    entropy_reg: λ_H.
    write_scale_reg: λ_w.
  """

  n_cells: int
  cell_dim: int
  target: chex.Array
  entropy_reg: float = 1e-3
  write_scale_reg: float = 1e-6

  @property
  def size(self) -> int:
    """Length of θ."""
    return self.cell_dim + 2 * self.n_cells

  def unpack(self, theta):
    d, n = self.cell_dim, self.n_cells
    return theta[:d], theta[d:d + n], theta[d + n:d + 2 * n]

  def recall(self, theta) -> chex.Array:
    """Write with θ's write head on an empty tape, read with its read head."""
    delta, write_logits, read_logits = self.unpack(theta)
    memory = write(init(self.n_cells, self.cell_dim, theta.dtype),
                   attend(write_logits), delta)
    return read(memory, attend(read_logits))

  def loss(self, theta) -> chex.Array:
    """The task loss of θ (starts each call from an empty tape)."""
    delta, write_logits, read_logits = self.unpack(theta)
    a_w, a_r = attend(write_logits), attend(read_logits)
    memory = write(init(self.n_cells, self.cell_dim, theta.dtype), a_w,
                   delta)
    error = read(memory, a_r) - self.target
    return (0.5 * jnp.sum(jnp.square(error))
            - self.entropy_reg * (entropy(a_w) + entropy(a_r))
            + self.write_scale_reg * jnp.sum(jnp.square(delta)))


def copy_task(n_cells: int = 8, cell_dim: int = 4, target=None, *,
              entropy_reg: float = 1e-3,
              write_scale_reg: float = 1e-6) -> CopyTask:
  """The reference demo's copy task (N = 8, D = 4, target (.5, -1, 0, .25))."""
  if target is None:
    target = jnp.array([0.5, -1.0, 0.0, 0.25])[:cell_dim]
  target = jnp.asarray(target)
  if target.shape != (cell_dim,):
    raise ValueError(f"copy_task: target must have shape ({cell_dim},), got "
                     f"{target.shape}")
  return CopyTask(int(n_cells), int(cell_dim), target, entropy_reg,
                  write_scale_reg)



# -- a shiftable pointer (NTM style) -----------------------------------------


def shift(attention: chex.Array, shift_weights: chex.Array) -> chex.Array:
  """Circular convolution of the attention with a distribution over shifts.

  ``shift_weights`` has odd length 2K+1 and weighs the shifts -K … +K: a
  one-hot weight on +1 moves the pointer one cell forward, with wrap-around.
  """
  k = (shift_weights.shape[-1] - 1) // 2
  return sum(shift_weights[..., j + k, None] * jnp.roll(attention, j, axis=-1)
             for j in range(-k, k + 1))


def sharpen(attention: chex.Array, gamma: chex.Array) -> chex.Array:
  """``a^γ / Σ a^γ`` (γ ≥ 1 undoes the blur of a soft shift)."""
  powered = jnp.power(attention + 1e-12, gamma)
  return powered / jnp.sum(powered, axis=-1, keepdims=True)


class PointerTask(NamedTuple):
  """Learn the addressing of a sequence task with shiftable heads.

  A sequence ``x_1 … x_L`` (rows of ``inputs``) is written one item per step
  by a write head that starts at ``softmax(write_start)`` and moves by the
  learned shift distribution ``softmax(write_shift)``; then a read head that
  starts at ``softmax(read_start)`` and moves by ``softmax(read_shift)``
  reads L items back. ``direction=+1`` asks for the sequence back in order
  (a copy), ``-1`` for it reversed; ``offset=k`` for it rotated by k. Only
  the addressing is learned (2N + 2·3 logits and a sharpening exponent per
  head); the contents come from the data.

  Attributes:
    n_cells: N (≥ L).
    length: L.
    direction: +1 (copy) or -1 (reverse).
    offset: k, the rotation of the recalled sequence (learnable when
      ``n_cells == length``, so the tape wraps where the sequence does).
  """

  n_cells: int
  length: int
  direction: int = -1
  offset: int = 0

  @property
  def size(self) -> int:
    return 2 * self.n_cells + 2 * 3 + 2

  def unpack(self, theta):
    n = self.n_cells
    return (theta[:n], theta[n:n + 3], theta[n + 3:2 * n + 3],
            theta[2 * n + 3:2 * n + 6], theta[2 * n + 6], theta[2 * n + 7])

  def targets(self, inputs: chex.Array) -> chex.Array:
    index = jnp.arange(self.length)
    if self.direction < 0:
      index = self.length - 1 - index
    return inputs[(index + self.offset) % self.length]

  def recall(self, theta, inputs: chex.Array) -> chex.Array:
    """The L items read back for one sequence ``inputs`` (L × D)."""
    w_start, w_shift, r_start, r_shift, w_gamma, r_gamma = self.unpack(theta)
    w_shift, r_shift = attend(w_shift), attend(r_shift)
    w_gamma = 1.0 + jax.nn.softplus(w_gamma)
    r_gamma = 1.0 + jax.nn.softplus(r_gamma)
    memory = init(self.n_cells, inputs.shape[-1], inputs.dtype)

    def write_step(carry, x):
      memory, head = carry
      memory = write(memory, head, x)
      return (memory, sharpen(shift(head, w_shift), w_gamma)), None

    (memory, _), _ = jax.lax.scan(write_step, (memory, attend(w_start)),
                                  inputs)

    def read_step(head, _):
      return sharpen(shift(head, r_shift), r_gamma), read(memory, head)

    _, out = jax.lax.scan(read_step, attend(r_start), None,
                          length=self.length)
    return out

  def loss(self, theta, inputs: chex.Array) -> chex.Array:
    """Mean squared recall error over a batch of sequences (B × L × D)."""
    out = jax.vmap(lambda x: self.recall(theta, x))(inputs)
    target = jax.vmap(self.targets)(inputs)
    return jnp.mean(jnp.square(out - target))

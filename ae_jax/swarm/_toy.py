"""The reference example's model and data (an MLP regression)."""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from ae_jax.swarm._population import Data


def init_mlp(key, sizes: Sequence[int] = (10, 256, 1)) -> list[dict]:
  """An MLP's parameters (PyTorch ``nn.Linear``'s uniform initialisation)."""
  params = []
  for k, (n_in, n_out) in zip(jax.random.split(key, len(sizes) - 1),
                              zip(sizes[:-1], sizes[1:])):
    kw, kb = jax.random.split(k)
    bound = 1.0 / math.sqrt(n_in)
    params.append({"w": jax.random.uniform(kw, (n_in, n_out), jnp.float32,
                                           -bound, bound),
                   "b": jax.random.uniform(kb, (n_out,), jnp.float32,
                                           -bound, bound)})
  return params


def mlp(params, x):
  """GELU MLP."""
  for layer in params[:-1]:
    x = jax.nn.gelu(x @ layer["w"] + layer["b"], approximate=False)
  return x @ params[-1]["w"] + params[-1]["b"]


def mse_loss(params, x, y):
  """Mean squared error of :func:`mlp`."""
  return jnp.mean((mlp(params, x) - y) ** 2)


def regression_data(key, n: int = 8192, dim: int = 10, n_train: int = 6144,
                    noise: float = 0.1) -> Data:
  """The reference example's data: :math:`y = Xw + 0.1\\varepsilon`,
  X ~ N(0, 1), split into train and validation."""
  kx, kw, kn = jax.random.split(key, 3)
  x = jax.random.normal(kx, (n, dim))
  y = x @ jax.random.normal(kw, (dim, 1)) + noise * jax.random.normal(
      kn, (n, 1))
  return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:])

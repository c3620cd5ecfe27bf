"""The task registry: what every optimizer is trained on.

A :class:`Task` is pure functions only, so a whole training run can be one
``lax.scan`` under ``jit`` and ``vmap``-ped over seeds:

* ``init(key) -> params``: the initial parameters. The runner passes the
  same key to every optimizer for a given seed, so every optimizer starts
  from the same point.
* ``batch(key, step) -> batch``: the minibatch of step ``step``. The key
  depends only on the seed, so every optimizer sees the same data in the
  same order (minibatches are drawn with replacement from a fixed training
  set, by ``fold_in(key, step)``).
* ``loss(params, batch) -> scalar``: the training loss the optimizer sees.
* ``metric(params) -> scalar``: the evaluation metric on held-out data
  (``metric_name``; ``higher_is_better`` says which way is good), measured
  every ``eval_every`` steps.
* ``eval_loss(params) -> scalar``: a loss on a fixed held-out batch (the
  score of the windowed tensor-optix peers; equal to ``metric`` for
  regression tasks).
* ``target``: the metric value counted by time-to-target.

The data of a task is fixed when the task is built (``data_seed``), not per
run seed. :func:`get` builds a registered task by name with overrides
(``get('regression', batch_size=64)``); :func:`scaled` multiplies the
training loss by a constant (experiment 10) and leaves the metric alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class Task:
  """One training problem; see the module docstring."""

  name: str
  init: Callable[[jax.Array], Any]
  batch: Callable[[jax.Array, jax.Array], Any]
  loss: Callable[[Any, Any], jax.Array]
  metric: Callable[[Any], jax.Array]
  eval_loss: Callable[[Any], jax.Array]
  target: float
  metric_name: str = "test loss"
  higher_is_better: bool = False
  steps: int = 1000
  eval_every: int = 25
  description: str = ""
  loss_scale: float = 1.0
  config: tuple = ()

  def reached(self, value):
    """Whether ``value`` meets the target (elementwise)."""
    if self.higher_is_better:
      return value >= self.target
    return value <= self.target


REGISTRY: dict[str, Callable[..., Task]] = {}


def register(name: str):
  def deco(factory):
    REGISTRY[name] = factory
    return factory
  return deco


def names() -> list[str]:
  return sorted(REGISTRY)


def get(name: str, **overrides) -> Task:
  """The registered task ``name`` built with keyword ``overrides``."""
  if name not in REGISTRY:
    raise KeyError(f"unknown task {name!r}; registered: {', '.join(names())}")
  return REGISTRY[name](**overrides)


def scaled(task: Task, c: float) -> Task:
  """``task`` with its training loss multiplied by ``c`` (experiment 10); the
  metric and the held-out loss are unchanged, so targets still compare."""
  loss = task.loss
  return dataclasses.replace(
      task, name=f"{task.name}*{c:g}", loss=lambda p, b: c * loss(p, b),
      loss_scale=task.loss_scale * c)


def _sample(key, step, n, batch_size):
  return jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0, n)


def _dense_init(key, sizes, gain=1.0):
  keys = jax.random.split(key, len(sizes) - 1)
  return [{"w": jax.random.normal(k, (a, b), jnp.float32) * gain
                * math.sqrt(1.0 / a),
           "b": jnp.zeros((b,), jnp.float32)}
          for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def _mlp(params, x, act=jnp.tanh):
  for layer in params[:-1]:
    x = act(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


# --------------------------------------------------------------------------
# Experiment 1: static regression, MLP on y = A x + eps.


@register("regression")
def regression(batch_size: int = 64, steps: int = 1500, dim: int = 16,
               out: int = 4, hidden: int = 32, noise: float = 0.1,
               n_train: int = 4096, n_test: int = 1024, data_seed: int = 0,
               target: float | None = None, eval_every: int = 25) -> Task:
  """MLP ``dim-hidden-hidden-out`` (tanh) on ``y = A x + eps``; metric: test
  MSE; default target 3x the noise floor (``out * noise**2``)."""
  rng = np.random.default_rng(data_seed)
  a = rng.normal(size=(dim, out)) / math.sqrt(dim)
  x = rng.normal(size=(n_train + n_test, dim))
  y = x @ a + noise * rng.normal(size=(n_train + n_test, out))
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  xtr, ytr, xte, yte = x[:n_train], y[:n_train], x[n_train:], y[n_train:]

  def loss(params, batch):
    xb, yb = batch
    return jnp.mean(jnp.sum((_mlp(params, xb) - yb) ** 2, -1))

  def metric(params):
    return loss(params, (xte, yte))

  def batch(key, step):
    idx = _sample(key, step, n_train, batch_size)
    return xtr[idx], ytr[idx]

  return Task(
      name="regression" if batch_size == 64 else f"regression_bs{batch_size}",
      init=lambda k: _dense_init(k, (dim, hidden, hidden, out)),
      batch=batch, loss=loss, metric=metric, eval_loss=metric,
      target=3 * out * noise**2 if target is None else target,
      metric_name="test MSE", steps=steps, eval_every=eval_every,
      description=f"MLP {dim}-{hidden}-{hidden}-{out} tanh on y = Ax + "
                  f"{noise}N(0,1), batch {batch_size}",
      config=(("batch_size", batch_size),))


# --------------------------------------------------------------------------
# Experiment 7: quadratic bowl (with k-step stale gradients: run(delay=k)).


@register("quadratic")
def quadratic(dim: int = 20, condition: float = 100.0, noise: float = 0.01,
              steps: int = 600, target: float = 1e-3,
              eval_every: int = 10) -> Task:
  """``0.5 x^T H x`` with eigenvalues log-spaced in ``[1/condition, 1]``,
  gradient noise ``noise N(0, 1)`` (the batch); start ``x0 ~ N(0, I)``."""
  h = jnp.asarray(np.logspace(0, -math.log10(condition), dim), jnp.float32)

  def f(params):
    return 0.5 * jnp.sum(h * params["x"] ** 2)

  def loss(params, batch):
    return f(params) + jnp.sum(batch * params["x"])

  return Task(
      name="quadratic", init=lambda k: {"x": jax.random.normal(k, (dim,))},
      batch=lambda k, t: noise * jax.random.normal(
          jax.random.fold_in(k, t), (dim,)),
      loss=loss, metric=f, eval_loss=f, target=target, metric_name="f(x)",
      steps=steps, eval_every=eval_every,
      description=f"quadratic, dim {dim}, condition {condition:g}, "
                  f"gradient noise {noise:g}")


# --------------------------------------------------------------------------
# Experiment 8: Rosenbrock and a deep linear network.


@register("rosenbrock")
def rosenbrock(dim: int = 2, noise: float = 0.0, steps: int = 2000,
               target: float = 0.5, eval_every: int = 20) -> Task:
  """Rosenbrock ``sum 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2``, start near
  ``(-1.2, 1)`` (jittered by the seed)."""

  def f(params):
    x = params["x"]
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

  start = jnp.tile(jnp.array([-1.2, 1.0]), dim // 2 + 1)[:dim]
  return Task(
      name="rosenbrock",
      init=lambda k: {"x": start + 0.1 * jax.random.normal(k, (dim,))},
      batch=lambda k, t: noise * jax.random.normal(jax.random.fold_in(k, t),
                                                   (dim,)),
      loss=lambda p, b: f(p) + jnp.sum(b * p["x"]), metric=f, eval_loss=f,
      target=target, metric_name="f(x)", steps=steps, eval_every=eval_every,
      description=f"Rosenbrock, dim {dim}, start (-1.2, 1) + 0.1 N(0, I)")


@register("deep_linear")
def deep_linear(dim: int = 8, depth: int = 4, batch_size: int = 64,
                steps: int = 1500, target: float = 0.05, data_seed: int = 0,
                eval_every: int = 25) -> Task:
  """A ``depth``-layer linear network ``W_d ... W_1 x`` fitting ``y = A x``
  (no noise), small init (0.5/sqrt(dim)) so training starts near a saddle."""
  rng = np.random.default_rng(data_seed)
  a = jnp.asarray(rng.normal(size=(dim, dim)) / math.sqrt(dim), jnp.float32)
  xte = jnp.asarray(rng.normal(size=(512, dim)), jnp.float32)

  def net(params, x):
    for w in params:
      x = x @ w
    return x

  def loss(params, batch):
    return jnp.mean(jnp.sum((net(params, batch) - batch @ a) ** 2, -1))

  def init(key):
    return [0.5 * jax.random.normal(k, (dim, dim)) / math.sqrt(dim)
            for k in jax.random.split(key, depth)]

  metric = lambda p: loss(p, xte)
  return Task(
      name="deep_linear", init=init,
      batch=lambda k, t: jax.random.normal(jax.random.fold_in(k, t),
                                           (batch_size, dim)),
      loss=loss, metric=metric, eval_loss=metric, target=target,
      metric_name="test MSE", steps=steps, eval_every=eval_every,
      description=f"deep linear net, depth {depth}, width {dim}")


# --------------------------------------------------------------------------
# Experiment 2: image classification with a small CNN.


def _cnn_init(key, channels, in_shape, classes, conv_dims):
  ks = jax.random.split(key, len(channels) + 1)
  params, c_in = [], in_shape[-1]
  for k, c in zip(ks, channels):
    shape = (3,) * conv_dims + (c_in, c)
    fan_in = 3**conv_dims * c_in
    params.append({"w": jax.random.normal(k, shape) * math.sqrt(2 / fan_in),
                   "b": jnp.zeros((c,))})
    c_in = c
  spatial = [s // 2 ** len(channels) for s in in_shape[:-1]]
  flat = int(np.prod(spatial)) * c_in
  params.append({"w": jax.random.normal(ks[-1], (flat, classes))
                      * math.sqrt(1 / flat), "b": jnp.zeros((classes,))})
  return params


def _cnn(params, x, conv_dims):
  dn = ("NHWC", "HWIO", "NHWC") if conv_dims == 2 else ("NWC", "WIO", "NWC")
  for layer in params[:-1]:
    x = jax.lax.conv_general_dilated(x, layer["w"], (1,) * conv_dims, "SAME",
                                     dimension_numbers=dn) + layer["b"]
    x = jax.nn.relu(x)
    window = (1,) + (2,) * conv_dims + (1,)
    x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window,
                              "VALID")
  x = x.reshape(x.shape[0], -1)
  return x @ params[-1]["w"] + params[-1]["b"]


def _classification(name, xtr, ytr, xte, yte, in_shape, conv_dims, channels,
                    batch_size, steps, target, eval_every, description):
  xtr, xte = jnp.asarray(xtr, jnp.float32), jnp.asarray(xte, jnp.float32)
  ytr, yte = jnp.asarray(ytr, jnp.int32), jnp.asarray(yte, jnp.int32)
  n = xtr.shape[0]

  def logits(params, x):
    return _cnn(params, x, conv_dims)

  def loss(params, batch):
    xb, yb = batch
    return optax.softmax_cross_entropy_with_integer_labels(
        logits(params, xb), yb).mean()

  def metric(params):
    return jnp.mean(jnp.argmax(logits(params, xte), -1) == yte)

  def batch(key, step):
    idx = _sample(key, step, n, batch_size)
    return xtr[idx], ytr[idx]

  return Task(
      name=name, init=lambda k: _cnn_init(k, channels, in_shape, 10,
                                          conv_dims),
      batch=batch, loss=loss, metric=metric,
      eval_loss=lambda p: loss(p, (xte, yte)), target=target,
      metric_name="test accuracy", higher_is_better=True, steps=steps,
      eval_every=eval_every, description=description)


@register("digits_cnn")
def digits_cnn(batch_size: int = 64, steps: int = 600, target: float = 0.93,
               channels=(8, 16), eval_every: int = 25) -> Task:
  """A two-layer CNN on scikit-learn's 8x8 digits (bundled, offline);
  metric: test accuracy (25% stratified split)."""
  from ae_jax import demo
  d = demo.load_data()
  return _classification(
      "digits_cnn", d.x_train.reshape(-1, 8, 8, 1), d.y_train,
      d.x_test.reshape(-1, 8, 8, 1), d.y_test, (8, 8, 1), 2, channels,
      batch_size, steps, target, eval_every,
      f"CNN conv{channels} + dense on sklearn digits, batch {batch_size}")


@register("mnist1d_cnn")
def mnist1d_cnn(batch_size: int = 64, steps: int = 1500,
                target: float = 0.6, channels=(16, 32), n: int = 4000,
                eval_every: int = 50) -> Task:
  """A 1-D CNN on MNIST-1D (generated procedurally by ``mnist1d``, offline;
  the optional ``benchmarks`` extra)."""
  try:
    from mnist1d.data import get_dataset_args, make_dataset
  except ImportError as e:  # pragma: no cover - optional dependency
    raise ImportError("mnist1d_cnn needs `pip install mnist1d` "
                      "(pip install ae-jax[benchmarks])") from e
  args = get_dataset_args()
  args.num_samples = n
  d = make_dataset(args)
  mean, std = d["x"].mean(), d["x"].std()
  norm = lambda v: ((v - mean) / std)[..., None]
  return _classification(
      "mnist1d_cnn", norm(d["x"]), d["y"], norm(d["x_test"]), d["y_test"],
      (40, 1), 1, channels, batch_size, steps, target, eval_every,
      f"1-D CNN conv{channels} on MNIST-1D ({n} samples), batch "
      f"{batch_size}")

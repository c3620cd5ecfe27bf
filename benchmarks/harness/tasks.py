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
import pathlib
import sys
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


# Experiment 3: character-level language modelling with a small transformer.


def stdlib_corpus(n_chars: int) -> bytes:
  """The first ``n_chars`` bytes (ASCII only) of the Python standard
  library's own source, modules in sorted order: a text corpus every Python
  install has offline. Its exact content depends on the Python version."""
  import sysconfig
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  out, size = [], 0
  for f in sorted(root.glob("*.py")):
    data = f.read_bytes()
    data = bytes(b for b in data if b < 128)
    out.append(data)
    size += len(data)
    if size >= n_chars:
      break
  corpus = b"".join(out)[:n_chars]
  if len(corpus) < n_chars:
    raise RuntimeError(f"the stdlib at {root} has only {len(corpus)} ASCII "
                       f"bytes of source, {n_chars} asked")
  return corpus


def _layer_norm(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + 1e-5) * p["g"] + p["b"]


def _transformer_init(key, vocab, context, d, layers, mlp):
  ks = iter(jax.random.split(key, 4 + 4 * layers))
  normal = lambda shape, std=0.02: std * jax.random.normal(next(ks), shape)
  ln = lambda: {"g": jnp.ones((d,)), "b": jnp.zeros((d,))}
  # GPT-2's init: output projections scaled by 1/sqrt(2 * layers).
  out_std = 0.02 / math.sqrt(2 * layers)
  return {
      "embed": normal((vocab, d)), "pos": normal((context, d)),
      "blocks": [{"ln1": ln(), "qkv": normal((d, 3 * d)),
                  "proj": normal((d, d), out_std), "ln2": ln(),
                  "up": normal((d, mlp * d)),
                  "down": normal((mlp * d, d), out_std)}
                 for _ in range(layers)],
      "ln_f": ln(), "head": normal((d, vocab)),
  }


def _transformer(params, tokens, heads):
  """Pre-LN causal transformer: (B, T) int tokens -> (B, T, vocab) logits."""
  b, t = tokens.shape
  x = params["embed"][tokens] + params["pos"][:t]
  d = x.shape[-1]
  mask = jnp.tril(jnp.ones((t, t), bool))
  for blk in params["blocks"]:
    h = _layer_norm(x, blk["ln1"])
    q, k, v = jnp.split(h @ blk["qkv"], 3, axis=-1)
    split = lambda z: z.reshape(b, t, heads, d // heads)
    att = jnp.einsum("bqhc,bkhc->bhqk", split(q), split(k))
    att = jnp.where(mask, att / math.sqrt(d // heads), -1e9)
    att = jnp.einsum("bhqk,bkhc->bqhc", jax.nn.softmax(att, -1), split(v))
    x = x + att.reshape(b, t, d) @ blk["proj"]
    x = x + jax.nn.gelu(_layer_norm(x, blk["ln2"]) @ blk["up"]) @ blk["down"]
  return _layer_norm(x, params["ln_f"]) @ params["head"]


@register("char_lm")
def char_lm(batch_size: int = 16, context: int = 64, steps: int = 800,
            d_model: int = 64, heads: int = 4, layers: int = 2,
            target: float = 5.0, n_chars: int = 300_000,
            eval_windows: int = 64, eval_every: int = 50) -> Task:
  """A small pre-LN causal transformer on the Python standard library's
  source, byte level (128 ASCII symbols); 90% / 10% train / validation
  split. Metric: validation perplexity on ``eval_windows`` fixed windows.
  The target (5.0) is where ``adamw`` at its default rate stands at about
  60% of the quick budget on seed 0 (a tuning seed, not an evaluation one).
  """
  corpus = np.frombuffer(stdlib_corpus(n_chars), np.uint8).astype(np.int32)
  split = int(0.9 * len(corpus))
  train, val = jnp.asarray(corpus[:split]), corpus[split:]
  starts = np.linspace(0, len(val) - context - 1, eval_windows).astype(int)
  val_windows = jnp.asarray(np.stack([val[s:s + context + 1]
                                      for s in starts]))
  vocab = 128

  def windows(data, idx):
    return jax.vmap(lambda i: jax.lax.dynamic_slice(
        data, (i,), (context + 1,)))(idx)

  def ce(params, w):
    logits = _transformer(params, w[:, :-1], heads)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, w[:, 1:]).mean()

  def batch(key, step):
    idx = jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0,
                             train.shape[0] - context - 1)
    return windows(train, idx)

  val_ce = lambda p: ce(p, val_windows)
  return Task(
      name="char_lm",
      init=lambda k: _transformer_init(k, vocab, context, d_model, layers, 4),
      batch=batch, loss=ce, metric=lambda p: jnp.exp(val_ce(p)),
      eval_loss=val_ce, target=target, metric_name="validation perplexity",
      steps=steps, eval_every=eval_every,
      description=(f"byte-level transformer ({layers} layers, d {d_model}, "
                   f"{heads} heads, context {context}) on {n_chars:,} bytes "
                   f"of the Python {sys.version_info.major}."
                   f"{sys.version_info.minor} stdlib source, batch "
                   f"{batch_size}"),
      config=(("batch_size", batch_size), ("context", context)))

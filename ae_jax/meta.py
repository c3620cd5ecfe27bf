"""AE-9: meta-gradients of the law gains, and meta-training on a task family.

AE-9 says every operator of AE-1 … AE-8 is smooth, so the gains (W·, Γ, C,
the filter constants, the meta-steps η) can be learned end to end. With
``smooth=True`` (every hard gate replaced by a sigmoid / softplus surrogate,
``docs/laws.md``) and the gains passed as a :class:`ae_jax.LawGains` pytree,
a K-step training run is a differentiable function of the gains::

  def meta_loss(gains):
    tx = ae.ae_sgdm(0.05, gains=gains, smooth=True)
    state = tx.init(params)
    def step(carry, t):
      ...  # one training step, tx.update(grads, state, params, value=loss)
    carry, _ = ae.meta.unroll(step, (params, state), K)   # remat: O(√K) memory
    return validation_loss(carry[0])

  grads = jax.grad(meta_loss)(ae.default_gains(['learning_rate', 'momentum']))

This module adds what a meta-learning loop needs around that:

* :func:`unroll`: a K-step ``lax.scan`` with rematerialisation (memory
  grows as √K, not K) and optional truncation;
* :class:`Reparam` / :func:`to_gains`: an unconstrained parametrisation of
  the gains (positive gains in log, decays in logit), so any Optax
  optimizer can step on it without leaving the valid set;
* task families (:func:`least_squares_family`, :func:`mlp_family`) and an
  out-of-family task (:func:`digits_task`);
* :func:`train_inner`, :func:`meta_objective`, :func:`meta_train` (the outer
  step is jitted) and :func:`evaluate` (time-to-target and final loss).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax import presets
from ae_jax._controller import coefficients


# -- unrolling ----------------------------------------------------------------


def unroll(step: Callable, carry, length: int, *, remat: bool = True,
           segment: int | None = None, truncate: int | None = None):
  """``lax.scan(step, carry, jnp.arange(length))``, cheap to differentiate.

  Args:
    step: ``step(carry, t) -> (carry, output)``.
    carry: the initial carry.
    length: number of steps K.
    remat: checkpoint each segment of ``segment`` steps: the backward pass
      keeps one carry per segment and recomputes the inside of a segment,
      so memory grows as K/segment + segment (√K with the default segment
      ``ceil(sqrt(K))``) instead of K, for about one extra forward pass.
    segment: the segment length (default ``ceil(sqrt(length))``).
    truncate: truncated back-propagation: gradients flow back through at
      most ``truncate`` steps (the carry is passed through
      ``lax.stop_gradient`` every ``truncate`` steps). Biased: the effect
      of the gains on the state carried across a window boundary is
      dropped, which favours greedy gains (the short-horizon bias of
      truncated meta-gradients: learning rates come out too small). Use it
      with a loss summed over the unroll; with only a final loss, just the
      last window contributes. Close over what you differentiate (the
      gains), do not carry it: the whole carry is cut.

  Returns:
    ``(carry, outputs)`` with outputs stacked over the K steps.
  """
  length = int(length)
  if length < 1:
    raise ValueError(f"unroll: length must be >= 1, got {length}")
  if truncate is not None and int(truncate) < 1:
    raise ValueError(f"unroll: truncate must be >= 1, got {truncate}")
  if segment is not None and int(segment) < 1:
    raise ValueError(f"unroll: segment must be >= 1, got {segment}")
  if truncate is not None:
    size = int(truncate)
  elif segment is not None:
    size = int(segment)
  elif remat:
    size = max(1, math.ceil(math.sqrt(length)))
  else:
    size = length

  def run(c, ts):
    if truncate is not None:
      c = jax.lax.stop_gradient(c)
    return jax.lax.scan(step, c, ts)

  if remat:
    run = jax.checkpoint(run)
  n_full, rest = divmod(length, size)
  outputs = []
  if n_full:
    ts = jnp.arange(n_full * size).reshape(n_full, size)
    carry, out = jax.lax.scan(run, carry, ts)
    outputs.append(jax.tree.map(
        lambda x: x.reshape((n_full * size,) + x.shape[2:]), out))
  if rest:
    carry, out = run(carry, jnp.arange(n_full * size, length))
    outputs.append(out)
  if len(outputs) == 1:
    return carry, outputs[0]
  return carry, jax.tree.map(lambda *xs: jnp.concatenate(xs), *outputs)


# -- an unconstrained parametrisation of the gains ----------------------------

# Gains that must stay positive (stepped in log).
_POSITIVE = ("eta", "gauge", "temperatures")
_MIN_UNIT = 0.1


class Reparam(NamedTuple):
  """The unconstrained meta-parameters: offsets from a base :class:`LawGains`.

  ``to_gains(delta, base)`` maps them back: η, η_γ, the temperatures and the
  leaks Γ scale as ``base · exp(δ)``; the filter decays as
  ``sigmoid(logit(base) + δ)``; every other (signed) gain moves as
  ``base + δ · max(|base|, 0.1)``. So ``δ = 0`` is the base, a step of an
  Optax optimizer on ``δ`` is a relative step on every gain, and no step
  leaves the valid set (η ≥ 0, decays in (0, 1)).
  """

  delta: presets.LawGains


def zeros_like_gains(base: presets.LawGains) -> Reparam:
  """The :class:`Reparam` that reproduces ``base`` exactly (every
  unconstrained offset 0): the starting point of meta-training."""
  return Reparam(jax.tree.map(jnp.zeros_like, base))


def to_gains(reparam: Reparam, base: presets.LawGains) -> presets.LawGains:
  """The :class:`ae_jax.LawGains` of ``reparam`` (see :class:`Reparam`)."""
  delta = reparam.delta

  def signed(b, d):
    return b + d * jnp.maximum(jnp.abs(b), _MIN_UNIT)

  def positive(b, d):
    return b * jnp.exp(d)

  def decay(b, d):
    return jax.nn.sigmoid(jnp.log(b) - jnp.log1p(-b) + d)

  drive = {}
  for name, row in base.drive.items():
    drow = delta.drive[name]
    fields = {f: signed(getattr(row, f), getattr(drow, f))
              for f in row._fields if f != "leak"}
    fields["leak"] = positive(row.leak, drow.leak)
    drive[name] = row._replace(**fields)
  return presets.LawGains(
      drive=drive,
      eta=jax.tree.map(positive, base.eta, delta.eta),
      phase=signed(base.phase, delta.phase),
      coupling=signed(base.coupling, delta.coupling),
      gauge=positive(base.gauge, delta.gauge),
      noise=jax.tree.map(signed, base.noise, delta.noise),
      filters=jax.tree.map(decay, base.filters, delta.filters),
      temperatures=jax.tree.map(positive, base.temperatures,
                                delta.temperatures),
      hypergradient=positive(base.hypergradient, delta.hypergradient))


# -- task families ------------------------------------------------------------


class Task(NamedTuple):
  """One training problem (a pytree of arrays, so tasks can be vmapped).

  Attributes:
    params: the initial parameters.
    x, y: the training set (minibatches are drawn from it).
    x_val, y_val: the validation set.
    floor: the lowest validation loss reachable (the least-squares optimum,
      or the label-noise level); targets are measured above it.
    key: the key of the minibatch order (the same for every optimizer).
  """

  params: Any
  x: chex.Array
  y: chex.Array
  x_val: chex.Array
  y_val: chex.Array
  floor: chex.Array
  key: chex.PRNGKey


class TaskFamily(NamedTuple):
  """A distribution of tasks sharing one model.

  Attributes:
    name: for tables.
    sample: ``sample(key) -> Task`` (traceable, so it can be vmapped and
      jitted).
    loss: ``loss(params, x, y) -> scalar``.
    batch_size: minibatch size (``None``: full batch).
  """

  name: str
  sample: Callable[[chex.PRNGKey], Task]
  loss: Callable[..., chex.Array]
  batch_size: int | None


def _mse(pred, y):
  return 0.5 * jnp.mean(jnp.square(pred - y))


def least_squares_family(dim: int = 8, n_train: int = 128, n_val: int = 64,
                         condition=(1.0, 100.0), scale=(0.3, 3.0),
                         noise: float = 0.1, batch_size: int | None = 32,
                         ) -> TaskFamily:
  """Random least squares ``y = x·w + ε`` of varied scale and conditioning.

  The input covariance has eigenvalues spread log-uniformly over
  ``[1/κ, 1]·s²`` with κ drawn log-uniformly from ``condition`` and the
  scale ``s`` log-uniformly from ``scale``: the largest curvature varies over
  ``scale²`` and the condition number over ``condition``, so no single
  fixed learning rate suits every task.
  """
  dtype = jnp.result_type(float)

  def loguniform(key, bounds):
    lo, hi = (math.log(b) for b in bounds)
    return jnp.exp(jax.random.uniform(key, (), dtype, lo, hi))

  def sample(key) -> Task:
    k_cond, k_scale, k_rot, k_w, k_x, k_noise, k_order = jax.random.split(
        key, 7)
    kappa = loguniform(k_cond, condition)
    s = loguniform(k_scale, scale)
    spectrum = s * kappa ** (-0.5 * jnp.linspace(0.0, 1.0, dim, dtype=dtype))
    rotation, _ = jnp.linalg.qr(jax.random.normal(k_rot, (dim, dim), dtype))
    w = jax.random.normal(k_w, (dim,), dtype) / s
    x_all = (jax.random.normal(k_x, (n_train + n_val, dim), dtype)
             * spectrum) @ rotation.T
    y_all = x_all @ w + noise * jax.random.normal(
        k_noise, (n_train + n_val,), dtype)
    x, x_val = x_all[:n_train], x_all[n_train:]
    y, y_val = y_all[:n_train], y_all[n_train:]
    best = jnp.linalg.lstsq(x, y)[0]
    return Task(params=jnp.zeros((dim,), dtype), x=x, y=y, x_val=x_val,
                y_val=y_val, floor=_mse(x_val @ best, y_val), key=k_order)

  def loss(params, x, y):
    return _mse(x @ params, y)

  return TaskFamily("least_squares", sample, loss, batch_size)


def _mlp(params, x):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  return h @ params["w2"] + params["b2"]


def _mlp_init(key, din, hidden, dout, dtype):
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (din, hidden), dtype) / math.sqrt(din),
          "b1": jnp.zeros((hidden,), dtype),
          "w2": jax.random.normal(k2, (hidden, dout), dtype)
                / math.sqrt(hidden),
          "b2": jnp.zeros((dout,), dtype)}


def mlp_family(dim: int = 4, hidden: int = 16, n_train: int = 256,
               n_val: int = 128, input_scale=(0.3, 3.0),
               target_scale=(0.3, 3.0), noise: float = 0.05,
               batch_size: int | None = 32) -> TaskFamily:
  """Student-teacher regression with a one-hidden-layer tanh MLP.

  Inputs are scaled per dimension by factors drawn log-uniformly from
  ``input_scale`` (varied scale and conditioning of the input), targets by
  a factor from ``target_scale``; the teacher is a random MLP of the same
  shape, the student starts from an independent random draw.
  """
  dtype = jnp.result_type(float)

  def sample(key) -> Task:
    k_in, k_out, k_teacher, k_student, k_x, k_noise, k_order = (
        jax.random.split(key, 7))
    lo, hi = (math.log(b) for b in input_scale)
    in_scale = jnp.exp(jax.random.uniform(k_in, (dim,), dtype, lo, hi))
    lo, hi = (math.log(b) for b in target_scale)
    out_scale = jnp.exp(jax.random.uniform(k_out, (), dtype, lo, hi))
    teacher = _mlp_init(k_teacher, dim, hidden, 1, dtype)
    x_all = jax.random.normal(k_x, (n_train + n_val, dim), dtype) * in_scale
    y_all = (out_scale * _mlp(teacher, x_all / in_scale)[:, 0]
             + noise * out_scale * jax.random.normal(
                 k_noise, (n_train + n_val,), dtype))
    return Task(params=_mlp_init(k_student, dim, hidden, 1, dtype),
                x=x_all[:n_train], y=y_all[:n_train], x_val=x_all[n_train:],
                y_val=y_all[n_train:],
                floor=0.5 * jnp.square(noise * out_scale), key=k_order)

  def loss(params, x, y):
    return _mse(_mlp(params, x)[:, 0], y)

  return TaskFamily("mlp", sample, loss, batch_size)


def digits_task(key=None, hidden: int = 32, batch_size: int = 64,
                ) -> tuple[TaskFamily, Task]:
  """An out-of-family task: classification of scikit-learn's digits (8×8
  images, 10 classes) by a tanh MLP with cross-entropy, unscaled pixels
  (0 … 16). Returns ``(family, task)``; ``family.sample`` ignores its key.
  Needs scikit-learn (``pip install ae-jax[bench]``).
  """
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  dtype = jnp.result_type(float)
  digits = load_digits()
  order = np.random.default_rng(0).permutation(len(digits.target))
  x_all = jnp.asarray(digits.data[order], dtype)
  y_all = jnp.asarray(digits.target[order])
  n_train = 1200
  key = jax.random.PRNGKey(0) if key is None else key
  k_init, k_order = jax.random.split(key)
  task = Task(params=_mlp_init(k_init, 64, hidden, 10, dtype),
              x=x_all[:n_train], y=y_all[:n_train], x_val=x_all[n_train:],
              y_val=y_all[n_train:], floor=jnp.zeros([], dtype), key=k_order)

  def loss(params, x, y):
    logits = _mlp(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return TaskFamily("digits", lambda k: task, loss, batch_size), task


# -- the inner run and the meta objective -------------------------------------


class InnerConfig(NamedTuple):
  """How the inner optimizer is built and run.

  Attributes:
    steps: K, training steps per task.
    learning_rate: the initial α of the preset.
    momentum: the initial β (``ae_sgdm``) or β1 (Adam presets).
    preset: ``"ae_sgdm"``, ``"ae_adam"`` or ``"ae_adamw"``.
    smooth: the AE-9 temperature (``True``: the default).
    remat: rematerialise the unroll (:func:`unroll`).
    truncate: truncated back-propagation window (:func:`unroll`).
  """

  steps: int = 100
  learning_rate: float = 0.05
  momentum: float = 0.9
  preset: str = "ae_sgdm"
  smooth: Any = True
  remat: bool = True
  truncate: int | None = None


def coefficient_names(config: InnerConfig) -> list[str]:
  """The coefficients the preset adapts (the keys of its gains)."""
  if config.preset == "ae_sgdm":
    return ["learning_rate", "momentum", "sigma"]
  if config.preset == "ae_adam":
    return ["learning_rate", "b1", "b2", "eps", "sigma"]
  if config.preset == "ae_adamw":
    return ["learning_rate", "b1", "b2", "eps", "weight_decay", "sigma"]
  raise ValueError(f"InnerConfig.preset must be 'ae_sgdm', 'ae_adam' or "
                   f"'ae_adamw', got {config.preset!r}")


def make_optimizer(gains: presets.LawGains, config: InnerConfig):
  """The preset of ``config`` with ``gains`` (traceable)."""
  coefficient_names(config)  # validates the preset name
  if config.preset == "ae_sgdm":
    return presets.ae_sgdm(config.learning_rate, config.momentum,
                           gains=gains, smooth=config.smooth)
  factory = getattr(presets, config.preset)
  return factory(config.learning_rate, config.momentum, gains=gains,
                 smooth=config.smooth)


class InnerLog(NamedTuple):
  """Per-step log of :func:`train_inner` (arrays of length K)."""

  loss: chex.Array        # minibatch training loss
  val_loss: chex.Array    # validation loss after the step
  coefficients: dict      # coefficient values after the step


def train_inner(gains: presets.LawGains, task: Task, family: TaskFamily,
                config: InnerConfig) -> tuple[Any, InnerLog]:
  """Trains ``task`` for ``config.steps`` steps; differentiable in ``gains``.

  Returns:
    ``(params, log)``.
  """
  tx = make_optimizer(gains, config)
  n = task.x.shape[0]
  batch = family.batch_size

  def step(carry, t):
    params, state = carry
    if batch is None or batch >= n:
      x, y = task.x, task.y
    else:
      idx = jax.random.choice(jax.random.fold_in(task.key, t), n, (batch,),
                              replace=False)
      x, y = task.x[idx], task.y[idx]
    loss, grads = jax.value_and_grad(family.loss)(params, x, y)
    updates, state = tx.update(grads, state, params, value=loss)
    params = optax.apply_updates(params, updates)
    val = family.loss(params, task.x_val, task.y_val)
    return (params, state), InnerLog(loss, val, coefficients(state))

  (params, _), log = unroll(step, (task.params, tx.init(task.params)),
                            config.steps, remat=config.remat,
                            truncate=config.truncate)
  return params, log


def meta_objective(gains: presets.LawGains, task: Task, family: TaskFamily,
                   config: InnerConfig) -> chex.Array:
  """The scale-free meta-loss of one task: the mean over the run of
  ``log((L_t - floor) / (L_0 - floor))`` on the validation set (an AUC in
  log space: it rewards reaching low loss early, i.e. time-to-target, and
  the final loss). A diverged run is capped at ``log 1e3``."""
  initial = family.loss(task.params, task.x_val, task.y_val)
  _, log = train_inner(gains, task, family, config)
  gap0 = jnp.maximum(initial - task.floor, 1e-12)
  gap = jnp.maximum(log.val_loss - task.floor, 1e-6 * gap0)
  ratio = jnp.log(gap / gap0)
  ratio = jnp.where(jnp.isfinite(ratio), jnp.minimum(ratio, math.log(1e3)),
                    math.log(1e3))
  return jnp.mean(ratio)


class MetaResult(NamedTuple):
  """Result of :func:`meta_train`.

  Attributes:
    gains: the meta-learned :class:`ae_jax.LawGains`.
    reparam: the final :class:`Reparam` offsets.
    history: ``meta_loss`` per outer step (numpy array) and ``gains``, the
      gains after every outer step (a LawGains of numpy arrays, leading axis
      the outer step).
  """

  gains: presets.LawGains
  reparam: Reparam
  history: dict


def meta_train(families, *, key, config: InnerConfig = InnerConfig(),
               meta_steps: int = 100, tasks_per_step: int = 4,
               meta_optimizer: optax.GradientTransformation | None = None,
               base: presets.LawGains | None = None,
               progress: bool = False) -> MetaResult:
  """Meta-trains the gains of ``config.preset`` on a task family.

  Each outer step samples ``tasks_per_step`` tasks from every family (so
  the least-squares and MLP families are trained on together), computes the
  mean :func:`meta_objective` and its gradient with respect to the
  :class:`Reparam` offsets, and applies ``meta_optimizer``. The outer step
  is one jitted function (compiled once).

  Args:
    families: a :class:`TaskFamily` or a sequence of them.
    key: PRNG key of the task draws.
    config: the inner run.
    meta_steps: outer steps.
    tasks_per_step: tasks per family per outer step.
    meta_optimizer: default ``optax.adam(0.03)`` (steps on relative /
      log-scale offsets).
    base: the starting gains (default :func:`ae_jax.default_gains`).
    progress: show a tqdm progress bar.
  """
  if isinstance(families, TaskFamily):
    families = (families,)
  families = tuple(families)
  if not families:
    raise ValueError("meta_train: give at least one TaskFamily")
  if int(meta_steps) < 1 or int(tasks_per_step) < 1:
    raise ValueError("meta_train: meta_steps and tasks_per_step must be "
                     ">= 1")
  base = base if base is not None else presets.default_gains(
      coefficient_names(config))
  meta_optimizer = meta_optimizer or optax.adam(0.03)
  reparam = zeros_like_gains(base)
  opt_state = meta_optimizer.init(reparam)

  def loss_fn(rp, step_key):
    gains = to_gains(rp, base)
    total = 0.0
    for i, family in enumerate(families):
      keys = jax.random.split(jax.random.fold_in(step_key, i),
                              tasks_per_step)
      tasks = jax.vmap(family.sample)(keys)
      per_task = jax.vmap(
          lambda task, fam=family: meta_objective(gains, task, fam, config))
      total = total + jnp.mean(per_task(tasks))
    return total / len(families)

  @jax.jit
  def outer_step(rp, opt_state, step_key):
    value, grads = jax.value_and_grad(loss_fn)(rp, step_key)
    # A non-finite meta-gradient (a diverged inner run) skips the step.
    finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(g))
                                for g in jax.tree.leaves(grads)]))
    grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
    updates, opt_state = meta_optimizer.update(grads, opt_state, rp)
    return optax.apply_updates(rp, updates), opt_state, value

  losses, snapshots = [], []
  steps = range(int(meta_steps))
  if progress:
    try:
      from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
      steps = tqdm(steps, desc="meta-train")
    except ImportError:  # tqdm comes with the bench extra; a bar is cosmetic
      pass
  for step in steps:
    reparam, opt_state, value = outer_step(reparam, opt_state,
                                           jax.random.fold_in(key, step))
    losses.append(value)
    snapshots.append(to_gains(reparam, base))
  history = {"meta_loss": np.asarray(jnp.stack(losses)),
             "gains": jax.tree.map(lambda *x: np.stack(x), *snapshots)}
  return MetaResult(to_gains(reparam, base), reparam, history)


# -- evaluation ---------------------------------------------------------------


class Evaluation(NamedTuple):
  """Per-task results of :func:`evaluate` (numpy arrays over tasks).

  Attributes:
    steps_to_target: first step whose validation gap ``L - floor`` is at
      most ``target`` times the initial gap (``K + 1`` when never reached,
      a censored value).
    final_loss: validation loss after K steps.
    reached: whether the target was reached.
    val_loss: validation loss per step (tasks × K).
    coefficients: coefficient trajectories (name -> tasks × K).
  """

  steps_to_target: np.ndarray
  final_loss: np.ndarray
  reached: np.ndarray
  val_loss: np.ndarray
  coefficients: dict


def evaluate(gains: presets.LawGains, family: TaskFamily, tasks: Task,
             config: InnerConfig = InnerConfig(), *, target: float = 0.05,
             ) -> Evaluation:
  """Trains every task of the stacked ``tasks`` (vmapped) and measures
  time-to-target and final validation loss."""
  eval_config = config._replace(remat=False, truncate=None)

  @jax.jit
  def run(tasks):
    def one(task):
      initial = family.loss(task.params, task.x_val, task.y_val)
      _, log = train_inner(gains, task, family, eval_config)
      gap = log.val_loss - task.floor
      hit = gap <= target * (initial - task.floor)
      first = jnp.where(jnp.any(hit), jnp.argmax(hit) + 1,
                        eval_config.steps + 1)
      return first, log.val_loss[-1], jnp.any(hit), log
    return jax.vmap(one)(tasks)

  first, final, reached, log = run(tasks)
  return Evaluation(np.asarray(first), np.asarray(final), np.asarray(reached),
                    np.asarray(log.val_loss),
                    {k: np.asarray(v) for k, v in log.coefficients.items()})


def sample_tasks(family: TaskFamily, key, count: int) -> Task:
  """``count`` tasks of ``family``, stacked on a leading axis."""
  return jax.vmap(family.sample)(jax.random.split(key, count))

"""AE-AdamW against AdamW on scikit-learn's digits: the ``ae-jax demo`` core.

A small MLP is trained on the bundled 8x8 digits (1797 images, 10 classes,
no download) with :func:`ae_jax.ae_adamw` and with ``optax.adamw`` at the
same initial learning rate, for several seeds. Per seed both methods start
from the same parameters and see the same minibatches, so the only
difference is the optimizer.

Each run is a jitted ``lax.scan`` over steps, cut into chunks so a progress
bar can advance and the test accuracy can be measured between chunks; the
AE coefficients are scan outputs, one row per step.

Example::

  from ae_jax.bench import demo
  data = demo.load_data()
  history = demo.train("ae_adamw", seed=0, steps=500, data=data)
  rows = demo.summarize({"ae_adamw": [history]}, target=0.95)
  print(demo.format_table(rows, target=0.95))
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ae_jax as ae

METHODS = ("ae_adamw", "adamw")
# The coefficients plotted, with the y-axis transform used for each.
PLOTTED = (("learning_rate", "log"), ("b1", "linear"), ("b2", "one_minus_log"),
           ("eps", "log"))
DEFAULT_HIDDEN = (64, 64)
DEFAULT_BATCH = 64
DEFAULT_CHUNK = 50
WEIGHT_DECAY = 1e-4  # the default of both ae_adamw and optax.adamw


class Data(NamedTuple):
  """Standardised digits, split once (the split does not depend on the run
  seed)."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def load_data(split_seed: int = 0, test_size: float = 0.25) -> Data:
  """Digits, standardised with the training split's mean and std.

  Args:
    split_seed: seed of the stratified train/test split.
    test_size: fraction held out for test.
  """
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  x, y = load_digits(return_X_y=True)
  x_tr, x_te, y_tr, y_te = train_test_split(
      x.astype(np.float32), y.astype(np.int32), test_size=test_size,
      random_state=split_seed, stratify=y)
  mean = x_tr.mean(axis=0)
  std = x_tr.std(axis=0)
  std = np.where(std > 1e-6, std, 1.0)  # a few border pixels are constant
  return Data(((x_tr - mean) / std).astype(np.float32), y_tr,
              ((x_te - mean) / std).astype(np.float32), y_te)


def init_mlp(key, sizes: Sequence[int]) -> list[dict]:
  """He-initialised dense layers ``sizes[0] -> ... -> sizes[-1]``."""
  params = []
  keys = jax.random.split(key, len(sizes) - 1)
  for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:]):
    w = jax.random.normal(k, (n_in, n_out), jnp.float32) * math.sqrt(2 / n_in)
    params.append({"w": w, "b": jnp.zeros((n_out,), jnp.float32)})
  return params


def mlp(params, x):
  """Logits of the MLP (ReLU hidden layers)."""
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def loss_fn(params, x, y):
  """Mean softmax cross-entropy."""
  return optax.softmax_cross_entropy_with_integer_labels(mlp(params, x),
                                                         y).mean()


def accuracy(params, x, y):
  return jnp.mean(jnp.argmax(mlp(params, x), axis=-1) == y)


def make_optimizer(method: str, learning_rate: float,
                   batches_per_epoch: int | None = None
                   ) -> optax.GradientTransformationExtraArgs:
  """``ae_adamw`` (library defaults, told the epoch length of the shuffled
  batches, ``batches_per_epoch``) or ``optax.adamw`` with the same initial
  learning rate and weight decay."""
  if method == "ae_adamw":
    return ae.ae_adamw(learning_rate=learning_rate,
                       batches_per_epoch=batches_per_epoch)
  if method == "adamw":
    return optax.adamw(learning_rate, weight_decay=WEIGHT_DECAY)
  raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def batch_order(seed: int, steps: int, n_train: int,
                batch_size: int) -> np.ndarray:
  """Minibatch indices, ``(steps, batch_size)``: shuffled epochs, drop-last.

  Depends only on ``seed`` (not on the method), so both methods see the same
  batches in the same order.
  """
  rng = np.random.default_rng(seed)
  per_epoch = n_train // batch_size
  epochs = -(-steps // per_epoch)
  order = np.concatenate([
      rng.permutation(n_train)[:per_epoch * batch_size]
      for _ in range(epochs)])
  return order.reshape(-1, batch_size)[:steps].astype(np.int32)


@functools.lru_cache(maxsize=None)
def _chunk_runner(method: str, learning_rate: float,
                  batches_per_epoch: int) -> Callable:
  """The jitted chunk of training for ``method`` (one compile per method and
  chunk length, shared by all seeds)."""
  tx = make_optimizer(method, learning_rate, batches_per_epoch)
  is_ae = method.startswith("ae_")

  def step(carry, idx, x_train, y_train):
    params, opt_state = carry
    x, y = x_train[idx], y_train[idx]
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    if is_ae:
      updates, opt_state = tx.update(grads, opt_state, params, value=loss)
      coefs = ae.coefficients(opt_state)
    else:
      updates, opt_state = tx.update(grads, opt_state, params)
      coefs = {}
    params = optax.apply_updates(params, updates)
    return (params, opt_state), (loss, coefs)

  @jax.jit
  def run(params, opt_state, idx_chunk, x_train, y_train, x_test, y_test):
    (params, opt_state), (losses, coefs) = jax.lax.scan(
        functools.partial(step, x_train=x_train, y_train=y_train),
        (params, opt_state), idx_chunk)
    return (params, opt_state, losses, coefs,
            accuracy(params, x_test, y_test))

  return tx, run


def train(method: str, seed: int, steps: int, *, data: Data | None = None,
          learning_rate: float = 1e-3, hidden: Sequence[int] = DEFAULT_HIDDEN,
          batch_size: int = DEFAULT_BATCH, chunk: int = DEFAULT_CHUNK,
          progress: Any = None) -> dict:
  """Trains the MLP with ``method`` for ``steps`` minibatch steps.

  Args:
    method: ``"ae_adamw"`` or ``"adamw"``.
    seed: seeds the initial parameters and the minibatch order (identical
      for both methods).
    steps: optimizer steps.
    data: from :func:`load_data` (loaded if omitted).
    learning_rate: the (initial) learning rate.
    hidden: hidden layer widths.
    batch_size: minibatch size.
    chunk: steps per jitted scan; test accuracy is measured after each.
    progress: ``None`` (no bar), ``True`` (a ``tqdm.auto`` bar for this run)
      or an existing tqdm bar to advance by ``steps``.

  Returns:
    A history dict: ``method``, ``seed``, ``loss`` (per-step minibatch loss,
    ``(steps,)``), ``coefficients`` (name -> ``(steps,)`` values after each
    step; empty for ``adamw``), ``eval_steps`` and ``test_acc`` (after each
    chunk), ``final_test_acc``, ``final_train_loss`` (full training set),
    ``final_train_acc`` and ``seconds`` (wall time, compile included).
  """
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  if chunk < 1:
    raise ValueError(f"chunk must be >= 1, got {chunk}")
  data = load_data() if data is None else data
  start = time.perf_counter()
  # The batches come in shuffled epochs (batch_order), as in most loops.
  tx, run = _chunk_runner(method, float(learning_rate),
                          len(data.y_train) // batch_size)
  n_features = data.x_train.shape[1]
  n_classes = int(max(data.y_train.max(), data.y_test.max())) + 1
  params = init_mlp(jax.random.PRNGKey(seed),
                    (n_features, *hidden, n_classes))
  opt_state = tx.init(params)
  order = batch_order(seed, steps, len(data.y_train), batch_size)
  arrays = [jnp.asarray(a) for a in data]

  own_bar = progress is True
  bar = None
  if own_bar:
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, desc=f"{method} seed {seed}", unit="step",
               leave=False)
  elif progress is not None and progress is not False:
    bar = progress

  losses, coef_chunks, eval_steps, test_acc = [], [], [], []
  done = 0
  try:
    while done < steps:
      n = min(chunk, steps - done)
      params, opt_state, loss_c, coef_c, acc = run(
          params, opt_state, jnp.asarray(order[done:done + n]), *arrays)
      done += n
      losses.append(np.asarray(loss_c))
      coef_chunks.append(jax.tree.map(np.asarray, coef_c))
      eval_steps.append(done)
      test_acc.append(float(acc))
      if bar is not None:
        bar.update(n)
  finally:
    if own_bar:
      bar.close()

  coefficients = {k: np.concatenate([c[k] for c in coef_chunks])
                  for k in coef_chunks[0]}
  x_tr, y_tr, x_te, y_te = arrays
  return {
      "method": method,
      "seed": seed,
      "loss": np.concatenate(losses),
      "coefficients": coefficients,
      "eval_steps": np.asarray(eval_steps),
      "test_acc": np.asarray(test_acc),
      "final_test_acc": float(accuracy(params, x_te, y_te)),
      "final_train_loss": float(loss_fn(params, x_tr, y_tr)),
      "final_train_acc": float(accuracy(params, x_tr, y_tr)),
      "seconds": time.perf_counter() - start,
  }


def steps_to_target(history: Mapping, target: float) -> int | None:
  """The first evaluated step with test accuracy >= ``target`` (None if
  never reached)."""
  hit = np.nonzero(np.asarray(history["test_acc"]) >= target)[0]
  return int(history["eval_steps"][hit[0]]) if hit.size else None


def t_interval(values: Sequence[float], confidence: float = 0.95
               ) -> tuple[float, float]:
  """Mean and half-width of the Student-t confidence interval (half-width
  ``nan`` for a single value)."""
  values = np.asarray(values, np.float64)
  mean = float(values.mean())
  if values.size < 2:
    return mean, float("nan")
  from scipy import stats
  sem = values.std(ddof=1) / math.sqrt(values.size)
  return mean, float(stats.t.ppf(0.5 + confidence / 2, values.size - 1) * sem)


def summarize(results: Mapping[str, Sequence[Mapping]], target: float = 0.95
              ) -> list[dict]:
  """One row per method: accuracy mean ± 95% CI, steps to ``target``, final
  train loss."""
  rows = []
  for method, histories in results.items():
    acc_mean, acc_ci = t_interval([h["final_test_acc"] for h in histories])
    loss_mean, loss_ci = t_interval([h["final_train_loss"]
                                     for h in histories])
    hits = [steps_to_target(h, target) for h in histories]
    reached = [s for s in hits if s is not None]
    rows.append({
        "method": method,
        "seeds": len(histories),
        "test_acc": acc_mean,
        "test_acc_ci": acc_ci,
        "steps_to_target": float(np.mean(reached)) if reached else None,
        "reached": len(reached),
        "train_loss": loss_mean,
        "train_loss_ci": loss_ci,
        "seconds": float(np.mean([h["seconds"] for h in histories])),
    })
  return rows


def format_table(rows: Sequence[Mapping], target: float = 0.95) -> str:
  """The summary rows as a fixed-width text table."""
  def pm(mean, ci, fmt):
    return (f"{mean:{fmt}} ± {ci:{fmt}}" if math.isfinite(ci)
            else f"{mean:{fmt}}")

  header = ("method", "test acc (95% CI)", f"steps to {target:g} (reached)",
            "final train loss")
  body = []
  for r in rows:
    steps = ("—" if r["steps_to_target"] is None
             else f"{r['steps_to_target']:.0f}")
    body.append((r["method"], pm(r["test_acc"], r["test_acc_ci"], ".4f"),
                 f"{steps} ({r['reached']}/{r['seeds']})",
                 pm(r["train_loss"], r["train_loss_ci"], ".2e")))
  widths = [max(len(row[i]) for row in (header, *body))
            for i in range(len(header))]
  line = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths))
  rule = "  ".join("-" * w for w in widths)
  return "\n".join([line(header), rule, *map(line, body)])


def _smooth(x: np.ndarray, window: int) -> np.ndarray:
  """Trailing moving average (same length; shorter windows at the start)."""
  if window <= 1 or x.shape[-1] < 2:
    return x
  c = np.cumsum(np.pad(x, [(0, 0)] * (x.ndim - 1) + [(1, 0)]), axis=-1)
  idx = np.arange(x.shape[-1])
  lo = np.maximum(idx + 1 - window, 0)
  return (c[..., idx + 1] - c[..., lo]) / (idx + 1 - lo)


def plot(results: Mapping[str, Sequence[Mapping]], path=None, *,
         learning_rate: float | None = None, target: float | None = None,
         smooth: int = 25):
  """Loss curves, test accuracy and AE coefficient trajectories.

  Uses matplotlib's Agg canvas directly (no pyplot, no global backend
  change). Writes a PNG to ``path`` if given; returns the Figure.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  colors = {"ae_adamw": "tab:red", "adamw": "tab:blue"}
  fig = Figure(figsize=(13, 7.5), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(2, 3)
  ax_loss, ax_acc = axes[0, 0], axes[0, 1]
  coef_axes = [axes[0, 2], axes[1, 0], axes[1, 1], axes[1, 2]]

  for method, histories in results.items():
    color = colors.get(method)
    loss = _smooth(np.stack([h["loss"] for h in histories]), smooth)
    steps = np.arange(1, loss.shape[1] + 1)
    label = f"{method} (n={len(histories)})"
    ax_loss.plot(steps, loss.mean(0), color=color, label=label, lw=1.5)
    ax_loss.fill_between(steps, loss.min(0), loss.max(0), color=color,
                         alpha=0.2, lw=0)
    acc = np.stack([h["test_acc"] for h in histories])
    ev = histories[0]["eval_steps"]
    ax_acc.plot(ev, acc.mean(0), color=color, label=label, lw=1.5,
                marker="o", ms=2.5)
    ax_acc.fill_between(ev, acc.min(0), acc.max(0), color=color, alpha=0.2,
                        lw=0)
  ax_loss.set(yscale="log", xlabel="step",
              ylabel=f"train minibatch loss ({smooth}-step mean)",
              title="Training loss (mean, band = min–max over seeds)")
  ax_loss.legend()
  if target is not None:
    ax_acc.axhline(target, color="gray", ls=":", lw=1,
                   label=f"target {target:g}")
  ax_acc.set(xlabel="step", ylabel="test accuracy", title="Test accuracy")
  lo = min(float(np.min(h["test_acc"])) for hs in results.values()
           for h in hs)
  ax_acc.set_ylim(max(lo - 0.02, 0.0) if lo > 0.5 else 0.0, 1.0)
  ax_acc.legend(loc="lower right")

  ae_runs = {m: hs for m, hs in results.items()
             if hs and hs[0]["coefficients"]}
  baseline = {"learning_rate": learning_rate, "b1": 0.9, "b2": 0.999,
              "eps": 1e-8}
  for ax, (name, scale) in zip(coef_axes, PLOTTED):
    for method, histories in ae_runs.items():
      color = colors.get(method)
      for i, h in enumerate(histories):
        v = np.asarray(h["coefficients"][name], np.float64)
        if scale == "one_minus_log":
          v = 1.0 - v
        steps = np.arange(1, v.size + 1)
        ax.plot(steps, v, color=color, alpha=0.8, lw=1.2,
                label=f"{method}" if i == 0 else None)
    ref = baseline.get(name)
    if ref is not None and "adamw" in results:
      ax.axhline(1.0 - ref if scale == "one_minus_log" else ref,
                 color=colors["adamw"], ls="--", lw=1, label="adamw (fixed)")
    if scale == "one_minus_log":
      ax.set(yscale="log", ylabel="1 − b2", title="b2 (shown as 1 − b2)")
    else:
      ax.set(yscale=scale, ylabel=name, title=name)
    ax.set_xlabel("step")
    ax.legend(fontsize="small")
  fig.suptitle("ae_adamw vs adamw: MLP on sklearn digits "
               "(one line per seed in the coefficient panels)")
  if path is not None:
    fig.savefig(path, dpi=110)
  return fig


def run_demo(*, steps: int = 1500, seeds: int = 3, learning_rate: float = 1e-3,
             target: float = 0.95, out=None, methods: Sequence[str] = METHODS,
             hidden: Sequence[int] = DEFAULT_HIDDEN,
             batch_size: int = DEFAULT_BATCH, chunk: int = DEFAULT_CHUNK,
             progress: bool = True, print_fn: Callable = print) -> dict:
  """Trains every method for every seed, prints the table, optionally plots.

  Returns:
    ``{"results": method -> [history], "rows": summary rows,
    "table": str, "seconds": float}``.
  """
  if seeds < 1:
    raise ValueError(f"seeds must be >= 1, got {seeds}")
  start = time.perf_counter()
  data = load_data()
  results = {m: [] for m in methods}
  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=steps * seeds * len(methods), unit="step",
               desc="demo")
  try:
    for seed in range(seeds):
      for method in methods:
        if bar is not None:
          bar.set_description(f"{method} seed {seed}")
        results[method].append(train(
            method, seed, steps, data=data, learning_rate=learning_rate,
            hidden=hidden, batch_size=batch_size, chunk=chunk, progress=bar))
  finally:
    if bar is not None:
      bar.close()
  rows = summarize(results, target)
  table = format_table(rows, target)
  print_fn(f"MLP {len(data.x_train[0])}-{'-'.join(map(str, hidden))}-10 on "
           f"sklearn digits ({len(data.y_train)} train / {len(data.y_test)} "
           f"test), {steps} steps of batch {batch_size}, lr {learning_rate:g}, "
           f"{seeds} seed(s); test accuracy evaluated every {chunk} steps")
  print_fn(table)
  if out is not None:
    plot(results, out, learning_rate=learning_rate, target=target)
    print_fn(f"wrote {out}")
  seconds = time.perf_counter() - start
  print_fn(f"total time {seconds:.1f} s")
  return {"results": results, "rows": rows, "table": table,
          "seconds": seconds}

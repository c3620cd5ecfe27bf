"""The runner: every (task, optimizer, seed) trained the same way.

:func:`run` trains one optimizer on one task for several seeds. A run is a
``lax.scan`` over evaluation chunks (``task.eval_every`` steps each, an
inner ``lax.scan``) under ``jit``, ``vmap``-ped over the seeds. Per seed
``s`` the initial parameters come from ``task.init(k_init)`` and the
minibatches from ``task.batch(k_data, step)`` with ``k_init, k_data =
split(PRNGKey(s))``: identical for every optimizer. Per step it records the
training loss and, for AE optimizers, the signals (T, V, ρ, S, γ) and every
coefficient; after each chunk, the task metric (on
``spec.eval_params(state, params)`` where the optimizer has one, e.g.
schedule-free).

``delay=k`` computes each gradient (and the loss the optimizer is given)
at the parameters of ``k`` steps earlier: experiment 7's stale gradients.

**Windowed peers** (tensor-optix): their suggestions are host-side numpy
code, so the scan is cut into windows of ``spec.windowed['window']`` steps.
The window is still jitted and vmapped over seeds; between windows each
seed's optimizer gets the score ``log(L_prev / L)`` of a fixed held-out
batch (``task.eval_loss``; ``-10`` if not finite), suggests a learning rate,
and the runner writes it into that seed's ``inject_hyperparams`` state (no
recompilation, moments kept). Each seed's optimizer draws from its own
saved ``numpy``/``random`` state, seeded with the seed, so results do not
depend on how many seeds run together.

**Tuned** optimizers (``name@tuned``): :func:`tune` picks the learning rate
on a log grid on seed 0 (best final metric; diverged runs rank last) and
:func:`run` evaluates it on the requested seeds (the DeepOBS protocol; keep
seed 0 out of the evaluation seeds, as :func:`compare` does).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ae_jax as ae

from benchmarks.harness import metrics as M
from benchmarks.harness import optimizers as O
from benchmarks.harness.tasks import Task

SIGNALS = ("T", "V", "rho", "S", "gamma")


@dataclasses.dataclass
class Result:
  """Per-step arrays of one optimizer on one task, leading axis = seeds."""

  task: str
  optimizer: str
  learning_rate: float
  seeds: np.ndarray
  steps: int
  loss: np.ndarray              # (S, steps): training loss the optimizer saw
  eval_steps: np.ndarray        # (E,) steps at which the metric was taken
  metric: np.ndarray            # (S, E)
  signals: dict[str, np.ndarray]       # name -> (S, steps) (AE only)
  coefficients: dict[str, np.ndarray]  # name -> (S, steps)
  wall_s: float = math.nan
  note: str = ""
  tuning: dict | None = None

  def summary(self, task: Task) -> dict[str, np.ndarray]:
    """Per-seed metrics (arrays over seeds)."""
    out = {
        "final": M.final(self.metric),
        "ttt": M.time_to_target(self.metric, self.eval_steps, task.target,
                                task.higher_is_better),
        "auc": M.auc(self.metric, self.eval_steps),
        "nonfinite": M.nonfinite(self.loss),
        "diverged": M.diverged(self.loss),
        "oscillation": M.oscillation(self.loss, skip=self.steps // 10),
    }
    if "gamma" in self.signals:
      out["var_log_gamma"] = M.var_log_gamma(self.signals["gamma"])
    if "learning_rate" in self.coefficients:
      out["max_dlog_lr"] = M.max_abs_dlog(self.coefficients["learning_rate"])
    return out


def _round_steps(steps: int, every: int) -> int:
  return max(every, (steps // every) * every)


def _builders(task: Task, spec: O.OptSpec, tx, every: int, delay: int):
  """``init_one(seed) -> carry`` and ``chunk(carry, i) -> carry, (recs,
  metric)`` for one seed; shared by the scanned and the windowed runner."""

  def evaluate(params, state):
    p = spec.eval_params(state, params) if spec.eval_params else params
    return task.metric(p)

  def init_one(seed):
    k_init, k_data = jax.random.split(jax.random.PRNGKey(seed))
    params = task.init(k_init)
    state = tx.init(params)
    past = (jax.tree.map(lambda x: jnp.stack([x] * delay), params)
            if delay else ())
    return params, state, past, k_data

  def step(carry, t):
    params, state, past, k_data = carry
    batch = task.batch(k_data, t)
    at = jax.tree.map(lambda b: b[0], past) if delay else params
    loss, grads = jax.value_and_grad(task.loss)(at, batch)
    kw = {"value": loss} if spec.needs_value else {}
    updates, state = tx.update(grads, state, params, **kw)
    if delay:
      past = jax.tree.map(lambda b, x: jnp.concatenate([b[1:], x[None]]),
                          past, params)
    params = optax.apply_updates(params, updates)
    rec = {"loss": loss}
    if spec.is_ae:
      sig = ae.signals(state)
      rec.update({f"s:{k}": jnp.asarray(sig[k], jnp.float32)
                  for k in SIGNALS if k in sig})
      rec.update({f"c:{k}": jnp.asarray(v, jnp.float32)
                  for k, v in ae.coefficients(state).items()})
    elif spec.windowed:
      rec["c:learning_rate"] = jnp.asarray(
          state.hyperparams["learning_rate"], jnp.float32)
    return (params, state, past, k_data), rec

  def chunk(carry, i):
    carry, recs = jax.lax.scan(step, carry, i * every + jnp.arange(every))
    return carry, (recs, evaluate(carry[0], carry[1]))

  return init_one, chunk, evaluate


def _split_records(recs, n_seeds):
  flat = {k: np.asarray(v).reshape(n_seeds, -1) for k, v in recs.items()}
  signals = {k[2:]: v for k, v in flat.items() if k.startswith("s:")}
  coefs = {k[2:]: v for k, v in flat.items() if k.startswith("c:")}
  return flat["loss"], signals, coefs


def run(task: Task, optimizer: str | O.OptSpec, seeds: Sequence[int],
        steps: int | None = None, learning_rate: float | None = None,
        delay: int = 0, tune_grid: Sequence[float] | None = None) -> Result:
  """Trains ``optimizer`` on ``task`` for every seed; see the module doc.

  Args:
    task: the task.
    optimizer: a registry name (``adamw``, ``ae_adamw-no_budget``,
      ``adamw@tuned``, ...) or an :class:`OptSpec`.
    seeds: the run seeds (vmapped).
    steps: step budget (default ``task.steps``), rounded down to a multiple
      of ``task.eval_every``.
    learning_rate: the (initial) learning rate; default the spec's
      ``default_lr``, or the tuned one for ``name@tuned``.
    delay: stale gradients by this many steps.
    tune_grid: the grid of :func:`tune` for ``name@tuned``.
  """
  spec = O.get(optimizer) if isinstance(optimizer, str) else optimizer
  every = task.eval_every
  steps = _round_steps(steps or task.steps, every)
  tuning = None
  if learning_rate is None and O.is_tuned(spec.name):
    learning_rate, tuning = tune(task, spec, steps=steps, grid=tune_grid,
                                 delay=delay)
  lr = spec.default_lr if learning_rate is None else float(learning_rate)
  seeds_arr = np.asarray(list(seeds), np.int32)
  if spec.windowed:
    return _run_windowed(task, spec, lr, seeds_arr, steps, delay, tuning)
  tx = spec.factory(lr, steps)
  init_one, chunk, evaluate = _builders(task, spec, tx, every, delay)

  def one(seed):
    carry = init_one(seed)
    m0 = evaluate(carry[0], carry[1])
    _, (recs, ms) = jax.lax.scan(chunk, carry, jnp.arange(steps // every))
    return recs, jnp.concatenate([m0[None], ms])

  start = time.perf_counter()
  recs, ms = jax.jit(jax.vmap(one))(jnp.asarray(seeds_arr))
  ms = np.asarray(jax.block_until_ready(ms), float)
  wall = time.perf_counter() - start
  loss, signals, coefs = _split_records(recs, len(seeds_arr))
  return Result(task.name, spec.name, lr, seeds_arr, steps, loss,
                np.arange(0, steps + 1, every), ms, signals, coefs, wall,
                tuning=tuning)


def _tox_optimizer(kind: str, bounds):
  from tensor_optix import AdaptiveOptimizer, SPSAOptimizer
  cls = {"spsa": SPSAOptimizer, "adaptive": AdaptiveOptimizer}[kind]
  return cls(param_bounds={"learning_rate": tuple(bounds)},
             log_params=["learning_rate"])


def _run_windowed(task, spec, lr, seeds, steps, delay, tuning) -> Result:
  why = O.tox_available()
  if why is not None:
    raise RuntimeError(f"{spec.name}: {why}; install the optional "
                       "'benchmarks' extra")
  from tensor_optix import EvalMetrics, HyperparamSet
  cfg = spec.windowed
  every = task.eval_every
  chunks_per_window = max(1, round(cfg["window"] / every))
  window = chunks_per_window * every
  steps = max(window, (steps // window) * window)
  tx = spec.factory(lr, steps)
  init_one, chunk, evaluate = _builders(task, spec, tx, every, delay)

  @jax.jit
  @jax.vmap
  def start(seed):
    carry = init_one(seed)
    return carry, evaluate(carry[0], carry[1]), task.eval_loss(carry[0])

  @jax.jit
  @jax.vmap
  def advance(carry, i0):
    carry, out = jax.lax.scan(chunk, carry, i0 + jnp.arange(chunks_per_window))
    return carry, out, task.eval_loss(carry[0])

  # One tensor-optix optimizer per seed, each with its own RNG stream.
  opts, rng_states, hps, hists = [], [], [], []
  for s in seeds:
    np.random.seed(int(s))
    random.seed(int(s))
    opts.append(_tox_optimizer(cfg["kind"], cfg["bounds"]))
    rng_states.append((np.random.get_state(), random.getstate()))
    hps.append(HyperparamSet(params={"learning_rate": lr}, episode_id=0))
    hists.append([])

  t0 = time.perf_counter()
  carry, m0, prev = start(jnp.asarray(seeds))
  prev = np.asarray(prev, float)
  all_recs, all_ms = [], [np.asarray(m0, float)[:, None]]
  for w in range(steps // window):
    carry, (recs, ms), cur = advance(carry, jnp.full(len(seeds),
                                                     w * chunks_per_window))
    cur = np.asarray(cur, float)
    all_recs.append(jax.tree.map(lambda x: np.asarray(x).reshape(
        len(seeds), -1), recs))
    all_ms.append(np.asarray(ms, float))
    new_lr = []
    for i in range(len(seeds)):
      with np.errstate(all="ignore"):
        score = float(np.log(prev[i] / cur[i]))
      if not math.isfinite(score):
        score = -10.0
      hists[i].append(EvalMetrics(primary_score=score,
                                  metrics={"loss": float(cur[i])},
                                  episode_id=w))
      np.random.set_state(rng_states[i][0])
      random.setstate(rng_states[i][1])
      hps[i] = opts[i].suggest(hps[i], hists[i])
      rng_states[i] = (np.random.get_state(), random.getstate())
      new_lr.append(float(hps[i].params["learning_rate"]))
    prev = cur
    params, state, past, k_data = carry
    hp = dict(state.hyperparams)
    hp["learning_rate"] = jnp.asarray(new_lr, hp["learning_rate"].dtype)
    carry = (params, state._replace(hyperparams=hp), past, k_data)
  wall = time.perf_counter() - t0
  recs = {k: np.concatenate([r[k] for r in all_recs], axis=1)
          for k in all_recs[0]}
  loss, signals, coefs = _split_records(recs, len(seeds))
  return Result(task.name, spec.name, lr, seeds, steps, loss,
                np.arange(0, steps + 1, every),
                np.concatenate(all_ms, axis=1), signals, coefs, wall,
                note=f"windowed: {window} steps per suggestion",
                tuning=tuning)


def _rank_key(task: Task, value: float) -> float:
  if not math.isfinite(value):
    return math.inf
  return -value if task.higher_is_better else value


def lr_sweep(task: Task, optimizer: str | O.OptSpec, grid: Sequence[float],
             seeds: Sequence[int], steps: int | None = None,
             delay: int = 0) -> np.ndarray:
  """Final metric for each initial learning rate of ``grid`` and seed:
  ``(len(grid), len(seeds))`` (the learning-rate-sensitivity plot)."""
  spec = O.get(optimizer) if isinstance(optimizer, str) else optimizer
  base = O.get(spec.name[:-len(O.TUNED)]) if O.is_tuned(spec.name) else spec
  return np.stack([
      M.final(run(task, base, seeds, steps, learning_rate=lr,
                  delay=delay).metric) for lr in grid])


def default_grid(spec: O.OptSpec, points_per_decade: int = 2,
                 decades: float = 2.0) -> np.ndarray:
  """A log grid of ±``decades`` around the spec's default learning rate."""
  n = int(2 * decades * points_per_decade) + 1
  return spec.default_lr * np.logspace(-decades, decades, n)


def tune(task: Task, optimizer: str | O.OptSpec, steps: int | None = None,
         grid: Sequence[float] | None = None, seed: int = 0,
         delay: int = 0) -> tuple[float, dict]:
  """The learning rate of ``grid`` with the best final metric on ``seed``
  (non-finite or diverged runs rank last); returns it and the table."""
  spec = O.get(optimizer) if isinstance(optimizer, str) else optimizer
  base = O.get(spec.name[:-len(O.TUNED)]) if O.is_tuned(spec.name) else spec
  grid = default_grid(base) if grid is None else np.asarray(grid, float)
  finals = lr_sweep(task, base, grid, [seed], steps, delay)[:, 0]
  best = min(range(len(grid)), key=lambda i: _rank_key(task, finals[i]))
  return float(grid[best]), {"grid": [float(g) for g in grid],
                             "final": [float(f) for f in finals],
                             "seed": seed}

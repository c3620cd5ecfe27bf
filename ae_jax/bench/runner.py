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

``eval_loss=True`` also records ``task.eval_loss`` (the held-out loss) at
every evaluation step, in ``Result.held_out_loss``.

**Start grids** (the robustness sweep): :func:`run_grid` trains one
optimizer from several starts (``spec.start_grid``) x several seeds. Where
the start may be traced (the optax peers: learning rates, ``estim_lr0``,
``alpha``) it is one jitted run vmapped over starts x seeds; where it may
not (the AE presets refuse a traced rate; the windowed peers) it falls back,
automatically, to one :func:`run` per start.

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

from ae_jax.bench import metrics as M
from ae_jax.bench import optimizers as O
from ae_jax.bench.tasks import Task

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
  held_out_loss: np.ndarray | None = None  # (S, E), with run(eval_loss=True)

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


def _held_out(task: Task, params, step):
  """``task.eval_loss`` (of the current drift phase, where the task has one)."""
  if task.eval_loss_at is None:
    return task.eval_loss(params)
  return task.eval_loss_at(params, step)


def _round_steps(steps: int, every: int) -> int:
  return max(every, (steps // every) * every)


def _builders(task: Task, spec: O.OptSpec, tx, every: int, delay: int,
              eval_loss: bool = False):
  """``init_one(seed) -> carry`` and ``chunk(carry, i) -> carry, (recs,
  metric)`` for one seed; shared by the scanned and the windowed runner.
  With ``eval_loss`` the metric is the pair ``(task.metric,
  task.eval_loss)``."""

  def evaluate(params, state, step=0):
    # Drift tasks measure the phase the parameters were last trained on.
    p = spec.eval_params(state, params) if spec.eval_params else params
    metric = (task.metric(p) if task.metric_at is None
              else task.metric_at(p, step))
    if eval_loss:
      return metric, _held_out(task, p, step)
    return metric

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
    return carry, (recs, evaluate(carry[0], carry[1], (i + 1) * every))

  return init_one, chunk, evaluate


def _split_records(recs, n_seeds):
  flat = {k: np.asarray(v).reshape(n_seeds, -1) for k, v in recs.items()}
  signals = {k[2:]: v for k, v in flat.items() if k.startswith("s:")}
  coefs = {k[2:]: v for k, v in flat.items() if k.startswith("c:")}
  return flat["loss"], signals, coefs


def _metric_pair(ms, eval_loss):
  """``(metric, held_out_loss or None)`` as float arrays."""
  if eval_loss:
    return np.asarray(ms[0], float), np.asarray(ms[1], float)
  return np.asarray(ms, float), None


def run(task: Task, optimizer: str | O.OptSpec, seeds: Sequence[int],
        steps: int | None = None, learning_rate: float | None = None,
        delay: int = 0, tune_grid: Sequence[float] | None = None,
        eval_loss: bool = False) -> Result:
  """Trains ``optimizer`` on ``task`` for every seed; see the module doc.

  Args:
    task: the task.
    optimizer: a registry name (``adamw``, ``ae_adamw-no_hypergradient``,
      ``adamw@tuned``, ...) or an :class:`OptSpec`.
    seeds: the run seeds (vmapped).
    steps: step budget (default ``task.steps``), rounded down to a multiple
      of ``task.eval_every``.
    learning_rate: the (initial) learning rate; default the spec's
      ``default_lr``, or the tuned one for ``name@tuned``.
    delay: stale gradients by this many steps.
    tune_grid: the grid of :func:`tune` for ``name@tuned``.
    eval_loss: also record ``task.eval_loss`` at every evaluation step
      (``Result.held_out_loss``).
  """
  spec = O.get(optimizer) if isinstance(optimizer, str) else optimizer
  spec = spec.for_task(task)
  every = task.eval_every
  steps = _round_steps(steps or task.steps, every)
  tuning = None
  if learning_rate is None and O.is_tuned(spec.name):
    learning_rate, tuning = tune(task, spec, steps=steps, grid=tune_grid,
                                 delay=delay)
  lr = spec.default_lr if learning_rate is None else float(learning_rate)
  seeds_arr = np.asarray(list(seeds), np.int32)
  if spec.windowed:
    return _run_windowed(task, spec, lr, seeds_arr, steps, delay, tuning,
                         eval_loss)
  tx = spec.factory(lr, steps)
  init_one, chunk, evaluate = _builders(task, spec, tx, every, delay,
                                        eval_loss)

  def one(seed):
    carry = init_one(seed)
    m0 = evaluate(carry[0], carry[1])
    _, (recs, ms) = jax.lax.scan(chunk, carry, jnp.arange(steps // every))
    return recs, jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]),
                              m0, ms)

  start = time.perf_counter()
  recs, ms = jax.jit(jax.vmap(one))(jnp.asarray(seeds_arr))
  ms, held = _metric_pair(jax.block_until_ready(ms), eval_loss)
  wall = time.perf_counter() - start
  loss, signals, coefs = _split_records(recs, len(seeds_arr))
  return Result(task.name, spec.name, lr, seeds_arr, steps, loss,
                np.arange(0, steps + 1, every), ms, signals, coefs, wall,
                tuning=tuning, held_out_loss=held)


def _tox_optimizer(kind: str, bounds):
  from tensor_optix import AdaptiveOptimizer, SPSAOptimizer
  cls = {"spsa": SPSAOptimizer, "adaptive": AdaptiveOptimizer}[kind]
  return cls(param_bounds={"learning_rate": tuple(bounds)},
             log_params=["learning_rate"])


def _run_windowed(task, spec, lr, seeds, steps, delay, tuning,
                  eval_loss=False) -> Result:
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
  init_one, chunk, evaluate = _builders(task, spec, tx, every, delay,
                                        eval_loss)

  @jax.jit
  @jax.vmap
  def start(seed):
    carry = init_one(seed)
    return carry, evaluate(carry[0], carry[1]), _held_out(task, carry[0], 0)

  @jax.jit
  @jax.vmap
  def advance(carry, i0):
    carry, out = jax.lax.scan(chunk, carry, i0 + jnp.arange(chunks_per_window))
    return carry, out, _held_out(task, carry[0],
                                 (i0 + chunks_per_window) * every)

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
  all_recs = []
  all_ms = [jax.tree.map(lambda m: np.asarray(m, float)[:, None], m0)]
  for w in range(steps // window):
    carry, (recs, ms), cur = advance(carry, jnp.full(len(seeds),
                                                     w * chunks_per_window))
    cur = np.asarray(cur, float)
    all_recs.append(jax.tree.map(lambda x: np.asarray(x).reshape(
        len(seeds), -1), recs))
    all_ms.append(jax.tree.map(lambda m: np.asarray(m, float), ms))
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
  ms, held = _metric_pair(jax.tree.map(
      lambda *m: np.concatenate(m, axis=1), *all_ms), eval_loss)
  return Result(task.name, spec.name, lr, seeds, steps, loss,
                np.arange(0, steps + 1, every), ms, signals, coefs, wall,
                note=f"windowed: {window} steps per suggestion",
                tuning=tuning, held_out_loss=held)


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


# ---- start grids (the robustness sweep) -------------------------------------


@dataclasses.dataclass
class GridResult:
  """One optimizer from several starts x seeds: leading axes (starts,
  seeds)."""

  task: str
  optimizer: str
  starts: np.ndarray            # (K,)
  seeds: np.ndarray             # (S,)
  steps: int
  eval_steps: np.ndarray        # (E,)
  metric: np.ndarray            # (K, S, E)
  held_out_loss: np.ndarray     # (K, S, E): task.eval_loss
  loss: np.ndarray              # (K, S, steps): the training loss
  wall_s: float
  mode: str                     # "vmapped" or "loop"
  note: str = ""


def _grid_vmapped(task, spec, starts, seeds, steps):
  every = task.eval_every

  def one(start, seed):
    # The transformation is built inside the trace: the start is a tracer.
    tx = spec.at_start(start, steps)
    init_one, chunk, evaluate = _builders(task, spec, tx, every, 0, True)
    carry = init_one(seed)
    m0 = evaluate(carry[0], carry[1])
    _, (recs, ms) = jax.lax.scan(chunk, carry, jnp.arange(steps // every))
    ms = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), m0, ms)
    return recs["loss"], ms

  grid = jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None))
  t0 = time.perf_counter()
  loss, (ms, held) = jax.jit(grid)(jnp.asarray(starts, jnp.float32),
                                   jnp.asarray(seeds))
  ms = np.asarray(jax.block_until_ready(ms), float)
  wall = time.perf_counter() - t0
  k, s = len(starts), len(seeds)
  return (ms, np.asarray(held, float),
          np.asarray(loss, float).reshape(k, s, -1), wall)


def run_grid(task: Task, optimizer: str | O.OptSpec, starts: Sequence[float],
             seeds: Sequence[int], steps: int | None = None,
             traced: bool | None = None) -> GridResult:
  """Trains ``optimizer`` from every start of ``starts`` (values of its start
  knob, ``spec.at_start``) for every seed; see the module doc.

  ``traced=None`` tries one jitted run vmapped over starts x seeds and
  falls back to one :func:`run` per start if the factory refuses a traced
  start (the AE presets) or the spec is windowed; ``True`` forces the
  vmapped path (errors propagate), ``False`` the loop.
  """
  spec = O.get(optimizer) if isinstance(optimizer, str) else optimizer
  spec = spec.for_task(task)
  every = task.eval_every
  steps = _round_steps(steps or task.steps, every)
  starts_arr = np.asarray(list(starts), float)
  seeds_arr = np.asarray(list(seeds), np.int32)
  note = ""
  if traced is not False and not spec.windowed:
    try:
      ms, held, loss, wall = _grid_vmapped(task, spec, starts_arr, seeds_arr,
                                           steps)
      return GridResult(task.name, spec.name, starts_arr, seeds_arr, steps,
                        np.arange(0, steps + 1, every), ms, held, loss, wall,
                        "vmapped")
    except Exception as e:  # pylint: disable=broad-except
      if traced:
        raise
      note = f"traced start refused ({type(e).__name__}: {str(e)[:120]})"
  elif spec.windowed:
    note = "windowed peer: one run per start"
  one_start = spec.start_spec()
  results = [run(task, one_start, seeds_arr, steps, learning_rate=float(v),
                 eval_loss=True) for v in starts_arr]
  steps = results[0].steps  # a windowed run rounds to whole windows
  return GridResult(
      task.name, spec.name, starts_arr, seeds_arr, steps,
      results[0].eval_steps, np.stack([r.metric for r in results]),
      np.stack([r.held_out_loss for r in results]),
      np.stack([r.loss for r in results]),
      float(sum(r.wall_s for r in results)), "loop", note)

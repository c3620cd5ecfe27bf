"""Rounds: one jitted round, the host loop over rounds, its history and plot."""

from __future__ import annotations

import time
import warnings
from typing import Callable, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ae_jax.swarm._config import Family, SwarmConfig
from ae_jax.swarm._consensus import consensus, member_coefficients, rejuvenate
from ae_jax.swarm._population import Data, Population, pop_size
from ae_jax.swarm._selection import allocate_budgets, swarm_weights
from ae_jax.swarm._sharding import auto_mesh, shard_population
from ae_jax.swarm._training import scores, train


class RoundLog(NamedTuple):
  """What one round records (all ``[M]``; ``coefficients`` maps name -> [M]
  values after the consensus)."""

  scores: chex.Array
  weights: chex.Array
  budgets: chex.Array
  next_budgets: chex.Array
  diverged: chex.Array
  train_loss: chex.Array
  coefficients: dict
  means: dict


def make_round(config: SwarmConfig, family: Family, loss_fn: Callable, *,
               mesh: jax.sharding.Mesh | None = None, axis: str = "pop"
               ) -> Callable:
  """One jitted round ``round(pop, budgets, key, data) -> (pop, next
  budgets, RoundLog)``: train, score, weights, consensus, dither, budgets.

  With ``mesh`` (its axes are used as ``Auto``, see :func:`auto_mesh`), the
  population stays sharded over its ``axis`` (see :func:`shard_population`). The function compiles once: budgets are traced.
  """
  sharding = (None if mesh is None else jax.sharding.NamedSharding(
      auto_mesh(mesh), jax.sharding.PartitionSpec(axis)))

  def round_fn(pop: Population, budgets, key, data: Data):
    pop, train_loss = train(pop, budgets, data, family=family,
                            loss_fn=loss_fn, batch_size=config.batch_size,
                            mode=config.mode, chunk=config.chunk)
    s = scores(pop, data, loss_fn)
    w, diverged = swarm_weights(s, config.beta, config.selection)
    opt_state, means = consensus(pop.opt_state, w, config.kappa,
                                 family.coefficients, config.consensus)
    pop = pop._replace(opt_state=opt_state)
    if config.dither > 0:
      pop = rejuvenate(pop, s, config.dither, key, family.step_size)
    next_budgets = allocate_budgets(w, config.total_steps, config.min_steps)
    if sharding is not None:
      pop = jax.lax.with_sharding_constraint(pop, sharding)
    log = RoundLog(scores=s, weights=w, budgets=jnp.asarray(budgets),
                   next_budgets=next_budgets, diverged=diverged,
                   train_loss=train_loss,
                   coefficients=member_coefficients(pop.opt_state),
                   means=means)
    return pop, next_budgets, log

  return jax.jit(round_fn)


class History(NamedTuple):
  """Per-round record of a run (numpy; rounds on axis 0, members on axis 1).

  Attributes:
    scores: ``[R, M]`` validation scores after each round's training.
    weights: ``[R, M]`` selection weights.
    budgets: ``[R, M]`` steps each member trained in the round.
    diverged: ``[R, M]`` non-finite scores.
    train_loss: ``[R, M]`` mean training loss over the round's steps.
    coefficients: ``name -> [R, M]`` values after the round's consensus.
    seconds: ``[R]`` wall time of each round (host-measured).
    events: human-readable log lines (diverged members).
  """

  scores: np.ndarray
  weights: np.ndarray
  budgets: np.ndarray
  diverged: np.ndarray
  train_loss: np.ndarray
  coefficients: dict
  seconds: np.ndarray
  events: list

  @property
  def best(self) -> np.ndarray:
    """``[R]`` best (lowest) finite score per round."""
    return np.nanmin(np.where(np.isfinite(self.scores), self.scores, np.nan),
                     axis=1)

  @property
  def mean(self) -> np.ndarray:
    """``[R]`` mean finite score per round."""
    return np.nanmean(np.where(np.isfinite(self.scores), self.scores, np.nan),
                      axis=1)

  def coefficient_mean(self) -> dict[str, np.ndarray]:
    """``name -> [R]`` mean over members."""
    return {n: np.nanmean(v, axis=1) for n, v in self.coefficients.items()}

  def coefficient_std(self) -> dict[str, np.ndarray]:
    """``name -> [R]`` spread (std) over members."""
    return {n: np.nanstd(v, axis=1) for n, v in self.coefficients.items()}

  def table(self) -> str:
    """One line per round: best, mean, weights, budgets."""
    lines = [f"{'round':>5} {'best':>10} {'mean':>10}  weights / budgets"]
    for r in range(self.scores.shape[0]):
      w = ",".join(f"{x:.2f}" for x in self.weights[r])
      b = ",".join(str(int(x)) for x in self.budgets[r])
      lines.append(f"{r + 1:>5} {self.best[r]:>10.5f} {self.mean[r]:>10.5f}  "
                   f"w=[{w}] B=[{b}]")
    return "\n".join(lines)


def initial_budgets(config: SwarmConfig) -> jax.Array:
  """Equal first-round budgets (:func:`allocate_budgets` of equal weights)."""
  return allocate_budgets(jnp.ones([config.pop_size]), config.total_steps,
                          config.min_steps)


def run(config: SwarmConfig, family: Family, loss_fn: Callable,
        pop: Population, data: Data, key: chex.PRNGKey, *,
        budgets=None, mesh: jax.sharding.Mesh | None = None,
        axis: str = "pop", progress: bool = True,
        round_fn: Callable | None = None) -> tuple[Population, History]:
  """Runs ``config.rounds`` rounds and returns the population and its
  :class:`History`.

  Each round is one call of the jitted :func:`make_round` (compiled once);
  between rounds the host reads the round's log, warns about diverged
  members and advances the progress bar.

  Args:
    config: the swarm configuration.
    family: the members' optimizer family.
    loss_fn: ``loss_fn(params, x, y) -> scalar``.
    pop: the population (from :func:`init_population`).
    data: training and validation arrays.
    key: PRNG key of the rejuvenation dither (round r uses ``fold_in(key,
      r)``).
    budgets: first-round budgets (default: equal, :func:`initial_budgets`).
    mesh: shard the population over ``mesh``'s ``axis``
      (:func:`shard_population`); the data are replicated.
    axis: the population's mesh axis.
    progress: a ``tqdm.auto`` bar over the rounds.
    round_fn: a prebuilt :func:`make_round` (reuse its compilation).

  Raises:
    ValueError: if the population size is not ``config.pop_size``.
  """
  if pop_size(pop) != config.pop_size:
    raise ValueError(f"run: the population has {pop_size(pop)} members, "
                     f"config.pop_size is {config.pop_size}")
  if round_fn is None:
    round_fn = make_round(config, family, loss_fn, mesh=mesh, axis=axis)
  if mesh is not None:
    pop = shard_population(pop, mesh, axis)
    data = jax.device_put(data, jax.sharding.NamedSharding(
        auto_mesh(mesh), jax.sharding.PartitionSpec()))
  if budgets is None:
    budgets = initial_budgets(config)
  budgets = jnp.asarray(budgets, jnp.int32)
  if budgets.shape != (config.pop_size,) or bool(jnp.any(budgets < 0)):
    raise ValueError(f"run: budgets must be {config.pop_size} non-negative "
                     f"integers, got {budgets}")
  bar = None
  if progress:
    try:
      from tqdm.auto import tqdm
      bar = tqdm(total=config.rounds, desc="AE-Swarm", unit="round")
    except ImportError:  # tqdm comes with the bench extra; a bar is cosmetic
      pass
  logs, seconds, events = [], [], []
  for r in range(config.rounds):
    start = time.perf_counter()
    pop, next_budgets, log = round_fn(pop, budgets,
                                      jax.random.fold_in(key, r), data)
    log = jax.device_get(log)
    seconds.append(time.perf_counter() - start)
    if log.diverged.any():
      ids = [int(i) for i in np.nonzero(log.diverged)[0]]
      message = (f"AE-Swarm round {r + 1}: member(s) {ids} diverged (score "
                 f"{[float(log.scores[i]) for i in ids]}); weight 0, "
                 f"excluded from the consensus, floor budget next round")
      events.append(message)
      warnings.warn(message, RuntimeWarning, stacklevel=2)
    logs.append(log)
    budgets = next_budgets
    if bar is not None:
      finite = log.scores[np.isfinite(log.scores)]
      bar.set_postfix(best=f"{finite.min():.4g}" if finite.size else "nan",
                      mean=f"{finite.mean():.4g}" if finite.size else "nan")
      bar.update(1)
  if bar is not None:
    bar.close()
  stack = lambda field: np.stack([getattr(l, field) for l in logs])
  names = logs[0].coefficients.keys()
  history = History(
      scores=stack("scores"), weights=stack("weights"),
      budgets=stack("budgets"), diverged=stack("diverged"),
      train_loss=stack("train_loss"),
      coefficients={n: np.stack([l.coefficients[n] for l in logs])
                    for n in names},
      seconds=np.asarray(seconds), events=events)
  return pop, history


def plot_history(history: History, coefficients: Sequence[str] = (
    "learning_rate", "b1", "b2", "eps"), path=None):
  """Scores, weights, budgets and the coefficients' mean ± std per round
  (needs matplotlib: ``pip install ae-jax[bench]``).

  Returns:
    The matplotlib figure (also saved to ``path`` when given).
  """
  import matplotlib.pyplot as plt

  names = [n for n in coefficients if n in history.coefficients]
  ncols = max(3, len(names))
  fig, axes = plt.subplots(2, ncols, figsize=(3.6 * ncols, 6.4),
                           squeeze=False)
  rounds = np.arange(1, history.scores.shape[0] + 1)
  ax = axes[0, 0]
  ax.plot(rounds, history.scores, color="0.7", lw=0.8)
  ax.plot(rounds, history.best, "k-o", label="best")
  ax.plot(rounds, history.mean, "b--", label="mean")
  ax.set(title="validation score", xlabel="round", yscale="log")
  ax.legend()
  axes[0, 1].stackplot(rounds, history.weights.T)
  axes[0, 1].set(title="weights w", xlabel="round", ylim=(0, 1))
  axes[0, 2].plot(rounds, history.budgets, "-o", ms=3)
  axes[0, 2].set(title="budgets B_i (steps)", xlabel="round")
  for ax in axes[0, 3:]:
    ax.axis("off")
  means, stds = history.coefficient_mean(), history.coefficient_std()
  for ax, name in zip(axes[1], names):
    ax.plot(rounds, history.coefficients[name], color="0.7", lw=0.8)
    ax.errorbar(rounds, means[name], yerr=stds[name], fmt="k-o", ms=3,
                capsize=2)
    ax.set(title=f"{name}: mean ± std", xlabel="round")
    if name in ("learning_rate", "eps", "weight_decay") and np.all(
        history.coefficients[name] > 0):
      ax.set_yscale("log")
  for ax in axes[1, len(names):]:
    ax.axis("off")
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig

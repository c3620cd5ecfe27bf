"""AE-Swarm and AEEnsemble: populations of AE trajectories on a leading axis.

M trajectories (parameters, optimizer state, per-member priors) are stacked
on a leading *population* axis and trained in rounds (theory, "AE-Swarm"):

1. member i trains :math:`B_i` steps;
2. its score :math:`s_i` is the mean loss on the validation set (lower is
   better);
3. soft selection: :math:`w = \\mathrm{softmax}(-\\beta u)` of scale-free
   selection scores ``u`` (by default the member's rank over [0, 1],
   :func:`selection_scores`; the theory's raw ``s - min s`` is
   ``selection="raw"``); a member whose score is not finite, one that
   diverged, gets weight 0;
4. budgets: :math:`B_i' = \\max(B_{\\min}, \\mathrm{round}(w_i B_{\\rm tot}))`
   with :math:`\\sum_i B_i' = B_{\\rm tot}` exactly (:func:`allocate_budgets`);
5. consensus of the coefficients only (:func:`consensus`):

   .. math::

     \\bar c = \\sum_i w_i c^{(i)},\\qquad
     c^{(i)} \\leftarrow (1-\\kappa)\\, c^{(i)} + \\kappa\\, \\bar c,
     \\qquad c \\in (\\log\\alpha, \\beta_1, \\beta_2, \\log\\epsilon,
     \\log\\lambda);

6. optionally, a rejuvenation dither of the worst member's parameters,
   :math:`\\theta \\mathrel{+}= \\sigma_d\\, \\alpha_{\\rm worst}\\,
   \\mathcal N(0, I)` (:func:`rejuvenate`).

Parameters are never copied between members (that would be PBT). A round
is one jitted function; its training costs :math:`B_{\\rm tot}` member steps
in the ``"chunked"`` mode (members run one by one, or in vmapped chunks of
members with similar budgets), and :math:`M \\max_i B_i` in the lock-step
``"vmap"`` mode, which is exact (and fastest) when the budgets are equal.

Consensus coordinates are the theory's: log for the log-parametrised
coefficients (α, ε, λ), and the value itself, linearly, for β1 and β2 (not
the controller's logit ``z``). Coefficients pinned at one value (λ = 0,
σ = 0) are left alone.

:func:`ensemble` is the reference ``AEEnsemble``: a per-step consensus with
weights :math:`\\mathrm{softmax}(-\\beta (L - \\min L))`.

Example::

  from ae_jax import swarm
  cfg = swarm.SwarmConfig(pop_size=4, rounds=6, total_steps=4000,
                          min_steps=400, beta=5.0, kappa=0.05)
  family = swarm.ae_adamw_family(learning_rate=3e-4, weight_decay=1e-4)
  priors = swarm.reference_priors(4, learning_rate=3e-4)
  pop = swarm.init_population(key, init_params, family, priors)
  data = swarm.Data(x_train, y_train, x_val, y_val)
  pop, history = swarm.run(cfg, family, loss_fn, pop, data, key)
  swarm.plot_history(history)
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax import presets
from ae_jax.adapt import AdaptState, reseed, write_hyperparams
from ae_jax.coefficient import Coefficient

# The theory's consensus coefficients (α, β1, β2, ε, λ).
CONSENSUS = ("learning_rate", "b1", "b2", "eps", "weight_decay")
MODES = ("vmap", "chunked")


# ---------------------------------------------------------------------------
# Configuration, families of members, priors.


@dataclasses.dataclass(frozen=True)
class SwarmConfig:
  """Configuration of an AE-Swarm run (validated at construction).

  Attributes:
    pop_size: M, the number of trajectories.
    rounds: R, the number of rounds.
    total_steps: :math:`B_{\\rm tot}`, member steps per round, all members
      together.
    min_steps: :math:`B_{\\min}`, the floor of a member's budget
      (``pop_size * min_steps <= total_steps``).
    beta: β, the selection temperature of ``softmax(-β u)`` (0: uniform).
    selection: how scores become ``u`` (:func:`selection_scores`):
      ``"rank"`` (default, scale-free), ``"standardized"`` or ``"raw"``
      (the theory's ``s - min s``, in the loss's units).
    kappa: κ ∈ [0, 1], the consensus step (0: no consensus).
    dither: σ_d ≥ 0 of the rejuvenation dither (0: off).
    batch_size: training minibatch size.
    mode: ``"vmap"`` (lock-step over all members; unequal budgets are
      masked, costing M·max B) or ``"chunked"`` (members sorted by budget,
      run in vmapped chunks of ``chunk``; ``chunk=1`` runs them one by one
      and costs exactly ``total_steps`` steps).
    chunk: members per chunk in ``"chunked"`` mode; must divide ``pop_size``.
    consensus: names of the coefficients the consensus acts on.
  """

  pop_size: int = 4
  rounds: int = 10
  total_steps: int = 4000
  min_steps: int = 400
  beta: float = 5.0
  selection: str = "rank"
  kappa: float = 0.05
  dither: float = 0.0
  batch_size: int = 128
  mode: str = "vmap"
  chunk: int = 1
  consensus: tuple[str, ...] = CONSENSUS

  def __post_init__(self):
    for name in ("pop_size", "rounds", "total_steps", "batch_size", "chunk"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"SwarmConfig.{name} must be a positive integer, "
                         f"got {value!r}")
    if not isinstance(self.min_steps, (int, np.integer)) or self.min_steps < 0:
      raise ValueError(f"SwarmConfig.min_steps must be an integer >= 0, got "
                       f"{self.min_steps!r}")
    if self.pop_size * self.min_steps > self.total_steps:
      raise ValueError(
          f"SwarmConfig.min_steps: pop_size * min_steps = "
          f"{self.pop_size * self.min_steps} exceeds total_steps = "
          f"{self.total_steps}; the floors could not all be met")
    if not (math.isfinite(self.beta) and self.beta >= 0):
      raise ValueError(f"SwarmConfig.beta must be finite and >= 0, got "
                       f"{self.beta}")
    if self.selection not in SELECTIONS:
      raise ValueError(f"SwarmConfig.selection must be one of {SELECTIONS}, "
                       f"got {self.selection!r}")
    if not 0.0 <= self.kappa <= 1.0:
      raise ValueError(f"SwarmConfig.kappa must lie in [0, 1], got "
                       f"{self.kappa}")
    if not (math.isfinite(self.dither) and self.dither >= 0):
      raise ValueError(f"SwarmConfig.dither must be finite and >= 0, got "
                       f"{self.dither}")
    if self.mode not in MODES:
      raise ValueError(f"SwarmConfig.mode must be one of {MODES}, got "
                       f"{self.mode!r}")
    if self.pop_size % self.chunk:
      raise ValueError(f"SwarmConfig.chunk={self.chunk} must divide "
                       f"pop_size={self.pop_size}")
    if isinstance(self.consensus, str):
      raise ValueError("SwarmConfig.consensus must be a tuple of coefficient "
                       "names, not a string")
    object.__setattr__(self, "consensus", tuple(self.consensus))


class Family(NamedTuple):
  """How a member's optimizer is built from its prior.

  Attributes:
    make: ``make(prior) -> optax transformation``; called inside ``vmap`` with
      the member's slice of the stacked priors (traced), so everything that
      varies across members must come from ``prior``.
    coefficients: the concrete :class:`Coefficient` specs the optimizer
      adapts (Ω and coordinates, the same for every member); empty for a
      non-AE optimizer (then consensus and the coefficient log do nothing).
    step_size: the coefficient that scales the rejuvenation dither.
  """

  make: Callable[[Any], optax.GradientTransformation]
  coefficients: tuple[Coefficient, ...] = ()
  step_size: str = "learning_rate"


def ae_adamw_family(learning_rate: float = 3e-4, b1: float = 0.9,
                    b2: float = 0.999, eps: float = 1e-8,
                    weight_decay: float = 1e-4, *,
                    learning_rate_bounds: tuple[float, float] | None = None,
                    ) -> Family:
  """AE-AdamW members (:func:`ae_jax.ae_adamw`) with per-member priors.

  A prior is a dict of scalars (stacked over members by
  :func:`reference_priors`):

  * ``learning_rate``: the member's initial α (also its leak anchor);
  * ``progress``: multiplier of the canonical progress gain :math:`W_p` of
    α's drive row;
  * ``variance``: multiplier of its variance gain :math:`W_v`.

  Args:
    learning_rate: the base α; Ω of α defaults to ``[1e-3 α, 10 α]`` so it
      holds every member's initial α when they spread around the base.
    b1: β1 of every member.
    b2: β2 of every member.
    eps: ε of every member.
    weight_decay: λ of every member (0 pins it at 0).
    learning_rate_bounds: Ω of α (explicit, since the members' α is traced).
  """
  if not learning_rate > 0:
    raise ValueError(f"ae_adamw_family: learning_rate must be positive, got "
                     f"{learning_rate}")
  bounds = tuple(learning_rate_bounds or (1e-3 * learning_rate,
                                          10.0 * learning_rate))
  # The prior is each member's initial α: no warm start below it.
  specs = tuple(presets.adamw_coefficients(
      learning_rate, b1, b2, eps, weight_decay, learning_rate_bounds=bounds,
      warm_start=1.0))
  names = [c.name for c in specs]
  base_row = presets.CANONICAL_DRIVE["learning_rate"]

  def make(prior):
    row = base_row._replace(
        progress=base_row.progress * prior["progress"],
        variance=base_row.variance * prior["variance"])
    # The swarm's diversity is in these drive rows (the theory's AE-AdamW
    # members); the self-tuning step-size law would pull every member to the
    # same α, so the family keeps the theory's chain.
    chain = presets.canonical_laws(names, gains={"learning_rate": row},
                                   hypergradient=False, budget=True,
                                   resonance=True, coupling=True)
    return presets.ae_adamw(prior["learning_rate"], b1, b2, eps,
                            weight_decay, learning_rate_bounds=bounds,
                            warm_start=1.0, laws_chain=chain)

  return Family(make=make, coefficients=specs)


def self_tuning_family(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                       weight_decay: float = 1e-4, *,
                       learning_rate_bounds: tuple[float, float] = (1e-7, 10.0),
                       weight_decay_bounds: tuple[float, float] = (1e-7, 1.0),
                       ) -> Family:
  """AE-AdamW members with the canonical self-tuning chain
  (:func:`ae_jax.ae_adamw`'s default laws) and per-member priors.

  A prior is a dict of scalars per member: ``learning_rate`` (required,
  the member's initial α; no warm start below it) and, optionally, ``b1``
  and ``weight_decay`` (else the arguments here). The canonical chain moves
  α only; β1 and λ stay where the prior and the consensus put them. Ω is
  the same for every member and wide enough for a population spread over
  decades.

  Args:
    b1: β1 of members without a ``b1`` prior.
    b2: β2 of every member.
    eps: ε of every member.
    weight_decay: λ of members without a ``weight_decay`` prior (> 0).
    learning_rate_bounds: Ω of α.
    weight_decay_bounds: Ω of λ.
  """
  if not weight_decay > 0:
    raise ValueError(f"self_tuning_family: weight_decay must be positive, "
                     f"got {weight_decay}")
  lo, hi = learning_rate_bounds
  specs = tuple(presets.adamw_coefficients(
      math.sqrt(lo * hi), b1, b2, eps, weight_decay,
      learning_rate_bounds=learning_rate_bounds,
      weight_decay_bounds=weight_decay_bounds, warm_start=1.0))

  def make(prior):
    return presets.ae_adamw(
        prior["learning_rate"], prior.get("b1", b1), b2, eps,
        prior.get("weight_decay", weight_decay),
        learning_rate_bounds=learning_rate_bounds,
        weight_decay_bounds=weight_decay_bounds, warm_start=1.0)

  return Family(make=make, coefficients=specs)


def adamw_family(weight_decay: float = 1e-4, b1: float = 0.9,
                 b2: float = 0.999, eps: float = 1e-8) -> Family:
  """Plain ``optax.adamw`` members (a baseline), α from ``prior['learning_rate']``."""

  def make(prior):
    return optax.adamw(prior["learning_rate"], b1=b1, b2=b2, eps=eps,
                       weight_decay=weight_decay)

  return Family(make=make)


def reference_priors(pop_size: int, learning_rate: float = 3e-4
                     ) -> dict[str, jax.Array]:
  """The reference example's diversity, mapped onto AE-AdamW.

  The reference scales the effective-step target γ* by ``0.7 + 0.2 k`` and
  the progress gain k_p by ``0.8 + 0.1 k`` for members k = 0..3. The Adam
  presets have no gauge (AE-8), so no γ*: its multiplier goes to the
  member's initial (and anchor) learning rate instead, and k_p's to
  :math:`W_p` of α's drive row. For M ≠ 4 members, k runs evenly over
  [0, 3], so the spread stays the reference's.
  """
  if pop_size < 1:
    raise ValueError(f"pop_size must be >= 1, got {pop_size}")
  k = (jnp.linspace(0.0, 3.0, pop_size) if pop_size > 1
       else jnp.zeros([1]))
  return {"learning_rate": learning_rate * (0.7 + 0.2 * k),
          "progress": 0.8 + 0.1 * k,
          "variance": jnp.ones_like(k)}


# ---------------------------------------------------------------------------
# Population and data.


class Population(NamedTuple):
  """M members stacked on the leading axis of every leaf.

  Attributes:
    params: the members' parameters.
    opt_state: their optimizer states.
    prior: their priors (the argument of ``Family.make``).
    key: their data keys: member i's minibatch at its step t is drawn from
      ``fold_in(key[i], t)``, so its data order depends only on its key and
      its own step count, not on the budgets.
    steps: steps each member has taken.
  """

  params: Any
  opt_state: Any
  prior: Any
  key: chex.PRNGKey
  steps: chex.Array


class Data(NamedTuple):
  """Training and validation arrays (shared by every member)."""

  x_train: chex.Array
  y_train: chex.Array
  x_val: chex.Array
  y_val: chex.Array


def pop_size(pop: Population) -> int:
  """M, the number of members."""
  return int(jnp.shape(pop.steps)[0])


def member(pop: Population, i) -> Population:
  """Member ``i`` alone (leaves without the population axis)."""
  return jax.tree.map(lambda a: a[i], pop)


def init_population(key: chex.PRNGKey, init_params: Callable[[Any], Any],
                    family: Family, priors: Any) -> Population:
  """M members from one key.

  Member i gets its own parameter key, data key and optimizer key (the AE
  noise and sampled statistics, see :func:`ae_jax.reseed`), and the i-th
  slice of ``priors``.

  Args:
    key: the PRNG key of the whole population.
    init_params: ``init_params(key) -> params`` of one member.
    family: builds each member's optimizer from its prior.
    priors: a pytree whose leaves have a leading axis of size M.

  Raises:
    ValueError: if the priors' leading axes disagree or a prior lies outside
      Ω of the family's coefficients.
  """
  leaves = jax.tree.leaves(priors)
  sizes = {int(jnp.shape(x)[0]) if jnp.ndim(x) else None for x in leaves}
  if not leaves or len(sizes) != 1 or None in sizes:
    raise ValueError(f"init_population: priors must be a non-empty pytree of "
                     f"arrays with one leading population axis, got leading "
                     f"sizes {sizes}")
  size = sizes.pop()
  for c in family.coefficients:
    if isinstance(priors, Mapping) and c.name in priors:
      values = np.asarray(priors[c.name])
      if not np.all((values >= c.lower) & (values <= c.upper)):
        raise ValueError(f"init_population: prior {c.name!r} = {values} "
                         f"lies outside Ω = [{c.lower}, {c.upper}]")
  k_params, k_data, k_opt = jax.random.split(key, 3)
  params = jax.vmap(init_params)(jax.random.split(k_params, size))

  def init_member(p, prior, k):
    return reseed(family.make(prior).init(p), k)

  opt_state = jax.vmap(init_member)(params, priors,
                                    jax.random.split(k_opt, size))
  return Population(params=params, opt_state=opt_state, prior=priors,
                    key=jax.random.split(k_data, size),
                    steps=jnp.zeros([size], jnp.int32))


# ---------------------------------------------------------------------------
# Training members.


def member_runner(family: Family, loss_fn: Callable, batch_size: int
                  ) -> Callable:
  """``run(member, data, n_steps) -> (member, mean train loss)`` for ONE member.

  ``n_steps`` may be traced: the loop is a ``lax.fori_loop`` with a dynamic
  trip count, so one compilation serves every budget. Under ``vmap`` with a
  batched ``n_steps`` the loop runs ``max n_steps`` iterations and masks the
  finished members (JAX's batched while loop).
  """

  def run(m: Population, data: Data, n_steps):
    tx = optax.with_extra_args_support(family.make(m.prior))
    n_train = data.x_train.shape[0]

    def body(i, carry):
      params, opt_state, total = carry
      idx = jax.random.randint(jax.random.fold_in(m.key, m.steps + i),
                               (batch_size,), 0, n_train)
      loss, grads = jax.value_and_grad(loss_fn)(params, data.x_train[idx],
                                                data.y_train[idx])
      updates, opt_state = tx.update(grads, opt_state, params, value=loss)
      return optax.apply_updates(params, updates), opt_state, total + loss

    zero = jnp.zeros([], jnp.float32)
    params, opt_state, total = jax.lax.fori_loop(
        0, n_steps, body, (m.params, m.opt_state, zero))
    n_steps = jnp.asarray(n_steps, jnp.int32)
    mean_loss = jnp.where(n_steps > 0, total / jnp.maximum(n_steps, 1),
                          jnp.nan)
    return m._replace(params=params, opt_state=opt_state,
                      steps=m.steps + n_steps), mean_loss

  return run


def train(pop: Population, budgets: chex.Array, data: Data, *,
          family: Family, loss_fn: Callable, batch_size: int,
          mode: str = "chunked", chunk: int = 1
          ) -> tuple[Population, chex.Array]:
  """Member i trains ``budgets[i]`` steps; returns the population and each
  member's mean training loss over its steps (NaN for a budget of 0).

  ``mode="vmap"``: all members in lock-step; equal budgets run unmasked
  (``lax.cond`` picks the branch at run time), unequal ones cost
  ``M * max(budgets)`` member steps. ``mode="chunked"``: members sorted by
  budget, ``chunk`` at a time (vmapped within a chunk, a ``lax.scan`` over
  chunks); cost ``Σ_chunks chunk * max(budget in chunk)``, exactly
  ``Σ budgets`` for ``chunk=1``. Jittable; the budgets may be traced.
  """
  run = member_runner(family, loss_fn, batch_size)
  budgets = jnp.asarray(budgets, jnp.int32)
  size = budgets.shape[0]
  if mode == "vmap":
    def lock(_):
      return jax.vmap(run, in_axes=(0, None, None))(pop, data, budgets[0])

    def masked(_):
      return jax.vmap(run, in_axes=(0, None, 0))(pop, data, budgets)

    return jax.lax.cond(jnp.all(budgets == budgets[0]), lock, masked, None)
  if mode != "chunked":
    raise ValueError(f"train: mode must be one of {MODES}, got {mode!r}")
  if size % chunk:
    raise ValueError(f"train: chunk={chunk} must divide the population "
                     f"size {size}")
  order = jnp.argsort(budgets).reshape(size // chunk, chunk)

  def one_chunk(carry, idx):
    p, losses = carry
    if chunk == 1:
      i = idx[0]
      sub, loss = run(member(p, i), data, budgets[i])
      p = jax.tree.map(lambda a, b: a.at[i].set(b), p, sub)
      return (p, losses.at[i].set(loss)), None
    sub = jax.tree.map(lambda a: a[idx], p)
    sub, loss = jax.vmap(run, in_axes=(0, None, 0))(sub, data, budgets[idx])
    p = jax.tree.map(lambda a, b: a.at[idx].set(b), p, sub)
    return (p, losses.at[idx].set(loss)), None

  losses = jnp.zeros([size], jnp.float32)
  (pop, losses), _ = jax.lax.scan(one_chunk, (pop, losses), order)
  return pop, losses


def scores(pop: Population, data: Data, loss_fn: Callable) -> chex.Array:
  """Each member's mean loss on the whole validation set (lower is better)."""
  return jax.vmap(lambda p: loss_fn(p, data.x_val, data.y_val))(pop.params)


# ---------------------------------------------------------------------------
# Selection, budgets, consensus, rejuvenation.


SELECTIONS = ("rank", "standardized", "raw")


def selection_scores(scores_: chex.Array, selection: str = "rank"
                     ) -> chex.Array:
  """Scores mapped to a scale-free ``u ≥ 0`` (0 for the best member), so
  that β of :func:`swarm_weights` means the same at any loss scale.

  * ``"rank"`` (default): :math:`u_i = r_i / (M_f - 1)`, the member's rank
    among the :math:`M_f` finite scores over ``[0, 1]`` (fitness shaping, as
    in evolution strategies): invariant to any increasing transform of the
    loss; ties share their mean rank.
  * ``"standardized"``: :math:`u_i = (s_i - \\min s) / \\mathrm{std}(s)`
    over the finite scores (0 for all when they are equal): invariant to
    shift and scale.
  * ``"raw"``: the theory's :math:`s_i - \\min s`, in the loss's units
    (β = 5 and scores differing by 1e-4 give uniform weights).

  Non-finite scores map to +inf.
  """
  if selection not in SELECTIONS:
    raise ValueError(f"selection must be one of {SELECTIONS}, got "
                     f"{selection!r}")
  s = jnp.asarray(scores_)
  finite = jnp.isfinite(s)
  any_finite = finite.any()
  best = jnp.where(any_finite, jnp.min(jnp.where(finite, s, jnp.inf)), 0.0)
  gap = jnp.where(finite, s - best, 0.0)
  if selection == "raw":
    u = gap
  elif selection == "standardized":
    n = jnp.maximum(jnp.sum(finite), 1)
    mean = jnp.sum(gap) / n
    var = jnp.sum(jnp.where(finite, (gap - mean) ** 2, 0.0)) / n
    std = jnp.sqrt(var)
    u = jnp.where(std > 0, gap / jnp.where(std > 0, std, 1.0), 0.0)
  else:
    # Mean rank among the finite scores: below + half the other ties.
    fi = finite[:, None] & finite[None, :]
    below = jnp.sum(fi & (gap[None, :] < gap[:, None]), axis=1)
    ties = jnp.sum(fi & (gap[None, :] == gap[:, None]), axis=1) - 1
    rank = below + 0.5 * ties
    n = jnp.sum(finite)
    u = rank / jnp.maximum(n - 1, 1)
  return jnp.where(finite, u, jnp.inf)


def swarm_weights(scores_: chex.Array, beta, selection: str = "raw"
                  ) -> tuple[chex.Array, chex.Array]:
  """Soft selection :math:`w = \\mathrm{softmax}(-\\beta u)` of the
  selection scores ``u`` (:func:`selection_scores`; ``"raw"``:
  :math:`u = s - \\min s`, the theory's form).

  A non-finite score (a diverged member) gets weight exactly 0 and is
  reported in the returned mask; the others share the weight. When every
  score is non-finite all weights are 0 (:func:`allocate_budgets` then splits
  evenly and :func:`consensus` does nothing).

  Returns:
    ``(weights, diverged)``, both of shape ``[M]``.
  """
  finite = jnp.isfinite(jnp.asarray(scores_))
  u = selection_scores(scores_, selection)
  logits = jnp.where(finite, -beta * jnp.where(finite, u, 0.0), -jnp.inf)
  safe = jnp.where(finite.any(), logits, 0.0)
  w = jnp.where(finite, jax.nn.softmax(safe), 0.0)
  return w, ~finite


def allocate_budgets(weights: chex.Array, total: int, floor: int
                     ) -> chex.Array:
  """Next budgets :math:`B_i = \\max(B_{\\min}, \\mathrm{round}(w_i B))`,
  summing to ``total`` exactly.

  Every member first gets the floor; the rest, ``total - M * floor``, is
  shared in proportion to each member's excess :math:`(w_i B - B_{\\min})_+`
  by largest remainders. Where :math:`\\max(B_{\\min}, \\mathrm{round}(w_i B))`
  already sums to ``total`` this is exactly it; otherwise what the floors
  take is taken from the members above the floor in proportion to their
  excess (the reference instead subtracts it all from the lowest-weight
  member, which can drive that member below the floor, even negative).
  Weights that sum to 0 split the budget evenly. Jittable.

  Raises:
    ValueError: if ``M * floor > total``.
  """
  w = jnp.asarray(weights, jnp.float32)
  size = w.shape[0]
  total, floor = int(total), int(floor)
  if size * floor > total:
    raise ValueError(f"allocate_budgets: {size} members x floor {floor} "
                     f"exceeds total {total}")
  wsum = jnp.sum(w)
  w = jnp.where(wsum > 0, w / jnp.where(wsum > 0, wsum, 1.0), 1.0 / size)
  rest = total - size * floor
  excess = jnp.maximum(w * total - floor, 0.0)
  esum = jnp.sum(excess)
  share = jnp.where(esum > 0, rest * excess / jnp.where(esum > 0, esum, 1.0),
                    rest / size)
  base = jnp.floor(share).astype(jnp.int32)
  remainder = share - base
  k = rest - jnp.sum(base)
  rank = jnp.argsort(jnp.argsort(-remainder, stable=True), stable=True)
  budgets = floor + base + (rank < k).astype(jnp.int32)
  # Float rounding guard: the sum is exact whatever the arithmetic did.
  return budgets.at[jnp.argmax(w)].add(total - jnp.sum(budgets))


def _consensus_coordinate(c: Coefficient, z, value):
  return z if c.param == "log" else value


def _from_coordinate(c: Coefficient, coord):
  z = coord if c.param == "log" else c.to_z(coord).astype(coord.dtype)
  return jnp.clip(z, *c.z_bounds())


def nudge(coords: chex.Array, weights: chex.Array, kappa
          ) -> tuple[chex.Array, chex.Array]:
  """:math:`c_i \\leftarrow (1-\\kappa) c_i + \\kappa \\bar c` with
  :math:`\\bar c = \\sum_i w_i c_i / \\sum_i w_i` over the members with
  positive weight and a finite coordinate (so a diverged member's NaN never
  reaches the others). With no such member nothing moves.

  Returns:
    ``(new coordinates, c̄)``.
  """
  use = (weights > 0) & jnp.isfinite(coords)
  wu = jnp.where(use, weights, 0.0)
  wsum = jnp.sum(wu)
  mean = jnp.sum(jnp.where(use, wu * coords, 0.0)) / jnp.where(
      wsum > 0, wsum, 1.0)
  step = jnp.where(wsum > 0, kappa, 0.0)
  return coords + step * (mean - coords), mean


def _adapt_states(tree):
  return [s for s in jax.tree.leaves(
      tree, is_leaf=lambda x: isinstance(x, AdaptState))
          if isinstance(s, AdaptState)]


def consensus(opt_state: Any, weights: chex.Array, kappa,
              coefficients: Sequence[Coefficient],
              names: Sequence[str] = CONSENSUS) -> tuple[Any, dict]:
  """Nudges the stacked members' coefficients toward their weighted mean.

  In the theory's coordinates: ``log`` coefficients (α, ε, λ) in ``z = log
  a``; ``logit`` and ``linear`` ones (β1, β2) in their value. The new value
  is projected onto Ω, written into the controller's ``z`` and ``values``
  and into the base's ``hyperparams`` (so the next step applies it). Pinned
  coefficients (``lower == upper``, e.g. λ = 0) and names outside ``names``
  are untouched. Every ``AdaptState`` in ``opt_state`` is nudged.

  Args:
    opt_state: the stacked optimizer states (leading axis M).
    weights: ``[M]`` selection weights (0 for excluded members).
    kappa: the step κ ∈ [0, 1].
    coefficients: the concrete specs of the adapted coefficients.
    names: the coefficients to nudge.

  Returns:
    ``(opt_state, means)``: the new states and ``name -> c̄`` (in consensus
    coordinates).
  """
  specs = [c for c in coefficients
           if c.name in names and not c.lower == c.upper]
  means = {}

  def nudge_state(s: AdaptState) -> AdaptState:
    ctrl = s.controller
    z, values = dict(ctrl.z), dict(ctrl.values)
    written = {}
    for c in specs:
      if c.name not in z:
        continue
      coord = _consensus_coordinate(c, z[c.name], values[c.name])
      new, means[c.name] = nudge(coord, weights, kappa)
      z[c.name] = _from_coordinate(c, new)
      values[c.name] = c.from_z(z[c.name])
      written[c.name] = values[c.name]
    return s._replace(
        controller=ctrl._replace(z=type(ctrl.z)(z),
                                 values=type(ctrl.values)(values)),
        inner_state=write_hyperparams(s.inner_state, written))

  new_state = jax.tree.map(
      lambda s: nudge_state(s) if isinstance(s, AdaptState) else s,
      opt_state, is_leaf=lambda s: isinstance(s, AdaptState))
  return new_state, means


def member_coefficients(opt_state: Any) -> dict[str, chex.Array]:
  """``name -> [M]`` coefficient values of stacked AE states (empty dict for
  a state without a controller)."""
  found = _adapt_states(opt_state)
  return dict(found[0].controller.values) if found else {}


def rejuvenate(pop: Population, scores_: chex.Array, dither, key,
               step_size: str = "learning_rate") -> Population:
  """Dithers the worst member's parameters: :math:`\\theta_w \\mathrel{+}=
  \\sigma_d\\, \\alpha_w\\, \\mathcal N(0, I)` (the reference's
  ``rejuvenate``; α is 1 for a member without that coefficient).

  The worst member is the one with the highest finite score (a diverged
  member's parameters are beyond a dither); with no finite score nothing
  changes. The other members' parameters are returned bit for bit.
  """
  s = jnp.asarray(scores_)
  finite = jnp.isfinite(s)
  worst = jnp.argmax(jnp.where(finite, s, -jnp.inf))
  size = s.shape[0]
  hit = (jnp.arange(size) == worst) & finite.any()
  alpha = member_coefficients(pop.opt_state).get(step_size, jnp.ones([size]))
  leaves, treedef = jax.tree.flatten(pop.params)
  keys = jax.random.split(key, len(leaves))
  out = []
  for leaf, k in zip(leaves, keys):
    shape = (size,) + (1,) * (leaf.ndim - 1)
    scale = (dither * alpha).astype(leaf.dtype).reshape(shape)
    noise = jax.random.normal(k, leaf.shape, leaf.dtype)
    out.append(jnp.where(hit.reshape(shape), leaf + scale * noise, leaf))
  return pop._replace(params=jax.tree.unflatten(treedef, out))


# ---------------------------------------------------------------------------
# Rounds and runs.


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


# ---------------------------------------------------------------------------
# Devices.


def auto_mesh(mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
  """``mesh`` with every axis of type ``Auto``.

  ``jax.make_mesh`` gives ``Explicit`` axes by default, under which the
  population's gathers (minibatches, chunks) would need an ``out_sharding``
  at every indexing; the swarm lets XLA propagate shardings instead.
  """
  auto = (jax.sharding.AxisType.Auto,) * len(mesh.axis_names)
  if tuple(mesh.axis_types) == auto:
    return mesh
  return jax.sharding.Mesh(mesh.devices, mesh.axis_names, axis_types=auto)


def shard_population(pop: Population, mesh: jax.sharding.Mesh,
                     axis: str = "pop") -> Population:
  """Places every leaf's population axis over ``mesh``'s ``axis``.

  Works for the GPUs of one host (``jax.make_mesh((jax.device_count(),),
  ('pop',))``) and, after ``jax.distributed.initialize()``, over hosts.

  Raises:
    ValueError: if ``axis`` is not a mesh axis or M is not divisible by
      its size.
  """
  if axis not in mesh.shape:
    raise ValueError(f"shard_population: mesh has no axis {axis!r} (axes "
                     f"{tuple(mesh.shape)})")
  size, devices = pop_size(pop), mesh.shape[axis]
  if size % devices:
    raise ValueError(f"shard_population: {size} members cannot be split "
                     f"evenly over {devices} devices of axis {axis!r}")
  return jax.device_put(pop, jax.sharding.NamedSharding(
      auto_mesh(mesh), jax.sharding.PartitionSpec(axis)))


# ---------------------------------------------------------------------------
# AEEnsemble.


class EnsembleInfo(NamedTuple):
  """What an ensemble step reports: the members' losses, their weights and
  the weighted means c̄ (consensus coordinates)."""

  losses: chex.Array
  weights: chex.Array
  means: dict


class Ensemble(NamedTuple):
  """See :func:`ensemble`."""

  update: Callable[[Any, chex.Array], tuple[Any, EnsembleInfo]]


def ensemble(coefficients: Sequence[Coefficient], *, beta: float = 2.0,
             kappa: float = 0.25, names: Sequence[str] = CONSENSUS
             ) -> Ensemble:
  """The reference ``AEEnsemble``: a per-step coefficient consensus.

  .. math::

    w = \\mathrm{softmax}(-\\beta (L - \\min L)),\\qquad
    c^{(i)} \\leftarrow \\Pi_\\Omega\\big((1-\\kappa) c^{(i)}
      + \\kappa \\textstyle\\sum_j w_j c^{(j)}\\big)

  ``update(opt_state, losses)`` acts on stacked AE states after every
  member's step (usually ``jax.vmap`` of ``tx.update``); jittable. The
  reference averages α, μ, σ linearly; here the coordinates are the
  swarm's (log α, linear β), and a non-finite loss gets weight 0.

  Raises:
    ValueError: if ``beta < 0`` or ``kappa`` lies outside [0, 1].
  """
  if not (math.isfinite(beta) and beta >= 0):
    raise ValueError(f"ensemble: beta must be finite and >= 0, got {beta}")
  if not 0.0 <= kappa <= 1.0:
    raise ValueError(f"ensemble: kappa must lie in [0, 1], got {kappa}")

  def update(opt_state, losses):
    w, _ = swarm_weights(losses, beta)
    opt_state, means = consensus(opt_state, w, kappa, coefficients, names)
    return opt_state, EnsembleInfo(losses=jnp.asarray(losses), weights=w,
                                   means=means)

  return Ensemble(update=update)


def ensemble_step(family: Family, loss_fn: Callable, *, beta: float = 2.0,
                  kappa: float = 0.25, names: Sequence[str] = CONSENSUS
                  ) -> Callable:
  """One jitted AEEnsemble step of a population on a shared batch:
  ``step(pop, x, y) -> (pop, EnsembleInfo)``; every member steps on
  ``(x, y)`` (as the reference's agents share one ``loss_fn``), then the
  consensus of :func:`ensemble` runs with the members' losses."""
  ens = ensemble(family.coefficients, beta=beta, kappa=kappa, names=names)

  def one(m: Population, x, y):
    tx = optax.with_extra_args_support(family.make(m.prior))
    loss, grads = jax.value_and_grad(loss_fn)(m.params, x, y)
    updates, opt_state = tx.update(grads, m.opt_state, m.params, value=loss)
    return m._replace(params=optax.apply_updates(m.params, updates),
                      opt_state=opt_state, steps=m.steps + 1), loss

  @jax.jit
  def step(pop: Population, x, y):
    pop, losses = jax.vmap(one, in_axes=(0, None, None))(pop, x, y)
    opt_state, info = ens.update(pop.opt_state, losses)
    return pop._replace(opt_state=opt_state), info

  return step


# ---------------------------------------------------------------------------
# A small MLP task (the reference example's).


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

"""Scale-free selection: scores to weights to budgets."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


SELECTIONS = ("rank", "standardized", "raw")


def selection_scores(losses: chex.Array, selection: str = "rank"
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
  s = jnp.asarray(losses)
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


def swarm_weights(losses: chex.Array, beta, selection: str = "raw"
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
  finite = jnp.isfinite(jnp.asarray(losses))
  u = selection_scores(losses, selection)
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

"""Configuration, families of members and their priors."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax import laws
from ae_jax import presets
from ae_jax.coefficient import Coefficient
from ae_jax.swarm._selection import SELECTIONS


# The theory's consensus coefficients (α, β1, β2, ε, λ).
CONSENSUS = ("learning_rate", "b1", "b2", "eps", "weight_decay")
MODES = ("vmap", "chunked")


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
      The default 1 was chosen by measurement for rank selection
      (``benchmarks/swarm_beta.py``: the spread case on tuning seeds, β in
      0 … 4 with κ 0 and 0.05, members anchored at their starts,
      2026-12-07; β 1 … 50 before); the reference example's raw selection
      uses 5.
    selection: how scores become ``u`` (:func:`selection_scores`):
      ``"rank"`` (default, scale-free), ``"standardized"`` or ``"raw"``
      (the theory's ``s - min s``, in the loss's units).
    kappa: κ ∈ [0, 1], the consensus step (0, the default: no consensus).
      Measured on the spread case's tuning seeds (same sweep as β): κ = 0.05
      cost 1.4–5.8 % of the geo-mean best validation loss at every β tried
      (0 … 4), most on the digits CNN; larger κ (0.2, 0.5) lost to 0.05 in
      the earlier sweep. The reference example uses 0.05.
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
  beta: float = 1.0
  selection: str = "rank"
  kappa: float = 0.0
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
  base_row = laws.CANONICAL_DRIVE["learning_rate"]

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


# Γ of the anchored members' leak toward their own starting α (AE-2's leak
# row for α, in log α per unit of η_α). Chosen on the spread case's
# tuning seeds 100-102 (Γ = 0 / 0.2 / 1: swarm ÷ best baseline 1.117 /
# 1.182 / 1.104; benchmarks/RESULTS.md, "Members anchored at their start").
SELF_TUNING_LEAK = 1.0


def self_tuning_family(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                       weight_decay: float = 1e-4, *,
                       learning_rate_bounds: tuple[float, float] = (1e-7, 10.0),
                       weight_decay_bounds: tuple[float, float] = (1e-7, 1.0),
                       leak: float = SELF_TUNING_LEAK,
                       ) -> Family:
  r"""AE-AdamW members with the canonical self-tuning chain
  (:func:`ae_jax.ae_adamw`'s default laws) plus AE-2's drive, each anchored
  at its own starting α, and per-member priors.

  .. math::

    \Delta\log\alpha_t = \kappa_t h_t - \eta_\alpha\big[\Gamma\,
      (\log\alpha_t - \log\alpha^{(i)}_0) + \partial\psi_\Omega\big]

  The first term is the step-size law (:func:`ae_jax.laws.hypergradient`);
  the second is AE-2's leak row toward the member's prior α₀⁽ⁱ⁾ (with
  :func:`ae_jax.laws.evolve`'s barrier of Ω). With ``leak > 0`` the chain
  is ``canonical_laws(names, gains={"learning_rate": DriveGains(leak=Γ)})``:
  α's drive row is the leak alone, and β1, β2, ε and λ get the theory's
  canonical rows (:data:`ae_jax.laws.CANONICAL_DRIVE`: variance and phase
  terms, and leaks of 0.05 toward their priors). Without it
  (``leak=0``) the step-size law pulls members started decades apart to
  within a factor of 2-10 of one rate in ~50 steps — a level set by the
  training loss's one-step signal, not by validation — so selection has
  little to choose among; the anchor keeps the population's spread where the
  law's signal is noise, while a consistent hypergradient (a rate far too
  small or too large) still moves α.

  A prior is a dict of scalars per member: ``learning_rate`` (required,
  the member's initial α and anchor; no warm start below it) and,
  optionally, ``b1`` and ``weight_decay`` (else the arguments here). With
  ``leak=0`` the chain moves α only and β1 and λ stay where the prior and
  the consensus put them; with the drive they also move on its features and
  leak back toward the prior. Ω is the same for every member and wide
  enough for a population spread over decades.

  Args:
    b1: β1 of members without a ``b1`` prior.
    b2: β2 of every member.
    eps: ε of every member.
    weight_decay: λ of members without a ``weight_decay`` prior (> 0).
    learning_rate_bounds: Ω of α.
    weight_decay_bounds: Ω of λ.
    leak: Γ ≥ 0 of the pull toward the member's starting α (0: the plain
      self-tuning chain, no drive). The default :data:`SELF_TUNING_LEAK` was
      chosen on the spread case's tuning seeds.

  Returns:
    A :class:`Family`.

  Raises:
    ValueError: if ``weight_decay`` is not positive or ``leak`` is negative
      or not finite.
  """
  if not weight_decay > 0:
    raise ValueError(f"self_tuning_family: weight_decay must be positive, "
                     f"got {weight_decay}")
  if (isinstance(leak, bool) or not isinstance(leak, numbers.Real)
      or not math.isfinite(leak) or leak < 0):
    raise ValueError(f"self_tuning_family: leak must be a finite number "
                     f">= 0, got {leak!r}")
  lo, hi = learning_rate_bounds
  specs = tuple(presets.adamw_coefficients(
      math.sqrt(lo * hi), b1, b2, eps, weight_decay,
      learning_rate_bounds=learning_rate_bounds,
      weight_decay_bounds=weight_decay_bounds, warm_start=1.0))
  # The anchor is each member's own prior: ae_adamw sets α's anchor to the
  # rate it is given, prior["learning_rate"] in make().
  chain = (None if leak == 0 else presets.canonical_laws(
      [c.name for c in specs],
      gains={"learning_rate": laws.DriveGains(leak=float(leak))}))

  def make(prior):
    return presets.ae_adamw(
        prior["learning_rate"], prior.get("b1", b1), b2, eps,
        prior.get("weight_decay", weight_decay),
        learning_rate_bounds=learning_rate_bounds,
        weight_decay_bounds=weight_decay_bounds, warm_start=1.0,
        laws_chain=chain)

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

"""``reference_agent``: the theory's reference ``AEAgent`` rebuilt from the laws.

``../shared/theory/reference/AE.py`` (PyTorch) is the parity oracle. This
module expresses its ``AEAgent.step`` with the same pieces as the canonical
presets, configured the reference's way:

* filters: the reference EMA (seeded with the first sample), no normalised
  progress, uncentred variance term;
* α: log-parametrised; drive k_p, k_v, k_c, leak γ_lr; gauge with the
  reference's fallback γ* during the warm-up; trust region
  ``max_dlog_alpha``; two-sided resonance clamp ``|ρ| > ρ_max``;
* μ: linear; drive ``0.8 tanh(ρ-ρ*) - 0.6 softplus(V/V*) - γ_μ(μ - μ̄)``;
  trust region ``max_d_mu``;
* σ: log-parametrised noise law, floored at ``sigma_min + 1e-16`` as the
  reference does (so σ starts at 1e-16, not 0, unless ``sigma_max = 0``,
  which holds it at exactly 0);
* base: SGD with EMA momentum, optional step-norm cap, the reference's
  parameter clamp; timing ``delayed=False`` (the reference applies the new
  coefficients to the step that produced them).

It reproduces the reference to about 1e-12 relative in float64 with σ = 0
(``tests/test_reference_parity.py``). The reference's defects come with it:
this is a parity tool, not a recommended optimizer.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ae_jax import laws
from ae_jax._adapt import adapt, sanitize
from ae_jax.coefficient import Coefficient
from ae_jax._controller import Brake
from ae_jax.measurement import FilterConfig


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
  """The fields of the reference ``AEConfig``, with its defaults."""

  beta_mu: float = 0.98
  beta_T: float = 0.90
  beta_V: float = 0.95
  beta_S: float = 0.95
  beta_star: float = 0.99
  k_p: float = 0.8
  k_v: float = 0.8
  k_c: float = 0.4
  gamma_lr: float = 0.05
  gamma_mu: float = 0.05
  k_s_stall: float = 0.5
  k_s_uncert: float = 0.4
  k_s_var: float = 0.4
  k_s_quality: float = 0.2
  rho_star: float = 0.30
  rho_max: float = 0.95
  V_max_mult: float = 4.0
  gamma_star: float = 1e-2
  auto_gamma: bool = True
  auto_gamma_warmup: int = 200
  eta_a: float = 5e-4
  eta_mu: float = 8e-4
  eta_sigma: float = 5e-4
  eta_gamma: float = 1e-3
  max_dlog_alpha: float | None = 0.10
  max_d_mu: float | None = 0.02
  max_dlog_sigma: float | None = 0.10
  alpha_min: float = 1e-6
  alpha_max: float = 1.0
  mu_min: float = 0.0
  mu_max: float = 0.999
  sigma_min: float = 0.0
  sigma_max: float = 1.0
  alpha_bar: float = 3e-4
  mu_bar: float = 0.9
  tau_T_stall: float = 0.25
  device: Any = "cpu"  # accepted for signature parity, unused
  dtype: Any = None    # accepted for signature parity; enable x64 for float64
  loss_emergency: float = 1e8
  grad_emergency: float = 1e6
  step_norm_max: float | None = None
  param_abs_max: float = 1e6


def _reference_sgd(learning_rate, momentum, step_norm_max=None):
  """EMA-momentum SGD with the reference's optional step-norm cap."""
  def update_fn(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    scale = jnp.where(norm > step_norm_max, step_norm_max / norm, 1.0)
    return jax.tree.map(lambda u: u * scale, updates), state

  parts = [optax.ema(momentum, debias=False),
           optax.scale_by_learning_rate(learning_rate)]
  if step_norm_max is not None:
    parts.append(optax.GradientTransformation(
        lambda p: optax.EmptyState(), update_fn))
  return optax.chain(*parts)


def _clamp_params(limit) -> optax.GradientTransformation:
  """Keeps ``params + updates`` inside ``[-limit, limit]``."""
  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("the reference parameter clamp needs params")
    updates = jax.tree.map(
        lambda u, p: jnp.clip(p + u, -limit, limit) - p, updates, params)
    return updates, state

  return optax.GradientTransformation(lambda p: optax.EmptyState(), update_fn)


def _sanitizer(limit) -> optax.GradientTransformation:
  return optax.stateless(lambda updates, params: sanitize(updates, limit))


def reference_agent(init_alpha: float = 3e-4, init_mu: float = 0.9,
                    init_sigma: float = 0.0, *, clip_grad_norm=None,
                    seed: int = 0, **config
                    ) -> optax.GradientTransformationExtraArgs:
  """The reference ``AEAgent`` (``AE.py``) as an Optax transformation.

  Args:
    init_alpha: initial α (``AEAgent(init_alpha=...)``).
    init_mu: initial μ.
    init_sigma: initial σ.
    clip_grad_norm: the agent's optional gradient-norm clip.
    seed: seed of the noise (the reference's ``torch.Generator`` stream is
      not reproduced: parity holds for σ = 0).
    **config: fields of the reference ``AEConfig`` (see
      :class:`ReferenceConfig`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``: ``update(grads, state,
    params, value=loss)``; ``params`` is required (parameter clamp).

  Raises:
    ValueError: on an unknown ``AEConfig`` field or invalid value.
  """
  known = {f.name for f in dataclasses.fields(ReferenceConfig)}
  unknown = sorted(set(config) - known)
  if unknown:
    raise ValueError(f"reference_agent: unknown AEConfig field(s) {unknown}")
  cfg = ReferenceConfig(**config)

  alpha = Coefficient("learning_rate", init_alpha, cfg.alpha_min,
                      cfg.alpha_max, cfg.alpha_bar, "log")
  mu = Coefficient("momentum", init_mu, cfg.mu_min, cfg.mu_max, cfg.mu_bar,
                   "linear")
  if cfg.sigma_max <= 0.0:
    sigma = Coefficient("sigma", 0.0, 0.0, 0.0, None, "linear")
  else:
    # The reference floors σ at sigma_min + 1e-16 before taking its log.
    floor = cfg.sigma_min + 1e-16
    sigma = Coefficient("sigma", max(init_sigma, floor), floor,
                        max(cfg.sigma_max, floor), None, "log")

  chain = optax.chain(
      laws.drive({
          "learning_rate": laws.DriveGains(progress=cfg.k_p,
                                           variance=cfg.k_v, phase=cfg.k_c,
                                           leak=cfg.gamma_lr),
          "momentum": laws.DriveGains(phase_tanh=0.8, variance=0.6,
                                      leak=cfg.gamma_mu),
      }, rho_star=cfg.rho_star, normalize=False, center=False),
      laws.noise("sigma", stall=cfg.k_s_stall, uncertainty=cfg.k_s_uncert,
                 instability=cfg.k_s_var, quality=cfg.k_s_quality,
                 stall_threshold=cfg.tau_T_stall, quality_target=0.5),
      laws.evolve({"learning_rate": cfg.eta_a, "momentum": cfg.eta_mu,
                   "sigma": cfg.eta_sigma}, barrier_gain=0.0),
      laws.gauge("learning_rate", eta=cfg.eta_gamma,
                 target=None if cfg.auto_gamma else cfg.gamma_star,
                 warmup=cfg.auto_gamma_warmup, calibration=0.8,
                 track_decay=0.99,
                 fallback=cfg.gamma_star if cfg.auto_gamma else None,
                 filter_mode="reference"),
      laws.budget({"learning_rate": cfg.max_dlog_alpha or None,
                   "momentum": cfg.max_d_mu or None,
                   "sigma": cfg.max_dlog_sigma or None}),
      laws.resonance("learning_rate", variance_max=cfg.V_max_mult,
                     rho_max=cfg.rho_max, shrink=0.25, two_sided=True),
  )
  filters = FilterConfig(loss_mean=cfg.beta_mu, trend=cfg.beta_T,
                         variance=cfg.beta_V, grad_variance=cfg.beta_S,
                         reference=cfg.beta_star, mode="reference",
                         loss_limit=cfg.loss_emergency, hold_bad_loss=False)
  brake = Brake(loss_limit=None, grad_limit=cfg.grad_emergency,
                nonfinite_grad=False, inf_value=cfg.grad_emergency,
                scale={"learning_rate": 0.1}, cap={"momentum": 0.5})
  inner = optax.inject_hyperparams(_reference_sgd)(
      learning_rate=init_alpha, momentum=init_mu,
      step_norm_max=cfg.step_norm_max)
  parts = []
  if clip_grad_norm is not None:  # the reference sanitises, then clips
    parts += [_sanitizer(cfg.grad_emergency),
              optax.clip_by_global_norm(clip_grad_norm)]
  parts.append(adapt(inner, [alpha, mu, sigma], chain, filters=filters,
                     brake=brake, delayed=False, seed=seed,
                     momentum="ema"))
  if cfg.param_abs_max and 0 < cfg.param_abs_max < math.inf:
    parts.append(_clamp_params(cfg.param_abs_max))
  return optax.chain(*parts)

"""ae_jax: Adaptive Evolution of optimizer coefficients, as Optax transformations.

Quick start::

  import ae_jax as ae
  tx = ae.ae_adamw(learning_rate=1e-3)
  state = tx.init(params)
  updates, state = tx.update(grads, state, params, value=loss)
  ae.coefficients(state)   # {'learning_rate': ..., 'b1': ..., ...}
  ae.signals(state)        # {'T': ..., 'V': ..., 'rho': ..., 'gamma': ...}
"""

from ae_jax import laws
from ae_jax import machine
from ae_jax import meta
from ae_jax import monitor
from ae_jax import measurement
from ae_jax import swarm
from ae_jax._adapt import AdaptState, adapt, reseed, set_coefficients
from ae_jax.coefficient import Coefficient
from ae_jax._controller import (Brake, CoefficientMap, Controller,
                               ControllerState, coefficients, controller,
                               signals)
from ae_jax.presets import (LawGains, ae_adam, ae_adamw, ae_sgdm,
                            canonical_laws, default_gains, ema_sgd, injected)
from ae_jax.reference import reference_agent
from ae_jax.measurement import FilterConfig, GradStats, Signals

__version__ = "0.1.0"

__all__ = [
    "AdaptState", "Brake", "Coefficient", "CoefficientMap", "Controller",
    "ControllerState",
    "FilterConfig", "GradStats", "LawGains", "Signals", "adapt", "ae_adam",
    "ae_adamw", "ae_sgdm", "canonical_laws", "coefficients", "controller",
    "default_gains", "ema_sgd", "injected", "laws", "machine", "measurement",
    "meta", "monitor", "reference_agent", "reseed", "set_coefficients", "signals",
    "swarm",
]

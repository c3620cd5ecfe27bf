"""Coefficient specifications: what the AE laws evolve, and in which coordinates.

A coefficient :math:`a` (learning rate, momentum, temperature, augmentation
strength, ...) lives in an interval :math:`\\Omega = [a_{\\min}, a_{\\max}]` and
is evolved in unconstrained coordinates :math:`z`:

* ``"log"``: :math:`z = \\log a` (positive coefficients: AE-3's
  multiplicative update :math:`a \\odot \\exp(\\eta u)` is additive in ``z``);
* ``"logit"``: :math:`z = \\log\\frac{a - a_{\\min}}{a_{\\max} - a}`
  (coefficients with a hard ceiling such as β1, β2);
* ``"linear"``: :math:`z = a` (additive laws, e.g. the reference's momentum).

The laws see ``z`` as their ``params``; the drive field ``u`` and the steps
``Δz`` flow as ``updates``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

PARAMETRISATIONS = ("log", "logit", "linear")


@dataclasses.dataclass(frozen=True)
class Coefficient:
  """One adapted coefficient.

  Attributes:
    name: the name; for :func:`ae_jax.adapt` the hyperparameter name in the
      inner optimizer's ``inject_hyperparams`` state (``'learning_rate'``,
      ``'b1'``, ...).
    init: initial value; ``None`` takes the inner optimizer's value.
    lower: lower bound :math:`a_{\\min}` (projection Π_Ω).
    upper: upper bound :math:`a_{\\max}`.
    anchor: the prior :math:`\\bar a` the leak term pulls toward; ``None``
      means the initial value.
    param: ``"log"``, ``"logit"`` or ``"linear"``.
  """

  name: str
  init: float | None = None
  lower: float = 0.0
  upper: float = math.inf
  anchor: float | None = None
  param: str = "log"

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f"Coefficient.name must be a non-empty string, got "
                       f"{self.name!r}")
    where = f"Coefficient {self.name!r}"
    if self.param not in PARAMETRISATIONS:
      raise ValueError(f"{where}: param must be one of {PARAMETRISATIONS}, "
                       f"got {self.param!r}")
    if math.isnan(self.lower) or math.isnan(self.upper):
      raise ValueError(f"{where}: lower/upper must not be NaN")
    if self.lower > self.upper:
      raise ValueError(f"{where}: bounds are reversed (lower={self.lower} > "
                       f"upper={self.upper})")
    if self.param == "log" and self.lower < 0:
      raise ValueError(f"{where}: a log-parametrised coefficient needs "
                       f"lower >= 0, got lower={self.lower}")
    if self.param == "logit" and not (math.isfinite(self.lower)
                                      and math.isfinite(self.upper)
                                      and self.lower < self.upper):
      raise ValueError(f"{where}: a logit-parametrised coefficient needs "
                       f"finite bounds with lower < upper")
    for field in ("init", "anchor"):
      value = getattr(self, field)
      if value is None:
        continue
      self.check_value(value, field)

  def check_value(self, value: float, field: str = "init") -> None:
    """Raises ValueError if ``value`` is not a valid value of this coefficient."""
    where = f"Coefficient {self.name!r}"
    if isinstance(value, jax.core.Tracer):
      return  # traced (meta-learned) values are checked by the projection
    value = float(value)
    if not math.isfinite(value):
      raise ValueError(f"{where}: {field} must be finite, got {value}")
    if not self.lower <= value <= self.upper:
      raise ValueError(f"{where}: {field}={value} lies outside its bounds "
                       f"[{self.lower}, {self.upper}]")
    if self.param == "log" and value <= 0:
      raise ValueError(f"{where}: {field} must be positive for a "
                       f"log-parametrised coefficient, got {value}")
    if self.param == "logit" and not self.lower < value < self.upper:
      raise ValueError(f"{where}: {field}={value} must lie strictly inside "
                       f"({self.lower}, {self.upper}) for a logit "
                       f"parametrisation")

  def resolve(self, default_init: float | None = None) -> "Coefficient":
    """Returns a copy with ``init`` and ``anchor`` filled in."""
    init = self.init if self.init is not None else default_init
    if init is None:
      raise ValueError(f"Coefficient {self.name!r}: init is required")
    self.check_value(init, "init")
    anchor = self.anchor if self.anchor is not None else init
    as_float = lambda v: v if isinstance(v, jax.core.Tracer) else float(v)
    return dataclasses.replace(self, init=as_float(init),
                               anchor=as_float(anchor))

  # -- coordinates -----------------------------------------------------------

  def to_z(self, value):
    """Maps a value to the unconstrained coordinate ``z``."""
    value = jnp.asarray(value)
    if self.param == "log":
      return jnp.log(value)
    if self.param == "logit":
      # Nudge off the open interval's ends so z stays finite.
      width = self.upper - self.lower
      frac = jnp.clip((value - self.lower) / width, 1e-7, 1 - 1e-7)
      return jnp.log(frac) - jnp.log1p(-frac)
    return value

  def from_z(self, z):
    """Maps ``z`` back to the coefficient's value."""
    if self.param == "log":
      return jnp.exp(z)
    if self.param == "logit":
      return self.lower + (self.upper - self.lower) * jax.nn.sigmoid(z)
    return z

  def z_bounds(self) -> tuple[float, float]:
    """Bounds of ``z`` (±inf where the parametrisation has none)."""
    if self.param == "log":
      lo = math.log(self.lower) if self.lower > 0 else -math.inf
      hi = math.log(self.upper) if math.isfinite(self.upper) else math.inf
      return lo, hi
    if self.param == "logit":
      return -math.inf, math.inf
    return self.lower, self.upper


def check_positive(where: str, **values) -> None:
  """Raises ValueError naming the first non-positive value (tracers pass)."""
  for name, value in values.items():
    if value is None or isinstance(value, jax.core.Tracer):
      continue
    if not float(value) > 0:
      raise ValueError(f"{where}{name} must be positive, got {value}")


def check_nonnegative(where: str, **values) -> None:
  """Raises ValueError naming the first negative value (tracers pass)."""
  for name, value in values.items():
    if value is None or isinstance(value, jax.core.Tracer):
      continue
    if not float(value) >= 0:
      raise ValueError(f"{where}{name} must be >= 0, got {value}")


def as_specs(coefficients: Sequence[Coefficient | str] | Mapping | Coefficient,
             ) -> tuple[Coefficient | str, ...]:
  """Normalises the ``coefficients`` argument of the controller and adapt."""
  if isinstance(coefficients, (Coefficient, str)):
    coefficients = (coefficients,)
  if isinstance(coefficients, Mapping):
    coefficients = tuple(coefficients.values())
  specs = tuple(coefficients)
  names = [c if isinstance(c, str) else c.name for c in specs]
  if len(set(names)) != len(names):
    raise ValueError(f"coefficient names must be unique, got {names}")
  for c in specs:
    if not isinstance(c, (Coefficient, str)):
      raise ValueError(f"coefficients must be Coefficient specs or names, "
                       f"got {c!r}")
  return specs

"""The AE controller: evolves any set of coefficients from loss, reward and gradient.

One controller step is the coefficient layer of the normal form:

1. measure (AE-1): fold loss / reward / gradient statistics into the filters;
2. brake: on a non-finite or extreme loss or gradient, cut the step size
   and cap momentum at once (the reference's emergency brake);
3. run the law chain (AE-2 ... AE-8) over ``z`` to get ``Δz``;
4. project ``z + Δz`` onto Ω (always on: axiom A4);
5. record the Lyapunov energy (AE-10).

Use it directly for coefficients that are not optimizer hyperparameters
(an entropy temperature, a KL penalty, an augmentation strength), or through
:func:`ae_jax.adapt`, which wires it to an Optax optimizer.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax import _packing as packing
from ae_jax import laws as laws_lib
from ae_jax import measurement
from ae_jax.coefficient import Coefficient, as_specs


class Brake(NamedTuple):
  """The emergency brake (reference ``loss_emergency`` / ``grad_emergency``).

  Attributes:
    loss_limit: brake when ``|loss|`` exceeds this, or the loss is not finite
      (``None``: never brake on the loss, as the reference in effect does).
    grad_limit: brake when ``‖g‖`` exceeds this or is not finite; with a
      gradient clip on (``FilterConfig.grad_clip``, the presets), such a
      gradient's step is skipped instead (the base sees a zero gradient;
      after ``measurement.ABSURD_PATIENCE`` in a row such gradients are
      read as the problem's scale and only clipped), and only a non-finite
      gradient brakes.
    nonfinite_grad: brake when the gradient had any non-finite entry (NaN
      included, which sanitising would otherwise hide; the reference does
      not).
    inf_value: what ±inf gradient entries are read as by the statistics.
      0 by default, which also selects one decision per step for the
      update: a step with a non-finite entry is skipped (the base sees a zero
      gradient) and a finite gradient beyond the overflow bound is scaled
      down to it (``docs/laws.md``, "Overflow and unusable entries"). Any
      other value (the reference's ±``grad_limit``) cleans entry by entry:
      NaN → 0, ±inf → ±inf_value, and the rest of the step is applied; ±1e6
      applied at the un-braked rate throws the parameters far away.
    scale: ``name -> factor`` applied to those coefficients (floored at
      their lower bound).
    cap: ``name -> ceiling`` applied to those coefficients.
  """

  loss_limit: float | None = 1e8
  grad_limit: float = 1e6
  nonfinite_grad: bool = True
  inf_value: float = 0.0
  scale: Mapping[str, float] = {"learning_rate": 0.1}
  cap: Mapping[str, float] = {}


@jax.tree_util.register_pytree_with_keys_class
class CoefficientMap(Mapping):
  """Coefficients by name (``z`` or values) inside a :class:`ControllerState`.

  A read-only mapping whose pytree keys are positions, not names: the names
  ``learning_rate``, ``b1``, ... then occur in an AE state only in the base
  optimizer's ``hyperparams``, so ``optax.tree.get(state, "learning_rate")``
  finds the rate (one match) and ``optax.tree.set`` overrides it (the
  controller adopts the new value at the next update, see
  :func:`ae_jax.adapt`). The names travel as static pytree metadata.
  """

  __slots__ = ("_items",)

  def __init__(self, items=()):
    self._items = dict(items)

  def __getitem__(self, name):
    return self._items[name]

  def __iter__(self):
    return iter(self._items)

  def __len__(self):
    return len(self._items)

  def __repr__(self):
    return f"CoefficientMap({self._items!r})"

  def __getstate__(self):
    return self._items

  def __setstate__(self, items):
    self._items = items

  def tree_flatten_with_keys(self):
    names = tuple(self._items)
    return ([(jax.tree_util.SequenceKey(i), self._items[n])
             for i, n in enumerate(names)], names)

  def tree_flatten(self):
    names = tuple(self._items)
    return [self._items[n] for n in names], names

  @classmethod
  def tree_unflatten(cls, names, children):
    return cls(zip(names, children))


_STATE_FIELDS = ("count", "z", "values", "filters", "signals", "laws",
                 "energy")


@jax.tree_util.register_pytree_with_keys_class
class ControllerState:
  """State of a :func:`controller` (all scalars, at least float32).

  Read and built like a NamedTuple (``state.z``, ``state._replace(...)``,
  ``ControllerState(count=..., ...)``), but stored packed: its pytree leaves
  are one flat buffer per dtype (the floats, the int32 counters), so a
  jitted step passes two or three buffers instead of ~50 scalars (see
  ``ae_jax/_packing.py``). A vmapped or stacked population of controllers
  has buffers of shape ``(M, n)``; the fields then read with a leading M.

  Attributes:
    count: steps taken.
    z: the coefficients in unconstrained coordinates
      (:class:`CoefficientMap`).
    values: the coefficient values ``a_t`` (:class:`CoefficientMap`), what
      the user reads.
    filters: the AE-1 filter accumulators.
    signals: the signals of the last step.
    laws: the state of the law chain.
    energy: the Lyapunov energy 𝒱_t of AE-10 after the last step.
  """

  __slots__ = ("_layout", "_buffers", "_fields_cache")
  _fields = _STATE_FIELDS

  def __init__(self, count, z, values, filters, signals, laws, energy):
    fields = (count, z, values, filters, signals, laws, energy)
    # ``count`` is one scalar per controller: its dimensions are batch ones.
    self._layout, self._buffers = packing.pack(fields,
                                               batch_ndim=jnp.ndim(count))
    self._fields_cache = fields

  @classmethod
  def _from_buffers(cls, layout, buffers):
    obj = object.__new__(cls)
    obj._layout, obj._buffers, obj._fields_cache = layout, tuple(buffers), None
    return obj

  def _unpacked(self) -> tuple:
    if self._fields_cache is None:
      self._fields_cache = packing.unpack(self._layout, self._buffers)
    return self._fields_cache

  def _asdict(self) -> dict:
    return dict(zip(_STATE_FIELDS, self._unpacked()))

  def _replace(self, **changes) -> "ControllerState":
    unknown = set(changes) - set(_STATE_FIELDS)
    if unknown:
      raise ValueError(f"ControllerState has no fields {sorted(unknown)}")
    fields = {**self._asdict(), **changes}
    if not packing.is_concrete(self._buffers):
      # Traced (inside a step): write only the changed leaves.
      new = tuple(fields[f] for f in _STATE_FIELDS)
      buffers = packing.repack(
          self._layout, self._buffers, jax.tree.leaves(self._unpacked()),
          new, batch_ndim=jnp.ndim(new[0]))
      if buffers is not None:
        obj = ControllerState._from_buffers(self._layout, buffers)
        obj._fields_cache = new
        return obj
    return ControllerState(**fields)

  def __repr__(self):
    if not all(hasattr(b, "shape") and jnp.ndim(b) >= 1
               for b in self._buffers):
      # leaves that are not buffers (a tree_map to dtypes, shardings, ...)
      return "ControllerState(" + ", ".join(
          f"packed_{g}={b!r}" for g, b in zip(self._layout.groups,
                                                self._buffers)) + ")"
    return "ControllerState(" + ", ".join(
        f"{k}={v!r}" for k, v in self._asdict().items()) + ")"

  def __eq__(self, other):
    # As a NamedTuple's: same structure (the layout holds every field's
    # structure, dtype and shape) and equal leaves.
    if not isinstance(other, ControllerState):
      return NotImplemented
    return (self._layout == other._layout
            and tuple(self._buffers) == tuple(other._buffers))

  __hash__ = None

  def tree_flatten_with_keys(self):
    return ([(jax.tree_util.GetAttrKey(f"packed_{g}"), b)
             for g, b in zip(self._layout.groups, self._buffers)],
            self._layout)

  def tree_flatten(self):
    return list(self._buffers), self._layout

  @classmethod
  def tree_unflatten(cls, layout, buffers):
    return cls._from_buffers(layout, buffers)


def _field(index: int, name: str):
  return property(lambda self: self._unpacked()[index],
                  doc=f"The ``{name}`` field (unpacked on access).")


for _i, _name in enumerate(_STATE_FIELDS):
  setattr(ControllerState, _name, _field(_i, _name))
del _i, _name


class Controller(NamedTuple):
  """A coefficient controller; see :func:`controller`.

  Attributes:
    init: ``init(dtype=None) -> ControllerState``.
    update: ``update(grads, state, *, value, reward=None, reference=None)
      -> (values, state)``; ``grads`` may be None when there is no gradient.
    step: ``step(state, loss, stats, reward=None) -> (values, state)``, the
      same from precomputed :class:`ae_jax.measurement.GradStats`.
    specs: the resolved :class:`Coefficient` specs.
  """

  init: Callable[..., ControllerState]
  update: Callable[..., tuple[dict, ControllerState]]
  step: Callable[..., tuple[dict, ControllerState]]
  specs: tuple[Coefficient, ...]


def geometry(specs: Sequence[Coefficient]) -> laws_lib.Geometry:
  """Anchors and bounds of ``specs`` in ``z`` coordinates."""
  bounds = {c.name: c.z_bounds() for c in specs}
  width = {n: min(0.5, 0.01 * (hi - lo)) if math.isfinite(hi - lo) else 0.5
           for n, (lo, hi) in bounds.items()}
  return laws_lib.Geometry(
      anchor={c.name: c.to_z(c.anchor) for c in specs},
      anchor_value={c.name: c.anchor for c in specs},
      lower={n: b[0] for n, b in bounds.items()},
      upper={n: b[1] for n, b in bounds.items()},
      width={n: max(w, 1e-6) for n, w in width.items()})


def decode(specs: Sequence[Coefficient], z: Mapping[str, Any]) -> dict:
  """Coefficient values from ``z`` (:meth:`Coefficient.from_z`).

  The log- and the logit-parametrised coefficients are each decoded as one
  vector: XLA gives every scalar ``exp`` or sigmoid with several consumers
  a kernel of its own, and this runs twice per step."""
  values = {c.name: z[c.name] for c in specs if c.param not in _VECTOR_PARAMS}
  for param in _VECTOR_PARAMS:
    group = [c for c in specs if c.param == param]
    if len(group) < 2 or any(jnp.ndim(z[c.name]) for c in group):
      values.update({c.name: c.from_z(z[c.name]) for c in group})
      continue
    stacked = jnp.stack([jnp.asarray(z[c.name]) for c in group])
    if param == "log":
      decoded = jnp.exp(stacked)
    else:
      lower = np.array([c.lower for c in group], stacked.dtype)
      width = np.array([c.upper - c.lower for c in group], stacked.dtype)
      decoded = lower + width * jax.nn.sigmoid(stacked)
    values.update({c.name: decoded[i] for i, c in enumerate(group)})
  return {c.name: values[c.name] for c in specs}


_VECTOR_PARAMS = ("log", "logit")


def project(specs: Sequence[Coefficient], z: Mapping[str, Any],
            temperature=None) -> dict:
  """Π_Ω in ``z`` coordinates; with a ``temperature``, its smooth surrogate
  (:func:`ae_jax.laws.soft_clip`, AE-9)."""
  return {c.name: laws_lib.soft_clip(z[c.name], *c.z_bounds(), temperature)
          for c in specs}


def _validate_brake(brake: Brake, specs: Sequence[Coefficient]) -> None:
  names = [c.name for c in specs]
  if brake.loss_limit is not None and not float(brake.loss_limit) > 0:
    raise ValueError(f"Brake.loss_limit must be positive, got "
                     f"{brake.loss_limit}")
  if not float(brake.grad_limit) > 0:
    raise ValueError(f"Brake.grad_limit must be positive, got "
                     f"{brake.grad_limit}")
  for field in ("scale", "cap"):
    unknown = sorted(set(getattr(brake, field)) - set(names))
    if unknown:
      raise ValueError(f"Brake.{field} names unknown coefficients {unknown}; "
                       f"adapted: {list(names)}")
  for name, factor in brake.scale.items():
    if not 0 < float(factor) <= 1:
      raise ValueError(f"Brake.scale[{name!r}] must lie in (0, 1], got "
                       f"{factor}")
  for c in specs:
    if c.name in brake.cap:
      cap = float(brake.cap[c.name])
      if not c.lower <= cap or (c.param != "linear" and not cap > c.lower):
        raise ValueError(f"Brake.cap[{c.name!r}]={cap} must lie above the "
                         f"coefficient's lower bound {c.lower}")
  if not float(brake.inf_value) >= 0:
    raise ValueError(f"Brake.inf_value must be >= 0, got {brake.inf_value}")


def _brake_trigger(brake: Brake, filters, sig, stats, loss, temp, dtype):
  """How much the brake fires this step: 1 on a non-finite loss or
  gradient, else the (soft) test of ``‖g‖`` and ``|loss|`` against the
  limits."""
  nonfinite = ~jnp.isfinite(sig.gnorm)
  if brake.nonfinite_grad:
    nonfinite = nonfinite | (stats.nonfinite > 0)
  if filters.grad_clip is None:
    fire = laws_lib.gate(
        jnp.log(jnp.where(nonfinite, 1.0, sig.gnorm) / brake.grad_limit),
        temp)
  else:
    # With the gradient clip on, what reaches the base is the clipped
    # gradient (an absurd one, above grad_limit, skipped; a run of them, the
    # problem's scale, clipped): the clip has answered in proportion, so
    # only a non-finite gradient still brakes. (Testing the clipped norm
    # against grad_limit braked α to its floor on every step of a problem
    # whose gradients are all above it, though Adam's step ignores their
    # size.)
    fire = jnp.zeros([], dtype)
  if brake.loss_limit is not None:
    nonfinite = nonfinite | ~jnp.isfinite(loss)
    size = jnp.maximum(jnp.abs(jnp.where(jnp.isfinite(loss), loss, 0.0)),
                       1e-30)
    fire = laws_lib.either(
        fire, laws_lib.gate(jnp.log(size / brake.loss_limit), temp))
  return jnp.where(nonfinite, 1.0, fire).astype(dtype)


def _apply_brake(specs, brake: Brake, z: dict, fire, temp, dtype) -> dict:
  """``z`` with the brake's scale and cap applied in proportion to
  ``fire``."""
  for c in specs:
    if c.name not in brake.scale and c.name not in brake.cap:
      continue
    # Braking happens in z: the scale is a shift of log α, the cap a
    # ceiling in the coefficient's own coordinate.
    braked = z[c.name]
    if c.name in brake.scale and c.param == "log":
      braked = laws_lib.soft_clip(braked + math.log(brake.scale[c.name]),
                                  *c.z_bounds(), temp)
    elif c.name in brake.scale:  # hard floor, also in smooth mode
      braked = c.to_z(jnp.maximum(c.from_z(braked) * brake.scale[c.name],
                                  c.lower))
    if c.name in brake.cap:
      braked = laws_lib.soft_min(braked, c.to_z(brake.cap[c.name]), temp)
    braked = braked.astype(dtype)
    if temp is None:
      z[c.name] = jnp.where(fire > 0, braked, z[c.name])
    else:
      z[c.name] = z[c.name] + fire * (braked - z[c.name])
  return z


def controller(coefficients: Sequence[Coefficient], laws, *,
               filters: measurement.FilterConfig = measurement.FilterConfig(),
               brake: Brake | None = None,
               step_size: str | None = "learning_rate",
               energy_weight=0.05, smooth=False) -> Controller:
  """Builds a controller that evolves ``coefficients`` under ``laws``.

  Example (an entropy temperature driven by the reward, AE-RL)::

    ctrl = ae.controller(
        [ae.Coefficient('temperature', init=1.0, lower=1e-3, upper=10.)],
        optax.chain(
            ae.laws.drive({'temperature': ae.laws.DriveGains(reward=-1.0)}),
            ae.laws.evolve({'temperature': 0.05})),
        step_size=None)
    state = ctrl.init()
    values, state = ctrl.update(None, state, value=loss, reward=reward)

  Args:
    coefficients: :class:`Coefficient` specs, each with an ``init``.
    laws: an ``optax.GradientTransformationExtraArgs`` over the coefficients
      (usually an ``optax.chain`` of :mod:`ae_jax.laws`).
    filters: the AE-1 filter configuration.
    brake: the emergency brake; ``None`` keeps the default limits but only
      scales ``step_size`` if it is a coefficient.
    step_size: name of the coefficient that plays α in γ = α‖g‖ (``None``:
      γ = ‖g‖).
    energy_weight: the weight γ of ``‖z - z̄‖²`` in the Lyapunov energy.
    smooth: AE-9 smooth mode for the controller's own gates: the brake fires
      with ``sigmoid(log(‖g‖/grad_limit)/τ)`` (soft OR with the loss test;
      a non-finite loss or gradient still fires fully), its scale and cap
      blend in ``z``, and Π_Ω is a soft clip of width τ in ``z``. ``True``
      uses :data:`ae_jax.laws.DEFAULT_TEMPERATURE`; a number is τ. The law
      chain has its own ``smooth`` arguments.

  Returns:
    A :class:`Controller`.

  Raises:
    ValueError: on an invalid spec, filter, brake or law configuration,
      naming the field.
  """
  specs = tuple(c if isinstance(c, Coefficient) else Coefficient(c)
                for c in as_specs(coefficients))
  specs = tuple(c.resolve() for c in specs)
  names = [c.name for c in specs]
  measurement.validate_filter_config(filters)
  if brake is None:
    scale = {step_size: 0.1} if step_size in names else {}
    brake = Brake(scale=scale)
  _validate_brake(brake, specs)
  if step_size is not None and step_size not in names:
    step_size = None
  if not hasattr(laws, "init") or not hasattr(laws, "update"):
    raise ValueError("laws must be an optax GradientTransformation (e.g. an "
                     "optax.chain of ae_jax.laws)")
  laws = optax.with_extra_args_support(laws)
  geo = geometry(specs)
  temp = laws_lib.temperature(smooth)

  def init(dtype=None) -> ControllerState:
    dtype = dtype or measurement.controller_dtype()
    z = {c.name: jnp.asarray(c.to_z(c.init), dtype) for c in specs}
    return ControllerState(
        count=jnp.zeros([], jnp.int32), z=CoefficientMap(z),
        # The exact initial values, not decode(z) (a logit round trip turns
        # 0.9 into 0.8999999 in float32).
        values=CoefficientMap({c.name: jnp.array(c.init, dtype)
                               for c in specs}),
        filters=measurement.init_filters(dtype),
        signals=measurement.init_signals(dtype), laws=laws.init(z),
        energy=jnp.zeros([], dtype))

  # Check law names and configuration now, not at the first update.
  jax.eval_shape(init)

  def step(state: ControllerState, loss, stats: measurement.GradStats,
           reward=None) -> tuple[dict, ControllerState]:
    dtype = state.energy.dtype
    sig, filt = measurement.measure(state.filters, filters, loss, stats,
                                    reward, grad_limit=brake.grad_limit)
    loss = jnp.asarray(loss, dtype)
    fire = _brake_trigger(brake, filters, sig, stats, loss, temp, dtype)
    z = _apply_brake(specs, brake, dict(state.z), fire, temp, dtype)
    values = decode(specs, z)
    sig = sig._replace(brake=fire)

    zeros = jax.tree.map(jnp.zeros_like, z)
    dz, law_state = laws.update(zeros, state.laws, z, signals=sig,
                                coefficients=values, geometry=geo)
    z = project(specs, {n: z[n] + dz[n] for n in z}, temp)
    values = decode(specs, z)
    alpha = values[step_size] if step_size else 1.0
    sig = sig._replace(gamma=alpha * sig.gnorm)
    energy = laws_lib.lyapunov_energy(sig.loss_mean, z, geo,
                                      weight=energy_weight)
    new_state = ControllerState(
        count=optax.safe_increment(state.count), z=CoefficientMap(z),
        values=CoefficientMap(values),
        filters=filt, signals=sig, laws=law_state, energy=energy)
    return values, new_state

  def update(grads, state: ControllerState, *, value=None, reward=None,
             reference=None) -> tuple[dict, ControllerState]:
    if value is None:
      raise TypeError("ae_jax controller update requires the loss as the "
                      "keyword argument `value`")
    stats = measurement.gradient_stats(
        grads if grads is not None else (), reference,
        dtype=state.energy.dtype, inf_value=brake.inf_value)
    return step(state, value, stats, reward)

  return Controller(init=init, update=update, step=step, specs=specs)


def _find_all(state, cls) -> list[tuple[str, Any]]:
  """``(path, node)`` of every ``cls`` node in ``state``."""
  found = jax.tree_util.tree_flatten_with_path(
      state, is_leaf=lambda x: isinstance(x, cls))[0]
  return [(jax.tree_util.keystr(path), node) for path, node in found
          if isinstance(node, cls)]


def _find(state, cls):
  found = _find_all(state, cls)
  if not found:
    raise ValueError(f"no {cls.__name__} in this state: pass the state of an "
                     f"ae_jax optimizer or controller")
  if len(found) > 1:
    raise ValueError(
        f"this state holds {len(found)} AE controllers (at "
        f"{[p or '<root>' for p, _ in found]}, e.g. from "
        f"optax.multi_transform): read them with ae.coefficients(state, "
        f"by_path=True) or ae.signals(state, by_path=True)")
  return found[0][1]


def _boxed(x) -> bool:
  # Flax NNX wraps optimizer-state leaves in Variables. flax >= 0.12
  # deprecates their ``.value`` (a warning on every access, even hasattr),
  # so look for ``get_value`` on the type first.
  return not isinstance(x, jax.Array) and (
      callable(getattr(type(x), "get_value", None)) or hasattr(x, "value"))


def _unbox(x):
  if not _boxed(x):
    return x
  if callable(getattr(type(x), "get_value", None)):
    return x.get_value()
  return x.value


def _unboxed(state):
  return jax.tree.map(_unbox, state, is_leaf=_boxed)


def _controller_state(state) -> ControllerState:
  return _find(_unboxed(state), ControllerState)


def _signals_of(found: ControllerState) -> dict[str, jax.Array]:
  out = found.signals._asdict()
  out["energy"] = found.energy
  return out


def coefficients(state, *, by_path: bool = False) -> dict:
  """The current coefficient values, by name, from any state holding a
  controller.

  Args:
    state: an AE optimizer's or controller's state (also inside an
      ``optax.chain``, an NNX optimizer, ...).
    by_path: return ``{path: {name: value}}`` for every controller in the
      state (several AE parts, e.g. under ``optax.multi_transform``); without
      it, a state with more than one controller raises a ValueError.
  """
  if by_path:
    return {path: dict(node.values)
            for path, node in _find_all(_unboxed(state), ControllerState)}
  return dict(_controller_state(state).values)


def signals(state, *, by_path: bool = False) -> dict:
  """The last step's signals (``'T'``, ``'V'``, ``'R'``, ``'rho'``, ``'S'``,
  ``'gamma'``, ...) and the Lyapunov ``'energy'``, from any state holding a
  controller; ``by_path`` as in :func:`coefficients`."""
  if by_path:
    return {path: _signals_of(node)
            for path, node in _find_all(_unboxed(state), ControllerState)}
  return _signals_of(_controller_state(state))

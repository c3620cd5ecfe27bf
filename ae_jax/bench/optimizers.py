"""The optimizer registry: name -> :class:`OptSpec`.

``OptSpec.factory(learning_rate, steps)`` builds the Optax transformation
(``steps`` is the run's budget, used by the schedules). Flags tell the
runner how to drive it:

* ``needs_value``: ``update`` gets ``value=loss`` (AE, reduce_on_plateau);
* ``eval_params``: ``(state, params) -> params`` evaluated instead of
  ``params`` (``schedule_free_eval_params``);
* ``is_ae``: the state holds an AE controller; the runner records
  ``ae.signals`` and ``ae.coefficients`` every step;
* ``windowed``: a stateful host-side peer (tensor-optix) that suggests a new
  learning rate every ``window`` steps; see :mod:`ae_jax.bench.runner`.

``default_lr`` is the optimizer's usual default (1.0 for the parameter-free
methods, where it is a multiplier). Names:

* peers: ``adamw``, ``adam``, ``sgdm`` (heavy-ball, momentum 0.9),
  ``adamw_cosine``, ``adamw_warmup_cosine``, ``adamw_step``,
  ``sgdm_cosine``, ``prodigy``, ``dadapt_adamw``, ``mechanize_adam``,
  ``dog``, ``schedule_free_adamw``, ``adamw_plateau``, ``adafactor``;
  ``tox_spsa``, ``tox_adaptive`` (tensor-optix, when installed);
* AE: ``ae_sgdm``, ``ae_adam``, ``ae_adamw``, ``ae_adafactor``;
  ``ae_sgdm_noise`` (σ₀ = 1e-3, so the noise law has something to drive);
  ``ae_sgdm@epochs``, ``ae_adam@epochs``, ``ae_adamw@epochs``: the preset
  told the task's batches per epoch (``batches_per_epoch``) on tasks whose
  batches come in shuffled epochs (``sampling="epochs"``);
* knock-outs of the canonical laws: ``<preset>-no_<law>`` for law in
  hypergradient, noise (the preset's own ``laws_chain=canonical_laws(...,
  law=False)``);
* knock-ins of the opt-in laws: ``<preset>+<law>`` for law in resonance,
  gauge, coupling, drive (the theory's rows for every coefficient), budget,
  safety (``canonical_laws(..., law=True)``);
* tuned: ``<name>@tuned`` is resolved by the runner (learning rate chosen on
  a log grid on seed 0, see :func:`ae_jax.bench.runner.tune`).

**Start knobs** (the starting-rate robustness sweep,
``benchmarks/robustness.py``): every spec names the one value a user sets to
start it (``start_name``), its default (``start_default``) and a grid of 7
starts (``start_grid``); ``spec.at_start(value, steps)`` builds the
transformation started there (``start_factory``, or ``factory`` when the
start is the learning rate). The grids:

* Adam family (``adam``, ``adamw`` and its schedules, ``adamw_plateau``,
  ``schedule_free_adamw``, ``mechanize_adam`` = ``mechanize(adam(lr))``,
  ``tox_*`` driving adamw's rate, ``ae_adam*``): the (initial) learning rate
  ``np.logspace(-5, 0, 7)`` = 1e-5 ... 1, i.e. Adam's default 1e-3 times
  ``logspace(-2, 3, 7)``;
* every other learning-rate knob: the same relative range around its
  default, ``default * logspace(-2, 3, 7)``: ``sgdm`` (heavy ball) 1e-4 ... 10;
  ``ae_sgdm*`` (EMA momentum: α = 0.1 takes the steps of ``sgdm`` at 1e-2)
  1e-3 ... 100; ``adafactor``/``ae_adafactor`` 1e-4 ... 10;
* parameter-free peers, their initial estimate, ``default *
  logspace(-2, 4, 7)``: ``prodigy`` and ``dadapt_adamw`` ``estim_lr0`` (the
  paper's d0, default 1e-6), ``dog`` the ``reps_rel`` of
  ``init_step=('heuristic', reps_rel)`` (r_eps = reps_rel (1 + |x0|), default
  1e-6): all 1e-8 ... 1e-2; ``cocob`` ``alpha`` (default 100): COCOB has no
  initial-estimate argument, but its first step is ``-sign(g) / alpha`` per
  coordinate (``max(G + L, alpha L)`` with ``G = L = |g|``), so ``1/alpha``
  is its initial scale; alpha ``100 * logspace(-2, 4, 7)`` = 1 ... 1e6,
  listed from 1e6 down to 1 so that, as in every grid, the initial step
  grows along the grid (1e-6 ... 1; below alpha = 2 the cap is inactive, so
  alpha = 1 starts like alpha = 2, at 0.5).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import numpy as np
import optax
from optax import contrib

import ae_jax as ae


@dataclasses.dataclass(frozen=True)
class OptSpec:
  name: str
  factory: Callable[[float, int], Any]
  default_lr: float
  needs_value: bool = False
  is_ae: bool = False
  eval_params: Callable | None = None
  windowed: dict | None = None
  family: str = ""
  description: str = ""
  # The start knob (see the module doc): what is swept, its default, the 7
  # starts, and ``start_factory(start, steps)`` when the start is not the
  # factory's learning rate (None: ``factory`` itself).
  start_name: str = "learning rate"
  start_default: float | None = None
  start_grid: tuple = ()
  start_factory: Callable[[Any, int], Any] | None = None
  # ``factory`` takes ``batches_per_epoch=`` and is told the task's epoch
  # length (``for_task``): the ``<preset>@epochs`` specs.
  per_epoch: bool = False

  def for_task(self, task) -> "OptSpec":
    """This spec as run on ``task``: told its epoch length when
    ``per_epoch`` (``task.batches_per_epoch``, None with replacement)."""
    if not self.per_epoch:
      return self
    return dataclasses.replace(
        self, per_epoch=False, factory=functools.partial(
            self.factory, batches_per_epoch=task.batches_per_epoch))

  def at_start(self, start, steps: int):
    """The transformation started at ``start`` (may be traced: the sweep's
    vmapped grid)."""
    return (self.start_factory or self.factory)(start, steps)

  def start_spec(self) -> "OptSpec":
    """This spec with ``factory`` taking the start value: ``runner.run(task,
    spec.start_spec(), seeds, learning_rate=start)`` runs one start."""
    if self.start_factory is None:
      return self
    return dataclasses.replace(self, factory=self.start_factory,
                               start_factory=None)


REGISTRY: dict[str, OptSpec] = {}
# Laws of the canonical chain (knocked out: ``-no_<law>``) and opt-in laws
# (knocked in: ``+<law>``); ``ae.canonical_laws`` flags.
KNOCKOUTS = ("hypergradient", "noise")
ADD_ONS = ("resonance", "gauge", "coupling", "drive", "budget", "safety")
TUNED = "@tuned"
# ``<preset>@epochs``: the preset told the task's batches per epoch
# (``batches_per_epoch``; the same as the preset on tasks drawn with
# replacement).
EPOCHS = "@epochs"


# The start grids (see the module doc).
ADAM_GRID = tuple(float(v) for v in np.logspace(-5, 0, 7))
LR_DECADES = (-2, 3)         # other learning rates: default x 10^[-2 .. 3]
ESTIMATE_DECADES = (-2, 4)   # initial estimates: default x 10^[-2 .. 4]
# spec.family values on Adam's grid (ae_adamw's family is "adamw").
ADAM_FAMILIES = ("adam", "adamw", "schedule-free", "tensor-optix")


def relative_grid(default: float, decades=LR_DECADES) -> tuple:
  """``default * logspace(decades[0], decades[1], 7)``."""
  return tuple(float(default * v) for v in np.logspace(*decades, 7))


def register(spec: OptSpec) -> OptSpec:
  if not spec.start_grid:
    # A learning-rate knob: Adam's absolute grid for the Adam family, the
    # same relative range around the default for the others.
    grid = (ADAM_GRID if spec.family in ADAM_FAMILIES
            else relative_grid(spec.default_lr))
    spec = dataclasses.replace(spec, start_grid=grid)
  if spec.start_default is None:
    spec = dataclasses.replace(spec, start_default=spec.default_lr)
  REGISTRY[spec.name] = spec
  return spec


def names() -> list[str]:
  return sorted(REGISTRY)


def get(name: str) -> OptSpec:
  """The spec of ``name``; ``<name>@tuned`` returns the spec of ``name``
  renamed (the runner tunes its learning rate)."""
  base = name[:-len(TUNED)] if name.endswith(TUNED) else name
  if base not in REGISTRY:
    raise KeyError(f"unknown optimizer {name!r}; registered: "
                   f"{', '.join(names())}")
  spec = REGISTRY[base]
  return dataclasses.replace(spec, name=name) if base != name else spec


def is_tuned(name: str) -> bool:
  return name.endswith(TUNED)


WD = 1e-4  # the weight decay of optax.adamw's comparisons with ae_adamw


def _peer(name, factory, lr, family, description="", **kw):
  register(OptSpec(name, factory, lr, family=family, description=description,
                   **kw))


_peer("adamw", lambda lr, n: optax.adamw(lr, weight_decay=WD), 1e-3, "adam",
      "optax.adamw(lr, weight_decay=1e-4)")
_peer("adam", lambda lr, n: optax.adam(lr), 1e-3, "adam")
_peer("sgdm", lambda lr, n: optax.sgd(lr, momentum=0.9), 1e-2, "sgd",
      "optax.sgd(lr, momentum=0.9) (heavy ball)")
_peer("adafactor", lambda lr, n: optax.adafactor(lr), 1e-2, "adafactor",
      "optax.adafactor(lr)")
_peer("adamw_cosine",
      lambda lr, n: optax.adamw(optax.cosine_decay_schedule(lr, n),
                                weight_decay=WD), 1e-3, "adam",
      "adamw, cosine decay to 0 over the budget")
_peer("adamw_warmup_cosine",
      lambda lr, n: optax.adamw(optax.warmup_cosine_decay_schedule(
          0.0, lr, max(1, n // 20), n), weight_decay=WD), 1e-3, "adam",
      "adamw, 5% linear warm-up then cosine to 0")
_peer("adamw_step",
      lambda lr, n: optax.adamw(optax.piecewise_constant_schedule(
          lr, {n // 2: 0.1, (3 * n) // 4: 0.1}), weight_decay=WD), 1e-3,
      "adam", "adamw, lr x0.1 at 50% and 75% of the budget")
_peer("sgdm_cosine",
      lambda lr, n: optax.sgd(optax.cosine_decay_schedule(lr, n),
                              momentum=0.9), 1e-2, "sgd")
_D0 = 1e-6  # the default initial estimate of prodigy, dadapt_adamw and dog


def _estimate(name, default=_D0):
  return dict(start_name=name, start_default=default,
              start_grid=relative_grid(default, ESTIMATE_DECADES))


_peer("prodigy", lambda lr, n: contrib.prodigy(lr), 1.0, "parameter-free",
      "contrib.prodigy(lr); start knob estim_lr0 (d0)",
      start_factory=lambda d0, n: contrib.prodigy(1.0, estim_lr0=d0),
      **_estimate("estim_lr0 (initial d)", _D0))
_peer("dadapt_adamw", lambda lr, n: contrib.dadapt_adamw(lr), 1.0,
      "parameter-free", "contrib.dadapt_adamw(lr); start knob estim_lr0 (d0)",
      start_factory=lambda d0, n: contrib.dadapt_adamw(1.0, estim_lr0=d0),
      **_estimate("estim_lr0 (initial d)", _D0))
# mechanize's own s_init stays at its default (1e-6): the start knob is the
# base Adam's rate, as for the rest of the Adam family.
_peer("mechanize_adam", lambda lr, n: contrib.mechanize(optax.adam(lr)), 1.0,
      "parameter-free", "contrib.mechanize(optax.adam(lr)), base lr 1; start "
      "knob the base Adam rate (s_init 1e-6 fixed)", start_grid=ADAM_GRID,
      start_name="base Adam learning rate (s_init 1e-6)")
_peer("dog", lambda lr, n: contrib.dog(lr), 1.0, "parameter-free",
      "contrib.dog(lr); start knob reps_rel of init_step=('heuristic', "
      "reps_rel)",
      start_factory=lambda r, n: contrib.dog(1.0, init_step=("heuristic", r)),
      **_estimate("reps_rel (r_eps = reps_rel (1 + ‖x0‖))", _D0))
_COCOB_ALPHA = 100.0  # optax's default
_peer("cocob", lambda lr, n: contrib.cocob(lr), 1.0, "parameter-free",
      "contrib.cocob(lr) (alpha 100); start knob alpha: the first step is "
      "-sign(g)/alpha per coordinate",
      start_factory=lambda a, n: contrib.cocob(1.0, alpha=a),
      start_name="alpha (first step 1/alpha)", start_default=_COCOB_ALPHA,
      # descending alpha: ascending initial step, like every other grid
      start_grid=relative_grid(_COCOB_ALPHA, ESTIMATE_DECADES)[::-1])
_peer("schedule_free_adamw",
      lambda lr, n: contrib.schedule_free_adamw(lr), 0.0025, "schedule-free",
      "evaluated at schedule_free_eval_params",
      eval_params=contrib.schedule_free_eval_params)
_peer("adamw_plateau",
      lambda lr, n: optax.chain(
          optax.adamw(lr, weight_decay=WD),
          contrib.reduce_on_plateau(factor=0.5, patience=5,
                                    accumulation_size=max(1, n // 100))),
      1e-3, "adam",
      "adamw + reduce_on_plateau(factor 0.5, patience 5, loss averaged over "
      "1% of the budget)", needs_value=True)

# tensor-optix's online optimisers drive inject_hyperparams(adamw)'s rate,
# searched in log space within (1e-6, 1): every start of the Adam grid lies
# inside (they were (1e-5, 1e-1) before the robustness sweep).
_TOX_WINDOW = 50
for _kind in ("spsa", "adaptive"):
  _peer(f"tox_{_kind}",
        lambda lr, n: optax.inject_hyperparams(optax.adamw)(
            learning_rate=lr, weight_decay=WD), 1e-3, "tensor-optix",
        f"tensor-optix {_kind} suggests adamw's lr every {_TOX_WINDOW} "
        "steps from log(L_prev/L) on a held-out batch",
        windowed={"kind": _kind, "window": _TOX_WINDOW,
                  "bounds": (1e-6, 1.0)})


# ---- AE presets and knock-outs --------------------------------------------

# The coefficient names of each preset (they must match its specs).
AE_NAMES = {
    "ae_sgdm": ["learning_rate", "momentum", "sigma"],
    "ae_adam": ["learning_rate", "b1", "b2", "eps", "sigma"],
    "ae_adamw": ["learning_rate", "b1", "b2", "eps", "weight_decay", "sigma"],
}
_PRESET = {"ae_sgdm": ae.ae_sgdm, "ae_adam": ae.ae_adam,
           "ae_adamw": ae.ae_adamw}
# ae_sgdm at 0.1 (EMA momentum) takes the steps of sgdm at 1e-2 (heavy ball).
_DEFAULT_LR = {"ae_sgdm": 1e-1, "ae_adam": 1e-3, "ae_adamw": 1e-3}
# The preset's own law flags, so a knock-out differs from the preset only in
# the law it knocks out (ae_sgdm's reversal weights are not the chain's).
_BASE_FLAGS = {"ae_sgdm": {"reversal_weight": ae.laws.SGDM_REVERSAL_WEIGHT,
                           "progress_weight": ae.laws.SGDM_PROGRESS_WEIGHT,
                           "progress_reset": ae.laws.SGDM_PROGRESS_RESET,
                           "horizon": True},
               "ae_adam": {}, "ae_adamw": {}}


def _ae(name, preset, lr, extra=None, knock=None, add=None,
        per_epoch=False):
  extra = dict(extra or {})
  flags = dict(_BASE_FLAGS[preset])
  if knock:
    flags[knock] = False
  if add:
    flags[add] = True
  custom = bool(knock or add)

  def factory(learning_rate, steps, preset=preset, extra=extra, flags=flags,
              custom=custom, **epochs):
    if not custom:
      return _PRESET[preset](learning_rate, **extra, **epochs)
    chain = ae.canonical_laws(AE_NAMES[preset], **flags)
    return _PRESET[preset](learning_rate, laws_chain=chain, **extra)

  description = f"ae.{preset}"
  if knock:
    description += f", {knock} law off"
  if add:
    description += f", optional {add} law on"
  if per_epoch:
    description += ", told the task's batches per epoch"
  # The start is the preset's learning rate, traced in the sweep's vmapped
  # grid: the preset is then built at its static default and ``adapt``'s
  # step_scale carries start / default. Ω, the warm start and the brake are
  # relative to α0 and the step-size law and the clip are invariant to α's
  # scale, so this is the run started at ``start`` (equal to float
  # tolerance: tests/test_robustness_sweep.py); the travel cap of ae_sgdm
  # sees the step scale, which an outer optax.scale would hide.

  register(OptSpec(name, factory, lr, needs_value=True, is_ae=True,
                   family=preset.replace("ae_", ""),
                   description=description, per_epoch=per_epoch,
                   start_name="initial learning rate (α0)"))


for _p in _PRESET:
  _ae(_p, _p, _DEFAULT_LR[_p])
  _ae(f"{_p}{EPOCHS}", _p, _DEFAULT_LR[_p], per_epoch=True)
  for _law in KNOCKOUTS:
    _ae(f"{_p}-no_{_law}", _p, _DEFAULT_LR[_p], knock=_law)
  for _law in ADD_ONS:
    _ae(f"{_p}+{_law}", _p, _DEFAULT_LR[_p], add=_law)
# With sigma = 0 (the preset default) the noise law has nothing to act on:
# the noise knock-out is only meaningful from sigma_0 > 0.
_ae("ae_sgdm_noise", "ae_sgdm", 1e-1, extra={"sigma": 1e-3})
_ae("ae_sgdm_noise-no_noise", "ae_sgdm", 1e-1, extra={"sigma": 1e-3},
    knock="noise")


def _ae_adafactor(lr, steps):
  # Only the rate is injected: adafactor branches in Python on the others.
  static = ("min_dim_size_to_factor", "decay_rate", "decay_offset",
            "multiply_by_parameter_scale", "clipping_threshold", "momentum",
            "dtype_momentum", "weight_decay_rate", "eps", "factored",
            "weight_decay_mask")
  inner = optax.inject_hyperparams(optax.adafactor, static_args=static)(
      learning_rate=lr)
  lo, hi = ae.presets.LEARNING_RATE_RANGE
  spec = ae.Coefficient("learning_rate", lr * ae.presets.WARM_START, lr * lo,
                        lr * hi, lr, "log")
  return ae.adapt(inner, [spec], ae.canonical_laws(["learning_rate"]),
                  brake=ae.Brake(scale={"learning_rate": 0.1}),
                  filters=ae.presets.filter_config(None))


register(OptSpec("ae_adafactor", _ae_adafactor, 1e-2, needs_value=True,
                 is_ae=True, family="adafactor",
                 description="ae.adapt(inject_hyperparams(adafactor), [lr], "
                             "canonical_laws(['learning_rate'])), the presets' "
                             "warm start, Ω and clip",
                 start_name="initial learning rate (α0)"))


def tox_available() -> str | None:
  """``None`` if tensor-optix imports, else the reason it does not."""
  try:
    import tensor_optix  # noqa: F401
  except Exception as e:  # pylint: disable=broad-except
    return f"tensor-optix not installed ({type(e).__name__}: {e})"
  return None


GROUPS = {
    "defaults": ["adamw", "sgdm", "ae_sgdm", "ae_adam", "ae_adamw"],
    "schedules": ["adamw_cosine", "adamw_warmup_cosine", "adamw_step",
                  "adamw_plateau"],
    "parameter_free": ["prodigy", "dadapt_adamw", "mechanize_adam", "dog",
                       "schedule_free_adamw"],
    "tensor_optix": ["tox_spsa", "tox_adaptive"],
    "tuned": ["adamw@tuned", "sgdm@tuned", "ae_adamw@tuned",
              "ae_sgdm@tuned"],
}


def expand(names_: list[str]) -> list[str]:
  """Names with group names (``defaults``, ``schedules``, ...) expanded."""
  out = []
  for n in names_:
    out.extend(GROUPS.get(n, [n]))
  return out

"""The theory's experiment menu beyond optimizer comparisons.

Experiments 1–3, 7–10, 13, 16–18 compare optimizers on a task and run
through :mod:`ae_jax.bench.runner`. The rest of the menu evolves
coefficients that are not (only) an optimizer's: an RL loop's entropy
coefficient and clip range (experiment 6, AE-RL), a noise scale on a plateau
(11), the occupancy of (log α, log 1/(1 − β1)) over a sweep (12), gates of
residual blocks (14, AEONet), gates of a basis library and an L1 strength
(15, AEO-Eq), an augmentation strength (AE-Curriculum). Each lives in its own
module here and registers itself with :func:`register`::

  from ae_jax.bench import menu
  menu.ids()                       # ['6', '11', '12', '14', '15', 'curriculum']
  exp = menu.get("11")
  report = exp.run(menu.PROFILES["quick"], figures="figs")
  report["markdown"], report["predictions"]

``run(profile, figures)`` takes a profile (``seeds``: evaluation seeds
1..N; ``scale``: step multiplier, 1 on a CPU, 10 on a GPU) and a folder for
PNG figures (``None``: no figures), and returns a dict with ``markdown``
(the section's body: protocol, tables with 95 % intervals, figure links),
``predictions`` (rows ``{prediction, measured, verdict}`` for the
predictions table) and optionally ``figures`` (paths written).
``benchmarks/experiments.py`` runs them beside the optimizer experiments and
writes their sections into ``benchmarks/RESULTS.md``.

Protocol, as for the harness: every method of one experiment gets the same
initialisation, data order and budget per seed; seeds 1..N evaluate.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Sequence

import numpy as np

PROFILES = {
    # CPU-sized: each experiment a few minutes on 2 shared cores.
    "quick": dict(seeds=5, scale=1),
    # GPU-sized: 10x the steps or environment steps.
    "full": dict(seeds=10, scale=10),
}

# The modules that register experiments, imported by ids() / get().
MODULES = ("rl", "plateau", "coupling", "aeonet", "basis", "curriculum")


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One entry of the menu.

  Attributes:
    id: the theory's experiment number (or a name, e.g. ``curriculum``).
    title: the section title in RESULTS.md.
    run: ``run(profile: dict, figures: str | None) -> dict`` (see the module
      docstring).
    description: one line for ``ae-jax compare --list``.
  """

  id: str
  title: str
  run: Callable[[dict, Any], dict]
  description: str = ""


_REGISTRY: dict[str, Experiment] = {}


def save_figure(fig, figures: str, name: str, dpi: int = 110) -> str:
  """Lays out ``fig``, writes it to ``figures/name`` and closes it; the
  path."""
  import os  # pylint: disable=import-outside-toplevel
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig.tight_layout()
  path = os.path.join(figures, name)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path


def run_vmapped(train: Callable, methods: Sequence[str],
                all_methods: Sequence[str], seeds, data) -> dict:
  """``method -> {name: array (seeds, ...)}``: ``train(method_index, seed,
  data)`` jitted once and vmapped over every (method, seed) pair; the data
  is an argument, not a constant folded into the program. ``method_index``
  is the method's position in ``all_methods`` (traced: ``train`` selects
  with ``lax.switch`` or ``jnp.where``)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  ids = np.repeat([list(all_methods).index(m) for m in methods], len(seeds))
  seed_col = np.tile(np.asarray(seeds, np.uint32), len(methods))
  fn = jax.jit(jax.vmap(train, in_axes=(0, 0, None)))
  out = fn(jnp.asarray(ids, jnp.int32), jnp.asarray(seed_col), data)
  return {m: {k: np.asarray(v).reshape(len(methods), len(seeds),
                                       *v.shape[1:])[i]
              for k, v in out.items()}
          for i, m in enumerate(methods)}


def register(id: str, title: str, description: str = ""):
  """Decorator: registers ``run`` as the menu experiment ``id``."""

  def deco(run):
    _REGISTRY[id] = Experiment(id, title, run, description)
    return run

  return deco


def _load():
  # Each module registers itself on import; their optional packages
  # (gymnax for rl) are imported only when an experiment runs.
  for name in MODULES:
    importlib.import_module(f"{__name__}.{name}")


def ids() -> list[str]:
  """Ids of the registered experiments, in the menu's order."""
  _load()
  return list(_REGISTRY)


def get(id: str) -> Experiment:
  """The registered experiment ``id``."""
  _load()
  if id not in _REGISTRY:
    raise KeyError(f"unknown menu experiment {id!r}; registered: "
                   f"{', '.join(_REGISTRY)}")
  return _REGISTRY[id]

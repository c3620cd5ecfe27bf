"""The AE-10 safety law's ``forget`` trade-off (docs/laws.md, AE-10).

``ae_adamw`` with the safety law at several ``forget`` values f (and
without it), 5 seeds each, on two harness tasks:

* the hyper-cliff: ``regression`` from α = 1, 1000 steps (experiment 13);
* ``deep_linear`` at the default α = 1e-3, 1500 steps, where a running
  minimum (f = 1) pinned one seed's α at the floor of Ω.

Prints the mean and worst final test MSE per f. The f values are compared
on these evaluation tasks themselves: a probe, not a tuned choice.

  JAX_PLATFORMS=cpu python benchmarks/safety_forget.py [--forget 1 0.99 0.98]
"""

from __future__ import annotations

import argparse

import numpy as np

import ae_jax as ae
from ae_jax.bench import optimizers as O
from ae_jax.bench import runner as R
from ae_jax.bench import tasks as T

NAMES = O.AE_NAMES["ae_adamw"]


def spec(forget: float | None) -> O.OptSpec:
  """ae_adamw with the safety law at ``forget`` (None: without it)."""
  def factory(lr, steps):
    del steps
    chain = ae.canonical_laws(NAMES, gauge=False, safety=forget is not None,
                              safety_forget=1.0 if forget is None else forget)
    return ae.ae_adamw(lr, laws_chain=chain)
  name = "no safety" if forget is None else f"forget={forget:g}"
  return O.OptSpec(name, factory, 1e-3, needs_value=True, is_ae=True)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--forget", type=float, nargs="+",
                  default=[1.0, 0.995, 0.99, 0.98])
  ap.add_argument("--seeds", type=int, default=5)
  args = ap.parse_args(argv)
  seeds = list(range(1, args.seeds + 1))
  cases = [("hyper-cliff", T.get("regression", steps=1000), 1.0),
           ("deep linear", T.get("deep_linear"), None)]
  print(f"{'':12s}" + "".join(f"{c:>26s}" for c, _, _ in cases))
  print(f"{'':12s}" + "".join(f"{'mean (worst) final MSE':>26s}"
                              for _ in cases))
  for forget in [None] + args.forget:
    cells = []
    for _, task, lr in cases:
      final = R.run(task, spec(forget), seeds, learning_rate=lr).metric[:, -1]
      cells.append(f"{np.mean(final):.4g} ({np.max(final):.3g})")
    label = "law off" if forget is None else f"f = {forget:g}"
    print(f"{label:12s}" + "".join(f"{c:>26s}" for c in cells), flush=True)


if __name__ == "__main__":
  main()

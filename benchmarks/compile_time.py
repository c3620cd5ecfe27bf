"""Compile time of the jitted step against the number of pytree leaves.

Jits ``update + apply_updates`` of ``ae_jax.ae_adamw`` and ``optax.adamw``,
``ae_jax.ae_sgdm`` and ``optax.sgd(momentum=0.9)`` on dicts of 50, 200 and
2,000 small float32 leaves (distinct shapes ``(7 + i, 16)`` up to 200 leaves,
where every shape is its own kernel, and 2,000 leaves of one shape ``(8, 16)``),
one process, one optimizer after the other, and prints the seconds of
``lower(...).compile()`` with each AE preset's ratio to its base: with
XLA:CPU's default (new) fusion emitters, and with its legacy ones
(``compiler_options={"xla_cpu_use_fusion_emitters": False}``, which the test
suite sets for the whole process and a user can pass to ``jax.jit``).

  JAX_PLATFORMS=cpu python benchmarks/compile_time.py
  JAX_PLATFORMS=cpu python benchmarks/compile_time.py --leaves 50 200
  JAX_PLATFORMS=cpu python benchmarks/compile_time.py --default-emitters-only
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import jax
import jax.numpy as jnp
import optax

import ae_jax as ae

PAIRS = (("ae_adamw", "optax.adamw"), ("ae_sgdm", "optax.sgd(momentum)"))


def optimizers():
  return {
      "ae_adamw": ae.ae_adamw(1e-3),
      "optax.adamw": optax.adamw(1e-3),
      "ae_sgdm": ae.ae_sgdm(0.1),
      "optax.sgd(momentum)": optax.sgd(0.1, momentum=0.9),
  }


def make_params(leaves: int):
  """Distinct shapes up to 200 leaves, one repeated shape above."""
  if leaves <= 200:
    return {f"w{i:04d}": jnp.full((7 + i, 16), 0.01) for i in range(leaves)}
  return {f"w{i:04d}": jnp.full((8, 16), 0.01) for i in range(leaves)}


LEGACY_EMITTERS = {"xla_cpu_use_fusion_emitters": False}


def compile_seconds(tx, params, needs_value: bool, options=None) -> float:
  state = tx.init(params)
  grads = jax.tree.map(lambda p: p * 0.1, params)
  extra = {"value": jnp.float32(1.0)} if needs_value else {}

  def step(p, s, g):
    updates, s = tx.update(g, s, p, **extra)
    return optax.apply_updates(p, updates), s

  start = time.perf_counter()
  jax.jit(step).lower(params, state, grads).compile(compiler_options=options)
  return time.perf_counter() - start


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--leaves", type=int, nargs="+", default=[50, 200, 2000])
  parser.add_argument("--default-emitters-only", action="store_true",
                      help="skip the legacy emitters' compiles (their columns "
                           "print as -); at 2,000 leaves they are most of "
                           "the run")
  args = parser.parse_args(argv)
  print(f"{datetime.date.today()} | {platform.machine()}, {os.cpu_count()} "
        f"cores | {jax.devices()[0].device_kind} | jax {jax.__version__} | "
        f"optax {optax.__version__}\n")
  print("| leaves | shapes | optimizer | compile s | ratio to base | "
        "compile s, legacy emitters | ratio to base, legacy | base |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- |")
  for leaves in args.leaves:
    params = make_params(leaves)
    shapes = "distinct" if leaves <= 200 else "one"
    seconds, legacy = {}, {}
    for name, tx in optimizers().items():
      seconds[name] = compile_seconds(tx, params, name.startswith("ae_"))
      if not args.default_emitters_only:
        legacy[name] = compile_seconds(tx, params, name.startswith("ae_"),
                                       LEGACY_EMITTERS)
    for name, base in PAIRS:
      for n in (name, base):
        old = (f"{legacy[n]:.2f} | {legacy[n] / legacy[base]:.2f}"
               if legacy else "- | -")
        print(f"| {leaves} | {shapes} | {n} | {seconds[n]:.2f} | "
              f"{seconds[n] / seconds[base]:.2f} | {old} | {base} |",
              flush=True)


if __name__ == "__main__":
  main()

"""Per-step cost and state memory of AE-AdamW against Optax peers (experiment 17).

Times, in one run and interleaved round by round, the jitted step
``update + apply_updates`` of

* ``ae_jax.ae_adamw`` (the canonical preset, the reference's timing),
* ``ae_jax.ae_adamw(delayed=True)`` (coefficients applied one step later),
* ``optax.adamw``,
* ``optax.inject_hyperparams(optax.adamw)``,
* ``optax.contrib.prodigy``,
* ``ae_jax.ae_sgdm`` and its base ``optax.sgd(momentum=0.9)``,

on parameter pytrees of 10K, 100K, 1M and 10M float32 entries, and prints,
as a markdown table, each median per-step time with its ratio to its base
(``optax.adamw`` for the Adam family and the peers, ``optax.sgd`` with
momentum for ``ae_sgdm``), the number of XLA kernels of the compiled step
(fusions, copies and other non-trivial instructions of its entry
computation) and how many the AE step adds over its base, the bytes of each
state and how many parameter-sized buffers (copies of the parameters) it
holds.

  JAX_PLATFORMS=cpu python benchmarks/overhead.py            # 1e4 ... 1e7
  JAX_PLATFORMS=cpu python benchmarks/overhead.py --sizes 1e6 --rounds 5
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ae_jax as ae


def make_params(total: int, leaves: int = 4, seed: int = 0):
  """A dict of ``leaves`` 2-D float32 arrays with ``total`` entries in all."""
  per = total // leaves
  cols = 1000
  rows = max(per // cols, 1)
  keys = jax.random.split(jax.random.PRNGKey(seed), leaves)
  return {f"w{i}": jax.random.normal(k, (rows, cols), jnp.float32) * 0.01
          for i, k in enumerate(keys)}


def optimizers(lr: float = 1e-3):
  """``name -> (transformation, needs value=, name of its base)``."""
  return {
      "ae_adamw": (ae.ae_adamw(lr), True, "optax.adamw"),
      "ae_adamw(delayed=True)": (ae.ae_adamw(lr, delayed=True), True,
                                 "optax.adamw"),
      "optax.adamw": (optax.adamw(lr), False, "optax.adamw"),
      "inject_hyperparams(adamw)": (
          optax.inject_hyperparams(optax.adamw)(learning_rate=lr), False,
          "optax.adamw"),
      "contrib.prodigy": (optax.contrib.prodigy(), False, "optax.adamw"),
      "ae_sgdm": (ae.ae_sgdm(0.1), True, "optax.sgd(momentum)"),
      "optax.sgd(momentum)": (optax.sgd(0.1, momentum=0.9), False,
                              "optax.sgd(momentum)"),
  }


# Entry-computation instructions that are not kernels of their own.
_NOT_KERNELS = ("parameter", "constant", "tuple", "get-tuple-element",
                "bitcast")


def kernel_count(compiled) -> int:
  """XLA kernels of a compiled step: the instructions of its entry
  computation other than parameters, constants, tuples and bitcasts."""
  text = compiled.as_text()
  entry = text[text.index("ENTRY"):].split("\n}", 1)[0].splitlines()[1:]
  count = 0
  for line in entry:
    match = re.search(r" = .*?\b([a-z][a-z0-9-]*)\(", line)
    count += bool(match) and match.group(1) not in _NOT_KERNELS
  return count


def make_step(tx, needs_value: bool):
  def step(params, state, grads, loss):
    extra = {"value": loss} if needs_value else {}
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def state_report(state, params) -> tuple[int, int]:
  """Bytes of ``state`` and the number of parameter-sized buffers in it."""
  shapes = {x.shape for x in jax.tree.leaves(params)}
  leaves = jax.tree.leaves(state)
  nbytes = sum(x.size * x.dtype.itemsize for x in leaves)
  param_sized = sum(1 for x in leaves if x.shape in shapes)
  per_param = len(jax.tree.leaves(params))
  return nbytes, param_sized // max(per_param, 1)


def bench(total: int, rounds: int, calls: int) -> list[dict]:
  params0 = make_params(total)
  grads = jax.tree.map(lambda p: p * 0.1 + 1e-3, params0)
  loss = jnp.float32(1.0)
  runs = {}
  bases = {}
  for name, (tx, needs_value, base_name) in optimizers().items():
    params = jax.tree.map(jnp.copy, params0)
    # Own copies: prodigy's state holds the initial params themselves, and
    # donating one buffer twice is an error.
    state = jax.tree.map(jnp.copy, tx.init(params))
    nbytes, copies = state_report(state, params)
    step = make_step(tx, needs_value)
    kernels = kernel_count(step.lower(params, state, grads, loss).compile())
    bases[name] = base_name
    params, state = step(params, state, grads, loss)  # compile + warm up
    jax.block_until_ready(params)
    runs[name] = dict(step=step, params=params, state=state, times=[],
                      nbytes=nbytes, copies=copies, kernels=kernels)
  for _ in range(rounds):  # interleaved: every optimizer once per round
    for name, r in runs.items():
      start = time.perf_counter()
      params, state = r["params"], r["state"]
      for _ in range(calls):
        params, state = r["step"](params, state, grads, loss)
      jax.block_until_ready(params)
      r["times"].append((time.perf_counter() - start) / calls)
      r["params"], r["state"] = params, state
  rows = []
  for name, r in runs.items():
    base = runs[bases[name]]
    med = statistics.median(r["times"])
    # Ratio per round against the same round's base: robust to drift.
    ratios = [t / b for t, b in zip(r["times"], base["times"])]
    rows.append(dict(size=total, optimizer=name, base=bases[name],
                     ms=med * 1e3, ratio=med / statistics.median(base["times"]),
                     ratio_rounds=statistics.median(ratios),
                     kernels=r["kernels"],
                     added_kernels=r["kernels"] - base["kernels"],
                     state_mb=r["nbytes"] / 2**20, param_copies=r["copies"]))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=float, nargs="+",
                      default=[1e4, 1e5, 1e6, 1e7])
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--calls", type=int, default=5)
  args = parser.parse_args(argv)
  print(f"{datetime.date.today()} | {platform.machine()}, "
        f"{os.cpu_count()} cores | {jax.devices()[0].device_kind} | jax "
        f"{jax.__version__} | optax {optax.__version__} | rounds "
        f"{args.rounds} x {args.calls} calls\n")
  print("| params | optimizer | ms/step (median) | base | ratio to base | "
        "ratio per round (median) | XLA kernels | added over base | "
        "state MB | parameter-sized buffers |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for size in args.sizes:
    for row in bench(int(size), args.rounds, args.calls):
      print(f"| {row['size']:.0e} | {row['optimizer']} | {row['ms']:.3f} | "
            f"{row['base']} | {row['ratio']:.3f} | {row['ratio_rounds']:.3f} "
            f"| {row['kernels']} | {row['added_kernels']:+d} | "
            f"{row['state_mb']:.1f} | {row['param_copies']} |", flush=True)


if __name__ == "__main__":
  main()

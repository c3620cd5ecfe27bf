"""Meta-gradient cost of long unrolls (issue #4 item 4).

Time and compiled peak temporary memory of ``jax.grad`` of the meta-objective
with respect to every gain, for K ∈ {50, 200, 1000} steps of ``ae_sgdm``
(smooth mode) on one task of ``ae.meta.mlp_family`` (a 4-16-1 tanh MLP,
batch 32), side by side:

* ``plain``: one ``lax.scan``, every step's residuals kept (memory ∝ K);
* ``remat``: ``ae.meta.unroll`` with √K segments, each checkpointed
  (memory ∝ √K, about one extra forward pass);
* ``truncate=50``: truncated back-propagation through 50-step windows
  (biased, see ``ae.meta.unroll``).

Memory is XLA's ``memory_analysis().temp_size_in_bytes`` of the compiled
gradient (what the backward pass holds), not a process RSS.

  JAX_PLATFORMS=cpu python benchmarks/meta.py [--steps 50 200 1000]
"""

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import ae_jax as ae
from ae_jax import meta

MODES = {"plain": dict(remat=False), "remat": dict(remat=True),
         "truncate=50": dict(remat=True, truncate=50)}


def measure(steps: int, mode: str, repeats: int = 3) -> dict:
  family = meta.mlp_family()
  task = family.sample(jax.random.PRNGKey(0))
  config = meta.InnerConfig(steps=steps, learning_rate=0.02, **MODES[mode])
  gains = ae.default_gains(meta.coefficient_names(config))
  grad = jax.jit(jax.grad(
      lambda g: meta.meta_objective(g, task, family, config)))
  start = time.perf_counter()
  compiled = grad.lower(gains).compile()
  compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  temp = analysis.temp_size_in_bytes if analysis is not None else float("nan")
  jax.block_until_ready(compiled(gains))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(gains))
    times.append(time.perf_counter() - start)
  return dict(compile_s=compile_s, run_s=float(np.median(times)),
              temp_mib=temp / 2**20)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, nargs="+", default=[50, 200, 1000])
  args = parser.parse_args(argv)
  print(f"# {jax.devices()[0].platform}, {platform.processor() or platform.machine()}, "
        f"jax {jax.__version__}")
  print("| K | mode | meta-grad time (s) | time / plain | peak temp memory "
        "(MiB) | memory / plain | compile (s) |")
  print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
  for steps in args.steps:
    rows = {mode: measure(steps, mode) for mode in MODES}
    base = rows["plain"]
    for mode, row in rows.items():
      print(f"| {steps} | {mode} | {row['run_s']:.3f} | "
            f"{row['run_s'] / base['run_s']:.2f} | {row['temp_mib']:.2f} | "
            f"{row['temp_mib'] / base['temp_mib']:.3f} | "
            f"{row['compile_s']:.1f} |", flush=True)


if __name__ == "__main__":
  main()

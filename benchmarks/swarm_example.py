"""The reference AE-Swarm example, measured (issue #3 item 7).

4 members, MLP 10-256-1 on y = Xw + 0.1 eps, AdamW + AE, 6 rounds x 4000
steps, beta 5, kappa 0.05, B_min 400; against 4 independent AE runs (same
priors, init, data order; 6000 steps each) and 4 plain AdamW runs; 5 seeds.
Prints the markdown table and the paired verdict that benchmarks/RESULTS.md
quotes. The same as ``ae-jax swarm``.

  python benchmarks/swarm_example.py            # the full example
  python benchmarks/swarm_example.py --quick    # 2 seeds, 2 rounds x 400
"""

import argparse
import datetime
import os
import platform
import time

import jax

from ae_jax.bench import swarm_demo


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--out", default=None, help="PNG of seed 0's history")
  args = parser.parse_args(argv)
  kw = (dict(seeds=2, rounds=2, total_steps=400) if args.quick
        else dict(seeds=5))
  print(f"{datetime.date.today()}  jax {jax.__version__}, "
        f"{jax.devices()[0].platform}, {os.cpu_count()} CPUs "
        f"({platform.machine()})")
  start = time.perf_counter()
  swarm_demo.run_example(out=args.out, progress=False, **kw)
  print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()

"""``python -m ae_jax``: the ``ae-jax`` command line."""

import sys

from ae_jax.bench.cli import main

if __name__ == "__main__":
  sys.exit(main())

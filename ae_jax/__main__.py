"""``python -m ae_jax``: the ``ae-jax`` command line."""

import sys

from ae_jax.cli import main

if __name__ == "__main__":
  sys.exit(main())

"""Shared fixtures, and the XLA flags of the whole suite."""

import os

# The suite is compile-bound: most tests, notebooks and harness runs build
# an AE optimizer and pay for compiling its step, then run it on small
# shapes for a few hundred steps. Two XLA flags trade execution speed, which
# those runs barely need, for compile time (jaxlib 0.10, CPU, 2 cores):
# * the legacy fusion emitters compile that step in about half the time of
#   the default ones (ae_adamw on a 3-leaf MLP: 0.9 s against 1.8 s) and
#   execute the same HLO;
# * LLVM's optimization level 0 instead of 2: notebooks/harness_models.py
#   spent 46 of its 58 s in 27 backend compiles, 12 s at level 0 (32 s in
#   all). The whole suite: 1002 s at level 2, 838 s at level 1, 681 s at
#   level 0, where the jits that run large arrays or many steps (the
#   50,000-element leaf of test_citizen's overflow test, test_faults' 18
#   runs of 1,500 steps) compile at level 2 themselves, as does a test that
#   pins rounding to a few ulp: the fixture ``default_optimization`` below.
# Set before JAX starts its backend; inherited by the notebook kernels and
# subprocess tests through the environment. A flag the caller already set
# wins: XLA_FLAGS=--xla_cpu_use_fusion_emitters=true runs the suite on the
# default emitters, --xla_backend_optimization_level=2 at LLVM's default.
# Older jaxlibs (before 0.6), whose CPU backend has only the legacy
# emitters and would refuse the unknown flag, are left alone.
FAST_COMPILE_FLAGS = {"xla_cpu_use_fusion_emitters": "false",
                      "xla_backend_optimization_level": "0"}


def _jaxlib_at_least(major: int, minor: int) -> bool:
  from importlib import metadata
  try:
    parts = metadata.version("jaxlib").split(".")[:2]
    return tuple(int(p) for p in parts) >= (major, minor)
  except (metadata.PackageNotFoundError, ValueError):
    return False


if _jaxlib_at_least(0, 6):
  _flags = os.environ.get("XLA_FLAGS", "").split()
  _flags += [f"--{name}={value}" for name, value in FAST_COMPILE_FLAGS.items()
             if not any(f"--{name}=" in f for f in _flags)]
  os.environ["XLA_FLAGS"] = " ".join(_flags)

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest


@pytest.fixture
def x64():
  """float64 for one test; the suite otherwise runs in float32."""
  previous = jax.config.read("jax_enable_x64")
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def default_optimization():
  """``compiler_options`` of LLVM's default optimization level, which the
  suite's flags turn off: for a jit that executes long or large, or whose
  rounding a test pins (as users compile it)."""
  return {"xla_backend_optimization_level": 2}

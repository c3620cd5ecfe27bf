"""Shared fixtures, and the XLA flags of the whole suite."""

import os

# The suite is compile-bound: most tests, notebooks and harness runs build
# an AE optimizer and pay for compiling its step. On jaxlib 0.10's CPU
# backend the legacy fusion emitters compile that step in about half the
# time of the default ones (ae_adamw on a 3-leaf MLP: 0.9 s against 1.8 s;
# tests/test_presets.py + test_controller.py: 25 s against 53 s wall) and
# execute the same HLO. Set before JAX starts its backend; inherited by the
# notebook kernels and subprocess tests through the environment. A flag the
# caller already set wins: XLA_FLAGS=--xla_cpu_use_fusion_emitters=true runs
# the suite on the default emitters. Older jaxlibs (before 0.6), whose CPU
# backend has only the legacy emitters and would refuse the unknown flag,
# are left alone.
FAST_COMPILE_FLAG = "--xla_cpu_use_fusion_emitters=false"


def _jaxlib_at_least(major: int, minor: int) -> bool:
  from importlib import metadata
  try:
    parts = metadata.version("jaxlib").split(".")[:2]
    return tuple(int(p) for p in parts) >= (major, minor)
  except (metadata.PackageNotFoundError, ValueError):
    return False


if ("xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", "")
    and _jaxlib_at_least(0, 6)):
  os.environ["XLA_FLAGS"] = " ".join(
      f for f in (os.environ.get("XLA_FLAGS"), FAST_COMPILE_FLAG) if f)

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest


@pytest.fixture
def x64():
  """float64 for one test; the suite otherwise runs in float32."""
  previous = jax.config.read("jax_enable_x64")
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)

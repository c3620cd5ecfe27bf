"""Shared fixtures."""

import jax
import pytest


@pytest.fixture
def x64():
  """float64 for one test; the suite otherwise runs in float32."""
  previous = jax.config.read("jax_enable_x64")
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)

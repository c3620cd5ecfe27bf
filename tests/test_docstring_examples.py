"""The presets' docstring examples run and print what they claim.

The examples are what a user copies first; a stale one (an API that moved,
a claim the laws no longer meet) fails here rather than in a notebook.
"""
import doctest

import pytest

from ae_jax import presets


@pytest.mark.parametrize("name", ["ae_sgdm", "ae_adam", "ae_adamw"])
def test_preset_example_runs(name):
  fn = getattr(presets, name)
  finder = doctest.DocTestFinder(recurse=False)
  (test,) = finder.find(fn, name, globs={})
  assert test.examples, f"{name} has no Examples section"
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
  runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, f"{name}'s docstring example failed"

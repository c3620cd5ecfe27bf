"""The library imports only its core dependencies; the applications live in
``ae_jax.bench`` and the command line says which extra it needs."""

import subprocess
import sys

import pytest

from ae_jax.bench import cli

_EXTRAS = ("sklearn", "matplotlib", "tqdm", "flax", "optuna", "torch",
           "ae_jax.bench")


def test_import_ae_jax_needs_only_the_core_dependencies():
  # Every library module, imported in a fresh interpreter.
  code = ("import sys, ae_jax, ae_jax.swarm, ae_jax.meta, ae_jax.machine, "
          "ae_jax.tape, ae_jax.monitor, ae_jax.reference; "
          f"print([m for m in {_EXTRAS!r} if m in sys.modules])")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True, env={"JAX_PLATFORMS": "cpu"})
  assert out.stdout.strip() == "[]", out.stdout


def test_a_missing_bench_dependency_names_the_extra(monkeypatch, capsys):
  def handler(args):
    raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
  parser = cli.build_parser()
  args = parser.parse_args(["demo"])
  monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(args, handler))
  assert cli.main(["demo"]) == 2
  assert "pip install 'ae-jax[bench]'" in capsys.readouterr().err


def test_other_import_errors_are_not_hidden(monkeypatch):
  def handler(args):
    raise ModuleNotFoundError("No module named 'jaxx'", name="jaxx")
  args = cli.build_parser().parse_args(["demo"])
  monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(args, handler))
  with pytest.raises(ModuleNotFoundError):
    cli.main(["demo"])


class _Fixed:
  """A parser stand-in that returns ``args`` with ``handler``."""

  def __init__(self, args, handler):
    args.handler = handler
    self._args = args

  def parse_args(self, argv):
    del argv
    return self._args

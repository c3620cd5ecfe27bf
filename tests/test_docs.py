"""The docs site documents every public symbol (docs/conf.py generates an
API entry for each; here each must have a docstring), and refers to nothing
outside the repository."""

import importlib
import importlib.util
import inspect
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _conf():
  spec = importlib.util.spec_from_file_location(
      "conf", os.path.join(ROOT, "docs", "conf.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_public_symbol_has_a_docstring():
  conf = _conf()
  missing = []
  for module_name in conf.PUBLIC_MODULES:
    module = importlib.import_module(module_name)
    assert inspect.getdoc(module), module_name
    for name, _ in conf.public_symbols(module_name):
      if not inspect.getdoc(getattr(module, name)):
        missing.append(f"{module_name}.{name}")
  assert not missing, missing


def test_every_public_module_is_on_the_site():
  conf = _conf()
  import ae_jax  # pylint: disable=import-outside-toplevel
  for name in ae_jax.__all__:
    obj = getattr(ae_jax, name)
    if inspect.ismodule(obj):
      assert obj.__name__ in conf.PUBLIC_MODULES, obj.__name__


def test_docs_reference_nothing_outside_the_repository():
  for name in os.listdir(os.path.join(ROOT, "docs")):
    if name.endswith(".md"):
      with open(os.path.join(ROOT, "docs", name), encoding="utf-8") as f:
        text = f.read()
      assert "../shared" not in text, name


def test_site_builds_without_warnings(tmp_path):
  pytest.importorskip("sphinx")
  pytest.importorskip("myst_nb")
  pytest.importorskip("furo")
  from sphinx.cmd.build import build_main  # pylint: disable=import-outside-toplevel
  rc = build_main(["-W", "--keep-going", "-q", "-b", "html",
                   os.path.join(ROOT, "docs"), str(tmp_path / "html")])
  assert rc == 0
  html = (tmp_path / "html" / "api" / "ae_jax.html").read_text("utf-8")
  assert re.search(r"ae_adamw", html)

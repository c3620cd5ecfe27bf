"""Sphinx configuration of the ae_jax docs site (``docs/``).

Build: ``pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html``.
The API pages are generated here from each public module (every public
symbol gets an entry, so coverage holds by construction; ``tests/test_docs.py``
checks it), and the notebooks (jupytext ``py:percent`` files in
``notebooks/``) are rendered by myst-nb without executing them (CI executes
them in ``tests/test_notebooks.py``).
"""

import inspect
import importlib
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)  # ae_jax itself is installed (pip install -e)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

project = "ae_jax"
author = "the ae_jax authors"
copyright = "2026, the ae_jax authors"  # pylint: disable=redefined-builtin

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": False}
myst_enable_extensions = ["dollarmath", "colon_fence"]
nb_execution_mode = "off"
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
html_theme = "furo"
html_title = "ae_jax"
# conf.py is Python, not a notebook (myst-nb reads docs/**/*.py as notebooks).
exclude_patterns = ["_build", "conf.py", "Thumbs.db", ".DS_Store"]
# The jupytext notebooks carry no language_info; their cells are Python.
suppress_warnings = ["myst.header", "mystnb.lexer"]

# Public modules and what their API page documents.
PUBLIC_MODULES = {
    "ae_jax": "Presets, adapt, the controller and state access",
    "ae_jax.laws": "The AE laws (AE-2 … AE-10)",
    "ae_jax.measurement": "AE-1: signals and gradient statistics",
    "ae_jax.coefficient": "Coefficient specs and coordinates",
    "ae_jax._controller": "The coefficient controller (``ae.controller``)",
    "ae_jax._adapt": "The normal form: any Optax optimizer as AE (``ae.adapt``)",
    "ae_jax.presets": "AE-SGDm, AE-Adam, AE-AdamW and their gains",
    "ae_jax.monitor": "Logging to CSV, TensorBoard and W&B",
    "ae_jax.train_state": "Flax Linen TrainState",
    "ae_jax.meta": "AE-9: meta-gradients through training",
    "ae_jax.swarm": "AE-Swarm populations",
    "ae_jax.machine": "The AE Machine",
    "ae_jax.tape": "A differentiable tape",
    "ae_jax.reference": "Parity with the reference implementation",
    "ae_jax.bench": "Applications: the harness, the demos, the command line",
    "ae_jax.bench.menu": "The experiment menu: AE-RL, plateau, coupling, AEONet, AEO-Eq, curriculum",
}


def public_symbols(module_name):
  """(name, kind) of every public function and class a module defines (or,
  for a package, exports in ``__all__``)."""
  module = importlib.import_module(module_name)
  if hasattr(module, "__all__"):  # a package re-exporting its modules' names
    names = [n for n in module.__all__
             if inspect.isfunction(getattr(module, n))
             or inspect.isclass(getattr(module, n))]
  else:
    names = [n for n, obj in vars(module).items()
             if not n.startswith("_") and not inspect.ismodule(obj)
             and getattr(obj, "__module__", None) == module_name
             and (inspect.isfunction(obj) or inspect.isclass(obj))]
  out = []
  for n in names:
    obj = getattr(module, n)
    out.append((n, "class" if inspect.isclass(obj) else "function"))
  return out


def _write_api(app):
  del app
  api = os.path.join(HERE, "api")
  shutil.rmtree(api, ignore_errors=True)  # no page of a module that moved
  os.makedirs(api, exist_ok=True)
  index = ["# API reference", "", "```{toctree}", ":maxdepth: 1", ""]
  for module_name, title in PUBLIC_MODULES.items():
    index.append(module_name)
    lines = [f"# `{module_name}` — {title}", "",
             "```{eval-rst}", f".. automodule:: {module_name}", ""]
    for name, kind in public_symbols(module_name):
      target = f"{module_name}.{name}"
      if module_name == "ae_jax":
        obj = getattr(importlib.import_module("ae_jax"), name)
        target = f"{obj.__module__}.{obj.__qualname__}"
        lines += [f".. auto{kind}:: {target}", "   :no-index:", ""]
      elif kind == "class":
        lines += [f".. autoclass:: {target}", "   :members:", ""]
      else:
        lines += [f".. autofunction:: {target}", ""]
    lines.append("```")
    with open(os.path.join(api, f"{module_name}.md"), "w",
              encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
  index.append("```")
  with open(os.path.join(api, "index.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(index) + "\n")


def _copy_notebooks(app):
  del app
  target = os.path.join(HERE, "notebooks")
  os.makedirs(target, exist_ok=True)
  for name in sorted(os.listdir(os.path.join(ROOT, "notebooks"))):
    if name.endswith(".py"):
      shutil.copy(os.path.join(ROOT, "notebooks", name),
                  os.path.join(target, name))


def setup(app):
  app.connect("builder-inited", _write_api)
  app.connect("builder-inited", _copy_notebooks)

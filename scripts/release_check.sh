#!/usr/bin/env bash
# Release hygiene: build the sdist and the wheel, check them with twine,
# install the wheel into a fresh virtual environment (outside the source
# tree) and run `ae-jax demo` from there.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mktemp -d)"
python -m pip install -q build twine
python -m build --outdir "$out/dist" .
python -m twine check --strict "$out"/dist/*
python -m venv "$out/venv"
"$out/venv/bin/python" -m pip install -q --upgrade pip
"$out/venv/bin/python" -m pip install -q "$out"/dist/*.whl
(cd "$out" && JAX_PLATFORMS=cpu "$out/venv/bin/ae-jax" demo)
echo "release check passed: $(ls "$out"/dist)"

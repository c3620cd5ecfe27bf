#!/usr/bin/env bash
# Release hygiene: build the sdist and the wheel, check them with twine,
# install the wheel into a fresh virtual environment (outside the source
# tree): the library alone must import with only its core dependencies; with
# the bench extra, `ae-jax compare --list` and `ae-jax demo` run from there.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mktemp -d)"
python -m pip install -q build twine
python -m build --outdir "$out/dist" .
python -m twine check --strict "$out"/dist/*
python -m venv "$out/venv"
"$out/venv/bin/python" -m pip install -q --upgrade pip
wheel="$(ls "$out"/dist/*.whl)"
"$out/venv/bin/python" -m pip install -q "$wheel"
(cd "$out" && JAX_PLATFORMS=cpu "$out/venv/bin/python" -c "
import sys, ae_jax, ae_jax.swarm, ae_jax.meta, ae_jax.machine, ae_jax.tape
extra = [m for m in ('sklearn', 'matplotlib', 'tqdm', 'flax') if m in sys.modules]
assert not extra, extra
print('import ae_jax: core dependencies only')")
"$out/venv/bin/python" -m pip install -q "$wheel[bench]"
(cd "$out" && JAX_PLATFORMS=cpu "$out/venv/bin/ae-jax" compare --list)
(cd "$out" && JAX_PLATFORMS=cpu "$out/venv/bin/ae-jax" demo)
echo "release check passed: $(ls "$out"/dist)"

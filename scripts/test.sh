#!/usr/bin/env bash
# Set up (if needed) and run every check: lint (ruff), types (mypy, strict where the math and the
# decisions live), the whole test suite (slow end-to-end tests included), and the light install.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/mypy
.venv/bin/python -m pytest --durations=30 "$@"
bash scripts/test_light.sh

#!/usr/bin/env bash
# The light-install promise, checked: a fresh venv with only `pip install .` (no extras: no torch,
# transformers, mergekit, lm-eval, pydantic, matplotlib) computes kinship. It runs the kinship tests
# and the CLI's `kinship` and `matrix` on the shipped zoo there. Idempotent: the venv is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
V=.venv-light
if [ ! -x "$V/bin/python" ]; then
  "$PY" -m venv "$V"
  "$V/bin/python" -m pip install -q --upgrade pip
fi
# Not editable: what a user gets from `pip install kinmerge` (the C kernel is built here too).
"$V/bin/python" -m pip uninstall -q -y kinmerge 2>/dev/null || true
"$V/bin/python" -m pip install -q . pytest hypothesis
"$V/bin/python" - <<'PY'
import importlib.util, sys
heavy = [m for m in ("torch", "transformers", "mergekit", "lm_eval", "pydantic", "matplotlib") if importlib.util.find_spec(m)]
sys.exit(f"the light install pulled in {heavy}") if heavy else print("light install: no heavy packages")
PY
zoo=src/kinmerge/data/zoo
"$V/bin/kinmerge" kinship "$zoo/specialists/add" "$zoo/specialists/sort" --base "$zoo/base" --json --no-progress >/dev/null
"$V/bin/kinmerge" matrix "$zoo"/specialists/* --base "$zoo/base" --no-progress >/dev/null
echo "light install: kinmerge kinship and matrix ran"
# -p no:cacheprovider: the repo's .pytest_cache belongs to the main venv's runs.
"$V/bin/python" -m pytest -q -p no:cacheprovider tests/test_kinship_math.py tests/test_scan.py \
  tests/test_cli_kinship.py tests/test_docs.py tests/test_layers.py tests/test_inputs_fuzz.py \
  tests/test_inputs_faults.py tests/test_hostile_outputs.py tests/test_hostile_inputs.py \
  tests/test_hostile_suggest.py tests/test_hostile_compare.py tests/test_hostile_messages.py \
  tests/test_hostile_store.py tests/test_hostile_index.py "$@"

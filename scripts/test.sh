#!/usr/bin/env bash
# Set up .venv if needed and run the whole test suite. Exit code 5 (no tests collected) is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh requirements-dev.txt || exit 1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0
# Every test and every process it starts runs with a torch.load that refuses safetensors files, as torch
# < 2.13 does (tests/compat/sitecustomize.py): weights must be read by their format, not by torch's version.
export PYTHONPATH="$PWD/tests/compat${PYTHONPATH:+:$PYTHONPATH}"
.venv/bin/python -m pytest -q "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "ERROR: pytest collected no tests"; exit 1; fi
exit $rc

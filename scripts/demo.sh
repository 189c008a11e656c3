#!/usr/bin/env bash
# The embedded demo on a fresh machine: set up .venv (CPU torch, no downloads of weights or data),
# then run the whole pipeline (scripts/run_demo.py; resumable — run again to continue).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh requirements.txt
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python scripts/run_demo.py "$@"

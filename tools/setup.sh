#!/usr/bin/env bash
# Set up .venv with the CPU build of torch first (an unpinned torch would pull a multi-GB CUDA
# build), then bns-export with the ONNX runtime and dev extras.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[onnx,dev]${EXTRAS:+,$EXTRAS}"
# the JavaScript examples' packages, where npm is installed (tests/test_node.py and tests/test_web.py skip
# without them): onnxruntime-node (its CPU binaries ship in the package; --ignore-scripts skips the optional CUDA
# download from nuget.org), onnxruntime-web and playwright-core (which downloads no browser: the web test drives
# Debian's chromium, which .ci/run installs)
if command -v npm >/dev/null 2>&1; then
  for example in node web; do
    (cd "examples/$example" && timeout 300 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error \
      --fetch-retries=1) || echo "setup: npm ci in examples/$example failed; its tests will be skipped" >&2
  done
fi

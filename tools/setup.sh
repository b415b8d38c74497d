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
# the Node.js example's onnxruntime-node (its CPU binaries ship in the package; --ignore-scripts skips the
# optional CUDA download from nuget.org), where npm is installed: tests/test_node.py skips without it
if command -v npm >/dev/null 2>&1; then
  (cd examples/node && timeout 300 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error --fetch-retries=1) ||
    echo "setup: npm ci in examples/node failed; the Node.js example's tests will be skipped" >&2
fi

#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv: CPU torch first when no torch is present (a bare
# `torch` requirement would pull a multi-GB CUDA build), then the backend and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q torch==2.13.0
fi
.venv/bin/pip install -q -e "backend[test]"
if [[ "${MICD_SETUP_SLICER:-1}" == 1 ]]; then
  # Headless Slicer core for the Slicer-side tests (pins its own vtk), the Qt of Slicer 5.8 for the PythonQt harness
  # (offscreen), and vermin for the Python 3.9 check.
  .venv/bin/pip install -q slicer-core slicerio "PyQt5>=5.15,<5.16" vermin
fi

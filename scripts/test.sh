#!/usr/bin/env bash
# Set up the environment and run every test: the backend (plain pytest, CPU) and the Slicer-side logic (slicer-core).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/python -m pytest -q backend/tests Testing "$@"

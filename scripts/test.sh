#!/usr/bin/env bash
# Set up the environment and run every test: the backend (plain pytest, CPU) and the Slicer-side logic and panels
# (slicer-core, PyQt5 offscreen). The Slicer-side code must also run on Slicer 5.8's Python 3.9: slicer-core has no
# 3.9 wheel, so that is checked with vermin (minimum version of every construct used) and a 3.9 compile + import of
# the shared package when a python3.9 is around.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two pytest workers (one per core of the CI machine), one torch thread each: two torch processes with two threads
# each on two cores slow each other several times over. A test file stays on one worker (--dist loadfile), so its
# module fixtures (a trained run) are made once.
WORKERS=${MICD_TEST_WORKERS:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$([[ "$WORKERS" == 0 ]] && echo 2 || echo 1)}
export QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-offscreen}
SLICER_SIDE=(MICDCommon MICDTraining MICDSegmentation Testing)
.venv/bin/vermin -q -t=3.9- --violations --eval-annotations "${SLICER_SIDE[@]}"
# The first 3.9 interpreter that runs (a pyenv shim for python3.9 exists even where 3.9 is not selected, and fails).
PY39=""
for cand in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.9*/bin/python $(command -v python3.9 || true); do
  if [[ -x "$cand" ]] && "$cand" -c "import sys; assert sys.version_info[:2] == (3, 9)" 2>/dev/null; then
    PY39=$cand; break
  fi
done
if [[ -n "$PY39" ]]; then
  "$PY39" -m compileall -q "${SLICER_SIDE[@]}"
  (cd MICDCommon && "$PY39" -c "import MICDCommon, MICDCommon.dependencies, MICDCommon.qtsupport, MICDCommon.slicermodule")
fi
# The tests that bound a callback's wall time (marker `timing`) run afterwards in one process, with nothing beside them.
# Exit status 5: a selection ("$@") left nothing to run in one of the two passes.
.venv/bin/python -m pytest -q --durations=25 -n "$WORKERS" --dist loadfile -m "not timing" backend/tests Testing "$@" || [[ $? == 5 ]]
.venv/bin/python -m pytest -q --durations=5 -p no:xdist -m timing Testing "$@" || [[ $? == 5 ]]

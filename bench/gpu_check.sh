#!/usr/bin/env bash
# The one prepared GPU check (≤ 8 minutes): every CUDA path of the kit, a results table, and the same
# table with date and device under bench/results/ (also copied to $OUT when that is set).
# Runs with the host's own python3 (torch CUDA build, lightning, pandas, matplotlib); no ipyparallel,
# papermill, optuna or network needed. Arguments go to bench/gpu_check.py (--list, --only a,b, --cpu-smoke).
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then PY=python3
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout --signal=INT --kill-after=20 "${GPU_CHECK_TIMEOUT:-470}" "$PY" bench/gpu_check.py "$@"
rc=$?
if [[ -n "${OUT:-}" && -d "${OUT}" ]]; then
  cp -f bench/results/gpu_check_* "$OUT"/ 2>/dev/null || true
fi
exit $rc

#!/usr/bin/env bash
# Every benchmark at tiny shapes on the CPU (ours vs HF transformers), figures appended to RESULTS.
# Usage: bash bench/run_cpu.sh [script ...]   Env: PYTHON (default .venv/bin/python), RESULTS (file).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-.venv/bin/python}
RESULTS=${RESULTS:-bench/RESULTS.md}
scripts=("$@")
[ ${#scripts[@]} -eq 0 ] && scripts=(train_step probe_forward generate load compile_time)
status=0
for s in "${scripts[@]}"; do
    echo "### bench/$s.py --tiny (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
    start=$SECONDS
    "$PY" "bench/$s.py" --tiny --results "$RESULTS" || { status=1; echo "bench/$s.py failed"; }
    echo "### bench/$s.py took $((SECONDS - start)) s"
done
exit $status

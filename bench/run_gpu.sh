#!/usr/bin/env bash
# Every benchmark at the issue's full shapes on one GPU, figures appended to bench/RESULTS.md.
# Usage: bash bench/run_gpu.sh [script ...]   (default: all five, most important first)
# Env: PYTHON (default python3), BENCH_TIMEOUT seconds per script (default 900), RESULTS (file).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-bench/RESULTS.md}
"$PY" - <<'PYEOF' || exit 1
import importlib, sys
missing = [m for m in ("jax", "optax", "torch", "transformers", "safetensors", "ml_dtypes", "tqdm", "tokenizers",
                       "jinja2") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"run_gpu.sh: missing Python packages: {', '.join(missing)} (pip install them first)")
import jax, torch
if jax.default_backend() != "gpu" or not torch.cuda.is_available():
    sys.exit(f"run_gpu.sh: needs a GPU seen by both jax (backend: {jax.default_backend()}) and torch "
             f"(cuda: {torch.cuda.is_available()}); for CPU shapes run bench/run_cpu.sh")
print("GPU:", torch.cuda.get_device_name(0), "| jax", jax.__version__, "| torch", torch.__version__)
PYEOF
scripts=("$@")
[ ${#scripts[@]} -eq 0 ] && scripts=(train_step probe_forward generate load compile_time)
status=0
for s in "${scripts[@]}"; do
    echo "### bench/$s.py --full"
    start=$SECONDS
    timeout "${BENCH_TIMEOUT:-900}" "$PY" "bench/$s.py" --full --results "$RESULTS" || {
        status=1; echo "bench/$s.py failed or timed out" | tee -a "$RESULTS"; }
    echo "### bench/$s.py took $((SECONDS - start)) s"
done
exit $status

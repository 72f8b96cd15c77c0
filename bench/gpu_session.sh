#!/usr/bin/env bash
# Every GPU check in one call, for a session with a lent GPU (see README "GPU throughput"): the fidelity check
# (bench/gpu_check.py: bf16 against fp32 per method) and the throughput bench (bench/bench_gpu.py). Outputs go
# to $OUT (default ./gpu-out). open_clip travels as wheels in .whl/ when the machine lacks it. On a machine
# without CUDA both scripts run their CPU modes, which is how this script is tested.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ! python3 -c "import open_clip" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi";
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } \
  | tee "$OUT/machine.txt"
rc=0
timeout "${GPU_CHECK_TIMEOUT:-150}" python3 bench/gpu_check.py 2>&1 | tee "$OUT/gpu_check.txt" || rc=1
timeout "${BENCH_TIMEOUT:-400}" python3 bench/bench_gpu.py --budget-s "${BENCH_BUDGET_S:-240}" "$@" 2>&1 \
  | tee "$OUT/bench_gpu.txt" || rc=1
exit "$rc"

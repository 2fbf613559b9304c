#!/usr/bin/env bash
# The GPU measurements, prepared for a short lease of one GPU machine with torch and Triton
# installed (no HeteroSP install needed: the scripts import it from this checkout).
#
#   bash benchmarks/gpu_session.sh throughput   # throughput_1m.py --model 1b on this one GPU
#   bash benchmarks/gpu_session.sh kernels      # gpu_kernels.py: Triton kernels vs references
#   bash benchmarks/gpu_session.sh all          # both, throughput first
#
# Each part has a wall-clock limit (THROUGHPUT_BUDGET_S, default 400: contexts whose estimated
# time does not fit are reported as skipped; KERNELS_S, default 240: the kernel checks and
# timings are stopped there). The JSON results, the logs and the GPU's name go to $OUT when it
# is set, else to benchmarks/results/gpu_session/; copy them into benchmarks/results/ and
# RESULTS.md with the card named. MODEL=tiny runs the throughput part's tiny model instead (a
# smoke test of this script on CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:-all}
case $part in
    throughput | kernels | all) ;;
    *)
        echo "usage: bash benchmarks/gpu_session.sh [throughput|kernels|all] (got '$part')" >&2
        exit 2
        ;;
esac
out=${OUT:-benchmarks/results/gpu_session}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$python" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
} 2>&1 | tee "$out/machine.txt"
status=0
if [[ $part == throughput || $part == all ]]; then
    budget=${THROUGHPUT_BUDGET_S:-400}
    # One rank: no communication, so the script times one strategy pair per context; one repeat
    # after the warm-up call keeps 512K within a few minutes.
    timeout "$((budget + 120))" "$python" -m torch.distributed.run --standalone --nproc_per_node 1 \
        benchmarks/throughput_1m.py --model "${MODEL:-1b}" --repeats 1 --budget-s "$budget" \
        --out "$out/throughput_1m_${MODEL:-1b}.json" 2>&1 | tee "$out/throughput_1m.log"
    rc=${PIPESTATUS[0]}
    echo "throughput_1m: exit status $rc"
    ((rc == 0)) || status=1
fi
if [[ $part == kernels || $part == all ]]; then
    timeout "${KERNELS_S:-240}" "$python" benchmarks/gpu_kernels.py --out "$out/gpu_kernels.json" \
        2>&1 | tee "$out/gpu_kernels.log"
    rc=${PIPESTATUS[0]}
    echo "gpu_kernels: exit status $rc"
    ((rc == 0)) || status=1
fi
exit $status

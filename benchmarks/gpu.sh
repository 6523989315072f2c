#!/usr/bin/env bash
# The GPU checks of benchmarks/RESULTS.md in one short run (about 10 minutes on one H200).
#
#   bash benchmarks/gpu.sh [DATA_DIR]     # DATA_DIR: the MNIST IDX files (default ../shared/data/mnist)
#
# Needs this project installed with a CUDA jaxlib and the bench extra (torch is not used here).
# Each step prints one JSON line, also appended to $OUT/gpu.jsonl (OUT defaults to runs/gpu), and
# is cut after STEP_TIMEOUT seconds (default 150) so one slow step cannot eat the others' time.
# SMOKE=1 runs every step at toy sizes (seconds on a CPU), to check the script itself.
# Steps:
#   1. ODE grid: 100,000 two-feature systems to t = 100 (benchmarks/ode_grid.py).
#   2. Colored MNIST: 10 restarts vmapped in one step vs one after another (benchmarks/cmnist.py).
#   3. Matrix-free spectrum of YΦ at n = 50,000, k = 100 (target: <= 10 s; benchmarks/spectrum.py).
#   4. ResNet-50 training step at 224 px, batch 128, bfloat16 (benchmarks/celeba_pipeline.py).
set -uo pipefail
DATA=${1:-../shared/data/mnist}
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
if [ "${SMOKE:-0}" = 1 ]; then
  ODE=(--n 200 --n-scipy 2 --repeats 1)
  CMNIST=(--steps 3 --restart-steps 3 --rounds 1 --restarts 2 --max-images 600 --skip-torch --seed-chunk)
  SPEC=(--part scale --scale-n 500 --scale-k 5 --no-scale-peer)
  R50=(--images 16 --workers 2 --batch 8 --train-batch 2 --train-steps 1 --bf16)
else
  ODE=(--n 100000 --n-scipy 100)
  CMNIST=(--data-source files --restarts 10 --skip-torch)
  SPEC=(--part scale --scale-n 50000 --scale-k 100 --no-scale-peer)
  R50=(--images 256 --train-batch 128 --train-steps 20 --bf16)
fi
python -c "import jax; print('devices:', jax.devices())" >&2
step() {  # step NAME CMD...: run one benchmark, keep its JSON lines
  local name=$1; shift
  echo "## $name: $*" >&2
  timeout "${STEP_TIMEOUT:-150}" "$@" | grep '^{' | tee -a "$OUT/gpu.jsonl"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "{\"benchmark\": \"$name\", \"error\": \"exit status $rc\"}" | tee -a "$OUT/gpu.jsonl"
}
export NTKDYN_DATA_DIR=$DATA  # benchmarks/cmnist.py --data-source files reads it
step ode_grid python benchmarks/ode_grid.py "${ODE[@]}"
step cmnist_restarts python benchmarks/cmnist.py "${CMNIST[@]}"
step spectrum python benchmarks/spectrum.py --data-dir "$DATA" "${SPEC[@]}"
step resnet50_bf16 python benchmarks/celeba_pipeline.py "${R50[@]}"

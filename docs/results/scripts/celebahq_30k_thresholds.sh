#!/usr/bin/env bash
# The threshold-tuned table on CelebA-HQ 30k (docs/results/celebahq_30k.md), as run: ERM, SD and
# Group DRO with the real-10k preset's values (ERM weight decay 1e-4, SD c = 0.1 for both classes,
# Group DRO step size 0.01; no validation grid on this data), 8 epochs each, seeds 0-4, every epoch
# evaluated under the three selection rules (validation average, validation worst group, validation
# worst group with the decision threshold tuned on validation). Seeds 0 and 1 also measure the
# responses of the 20 leading tangent directions at theta_0 on 500 training faces (all 107 blond
# men) and the direction x group table. Every job is resumable (--resume): rerunning the script
# continues where it stopped; PAR jobs run at once.
# Usage, from the repository root:
#   PAR=2 bash docs/results/scripts/celebahq_30k_thresholds.sh [DATA_DIR] [RUNS_DIR] [SEEDS]
set -euo pipefail
DATA=${1:-../shared/data/celebahq-30k}
R=${2:-runs/celebahq30k_thresholds}
SEEDS=${3:-"0 1 2 3 4"}
mkdir -p "$R"
export DATA R
one() {
  local m=${1%_s*} k=${1##*_s} extra=""
  [ -f "$R/$1/results.json" ] && return 0
  [ "$k" -le 1 ] && extra="--responses 20 --responses-n 500"
  echo "$(date -Is) start $1" >> "$R/jobs.log"
  # shellcheck disable=SC2086
  ntkdyn groups --data-dir "$DATA" --preset real-10k --target Blond_Hair --spurious Male \
    --epochs 8 --dro.epochs 8 --method "$m" --seed "$k" --seeds 1 --resume --out "$R/$1" \
    $extra > "$R/$1.log" 2>&1
  echo "$(date -Is) done $1" >> "$R/jobs.log"
}
export -f one
for k in $SEEDS; do for m in erm sd groupdro; do echo "${m}_s$k"; done; done \
  | xargs -P "${PAR:-1}" -I{} bash -c 'one {}'
echo "$(date -Is) all done" >> "$R/jobs.log"

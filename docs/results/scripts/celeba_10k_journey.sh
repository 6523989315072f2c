#!/usr/bin/env bash
# The journey and the threshold-tuned baselines on the CelebA-10k subset (docs/results/celeba_10k_journey.md),
# as run. Every method with the value the validation grid of celeba_10k.sh kept (ERM weight decay
# 1e-2, SD c = 0.3 for both classes, Group DRO step size 0.01), seeds 0-4, each epoch evaluated with
# the decision threshold tuned on validation worst-group accuracy too; seeds 0 and 1 also measure the
# responses of the 20 leading tangent directions at theta_0 on 500 training faces (all blond men).
# Every job is resumable (--resume): rerunning the script continues where it stopped.
# Usage, from the repository root: bash docs/results/scripts/celeba_10k_journey.sh [DATA_DIR] [RUNS_DIR] [SEEDS]
set -euo pipefail
DATA=${1:-../shared/data/celeba-10k}
R=${2:-runs/celeba10k_journey}
SEEDS=${3:-"0 1 2 3 4"}
mkdir -p "$R"
declare -A ARGS=([erm]="--weight-decay 1e-2" [sd]="--sd.coef 0.3 0.3" [groupdro]="--dro.step-size 0.01")
for k in $SEEDS; do
  for m in erm sd groupdro; do
    name="${m}_s$k"
    [ -f "$R/$name/results.json" ] && continue
    extra=""
    if [ "$k" -le 1 ]; then extra="--responses 20 --responses-n 500"; fi
    echo "$(date -Is) start $name" >> "$R/jobs.log"
    # shellcheck disable=SC2086
    ntkdyn celeba --preset real-10k --data-dir "$DATA" --resume --out "$R/$name" \
      --method $m --seed "$k" --seeds 1 ${ARGS[$m]} $extra > "$R/$name.log" 2>&1
    echo "$(date -Is) done $name" >> "$R/jobs.log"
  done
done
echo "$(date -Is) all done" >> "$R/jobs.log"

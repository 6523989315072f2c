#!/usr/bin/env bash
# CelebA-HQ 30k protocol of docs/results/celebahq_30k.md, as run: the real-10k preset (ResNet-10 of
# width 16 from scratch, 64 px) for 8 epochs per method, every epoch evaluated under the three
# selection rules (validation average; validation worst group; validation worst group with the
# decision threshold tuned on validation). Every job is resumable (--resume): rerunning the script
# continues where it stopped; PAR jobs run at once.
# 1. Validation grid, seed 0, the grid of celeba_10k.sh (the middle value is the preset's default):
#    ERM weight decay {1e-4, 1e-3, 1e-2}; SD coefficient {0.03, 0.1, 0.3} for both classes (targets
#    (0.44, 2.5)); Group DRO step size {0.001, 0.01, 0.1}. The value kept is the one with the best
#    validation worst-group accuracy at the epoch chosen by it (ties: validation average); no test
#    number is read.
# 2. Seeds 0-4 of every method with its kept value. Seeds 0 and 1 also measure the responses of the
#    20 leading tangent directions at theta_0 on 500 training faces (all 107 blond men).
# Usage, from the repository root:
#   PAR=2 bash docs/results/scripts/celebahq_30k.sh [DATA_DIR] [RUNS_DIR]
set -euo pipefail
DATA=${1:-../shared/data/celebahq-30k}
R=${2:-runs/celebahq30k}
mkdir -p "$R"
export DATA R
job() {  # job METHOD VALUE SEED: one resumable run, its log beside it
  local m=$1 v=$2 k=$3 name flags extra=""
  declare -A flag=([erm]=--weight-decay [sd]=--sd.coef [groupdro]=--dro.step-size)
  declare -A default=([erm]=1e-4 [sd]=0.1 [groupdro]=0.01)
  name="${m}_${v}_s$k"; [ "$v" = "${default[$m]}" ] && name="${m}_s$k"
  flags="${flag[$m]} $v"; [ "$m" = sd ] && flags="$flags $v"
  [ -f "$R/$name/results.json" ] && return 0
  [ "$k" -le 1 ] && extra="--responses 20 --responses-n 500"
  echo "$(date -Is) start $name" >> "$R/jobs.log"
  # shellcheck disable=SC2086
  ntkdyn groups --data-dir "$DATA" --preset real-10k --target Blond_Hair --spurious Male \
    --epochs 8 --dro.epochs 8 --method "$m" --seed "$k" --seeds 1 $flags $extra --resume \
    --out "$R/$name" > "$R/$name.log" 2>&1
  echo "$(date -Is) done $name" >> "$R/jobs.log"
}
export -f job
declare -A GRID=([erm]="1e-4 1e-3 1e-2" [sd]="0.03 0.1 0.3" [groupdro]="0.001 0.01 0.1")
for m in sd groupdro erm; do for v in ${GRID[$m]}; do echo "$m $v 0"; done; done \
  | xargs -P "${PAR:-1}" -L 1 bash -c 'job "$0" "$1" "$2"'
declare -A KEEP
for m in sd groupdro erm; do
  KEEP[$m]=$(python docs/results/scripts/celeba_10k_table.py "$R" --keep "$m" --script celebahq_30k.sh)
  echo "$(date -Is) grid $m keeps ${KEEP[$m]}" >> "$R/jobs.log"
done
for k in 0 1 2 3 4; do for m in sd groupdro erm; do echo "$m ${KEEP[$m]} $k"; done; done \
  | xargs -P "${PAR:-1}" -L 1 bash -c 'job "$0" "$1" "$2"'
echo "$(date -Is) all done" >> "$R/jobs.log"

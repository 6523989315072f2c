#!/usr/bin/env bash
# CelebA-10k protocol of docs/results/celeba_10k.md, as run: every job is resumable (--resume), so
# rerunning this script continues where it stopped. Usage, from the repository root:
#   bash docs/results/scripts/celeba_10k.sh [DATA_DIR] [RUNS_DIR]
# 1. Validation grid, seed 0, three runs per method (the middle value is the preset's default):
#    ERM weight decay {1e-4, 1e-3, 1e-2}; SD coefficient lambda {0.03, 0.1, 0.3} for both classes
#    (targets gamma = (0.44, 2.5) as published); Group DRO step size eta {0.001, 0.01, 0.1}.
#    The value kept is the one with the best validation worst-group accuracy (at the epoch chosen by
#    validation worst-group accuracy; ties: validation average accuracy). No test number is read.
# 2. Seeds 0-4 of every method with its kept value, interleaved seed by seed.
set -euo pipefail
DATA=${1:-../shared/data/celeba-10k}
R=${2:-runs/celeba10k}
mkdir -p "$R"
job() {  # job NAME ARGS...: one resumable (method, seed) run, its log beside it
  local name=$1; shift
  [ -f "$R/$name/results.json" ] && return 0
  echo "$(date -Is) start $name" >> "$R/jobs.log"
  ntkdyn celeba --preset real-10k --data-dir "$DATA" --resume --out "$R/$name" "$@" \
    > "$R/$name.log" 2>&1
  echo "$(date -Is) done $name" >> "$R/jobs.log"
}
declare -A FLAG=([erm]=--weight-decay [sd]=--sd.coef [groupdro]=--dro.step-size)
declare -A GRID=([erm]="1e-4 1e-3 1e-2" [sd]="0.03 0.1 0.3" [groupdro]="0.001 0.01 0.1")
declare -A DEFAULT=([erm]=1e-4 [sd]=0.1 [groupdro]=0.01)
args() {  # args METHOD VALUE: the flags of one grid point
  if [ "$1" = sd ]; then echo "${FLAG[$1]} $2 $2"; else echo "${FLAG[$1]} $2"; fi
}
name() {  # name METHOD VALUE SEED: the default value keeps the plain name METHOD_sK
  if [ "$2" = "${DEFAULT[$1]}" ]; then echo "$1_s$3"; else echo "$1_$2_s$3"; fi
}
for m in sd groupdro erm; do
  for v in ${GRID[$m]}; do
    # shellcheck disable=SC2046
    job "$(name $m $v 0)" --method $m --seed 0 --seeds 1 $(args $m $v)
  done
done
declare -A KEEP
for m in sd groupdro erm; do
  KEEP[$m]=$(python docs/results/scripts/celeba_10k_table.py "$R" --keep "$m" --script celeba_10k.sh)
  echo "$(date -Is) grid $m keeps ${FLAG[$m]} ${KEEP[$m]}" >> "$R/jobs.log"
done
for k in 0 1 2 3 4; do
  for m in sd groupdro erm; do
    # shellcheck disable=SC2046
    job "$(name $m ${KEEP[$m]} $k)" --method $m --seed $k --seeds 1 $(args $m ${KEEP[$m]})
  done
done
echo "$(date -Is) all done" >> "$R/jobs.log"

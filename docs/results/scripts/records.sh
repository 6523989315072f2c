#!/usr/bin/env bash
# The earlier records of docs/results/, run again at the current revision to commit their result
# files (config.json, results.json, summary.md in docs/results/runs/<name>/): the commands of
# docs/results/README.md with the flags' current spellings. Runs one after the other and skips a
# run whose results.json exists, so rerunning the script continues.
# Usage, from the repository root: bash docs/results/scripts/records.sh [MNIST_DIR] [RUNS_DIR] [NAMES]
set -euo pipefail
MNIST=${1:-../shared/data/mnist}
R=${2:-runs/records}
NAMES=${3:-"theory cmnist_subset_responses spectrum_cmnist50k cmnist_embedded_5k moons cmnist_full_responses"}
mkdir -p "$R"
declare -A CMD=(
  [theory]="ntkdyn theory"
  [cmnist_subset_responses]="ntkdyn cmnist --methods erm sd --seeds 1"
  [spectrum_cmnist50k]="ntkdyn spectrum --data cmnist --data-dir $MNIST --n 50000 --top 50 --train-steps 100 --save-every 10"
  [cmnist_embedded_5k]="ntkdyn cmnist --data-source embedded"
  [moons]="ntkdyn moons"
  [cmnist_full_responses]="ntkdyn cmnist --data-dir $MNIST --methods erm sd --seeds 1"
)
for name in $NAMES; do
  [ -f "$R/$name/results.json" ] && continue
  echo "$(date -Is) start $name: ${CMD[$name]}" >> "$R/jobs.log"
  # shellcheck disable=SC2086
  ${CMD[$name]} --out "$R/$name" > "$R/$name.log" 2>&1
  echo "$(date -Is) done $name" >> "$R/jobs.log"
done

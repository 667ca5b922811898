#!/bin/bash
# Submit the four dedup stages as job arrays, each waiting for the one before (--dependency=afterok).
#
#   INPUT='/data/arabic/raw/*.jsonl.zst' RUN_DIR=/data/arabic/dedup TASKS=64 MERGE_TASKS=56 \
#       examples/slurm/dedup_submit.sh [--dedup.threshold=0.8 ...]
#
# MERGE_TASKS: stage-2 array size; its units are bands x dedup.band_ranges plus dedup.exact_ranges
# (pass --dedup.band_ranges=4 and friends here: every stage gets the same settings).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TASKS=${TASKS:-64}
MERGE_TASKS=${MERGE_TASKS:-$TASKS}
export INPUT RUN_DIR AGAINST REPO PYTHON

submit() {  # submit STAGE ARRAY [DEPENDENCY] -- extra args; prints the job id
  local stage=$1 array=$2 dep=$3
  shift 3
  local opts=(--parsable "--array=$array" "--export=ALL,STAGE=$stage")
  if [[ -n "$dep" ]]; then
    opts+=("--dependency=afterok:$dep")
  fi
  sbatch "${opts[@]}" "$HERE/dedup_stage.sbatch" "$@"
}

sig=$(submit signatures "0-$((TASKS - 1))" "" "$@")
merge=$(submit merge "0-$((MERGE_TASKS - 1))" "$sig" "$@")
clusters=$(submit clusters 0 "$merge" "$@")
filter=$(submit filter "0-$((TASKS - 1))" "$clusters" "$@")
echo "signatures=$sig merge=$merge clusters=$clusters filter=$filter"

#!/bin/bash
# Submit the whole preprocessing chain as job arrays, each waiting for the one before (afterok):
# clean -> merge -> clusters -> filter -> [rewrite] -> tokenize.
#
#   INPUT='/data/arabic/raw/*.jsonl.zst' OUTPUT_PREFIX=/data/arabic/aligned TOKENIZER=/models/Meta-Llama-3-8B \
#   TASKS=128 MERGE_TASKS=128 REWRITE_TASKS=64 examples/slurm/preprocess_submit.sh \
#       --dedup.band_ranges=8 --dedup.exact_ranges=16
#
# TASKS: prepare tasks (clean and filter arrays; each takes 1/TASKS of the input bytes).
# MERGE_TASKS: merge array; its units are LSH bands x dedup.band_ranges plus dedup.exact_ranges.
# REWRITE=none submits no rewrite job (the raw baseline); REWRITE_TASKS rewrite tasks of
# GPUS_PER_TASK GPUs each otherwise. Arguments are passed to every stage (same settings for all).
# Resubmitting the same command after a failure redoes only unfinished tasks.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TASKS=${TASKS:-64}
MERGE_TASKS=${MERGE_TASKS:-$TASKS}
REWRITE=${REWRITE:-vllm}
REWRITE_TASKS=${REWRITE_TASKS:-32}
GPUS_PER_TASK=${GPUS_PER_TASK:-1}
export INPUT OUTPUT_PREFIX TOKENIZER REWRITE REWRITER GUIDELINES CONFIG REPO PYTHON GPUS_PER_TASK

submit() {  # submit STAGE ARRAY DEPENDENCY [sbatch options...] -- stage args; prints the job id
  local stage=$1 array=$2 dep=$3
  shift 3
  local opts=(--parsable "--array=$array" "--export=ALL,STAGE=$stage")
  if [[ -n "$dep" ]]; then
    opts+=("--dependency=afterok:$dep")
  fi
  while [[ $# -gt 0 && "$1" != "--" ]]; do
    opts+=("$1")
    shift
  done
  [[ $# -gt 0 ]] && shift
  sbatch "${opts[@]}" "$HERE/preprocess_aligned.sbatch" "$@"
}

clean=$(submit clean "0-$((TASKS - 1))" "" -- --run.tasks="$TASKS" "$@")
merge=$(submit merge "0-$((MERGE_TASKS - 1))" "$clean" -- "$@")
clusters=$(submit clusters 0 "$merge" -- "$@")
filter=$(submit filter "0-$((TASKS - 1))" "$clusters" -- "$@")
last=$filter
jobs="clean=$clean merge=$merge clusters=$clusters filter=$filter"
if [[ "$REWRITE" != none ]]; then
  rewrite=$(submit rewrite "0-$((REWRITE_TASKS - 1))" "$filter" "--gpus-per-task=$GPUS_PER_TASK" -- "$@")
  last=$rewrite
  jobs="$jobs rewrite=$rewrite"
fi
tokenize=$(submit tokenize 0 "$last" -- "$@")
echo "$jobs tokenize=$tokenize"
if [[ "$REWRITE" != none ]]; then
  # The rewrite array's progress, all tasks summed (documents, output tokens/s, in flight, pass rate, ETA);
  # on stderr, so that stdout stays the job ids.
  echo "rewrite progress: ${PYTHON:-python} -m native_megatron.alignment.progress --prefix ${OUTPUT_PREFIX:-}" >&2
fi

#!/usr/bin/env bash
# Submit the benchmark grid as a SLURM job array of SHARDS tasks, then a merge job that
# runs once every task has ended with exit code 0.
#
#   scripts/slurm/submit.sh CONFIG RUN_DIR SHARDS [extra sbatch args for the array...]
#
#   scripts/slurm/submit.sh config/default.yaml results/run-a 4 --partition=gpu --gres=gpu:1 --time=2:00:00
#
# - Task i (0 <= i < SHARDS) runs shard i/SHARDS of CONFIG into RUN_DIR/shard-i
#   (scripts/slurm/bench_array.sbatch); its log is RUN_DIR/logs/shard-i.out, appended
#   across requeues and resubmissions.
# - The merge job (`--dependency=afterok:<array job>`, `--kill-on-invalid-dep=yes`) runs
#   `dllm-bench-merge RUN_DIR/merged RUN_DIR/shard-0 ... RUN_DIR/shard-(SHARDS-1)`; its log
#   is RUN_DIR/logs/merge-<jobid>.out. If a task fails or is cancelled, Slurm cancels the
#   merge job; resubmit the unfinished tasks (they resume their shard) with
#   `DLLM_TASKS=1,3 scripts/slurm/submit.sh CONFIG RUN_DIR SHARDS ...`, which submits a
#   new merge job of all SHARDS shards after them.
# - Prints `array_job_id=<id>` and `merge_job_id=<id>`.
#
# Environment:
#   DLLM_TASKS              array indices to submit (sbatch --array syntax); default 0-(SHARDS-1)
#   DLLM_PYTHON             the Python with dllm-bench installed; default: the repository's
#                           .venv/bin/python if present, else python3
#   DLLM_REPO               repository root; default: the one holding this script
#   DLLM_PYTEST_ARGS        extra pytest arguments for every task (see bench_array.sbatch)
#   DLLM_MERGE_SBATCH_ARGS  extra sbatch arguments for the merge job, split on spaces
#   SBATCH_ACCOUNT, SBATCH_PARTITION, ... (sbatch's own variables) apply to both jobs.
set -euo pipefail

usage() {
    echo "usage: $0 CONFIG RUN_DIR SHARDS [extra sbatch args...]" >&2
    exit 2
}
[[ $# -ge 3 ]] || usage
CONFIG=$1
RUN_DIR=$2
SHARDS=$3
shift 3
[[ $SHARDS =~ ^[1-9][0-9]*$ ]] || {
    echo "submit.sh: SHARDS must be a positive integer, got '$SHARDS'" >&2
    exit 2
}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=${DLLM_REPO:-$(cd "$HERE/../.." && pwd)}
# shellcheck source=scripts/repo_python.sh
. "$HERE/../repo_python.sh"
PYTHON=$(repo_python "$REPO")
TASKS=${DLLM_TASKS:-0-$((SHARDS - 1))}

# Absolute paths: the jobs run from the repository root, not from here.
case $CONFIG in
/*) ;;
*) if [[ -f $CONFIG ]]; then CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG"); fi ;;
esac
[[ -f $CONFIG || -f $REPO/$CONFIG ]] || {
    echo "submit.sh: config $CONFIG not found (here or under $REPO)" >&2
    exit 2
}
mkdir -p "$RUN_DIR/logs"
RUN_DIR=$(cd "$RUN_DIR" && pwd)

job_id() { # the id in sbatch --parsable output ("id" or "id;cluster")
    local out=$1
    echo "${out%%;*}"
}

array_out=$(
    DLLM_RUN_DIR=$RUN_DIR DLLM_CONFIG=$CONFIG DLLM_REPO=$REPO DLLM_PYTHON=$PYTHON DLLM_SHARDS=$SHARDS \
        sbatch --parsable --array="$TASKS" --chdir="$REPO" --output="$RUN_DIR/logs/shard-%a.out" \
        "$@" "$HERE/bench_array.sbatch"
)
ARRAY_ID=$(job_id "$array_out")

shard_dirs=()
for ((i = 0; i < SHARDS; i++)); do
    shard_dirs+=("$RUN_DIR/shard-$i")
done
merge_cmd=$(printf '%q ' "$PYTHON" -m dllm_bench.sinks.merge "$RUN_DIR/merged" "${shard_dirs[@]}")
# shellcheck disable=SC2206  # split on spaces on purpose
merge_args=(${DLLM_MERGE_SBATCH_ARGS:-})
merge_out=$(
    sbatch --parsable --job-name=dllm-bench-merge --dependency="afterok:$ARRAY_ID" --kill-on-invalid-dep=yes \
        --chdir="$REPO" --output="$RUN_DIR/logs/merge-%j.out" "${merge_args[@]}" \
        --wrap="echo \"dllm-bench-merge: start \$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)\"; $merge_cmd; rc=\$?; echo \"dllm-bench-merge: end \$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ) exit \$rc\"; exit \$rc"
)
MERGE_ID=$(job_id "$merge_out")

echo "submitted shards $TASKS of $SHARDS of $CONFIG into $RUN_DIR (logs in $RUN_DIR/logs)"
echo "array_job_id=$ARRAY_ID"
echo "merge_job_id=$MERGE_ID"

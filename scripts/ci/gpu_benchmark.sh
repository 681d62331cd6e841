#!/usr/bin/env bash
# Run a benchmark grid for CI, compare it with main's last stored run, gate it, write a
# markdown summary, and on main store it as the new reference. Installs nothing: run
# scripts/ci/install_gpu.sh (CUDA build of torch, then the suite) or `pip install -e .` first.
#
#   scripts/ci/gpu_benchmark.sh [CONFIG]
#
# What it does:
#   1. runs `pytest benchmarks --config CONFIG --output-dir RUN_DIR` with pytest-benchmark's
#      storage in the history (--benchmark-storage) and its JSON in RUN_DIR/benchmark.json;
#      the console output goes to RUN_DIR/pytest-output.log as well as to stdout;
#   2. if the history holds a reference (main's last stored run of this config on this
#      machine), adds `--benchmark-compare=<its JSON> --benchmark-compare-fail=<each of
#      DLLM_CI_COMPARE_FAIL>` and `--gate=<each of DLLM_CI_GATE> --gate-reference=<its run
#      directory>`; without one, nothing is compared and the run says so;
#   3. appends a markdown summary (verdict, gate failures, regressions, a table of the rows
#      with tokens/s against the reference) to DLLM_CI_SUMMARY_FILE;
#   4. if this run is to be stored (DLLM_CI_STORE) and passed, copies RUN_DIR into the
#      history, keeps its pytest-benchmark JSON there (--benchmark-save), and makes it the
#      reference; a failed run is not stored (its saved JSON is removed again), except with
#      DLLM_CI_STORE=force when every case finished ok and only the gate or the comparison
#      failed (accepting a deliberate slowdown; the exit status still says it failed).
#   Exit status: pytest's (0 passed; 1 a case, the gate or the comparison failed; 2
#   interrupted; 4 usage error), or 2 for a bad invocation of this script.
#
# History layout (one namespace per machine and config, so runs on different GPUs or grids
# are never compared):
#   $DLLM_CI_HISTORY/<machine>/<config stem>/
#       benchmarks/<pytest-benchmark machine id>/NNNN_<run>.json   pytest-benchmark storage
#       runs/<run>/      copies of stored run directories (raw_metrics.csv, run_manifest.json, ...)
#       reference        `run=<run>` and `benchmark_json=<path under benchmarks/>` of the reference
#
# Environment (every input; the defaults in brackets; relative paths are taken from the
# repository root, except a config that exists relative to the current directory):
#   DLLM_CI_CONFIG        grid file; the first argument overrides it [config/ci-gpu.yaml]
#   DLLM_CI_RUN_DIR       the run directory; must not hold results yet
#                         [results/ci-<config stem>-<UTC time>[-<GITHUB_RUN_ID>]]
#   DLLM_CI_HISTORY       the history directory that survives jobs (an actions cache path or a
#                         runner path) [${XDG_CACHE_HOME:-$HOME/.cache}/dllm-bench/ci-history]
#   DLLM_CI_MACHINE       the machine part of the namespace [name of GPU 0 from torch, else "cpu"]
#   DLLM_CI_BRANCH        this run's branch [$GITHUB_REF_NAME, else the checkout's branch]
#   DLLM_CI_MAIN_BRANCH   the branch whose runs become the reference [main]
#   DLLM_CI_STORE         auto: store a passing run when on DLLM_CI_MAIN_BRANCH and not a pull
#                         request ($GITHUB_EVENT_NAME); yes: store a passing run; no; force:
#                         store also a run that failed only its gate or comparison [auto]
#   DLLM_CI_GATE          --gate rules, separated by spaces [tokens_per_s:-10%]
#   DLLM_CI_COMPARE_FAIL  --benchmark-compare-fail expressions, separated by spaces [mean:10%]
#   DLLM_CI_KEEP          stored runs kept per namespace, oldest removed first [30]
#   DLLM_CI_SUMMARY_FILE  where the markdown summary is appended
#                         [$GITHUB_STEP_SUMMARY, else RUN_DIR/summary.md]
#   DLLM_PYTHON           the Python with dllm-bench installed [the repository's .venv/bin/python
#                         if present, else python3]
#   DLLM_PYTEST_ARGS      extra pytest arguments, split on spaces (e.g. `-p myplugin`, `-k llada`) []
#   DLLM_REPO             the repository root [the one holding this script]
set -euo pipefail

die() {
    echo "gpu_benchmark.sh: $*" >&2
    exit 2
}
log() { echo "gpu_benchmark.sh: $*" >&2; }

[[ $# -le 1 ]] || die "usage: $0 [CONFIG]"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=${DLLM_REPO:-$(cd "$HERE/../.." && pwd)}
CONFIG=${1:-${DLLM_CI_CONFIG:-config/ci-gpu.yaml}}
# A config given relative to where the script was started from, if it is there.
[[ $CONFIG == /* || ! -f $CONFIG ]] || CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")
cd "$REPO"

# shellcheck source=scripts/repo_python.sh
. "$HERE/../repo_python.sh"
PYTHON=$(repo_python "$REPO")
"$PYTHON" -c "import dllm_bench" 2>/dev/null ||
    die "dllm_bench is not importable with $PYTHON: run scripts/ci/install_gpu.sh (GPU) or pip install -e . first, or set DLLM_PYTHON"

[[ -f $CONFIG ]] || die "config $CONFIG not found (here or under $REPO)"
CONFIG_STEM=$(basename "$CONFIG")
CONFIG_STEM=${CONFIG_STEM%.*}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RUN_DIR=${DLLM_CI_RUN_DIR:-results/ci-$CONFIG_STEM-$STAMP${GITHUB_RUN_ID:+-$GITHUB_RUN_ID}}
HISTORY=${DLLM_CI_HISTORY:-${XDG_CACHE_HOME:-$HOME/.cache}/dllm-bench/ci-history}
MAIN_BRANCH=${DLLM_CI_MAIN_BRANCH:-main}
GATES=${DLLM_CI_GATE:-tokens_per_s:-10%}
COMPARE_FAIL=${DLLM_CI_COMPARE_FAIL:-mean:10%}
KEEP=${DLLM_CI_KEEP:-30}
[[ $KEEP =~ ^[1-9][0-9]*$ ]] || die "DLLM_CI_KEEP must be a positive integer, got '$KEEP'"

BRANCH=${DLLM_CI_BRANCH:-${GITHUB_REF_NAME:-$(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)}}
COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo nogit)

case ${DLLM_CI_STORE:-auto} in
auto) if [[ $BRANCH == "$MAIN_BRANCH" && ${GITHUB_EVENT_NAME:-} != pull_request ]]; then STORE=yes; else STORE=no; fi ;;
yes | no | force) STORE=$DLLM_CI_STORE ;;
*) die "DLLM_CI_STORE must be auto, yes, no or force, got '$DLLM_CI_STORE'" ;;
esac

sanitize() { tr -c 'A-Za-z0-9._-' '-' | sed -e 's/--*/-/g' -e 's/^-//' -e 's/-$//'; }
if [[ -n ${DLLM_CI_MACHINE:-} ]]; then
    MACHINE=$DLLM_CI_MACHINE
else
    MACHINE=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')")
fi
MACHINE=$(printf '%s' "$MACHINE" | sanitize)
[[ -n $MACHINE ]] || die "the machine name is empty; set DLLM_CI_MACHINE"
NS=$HISTORY/$MACHINE/$CONFIG_STEM
RUN_NAME=$(printf '%s' "$STAMP-$COMMIT${GITHUB_RUN_ID:+-$GITHUB_RUN_ID}" | sanitize)

mkdir -p "$RUN_DIR" "$NS/benchmarks" "$NS/runs"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
NS=$(cd "$NS" && pwd)
SUMMARY_FILE=${DLLM_CI_SUMMARY_FILE:-${GITHUB_STEP_SUMMARY:-$RUN_DIR/summary.md}}
CONSOLE_LOG=$RUN_DIR/pytest-output.log

# The reference: main's last stored run of this namespace, if its files are still there.
reference_field() { [[ ! -f $NS/reference ]] || sed -n "s/^$1=//p" "$NS/reference" | head -n 1; }
REF_RUN=$(reference_field run)
REF_DIR=
REF_JSON=
if [[ -n $REF_RUN && -f $NS/runs/$REF_RUN/raw_metrics.csv ]]; then
    REF_DIR=$NS/runs/$REF_RUN
    ref_json_rel=$(reference_field benchmark_json)
    if [[ -n $ref_json_rel && -f $NS/benchmarks/$ref_json_rel ]]; then
        REF_JSON=$NS/benchmarks/$ref_json_rel
    fi
elif [[ -n $REF_RUN ]]; then
    log "the reference $REF_RUN is named in $NS/reference but its run directory is gone; running without one"
fi

args=(benchmarks "--config=$CONFIG" "--output-dir=$RUN_DIR"
    "--benchmark-storage=file://$NS/benchmarks" "--benchmark-json=$RUN_DIR/benchmark.json")
if [[ -n $REF_DIR ]]; then
    for gate in $GATES; do args+=("--gate=$gate"); done
    args+=("--gate-reference=$REF_DIR")
    log "gating against main's run $REF_RUN ($REF_DIR): $GATES"
    if [[ -n $REF_JSON ]]; then
        args+=("--benchmark-compare=$REF_JSON")
        for expr in $COMPARE_FAIL; do args+=("--benchmark-compare-fail=$expr"); done
        log "comparing with pytest-benchmark against $REF_JSON: $COMPARE_FAIL"
    else
        log "the reference has no pytest-benchmark JSON; --benchmark-compare is left out"
    fi
else
    log "no reference in $NS yet: nothing to compare against"
fi
[[ $STORE == no ]] || args+=("--benchmark-save=$RUN_NAME")
# shellcheck disable=SC2206  # split on spaces on purpose
extra=(${DLLM_PYTEST_ARGS:-})
args+=("${extra[@]}")

log "branch $BRANCH, commit $COMMIT, machine $MACHINE, store: $STORE; run directory $RUN_DIR"
set +e
"$PYTHON" -m pytest "${args[@]}" 2>&1 | tee "$CONSOLE_LOG"
rc=${PIPESTATUS[0]}
set -e

if [[ $rc -eq 0 ]]; then verdict=passed; else verdict=failed; fi
summary_args=(--run-dir "$RUN_DIR" --config "$CONFIG" --exit-code "$rc" --console-log "$CONSOLE_LOG"
    --branch "$BRANCH" --commit "$COMMIT" --machine "$MACHINE" --gates "$GATES")
[[ -n $REF_DIR ]] && summary_args+=(--reference-dir "$REF_DIR" --reference-name "$REF_RUN")
[[ -n $REF_JSON ]] && summary_args+=(--compare-fail "$COMPARE_FAIL")
mkdir -p "$(dirname "$SUMMARY_FILE")"
if ! "$PYTHON" "$HERE/ci_summary.py" "${summary_args[@]}" >>"$SUMMARY_FILE"; then
    log "writing the summary to $SUMMARY_FILE failed"
    [[ $rc -ne 0 ]] || rc=1
fi
log "summary appended to $SUMMARY_FILE"
if [[ $rc -ne 0 ]]; then
    log "FAILED (pytest exit $rc); the gate's and pytest-benchmark's findings, if any:"
    grep -h "gate FAILED" "$RUN_DIR/benchmark.log" 2>/dev/null | sed 's/^.* - ERROR - /  /' >&2 || true
    grep -h -A100 "^Performance has regressed:" "$CONSOLE_LOG" | grep -h $'^\t' | sed 's/^\t/  pytest-benchmark regression: /' >&2 || true
fi

saved_json() { find "$NS/benchmarks" -name "[0-9][0-9][0-9][0-9]_$RUN_NAME.json" -print 2>/dev/null | head -n 1; }

prune() { # keep the newest $KEEP stored runs (names start with a UTC time stamp)
    local old name
    old=$(find "$NS/runs" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort | head -n "-$KEEP")
    for name in $old; do
        rm -rf "${NS:?}/runs/$name"
        find "$NS/benchmarks" -name "[0-9][0-9][0-9][0-9]_$name.json" -delete
        log "pruned the stored run $name"
    done
}

store_reference() {
    local json rel tmp
    json=$(saved_json)
    [[ -n $json ]] || log "pytest-benchmark saved no JSON for $RUN_NAME (disabled, e.g. under xdist); the gate still works"
    cp -R "$RUN_DIR" "$NS/runs/$RUN_NAME"
    rel=${json#"$NS/benchmarks/"}
    tmp=$(mktemp "$NS/.reference.XXXXXX")
    printf 'run=%s\nbenchmark_json=%s\ncommit=%s\nbranch=%s\n' "$RUN_NAME" "${json:+$rel}" "$COMMIT" "$BRANCH" >"$tmp"
    mv -f "$tmp" "$NS/reference"
    log "stored this run as the reference: $NS/runs/$RUN_NAME"
    prune
}

all_cases_ok() { # every row of the run has status ok (and there is at least one)
    [[ -f $RUN_DIR/raw_metrics.csv ]] || return 1
    "$PYTHON" - "$RUN_DIR/raw_metrics.csv" <<'PYEOF'
import csv
import sys

with open(sys.argv[1], encoding="utf-8", newline="") as handle:
    statuses = [row.get("status") for row in csv.DictReader(handle)]
sys.exit(0 if statuses and all(status == "ok" for status in statuses) else 1)
PYEOF
}

if [[ $STORE != no ]]; then
    exec 9>"$NS/.lock"
    command -v flock >/dev/null && flock 9
    if [[ $verdict == passed ]]; then
        store_reference
    elif [[ $STORE == force && $rc -eq 1 ]] && all_cases_ok; then
        log "DLLM_CI_STORE=force: every case finished ok, so this run is accepted as the reference although it failed"
        store_reference
    else
        json=$(saved_json)
        [[ -z $json ]] || rm -f "$json"
        log "this run failed (exit $rc): not stored; the reference stays ${REF_RUN:-none}"
    fi
fi
exit "$rc"

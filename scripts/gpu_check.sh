#!/usr/bin/env bash
# GPU self-check: verify the suite's CUDA paths on one GPU in at most 8 minutes, with a cold
# model cache and no downloads (random-init models only).
#
#   bash scripts/gpu_check.sh
#
# Prints one line per item, `PASS <item>: ...`, `FAIL <item>: ...` or `SKIP <item>: ...`,
# then `VERDICT: PASS|FAIL|SKIP: ...`. Exit status 0 unless an item failed. On a machine
# without a CUDA GPU every item is skipped with the reason and the verdict says "no GPU".
#
# Items (python -m dllm_bench.gpu_check --help says the same):
#   timer        the synchronized timer against CUDA events on the same calls: within 2%
#   memory       the CUDA memory columns: non-zero, allocated <= reserved
#   energy       the NVML energy columns: present, with a plausible watts figure
#   environment  GPU name, driver and CUDA version in the rows
#   pinning      one GPU per worker under -n auto
#   sampler      bf16 LLaDA: the sampler is token-identical to the reference on GPU, with
#                tied confidences occurring and handled
#   cache        an 8B-shape LLaDA with 4 layers in bf16, cache none and dual at two grid
#                points: dual faster than none, tokens/s reported
#   oom          an oversized batch under --allow-oom: the row says oom and the run goes on
#   dgemma       a random-init DiffusionGemma (about 0.37 B parameters, bf16) with a dynamic
#                and a static cache (the library compiles the decoder): every row ok, the
#                decoder and encoder passes counted, the library's tokens_per_forward
#
# The suite runs write under DLLM_GPU_CHECK_DIR (their configs, outputs and console logs).
# Random-init model folders go to the suite's model cache ($DLLM_BENCH_CACHE, else
# ~/.cache/dllm-bench/models): about 8 GB the first time (the 8B-shape LLaDA and Llama with
# 4 layers), reused afterwards.
#
# Environment:
#   DLLM_PYTHON             the Python with dllm-bench installed; default: the repository's
#                           .venv/bin/python if present, else python3
#   DLLM_REPO               repository root; default: the one holding this script
#   DLLM_GPU_CHECK_BUDGET_S time limit of all items together, seconds (the suite runs are
#                           stopped when it is spent; the whole check is killed 25 s later,
#                           so the default ends within 8 minutes); default 450
#   DLLM_GPU_CHECK_DIR      where the suite runs write; default results/gpu-check-<UTC time>
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=${DLLM_REPO:-$(cd "$HERE/.." && pwd)}
# shellcheck source=scripts/repo_python.sh
. "$HERE/repo_python.sh"
PYTHON=$(repo_python "$REPO")
BUDGET=${DLLM_GPU_CHECK_BUDGET_S:-450}
[[ $BUDGET =~ ^[1-9][0-9]*$ ]] || {
    echo "gpu_check.sh: DLLM_GPU_CHECK_BUDGET_S must be a positive whole number of seconds, got '$BUDGET'" >&2
    exit 2
}

args=(-m dllm_bench.gpu_check --repo "$REPO" --budget-s "$BUDGET")
[[ -z ${DLLM_GPU_CHECK_DIR:-} ]] || args+=(--work-dir "$DLLM_GPU_CHECK_DIR")

cd "$REPO"
# A hard stop 25 s after the budget, in case a CUDA call hangs in this process itself.
if command -v timeout >/dev/null; then
    exec timeout --kill-after=5 "$((BUDGET + 25))" "$PYTHON" "${args[@]}"
fi
exec "$PYTHON" "${args[@]}"

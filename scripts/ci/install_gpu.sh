#!/usr/bin/env bash
# Install a CUDA build of torch and the suite into a virtual environment, for GPU runners.
# The benchmark script (scripts/ci/gpu_benchmark.sh) installs nothing itself; run this first.
#
#   scripts/ci/install_gpu.sh
#
# Steps: create the venv if it does not exist; install torch from PyTorch's CUDA index
# (pip keeps a matching torch that is already installed); install the suite (`pip install
# -e .`, which keeps that torch); then print torch's version, its CUDA version and the GPUs
# it sees. With DLLM_CI_REQUIRE_GPU=1 (the default) it fails when torch sees no GPU, so a
# runner with a broken driver fails here and not in the middle of the benchmark.
#
# Environment:
#   DLLM_CI_VENV          the virtual environment (relative to the repository or absolute);
#                         a path outside the checkout is kept across jobs [.venv]
#   DLLM_CI_BASE_PYTHON   the Python that creates the venv [python3]
#   DLLM_CI_TORCH_INDEX   the wheel index of the CUDA build [https://download.pytorch.org/whl/cu128]
#   DLLM_CI_TORCH_SPEC    the torch requirement [torch]
#   DLLM_CI_EXTRAS        extras of the suite to install, e.g. `dev` []
#   DLLM_CI_REQUIRE_GPU   1: fail when no CUDA GPU is visible; 0: only report [1]
#   DLLM_REPO             the repository root [the one holding this script]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=${DLLM_REPO:-$(cd "$HERE/../.." && pwd)}
cd "$REPO"

VENV=${DLLM_CI_VENV:-.venv}
BASE_PYTHON=${DLLM_CI_BASE_PYTHON:-python3}
TORCH_INDEX=${DLLM_CI_TORCH_INDEX:-https://download.pytorch.org/whl/cu128}
TORCH_SPEC=${DLLM_CI_TORCH_SPEC:-torch}
EXTRAS=${DLLM_CI_EXTRAS:-}
REQUIRE_GPU=${DLLM_CI_REQUIRE_GPU:-1}

export PIP_DISABLE_PIP_VERSION_CHECK=1
[[ -x $VENV/bin/python ]] || "$BASE_PYTHON" -m venv "$VENV"
PY=$VENV/bin/python

"$PY" -m pip install --quiet --index-url "$TORCH_INDEX" "$TORCH_SPEC"
if [[ -n $EXTRAS ]]; then
    "$PY" -m pip install --quiet -e ".[$EXTRAS]"
else
    "$PY" -m pip install --quiet -e .
fi

"$PY" - "$REQUIRE_GPU" <<'PYEOF'
import sys

import torch

require_gpu = sys.argv[1] == "1"
count = torch.cuda.device_count() if torch.cuda.is_available() else 0
names = [torch.cuda.get_device_name(i) for i in range(count)]
sys.stdout.write(f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}, GPUs: {names or 'none'}\n")
if require_gpu and count == 0:
    sys.stderr.write(
        "install_gpu.sh: torch sees no CUDA GPU. Check `nvidia-smi`, the driver, and that "
        "DLLM_CI_TORCH_INDEX is a CUDA build the driver supports (or set DLLM_CI_REQUIRE_GPU=0).\n"
    )
    sys.exit(1)
PYEOF

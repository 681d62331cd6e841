#!/usr/bin/env bash
# Check the GitHub Actions workflows (.github/workflows/*.yml) with actionlint, using
# scripts/ci/actionlint.yaml (the self-hosted runner labels). Run by .ci/run.
#
#   scripts/ci/actionlint.sh [extra actionlint args...]
#
# actionlint comes from the dev extra (pip install -e '.[dev]'). If shellcheck is on PATH,
# actionlint also checks the `run:` scripts with it.
#
# Environment:
#   DLLM_REPO    repository root; default: the one holding this script
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=${DLLM_REPO:-$(cd "$HERE/../.." && pwd)}
cd "$REPO"
command -v actionlint >/dev/null || {
    echo "actionlint.sh: actionlint not found: pip install -e '.[dev]' installs it" >&2
    exit 2
}
actionlint -config-file "$HERE/actionlint.yaml" "$@"

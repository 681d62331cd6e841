# shellcheck shell=bash
# Sourced by the scripts under scripts/: which Python runs the suite.
#
#   repo_python REPO   prints $DLLM_PYTHON if set, else REPO/.venv/bin/python if it exists,
#                      else python3

repo_python() {
    if [[ -n ${DLLM_PYTHON:-} ]]; then
        printf '%s\n' "$DLLM_PYTHON"
    elif [[ -x $1/.venv/bin/python ]]; then
        printf '%s\n' "$1/.venv/bin/python"
    else
        printf '%s\n' python3
    fi
}

#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by scripts/ci/start_slurm.sh: slurmd, slurmctld
# and the munged it started. Packages, the munge key and the state directory stay (pass
# --purge to remove the state directory and the /etc/slurm/slurm.conf it wrote).
#
# Environment: DLLM_SLURM_STATE (default /var/tmp/dllm-slurm), as for start_slurm.sh.
set -euo pipefail

STATE=${DLLM_SLURM_STATE:-/var/tmp/dllm-slurm}
ETC_CONF=/etc/slurm/slurm.conf
MARKER="# written by dllm-bench scripts/ci/start_slurm.sh"
PURGE=0
if [[ ${1:-} == --purge ]]; then
    PURGE=1
fi

say() { echo "stop_slurm: $*"; }

stop_pidfile() { # stop_pidfile NAME PIDFILE
    local name=$1 pidfile=$2 pid
    if [[ ! -s "$pidfile" ]]; then
        say "$name: no pid file"
        return 0
    fi
    pid=$(cat "$pidfile")
    if ! kill -0 "$pid" 2>/dev/null; then
        say "$name: not running"
        rm -f "$pidfile"
        return 0
    fi
    kill "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) did not stop in 10 s: SIGKILL"
        kill -9 "$pid" || true
    fi
    rm -f "$pidfile"
    say "stopped $name (pid $pid)"
}

if [[ -f "$STATE/slurm.conf" ]]; then
    # Running jobs would outlive slurmd: cancel them first.
    SLURM_CONF="$STATE/slurm.conf" timeout 15 scancel --full --user="$(id -un)" 2>/dev/null || true
fi
stop_pidfile slurmd "$STATE/run/slurmd.pid"
stop_pidfile slurmctld "$STATE/run/slurmctld.pid"
stop_pidfile munged /run/munge/munged.pid

if [[ $PURGE -eq 1 ]]; then
    rm -rf "$STATE"
    if [[ -f "$ETC_CONF" ]] && grep -qxF "$MARKER" "$ETC_CONF"; then
        rm -f "$ETC_CONF"
    fi
    say "removed $STATE and $ETC_CONF"
fi

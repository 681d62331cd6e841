#!/usr/bin/env bash
# Start a one-node SLURM cluster on loopback, as root, for CI and for tests/test_slurm.py.
#
#   sudo bash scripts/ci/start_slurm.sh        # or as root: bash scripts/ci/start_slurm.sh
#
# What it does, each step only when needed (a second run with a running cluster changes
# nothing):
#   1. installs slurm-wlm and munge with apt-get when `sbatch` is missing (Debian/Ubuntu;
#      daemons are kept from starting during the install with a temporary policy-rc.d);
#   2. creates the munge key if missing and starts munged (no systemd needed);
#   3. writes slurm.conf into the state directory and copies it to /etc/slurm/slurm.conf,
#      where sbatch/squeue/sinfo look by default, so no SLURM_CONF is needed afterwards;
#   4. starts slurmctld and slurmd directly (daemon mode, pid files in the state directory);
#   5. waits until `sinfo` shows the node idle.
#
# The node is `localhost` (127.0.0.1) with this machine's CPU count, a modest RealMemory,
# partition `debug` (default), no accounting, no cgroups (proctrack/linuxproc, task/none).
#
# Environment:
#   DLLM_SLURM_STATE       state directory (config, spool, state, logs, pid files);
#                          default /var/tmp/dllm-slurm
#   DLLM_SLURM_CLUSTER     ClusterName; default dllm-ci
#   DLLM_SLURM_TIMEOUT     seconds to wait for the node to become idle; default 60
#   DLLM_SLURM_MEMORY_MB   RealMemory of the node; default half of MemTotal, at most 8192
#
# Stop it with scripts/ci/stop_slurm.sh. Logs: $DLLM_SLURM_STATE/log/.
set -euo pipefail

STATE=${DLLM_SLURM_STATE:-/var/tmp/dllm-slurm}
CLUSTER=${DLLM_SLURM_CLUSTER:-dllm-ci}
TIMEOUT=${DLLM_SLURM_TIMEOUT:-60}
CONF="$STATE/slurm.conf"
ETC_CONF=/etc/slurm/slurm.conf
MARKER="# written by dllm-bench scripts/ci/start_slurm.sh"
T0=$(date +%s)

say() { echo "start_slurm: $*"; }
die() {
    echo "start_slurm: error: $*" >&2
    exit 1
}

pid_alive() { # pid_alive PIDFILE
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

node_state() {
    SLURM_CONF="$CONF" timeout 15 sinfo -h -N -n localhost -o %T 2>/dev/null | head -n1 || true
}

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts daemons)"

# 1. Packages.
if ! command -v sbatch >/dev/null 2>&1 || ! command -v slurmctld >/dev/null 2>&1 \
    || ! command -v slurmd >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    say "installing slurm-wlm and munge with apt-get"
    own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        # Keep the packages' init scripts from starting daemons without a config.
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    if [[ $own_policy -eq 1 ]]; then
        rm -f /usr/sbin/policy-rc.d
    fi
    say "installed $(slurmctld -V) in $(($(date +%s) - T0)) s"
else
    say "found $(slurmctld -V)"
fi

mkdir -p "$STATE"/{spool,state,log,run}

# 2. Munge.
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
fi
if id munge >/dev/null 2>&1; then
    MUNGE_USER=munge
else
    MUNGE_USER=root
fi
chown "$MUNGE_USER:$MUNGE_USER" /etc/munge /etc/munge/munge.key
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown "$MUNGE_USER:$MUNGE_USER" /run/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "munged is running"
else
    say "starting munged"
    if [[ $MUNGE_USER == root ]]; then
        munged --force
    else
        runuser -u munge -- munged
    fi
    for _ in $(seq 1 50); do
        if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
            break
        fi
        sleep 0.1
    done
    munge -n </dev/null | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# 3. slurm.conf.
CPUS=$(nproc)
# The hardware layout as slurmd sees it (Sockets, cores, threads), so the node matches it.
LAYOUT=$(slurmd -C 2>/dev/null | head -n1 | tr ' ' '\n' | grep -E '^(SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' \
    | sed 's/^SocketsPerBoard=/Sockets=/' | tr '\n' ' ' || true)
if [[ -z "$LAYOUT" ]] || [[ "$(slurmd -C 2>/dev/null | head -n1 | grep -o 'CPUs=[0-9]*')" != "CPUs=$CPUS" ]]; then
    LAYOUT=""
fi
MEM_TOTAL_MB=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
DEFAULT_MEM=$((MEM_TOTAL_MB / 2))
if ((DEFAULT_MEM > 8192)); then
    DEFAULT_MEM=8192
fi
MEMORY=${DLLM_SLURM_MEMORY_MB:-$DEFAULT_MEM}

NEW_CONF=$(
    cat <<EOF
$MARKER
# One node on loopback: no accounting, no cgroups. State directory: $STATE
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
# Seconds from SIGTERM to SIGKILL when a job is cancelled: enough for the running case of a
# tiny test grid to end and the suite to save, small enough to keep CI fast.
KillWait=10
MinJobAge=600
InactiveLimit=0
Waittime=0
MailProg=/bin/true
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS ${LAYOUT}RealMemory=$MEMORY State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
)

if [[ -f "$ETC_CONF" ]] && ! grep -qxF "$MARKER" "$ETC_CONF"; then
    die "$ETC_CONF exists and was not written by this script; not touching it (move it away to use this script)"
fi

conf_changed=0
if [[ ! -f "$CONF" ]] || [[ "$(cat "$CONF")" != "$NEW_CONF" ]]; then
    printf '%s\n' "$NEW_CONF" >"$CONF"
    conf_changed=1
    say "wrote $CONF (CPUs=$CPUS RealMemory=$MEMORY)"
fi
mkdir -p /etc/slurm
if ! cmp -s "$CONF" "$ETC_CONF"; then
    cp "$CONF" "$ETC_CONF"
    say "copied it to $ETC_CONF"
fi
export SLURM_CONF="$CONF"

# 4. Daemons.
if [[ $conf_changed -eq 1 ]]; then
    # A new config: restart whatever this script started before.
    for daemon in slurmd slurmctld; do
        if pid_alive "$STATE/run/$daemon.pid"; then
            say "config changed: stopping $daemon"
            kill "$(cat "$STATE/run/$daemon.pid")" || true
            for _ in $(seq 1 50); do
                pid_alive "$STATE/run/$daemon.pid" || break
                sleep 0.1
            done
        fi
    done
fi

if pid_alive "$STATE/run/slurmctld.pid"; then
    say "slurmctld is running (pid $(cat "$STATE/run/slurmctld.pid"))"
else
    say "starting slurmctld"
    slurmctld -f "$CONF"
fi
if pid_alive "$STATE/run/slurmd.pid"; then
    say "slurmd is running (pid $(cat "$STATE/run/slurmd.pid"))"
else
    say "starting slurmd"
    slurmd -f "$CONF" -N localhost
fi

# 5. Wait for the node.
deadline=$(($(date +%s) + TIMEOUT))
state=""
while :; do
    state=$(node_state)
    case "$state" in
    idle | mixed | allocated | completing)
        break
        ;;
    drain* | down*)
        # ReturnToService=2 brings a node back once slurmd registers; nudge it anyway.
        scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
        ;;
    esac
    if (($(date +%s) >= deadline)); then
        echo "start_slurm: the node is not idle after ${TIMEOUT} s (state: '${state:-no answer}')" >&2
        tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
        exit 1
    fi
    sleep 0.5
done
say "cluster $CLUSTER up: node localhost $state, $CPUS CPUs, partition debug; config $ETC_CONF;" \
    "state $STATE; $(($(date +%s) - T0)) s"

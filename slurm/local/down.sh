#!/usr/bin/env bash
# Stop the Slurm cluster started by slurm/local/up.sh (one node or several).
#
# Usage: slurm/local/down.sh [--purge]
#
# Stops only what up.sh started, by the pid files in the state folder
# ${SSL_HPC_SLURM_DIR:-/tmp/ssl-hpc-slurm}: slurmd, slurmctld, slurmdbd,
# mariadbd, and munged only if up.sh started it (its pid file is
# <state>/munge/munged.pid). Waits for each to exit (SIGKILL after
# SSL_HPC_SLURM_STOP_TIMEOUT seconds, default 30). With --nodes, also every process in the nodes'
# network namespaces, the namespaces, their links, the bridge and the nodes' private /tmp folders
# (exactly those listed in <state>/run/nodes.list). Exits 0 if already down.
# --purge also deletes the state folder (configs, job state, accounting DB, logs).
set -uo pipefail

STATE=${SSL_HPC_SLURM_DIR:-/tmp/ssl-hpc-slurm}
STOP_TIMEOUT=${SSL_HPC_SLURM_STOP_TIMEOUT:-30}
PURGE=0

for arg in "$@"; do
    case $arg in
        --purge) PURGE=1 ;;
        -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "[slurm/local/down] unknown argument: $arg" >&2; exit 2 ;;
    esac
done

log() { printf '[slurm/local/down] %s\n' "$*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "ERROR: must run as root"; exit 1; }
case $STATE in /*) ;; *) STATE="$(pwd)/$STATE" ;; esac

# pid_of PIDFILE COMM: print the pid if it is alive and its command is COMM
pid_of() {
    local f=$1 comm=$2 pid
    [[ -s $f ]] || return 1
    pid=$({ tr -dc '0-9' <"$f"; } 2>/dev/null)
    [[ -n $pid ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm" ]] || return 1
    grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null && return 1
    echo "$pid"
}

stop() { # name pidfile
    local name=$1 f=$2 pid deadline
    if ! pid=$(pid_of "$f" "$name"); then
        rm -f "$f"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while pid_of "$f" "$name" >/dev/null; do
        if ((SECONDS >= deadline)); then
            log "$name (pid $pid) still alive after ${STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    rm -f "$f"
}

# kill_tree PID: SIGKILL PID and all its descendants (each is SIGSTOPped first so it cannot fork away)
kill_tree() {
    local p=$1 c
    kill -STOP "$p" 2>/dev/null || true
    for c in $(pgrep -P "$p" 2>/dev/null); do kill_tree "$c"; done
    kill -KILL "$p" 2>/dev/null || true
}

if [[ -d $STATE ]]; then
    # Running jobs would die with slurmd's job steps but stay RUNNING in the
    # saved state (ghosts after a restart): cancel them first, while the
    # controller is up. Pending jobs are kept and run after the next up.sh.
    if pid_of "$STATE/run/slurmctld.pid" slurmctld >/dev/null && [[ -f $STATE/etc/slurm.conf ]]; then
        export SLURM_CONF=$STATE/etc/slurm.conf
        running=$(squeue -h -t RUNNING,SUSPENDED,CONFIGURING -o %i 2>/dev/null | tr '\n' ' ')
        if [[ -n ${running// /} ]]; then
            log "cancelling running jobs: $running"
            scancel --state=RUNNING 2>/dev/null || true
            scancel --state=SUSPENDED 2>/dev/null || true
            scancel --state=CONFIGURING 2>/dev/null || true
            deadline=$((SECONDS + STOP_TIMEOUT))
            while [[ -n "$(squeue -h -t RUNNING,SUSPENDED,CONFIGURING,COMPLETING -o %i 2>/dev/null)" ]] && ((SECONDS < deadline)); do
                sleep 0.3
            done
        fi
    fi
    # Order: compute nodes, controller, accounting daemon, its database, auth.
    stop slurmd "$STATE/run/slurmd.pid"
    for f in "$STATE"/run/slurmd-node*.pid; do [[ -e $f ]] && stop slurmd "$f"; done
    RUND=$STATE/run
    CTLD_PORT=$(sed -n 's/^SlurmctldPort=\([0-9]*\)$/\1/p' "$STATE/etc/slurm.conf" 2>/dev/null)
    if [[ -n $CTLD_PORT ]]; then
        # shellcheck source=slurm/local/nodes.sh
        source "$(dirname "${BASH_SOURCE[0]}")/nodes.sh"
        nodes_down
    fi
    stop slurmctld "$STATE/run/slurmctld.pid"
    stop slurmdbd "$STATE/run/slurmdbd.pid"
    stop mariadbd "$STATE/mariadb/mariadbd.pid"
    stop munged "$STATE/munge/munged.pid"
    # Job steps (slurmstepd) outlive slurmd by design. End those of this
    # cluster (they listen on unix sockets in our SlurmdSpoolDir), so that
    # nothing started by this cluster keeps running.
    spool_inodes=$(awk -v d="$STATE/spool/slurmd/" 'NR > 1 && index($8, d) == 1 {print $7}' /proc/net/unix 2>/dev/null | sort -u)
    if [[ -n $spool_inodes ]]; then
        for p in $(pgrep -x slurmstepd 2>/dev/null); do
            for fd in /proc/"$p"/fd/*; do
                ino=$(readlink "$fd" 2>/dev/null) || continue
                [[ $ino == socket:* ]] || continue
                ino=${ino#socket:[}
                ino=${ino%]}
                if grep -qx -- "$ino" <<<"$spool_inodes"; then
                    log "killing leftover job step daemon slurmstepd (pid $p) and its processes"
                    kill_tree "$p"
                    break
                fi
            done
        done
    fi
else
    log "no state folder $STATE: nothing to stop"
fi

if ((PURGE)); then
    log "removing $STATE"
    rm -rf -- "$STATE"
fi
log "down"
exit 0

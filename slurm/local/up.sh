#!/usr/bin/env bash
# Start a real Slurm cluster (with accounting via slurmdbd + a private MariaDB) on this machine, for
# tests and CI: by default one node on localhost; with --nodes N, N compute nodes node1..nodeN, each a
# slurmd in its own network namespace with its own hostname, address and private /tmp (nodes.sh).
#
# Usage:  eval "$(slurm/local/up.sh)" && export SLURM_CONF
#         eval "$(slurm/local/up.sh --nodes 2 --share /path/of/outputs)" && export SLURM_CONF
#
#   --nodes N      compute nodes in network namespaces (default 1: one slurmd on localhost, no namespace)
#   --share PATH   with --nodes: a folder the nodes share with the login node besides the state folder,
#                  this checkout and $MEDMNIST_ROOT (repeatable; also SSL_HPC_SLURM_SHARE, ':'-separated)
#
# stdout: exactly one line, SLURM_CONF=<absolute path of slurm.conf>
# stderr: progress messages.
#
# Everything the cluster writes lives in one state folder:
#   ${SSL_HPC_SLURM_DIR:-/tmp/ssl-hpc-slurm}
#     etc/       slurm.conf, slurmdbd.conf (600), dbpass (600)
#     log/       slurmctld.log slurmd.log slurmdbd.log (+ *.stdout: daemons'
#                start-up output), apt-install.log (if up.sh installed packages)
#     run/       slurmctld.pid slurmd.pid slurmdbd.pid
#     spool/     slurmctld/ (StateSaveLocation), slurmd/ (SlurmdSpoolDir)
#     mariadb/   data/ mysqld.sock mariadbd.pid mariadbd.log   (owned by mysql)
#     munge/     munged.pid munged.log munged.seed             (owned by munge,
#                only if this script had to start munged)
# The munge socket is the system default /run/munge/munge.socket.2 and the key
# /etc/munge/munge.key (created if missing), so that every Slurm client works.
#
# Idempotent: if the daemons are alive (by their pid files) it only checks the
# cluster and prints the line again; missing daemons are (re)started from the
# existing state. Stop with slurm/local/down.sh.
#
# Environment knobs:
#   SSL_HPC_SLURM_DIR      state folder (default /tmp/ssl-hpc-slurm)
#   SSL_HPC_SLURM_TIMEOUT  seconds to wait for each daemon (default 90)
#   SSL_HPC_SLURM_NO_APT=1 never call apt-get (fail if something is missing)
#   SSL_HPC_SLURM_PORT     first of 3 TCP ports: slurmctld, slurmd, slurmdbd
#                          (default 6817 -> 6817 6818 6819, Slurm's defaults)
#   SSL_HPC_SLURM_SUBNET   with --nodes: the nodes' /24 (default 10.213.77; the login node is .1)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHECKOUT=$(cd "$HERE/../.." && pwd)
NODES=
SHARES=()
if [[ -n ${SSL_HPC_SLURM_SHARE:-} ]]; then IFS=: read -r -a SHARES <<<"$SSL_HPC_SLURM_SHARE"; fi
while (($#)); do
    case $1 in
        --nodes) NODES=${2:-}; shift 2 || { echo "[slurm/local/up] --nodes needs a number" >&2; exit 2; } ;;
        --nodes=*) NODES=${1#--nodes=}; shift ;;
        --share) SHARES+=("${2:-}"); shift 2 || { echo "[slurm/local/up] --share needs a folder" >&2; exit 2; } ;;
        --share=*) SHARES+=("${1#--share=}"); shift ;;
        -h | --help) sed -n '2,40p' "$0"; exit 0 ;;
        *) echo "[slurm/local/up] unknown argument: $1 (accepted: --nodes N, --share PATH)" >&2; exit 2 ;;
    esac
done

STATE=${SSL_HPC_SLURM_DIR:-/tmp/ssl-hpc-slurm}
TIMEOUT=${SSL_HPC_SLURM_TIMEOUT:-90}
PORT_BASE=${SSL_HPC_SLURM_PORT:-6817}
if ! [[ $PORT_BASE =~ ^[0-9]+$ ]] || ((PORT_BASE < 1024 || PORT_BASE > 65533)); then
    echo "[slurm/local/up] ERROR: SSL_HPC_SLURM_PORT must be a number in 1024..65533" >&2
    exit 1
fi
CTLD_PORT=$PORT_BASE
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
CLUSTER=sslhpc
PARTITION=debug
ACCT_DB=slurm_acct_db
ACCT_DB_USER=slurm

log() { printf '[slurm/local/up] %s\n' "$*" >&2; }
die() { printf '[slurm/local/up] ERROR: %s\n' "$*" >&2; exit 1; }

# A daemon failed to come up: say which, where its log is, show its tail
# (and that of the file that got its stdout/stderr, if any).
daemon_failed() { # name logfile [reason]
    local name=$1 logf=$2 reason=${3:-"did not come up within ${TIMEOUT}s"} f
    printf '[slurm/local/up] ERROR: %s %s; log file: %s\n' "$name" "$reason" "$logf" >&2
    for f in "$logf" "${logf%.log}.stdout"; do
        if [[ -s $f ]]; then
            printf '[slurm/local/up] ---- last lines of %s ----\n' "$f" >&2
            tail -n 25 "$f" >&2 || true
        fi
    done
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons as root)"
case $STATE in /*) ;; *) STATE="$(pwd)/$STATE" ;; esac

ETC=$STATE/etc
LOGD=$STATE/log
RUND=$STATE/run
SPOOL=$STATE/spool
DBDIR=$STATE/mariadb
MUNGEDIR=$STATE/munge
SLURM_CONF_FILE=$ETC/slurm.conf
SLURMDBD_CONF_FILE=$ETC/slurmdbd.conf
DB_SOCK=$DBDIR/mysqld.sock
DB_PID=$DBDIR/mariadbd.pid
DB_LOG=$DBDIR/mariadbd.log
MUNGE_PID=$MUNGEDIR/munged.pid
MUNGE_LOG=$MUNGEDIR/munged.log
MUNGE_SOCK=/run/munge/munge.socket.2
MUNGE_KEY=/etc/munge/munge.key
HOST=$(hostname -s)
# A running cluster keeps its node count unless --nodes says otherwise.
if [[ -z $NODES ]]; then NODES=$(cat "$ETC/nodes" 2>/dev/null || echo 1); fi
[[ $NODES =~ ^[0-9]+$ ]] || { echo "[slurm/local/up] --nodes must be a whole number (got '$NODES')" >&2; exit 2; }
MULTI=$((NODES > 1))
# shellcheck source=slurm/local/nodes.sh
source "$HERE/nodes.sh"

# ---------------------------------------------------------------- helpers ---

# pid_alive PIDFILE COMM: the pid in PIDFILE is running and its command is COMM
pid_alive() {
    local f=$1 comm=$2 pid
    [[ -s $f ]] || return 1
    pid=$({ tr -dc '0-9' <"$f"; } 2>/dev/null)
    [[ -n $pid ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm" ]] || return 1
    # a zombie (exited, not yet reaped) is not alive
    ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

# wait_for NAME LOGFILE CMD...: retry CMD until it succeeds or TIMEOUT passes
wait_for() {
    local name=$1 logf=$2
    shift 2
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || daemon_failed "$name" "$logf"
        sleep 0.5
    done
}

# wait_daemon NAME PIDFILE LOGFILE CMD...: until the daemon of PIDFILE is
# alive and CMD succeeds; fail early if the daemon is gone after a grace time.
wait_daemon() {
    local name=$1 pidf=$2 logf=$3
    shift 3
    local start=$SECONDS deadline=$((SECONDS + TIMEOUT))
    while :; do
        if pid_alive "$pidf" "$name"; then
            "$@" >/dev/null 2>&1 && return 0
        elif ((SECONDS - start >= 10)); then
            daemon_failed "$name" "$logf" "exited (no live process for $pidf)"
        fi
        ((SECONDS < deadline)) || daemon_failed "$name" "$logf"
        sleep 0.3
    done
}

# port_free PORT NAME: nothing listens on 127.0.0.1:PORT (else fail loudly:
# another Slurm would answer our clients' requests)
port_free() {
    local port=$1 name=$2
    if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
        local who
        who=$(ss -H -ltnp "sport = :$port" 2>/dev/null | grep -o 'users:.*' | head -n1 || true)
        die "cannot start $name: TCP port $port is already in use ${who:+($who) }(another Slurm? stop it, or set SSL_HPC_SLURM_PORT)"
    fi
}

# ---------------------------------------------------------------- install ---

install_packages() {
    local missing=() p
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
    command -v mariadb >/dev/null || missing+=(mariadb-client)
    for p in munge slurmctld slurmd slurm-client slurmdbd mariadb-server; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            [[ " ${missing[*]} " == *" $p "* ]] || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    [[ ${SSL_HPC_SLURM_NO_APT:-0} == 1 ]] && die "missing packages: ${missing[*]} (SSL_HPC_SLURM_NO_APT=1)"

    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Packages' maintainer scripts must not start the system-wide services
    # (munge, mariadb, slurm*): block them with a temporary policy-rc.d if the
    # machine has none (Debian's docker-style images ship one already).
    local made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local t0=$SECONDS rc=0
    local apt_log=$STATE/log/apt-install.log
    mkdir -p "$STATE/log"
    apt-get install -y --no-install-recommends "${missing[@]}" >"$apt_log" 2>&1 || rc=$?
    if ((rc != 0)); then
        log "apt-get install failed (rc=$rc); running apt-get update and retrying"
        apt-get update >>"$apt_log" 2>&1 || true
        rc=0
        apt-get install -y --no-install-recommends "${missing[@]}" >>"$apt_log" 2>&1 || rc=$?
    fi
    ((made_policy)) && rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || { tail -n 20 "$apt_log" >&2; die "apt-get install ${missing[*]} failed; see $apt_log"; }
    log "installed in $((SECONDS - t0))s (log: $apt_log)"
}

# ------------------------------------------------------------------ munge ---

munge_works() { munge -n -S "$MUNGE_SOCK" </dev/null 2>/dev/null | unmunge -S "$MUNGE_SOCK" >/dev/null 2>&1; }

start_munge() {
    if pid_alive "$MUNGE_PID" munged; then
        log "munged already running (pid $(cat "$MUNGE_PID"), started by up.sh)"
        return 0
    fi
    if munge_works; then
        log "a munged not started by up.sh already answers on $MUNGE_SOCK; using it (down.sh leaves it alone)"
        rm -f "$MUNGE_PID"
        return 0
    fi
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating $MUNGE_KEY"
        install -d -o munge -g munge -m 700 /etc/munge
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 400 "$MUNGE_KEY"
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 "$MUNGEDIR"
    rm -f "$MUNGE_PID"
    log "starting munged"
    # munged refuses to run as root; it daemonizes itself.
    setsid runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCK" --key-file="$MUNGE_KEY" \
        --pid-file="$MUNGE_PID" --log-file="$MUNGE_LOG" --seed-file="$MUNGEDIR/munged.seed" \
        </dev/null >>"$MUNGEDIR/munged.stdout" 2>&1 ||
        daemon_failed munged "$MUNGE_LOG" "failed to start"
    wait_daemon munged "$MUNGE_PID" "$MUNGE_LOG" munge_works
}

# ---------------------------------------------------------------- mariadb ---

# shellcheck disable=SC2120  # called with arguments through wait_daemon
db_sql() { mariadb --no-defaults --socket="$DB_SOCK" -u root "$@"; }

start_mariadb() {
    if pid_alive "$DB_PID" mariadbd; then
        log "mariadbd already running (pid $(cat "$DB_PID"))"
        return 0
    fi
    install -d -o mysql -g mysql -m 750 "$DBDIR"
    if ((${#DB_SOCK} > 100)); then
        die "MariaDB socket path too long for a unix socket (${#DB_SOCK} chars): $DB_SOCK; use a shorter SSL_HPC_SLURM_DIR"
    fi
    if [[ ! -d $DBDIR/data/mysql ]]; then
        log "initialising MariaDB datadir $DBDIR/data"
        rm -rf "$DBDIR/data"
        mariadb-install-db --no-defaults --datadir="$DBDIR/data" --user=mysql \
            --auth-root-authentication-method=socket --skip-test-db \
            >>"$DB_LOG" 2>&1 || daemon_failed "mariadb-install-db" "$DB_LOG" "failed"
        chown -R mysql:mysql "$DBDIR"
    fi
    rm -f "$DB_PID"
    log "starting mariadbd (socket only: $DB_SOCK)"
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DBDIR/data" \
        --socket="$DB_SOCK" --pid-file="$DB_PID" --log-error="$DB_LOG" \
        --skip-networking --skip-name-resolve \
        --innodb-buffer-pool-size=256M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
        </dev/null >>"$DB_LOG" 2>&1 &
    disown || true
    wait_daemon mariadbd "$DB_PID" "$DB_LOG" db_sql -e 'SELECT 1'
}

setup_acct_db() {
    local pass=$1
    # shellcheck disable=SC2119
    db_sql <<SQL || die "could not create the accounting database/user (log: $DB_LOG)"
CREATE DATABASE IF NOT EXISTS \`$ACCT_DB\`;
CREATE USER IF NOT EXISTS '$ACCT_DB_USER'@'localhost' IDENTIFIED BY '$pass';
ALTER USER '$ACCT_DB_USER'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL PRIVILEGES ON \`$ACCT_DB\`.* TO '$ACCT_DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
}

# ---------------------------------------------------------------- configs ---

write_if_changed() { # dest mode: content from stdin
    local dest=$1 mode=$2 tmp
    tmp=$(mktemp "$dest.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
    else
        mv -f "$tmp" "$dest"
        log "wrote $dest"
    fi
}

# The NodeName lines (and where each slurmd keeps its files): one node on localhost, or nodes.sh's nodes.
node_config() {
    local node_resources=$1 i
    if ((MULTI)); then
        echo "SlurmdSpoolDir=$SPOOL/slurmd/%n"
        echo "SlurmdPidFile=$RUND/slurmd-%n.pid"
        echo "SlurmdLogFile=$LOGD/slurmd-%n.log"
        for ((i = 1; i <= NODES; i++)); do
            echo "NodeName=$(node_name "$i") NodeAddr=$(node_addr "$i") NodeHostname=$(node_name "$i") $node_resources"
        done
    else
        echo "SlurmdSpoolDir=$SPOOL/slurmd"
        echo "SlurmdPidFile=$RUND/slurmd.pid"
        echo "SlurmdLogFile=$LOGD/slurmd.log"
        echo "NodeName=$HOST NodeAddr=127.0.0.1 NodeHostname=$HOST $node_resources"
    fi
}

write_configs() {
    local pass=$1 ncpu mem_mb real_mem topo ctld_addr=127.0.0.1
    ((MULTI)) && ctld_addr=$LOGIN_ADDR
    ncpu=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys those two; Slurm needs the real count
    mem_mb=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
    # leave 10% (at least 512 MB) to the OS and the daemons
    real_mem=$((mem_mb - (mem_mb / 10 > 512 ? mem_mb / 10 : 512)))
    ((real_mem > 256)) || real_mem=256
    # Sockets/Cores/Threads as slurmd sees them, so that the node config matches.
    topo=$(slurmd -C 2>/dev/null | head -n1 | grep -o -E '(Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' | tr '\n' ' ' || true)

    write_if_changed "$SLURM_CONF_FILE" 644 <<EOF
# Generated by slurm/local/up.sh -- test cluster of $NODES node(s). Edits are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=$HOST($ctld_addr)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
JobRequeue=1
MailProg=/bin/true

# timers: fast scheduling, quick cleanup, finished jobs visible in squeue for a minute
MinJobAge=60
KillWait=5
InactiveLimit=60
SlurmctldTimeout=30
# a dead node is declared DOWN (and its jobs requeued) after this many seconds
SlurmdTimeout=20
Waittime=0
MessageTimeout=10
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,batch_sched_delay=0,sched_min_interval=100000,bf_interval=2,bf_resolution=1

# accounting through slurmdbd (own MariaDB in the state folder)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none

# everything in the state folder
StateSaveLocation=$SPOOL/slurmctld
SlurmctldPidFile=$RUND/slurmctld.pid
SlurmctldLogFile=$LOGD/slurmctld.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
PlugStackConfig=$ETC/plugstack.conf

$(node_config "CPUs=$ncpu ${topo}RealMemory=$real_mem State=UNKNOWN")
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

    write_if_changed "$ETC/plugstack.conf" 644 </dev/null

    write_if_changed "$SLURMDBD_CONF_FILE" 600 <<EOF
# Generated by slurm/local/up.sh. Edits are overwritten.
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$LOGD/slurmdbd.log
PidFile=$RUND/slurmdbd.pid
StorageType=accounting_storage/mysql
# localhost = unix socket; slurmdbd is started with MYSQL_UNIX_PORT=$DB_SOCK
StorageHost=localhost
StorageUser=$ACCT_DB_USER
StoragePass=$pass
StorageLoc=$ACCT_DB
EOF
    chown root:root "$SLURMDBD_CONF_FILE"
    chmod 600 "$SLURMDBD_CONF_FILE"
}

# ------------------------------------------------------------------ slurm ---

export SLURM_CONF=$SLURM_CONF_FILE

start_slurmdbd() {
    if pid_alive "$RUND/slurmdbd.pid" slurmdbd; then
        log "slurmdbd already running (pid $(cat "$RUND/slurmdbd.pid"))"
    else
        rm -f "$RUND/slurmdbd.pid"
        port_free "$DBD_PORT" slurmdbd
        log "starting slurmdbd"
        # slurmdbd reads slurmdbd.conf next to $SLURM_CONF; it daemonizes itself.
        MYSQL_UNIX_PORT=$DB_SOCK setsid /usr/sbin/slurmdbd </dev/null >>"$LOGD/slurmdbd.stdout" 2>&1 ||
            daemon_failed slurmdbd "$LOGD/slurmdbd.log" "failed to start"
    fi
    wait_daemon slurmdbd "$RUND/slurmdbd.pid" "$LOGD/slurmdbd.log" sacctmgr -n -P list cluster format=cluster
    if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
        log "registering cluster $CLUSTER in slurmdbd"
        sacctmgr -i add cluster "$CLUSTER" >&2 || die "sacctmgr add cluster $CLUSTER failed (log: $LOGD/slurmdbd.log)"
    fi
}

start_slurmctld() {
    if pid_alive "$RUND/slurmctld.pid" slurmctld; then
        log "slurmctld already running (pid $(cat "$RUND/slurmctld.pid"))"
    else
        rm -f "$RUND/slurmctld.pid"
        port_free "$CTLD_PORT" slurmctld
        log "starting slurmctld"
        setsid /usr/sbin/slurmctld -f "$SLURM_CONF_FILE" </dev/null >>"$LOGD/slurmctld.stdout" 2>&1 ||
            daemon_failed slurmctld "$LOGD/slurmctld.log" "failed to start"
    fi
    wait_daemon slurmctld "$RUND/slurmctld.pid" "$LOGD/slurmctld.log" scontrol ping
}

start_slurmd() {
    if pid_alive "$RUND/slurmd.pid" slurmd; then
        log "slurmd already running (pid $(cat "$RUND/slurmd.pid"))"
    else
        rm -f "$RUND/slurmd.pid"
        port_free "$SLURMD_PORT" slurmd
        log "starting slurmd"
        setsid /usr/sbin/slurmd -f "$SLURM_CONF_FILE" </dev/null >>"$LOGD/slurmd.stdout" 2>&1 ||
            daemon_failed slurmd "$LOGD/slurmd.log" "failed to start"
    fi
    wait_daemon slurmd "$RUND/slurmd.pid" "$LOGD/slurmd.log" true
}

node_state() { sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -n1; }

wait_node_idle() { # node pidfile logfile
    local node=$1 pidf=$2 logf=$3 deadline=$((SECONDS + TIMEOUT)) st resumed=0
    while :; do
        pid_alive "$pidf" slurmd || daemon_failed "slurmd of $node" "$logf" "exited"
        st=$(node_state "$node" || true)
        case $st in
            idle | mixed | allocated | completing) return 0 ;;
            drain* | down* | fail*)
                # e.g. left DOWN by an unclean stop; bring it back once
                if ((resumed == 0)) && pid_alive "$pidf" slurmd; then
                    log "node $node is '$st'; resuming it"
                    scontrol update nodename="$node" state=resume >&2 2>/dev/null || true
                    resumed=1
                fi
                ;;
        esac
        ((SECONDS < deadline)) || {
            printf '[slurm/local/up] node state: %s\n' "${st:-unknown}" >&2
            sinfo -N -l >&2 2>/dev/null || true
            daemon_failed "slurmd (node $node idle)" "$logf"
        }
        sleep 0.5
    done
}

# The state folder is under /tmp by default, where anyone can create a path first. This script runs
# as root: it refuses a folder (or anything inside it that it writes) that someone else could have
# planted or can change -- a symlink, a folder not owned by root, a group- or world-writable folder --
# rather than write through it.
check_state_folder() {
    if [[ -L $STATE ]]; then
        die "state folder $STATE is a symbolic link; remove it or set SSL_HPC_SLURM_DIR to a folder of your own"
    fi
    if [[ ! -e $STATE ]]; then
        mkdir -m 755 "$STATE" || die "could not create the state folder $STATE"
    fi
    local owner mode
    owner=$(stat -c %u "$STATE") mode=$(stat -c %a "$STATE")
    [[ -d $STATE ]] || die "state folder $STATE is not a folder"
    ((owner == 0)) || die "state folder $STATE is owned by uid $owner, not root: someone else could have planted \
it; remove it or set SSL_HPC_SLURM_DIR"
    ((8#$mode & 8#022)) && die "state folder $STATE is group- or world-writable (mode $mode); remove it or set \
SSL_HPC_SLURM_DIR"
    local path
    for path in "$ETC" "$LOGD" "$RUND" "$SPOOL" "$SPOOL/slurmctld" "$SPOOL/slurmd" "$DBDIR" "$MUNGEDIR" \
        "$ETC/dbpass" "$ETC/slurm.conf" "$ETC/slurmdbd.conf" "$ETC/cgroup.conf" "$ETC/hosts" "$ETC/shares" \
        "$ETC/nodes" "$STATE/nodes"; do
        if [[ -L $path ]]; then
            die "$path is a symbolic link; refusing to write through it (remove $STATE to start afresh)"
        fi
        if [[ -e $path && $(stat -c %u "$path") != 0 && $path != "$DBDIR" && $path != "$MUNGEDIR" ]]; then
            die "$path is not owned by root; refusing to use it (remove $STATE to start afresh)"
        fi
    done
}

# ------------------------------------------------------------------- main ---

check_state_folder
install_packages

install -d -m 755 "$ETC" "$LOGD" "$RUND" "$SPOOL" "$SPOOL/slurmctld" "$SPOOL/slurmd"

if [[ ! -s $ETC/dbpass ]]; then
    (umask 077 && head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$ETC/dbpass")
fi
chmod 600 "$ETC/dbpass"
DB_PASS=$(cat "$ETC/dbpass")

# Each compute node: its name, the pid file and log of its slurmd.
NODE_NAMES=() NODE_PIDS=() NODE_LOGS=()
if ((MULTI)); then
    check_subnet
    for ((i = 1; i <= NODES; i++)); do
        NODE_NAMES+=("$(node_name "$i")") NODE_PIDS+=("$(node_pidfile "$i")") NODE_LOGS+=("$LOGD/slurmd-node$i.log")
    done
else
    NODE_NAMES=("$HOST") NODE_PIDS=("$RUND/slurmd.pid") NODE_LOGS=("$LOGD/slurmd.log")
fi

all_up=1
pid_alive "$DB_PID" mariadbd || all_up=0
for d in slurmdbd slurmctld; do pid_alive "$RUND/$d.pid" "$d" || all_up=0; done
for f in "${NODE_PIDS[@]}"; do pid_alive "$f" slurmd || all_up=0; done
munge_works || all_up=0
recorded_nodes=$(cat "$ETC/nodes" 2>/dev/null || echo "$NODES")
if [[ $recorded_nodes != "$NODES" ]] && pid_alive "$RUND/slurmctld.pid" slurmctld; then
    die "the cluster in $STATE is up with $recorded_nodes node(s), not $NODES: stop it first (slurm/local/down.sh)"
fi

if ((all_up)); then
    log "cluster already up (state: $STATE)"
else
    if ((MULTI)); then
        bridge_up
        for ((i = 1; i <= NODES; i++)); do node_net_up "$i"; done
        write_hosts
        write_shares "$CHECKOUT" "${SHARES[@]}"
    fi
    write_configs "$DB_PASS"
    echo "$NODES" | write_if_changed "$ETC/nodes" 644
    start_munge
    start_mariadb
    setup_acct_db "$DB_PASS"
    start_slurmdbd
    start_slurmctld
    if ((MULTI)); then
        for ((i = 1; i <= NODES; i++)); do start_node "$i"; done
    else
        start_slurmd
    fi
fi

wait_for slurmctld "$LOGD/slurmctld.log" scontrol ping
for ((i = 0; i < ${#NODE_NAMES[@]}; i++)); do wait_node_idle "${NODE_NAMES[i]}" "${NODE_PIDS[i]}" "${NODE_LOGS[i]}"; done
wait_for "slurmdbd (sacct)" "$LOGD/slurmdbd.log" sacct -n -X -a -S now-1hours -o jobid
# every daemon is still ours and alive (none died after answering once)
pid_alive "$DB_PID" mariadbd || daemon_failed mariadbd "$DB_LOG" "is not running any more"
pid_alive "$RUND/slurmdbd.pid" slurmdbd || daemon_failed slurmdbd "$LOGD/slurmdbd.log" "is not running any more"
pid_alive "$RUND/slurmctld.pid" slurmctld || daemon_failed slurmctld "$LOGD/slurmctld.log" "is not running any more"
for ((i = 0; i < ${#NODE_NAMES[@]}; i++)); do
    pid_alive "${NODE_PIDS[i]}" slurmd || daemon_failed "slurmd of ${NODE_NAMES[i]}" "${NODE_LOGS[i]}" "is not running any more"
done
log "cluster $CLUSTER up: $(sinfo -h -N -o '%N %T' 2>/dev/null | tr '\n' ' '); logs in $LOGD"
printf 'SLURM_CONF=%q\n' "$SLURM_CONF_FILE"

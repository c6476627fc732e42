#!/usr/bin/env bash
# The tracking server for jobs on many nodes: MLflow backed by a private PostgreSQL, with MLflow's
# basic-auth app and artifacts served over HTTP (nodes upload through the server and never write the
# artifact folder themselves). mlflow/serve.sh stays the quick UI over the local SQLite store.
#
#   eval "$(mlflow/server.sh)"      # start (or find running); stdout is exactly two lines:
#                                   #   MLFLOW_TRACKING_URI=http://<host>:<port>
#                                   #   SSL_HPC_MLFLOW_CREDENTIALS=<state>/credentials
#   export MLFLOW_TRACKING_URI SSL_HPC_MLFLOW_CREDENTIALS
#   mlflow/server.sh status         # what runs; exit 0 when both PostgreSQL and MLflow answer, else 3
#   mlflow/server.sh stop           # stops MLflow, then PostgreSQL (the data stays)
#   mlflow/server.sh start --workers 4   # anything after `start` goes to `mlflow server`
#
# Everything lives in one state folder, ${SSL_HPC_MLFLOW_STATE:-<checkout>/mlflow/server}, readable by
# its owner only (mode 0700; 0710 with group postgres when run as root, so that the database user can
# reach its own subfolder):
#   postgres/      owned by the database user, 0700: data/, the unix socket, postgresql.log
#   artifacts/     what the server stores for --serve-artifacts
#   credentials    0600, the admin's user name and password for clients (MLflow's own ini format)
#   pgpass         0600, the database role's password (libpq's password file; never on a command line)
#   auth.ini       0600, the basic-auth app's configuration (its users live in the same PostgreSQL database)
#   secret_key     0600, Flask's CSRF key
#   mlflow.pid, mlflow.log, tracking_uri
# PostgreSQL listens on its unix socket only (no TCP). PostgreSQL refuses to run as root: as root, it runs
# as the `postgres` system user; otherwise as you. Debian's `postgresql` is installed with apt-get when
# initdb is missing and this runs as root.
#
# Environment: MLFLOW_HOST (default 127.0.0.1), MLFLOW_PORT (5000), MLFLOW_WORKERS (2),
# MLFLOW_ALLOWED_HOSTS (off loopback; default this machine's names, as serve.sh), PYTHON (default the
# checkout's .venv, else python3), SSL_HPC_MLFLOW_TIMEOUT (seconds to wait for each server, 120).
# Exit codes: 0 ok, 1 failure, 2 missing prerequisites (no PostgreSQL and cannot install it, no mlflow).
set -euo pipefail
umask 077
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE=${SSL_HPC_MLFLOW_STATE:-$here/server}
case $STATE in /*) ;; *) STATE="$(pwd)/$STATE" ;; esac
host=${MLFLOW_HOST:-127.0.0.1}
port=${MLFLOW_PORT:-5000}
workers=${MLFLOW_WORKERS:-2}
TIMEOUT=${SSL_HPC_MLFLOW_TIMEOUT:-120}
DB_NAME=mlflow
DB_ROLE=mlflow
ADMIN=admin
PG_PORT=5432 # a socket in our own folder: no clash with any other PostgreSQL on this machine

PGDIR=$STATE/postgres
PGDATA=$PGDIR/data
PGLOG=$PGDIR/postgresql.log       # the server's own log (written by the database user)
SETUP_LOG=$STATE/postgres-setup.log # what initdb and pg_ctl print
PIDFILE=$STATE/mlflow.pid
LOG=$STATE/mlflow.log

log() { printf '[mlflow/server] %s\n' "$*" >&2; }
die() { printf '[mlflow/server] ERROR: %s\n' "$1" >&2; exit "${2:-1}"; }
show_tail() { [[ -s $1 ]] && { log "---- last lines of $1 ----"; tail -n 25 "$1" >&2; }; return 0; }

# ------------------------------------------------------------------ who runs the database ---

if (($(id -u) == 0)); then
    DB_USER=postgres
    as_db() { (cd / && runuser -u "$DB_USER" -- "$@"); }
else
    DB_USER=$(id -un)
    as_db() { (cd / && "$@"); }
fi

find_pg_bin() {
    local dir
    # Debian keeps the server binaries out of PATH, one folder per major version: take the newest.
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]] && { echo "$dir"; return 0; }
    done
    dir=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
    [[ -x $dir/initdb && -x $dir/pg_ctl ]] && { echo "$dir"; return 0; }
    return 1
}

install_postgresql() {
    (($(id -u) == 0)) || die "PostgreSQL is not installed (no initdb); install Debian's postgresql \
(apt-get install postgresql) or run this once as root" 2
    command -v apt-get >/dev/null || die "PostgreSQL is not installed and there is no apt-get" 2
    log "installing Debian's postgresql (log: $STATE/apt-install.log)"
    export DEBIAN_FRONTEND=noninteractive
    # The package's scripts must not start the system-wide cluster: block them with a temporary
    # policy-rc.d if the machine has none (as slurm/local/up.sh does).
    local made_policy=0 rc=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
    fi
    apt-get install -y --no-install-recommends postgresql >"$STATE/apt-install.log" 2>&1 || rc=$?
    if ((rc != 0)); then
        rc=0
        apt-get update >>"$STATE/apt-install.log" 2>&1 || true
        apt-get install -y --no-install-recommends postgresql >>"$STATE/apt-install.log" 2>&1 || rc=$?
    fi
    ((made_policy)) && rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || { show_tail "$STATE/apt-install.log"; die "apt-get install postgresql failed" 2; }
}

# find_python, allowed_hosts_args
# shellcheck source=mlflow/common.sh
source "$here/common.sh"

# ------------------------------------------------------------------------- the state folder ---

# The folder holds passwords: refuse one that someone else could have planted or can change (a symlink,
# a folder of another user, one others can write), rather than write secrets through it.
check_state() {
    [[ ! -L $STATE ]] || die "state folder $STATE is a symbolic link; remove it or set SSL_HPC_MLFLOW_STATE"
    if [[ ! -e $STATE ]]; then
        mkdir -p "$(dirname "$STATE")"
        mkdir -m 700 "$STATE" || die "could not create the state folder $STATE"
    fi
    [[ -d $STATE ]] || die "state folder $STATE is not a folder"
    local owner mode path
    owner=$(stat -c %u "$STATE") mode=$(stat -c %a "$STATE")
    ((owner == $(id -u))) || die "state folder $STATE is owned by uid $owner, not by you ($(id -u)): \
someone else could have planted it; remove it or set SSL_HPC_MLFLOW_STATE"
    ((!(8#$mode & 8#022))) || die "state folder $STATE is writable by others (mode $mode); remove it or set \
SSL_HPC_MLFLOW_STATE"
    for path in "$PGDIR" "$STATE/artifacts" "$STATE/credentials" "$STATE/pgpass" "$STATE/auth.ini" \
        "$STATE/secret_key" "$PIDFILE" "$LOG" "$STATE/tracking_uri" "$STATE/apt-install.log" "$SETUP_LOG"; do
        [[ ! -L $path ]] || die "$path is a symbolic link; refusing to write through it"
    done
}

# Readable by its owner only; as root the database user may pass through (x) to its own subfolder.
secure_state() {
    if [[ $DB_USER != "$(id -un)" ]]; then
        chgrp "$DB_USER" "$STATE" && chmod 710 "$STATE"
    else
        chmod 700 "$STATE"
    fi
}

secret() { head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32; }

# A file of ours, mode 0600, written only if missing (the passwords are generated once).
ensure_secret_file() { # path
    [[ -s $1 ]] || (umask 077 && secret >"$1.tmp" && mv -f "$1.tmp" "$1")
    chmod 600 "$1"
}

write_file() { # path: content from stdin, mode 0600, replaced atomically
    (umask 077 && cat >"$1.tmp" && mv -f "$1.tmp" "$1")
}

# --------------------------------------------------------------------------------- PostgreSQL ---

pg_running() { [[ -f $PGDATA/postmaster.pid ]] && as_db "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

psql_admin() { as_db "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$PGDIR" -p "$PG_PORT" -U "$DB_USER" -d postgres "$@"; }

start_postgres() {
    local sock=$PGDIR/.s.PGSQL.$PG_PORT
    ((${#sock} <= 100)) || die "the PostgreSQL socket path is too long for a unix socket (${#sock} chars): $sock; \
use a shorter SSL_HPC_MLFLOW_STATE"
    if [[ ! -d $PGDIR ]]; then
        mkdir -m 700 "$PGDIR"
        chown "$DB_USER" "$PGDIR"
    fi
    as_db test -w "$PGDIR" || die "the database user $DB_USER cannot reach $PGDIR: a parent folder of \
$STATE is closed to it; choose a state folder under folders others may traverse"
    if [[ ! -s $PGDATA/PG_VERSION ]]; then
        log "creating the PostgreSQL cluster in $PGDATA"
        rm -rf "$PGDATA"
        as_db "$PG_BIN/initdb" -D "$PGDATA" -U "$DB_USER" -E UTF8 --locale=C.UTF-8 --auth-local=peer \
            --auth-host=reject >>"$SETUP_LOG" 2>&1 || { show_tail "$SETUP_LOG"; die "initdb failed"; }
        # The superuser only through the socket as its own system user; the MLflow role with its password.
        as_db tee "$PGDATA/pg_hba.conf" >/dev/null <<EOF
# Written by mlflow/server.sh: unix socket only, no TCP entries.
local all $DB_USER peer
local $DB_NAME $DB_ROLE scram-sha-256
EOF
        as_db tee -a "$PGDATA/postgresql.conf" >/dev/null <<EOF
# mlflow/server.sh: no TCP at all; the socket in this cluster's own folder.
listen_addresses = ''
unix_socket_permissions = 0700
include_if_exists = 'ssl_hpc_socket.conf'
EOF
    fi
    # The socket folder is written at every start: the state folder may have moved.
    printf "unix_socket_directories = '%s'\nport = %s\n" "$PGDIR" "$PG_PORT" |
        as_db tee "$PGDATA/ssl_hpc_socket.conf" >/dev/null
    if pg_running; then
        log "PostgreSQL already running (socket $PGDIR)"
    else
        log "starting PostgreSQL (socket only: $PGDIR)"
        as_db setsid -w "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGLOG" -w -t "$TIMEOUT" start \
            </dev/null >>"$SETUP_LOG" 2>&1 ||
            { show_tail "$PGLOG"; die "PostgreSQL did not start; log: $PGLOG"; }
    fi
    # The role and its database; the password is (re)set from our file each start.
    local password
    password=$(cut -d: -f5- "$STATE/pgpass")
    psql_admin <<SQL >/dev/null || die "could not create the database role $DB_ROLE (log: $PGLOG)"
SET log_statement = 'none';
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_ROLE') THEN CREATE ROLE $DB_ROLE LOGIN; END IF;
END \$\$;
ALTER ROLE $DB_ROLE WITH LOGIN PASSWORD '$password';
SQL
    if [[ -z $(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'") ]]; then
        psql_admin -c "CREATE DATABASE $DB_NAME OWNER $DB_ROLE" >/dev/null ||
            die "could not create the database $DB_NAME (log: $PGLOG)"
    fi
}

stop_postgres() {
    [[ -n ${PG_BIN:-} ]] || return 0
    if pg_running; then
        log "stopping PostgreSQL"
        as_db "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w -t "$TIMEOUT" stop >&2 || die "PostgreSQL did not stop"
    fi
}

# ------------------------------------------------------------------------------------ MLflow ---

mlflow_pid() { # the pid of our MLflow server if it is alive, else nothing
    local pid
    [[ -s $PIDFILE ]] || return 1
    pid=$(cat "$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- '-m mlflow server' || return 1
    echo "$pid"
}

answers() { # url: any HTTP answer (401 included) means the server is up
    "$python" - "$1" <<'PY' 2>/dev/null
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/health", timeout=5)
except urllib.error.HTTPError:
    pass
except Exception:
    sys.exit(1)
PY
}

client_url() { # what clients use: the bound address, or this machine's name when bound to all interfaces
    case $host in
        0.0.0.0 | "::" | "[::]") echo "http://$(hostname -f 2>/dev/null || hostname):$port" ;;
        *:*) echo "http://[$host]:$port" ;;
        *) echo "http://$host:$port" ;;
    esac
}

write_configs() {
    ensure_secret_file "$STATE/secret_key"
    local admin_password db_uri
    if [[ ! -s $STATE/credentials ]]; then
        write_file "$STATE/credentials" <<EOF
[mlflow]
mlflow_tracking_username = $ADMIN
mlflow_tracking_password = $(secret)
EOF
    fi
    chmod 600 "$STATE/credentials"
    [[ -s $STATE/pgpass ]] || printf '*:*:%s:%s:%s\n' "$DB_NAME" "$DB_ROLE" "$(secret)" | write_file "$STATE/pgpass"
    chmod 600 "$STATE/pgpass"
    admin_password=$(sed -n 's/^mlflow_tracking_password = //p' "$STATE/credentials")
    # No password in the URI: libpq reads it from PGPASSFILE. Host = the socket's folder.
    db_uri="postgresql+psycopg2://$DB_ROLE@/$DB_NAME?host=$PGDIR&port=$PG_PORT"
    DB_URI=$db_uri
    write_file "$STATE/auth.ini" <<EOF
[mlflow]
# Written by mlflow/server.sh. Users and permissions live in the tracking database itself (no SQLite).
default_permission = NO_PERMISSIONS
database_uri = $db_uri
admin_username = $ADMIN
admin_password = $admin_password
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF
}

start_mlflow() {
    local pid deadline
    allowed_hosts_args "$host" "$port"
    mkdir -p -m 700 "$STATE/artifacts"
    log "starting MLflow on $URL (log: $LOG)"
    # Detached (own session, stdio to the log); the working folder is the state folder, so any stray
    # relative file would land here. Job execution is off: it would keep a SQLite queue in /dev/shm.
    (
        cd "$STATE"
        export PGPASSFILE=$STATE/pgpass MLFLOW_AUTH_CONFIG_PATH=$STATE/auth.ini
        MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$STATE/secret_key")
        export MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
        unset MLFLOW_TRACKING_URI MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD
        exec setsid "$python" -m mlflow server --app-name basic-auth \
            --backend-store-uri "$DB_URI" \
            --serve-artifacts --artifacts-destination "$STATE/artifacts" \
            --host "$host" --port "$port" --workers "$workers" \
            "${ALLOWED_HOSTS_ARGS[@]}" "$@" </dev/null >>"$LOG" 2>&1
    ) &
    pid=$!
    echo "$pid" >"$PIDFILE"
    deadline=$((SECONDS + TIMEOUT))
    until answers "$URL"; do
        kill -0 "$pid" 2>/dev/null || { show_tail "$LOG"; rm -f "$PIDFILE"; die "MLflow exited; log: $LOG"; }
        ((SECONDS < deadline)) || { show_tail "$LOG"; die "MLflow did not answer on $URL within ${TIMEOUT}s"; }
        sleep 0.5
    done
    echo "$URL" >"$STATE/tracking_uri"
}

stop_mlflow() {
    local pid i
    pid=$(mlflow_pid) || { rm -f "$PIDFILE"; return 0; }
    log "stopping MLflow (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

print_lines() {
    printf 'MLFLOW_TRACKING_URI=%s\n' "$1"
    printf 'SSL_HPC_MLFLOW_CREDENTIALS=%s\n' "$STATE/credentials"
}

# -------------------------------------------------------------------------------------- main ---

command=${1:-start}
case $command in
    start | stop | status) shift || true ;;
    -*) command=start ;;
    *) die "usage: mlflow/server.sh [start [mlflow server options...] | stop | status]" ;;
esac
PG_BIN=$(find_pg_bin || true)

case $command in
    stop)
        [[ -d $STATE ]] || exit 0
        stop_mlflow
        stop_postgres
        exit 0
        ;;
    status)
        rc=0
        if [[ -n $PG_BIN ]] && pg_running; then echo "postgresql: running (socket $PGDIR)"; else echo "postgresql: stopped"; rc=3; fi
        if pid=$(mlflow_pid); then echo "mlflow: running (pid $pid) at $(cat "$STATE/tracking_uri" 2>/dev/null)"; else echo "mlflow: stopped"; rc=3; fi
        exit $rc
        ;;
esac

check_state
python=$(find_python)
(cd / && "$python" -c "import mlflow.server, flask_wtf, psycopg2") 2>/dev/null ||
    die "$python cannot import mlflow's server, Flask-WTF (mlflow[auth]) and psycopg2; create the environment first (see README.md) \
or set PYTHON" 2
if [[ -z $PG_BIN ]]; then
    install_postgresql
    PG_BIN=$(find_pg_bin) || die "PostgreSQL's initdb not found after installing it" 2
fi
secure_state
URL=$(client_url)
if pid=$(mlflow_pid) && pg_running && answers "$(cat "$STATE/tracking_uri")"; then
    log "already running (pid $pid)"
    print_lines "$(cat "$STATE/tracking_uri")"
    exit 0
fi
stop_mlflow # a half-alive server (e.g. its database went away) is started afresh
write_configs
start_postgres
start_mlflow "$@"
print_lines "$URL"

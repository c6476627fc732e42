# Shared by mlflow/serve.sh and mlflow/server.sh (sourced, not run): which python to use and which
# Host headers a server bound off loopback accepts. Callers set $here to this folder first.

# The project's virtual environment first (a newcomer need not activate it), then whatever python is on PATH.
find_python() {
    if [[ -n ${PYTHON:-} ]]; then
        echo "$PYTHON"
    elif [[ -x $here/../.venv/bin/python ]]; then
        echo "$here/../.venv/bin/python"
    else
        command -v python3 || command -v python
    fi
}

# Sets ALLOWED_HOSTS_ARGS: nothing on loopback (MLflow's default allows it); off loopback the names a client
# on another node may use (short and full host name, the bound address), or MLFLOW_ALLOWED_HOSTS as given.
allowed_hosts_args() {
    local host=$1 port=$2 short full allowed
    ALLOWED_HOSTS_ARGS=()
    case $host in
        127.* | localhost | ::1) ;;
        *)
            short="$(hostname -s 2>/dev/null || hostname)"
            full="$(hostname -f 2>/dev/null || echo "$short")"
            allowed="${MLFLOW_ALLOWED_HOSTS:-localhost,localhost:$port,127.0.0.1:$port,$short,$short:$port,$full,$full:$port,$host,$host:$port}"
            ALLOWED_HOSTS_ARGS=(--allowed-hosts "$allowed")
            ;;
    esac
}

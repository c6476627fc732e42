#!/usr/bin/env bash
# Starts the MLflow UI and tracking server against this project's store (mlflow/mlflow.db and
# mlflow/artifacts/). Binds to 127.0.0.1 unless MLFLOW_HOST says otherwise; on a cluster, reach it
# from your laptop with an SSH tunnel:  ssh -L 5000:127.0.0.1:5000 login-node
#
#   mlflow/serve.sh                      # UI on http://127.0.0.1:5000
#   MLFLOW_PORT=5050 mlflow/serve.sh     # another port
#   MLFLOW_HOST=0.0.0.0 mlflow/serve.sh  # every interface: only on a trusted network
#   PYTHON=/path/to/python mlflow/serve.sh  # default: the checkout's .venv, else python3
#
# Jobs log over HTTP when MLFLOW_TRACKING_URI=http://<host>:<port> is exported before the sweep.
# MLflow accepts only Host headers of localhost and private IPs by default; when MLFLOW_HOST is not
# loopback, this machine's names are allowed too, so jobs may use http://<login node>:<port>
# (MLFLOW_ALLOWED_HOSTS replaces that list).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
store="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$here/mlflow.db}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$here/artifacts}"
# shellcheck source=mlflow/common.sh
source "$here/common.sh"
python=$(find_python)
(cd / && "$python" -c "import mlflow.server") 2>/dev/null || {
    echo "mlflow/serve.sh: $python cannot import mlflow; create the environment first (see README.md) or set PYTHON" >&2
    exit 2
}
mkdir -p "$artifacts"
allowed_hosts_args "$host" "$port"
exec "$python" -m mlflow server \
    --backend-store-uri "$store" \
    --artifacts-destination "$artifacts" \
    --serve-artifacts \
    --host "$host" --port "$port" \
    "${ALLOWED_HOSTS_ARGS[@]}" "$@"

#!/usr/bin/env bash
# One compute node of the multi-node test cluster: run by up.sh (nodes.sh) inside the node's own network,
# mount and UTS namespaces, as root. Sets the hostname, gives the node a private /tmp that holds only the
# shared folders found under /tmp, the cluster's /etc/hosts, hides the checkout's default SQLite tracking
# store (mlflow/), then becomes slurmd.
#
# Usage: node-init.sh NODE_NAME STATE_DIR SHARES_FILE CHECKOUT   (SLURM_CONF in the environment)
set -euo pipefail
node=$1 state=$2 shares_file=$3 checkout=$4

hostname "$node"
private_tmp=$state/nodes/$node/tmp

# Folders under /tmp that the node shares (the state folder, a checkout or a test's outputs there) are
# bound into the private /tmp at the same path before it replaces /tmp.
while IFS= read -r shared; do
    [[ -n $shared ]] || continue
    if [[ ! -d $shared ]]; then
        echo "node-init: shared folder $shared does not exist; not shared" >&2
        continue
    fi
    case $shared in
        /tmp/*)
            mkdir -p "$private_tmp${shared#/tmp}"
            mount --bind "$shared" "$private_tmp${shared#/tmp}"
            ;;
    esac
done <"$shares_file"
mount --rbind "$private_tmp" /tmp
mount --bind "$state/etc/hosts" /etc/hosts

# A job that falls back to <checkout>/mlflow/mlflow.db would write a SQLite file on the shared filesystem
# behind the tracking server's back: on the node that folder is empty and read-only.
if [[ -d $checkout/mlflow ]]; then
    mount -t tmpfs -o ro,size=16k,mode=755 ssl-hpc-hidden "$checkout/mlflow"
fi

exec /usr/sbin/slurmd -f "$SLURM_CONF" -N "$node"

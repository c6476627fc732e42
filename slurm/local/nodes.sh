# Compute nodes of the multi-node test cluster, sourced by up.sh and down.sh (not run on its own).
#
# Node i (node1, node2, ...) is one slurmd in its own network namespace, with its own hostname, its own
# address on a bridge that up.sh creates, a private /tmp and the login node's /etc/hosts replaced by the
# cluster's: it reaches the login node (slurmctld, the tracking server) only through the bridge address,
# and sees of this machine's /tmp only the folders shared with it (as a real cluster's network
# filesystem). Nodes have no default route: traffic goes to the bridge's addresses and nowhere else.
#
# Names are derived from the controller's port, so that two test clusters never share one:
#   bridge        sshb<port>                 10.213.77.1/24  (the login node; SSL_HPC_SLURM_SUBNET)
#   namespaces    sslhpc-<port>-node<i>      10.213.77.<1+i> on eth0
#   veth (host)   ssv<port>n<i>
# run/nodes.list records what up.sh created (one namespace per line), so that down.sh removes exactly that.

SUBNET=${SSL_HPC_SLURM_SUBNET:-10.213.77}
BRIDGE=sshb$CTLD_PORT
LOGIN_ADDR=$SUBNET.1
NODES_LIST=$RUND/nodes.list

node_name() { printf 'node%d' "$1"; }
node_netns() { printf 'sslhpc-%s-node%d' "$CTLD_PORT" "$1"; }
node_addr() { printf '%s.%d' "$SUBNET" "$((1 + $1))"; }
node_pidfile() { printf '%s/slurmd-node%d.pid' "$RUND" "$1"; }

check_subnet() {
    [[ $SUBNET =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] ||
        die "SSL_HPC_SLURM_SUBNET must be the first three numbers of a /24, like 10.213.77 (got '$SUBNET')"
    ((NODES >= 1 && NODES <= 200)) || die "--nodes must be 1..200 (got $NODES)"
    local owner
    # an address of this subnet on any interface but our bridge: the test network would shadow a real one
    owner=$(ip -o -4 addr show | awk -v p="$SUBNET." -v b="$BRIDGE" 'index($4, p) == 1 && $2 != b {print $2; exit}')
    [[ -z $owner ]] || die "subnet $SUBNET.0/24 is already used by interface $owner; set SSL_HPC_SLURM_SUBNET"
}

# The login node's side: the bridge and its address (idempotent).
bridge_up() {
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        log "creating bridge $BRIDGE ($LOGIN_ADDR/24)"
        ip link add "$BRIDGE" type bridge
    fi
    ip -4 addr show dev "$BRIDGE" | grep -q " $LOGIN_ADDR/24 " || ip addr add "$LOGIN_ADDR/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
}

# One node's namespace, link and address (idempotent).
node_net_up() {
    local i=$1 ns veth addr
    ns=$(node_netns "$i") veth=ssv${CTLD_PORT}n$i addr=$(node_addr "$i")
    if ! ip netns list | grep -qw -- "$ns"; then
        log "creating network namespace $ns ($(node_name "$i"), $addr)"
        ip netns add "$ns"
    fi
    grep -qx -- "$ns" "$NODES_LIST" 2>/dev/null || echo "$ns" >>"$NODES_LIST"
    if ! ip link show "$veth" >/dev/null 2>&1; then
        ip link add "$veth" type veth peer name eth0 netns "$ns"
    fi
    ip link set "$veth" master "$BRIDGE" up
    ip netns exec "$ns" ip link set lo up
    ip -n "$ns" -4 addr show dev eth0 | grep -q " $addr/24 " || ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
}

# /etc/hosts as the nodes see it: the login node and every node, nothing of this machine's.
write_hosts() {
    local i
    {
        printf '127.0.0.1 localhost\n%s %s login\n' "$LOGIN_ADDR" "$HOST"
        for ((i = 1; i <= NODES; i++)); do printf '%s %s\n' "$(node_addr "$i")" "$(node_name "$i")"; done
    } | write_if_changed "$ETC/hosts" 644
}

# The folders a node shares with the login node, one per line: the state folder (slurm.conf, spool),
# the checkout, the data root, and what --share / SSL_HPC_SLURM_SHARE named. Kept in etc/shares, and
# kept when up.sh runs again (to restart a node that died) without naming them again.
write_shares() {
    local checkout=$1 p
    shift
    {
        printf '%s\n' "$STATE" "$checkout"
        [[ -n ${MEDMNIST_ROOT:-} ]] && printf '%s\n' "$MEDMNIST_ROOT"
        [[ -f $ETC/shares ]] && cat "$ETC/shares"
        for p in "$@"; do printf '%s\n' "$p"; done
    } | awk 'NF && !seen[$0]++' | write_if_changed "$ETC/shares" 644
}

# Start node i's slurmd inside its namespaces (net from `ip netns exec`, then its own mount and UTS
# namespaces from unshare; node-init.sh sets the hostname, /tmp and /etc/hosts, then execs slurmd).
start_node() {
    local i=$1 name pidf
    name=$(node_name "$i") pidf=$(node_pidfile "$i")
    if pid_alive "$pidf" slurmd; then
        log "slurmd of $name already running (pid $(cat "$pidf"))"
        return 0
    fi
    rm -f "$pidf"
    install -d -m 755 "$SPOOL/slurmd/$name" "$STATE/nodes/$name"
    install -d -m 1777 "$STATE/nodes/$name/tmp"
    log "starting slurmd of $name in $(node_netns "$i")"
    # nsenter, not `ip netns exec`: that one remounts /sys, without the cgroup filesystem slurmd needs.
    SLURM_CONF=$SLURM_CONF_FILE setsid nsenter --net="/run/netns/$(node_netns "$i")" \
        unshare --mount --uts --propagation private -- \
        "$HERE/node-init.sh" "$name" "$STATE" "$ETC/shares" "$CHECKOUT" \
        </dev/null >>"$LOGD/slurmd-$name.stdout" 2>&1 ||
        daemon_failed "slurmd of $name" "$LOGD/slurmd-$name.log" "failed to start"
    wait_daemon slurmd "$pidf" "$LOGD/slurmd-$name.log" true
}

# down.sh: every process in each namespace up.sh created (slurmd, job steps, jobs), then the namespace
# (its veth goes with it), then the bridge.
nodes_down() {
    local ns p
    if [[ -s $NODES_LIST ]]; then
        while read -r ns; do
            [[ -n $ns ]] || continue
            for p in $(ip netns pids "$ns" 2>/dev/null); do kill_tree "$p"; done
            if ip netns list | grep -qw -- "$ns"; then
                log "removing network namespace $ns"
                ip netns delete "$ns" 2>/dev/null || log "could not remove $ns"
            fi
        done <"$NODES_LIST"
        rm -f "$NODES_LIST" "$RUND"/slurmd-node*.pid
    fi
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        log "removing bridge $BRIDGE"
        ip link delete "$BRIDGE"
    fi
    rm -rf -- "$STATE/nodes"
}

"""The multi-node test cluster as a fixture: `slurm/local/up.sh --nodes 2` (two slurmd in network
namespaces, node1 and node2) and the PostgreSQL-backed tracking server of `mlflow/server.sh` bound to the
login node's bridge address. Jobs reach the server only over that network and share with the login node
only the checkout, the data root and one folder of the test's (outputs, results).

Its own state folder and ports, so that it runs beside the one-node cluster of the other Slurm tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import IN_CI, PROJECT_ROOT, SlurmCluster, real_subset
from ssl_hpc.tracking_access import apply_credentials

STATE = Path(os.environ.get("SSL_HPC_MULTINODE_DIR", "/tmp/ssl-hpc-multinode"))
PORT_BASE = os.environ.get("SSL_HPC_MULTINODE_PORT", "6827")
SUBNET = os.environ.get("SSL_HPC_SLURM_SUBNET", "10.213.77")
LOGIN_ADDRESS = f"{SUBNET}.1"
NODES = ("node1", "node2")
UP = PROJECT_ROOT / "slurm" / "local" / "up.sh"
DOWN = PROJECT_ROOT / "slurm" / "local" / "down.sh"
SERVER = PROJECT_ROOT / "mlflow" / "server.sh"


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def eval_lines(stdout: str) -> dict[str, str]:
    """``NAME=value`` lines a script prints for ``eval``."""
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line and line[:1].isupper())


@dataclass
class MultiNode:
    """The running cluster and server, and the few things the fault tests do to them."""

    cluster: SlurmCluster
    shared: Path  # a folder the nodes share with the login node (outputs, results)
    server_state: Path  # the tracking server's folder: the login node's only, never the nodes'
    env: dict[str, str]  # what a user exports before `launch/sweep.py`
    slurm_env: dict[str, str]  # where up.sh/down.sh keep this cluster
    server_env: dict[str, str]  # where mlflow/server.sh keeps this server

    @property
    def tracking_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    def server(self, action: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["bash", str(SERVER), action],
            env={**os.environ, **self.server_env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"mlflow/server.sh {action}: {result.stderr[-2000:]}"
        return result

    def on_node(self, node: str, command: str) -> str:
        """``command`` run by bash in a job step on ``node``; its stdout."""
        return self.cluster.run("srun", "-w", node, "-N1", "-n1", "--mem=100M", "bash", "-c", command)

    def kill_node(self, node: str) -> None:
        """The node dies: its slurmd, job steps and jobs are killed outright (SIGKILL), nothing says goodbye."""
        namespace = f"sslhpc-{PORT_BASE}-{node}"
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
        assert pids, f"no process in {namespace}"
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass

    def restart_nodes(self) -> None:
        """up.sh again: starts the slurmd of any node that is down (the node comes back, ReturnToService=2)."""
        result = subprocess.run(
            ["bash", str(UP)], env={**os.environ, **self.slurm_env}, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-2000:]


def start(tmp_path_factory) -> MultiNode:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
        unavailable("the multi-node cluster needs root, iproute2 and unshare (network namespaces)")
    shared = tmp_path_factory.mktemp("multinode-shared")
    # A quarter of the real PneumoniaMNIST (conftest.real_subset), on the shared filesystem: the faults
    # need running jobs with checkpoints, not full epochs.
    data_root = real_subset(shared / "data")
    # Not under pytest's 0700 temporary folder, which the database user cannot pass through; not shared.
    server_state = Path(tempfile.mkdtemp(prefix="ssl-hpc-multinode-server-"))
    slurm_env = {"SSL_HPC_SLURM_DIR": str(STATE), "SSL_HPC_SLURM_PORT": PORT_BASE, "MEDMNIST_ROOT": str(data_root)}
    subprocess.run(["bash", str(DOWN), "--purge"], env={**os.environ, **slurm_env}, capture_output=True, timeout=300)
    up = subprocess.run(
        ["bash", str(UP), "--nodes", str(len(NODES)), "--share", str(shared)],
        env={**os.environ, **slurm_env},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if up.returncode != 0:
        unavailable(f"slurm/local/up.sh --nodes 2 failed: {up.stderr[-2000:]}")
    conf = eval_lines(up.stdout)["SLURM_CONF"]
    server_env = {
        "SSL_HPC_MLFLOW_STATE": str(server_state),
        "MLFLOW_HOST": LOGIN_ADDRESS,
        "MLFLOW_PORT": str(free_port(LOGIN_ADDRESS)),
    }
    served = subprocess.run(
        ["bash", str(SERVER)], env={**os.environ, **server_env}, capture_output=True, text=True, timeout=900
    )
    printed = eval_lines(served.stdout)  # MLFLOW_TRACKING_URI, SSL_HPC_MLFLOW_CREDENTIALS
    if served.returncode != 0 or not {"MLFLOW_TRACKING_URI", "SSL_HPC_MLFLOW_CREDENTIALS"} <= set(printed):
        stop(slurm_env, server_env)  # nothing of a half-started cluster or server is left behind
        unavailable(f"mlflow/server.sh failed (exit {served.returncode}): {served.stderr[-2000:]}")
    # The server's folder stays on the login node; the jobs read their copy of the credentials from the
    # shared filesystem (a user's home on a real cluster), readable by the user only.
    credentials = shared / "credentials"
    credentials.touch(mode=0o600)
    credentials.write_bytes(Path(printed["SSL_HPC_MLFLOW_CREDENTIALS"]).read_bytes())
    env = {
        "MLFLOW_TRACKING_URI": printed["MLFLOW_TRACKING_URI"],
        "SSL_HPC_MLFLOW_CREDENTIALS": str(credentials),
        "SLURM_CONF": conf,
        "MEDMNIST_ROOT": str(data_root),
    }
    return MultiNode(SlurmCluster(conf), shared, server_state, env, slurm_env, server_env)


def stop(slurm_env: dict[str, str], server_env: dict[str, str]) -> None:
    subprocess.run(["bash", str(SERVER), "stop"], env={**os.environ, **server_env}, capture_output=True, timeout=300)
    subprocess.run(["bash", str(DOWN), "--purge"], env={**os.environ, **slurm_env}, capture_output=True, timeout=300)
    if "SSL_HPC_MLFLOW_STATE" in server_env:
        shutil.rmtree(server_env["SSL_HPC_MLFLOW_STATE"], ignore_errors=True)


@pytest.fixture(scope="module", name="multinode")
def multinode_fixture(tmp_path_factory):
    cluster = start(tmp_path_factory)
    exported = [*cluster.env, "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]
    previous = {name: os.environ.get(name) for name in exported}
    os.environ.update(cluster.env)
    apply_credentials(os.environ)  # the test's own MLflow client authenticates like the jobs
    try:
        yield cluster
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        stop(cluster.slurm_env, cluster.server_env)


def wait(condition, timeout: float, what: str, interval: float = 0.5):
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.time() < deadline, f"{what}: not after {timeout:.0f}s"
        time.sleep(interval)

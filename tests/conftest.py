"""Shared fixtures. Real data comes from MEDMNIST_ROOT; under CI=true it must be there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"


def share_cores_between_workers(environ=os.environ) -> int | None:
    """Under pytest-xdist (pyproject's ``-n 2``), each worker and the sweeps it starts get their share of the
    cores (``OMP_NUM_THREADS``, which torch reads when it starts): two workers each running every core's worth
    of threads would spin against each other. Returns the threads per worker, or None outside xdist or when
    the environment already says."""
    workers = int(environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2 or "OMP_NUM_THREADS" in environ:
        return None
    threads = max(1, (os.cpu_count() or 1) // workers)
    environ["OMP_NUM_THREADS"] = str(threads)
    return threads


if (_threads := share_cores_between_workers()) is not None:
    import torch

    torch.set_num_threads(_threads)


def require_real_data() -> Path:
    """The folder holding the real pneumoniamnist.npz; skips (or fails under CI) without it."""
    root = os.environ.get("MEDMNIST_ROOT")
    if root and (Path(root) / "pneumoniamnist.npz").is_file():
        return Path(root).resolve()
    reason = "MEDMNIST_ROOT does not point at a folder with pneumoniamnist.npz (e.g. ../shared/data)"
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture
def data_root() -> Path:
    return require_real_data()


# Per split: the number of real images a subset keeps (about a quarter of the training split).
SUBSET_SIZES = {"train": 1200, "val": 200, "test": 200}


def real_subset(folder: Path, sizes: dict[str, int] = SUBSET_SIZES, seed: int = 0) -> Path:
    """A stratified subset of the real PneumoniaMNIST (same npz layout, same class shares, images untouched)
    written to ``folder/pneumoniamnist.npz``; returns ``folder``, for use as MEDMNIST_ROOT.

    For the end-to-end tests whose assertions are about the machinery (faults, resumes, the hand-off between
    jobs, what the UI shows) rather than about accuracy: an epoch costs a quarter of the full split's.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = {}
    with np.load(require_real_data() / "pneumoniamnist.npz") as source:
        for split, size in sizes.items():
            labels = source[f"{split}_labels"].reshape(-1)
            chosen = []
            for label in np.unique(labels):
                members = np.flatnonzero(labels == label)
                share = max(1, round(size * len(members) / len(labels)))
                chosen.append(rng.choice(members, size=min(share, len(members)), replace=False))
            index = np.sort(np.concatenate(chosen))
            arrays[f"{split}_images"] = source[f"{split}_images"][index]
            arrays[f"{split}_labels"] = source[f"{split}_labels"][index]
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "pneumoniamnist.npz", **arrays)
    return folder


@pytest.fixture(scope="session")
def subset_root(tmp_path_factory) -> Path:
    """MEDMNIST_ROOT of a stratified quarter of the real PneumoniaMNIST (``real_subset``)."""
    return real_subset(tmp_path_factory.mktemp("pneumonia-subset"))


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


def run_sweep_cli(
    args: list[str], env_extra: dict[str, str], timeout: float = 900, wait: bool = True
) -> subprocess.CompletedProcess | subprocess.Popen:
    """Runs ``python launch/sweep.py ARGS`` as a user would, in a fresh process."""
    env = {**os.environ, **env_extra}
    command = [sys.executable, str(PROJECT_ROOT / "launch" / "sweep.py"), *args]
    if not wait:
        return subprocess.Popen(
            command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- cluster backends (Slurm, Ray)

import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from datetime import datetime  # noqa: E402

SLURM_STATE = Path(os.environ.get("SSL_HPC_SLURM_DIR", "/tmp/ssl-hpc-slurm"))


def _sinfo_answers(conf: str) -> bool:
    try:
        result = subprocess.run(
            ["sinfo", "-h", "-o", "%P %a"],
            env={**os.environ, "SLURM_CONF": conf},
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and " up" in result.stdout


class SlurmCluster:
    """The Slurm cluster the tests submit to, and the few commands they use to watch it."""

    def __init__(self, conf: str):
        self.conf = conf

    def run(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            list(args), capture_output=True, text=True, timeout=60, env={**os.environ, "SLURM_CONF": self.conf}
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: {result.stderr or result.stdout}")
        return result.stdout

    def queue(self, job_ids: list[str]) -> dict[str, tuple[str, str]]:
        """job id -> (state, reason) for the jobs still in the queue."""
        if not job_ids:
            return {}
        bases = sorted({job_id.split("_")[0] for job_id in job_ids})
        out = self.run("squeue", "-h", "-r", "-j", ",".join(bases), "-o", "%i|%T|%r", check=False)
        entries = {}
        for line in out.splitlines():
            job_id, state, reason = (line.split("|") + ["", ""])[:3]
            entries[job_id] = (state, reason)
        return entries

    def accounting(self, job_ids: list[str], duplicates: bool = False) -> list[dict[str, str]]:
        """sacct rows (allocations only): JobID, State, ExitCode, Start, End, Reason; all attempts with duplicates."""
        bases = sorted({job_id.split("_")[0] for job_id in job_ids})
        fields = ["JobID", "State", "ExitCode", "Start", "End", "Reason"]
        args = ["sacct", "-X", "-n", "-P", "-j", ",".join(bases), f"--format={','.join(fields)}"]
        out = self.run(*args, *(["-D"] if duplicates else []))
        return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]

    @staticmethod
    def timestamp(value: str) -> float:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S").timestamp()

    def wait_gone(self, job_ids: list[str], timeout: float, release_requeued: bool = True) -> None:
        """Until none of the jobs is queued; requeued jobs held in BeginTime (~2 min) are released at once."""
        deadline = time.time() + timeout
        while True:
            queue = {
                job_id: entry
                for job_id, entry in self.queue(job_ids).items()
                if entry[0] not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
            }
            if not queue:
                return
            if release_requeued:
                for job_id, (state, reason) in queue.items():
                    if state == "PENDING" and reason == "BeginTime":
                        self.run("scontrol", "update", f"jobid={job_id}", "StartTime=now", check=False)
            if time.time() > deadline:
                raise AssertionError(f"jobs still queued after {timeout:.0f}s: {queue}")
            time.sleep(1.0)

    def cancel(self, job_ids: list[str]) -> None:
        bases = sorted({job_id.split("_")[0] for job_id in job_ids})
        if bases:
            self.run("scancel", *bases, check=False)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A reachable Slurm cluster (SLURM_CONF, or the one slurm/local/up.sh keeps in its state folder).

    With none and as root, starts slurm/local/up.sh for the session and stops it at the end. Otherwise the
    test skips with the reason -- and fails under CI=true, where the cluster is part of the job.
    """
    candidates = [os.environ.get("SLURM_CONF", ""), str(SLURM_STATE / "etc" / "slurm.conf")]
    conf = next((c for c in candidates if c and Path(c).is_file() and _sinfo_answers(c)), None)
    started = False
    if conf is None and shutil.which("bash") and os.geteuid() == 0:
        result = subprocess.run(
            ["bash", str(PROJECT_ROOT / "slurm" / "local" / "up.sh")], capture_output=True, text=True, timeout=1200
        )
        lines = [line for line in result.stdout.splitlines() if line.startswith("SLURM_CONF=")]
        if result.returncode == 0 and lines:
            conf, started = lines[-1].split("=", 1)[1], True
        else:
            reason = f"slurm/local/up.sh failed: {result.stderr[-1500:]}"
            if IN_CI:
                pytest.fail(reason)
            pytest.skip(reason)
    if conf is None:
        reason = "no Slurm cluster reachable (set SLURM_CONF, or run slurm/local/up.sh as root)"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf  # for the sweep commands the tests start
    yield SlurmCluster(conf)
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    if started:
        subprocess.run(["bash", str(PROJECT_ROOT / "slurm" / "local" / "down.sh")], capture_output=True, timeout=300)


def slurm_records(output_root: Path) -> list[dict]:
    """The sweep's submissions (``<output_root>/slurm/submissions.jsonl``), in order."""
    path = output_root / "slurm" / "submissions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


@pytest.fixture
def slurm_cleanup(slurm_cluster):
    """Registers sweep output folders; every job they submitted is cancelled when the test ends."""
    roots: list[Path] = []
    yield roots.append
    job_ids = [record["job_id"] for root in roots for record in slurm_records(root)]
    queued = slurm_cluster.queue(job_ids)
    if queued:
        slurm_cluster.cancel(list(queued))


@pytest.fixture
def sweep_here(monkeypatch, capsys):
    """``launch/sweep.py ARGS`` in this process (no interpreter start-up per call); returns (exit code, stdout)."""
    from ssl_hpc.cli import sweep_main

    def call(args: list[str], env: dict[str, str]) -> tuple[int, str]:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        code = sweep_main([str(PROJECT_ROOT / args[0]), *args[1:]], project_root=PROJECT_ROOT)
        out = capsys.readouterr()
        return code, out.out + out.err

    return call


# ------------------------------------------------------------------------- the order the workers take files

_FIRST = ("multinode", "e2e", "slurm")  # the longest files first, so the other worker fills in around them


def pytest_collection_modifyitems(config, items) -> None:
    """Files with multi-node, end-to-end or Slurm tests go first (in that order), each file's tests kept
    together and in their order: with one file per worker (pyproject's ``--dist loadfile``), a long file
    taken last would run alone at the end while the other worker sits idle."""

    def rank(item) -> int:
        marks = {mark.name for mark in item.iter_markers()}
        return next((i for i, name in enumerate(_FIRST) if name in marks), len(_FIRST))

    file_rank: dict[str, int] = {}
    for item in items:
        path = str(item.path)
        file_rank[path] = min(file_rank.get(path, len(_FIRST)), rank(item))
    first_seen = {path: index for index, path in enumerate(dict.fromkeys(str(item.path) for item in items))}
    items.sort(key=lambda item: (file_rank[str(item.path)], first_seen[str(item.path)]))

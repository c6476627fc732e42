"""Smoke check: a submitit Checkpointable job is requeued on USR2 and resumes.

Run by slurm/local/check.sh against a running local cluster (SLURM_CONF set):

    python slurm/local/submitit_requeue_check.py WORKDIR

Steps: submit a Checkpointable counter through submitit; once it is counting,
`scancel --signal=USR2 <id>` (what Slurm sends before a time limit or on
preemption); submitit checkpoints and calls `scontrol requeue`; the job waits
PENDING with reason BeginTime (Slurm holds requeued batch jobs ~2 minutes,
i.e. cred_expire); `scontrol update jobid=<id> StartTime=now` releases it
(Slurm 22.05's scontrol rejects "BeginTime=now": "Update of this parameter is
not supported"); it resumes from the checkpoint and finishes.
Exits non-zero on any failure.
"""

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import submitit

TIMEOUT = float(os.environ.get("SSL_HPC_SLURM_CHECK_TIMEOUT", "90"))


class Counter(submitit.helpers.Checkpointable):
    """Counts to `steps`, one step per 0.5 s; its state is on self, so the
    default Checkpointable.checkpoint (pickle self, same arguments) resumes it."""

    def __init__(self) -> None:
        self.count = 0
        self.starts = []  # value of count at each (re)start

    def __call__(self, steps: int, progress: str) -> dict:
        self.starts.append(self.count)
        while self.count < steps:
            self.count += 1
            Path(progress).write_text(f"{len(self.starts)} {self.count}\n")
            time.sleep(0.5)
        return {
            "count": self.count,
            "starts": self.starts,
            "restart_count": os.environ.get("SLURM_RESTART_COUNT"),
        }


def log(msg: str) -> None:
    print(f"[submitit-requeue] {msg}", file=sys.stderr, flush=True)


def wait_until(what: str, pred, timeout: float = TIMEOUT, every: float = 0.2):
    deadline = time.time() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.time() > deadline:
            raise SystemExit(f"[submitit-requeue] FAIL: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], capture_output=True, text=True).stdout.strip()
    return out


def show_job(job_id: str) -> dict:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    fields = {}
    for tok in out.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            fields.setdefault(k, v)
    return fields


def main() -> int:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "submitit-requeue-check").resolve()
    work.mkdir(parents=True, exist_ok=True)
    progress = work / "progress.txt"
    steps = 30

    executor = submitit.AutoExecutor(folder=work / "logs", cluster="slurm")
    # timeout_min > 10 so that submitit treats USR2 as preemption, not time-out
    executor.update_parameters(timeout_min=60, slurm_partition="debug", cpus_per_task=1, mem_gb=0.5)
    job = executor.submit(Counter(), steps, str(progress))
    log(f"submitted job {job.job_id}")

    wait_until("the job to count (>= 3 steps)", lambda: progress.exists() and int(progress.read_text().split()[1]) >= 3)
    log(f"job running, progress: {progress.read_text().strip()}; sending USR2")
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)

    t_signal = time.time()
    wait_until("PENDING/BeginTime after requeue", lambda: squeue_state(job.job_id) == "PENDING|BeginTime")
    info = show_job(job.job_id)
    eligible = datetime.strptime(info["EligibleTime"], "%Y-%m-%dT%H:%M:%S").timestamp()
    log(
        f"requeued after {time.time() - t_signal:.1f}s: JobState={info['JobState']} Reason={info['Reason']} "
        f"Restarts={info.get('Restarts')} EligibleTime={info['EligibleTime']} (in {eligible - time.time():.0f}s)"
    )
    if info.get("Restarts") != "1":
        raise SystemExit(f"[submitit-requeue] FAIL: expected Restarts=1, got {info.get('Restarts')}")

    subprocess.run(["scontrol", "update", f"jobid={job.job_id}", "StartTime=now"], check=True)
    t_release = time.time()
    wait_until("RUNNING after begintime=now", lambda: not squeue_state(job.job_id).startswith("PENDING"))
    log(f"released: running again {time.time() - t_release:.1f}s after 'scontrol update jobid=<id> StartTime=now'")

    result = job.result()
    log(f"result: {result}")
    ok = (
        result["count"] == steps
        and len(result["starts"]) == 2
        and result["starts"][1] >= 3
        and result["restart_count"] == "1"
    )
    sacct = subprocess.run(
        ["sacct", "-j", job.job_id, "-D", "-X", "-n", "-P", "--format=JobID,State,Start,End"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    log("sacct -D (duplicates = the requeued run):\n" + sacct)
    if not ok:
        raise SystemExit(f"[submitit-requeue] FAIL: job did not resume from its checkpoint: {result}")
    log(f"OK: resumed from step {result['starts'][1]} and finished at {result['count']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

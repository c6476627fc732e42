"""The MLflow conventions of docs/conventions.md, in one place.

Experiment = sweep name. One MLflow run per run key, found again by its ``key`` tag: that is what
makes re-running a sweep skip finished runs and resume unfinished ones into the same run. Every
call goes through an explicit :class:`MlflowClient` and run id (no active-run global), so several
runs can be tracked from one process and from many processes at once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException

from ssl_hpc.files import exclusive_lock
from ssl_hpc.tracking_access import RetryingClient, apply_credentials, lost_an_insert_race

STORE_DIR = "mlflow"
FINISHED, RUNNING, FAILED, KILLED = "FINISHED", "RUNNING", "FAILED", "KILLED"
_MAX_BATCH = 100


def resolve_tracking_uri(project_root: Path, environ: Mapping[str, str] = os.environ) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store under ``<project>/mlflow/``."""
    configured = environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    return f"sqlite:///{(Path(project_root) / STORE_DIR / 'mlflow.db').resolve()}"


def local_database(tracking_uri: str) -> Path | None:
    """The database file behind a ``sqlite:///`` URI, else ``None``."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix) :]) if tracking_uri.startswith(prefix) else None


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite store live beside its database, not in the current directory."""
    database = local_database(tracking_uri)
    if database is None:
        return None
    return (database.parent / "artifacts" / experiment).resolve().as_uri()


def ui_address(tracking_uri: str, experiment_id: str, environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """(address of the experiment's runs table in the MLflow UI, how to start that UI or ``""``).

    An http(s) tracking URI is the UI itself. A SQLite or file store has no UI until ``mlflow/serve.sh`` serves
    it, on ``MLFLOW_PORT`` (5000) of 127.0.0.1; the hint names the store when it is not the project's default."""
    page = f"#/experiments/{experiment_id}/runs"
    if re.match(r"^https?://", tracking_uri):
        return f"{tracking_uri.rstrip('/')}/{page}", ""
    address = f"http://127.0.0.1:{environ.get('MLFLOW_PORT', '5000')}/{page}"
    database = local_database(tracking_uri)
    if database is not None and database.name == "mlflow.db" and (database.parent / "serve.sh").is_file():
        return address, f"start the UI with {database.parent / 'serve.sh'}"  # the project's own store
    artifacts = f" MLFLOW_ARTIFACTS_DESTINATION={database.parent / 'artifacts'}" if database is not None else ""
    return address, f"start the UI with MLFLOW_BACKEND_STORE_URI={tracking_uri}{artifacts} mlflow/serve.sh"


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"finetune_settings.lr": "0.05", ...}`` for MLflow params."""
    flat: dict[str, str] = {}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{key}."))
        else:
            flat[key] = "none" if value is None else str(value)
    return flat


@dataclass(frozen=True)
class GitState:
    commit: str
    dirty: bool
    diff: str


def git_state(project_root: Path) -> GitState | None:
    """The code a run used; ``None`` outside a git work tree."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(project_root), *args], check=True, capture_output=True, text=True
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        diff = git("diff", "HEAD")
        untracked = git("ls-files", "--others", "--exclude-standard").strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return GitState(commit=commit, dirty=bool(diff or untracked), diff=diff)


log = logging.getLogger(__name__)


@contextmanager
def store_lock(tracking_uri: str):
    """Serialises the first use of a SQLite store across processes: creating the tables (MLflow's
    migrations) is not safe to run from several processes at once. Nothing to do for a server."""
    database = local_database(tracking_uri)
    if database is None:
        yield
        return
    with exclusive_lock(database.parent / f".{database.name}.init-lock"):
        yield


def multi_node_problem(tracking_uri: str) -> str | None:
    """Why jobs on other machines cannot log to ``tracking_uri``, or ``None`` if they can: a SQLite file
    (unsafe on a shared filesystem, invisible on a node's local disk) or this machine's loopback address."""
    if local_database(tracking_uri) is not None:
        return f"{tracking_uri} is a SQLite file, which jobs on other nodes cannot share safely"
    if re.match(r"^https?://(127\.|localhost|\[?::1)", tracking_uri):
        return f"{tracking_uri} is this machine's loopback address, which other nodes cannot reach"
    return None


def pick_run(runs: Iterable[Run]) -> Run | None:
    """The run that stands for a key: a FINISHED one if any, else the most recent."""
    ordered = sorted(runs, key=lambda run: (run.info.status == FINISHED, run.info.start_time or 0), reverse=True)
    return ordered[0] if ordered else None


class SweepTracker:
    """One sweep's experiment in one tracking store."""

    def __init__(self, tracking_uri: str, experiment: str):
        apply_credentials()  # before any request: jobs authenticate from the file the variable names
        database = local_database(tracking_uri)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        with store_lock(tracking_uri):  # MlflowClient opens (and on first use creates) the store at once
            self._client = RetryingClient(MlflowClient(tracking_uri=tracking_uri))
            self.experiment_id = self._get_or_create_experiment()

    @classmethod
    def existing(cls, tracking_uri: str, experiment: str) -> SweepTracker | None:
        """The tracker if the store and experiment exist; never creates either."""
        apply_credentials()
        database = local_database(tracking_uri)
        if database is not None and not database.is_file():
            return None
        with store_lock(tracking_uri):
            client = RetryingClient(MlflowClient(tracking_uri=tracking_uri))
            if client.get_experiment_by_name(experiment) is None:
                return None
        return cls(tracking_uri, experiment)

    def _get_or_create_experiment(self) -> str:
        found = self._client.get_experiment_by_name(self.experiment)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self._client.restore_experiment(found.experiment_id)
            return found.experiment_id
        try:
            return self._client.create_experiment(
                self.experiment, artifact_location=artifact_location(self.tracking_uri, self.experiment)
            )
        except MlflowException:  # another process created it first
            found = self._client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    # ------------------------------------------------------------------ finding runs

    def search(self, filter_string: str = "") -> list[Run]:
        runs: list[Run] = []
        token = None
        while True:
            page = self._client.search_runs(
                [self.experiment_id], filter_string=filter_string, max_results=1000, page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def runs_by_key(self, stage: str | None = None) -> dict[str, Run]:
        """One batched query: key -> the run standing for it."""
        query = f"tags.stage = '{stage}'" if stage else ""
        grouped: dict[str, list[Run]] = {}
        for run in self.search(query):
            key = run.data.tags.get("key")
            if key:
                grouped.setdefault(key, []).append(run)
        return {key: pick_run(runs) for key, runs in grouped.items()}  # type: ignore[misc]

    def run_for_key(self, key: str) -> Run | None:
        return pick_run(self.search(f"tags.key = '{key}'"))

    # ------------------------------------------------------------------ writing

    def create_run(self, run_name: str, tags: Mapping[str, str], params: Mapping[str, str]) -> str:
        run = self._client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags))
        items = [Param(name, value[:6000]) for name, value in params.items()]
        for start in range(0, len(items), _MAX_BATCH):
            self._client.log_batch(run.info.run_id, params=items[start : start + _MAX_BATCH])
        return run.info.run_id

    def claim(self, run_id: str, key: str) -> str | None:
        """Jobs of one key started at once from two output folders (which share no run lock) may each have
        created a run: the earliest-created RUNNING run of the key wins. Returns the winner's id when it is
        not ``run_id``, which is then deleted (it holds nothing yet); ``None`` when ``run_id`` won."""
        running = self.search(f"tags.key = '{key}' and attributes.status = '{RUNNING}'")
        winner = min(running, key=lambda run: (run.info.start_time or 0, run.info.run_id), default=None)
        if winner is None or winner.info.run_id == run_id:
            return None
        self._client.delete_run(run_id)
        return winner.info.run_id

    def reopen(self, run_id: str) -> None:
        self._client.update_run(run_id, status=RUNNING)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self._client.log_batch(run_id, tags=[RunTag(name, str(value)) for name, value in tags.items()])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        # The rows (with their timestamp) are built once, outside the retried call: a retry after a lost
        # answer resends identical rows, which the store keeps once, instead of logging the values twice.
        now = int(time.time() * 1000)
        items = [Metric(name, float(value), now, step) for name, value in metrics.items()]
        for start in range(0, len(items), _MAX_BATCH):
            self._client.log_batch(run_id, metrics=items[start : start + _MAX_BATCH])

    def logged_steps(self, run_id: str, metric: str) -> list[int]:
        return [entry.step for entry in self._client.get_metric_history(run_id, metric)]

    def metric_history(self, run_id: str, metric: str) -> list[Metric]:
        """Every logged value of ``metric`` (``step``, ``value``, ``timestamp``), in logging order."""
        return list(self._client.get_metric_history(run_id, metric))

    def clear_artifacts(self, run: Run) -> None:
        """Deletes a run's artifacts where the store can (a reused run must not keep files its new
        content no longer has); elsewhere the new files overwrite the old."""
        try:
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            get_artifact_repository(run.info.artifact_uri).delete_artifacts()
        except Exception as error:  # noqa: BLE001 - stores that cannot delete
            log.info("could not clear the previous artifacts of %s (%s); overwriting them", run.info.run_id, error)

    def delete_tags(self, run_id: str, names: Iterable[str], present: Mapping[str, str]) -> None:
        """Deletes those of ``names`` that are in ``present`` (the run's tags): MLflow refuses to delete a
        tag that is not there."""
        for name in names:
            if name in present:
                self._client.delete_tag(run_id, name)

    def log_dataset(
        self, run_id: str, name: str, digest: str, source: str, profile: Mapping[str, Any], context: str
    ) -> None:
        """Records what the run trained on as an MLflow dataset input, so the runs table's Dataset column
        shows it (``name`` and ``digest``) and runs on different data are told apart at a glance. The same
        dataset logged again (a resumed run) is one input, not two.

        The store looks the dataset up, then inserts it: jobs of one sweep starting at the same moment race
        for that insert, and the losers get a unique-key violation (seen on PostgreSQL with a job array).
        The dataset is then there, and logging again only links it to this run."""
        entity = Dataset(
            name=name,
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": source}),
            profile=json.dumps(dict(profile)),
        )
        inputs = [DatasetInput(entity, [InputTag("mlflow.data.context", context)])]
        for attempt in range(3):
            try:
                self._client.log_inputs(run_id, inputs)
                return
            except MlflowException as error:
                if attempt == 2 or not lost_an_insert_race(error):
                    raise

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(run_id, str(path), artifact_path)

    def download_artifact(self, run_id: str, path: str, destination: Path) -> Path:
        destination.mkdir(parents=True, exist_ok=True)
        return Path(self._client.download_artifacts(run_id, path, str(destination)))

    def finish(self, run_id: str, status: str = FINISHED) -> None:
        self._client.set_terminated(run_id, status=status)

"""The MLflow conventions of docs/conventions.md, in one place.

Experiment = sweep name. One MLflow run per run key, found again by its ``key`` tag: that is what
makes re-running a sweep skip finished runs and resume unfinished ones into the same run. Every
call goes through an explicit :class:`MlflowClient` and run id (no active-run global), so several
runs can be tracked from one process and from many processes at once.
"""

from __future__ import annotations

import configparser
import functools
import logging
import os
import random
import re
import stat
import subprocess
import time
from collections.abc import Iterable, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException, RestException

from ssl_hpc.files import exclusive_lock

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

# ------------------------------------------------------------------ credentials for a tracking server

CREDENTIALS_VARIABLE = "SSL_HPC_MLFLOW_CREDENTIALS"


class TrackingSetupError(RuntimeError):
    """The tracking configuration of this process is unusable (a bad credentials file, a bad variable)."""


def apply_credentials(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Sets ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (which MLflow's client reads) from
    the file ``SSL_HPC_MLFLOW_CREDENTIALS`` names, as ``mlflow/server.sh`` writes it: jobs on compute nodes
    inherit the variable, never the password on a command line. ``False`` when the variable is unset.
    The file must be readable by its owner only; its content never appears in an error or a log."""
    named = environ.get(CREDENTIALS_VARIABLE)
    if not named:
        return False
    path = Path(named)
    where = f"{CREDENTIALS_VARIABLE}={path}"
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):
            raise TrackingSetupError(f"{where} is not a file")
        if status.st_mode & 0o077:
            raise TrackingSetupError(
                f"{where} is readable by group or others (mode {stat.S_IMODE(status.st_mode):o}): "
                f"a password must not be; run chmod 600 {path}"
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise TrackingSetupError(f"{where}: cannot read the credentials file ({reason})") from None
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error:  # its message quotes the file's lines: the password must not reach a log
        parser = configparser.ConfigParser()
    username = parser.get("mlflow", "mlflow_tracking_username", fallback="").strip()
    password = parser.get("mlflow", "mlflow_tracking_password", fallback="").strip()
    if not username or not password:
        raise TrackingSetupError(
            f"{where} is malformed: expected an [mlflow] section with mlflow_tracking_username and "
            "mlflow_tracking_password (as mlflow/server.sh writes it)"
        )
    environ["MLFLOW_TRACKING_USERNAME"] = username
    environ["MLFLOW_TRACKING_PASSWORD"] = password
    return True


# ------------------------------------------------------------------ retries: a busy store, a server outage

# Two kinds of transient errors, each with its own patience (seconds, read at each call):
# - "busy": SQLite lets one writer in at a time; MLflow waits 20 s for the lock (busy_timeout), but a reader
#   that wants to write while another process writes gets "database is locked" at once.
#   SSL_HPC_TRACKING_RETRY_S, default 300.
# - "outage": an HTTP tracking server that cannot be reached or answers 5xx (restarted, its database down).
#   MLflow's client retries such a request itself for about 2 minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES);
#   this loop wraps it so a job outlives a longer outage. SSL_HPC_TRACKING_PATIENCE_S, default 900.
# A retry never logs twice: each MLflow call is one transaction, and a retried log_batch resends identical
# rows (same timestamps), which MLflow's SQL store stores once. Anything else fails at once.
BUSY, OUTAGE = "busy", "outage"
_BUSY_MARKERS = ("database is locked", "database table is locked", "database is busy")
_OUTAGE_MARKERS = (
    "max retries exceeded",
    "connection refused",
    "failed to establish a new connection",
    "connection aborted",
    "connection reset",
    "remote end closed connection",
    "remotedisconnected",
    "read timed out",
    "temporarily unavailable",
)
# requests' and urllib3's (by name: neither is a dependency of ours)
_NETWORK_ERRORS = {
    "ConnectionError",
    "NewConnectionError",
    "MaxRetryError",
    "ProtocolError",
    "ConnectTimeout",
    "ReadTimeout",
}
_HTTP_STATUS = re.compile(r"error code (\d{3}) != 200")


class TrackingAccessError(MlflowException):
    """The tracking server refused this process's credentials (401) or permissions (403)."""


class TrackingUnavailableError(MlflowException):
    """The tracking server stayed unreachable for longer than the patience."""


def _seconds(variable: str, default: float) -> float:
    text = os.environ.get(variable, "")
    try:
        return float(text) if text else default
    except ValueError:
        raise TrackingSetupError(f"{variable}={text!r} is not a number of seconds") from None


def retry_seconds() -> float:
    return _seconds("SSL_HPC_TRACKING_RETRY_S", 300.0)


def patience_seconds() -> float:
    return _seconds("SSL_HPC_TRACKING_PATIENCE_S", 900.0)


def _chain(error: BaseException) -> list[BaseException]:
    """The error and what caused it (MLflow's REST client wraps requests' errors in their text only)."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return seen


def http_status(error: BaseException) -> int | None:
    """The HTTP status a tracking server answered with, if ``error`` is such an answer."""
    if isinstance(error, RestException):
        return error.get_http_status_code()
    found = _HTTP_STATUS.search(str(error))
    return int(found.group(1)) if found else None


def transient_kind(error: BaseException) -> str | None:
    """``BUSY`` (a locked SQLite store), ``OUTAGE`` (a tracking server unreachable or answering 5xx), or
    ``None``: not transient (a bad request, 401/403, a wrong path), so retrying cannot help."""
    chain = _chain(error)
    text = " ".join(str(link) for link in chain).lower()
    if any(marker in text for marker in _BUSY_MARKERS):
        return BUSY
    status = http_status(error)
    if status is not None:
        return OUTAGE if status >= 500 else None
    if any(
        isinstance(link, ConnectionError | TimeoutError) or type(link).__name__ in _NETWORK_ERRORS for link in chain
    ):
        return OUTAGE
    return OUTAGE if any(marker in text for marker in _OUTAGE_MARKERS) else None


def _explained(error: Exception) -> Exception:
    """A refusal the user can act on, with the variable to set; other errors as they are."""
    status = http_status(error)
    if status == 401:
        hint = (
            f"the credentials in {os.environ[CREDENTIALS_VARIABLE]} are not accepted"
            if os.environ.get(CREDENTIALS_VARIABLE)
            else f"set {CREDENTIALS_VARIABLE} to the credentials file mlflow/server.sh printed"
        )
        return TrackingAccessError(f"the tracking server refused the request (HTTP 401, not authenticated): {hint}")
    if status == 403:
        return TrackingAccessError(
            "the tracking server refused the request (HTTP 403): this user has no permission on the experiment"
        )
    return error


def with_retries(call, *args, **kwargs):
    """``call(*args, **kwargs)``, retried with jittered backoff while the store is busy or the server is down,
    each for its own patience; anything else is raised at once."""
    started = time.monotonic()
    delay = 0.05
    warned = False
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as error:  # MlflowException, sqlalchemy's OperationalError during store set-up
            kind = transient_kind(error)
            if kind is None:
                explained = _explained(error)
                if explained is error:
                    raise
                raise explained from error
            patience = retry_seconds() if kind == BUSY else patience_seconds()
            waited = time.monotonic() - started
            first_line = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            if waited >= patience:
                if kind == BUSY:
                    raise
                raise TrackingUnavailableError(
                    f"the tracking server did not answer for {waited:.0f}s (SSL_HPC_TRACKING_PATIENCE_S="
                    f"{patience:g}): {first_line}"
                ) from error
            if kind == OUTAGE and not warned:
                log.warning("tracking server unreachable (%s); retrying for up to %.0fs", first_line, patience)
                warned = True
            log.debug("tracking store %s (%s); retrying in %.2fs", kind, first_line, delay)
            time.sleep(min(delay * (0.5 + random.random()), max(patience - waited, 0.01)))
            delay = min(delay * 2, 2.0 if kind == BUSY else 15.0)


class RetryingClient:
    """An :class:`MlflowClient` whose every method is retried on transient store errors."""

    def __init__(self, client: MlflowClient):
        self._client = client

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute
        return functools.partial(with_retries, attribute)


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

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(run_id, str(path), artifact_path)

    def download_artifact(self, run_id: str, path: str, destination: Path) -> Path:
        destination.mkdir(parents=True, exist_ok=True)
        return Path(self._client.download_artifacts(run_id, path, str(destination)))

    def finish(self, run_id: str, status: str = FINISHED) -> None:
        self._client.set_terminated(run_id, status=status)

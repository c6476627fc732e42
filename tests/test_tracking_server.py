"""The PostgreSQL-backed tracking server (mlflow/server.sh): authentication, served artifacts, no SQLite
anywhere, secrets readable by their owner only, and jobs that outlive an outage without logging twice.

The server tests start the real server once per module (PostgreSQL on a unix socket in a temporary state
folder, MLflow with basic auth on a free port of 127.0.0.1) and stop it at the end. The classifier of
transient errors and the credentials file are also tested on their own, without a server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException, RestException

from conftest import IN_CI, PROJECT_ROOT
from ssl_hpc.tracking import SweepTracker
from ssl_hpc.tracking_access import (
    BUSY,
    CREDENTIALS_VARIABLE,
    OUTAGE,
    TrackingAccessError,
    TrackingSetupError,
    TrackingUnavailableError,
    apply_credentials,
    lost_an_insert_race,
    transient_kind,
    with_retries,
)

SCRIPT = PROJECT_ROOT / "mlflow" / "server.sh"
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"
REFUSED = (
    "API request to http://127.0.0.1:5077/api/2.0/mlflow/runs/log-batch failed with exception "
    "HTTPConnectionPool(host='127.0.0.1', port=5077): Max retries exceeded with url: /api/2.0/mlflow/runs/log-batch "
    "(Caused by NewConnectionError(\"HTTPConnection(host='127.0.0.1', port=5077): Failed to establish a new "
    'connection: [Errno 111] Connection refused"))'
)
UNAUTHENTICATED = (
    "API request to endpoint /api/2.0/mlflow/experiments/search failed with error code 401 != 200. "
    "Response body: 'You are not authenticated.'"
)
SQLITE_HEADER = b"SQLite format 3\x00"

tracking_server = pytest.mark.tracking_server


# --------------------------------------------------------------------------- without a server


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (MlflowException(REFUSED), OUTAGE),
        (MlflowException("API request to endpoint /x failed with error code 503 != 200"), OUTAGE),
        (
            MlflowException("... Max retries exceeded ... (Caused by ResponseError('too many 500 error responses'))"),
            OUTAGE,
        ),
        (RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "db down"}), OUTAGE),
        (ConnectionRefusedError(111, "Connection refused"), OUTAGE),
        (MlflowException("(sqlite3.OperationalError) database is locked"), BUSY),
        (MlflowException(UNAUTHENTICATED), None),
        (MlflowException("API request to endpoint /x failed with error code 403 != 200"), None),
        (RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}), None),
        (RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}), None),
        (FileNotFoundError(2, "No such file or directory"), None),
        (MlflowException("no such table: experiments"), None),
    ],
)
def test_transient_kind(error: BaseException, kind: str | None):
    assert transient_kind(error) == kind


def test_a_cause_that_is_a_connection_error_is_an_outage():
    try:
        try:
            raise ConnectionResetError(104, "reset by peer")
        except ConnectionResetError:
            raise MlflowException("API request failed") from None
    except MlflowException as wrapped:
        assert transient_kind(wrapped) is None  # `from None`: nothing to go on
    try:
        try:
            raise ConnectionResetError(104, "reset by peer")
        except ConnectionResetError as error:
            raise MlflowException("API request failed") from error
    except MlflowException as wrapped:
        assert transient_kind(wrapped) == OUTAGE


def failing(times: int, error: Exception):
    calls = []

    def call():
        calls.append(time.monotonic())
        if len(calls) <= times:
            raise error
        return "ok"

    return call, calls


def test_an_outage_is_retried_until_the_server_answers(monkeypatch):
    monkeypatch.setenv("SSL_HPC_TRACKING_PATIENCE_S", "30")
    call, calls = failing(3, MlflowException(REFUSED))
    assert with_retries(call) == "ok"
    assert len(calls) == 4


def test_an_outage_longer_than_the_patience_raises_a_clear_error(monkeypatch):
    monkeypatch.setenv("SSL_HPC_TRACKING_PATIENCE_S", "0.5")
    call, calls = failing(10**6, MlflowException(REFUSED))
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match="SSL_HPC_TRACKING_PATIENCE_S=0.5"):
        with_retries(call)
    assert time.monotonic() - started < 5
    assert len(calls) > 1


def test_401_fails_at_once_and_says_which_variable_to_set(monkeypatch):
    monkeypatch.delenv(CREDENTIALS_VARIABLE, raising=False)
    call, calls = failing(10**6, MlflowException(UNAUTHENTICATED))
    with pytest.raises(TrackingAccessError, match=CREDENTIALS_VARIABLE):
        with_retries(call)
    assert len(calls) == 1


def test_a_bad_request_fails_at_once():
    error = RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"})
    call, calls = failing(10**6, error)
    with pytest.raises(RestException) as raised:
        with_retries(call)
    assert raised.value is error and len(calls) == 1


def write_credentials(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


GOOD = "[mlflow]\nmlflow_tracking_username = admin\nmlflow_tracking_password = s3cretPassw0rd\n"


def test_apply_credentials_sets_mlflows_variables(tmp_path: Path):
    environ = {CREDENTIALS_VARIABLE: str(write_credentials(tmp_path / "credentials", GOOD))}
    assert apply_credentials(environ)
    assert environ["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert environ["MLFLOW_TRACKING_PASSWORD"] == "s3cretPassw0rd"
    assert not apply_credentials({})  # unset: nothing to do


@pytest.mark.parametrize(
    ("name", "text", "mode", "says"),
    [
        ("missing", None, 0o600, "cannot read"),
        ("open", GOOD, 0o644, "readable by group or others"),
        ("group", GOOD, 0o640, "readable by group or others"),
        ("malformed", "mlflow_tracking_password = s3cretPassw0rd\n", 0o600, "malformed"),
        ("no-password", "[mlflow]\nmlflow_tracking_username = admin\n", 0o600, "malformed"),
    ],
)
def test_apply_credentials_refuses(tmp_path: Path, name: str, text: str | None, mode: int, says: str):
    path = tmp_path / name
    if text is not None:
        write_credentials(path, text, mode)
    environ = {CREDENTIALS_VARIABLE: str(path)}
    with pytest.raises(TrackingSetupError, match=says) as raised:
        apply_credentials(environ)
    assert CREDENTIALS_VARIABLE in str(raised.value) and str(path) in str(raised.value)
    assert "s3cretPassw0rd" not in str(raised.value)
    assert "MLFLOW_TRACKING_PASSWORD" not in environ


# --------------------------------------------------------------------------- the real server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_available() -> str | None:
    """Why the server cannot be started here, or ``None`` (the script installs PostgreSQL as root)."""
    if any(Path("/usr/lib/postgresql").glob("*/bin/initdb")) or shutil.which("initdb"):
        return None
    if os.geteuid() == 0 and shutil.which("apt-get"):
        return None
    return "PostgreSQL is not installed and this user cannot install it (mlflow/server.sh installs it as root)"


@dataclass
class Server:
    state: Path
    env: dict[str, str]
    uri: str
    credentials: Path
    started: float

    def script(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["bash", str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=300)
        if check and result.returncode != 0:
            log = self.state / "mlflow.log"
            tail = log.read_text()[-3000:] if log.is_file() else ""
            pytest.fail(f"mlflow/server.sh {' '.join(args)} failed ({result.returncode}):\n{result.stderr}\n{tail}")
        return result


@pytest.fixture(scope="module")
def server():
    why = postgres_available()
    if why:
        if IN_CI:
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    # Not under pytest's temporary folder: that is closed (0700) to the postgres user, which must pass
    # through to its own subfolder. mkdtemp gives a fresh folder of ours, mode 0700.
    state = Path(tempfile.mkdtemp(prefix="ssl-hpc-pg-", dir="/tmp"))
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MLFLOW_TRACKING_", "SSL_HPC_MLFLOW_")) and key != "MLFLOW_AUTH_CONFIG_PATH"
    }
    env.update(
        SSL_HPC_MLFLOW_STATE=str(state),
        MLFLOW_HOST="127.0.0.1",
        MLFLOW_PORT=str(free_port()),
        MLFLOW_WORKERS="1",
        SSL_HPC_MLFLOW_TIMEOUT="300",  # a loaded CI machine: first start runs all of MLflow's migrations
        PYTHON=sys.executable,
    )
    started = time.time()
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    if result.returncode == 2 and not IN_CI:
        pytest.skip(f"mlflow/server.sh lacks a prerequisite: {result.stderr.strip().splitlines()[-1]}")
    lines = result.stdout.splitlines()
    handle = None
    if result.returncode == 0 and len(lines) == 2:
        uri = lines[0].removeprefix("MLFLOW_TRACKING_URI=")
        credentials = Path(lines[1].removeprefix(f"{CREDENTIALS_VARIABLE}="))
        handle = Server(state=state, env=env, uri=uri, credentials=credentials, started=started)
    try:
        assert handle is not None, f"mlflow/server.sh failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        assert lines[0] == f"MLFLOW_TRACKING_URI=http://127.0.0.1:{env['MLFLOW_PORT']}"
        assert lines[1] == f"{CREDENTIALS_VARIABLE}={state}/credentials"
        yield handle
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=300)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def authenticated(server: Server, monkeypatch) -> Server:
    """This test process authenticates as jobs do: through the variable naming the credentials file."""
    monkeypatch.setenv(CREDENTIALS_VARIABLE, str(server.credentials))
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    return server


def status_of(url: str, user: str | None = None, password: str | None = None) -> int:
    request = urllib.request.Request(url)
    if user is not None:
        token = b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@tracking_server
def test_requests_without_or_with_wrong_credentials_get_401(server: Server):
    assert status_of(server.uri + SEARCH) == 401
    assert status_of(server.uri + SEARCH, "admin", "not-the-password") == 401
    assert status_of(server.uri + SEARCH, "admin", "password1234") == 401  # never MLflow's old default
    environ = {CREDENTIALS_VARIABLE: str(server.credentials)}
    apply_credentials(environ)
    assert (
        status_of(server.uri + SEARCH, environ["MLFLOW_TRACKING_USERNAME"], environ["MLFLOW_TRACKING_PASSWORD"]) == 200
    )


@tracking_server
def test_running_again_prints_the_same_lines_and_status_says_running(server: Server):
    again = server.script()
    assert again.stdout.splitlines() == [
        f"MLFLOW_TRACKING_URI={server.uri}",
        f"{CREDENTIALS_VARIABLE}={server.credentials}",
    ]
    assert "already running" in again.stderr
    status = server.script("status")
    assert "postgresql: running" in status.stdout and "mlflow: running" in status.stdout


@tracking_server
def test_a_client_without_credentials_is_told_which_variable_to_set(server: Server, monkeypatch):
    monkeypatch.delenv(CREDENTIALS_VARIABLE, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(TrackingAccessError, match=CREDENTIALS_VARIABLE):
        SweepTracker(server.uri, "no-credentials")


@tracking_server
def test_a_tracker_logs_runs_metrics_and_served_artifacts(authenticated: Server, tmp_path: Path):
    tracker = SweepTracker(authenticated.uri, "pg-server")
    run_id = tracker.create_run("r1", {"key": "k1", "stage": "finetune"}, {"finetune.lr": "0.05"})
    for step in range(3):
        tracker.log_metrics(run_id, {"val_acc": 0.5 + step / 10, "train_loss": 1.0 / (step + 1)}, step=step)
    config = tmp_path / "config.json"
    config.write_text('{"seed": 621}')
    tracker.log_artifact(run_id, config)
    tracker.finish(run_id)

    run = tracker.run_for_key("k1")
    assert run is not None and run.info.status == "FINISHED"
    assert tracker.logged_steps(run_id, "val_acc") == [0, 1, 2]
    assert run.data.params["finetune.lr"] == "0.05"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server, not a path
    stored = list((authenticated.state / "artifacts").rglob("config.json"))
    assert len(stored) == 1 and run_id in str(stored[0])
    fetched = tracker.download_artifact(run_id, "config.json", tmp_path / "back")
    assert fetched.read_text() == '{"seed": 621}'


@tracking_server
def test_identical_metric_rows_are_stored_once(authenticated: Server):
    """What makes a retried log_batch safe: the store keeps an identical row (same timestamp) once."""
    tracker = SweepTracker(authenticated.uri, "pg-server")
    run_id = tracker.create_run("dedup", {"key": "dedup"}, {})
    rows = [Metric("loss", 0.25, 1_700_000_000_000, 4)]
    tracker._client.log_batch(run_id, metrics=rows)
    tracker._client.log_batch(run_id, metrics=rows)  # as a retry after a lost answer would
    assert [(m.step, m.value) for m in tracker.metric_history(run_id, "loss")] == [(4, 0.25)]


def test_a_unique_key_violation_is_a_lost_insert_race():
    postgres = MlflowException(
        '(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"'
    )
    sqlite = MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id")
    assert lost_an_insert_race(postgres) and lost_an_insert_race(sqlite)
    assert not lost_an_insert_race(MlflowException("RESOURCE_DOES_NOT_EXIST: run not found"))


@tracking_server
def test_jobs_starting_together_each_log_the_same_new_dataset(authenticated: Server):
    """Eight jobs of a job array log the same dataset at the same instant (the store's look-up-then-insert
    loses races on PostgreSQL): every run gets its dataset input, none fails."""
    tracker = SweepTracker(authenticated.uri, "pg-datasets")
    run_ids = [tracker.create_run(f"r{i}", {"key": f"dataset-race-{i}"}, {}) for i in range(8)]
    start = threading.Barrier(len(run_ids))
    errors: list[BaseException] = []

    def job(run_id: str) -> None:
        own = SweepTracker(authenticated.uri, "pg-datasets")  # each job its own client and connection
        start.wait()
        try:
            own.log_dataset(run_id, "race@28", "0123456789abcdef", "/data/race.npz", {"train": 1}, "training")
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=job, args=(run_id,)) for run_id in run_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    client = MlflowClient(authenticated.uri)
    for run_id in run_ids:
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("race@28", "0123456789abcdef")]


def sqlite_files(*roots: Path, newer_than: float = 0.0) -> list[Path]:
    found = []
    for root in roots:
        for path in root.rglob("*") if root.is_dir() else [root]:
            try:
                if not path.is_file() or path.is_symlink() or path.stat().st_mtime < newer_than:
                    continue
                if path.suffix in {".db", ".sqlite", ".sqlite3"}:
                    found.append(path)
                    continue
                with path.open("rb") as file:
                    if file.read(len(SQLITE_HEADER)) == SQLITE_HEADER:
                        found.append(path)
            except OSError:
                continue
    return found


def server_processes(state: Path) -> list[Path]:
    """/proc entries of the MLflow server's processes (its own process group: the server and its workers)."""
    leader = int((state / "mlflow.pid").read_text())
    group = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.getpgid(int(entry.name)) == leader:
                group.append(entry)
        except OSError:
            continue
    return group


@tracking_server
def test_no_sqlite_file_anywhere(authenticated: Server, tmp_path_factory):
    SweepTracker(authenticated.uri, "pg-server")  # at least one client session has run
    # Files of the tests that ran before this module's server started (their own SQLite stores) are not ours.
    started = (authenticated.state / "mlflow.pid").stat().st_mtime - 1
    assert sqlite_files(authenticated.state, tmp_path_factory.getbasetemp(), newer_than=started) == []
    # /dev/shm is shared with whatever else runs here: look at what the server's own processes hold.
    processes = server_processes(authenticated.state)
    assert len(processes) >= 2  # `mlflow server` and uvicorn
    for process in processes:
        try:
            environ = (process / "environ").read_bytes().split(b"\0")
            targets = [os.readlink(fd) for fd in (process / "fd").iterdir()]
        except OSError:
            continue  # it ended meanwhile
        assert not any(line.startswith(b"_MLFLOW_HUEY_STORAGE_PATH=") for line in environ)  # job queue: SQLite
        opened = [Path(target) for target in targets if target.startswith("/")]
        assert sqlite_files(*[path for path in opened if path.is_file()]) == [], process


@tracking_server
def test_secrets_are_readable_by_their_owner_only(server: Server, tmp_path: Path, monkeypatch):
    assert server.state.stat().st_mode & 0o066 == 0 and server.state.stat().st_mode & 0o007 == 0
    for name in ("credentials", "pgpass", "auth.ini", "secret_key"):
        assert (server.state / name).stat().st_mode & 0o077 == 0, name
    assert "password1234" not in (server.state / "auth.ini").read_text()
    assert (server.state / "postgres").stat().st_mode & 0o077 == 0

    exposed = tmp_path / "credentials"
    shutil.copy(server.credentials, exposed)
    exposed.chmod(0o644)
    monkeypatch.setenv(CREDENTIALS_VARIABLE, str(exposed))
    with pytest.raises(TrackingSetupError, match=CREDENTIALS_VARIABLE) as raised:
        SweepTracker(server.uri, "pg-server")
    password = server.credentials.read_text().split("mlflow_tracking_password = ")[1].strip()
    assert password not in str(raised.value)


@tracking_server
@pytest.mark.parametrize("planted", ["symlink", "foreign", "writable"])
def test_a_state_folder_someone_else_could_have_planted_is_refused(server: Server, tmp_path: Path, planted: str):
    state = tmp_path / "state"
    if planted == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        state.symlink_to(tmp_path / "elsewhere")
        says = "symbolic link"
    elif planted == "foreign":
        if os.geteuid() != 0:
            pytest.skip("only root can give a folder to another user")
        state.mkdir(mode=0o700)
        os.chown(state, 65534, 65534)  # nobody
        says = "owned by uid 65534"
    else:
        state.mkdir()
        state.chmod(0o777)
        says = "writable by others"
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**server.env, "SSL_HPC_MLFLOW_STATE": str(state)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and says in result.stderr and result.stdout == ""
    assert not (state / "credentials").exists()


@tracking_server
def test_a_job_outlives_a_server_outage_and_logs_each_step_once(authenticated: Server, monkeypatch):
    # Our loop does the waiting, not MLflow's own ~2-minute HTTP retries, so the test stays short.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    tracker = SweepTracker(authenticated.uri, "pg-server")
    run_id = tracker.create_run("outage", {"key": "outage"}, {})
    tracker.log_metrics(run_id, {"loss": 1.0, "acc": 0.1}, step=0)

    authenticated.script("stop")
    try:
        monkeypatch.setenv("SSL_HPC_TRACKING_PATIENCE_S", "3")
        started = time.monotonic()
        with pytest.raises(TrackingUnavailableError, match="SSL_HPC_TRACKING_PATIENCE_S=3"):
            tracker.log_metrics(run_id, {"loss": 9.0}, step=99)
        assert time.monotonic() - started < 30

        monkeypatch.setenv("SSL_HPC_TRACKING_PATIENCE_S", "240")
        outcome: dict[str, object] = {}

        def log_step_one() -> None:
            try:
                tracker.log_metrics(run_id, {"loss": 0.5, "acc": 0.2}, step=1)
                outcome["done"] = time.monotonic()
            except Exception as error:  # noqa: BLE001 - reported by the assertion below
                outcome["error"] = error

        thread = threading.Thread(target=log_step_one, daemon=True)
        thread.start()
        time.sleep(12)
        assert thread.is_alive(), f"log_metrics returned while the server was down: {outcome}"
        restarted = time.monotonic()
    finally:
        authenticated.script()  # the same state: same credentials, same database
    thread.join(timeout=240)
    assert not thread.is_alive() and "error" not in outcome, outcome
    assert outcome["done"] >= restarted
    assert [(m.step, m.value) for m in tracker.metric_history(run_id, "loss")] == [(0, 1.0), (1, 0.5)]
    assert tracker.logged_steps(run_id, "acc") == [0, 1]

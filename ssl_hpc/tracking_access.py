"""How this process reaches the tracking store: the credentials of a tracking server
(``SSL_HPC_MLFLOW_CREDENTIALS``) and the retries that ride out a busy SQLite store or a server outage.

Split from :mod:`ssl_hpc.tracking` (the conventions: which run stands for which key) so that each stays
one idea; ``ssl_hpc.tracking`` re-exports what callers use.
"""

from __future__ import annotations

import configparser
import functools
import logging
import os
import random
import re
import stat
import time
from collections.abc import MutableMapping
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException

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


_UNIQUE_MARKERS = ("duplicate key value violates unique constraint", "unique constraint failed")  # PostgreSQL, SQLite


def lost_an_insert_race(error: BaseException) -> bool:
    """Whether ``error`` is a store refusing a row another writer inserted first (a unique-key violation):
    what the loser of two concurrent get-or-create calls sees. Calling again finds the row."""
    text = " ".join(str(link) for link in _chain(error)).lower()
    return any(marker in text for marker in _UNIQUE_MARKERS)


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

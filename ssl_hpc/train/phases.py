"""Where a job's wall time goes: setup, training, evaluation, CAMs and uploads (MLflow ``seconds_*``).

A short job spends much of its time outside its training steps (imports, data, the leakage guard, the
MLflow run, CAMs, uploads); these metrics say how much and where, so the fixed part can be cut where it
is. The timer charges every second to exactly one phase -- the one current at that moment -- so the
phases add up to the job's wall time and nothing is counted twice: a nested ``with timer.phase("upload")``
inside training takes its seconds out of training and hands back to it afterwards.

A job's clock starts when its process started if it is the process's first job (a Slurm task pays the
interpreter and the imports for its one job), else when the runner picked it up (the time between two jobs
of one process is the launcher's).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

PHASES = ("setup", "train", "eval", "cam", "upload")
Clock = Callable[[], float]


class PhaseTimer:
    """Charges the time from ``start`` (default: now) to one current phase at a time; pure given ``clock``."""

    def __init__(self, start: float | None = None, clock: Clock = time.perf_counter, first: str = "setup"):
        self._clock = clock
        self._since = clock() if start is None else start
        self._current = first
        self._totals: dict[str, float] = dict.fromkeys(PHASES, 0.0)

    @property
    def current(self) -> str:
        return self._current

    def switch(self, name: str) -> str:
        """Charges the time since the last switch to the current phase, then makes ``name`` current;
        returns the phase that was current."""
        now = self._clock()
        self._totals[self._current] = self._totals.get(self._current, 0.0) + max(0.0, now - self._since)
        self._since = now
        previous, self._current = self._current, name
        return previous

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """``name`` is current inside the block; the phase current before it is current again after."""
        previous = self.switch(name)
        try:
            yield
        finally:
            self.switch(previous)

    def seconds(self) -> dict[str, float]:
        """Seconds per phase so far, the current one up to now (without ending it)."""
        totals = dict(self._totals)
        totals[self._current] = totals.get(self._current, 0.0) + max(0.0, self._clock() - self._since)
        return totals

    def metrics(self) -> dict[str, float]:
        """``seconds_<phase>`` for MLflow: every phase of :data:`PHASES` (0 where none was spent), and any other."""
        return {f"seconds_{name}": value for name, value in self.seconds().items()}


def process_age(stat_path: str = "/proc/self/stat") -> float:
    """Seconds since this process started (Linux: from ``/proc``); 0 where that cannot be read."""
    try:
        with open(stat_path) as file:
            fields = file.read().rsplit(")", 1)[1].split()
        started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of proc(5): starttime
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started_after_boot)
    except (OSError, IndexError, ValueError, AttributeError):
        return 0.0


_jobs_started = 0  # jobs whose timer this process has started


def job_timer(clock: Clock = time.perf_counter) -> PhaseTimer:
    """The timer of a job starting now in this process: from the process's start for its first job
    (interpreter and imports are that job's setup), from now for later ones."""
    global _jobs_started
    now = clock()
    start = now - process_age() if _jobs_started == 0 else now
    _jobs_started += 1
    return PhaseTimer(start=start, clock=clock)

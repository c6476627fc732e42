"""A job's fixed costs: the phase timer behind ``seconds_*``, and the leakage report scanned once per dataset."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from ssl_hpc.data.duplicates import cache as leakage_cache
from ssl_hpc.data.duplicates import duplicate_report
from ssl_hpc.data.duplicates.report import DuplicateReport
from ssl_hpc.data.loading import DatasetCache
from ssl_hpc.data.splits import ImageSplit, LabeledDataset
from ssl_hpc.jobs import Job
from ssl_hpc.train import finetune_run, phases
from ssl_hpc.train.handle import RunContext, RunHandle
from ssl_hpc.train.loop import Precision
from ssl_hpc.train.phases import PHASES, PhaseTimer
from test_duplicates import planted_dataset
from test_frozen_cache import StubTracker, config


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ------------------------------------------------------------------ the phase timer


def test_every_second_goes_to_exactly_one_phase_and_nested_phases_hand_back():
    clock = FakeClock()
    timer = PhaseTimer(start=90.0, clock=clock)  # 10 s before "now": the process started earlier
    clock.advance(2)
    timer.switch("train")
    clock.advance(5)
    with timer.phase("upload"):  # an epoch's metrics, logged from inside training
        clock.advance(1)
    assert timer.current == "train"
    clock.advance(3)
    timer.switch("eval")
    clock.advance(4)
    with timer.phase("cam"):
        clock.advance(6)
        with timer.phase("upload"):
            clock.advance(0.5)
    assert timer.current == "eval"
    assert timer.seconds() == {"setup": 12.0, "train": 8.0, "eval": 4.0, "cam": 6.0, "upload": 1.5}
    assert sum(timer.seconds().values()) == clock.now - 90.0
    assert timer.metrics() == {f"seconds_{name}": value for name, value in timer.seconds().items()}


def test_metrics_name_all_five_phases_even_unused_ones():
    clock = FakeClock()
    timer = PhaseTimer(clock=clock)
    clock.advance(1)
    assert set(timer.metrics()) == {f"seconds_{name}" for name in PHASES}
    assert timer.metrics()["seconds_setup"] == 1.0 and timer.metrics()["seconds_train"] == 0.0


def test_a_phase_left_by_an_exception_is_still_charged_and_handed_back():
    clock = FakeClock()
    timer = PhaseTimer(clock=clock)
    with pytest.raises(RuntimeError), timer.phase("upload"):
        clock.advance(2)
        raise RuntimeError("store down")
    assert timer.current == "setup" and timer.seconds()["upload"] == 2.0


def test_a_process_s_first_job_counts_from_the_process_start_later_ones_from_their_own(monkeypatch):
    monkeypatch.setattr(phases, "_jobs_started", 0)
    monkeypatch.setattr(phases, "process_age", lambda: 7.0)
    clock = FakeClock()
    first = phases.job_timer(clock)
    second = phases.job_timer(clock)
    assert first.seconds()["setup"] == 7.0  # interpreter and imports
    assert second.seconds()["setup"] == 0.0


def test_process_age_is_read_from_proc_or_zero(tmp_path):
    if Path("/proc/self/stat").is_file():
        assert 0.0 < phases.process_age() < 365 * 24 * 3600
    assert phases.process_age(str(tmp_path / "missing")) == 0.0
    (tmp_path / "stat").write_text("garbage")
    assert phases.process_age(str(tmp_path / "stat")) == 0.0


# ------------------------------------------------------------------ the leakage cache


@pytest.fixture
def counted_scans(monkeypatch) -> list[str]:
    """Each call of the real scan, by dataset name."""
    calls: list[str] = []

    def scan(dataset, *args, **kwargs):
        calls.append(dataset.name)
        return duplicate_report(dataset, *args, **kwargs)

    monkeypatch.setattr(leakage_cache, "duplicate_report", scan)
    return calls


def test_a_report_survives_its_json_unchanged():
    report = duplicate_report(planted_dataset()[0])
    assert not report.clean and report.pairs
    assert DuplicateReport.from_json(report.to_json()) == report


def test_a_second_process_reads_the_report_instead_of_scanning(tmp_path, counted_scans):
    dataset, _ = planted_dataset()
    folder = tmp_path / ".leakage"
    first = leakage_cache.cached_duplicate_report(dataset, 8, 0.98, folder)
    (path,) = folder.glob("*.json")
    written = path.stat().st_mtime_ns
    second = leakage_cache.cached_duplicate_report(dataset, 8, 0.98, folder)
    assert counted_scans == [dataset.name]
    assert path.stat().st_mtime_ns == written
    assert second == first and second.as_metrics() == first.as_metrics()
    assert second.as_table().equals(first.as_table()) and second.pairs_table().equals(first.pairs_table())


def test_other_examples_or_settings_are_scanned_again(tmp_path, counted_scans):
    dataset, _ = planted_dataset()
    folder = tmp_path / ".leakage"
    leakage_cache.cached_duplicate_report(dataset, 8, 0.98, folder)
    leakage_cache.cached_duplicate_report(dataset, 6, 0.98, folder)  # another threshold
    leakage_cache.cached_duplicate_report(dataset, 8, 0.9, folder)  # another correlation
    relabelled = ImageSplit(dataset.test.images, 1 - dataset.test.labels)
    other = LabeledDataset(dataset.name, dataset.train, dataset.val, relabelled, dataset.class_names)
    leakage_cache.cached_duplicate_report(other, 8, 0.98, folder)  # the same images, other labels
    assert len(counted_scans) == 4 and len(list(folder.glob("*.json"))) == 4


def test_an_unreadable_report_is_scanned_again_and_replaced(tmp_path, counted_scans):
    dataset, _ = planted_dataset()
    folder = tmp_path / ".leakage"
    expected = leakage_cache.cached_duplicate_report(dataset, 8, 0.98, folder)
    (path,) = folder.glob("*.json")
    path.write_text('{"dataset": "truncated')
    again = leakage_cache.cached_duplicate_report(dataset, 8, 0.98, folder)
    assert dataclasses.replace(again, seconds=0) == dataclasses.replace(expected, seconds=0)  # scanned anew
    assert len(counted_scans) == 2 and DuplicateReport.from_json(path.read_text()) == again


def test_jobs_starting_at_once_scan_once(tmp_path, monkeypatch):
    """Two jobs at the same moment (threads here; processes on a cluster take the same file lock)."""
    dataset, _ = planted_dataset()
    calls = []

    def slow_scan(dataset, *args, **kwargs):
        calls.append(dataset.name)
        time.sleep(0.5)  # the other job arrives while this one scans
        return duplicate_report(dataset, *args, **kwargs)

    monkeypatch.setattr(leakage_cache, "duplicate_report", slow_scan)
    results = []
    jobs = [
        threading.Thread(
            target=lambda: results.append(
                leakage_cache.cached_duplicate_report(dataset, 8, 0.98, tmp_path / ".leakage")
            )
        )
        for _ in range(2)
    ]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    assert len(calls) == 1 and len(results) == 2 and results[0] == results[1]


class ArtifactTracker(StubTracker):
    """The stub tracker, also keeping the logged files' contents."""

    def __init__(self) -> None:
        super().__init__()
        self.artifacts: dict[str, bytes] = {}

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts[f"{artifact_path}/{Path(path).name}"] = Path(path).read_bytes()


def leakage_of_one_job(root: Path, dataset: LabeledDataset) -> ArtifactTracker:
    """``log_leakage`` as a fresh job process runs it (its own DatasetCache), sharing ``root`` as output folder."""
    run_config = config("none", 1)
    cache = DatasetCache(root)
    cache._loaded[(run_config.dataset, run_config.size)] = dataset  # as if loaded from disk
    context = RunContext(sweep_name="s", tracking_uri="unused", output_root=root, data_root=root)
    tracker = ArtifactTracker()
    workdir = root / f"job-{len(os.listdir(root))}"
    handle = RunHandle(Job("k", run_config), tracker, "run", workdir, Precision(torch.device("cpu")), context)
    finetune_run.log_leakage(handle, cache)
    return tracker


def test_every_job_logs_the_same_leakage_metrics_and_files_from_one_scan(tmp_path, counted_scans):
    dataset, _ = planted_dataset()
    first, second = (leakage_of_one_job(tmp_path, dataset) for _ in range(2))
    assert counted_scans == [dataset.name]
    assert first.metrics and first.metrics == second.metrics
    assert set(first.artifacts) == {"leakage/duplicates.csv", "leakage/duplicate_pairs.csv"}
    assert first.artifacts == second.artifacts
    assert list((tmp_path / finetune_run.LEAKAGE_CACHE).glob("*.json"))


def test_the_cache_can_be_turned_off_to_measure_what_it_saves(tmp_path, counted_scans, monkeypatch):
    monkeypatch.setenv("SSL_HPC_LEAKAGE_CACHE", "0")
    dataset, _ = planted_dataset()
    first, second = (leakage_of_one_job(tmp_path, dataset) for _ in range(2))
    assert first.metrics == second.metrics
    assert counted_scans == []  # the scan went through the uncached path, twice
    assert not (tmp_path / finetune_run.LEAKAGE_CACHE).exists()


# ------------------------------------------------------------------ a real fine-tune job, twice


@pytest.mark.e2e
def test_finetune_runs_log_the_five_phases_and_the_second_reads_the_leakage_report(
    tmp_path, data_root, counted_scans, monkeypatch
):
    """Two short frozen fine-tune jobs (two seeds) on PneumoniaMNIST, CAMs on: each logs ``seconds_*`` for
    every phase, adding up to at most its wall time, and only the first scans for leakage. With the default
    ``runtime.checkpoint_every_s`` (a minute) a run of two quick epochs writes one checkpoint, after its
    final epoch, and still logs both epochs."""
    from mlflow import MlflowClient

    import ssl_hpc.train.loop as loop
    from ssl_hpc.cli import make_context
    from ssl_hpc.config import validate_sweep
    from ssl_hpc.jobs import expand_jobs
    from ssl_hpc.runner import run_job

    sweep = validate_sweep(
        {
            "name": "overhead",
            "seeds": [1, 2],
            "output_dir": str(tmp_path / "outputs"),
            "grid": {
                "dataset": ["pneumoniamnist"],
                "size": [28],
                "method": ["random_init"],
                "backbone": ["resnet18"],
                "label_fraction": [1.0],
                "labels_per_class": [10],
                "class_weight": ["none"],
                "finetune": ["frozen"],
            },
            "finetune": {"epochs": 2, "batch_size": 16},
            "model": {"stem": "imagenet"},
            "cam": {"max_images": 8, "images_per_class": 1, "faithfulness": False},
            "runtime": {"device": "cpu"},
        }
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    context = make_context(sweep, tmp_path, progress=False)
    client = MlflowClient(context.tracking_uri)
    checkpointed: list[int] = []
    save = loop.save_atomic

    def recording(obj, path):
        if path.name == loop.LAST:
            checkpointed.append(obj["epoch"])
        return save(obj, path)

    monkeypatch.setattr(loop, "save_atomic", recording)
    logged = []
    for job in expand_jobs(sweep):
        started = time.perf_counter()
        assert run_job(job, context) == "finished"  # a fresh DatasetCache each: as separate processes
        wall = time.perf_counter() - started
        (run,) = client.search_runs(
            [client.get_experiment_by_name(sweep.name).experiment_id], f"tags.key = '{job.key}'"
        )
        seconds = {phase: run.data.metrics[f"seconds_{phase}"] for phase in PHASES}
        assert all(value >= 0 for value in seconds.values()) and seconds["train"] > 0 and seconds["cam"] > 0
        assert seconds["eval"] > 0 and seconds["upload"] > 0
        # The first job of this process also counts the time since the process started; a later one does not.
        assert sum(seconds.values()) <= wall + (phases.process_age() if not logged else 0.0)
        logged.append({name: value for name, value in run.data.metrics.items() if name.startswith("duplicates_")})
        steps = sorted(metric.step for metric in client.get_metric_history(run.info.run_id, "train_loss"))
        assert steps == [0, 1] and checkpointed == [1] * len(logged), (steps, checkpointed)
    assert counted_scans == ["pneumoniamnist"]
    assert logged[0] and logged[0] == logged[1]

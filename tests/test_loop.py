"""The training loop: schedules, batching, checkpoints, and resume equivalence."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_hpc.config import FinetuneSettings, StageSettings
from ssl_hpc.data.splits import ImageSplit
from ssl_hpc.files import load_checkpoint, save_atomic
from ssl_hpc.train.loop import LAST, CheckpointPolicy, Precision, batch_order, batches, checkpoint_due, fit
from ssl_hpc.train.optim import lr_at_epoch


def test_thesis_step_schedule():
    settings = StageSettings(lr=0.05, schedule="step", step_epochs=20, step_gamma=0.5, min_lr=0.0005, epochs=200)
    assert lr_at_epoch(settings, 0) == pytest.approx(0.05)
    assert lr_at_epoch(settings, 19) == pytest.approx(0.05)
    assert lr_at_epoch(settings, 20) == pytest.approx(0.025)
    assert lr_at_epoch(settings, 99) == pytest.approx(0.05 / 16)
    assert lr_at_epoch(settings, 140) == pytest.approx(0.0005)  # 0.05/128 would be below the floor
    assert lr_at_epoch(settings, 199) == pytest.approx(0.0005)


def test_cosine_and_warmup():
    settings = StageSettings(lr=0.1, schedule="cosine", min_lr=0.0, epochs=10, warmup_epochs=2)
    assert lr_at_epoch(settings, 0) == pytest.approx(0.05)
    assert lr_at_epoch(settings, 2) == pytest.approx(0.1)
    assert lr_at_epoch(settings, 6) == pytest.approx(0.05)
    assert lr_at_epoch(settings, 10) == pytest.approx(0.0)


def test_batches_cover_every_example_and_drop_a_lonely_last_one():
    order = batch_order(257, seed=1, epoch=0)
    assert sorted(order.tolist()) == list(range(257))
    chunks = batches(order, 128)
    assert [len(c) for c in chunks] == [128, 128]  # the 1-example batch is dropped
    assert [len(c) for c in batches(batch_order(258, 1, 0), 128)] == [128, 128, 2]
    assert [len(c) for c in batches(torch.arange(1), 128)] == [1]


def test_batch_order_depends_on_seed_and_epoch_only():
    assert torch.equal(batch_order(100, 3, 4), batch_order(100, 3, 4))
    assert not torch.equal(batch_order(100, 3, 4), batch_order(100, 3, 5))
    assert not torch.equal(batch_order(100, 3, 4), batch_order(100, 2, 4))


class Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoints_are_atomic_and_load_weights_only(tmp_path):
    path = tmp_path / "ck.pt"
    save_atomic({"w": torch.ones(3)}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary left behind

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"bad": Unpicklable()}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))  # the old file survived intact
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]

    torch.save({"x": Evil()}, tmp_path / "evil.pt")  # what a tampered checkpoint would hold
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        load_checkpoint(tmp_path / "evil.pt")


class TinyTask:
    """A linear classifier on 4x4 images, enough to exercise the loop."""

    def __init__(self, val: ImageSplit):
        torch.manual_seed(0)
        self.module = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
        self.val = val

    def param_groups(self):
        return self.module.parameters()

    def set_train_mode(self):
        self.module.train()

    def loss(self, images, labels):
        # Random noise makes the RNG state part of the result, so resume must restore it.
        noisy = images.float() / 255 + 0.01 * torch.randn(images.shape)
        return F.cross_entropy(self.module(noisy), labels)

    def after_step(self, progress):
        pass

    def validate(self):
        self.module.eval()
        logits = self.module(self.val.images.float() / 255)
        return {
            "val_loss": F.cross_entropy(logits, self.val.labels).item(),
            "val_acc": (logits.argmax(1) == self.val.labels).float().mean().item(),
        }


def toy_data(n: int = 200, seed: int = 0) -> ImageSplit:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = torch.randint(0, 100, (n, 1, 4, 4), generator=generator, dtype=torch.uint8)
    images[labels == 1, :, :2] += 120
    return ImageSplit(images, labels)


SETTINGS = FinetuneSettings(epochs=4, batch_size=32, lr=0.1, schedule="cosine", min_lr=0.0)


def run_fit(workdir, epochs, task=None, settings=SETTINGS, logged=None, **kwargs):
    """``fit`` of a :class:`TinyTask` (or ``task``) on the toy data; returns the task, the result and the
    epochs reported (into ``logged`` if given, so that a run that raises still shows what it reported)."""
    task = task if task is not None else TinyTask(toy_data(60, seed=1))
    settings = settings.model_copy(update={"epochs": epochs})
    logged = [] if logged is None else logged
    result = fit(
        task,
        toy_data(),
        settings,
        seed=5,
        workdir=workdir,
        precision=Precision(torch.device("cpu")),
        on_epoch_end=lambda epoch, metrics: logged.append(epoch),
        **kwargs,
    )
    return task, result, logged


class Crash(Exception):
    pass


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    straight, straight_result, _ = run_fit(tmp_path / "a", epochs=4, select_by="val_loss")

    def crash_after_epoch_1(epoch, metrics):
        if epoch == 1:
            raise Crash  # the process dies once epoch 1 is checkpointed

    with pytest.raises(Crash):
        fit(
            TinyTask(toy_data(60, seed=1)),
            toy_data(),
            SETTINGS,
            seed=5,
            workdir=tmp_path / "b",
            precision=Precision(torch.device("cpu")),
            select_by="val_loss",
            on_epoch_end=crash_after_epoch_1,
        )
    assert load_checkpoint(tmp_path / "b" / LAST)["epoch"] == 1
    torch.manual_seed(1234)  # a fresh process would not share the crashed one's RNG state
    replayed = []
    resumed_task, resumed, logged = run_fit(
        tmp_path / "b", epochs=4, select_by="val_loss", on_resume=lambda history: replayed.extend(history)
    )
    assert resumed.resumed_after_epoch == 1
    assert [int(e["epoch"]) for e in replayed] == [0, 1]
    assert logged == [2, 3]
    assert [int(e["epoch"]) for e in resumed.history] == [0, 1, 2, 3]
    for name, tensor in straight.module.state_dict().items():
        assert torch.equal(tensor, resumed_task.module.state_dict()[name]), name
    assert resumed.best_epoch == straight_result.best_epoch
    assert [e["train_loss"] for e in resumed.history] == [e["train_loss"] for e in straight_result.history]


def test_best_epoch_state_is_returned(tmp_path):
    task, result, logged = run_fit(tmp_path, epochs=3, select_by="val_acc")
    assert logged == [0, 1, 2]
    best = max(result.history, key=lambda entry: entry["val_acc"])
    assert result.best_epoch == int(best["epoch"])
    assert result.best_state is not None


STALLED = FinetuneSettings(epochs=50, batch_size=32, lr=1e-9, schedule="constant")  # val_acc never improves


def test_early_stopping_on_patience(tmp_path):
    _, result, _ = run_fit(tmp_path, epochs=50, settings=STALLED, select_by="val_acc", patience=2)
    assert result.stopped_early
    assert len(result.history) < 50
    assert int(result.history[-1]["epoch"]) - result.best_epoch == 2


def test_a_finished_run_resumed_trains_nothing(tmp_path):
    _, first, _ = run_fit(tmp_path, epochs=2)
    _, again, logged = run_fit(tmp_path, epochs=2)
    assert logged == [] and again.resumed_after_epoch == 1 and len(again.history) == 2


# --------------------------------------------------------------------------- checkpoints at most once per interval

RARELY = CheckpointPolicy(every_seconds=3600)  # within a test: the final epoch's checkpoint only


def test_a_checkpoint_is_due_after_the_interval_or_at_the_final_epoch():
    assert checkpoint_due(now=100.0, last_written=40.0, every_seconds=60, final_epoch=False)
    assert not checkpoint_due(now=99.0, last_written=40.0, every_seconds=60, final_epoch=False)
    assert checkpoint_due(now=41.0, last_written=40.0, every_seconds=60, final_epoch=True)
    assert checkpoint_due(now=40.0, last_written=40.0, every_seconds=0, final_epoch=False)  # 0: every epoch


class CheckpointWrites:
    """Records the epoch of every ``last.pt`` the loop writes (through the one save function)."""

    def __init__(self, monkeypatch):
        import ssl_hpc.train.loop as loop

        self.epochs: list[int] = []
        original = loop.save_atomic

        def recording(obj, path):
            if path.name == LAST:
                self.epochs.append(obj["epoch"])
            return original(obj, path)

        monkeypatch.setattr(loop, "save_atomic", recording)


def test_a_rare_checkpoint_is_written_after_the_final_epoch_and_reports_every_epoch_then(tmp_path, monkeypatch):
    writes = CheckpointWrites(monkeypatch)
    _, result, logged = run_fit(tmp_path, epochs=4, select_by="val_acc", checkpoints=RARELY)
    assert writes.epochs == [3]
    assert logged == [0, 1, 2, 3]  # reported once the checkpoint held them, in order
    assert load_checkpoint(tmp_path / LAST)["best_epoch"] == result.best_epoch
    assert [p.name for p in tmp_path.glob("best-*.pt")] == [f"best-{result.best_epoch}.pt"]
    assert result.best_state is not None


def test_every_epoch_is_checkpointed_with_no_interval(tmp_path, monkeypatch):
    writes = CheckpointWrites(monkeypatch)
    run_fit(tmp_path, epochs=3, checkpoints=CheckpointPolicy(every_seconds=0))
    assert writes.epochs == [0, 1, 2]


class CrashAtEpoch(TinyTask):
    """Dies in the middle of epoch ``at`` (its validation), like a node that went away."""

    def __init__(self, val, at):
        super().__init__(val)
        self.epochs_validated, self.at = 0, at

    def validate(self):
        if self.epochs_validated == self.at:
            raise Crash
        self.epochs_validated += 1
        return super().validate()


def test_a_run_killed_before_its_first_checkpoint_reported_nothing_and_restarts_from_epoch_0(tmp_path):
    logged = []
    with pytest.raises(Crash):
        run_fit(tmp_path, epochs=4, task=CrashAtEpoch(toy_data(60, seed=1), at=2), logged=logged, checkpoints=RARELY)
    assert logged == [] and not (tmp_path / LAST).exists()  # nothing a resume would train again was reported
    straight, straight_result, _ = run_fit(tmp_path / "straight", epochs=4)
    resumed_task, resumed, logged = run_fit(tmp_path, epochs=4, checkpoints=RARELY)
    assert resumed.resumed_after_epoch is None and logged == [0, 1, 2, 3]  # no gap, no duplicate
    assert [e["train_loss"] for e in resumed.history] == [e["train_loss"] for e in straight_result.history]


def test_early_stopping_checkpoints_the_epoch_it_stops_after(tmp_path, monkeypatch):
    writes = CheckpointWrites(monkeypatch)
    _, result, logged = run_fit(
        tmp_path, epochs=50, settings=STALLED, select_by="val_acc", patience=2, checkpoints=RARELY
    )
    assert result.stopped_early and writes.epochs == [len(result.history) - 1]
    assert logged == list(range(len(result.history)))
    assert result.best_state is not None and (tmp_path / f"best-{result.best_epoch}.pt").is_file()

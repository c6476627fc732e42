"""The rotation-prediction report's protocol: MNIST through torchvision, sweeps/rotation_mnist.yaml.

No test touches the network: MNIST-format files are generated in a temporary data root (the end-to-end
test writes scikit-learn's 8 x 8 digits upsampled to 28 px), and "no network" is simulated by patching
the reachability check or torchvision's download.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from PIL import Image

from ssl_hpc.cli import sweep_main
from ssl_hpc.config import ConfigError, load_sweep, validate_sweep
from ssl_hpc.config.datasets import ImageFolderSpec
from ssl_hpc.data import mnist as mnist_module
from ssl_hpc.data.image_folder import load_image_folder
from ssl_hpc.data.loading import DatasetCache, ensure_dataset
from ssl_hpc.data.medmnist import DatasetMissingError
from ssl_hpc.data.mnist import load_mnist, mnist_raw_files
from ssl_hpc.jobs import expand_jobs

SWEEP = Path(__file__).resolve().parents[1] / "sweeps" / "rotation_mnist.yaml"


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """The IDX files torchvision's MNIST reads (magic 0x0803: uint8, 3 dims; 0x0801: uint8, 1 dim)."""
    folder.mkdir(parents=True, exist_ok=True)
    n, height, width = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 0x0803, n, height, width) + images.astype(np.uint8).tobytes()
    )
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 0x0801, n) + labels.astype(np.uint8).tobytes()
    )


def write_mnist(root: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> Path:
    raw = root / "MNIST" / "raw"
    write_idx(raw, "train", *train)
    write_idx(raw, "t10k", *test)
    return raw


def generated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10


def digits_28px(count: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's real 8 x 8 handwritten digits (0..16), upsampled to 28 px uint8 images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images[offset : offset + count]).float().unsqueeze(1) * (255.0 / 16.0)
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    return images.clamp(0, 255).round().to(torch.uint8).squeeze(1).numpy(), digits.target[offset : offset + count]


# --------------------------------------------------------------------------- the sweep


def test_rotation_protocol_sweep_validates_and_dry_runs(capsys, tmp_path):
    jobs = expand_jobs(load_sweep(SWEEP))
    pretrain = [job for job in jobs if job.stage == "pretrain"]
    finetune = [job for job in jobs if job.stage == "finetune"]
    assert len(pretrain) == 3 and len(finetune) == 6
    assert {(job.config.method, job.config.backbone) for job in pretrain} == {("rotnet", "rotnet_cnn")}
    rotnet = [job for job in finetune if job.config.method == "rotnet"]
    scratch = [job for job in finetune if job.config.method == "supervised"]
    assert {(job.config.backbone, job.config.finetune) for job in rotnet} == {("rotnet_cnn", "frozen")}
    assert {(job.config.backbone, job.config.finetune) for job in scratch} == {("small_cnn", "end_to_end")}
    assert all(job.config.pretrain_key for job in rotnet) and not any(job.depends_on for job in scratch)
    assert {job.config.label_budget for job in finetune} == {"10_per_class"}
    assert {job.config.dataset for job in jobs} == {"mnist"} and {job.config.size for job in jobs} == {28}
    assert {job.config.seed for job in rotnet} == {job.config.seed for job in scratch} == {621, 622, 623}
    assert {job.config.finetune_settings.head for job in finetune} == {"mlp"}
    assert sweep_main([str(SWEEP), "--dry-run"], project_root=tmp_path) == 0
    out = capsys.readouterr().out
    assert "9 jobs: 3 pretrain, 6 finetune" in out and "labels=10_per_class" in out
    assert not (tmp_path / "outputs").exists()


def test_rotation_protocol_mnist_is_28px_only_and_its_name_is_reserved():
    base = {"name": "x", "grid": {"dataset": ["mnist"], "method": ["supervised"]}}
    assert validate_sweep(base).grid.dataset == ["mnist"]
    with pytest.raises(ConfigError, match=r"grid.size.*28 px only"):
        validate_sweep({**base, "grid": {**base["grid"], "size": [64]}})
    with pytest.raises(ConfigError, match=r"datasets.mnist.*own name"):
        validate_sweep({**base, "datasets": {"mnist": {"root": "mnist_png"}}})
    with pytest.raises(ConfigError, match=r"unknown dataset 'mnsit'.*mnist"):
        validate_sweep({**base, "grid": {**base["grid"], "dataset": ["mnsit"]}})


# --------------------------------------------------------------------------- the loader


def test_rotation_protocol_mnist_loader_reads_mnist_format_files(tmp_path):
    train, test = generated(200, 1), generated(30, 2)
    write_mnist(tmp_path, train, test)
    dataset = load_mnist(28, tmp_path, download=False)
    assert dataset.name == "mnist" and dataset.num_classes == 10 and dataset.channels == 1
    assert dataset.image_size == 28 and dataset.class_names == tuple("0123456789")
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (180, 20, 30)
    assert torch.bincount(dataset.val.labels, minlength=10).tolist() == [2] * 10  # stratified: 10 % of each class
    # train and val partition MNIST's train file; test is its test file, untouched and in order
    seen = torch.cat([dataset.train.images, dataset.val.images]).flatten(1)
    original = torch.from_numpy(train[0]).flatten(1)
    assert sorted(map(bytes, seen.numpy())) == sorted(map(bytes, original.numpy()))
    assert torch.equal(dataset.test.images[:, 0], torch.from_numpy(test[0]))
    assert torch.equal(dataset.test.labels, torch.from_numpy(test[1]).long())
    again = DatasetCache(tmp_path).get("mnist", 28, download=False)  # the name resolves to the same loader
    assert again.val.digest() == dataset.val.digest() and again.train.digest() == dataset.train.digest()
    with pytest.raises(ValueError, match="28 px only"):
        load_mnist(64, tmp_path, download=False)


def test_rotation_protocol_missing_mnist_says_what_to_do_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_module, "network_available", lambda *args, **kwargs: False)
    with pytest.raises(DatasetMissingError) as raised:
        ensure_dataset("mnist", 28, tmp_path, download=True)
    message = str(raised.value)
    assert "'mnist'" in message and str(tmp_path / "MNIST" / "raw") in message
    assert "network is not reachable" in message and "MNIST(" in message and "download=True" in message
    assert all(name in message for name in mnist_raw_files()) and "MEDMNIST_ROOT" in message
    with pytest.raises(DatasetMissingError, match=r"data.download: false"):
        load_mnist(28, tmp_path, download=False)


def test_rotation_protocol_failed_download_is_the_same_clear_error(tmp_path, monkeypatch):
    """The real download path runs (torchvision's MNIST(download=True)); its failure is reported, not raised raw."""
    calls = []

    def refuse(self):
        calls.append(self.raw_folder)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://..., got: <urlopen error>")

    monkeypatch.setattr(mnist_module, "network_available", lambda *args, **kwargs: True)
    monkeypatch.setattr(mnist_module.MNIST, "download", refuse)
    with pytest.raises(DatasetMissingError, match=r"could not be downloaded \(the download failed: Error downloading"):
        load_mnist(28, tmp_path, download=True)
    assert calls == [str(tmp_path / "MNIST" / "raw")]


def test_rotation_protocol_sweep_stops_before_anything_when_mnist_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mnist_module, "network_available", lambda *args, **kwargs: False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    code = sweep_main([str(SWEEP), "--quiet", "--set", f"data_root={tmp_path / 'data'}"], project_root=tmp_path)
    assert code == 2
    error = capsys.readouterr().err
    assert "dataset 'mnist'" in error and str(tmp_path / "data" / "MNIST" / "raw") in error
    assert not (tmp_path / "store").exists() and not (tmp_path / "outputs").exists()


def test_rotation_protocol_mnist_as_an_image_folder(tmp_path):
    """MNIST kept as PNGs (mnist_png/{training,testing}/<digit>/*.png) is an image folder like any other."""
    images, labels = digits_28px(120)
    for index, (image, label) in enumerate(zip(images, labels)):
        split = "testing" if index % 4 == 0 else "training"
        folder = tmp_path / "mnist_png" / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index}.png")
    spec = ImageFolderSpec(root="mnist_png", split_folders=("training", "validation", "testing"), val_from_train=0.1)
    dataset = load_image_folder("mnist_png", spec, 28, tmp_path / "cache", data_root=tmp_path)
    assert dataset.class_names == tuple("0123456789") and dataset.channels == 1
    assert (len(dataset.train) + len(dataset.val), len(dataset.test)) == (90, 30) and len(dataset.val) > 0


# --------------------------------------------------------------------------- end to end


def test_rotation_protocol_runs_end_to_end_on_real_digits(tmp_path, monkeypatch):
    """RotNet pretraining, the frozen fine-tune on 10 labels per class and the small CNN from scratch,
    trained for real (tiny epochs) on scikit-learn's handwritten digits written as MNIST files."""
    write_mnist(tmp_path / "data", digits_28px(300), digits_28px(150, offset=300))
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    overrides = {
        "data_root": str(tmp_path / "data"),
        "seeds": "[621]",
        "pretrain.epochs": "1",
        "pretrain.batch_size": "64",
        "finetune.epochs": "2",
        "finetune.head_hidden": "64",
        "cam.methods": "[gradcam]",
        "cam.max_images": "8",
        "cam.images_per_class": "1",
        "runtime.device": "cpu",
    }
    args = [str(SWEEP), "--quiet", "--backend", "local"]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    assert sweep_main(args, project_root=tmp_path) == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("rotation_mnist")
    runs = client.search_runs([experiment.experiment_id], "tags.stage != 'aggregate'")
    by_stage = {(run.data.tags["stage"], run.data.tags["method"]): run for run in runs}
    assert sorted(by_stage) == [("finetune", "rotnet"), ("finetune", "supervised"), ("pretrain", "rotnet")]
    assert all(run.info.status == "FINISHED" for run in runs), {k: r.info.status for k, r in by_stage.items()}
    assert "knn_val_acc" in by_stage["pretrain", "rotnet"].data.metrics
    for method in ("rotnet", "supervised"):
        run = by_stage["finetune", method]
        assert run.data.tags["dataset"] == "mnist" and run.data.tags["label_fraction"] == "10_per_class"
        for metric in ("test_acc", "test_balanced_acc", "test_auc", "test_f1_macro", "test_kappa", "test_acc_class_9"):
            assert metric in run.data.metrics, (method, metric)
        assert 0.0 <= run.data.metrics["test_acc"] <= 1.0
    rotnet = by_stage["finetune", "rotnet"]
    assert rotnet.data.tags["finetune"] == "frozen" and rotnet.data.tags["backbone"] == "rotnet_cnn"
    assert rotnet.data.tags["pretrain_key"] == by_stage["pretrain", "rotnet"].data.tags["key"]
    assert by_stage["finetune", "supervised"].data.tags["backbone"] == "small_cnn"
    # the aggregation step compares the two arms in one table
    assert (tmp_path / "results" / "rotation_mnist" / "table_mnist_10_per_class.csv").is_file()

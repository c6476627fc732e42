"""Leakage guard: planted near-duplicates across splits are counted exactly, distinct images are not."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_hpc.data import duplicates
from ssl_hpc.data.duplicates import (
    DuplicateReport,
    LeakageError,
    check_leakage,
    duplicate_report,
    duplicates_between,
    leakage,
    near_duplicate_pairs,
    perceptual_hash,
)
from ssl_hpc.data.image_folder import ImageFolderSpec, image_folder_files, load_image_folder
from ssl_hpc.data.loading import DatasetCache
from ssl_hpc.data.splits import ImageSplit, LabeledDataset


def picture(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A smooth random gray image (distinct from any other drawn, as X-rays of different patients)."""
    coarse = Image.fromarray((rng.random((5, 5)) * 200 + 20).astype(np.uint8))
    return np.array(coarse.resize((size, size), Image.Resampling.BICUBIC))


def brightened(values: np.ndarray, amount: int = 25) -> np.ndarray:
    return np.clip(values.astype(int) + amount, 0, 255).astype(np.uint8)


def reencoded(values: np.ndarray, quality: int = 80) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, "JPEG", quality=quality)
    return np.array(Image.open(buffer))


def resized(values: np.ndarray, size: int) -> np.ndarray:
    return np.array(Image.fromarray(values).resize((size, size), Image.Resampling.BILINEAR))


def as_split(images: list[np.ndarray], labels: list[int]) -> ImageSplit:
    return ImageSplit(torch.from_numpy(np.stack(images))[:, None].contiguous(), torch.tensor(labels, dtype=torch.int64))


def planted_dataset(seed: int = 0) -> tuple[LabeledDataset, dict[tuple[str, str], int]]:
    """160 / 40 / 40 distinct images, then copies planted across splits; returns the expected counts."""
    rng = np.random.default_rng(seed)
    train = [picture(rng) for _ in range(160)]
    val = [picture(rng) for _ in range(40)]
    test = [picture(rng) for _ in range(40)]
    test[0] = train[0].copy()  # exact
    test[1] = brightened(train[1])  # brightened
    test[2] = reencoded(train[2])  # JPEG re-encoded
    test[3] = resized(resized(train[3], 24), 32)  # downsampled then back
    val[0] = train[4].copy()  # exact
    val[1] = np.ascontiguousarray(train[5][:, ::-1])  # mirrored (an augmented copy)
    test[4] = reencoded(brightened(val[2], 10), 90)  # val -> test
    labels = lambda n: [k % 3 for k in range(n)]  # noqa: E731
    dataset = LabeledDataset(
        "planted", as_split(train, labels(160)), as_split(val, labels(40)), as_split(test, labels(40)), ("a", "b", "c")
    )
    return dataset, {("train", "val"): 2, ("train", "test"): 4, ("val", "test"): 1}


def test_planted_duplicates_are_counted_exactly_per_split_pair():
    dataset, expected = planted_dataset()
    report = duplicate_report(dataset)
    assert {pair: count.pairs for pair, count in report.counts.items()} == expected
    assert {(p.first, p.first_index, p.second, p.second_index) for p in report.pairs} == {
        ("train", 0, "test", 0),
        ("train", 1, "test", 1),
        ("train", 2, "test", 2),
        ("train", 3, "test", 3),
        ("train", 4, "val", 0),
        ("train", 5, "val", 1),
        ("val", 2, "test", 4),
    }
    # Labels of planted pairs differ where k % 3 differs: train 4 (b) vs val 0 (a), etc.
    assert report.counts[("train", "val")].label_conflicts == 2
    metrics = report.as_metrics()
    assert metrics["duplicates_train_test"] == 4 and metrics["duplicates_train_val"] == 2
    assert metrics["duplicates_val_test"] == 1 and metrics["duplicates_total"] == 7
    assert metrics["duplicates_train_test_images"] == 4
    table = report.as_table()
    assert table["splits"].tolist() == ["train-val", "train-test", "val-test"] and table["pairs"].tolist() == [2, 4, 1]


def test_no_false_positives_among_distinct_images():
    rng = np.random.default_rng(1)
    images = [picture(rng) for _ in range(300)]
    dataset = LabeledDataset(
        "distinct",
        as_split(images[:200], [0] * 200),
        as_split(images[200:250], [0] * 50),
        as_split(images[250:], [0] * 50),
        ("a",),
    )
    report = duplicate_report(dataset)
    assert report.clean and report.total == 0 and report.pairs == ()


def test_copies_survive_the_perceptual_hash():
    rng = np.random.default_rng(2)
    original = picture(rng, 64)
    copies = [original, brightened(original, 30), reencoded(original, 60), resized(resized(original, 40), 64)]
    hashes = perceptual_hash(torch.from_numpy(np.stack(copies))[:, None])
    distances = np.bitwise_count(hashes ^ hashes[0])
    assert distances.max() <= duplicates.DEFAULT_THRESHOLD
    other = perceptual_hash(torch.from_numpy(picture(rng, 64))[None, None])
    assert int(np.bitwise_count(other ^ hashes[0])[0]) > duplicates.DEFAULT_THRESHOLD


def test_error_mode_raises_naming_the_counts_and_off_computes_nothing(monkeypatch):
    dataset, _ = planted_dataset()
    counts = r"train-val: 2 pairs.*train-test: 4 pairs .4 test images.*val-test: 1"
    with pytest.raises(LeakageError, match=counts) as error:
        check_leakage(dataset, mode="error")
    assert error.value.report.total == 7
    assert isinstance(check_leakage(dataset, mode="report"), DuplicateReport)
    monkeypatch.setattr(leakage, "fingerprints", lambda *a, **k: pytest.fail("off mode must not hash"))
    assert check_leakage(dataset, mode="off") is None


def test_error_mode_passes_a_clean_dataset():
    rng = np.random.default_rng(3)
    images = [picture(rng) for _ in range(60)]
    dataset = LabeledDataset(
        "clean",
        as_split(images[:40], [0] * 40),
        as_split(images[40:50], [0] * 10),
        as_split(images[50:], [0] * 10),
        ("a",),
    )
    assert check_leakage(dataset, mode="error").clean


@pytest.mark.parametrize("threshold", [0, 2, 4, 8, 12])
def test_index_search_matches_brute_force(threshold: int):
    rng = np.random.default_rng(threshold)
    a = rng.integers(0, 2**63, 3000, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 3000, dtype=np.uint64)
    b = rng.integers(0, 2**63, 500, dtype=np.uint64)
    for k in range(40):  # neighbours at every distance 0..13 around the threshold
        bits = rng.choice(64, size=k % 14, replace=False)
        b[k] = a[k * 7] ^ np.uint64(sum(1 << int(bit) for bit in bits))
    b[40:60] = a[0]  # many copies of one hash
    brute = near_duplicate_pairs(a, b, threshold, method="brute")
    index = near_duplicate_pairs(a, b, threshold, method="index")
    auto = near_duplicate_pairs(a, b, threshold)
    for got in (index, auto):
        assert all(np.array_equal(x, y) for x, y in zip(brute, got))
    assert brute[2].max(initial=0) <= threshold
    expected = sum(1 for k in range(40) if k % 14 <= threshold) + 20
    assert len(brute[0]) >= expected


def test_clustered_hashes_fall_back_to_brute_force():
    a = np.full(400, 12345, dtype=np.uint64)
    b = np.full(30, 12345, dtype=np.uint64)
    i, j, distance = near_duplicate_pairs(a, b, 4)
    assert len(i) == 400 * 30 and not distance.any()


def write(path: Path, values: np.ndarray, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values).save(path, **options)


def test_planted_duplicates_in_an_image_folder(tmp_path: Path):
    """Files copied, brightened, re-encoded and resized across the train/val/test folders."""
    rng = np.random.default_rng(4)
    root = tmp_path / "chest_xray"
    for split, count in (("train", 30), ("val", 8), ("test", 12)):
        for name in ("NORMAL", "PNEUMONIA"):
            for i in range(count):
                write(root / split / name / f"{split}-{name}-{i}.png", picture(rng, 48))
    train = root / "train" / "NORMAL"
    shutil.copy(train / "train-NORMAL-0.png", root / "test" / "PNEUMONIA" / "copy.png")  # exact, another label
    source = np.array(Image.open(train / "train-NORMAL-1.png"))
    write(root / "test" / "NORMAL" / "bright.png", brightened(source, 20))
    source = np.array(Image.open(train / "train-NORMAL-2.png"))
    write(root / "val" / "NORMAL" / "reencoded.jpeg", source, quality=75)
    source = np.array(Image.open(root / "val" / "PNEUMONIA" / "val-PNEUMONIA-3.png"))
    write(root / "test" / "PNEUMONIA" / "bigger.png", resized(source, 96))  # a resized copy, 2x the size
    spec = ImageFolderSpec(root=str(root))
    dataset = load_image_folder("cxr", spec, 28, cache_dir=tmp_path / "cache")
    report = check_leakage(dataset, mode="report")
    assert {pair: count.pairs for pair, count in report.counts.items()} == {
        ("train", "val"): 1,
        ("train", "test"): 2,
        ("val", "test"): 1,
    }
    assert report.counts[("train", "test")].label_conflicts == 1
    files = image_folder_files(spec)
    named = report.pairs_table(files)
    assert set(zip(named["first_file"], named["second_file"])) == {
        ("train/NORMAL/train-NORMAL-2.png", "val/NORMAL/reencoded.jpeg"),
        ("train/NORMAL/train-NORMAL-0.png", "test/PNEUMONIA/copy.png"),
        ("train/NORMAL/train-NORMAL-1.png", "test/NORMAL/bright.png"),
        ("val/PNEUMONIA/val-PNEUMONIA-3.png", "test/PNEUMONIA/bigger.png"),
    }
    # Through the dataset cache, as a run uses it: error mode stops before anything else happens.
    cache = DatasetCache(tmp_path, {"cxr": spec}, cache_dir=tmp_path / "cache")
    with pytest.raises(LeakageError, match="train-test: 2 pairs"):
        cache.leakage("cxr", 28, mode="error")
    assert cache.leakage("cxr", 28, mode="report").total == 4
    assert cache.leakage("cxr", 28, mode="off") is None


def test_real_pneumoniamnist_has_identical_images_across_train_and_val(data_root: Path):
    from ssl_hpc.data.medmnist import load_medmnist

    report = duplicate_report(load_medmnist("pneumoniamnist", 28, data_root, download=False))
    # 10 train images are pixel-identical to 8 val images; none of the test images has a twin.
    assert {pair: count.pairs for pair, count in report.counts.items()} == {
        ("train", "val"): 10,
        ("train", "test"): 0,
        ("val", "test"): 0,
    }
    assert all(pair.correlation == 1.0 and pair.distance == 0 for pair in report.pairs)


def test_duplicates_between_an_extra_source_and_a_split():
    dataset, _ = planted_dataset()
    extra = torch.cat([dataset.test.images[:3], dataset.val.images[5:6].flip(-1), dataset.train.images[100:110]])
    i, j, distance, corr = duplicates_between(extra, dataset.test.images)
    # extra 0-2 are test 0-2; the train images planted in test 0-3 are train 0-3, not 100-109.
    assert list(zip(i.tolist(), j.tolist())) == [(0, 0), (1, 1), (2, 2)]
    i, _, _, _ = duplicates_between(extra, dataset.val.images)
    assert i.tolist() == [3]  # the mirrored val image

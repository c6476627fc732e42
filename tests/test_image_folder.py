"""Image-folder datasets on folders generated here: layouts, masks, the saved split, the cache, errors, config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_hpc.config import ConfigError, validate_sweep
from ssl_hpc.data.image_folder import (
    DatasetFolderError,
    ImageFolderSpec,
    image_folder_files,
    index_image_folder,
    load_image_folder,
)
from ssl_hpc.data.image_folder import decode as decode_module
from ssl_hpc.data.image_folder import split as split_module
from ssl_hpc.data.loading import DatasetCache, ensure_dataset

COVID_CLASSES = {"COVID": 20, "Lung_Opacity": 31, "Normal": 43, "Viral Pneumonia": 12}


def picture(rng: np.random.Generator, size: int = 36, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A smooth random gray image; ``box`` (x0, y0, x1, y1) is painted white (where its mask is)."""
    coarse = Image.fromarray((rng.random((5, 5)) * 160).astype(np.uint8))
    values = np.array(coarse.resize((size, size), Image.Resampling.BICUBIC))
    if box is not None:
        x0, y0, x1, y1 = box
        values[y0:y1, x0:x1] = 255
    return values


def make_class_folders(root: Path, counts=COVID_CLASSES, masks: bool = True, seed: int = 0) -> Path:
    """The COVID-19 Radiography layout: root/<class>/images/<class>-<i>.png and .../masks/<class>-<i>.png."""
    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        (root / name / "images").mkdir(parents=True, exist_ok=True)
        if masks:
            (root / name / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            x0, y0 = rng.integers(2, 18, size=2)
            box = (int(x0), int(y0), int(x0) + 14, int(y0) + 14)
            Image.fromarray(picture(rng, box=box)).save(root / name / "images" / f"{name}-{i}.png")
            if masks:  # the mask is 32 px, the image 36 px, as the real masks are 256 px for 299 px images
                mask = np.zeros((32, 32), dtype=np.uint8)
                scale = 32 / 36
                mask[round(box[1] * scale) : round(box[3] * scale), round(box[0] * scale) : round(box[2] * scale)] = 255
                Image.fromarray(mask).save(root / name / "masks" / f"{name}-{i}.png")
    (root / "README.md.txt").write_text("not an image")
    return root


def make_split_folders(root: Path, counts: dict[str, dict[str, int]], seed: int = 0) -> Path:
    """The Kaggle pneumonia layout: root/{train,val,test}/<class>/*.jpeg."""
    rng = np.random.default_rng(seed)
    for split, classes in counts.items():
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(picture(rng)).save(root / split / name / f"{name}-{split}-{i}.jpeg", quality=95)
    return root


PNEUMONIA = {
    "train": {"NORMAL": 30, "PNEUMONIA": 50},
    "val": {"NORMAL": 2, "PNEUMONIA": 2},
    "test": {"NORMAL": 10, "PNEUMONIA": 14},
}
COVID_SPEC = {"images_subdir": "images", "masks_subdir": "masks"}


@pytest.fixture
def covid(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "COVID-19_Radiography_Dataset")


@pytest.fixture
def decodes(monkeypatch) -> list[Path]:
    """Every file the loader decodes."""
    seen: list[Path] = []
    original = decode_module._decode

    def counting(path, *args, **kwargs):
        seen.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(decode_module, "_decode", counting)
    return seen


def load(root: Path, tmp_path: Path, size: int = 28, name: str = "cxr", **spec) -> object:
    return load_image_folder(name, ImageFolderSpec(root=str(root), **spec), size, cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------- layouts


def test_class_folders_with_masks(covid: Path, tmp_path: Path):
    dataset = load(covid, tmp_path, **COVID_SPEC)
    assert dataset.class_names == ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
    assert sum(len(getattr(dataset, s)) for s in ("train", "val", "test")) == sum(COVID_CLASSES.values())
    for split in ("train", "val", "test"):
        images, masks = getattr(dataset, split).images, dataset.masks[split]
        assert images.dtype == torch.uint8 and images.shape[1:] == (1, 28, 28)
        assert masks.dtype == torch.uint8 and masks.shape == (len(images), 1, 28, 28)
        assert set(masks.unique().tolist()) == {0, 1}
        # Each mask covers its own image's white box (pairing by file name, resizing on the same geometry).
        inside = (images.float() * masks).sum((1, 2, 3)) / masks.sum((1, 2, 3))
        outside = (images.float() * (1 - masks)).sum((1, 2, 3)) / (1 - masks).sum((1, 2, 3))
        assert bool((inside > 200).all()) and bool((outside < 130).all())


def test_split_folders_layout_keeps_the_given_split(tmp_path: Path):
    root = make_split_folders(tmp_path / "chest_xray", PNEUMONIA)
    dataset = load(root, tmp_path, size=32, channels=3)
    assert dataset.class_names == ("NORMAL", "PNEUMONIA")
    assert dataset.masks is None
    assert dataset.train.images.shape[1:] == (3, 32, 32)
    for split, classes in PNEUMONIA.items():
        assert np.bincount(getattr(dataset, split).labels.numpy()).tolist() == list(classes.values())
    files = image_folder_files(ImageFolderSpec(root=str(root)))
    assert all(f.startswith("test/") for f in files["test"]) and len(files["val"]) == 4
    assert not list(root.glob(".ssl_hpc_split_*"))  # the folders are the split: nothing saved


def test_val_from_train_carves_a_stratified_val_split(tmp_path: Path):
    root = make_split_folders(tmp_path / "chest_xray", PNEUMONIA)
    dataset = load(root, tmp_path, val_from_train=0.2, split_seed=3)
    # The val folder's 2 + 2 images join the train pool (32 + 52), 20 % of each class becomes val.
    assert np.bincount(dataset.val.labels.numpy()).tolist() == [round(0.2 * 32), round(0.2 * 52)]
    assert np.bincount(dataset.train.labels.numpy()).tolist() == [32 - 6, 52 - 10]
    assert np.bincount(dataset.test.labels.numpy()).tolist() == [10, 14]  # the test folder is untouched
    assert len(list(root.glob(".ssl_hpc_split_seed3_*.json"))) == 1


def test_rgb_grayscale_sixteen_bit_and_center_crop(tmp_path: Path):
    root = tmp_path / "mixed"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
    Image.fromarray(np.full((20, 60, 3), (200, 10, 10), dtype=np.uint8)).save(root / "a" / "wide_rgb.png")
    gradient = (np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 40).astype(np.uint16)  # 16-bit, up to 47960
    Image.fromarray(gradient).save(root / "a" / "deep.png")
    Image.fromarray(np.full((30, 30), 7, dtype=np.uint8)).save(root / "a" / "plain.tif")
    for i in range(3):
        Image.fromarray(np.full((30, 30), 50 * i, dtype=np.uint8)).save(root / "b" / f"{i}.bmp")
    rgb = load(root, tmp_path, size=16, channels=3, split_fractions=(0.34, 0.33, 0.33), layout="class_folders")
    assert rgb.train.images.shape[1] == 3
    gray = load(root, tmp_path, size=16, name="g", resize="center_crop", split_fractions=(0.34, 0.33, 0.33))
    everything = torch.cat([gray.train.images, gray.val.images, gray.test.images])
    assert everything.shape[1:] == (1, 16, 16)
    deep = everything[everything.float().flatten(1).std(1).argmax()]  # the 16-bit gradient
    assert int(deep.max()) > 200 and float((deep == 255).float().mean()) < 0.1  # scaled to 8 bits, not clipped
    assert len(deep.unique()) > 100


# --------------------------------------------------------------------------- the saved split


def test_split_is_stratified_seeded_and_stable(covid: Path, tmp_path: Path):
    spec = ImageFolderSpec(root=str(covid), split_seed=7, **COVID_SPEC)
    first = index_image_folder(spec, cache_dir=tmp_path / "cache")
    saved = list(covid.glob(".ssl_hpc_split_seed7_*.json"))
    assert [first.split_file] == saved
    written = saved[0].read_bytes()
    mtime = saved[0].stat().st_mtime_ns
    # Stratified: every class within one example of its target share in every split.
    for split, share in zip(("train", "val", "test"), spec.split_fractions):
        counts = np.bincount(first.labels[split], minlength=4)
        for count, total in zip(counts, COVID_CLASSES.values()):
            assert abs(count - share * total) <= 1
    # Same parameters: the same file, read back unchanged, and the same split.
    again = index_image_folder(spec, cache_dir=tmp_path / "other-cache")
    assert again.split_file == first.split_file and again.files == first.files
    assert saved[0].read_bytes() == written and saved[0].stat().st_mtime_ns == mtime
    # ... even with the file gone: the split is a pure function of the files and the parameters.
    saved[0].unlink()
    assert index_image_folder(spec, cache_dir=tmp_path / "cache").files == first.files
    # A different seed: another file and another split; different fractions: another file.
    other = index_image_folder(spec.model_copy(update={"split_seed": 8}), cache_dir=tmp_path / "cache")
    assert other.split_file != first.split_file and other.files["test"] != first.files["test"]
    fractions = index_image_folder(
        spec.model_copy(update={"split_fractions": (0.6, 0.2, 0.2)}), cache_dir=tmp_path / "cache"
    )
    assert fractions.split_file not in (first.split_file, other.split_file)
    assert len(list(covid.glob(".ssl_hpc_split_*.json"))) == 3


def test_saved_split_is_never_silently_changed(covid: Path, tmp_path: Path):
    spec = ImageFolderSpec(root=str(covid), **COVID_SPEC)
    split_file = index_image_folder(spec, cache_dir=tmp_path / "cache").split_file
    image = np.zeros((36, 36), dtype=np.uint8)
    Image.fromarray(image).save(covid / "COVID" / "images" / "COVID-new.png")
    Image.fromarray(image).save(covid / "COVID" / "masks" / "COVID-new.png")
    with pytest.raises(DatasetFolderError, match="added since") as error:
        index_image_folder(spec, cache_dir=tmp_path / "cache")
    assert str(split_file) in str(error.value) and "COVID/images/COVID-new.png" in str(error.value)
    for folder in ("images", "masks"):
        (covid / "COVID" / folder / "COVID-new.png").unlink()
        (covid / "COVID" / folder / "COVID-3.png").unlink()
    with pytest.raises(DatasetFolderError, match="are gone.*COVID/images/COVID-3.png"):
        index_image_folder(spec, cache_dir=tmp_path / "cache")


def test_read_only_data_folder_saves_the_split_in_the_cache(covid: Path, tmp_path: Path, monkeypatch, caplog):
    writable = split_module._writable
    monkeypatch.setattr(split_module, "_writable", lambda folder: folder != covid and writable(folder))
    index = index_image_folder(ImageFolderSpec(root=str(covid), **COVID_SPEC), cache_dir=tmp_path / "cache")
    assert index.split_file.is_relative_to(tmp_path / "cache" / "splits")
    assert not list(covid.glob(".ssl_hpc_split_*")) and "read-only" in caplog.text
    again = index_image_folder(ImageFolderSpec(root=str(covid), **COVID_SPEC), cache_dir=tmp_path / "cache")
    assert again.split_file == index.split_file and again.files == index.files


# --------------------------------------------------------------------------- the cache


def test_second_load_comes_from_the_cache_without_decoding(covid: Path, tmp_path: Path, decodes: list[Path]):
    first = load(covid, tmp_path, **COVID_SPEC)
    total = sum(COVID_CLASSES.values())
    assert len(decodes) == 2 * total  # every image and every mask
    assert len(list((tmp_path / "cache").glob("cxr-28px-*.pt"))) == 1
    decodes.clear()
    second = load(covid, tmp_path, **COVID_SPEC)
    assert decodes == []
    assert second.class_names == first.class_names
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(second, split).images, getattr(first, split).images)
        assert torch.equal(getattr(second, split).labels, getattr(first, split).labels)
        assert torch.equal(second.masks[split], first.masks[split])
    # Another size, or a changed file, is decoded anew.
    load(covid, tmp_path, size=32, **COVID_SPEC)
    assert len(decodes) == 2 * total
    decodes.clear()
    path = covid / "Normal" / "images" / "Normal-0.png"
    Image.fromarray(np.zeros((36, 36), dtype=np.uint8)).save(path)
    os.utime(path, ns=(1, 1))
    changed = load(covid, tmp_path, **COVID_SPEC)
    assert len(decodes) == 2 * total
    assert not all(torch.equal(getattr(changed, s).images, getattr(first, s).images) for s in ("train", "val", "test"))


def test_damaged_cache_is_rebuilt(covid: Path, tmp_path: Path, decodes: list[Path]):
    load(covid, tmp_path, **COVID_SPEC)
    (cached,) = (tmp_path / "cache").glob("cxr-28px-*.pt")
    cached.write_bytes(b"not a torch file")
    decodes.clear()
    load(covid, tmp_path, **COVID_SPEC)
    assert len(decodes) == 2 * sum(COVID_CLASSES.values())


# --------------------------------------------------------------------------- errors


def test_empty_class_folder_is_named(covid: Path, tmp_path: Path):
    for path in (covid / "COVID" / "images").iterdir():
        path.unlink()
    with pytest.raises(DatasetFolderError, match=r"empty class folder .*COVID/images"):
        load(covid, tmp_path, **COVID_SPEC)


def test_missing_images_subdir_is_suggested(covid: Path, tmp_path: Path):
    with pytest.raises(DatasetFolderError, match=r"empty class folder .*COVID.*set images_subdir"):
        load(covid, tmp_path)


def test_unreadable_image_is_named(covid: Path, tmp_path: Path):
    (covid / "Normal" / "images" / "Normal-5.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetFolderError, match=r"unreadable image .*Normal/images/Normal-5.png"):
        load(covid, tmp_path, **COVID_SPEC)


def test_mask_without_its_image_is_named(covid: Path, tmp_path: Path):
    (covid / "COVID" / "images" / "COVID-4.png").unlink()
    with pytest.raises(DatasetFolderError, match=r"mask .*COVID/masks/COVID-4.png has no image"):
        load(covid, tmp_path, **COVID_SPEC)


def test_image_without_its_mask_is_named(covid: Path, tmp_path: Path):
    (covid / "Normal" / "masks" / "Normal-9.png").unlink()
    with pytest.raises(DatasetFolderError, match=r"image .*Normal/images/Normal-9.png has no mask"):
        load(covid, tmp_path, **COVID_SPEC)


def test_separate_mask_tree_with_suffix(tmp_path: Path):
    root = make_class_folders(tmp_path / "data", {"a": 6, "b": 6}, masks=False)
    for name in ("a", "b"):
        (tmp_path / "lungs" / name).mkdir(parents=True)
        for i in range(6):
            mask = Image.fromarray(np.full((8, 8), 255, dtype=np.uint8))
            mask.save(tmp_path / "lungs" / name / f"{name}-{i}_mask.png")
    spec = dict(
        images_subdir="images",
        mask_root=str(tmp_path / "lungs"),
        mask_suffix="_mask",
        split_fractions=(0.5, 0.25, 0.25),
    )
    dataset = load(root, tmp_path, **spec)
    assert bool((dataset.masks["train"] == 1).all())
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "lungs" / "b" / "b-99_mask.png")
    with pytest.raises(DatasetFolderError, match=r"mask .*lungs/b/b-99_mask.png has no image"):
        load(root, tmp_path, **spec)


def test_no_class_folders_and_missing_root(tmp_path: Path):
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(DatasetFolderError, match=r"no class folders in .*flat"):
        load(tmp_path / "flat", tmp_path)
    with pytest.raises(DatasetFolderError, match=r"dataset folder .*nowhere does not exist"):
        load(tmp_path / "nowhere", tmp_path)


def test_class_missing_from_a_split_folder_is_named(tmp_path: Path):
    counts = {**PNEUMONIA, "test": {"NORMAL": 3}}
    root = make_split_folders(tmp_path / "chest_xray", counts)
    with pytest.raises(
        DatasetFolderError,
        match=r"split folder .*chest_xray/test has no folder for class\(es\) "
        r"\['PNEUMONIA'\]",
    ):
        load(root, tmp_path)


def test_missing_val_folder_asks_for_val_from_train(tmp_path: Path):
    root = make_split_folders(tmp_path / "chest_xray", {"train": PNEUMONIA["train"], "test": PNEUMONIA["test"]})
    with pytest.raises(DatasetFolderError, match="val_from_train"):
        load(root, tmp_path)
    assert len(load(root, tmp_path, val_from_train=0.1).val) == 8


# --------------------------------------------------------------------------- dispatch and config


def test_dataset_cache_dispatches_declared_names(covid: Path, tmp_path: Path):
    spec = ImageFolderSpec(root=covid.name, **COVID_SPEC)  # relative: resolved against the data root
    cache = DatasetCache(tmp_path, datasets={"mycxr": spec})
    dataset = cache.get("mycxr", 28)
    assert dataset.name == "mycxr" and dataset.class_names[0] == "COVID"
    assert cache.get("mycxr", 28) is dataset
    assert (tmp_path / ".ssl_hpc_cache").is_dir()  # default cache: under the data root
    assert cache.files("mycxr")["train"][0].startswith(("COVID/", "Lung_Opacity/", "Normal/", "Viral Pneumonia/"))
    ensure_dataset("mycxr", 28, tmp_path, {"mycxr": spec}, download=False)
    with pytest.raises(DatasetFolderError, match="does not exist"):
        ensure_dataset("other", 28, tmp_path, {"other": ImageFolderSpec(root="missing")}, download=False)


def sweep(**extra) -> dict:
    return {"name": "cxr", "grid": {"dataset": ["mycxr"], "method": ["supervised"]}, **extra}


def test_sweep_with_a_declared_image_folder_validates():
    config = validate_sweep(
        sweep(
            datasets={
                "mycxr": {
                    "kind": "image_folder",
                    "root": "covid",
                    "channels": 1,
                    "images_subdir": "images",
                    "masks_subdir": "masks",
                }
            }
        )
    )
    assert config.datasets["mycxr"].root == "covid"
    assert config.data.duplicates == "report"


def test_undeclared_dataset_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"grid\.dataset\[0\]: unknown dataset 'mycxr'; accepted: .*pneumoniamnist"):
        validate_sweep(sweep())
    raw = sweep(datasets={"other": {"root": "x"}})
    with pytest.raises(ConfigError, match=r"grid\.dataset\[0\].*accepted: .*declared under datasets: other"):
        validate_sweep(raw)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"root": "x", "colour": 3}, r"datasets\.mycxr\.colour: unknown field; accepted: kind, root"),
        ({"root": "x", "channels": 2}, r"datasets\.mycxr\.channels"),
        ({"root": "x", "split_fractions": [0.5, 0.5, 0.5]}, r"datasets\.mycxr\.split_fractions: .*sum to 1"),
        ({"root": "x", "masks_subdir": "m", "mask_root": "y"}, r"datasets\.mycxr: .*not both"),
        ({"kind": "lmdb", "root": "x"}, r"datasets\.mycxr\.kind"),
    ],
)
def test_bad_image_folder_specs_name_the_field(spec, field):
    with pytest.raises(ConfigError, match=field):
        validate_sweep(sweep(datasets={"mycxr": spec}))


def test_declared_name_cannot_shadow_medmnist():
    raw = {
        "name": "cxr",
        "grid": {"dataset": ["pneumoniamnist"], "method": ["supervised"]},
        "datasets": {"pneumoniamnist": {"root": "x"}},
    }
    with pytest.raises(ConfigError, match=r"datasets\.pneumoniamnist: .*MedMNIST"):
        validate_sweep(raw)


def test_leakage_settings_are_validated():
    assert (
        validate_sweep(sweep(datasets={"mycxr": {"root": "x"}}, data={"duplicates": "error"})).data.duplicates
        == "error"
    )
    with pytest.raises(ConfigError, match=r"data\.duplicates"):
        validate_sweep(sweep(datasets={"mycxr": {"root": "x"}}, data={"duplicates": "maybe"}))


def test_split_file_is_plain_json_listing_relative_paths(covid: Path, tmp_path: Path):
    index = index_image_folder(ImageFolderSpec(root=str(covid), **COVID_SPEC), cache_dir=tmp_path / "cache")
    payload = json.loads(index.split_file.read_text())
    assert set(payload["splits"]) == {"train", "val", "test"}
    assert payload["splits"]["test"] == index.files["test"]
    assert all(not Path(f).is_absolute() for files in payload["splits"].values() for f in files)

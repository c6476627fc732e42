"""First (decoding) vs second (cached) load of a generated image-folder dataset.

Generates, in a temporary folder, a pneumonia-like set (``{train,val,test}/<class>/*.jpeg``,
1024 x 1024 JPEGs) and a COVID-radiography-like set (``<class>/images|masks/*.png``, 299 px images
with 256 px masks), loads each twice at 224 px and prints the times; the last line is JSON.

    python bench/image_folder_cache.py [--images 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_hpc.data.image_folder import ImageFolderSpec, load_image_folder  # noqa: E402


def xray(rng: np.random.Generator, size: int) -> Image.Image:
    coarse = Image.fromarray((rng.random((12, 12)) * 200 + 20).astype(np.uint8))
    values = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    values = np.clip(values + rng.normal(0, 8, values.shape), 0, 255).astype(np.uint8)  # film grain
    return Image.fromarray(values)


def make_pneumonia(root: Path, count: int, rng: np.random.Generator) -> None:
    shares = {"train": 0.8, "val": 0.05, "test": 0.15}
    for split, share in shares.items():
        for name in ("NORMAL", "PNEUMONIA"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(max(2, round(count * share / 2))):
                xray(rng, 1024).save(folder / f"{name}-{i}.jpeg", quality=90)


def make_covid(root: Path, count: int, rng: np.random.Generator) -> None:
    for name in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"):
        (root / name / "images").mkdir(parents=True)
        (root / name / "masks").mkdir(parents=True)
        for i in range(count // 4):
            xray(rng, 299).save(root / name / "images" / f"{name}-{i}.png")
            mask = np.zeros((256, 256), dtype=np.uint8)
            mask[40:220, 30:120] = mask[40:220, 136:226] = 255
            Image.fromarray(mask).save(root / name / "masks" / f"{name}-{i}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        make_pneumonia(base / "chest_xray", args.images, rng)
        make_covid(base / "COVID-19_Radiography_Dataset", args.images, rng)
        specs = {
            "pneumonia": ImageFolderSpec(root=str(base / "chest_xray"), val_from_train=0.1),
            "covid": ImageFolderSpec(
                root=str(base / "COVID-19_Radiography_Dataset"), images_subdir="images", masks_subdir="masks"
            ),
        }
        for name, spec in specs.items():
            times = []
            for _ in range(2):
                started = time.perf_counter()
                dataset = load_image_folder(name, spec, args.size, cache_dir=base / "cache")
                times.append(time.perf_counter() - started)
            count = sum(len(getattr(dataset, s)) for s in ("train", "val", "test"))
            masks = " + masks" if dataset.masks else ""
            print(
                f"{name:10} {count} images{masks} at {args.size} px: first load {times[0]:.2f} s, "
                f"second (cached) {times[1]:.3f} s, x{times[0] / times[1]:.0f}"
            )
            results[f"{name}_first_s"], results[f"{name}_second_s"] = round(times[0], 3), round(times[1], 4)
    print(json.dumps(results))


if __name__ == "__main__":
    main()

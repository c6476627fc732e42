"""Decoding: an image (or mask) file to a uint8 array of the requested size.

PIL, ``channels: 1`` (gray, "L") or ``3`` (RGB); 16-bit and float images are min-max scaled to 8
bits per image. Resizing to ``size x size`` happens at load time:
``resize: stretch`` (the default) resizes the whole image, changing the aspect ratio if needed --
what Keras' ``flow_from_directory`` and ``torchvision.transforms.Resize((s, s))`` do, which the
reproduced reports used, and chest X-rays are near-square so nothing of the lung field is lost;
``resize: center_crop`` resizes the shorter side then crops the centre. Images use antialiased
bilinear resampling (large JPEGs are first decoded at a reduced scale, at least twice the target
size); masks use nearest-neighbour on the same geometry, and a mask pixel is in the mask when above
half the mask's maximum, so 0/1, 0/255 and JPEG-noisy masks all work.

A change to what decoding produces must bump :data:`ssl_hpc.data.image_folder.cache.FORMAT`, so
that old caches are not reused.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ssl_hpc.data.image_folder.scan import DatasetFolderError


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        image = Image.fromarray(np.round(scaled).astype(np.uint8), "L")
    return image if image.mode == mode else image.convert(mode)


def _fit(image: Image.Image, size: int, resize: str, resample: Image.Resampling) -> Image.Image:
    if resize == "center_crop":
        return ImageOps.fit(image, (size, size), method=resample, centering=(0.5, 0.5))
    return image.resize((size, size), resample)


def _decode(path: Path, size: int, channels: int, resize: str, mask: bool = False) -> np.ndarray:
    """One file as uint8 ``[C, size, size]`` (a mask: ``[1, size, size]`` in {0, 1})."""
    mode = "L" if mask or channels == 1 else "RGB"
    try:
        with Image.open(path) as opened:
            if not mask and opened.format == "JPEG":
                opened.draft(mode, (2 * size, 2 * size))  # decode big JPEGs at a reduced scale
            image = ImageOps.exif_transpose(opened)
            image = _to_mode(image, mode)
            if mask:
                high = image.getextrema()[1]
                image = _fit(image, size, resize, Image.Resampling.NEAREST)
                values = np.asarray(image) > high / 2 if high > 0 else np.zeros((size, size), dtype=bool)
                return values.astype(np.uint8)[None]
            values = np.asarray(_fit(image, size, resize, Image.Resampling.BILINEAR), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        what = "mask" if mask else "image"
        raise DatasetFolderError(f"unreadable {what} {path}: {error}") from None
    return values[None] if values.ndim == 2 else values.transpose(2, 0, 1)


def _decode_all(paths: list[Path], size: int, channels: int, resize: str, mask: bool, workers: int) -> torch.Tensor:
    out_channels = 1 if mask else channels
    out = np.empty((len(paths), out_channels, size, size), dtype=np.uint8)

    def work(index: int) -> None:
        out[index] = _decode(paths[index], size, channels, resize, mask)

    if workers > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(work, range(len(paths))))  # PIL releases the GIL while decoding and resizing
    else:
        for index in range(len(paths)):
            work(index)
    return torch.from_numpy(out)

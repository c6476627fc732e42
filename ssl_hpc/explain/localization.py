"""Does the map fall on the region that matters? Scores of a CAM against a ground-truth region.

Pure functions on numpy arrays: ``maps`` ``[N, H, W]`` (or one ``[H, W]`` map) of non-negative
activations, ``masks`` of the same shape (bool, or anything where non-zero means inside).

- ``energy_inside``: the share of the map's total activation that lies inside the region
  (1 = all of it; a uniform map scores the region's area share).
- ``magtr``: mean activation inside the ground-truth region (the saliency report's MAGTR).
- ``mangtr``: mean activation outside it (MANGTR). A good map has MAGTR well above MANGTR.

Images whose region is empty (or fills the whole image, for MANGTR) or whose map is all zero
(for the energy share) have no defined score; they are NaN per image and left out of the means.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_batch(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks) != 0
    if maps.ndim == 2:
        maps = maps[None]
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} must have the same shape [N, H, W]")
    if (maps < 0).any():
        raise ValueError("CAM maps must be non-negative")
    return maps, masks


def energy_inside(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image: sum of the map inside the region / sum of the map (NaN for an all-zero map or empty region)."""
    maps, masks = _as_batch(maps, masks)
    total = maps.sum(axis=(1, 2))
    inside = (maps * masks).sum(axis=(1, 2))
    valid = (total > 0) & masks.any(axis=(1, 2))
    return np.where(valid, inside / np.where(total > 0, total, 1.0), np.nan)


def magtr(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image: mean activation inside the ground-truth region (NaN for an empty region)."""
    maps, masks = _as_batch(maps, masks)
    count = masks.sum(axis=(1, 2))
    return np.where(count > 0, (maps * masks).sum(axis=(1, 2)) / np.maximum(count, 1), np.nan)


def mangtr(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image: mean activation outside the ground-truth region (NaN if the region is the whole image)."""
    maps, masks = _as_batch(maps, masks)
    return magtr(maps, ~masks)


def localization_per_image(maps: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """``energy_inside``, ``magtr``, ``mangtr`` of each image (``[N]``, NaN where undefined): what a
    bootstrap over images resamples."""
    return {"energy_inside": energy_inside(maps, masks), "magtr": magtr(maps, masks), "mangtr": mangtr(maps, masks)}


def localization_means(per_image: dict[str, np.ndarray]) -> dict[str, float]:
    """Means over the images that have a defined score (NaN when none has)."""
    return {
        name: float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        for name, values in per_image.items()
    }


def localization_scores(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """Means over the images that have a defined score: ``energy_inside``, ``magtr``, ``mangtr``."""
    return localization_means(localization_per_image(maps, masks))


def boxes_to_masks(boxes: Sequence[Sequence[float]] | np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes ``(x0, y0, x1, y1)`` in pixels (x1, y1 exclusive; fractional edges round outwards, the
    box is clipped to the image) -> bool masks ``[N, height, width]``. One box per image; a row of
    NaNs means "no box" (an empty mask)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    masks = np.zeros((len(boxes), height, width), dtype=bool)
    for index, (x0, y0, x1, y1) in enumerate(boxes):
        if not np.isfinite([x0, y0, x1, y1]).all():
            continue
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box {index} ({x0}, {y0}, {x1}, {y1}) is not (x0, y0, x1, y1) with x0 <= x1, y0 <= y1")
        left, top = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        right, bottom = min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1)))
        masks[index, top:bottom, left:right] = True
    return masks

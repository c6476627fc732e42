"""The explain step of a fine-tune run: CAM figures, faithfulness and localization scores.

:func:`explain_classifier` is what the fine-tune stage calls once the test probabilities are known.
Its cost is bounded whatever the size of the test split: at most ``2 * images_per_class`` images per
class for the figures and ``max_images`` for the scores (see :class:`CamSettings`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ssl_hpc.config import CamSettings
from ssl_hpc.data.augment import to_unit_float
from ssl_hpc.data.splits import ImageSplit
from ssl_hpc.explain.cams import compute_cams, metric_slug, plain_cam_target, resolve_target
from ssl_hpc.explain.faithfulness import faithfulness_means, faithfulness_per_image
from ssl_hpc.explain.figures import class_grid_figure, confidence_histograms
from ssl_hpc.explain.intervals import with_intervals
from ssl_hpc.explain.localization import localization_means, localization_per_image
from ssl_hpc.explain.sanity import (
    RANDOMIZATION_FAIL_ABOVE,
    blank_fraction,
    blank_maps,
    randomization_spearman,
    randomization_spearman_per_image,
    randomized_copy,
)

log = logging.getLogger(__name__)

SUMMARY = "cam_summary.json"
HISTOGRAMS = "confidence_histograms.png"


def score_indices(count: int, max_images: int, seed: int) -> np.ndarray:
    """The fixed, seeded set of test images the scores are averaged over (sorted indices)."""
    if count <= max_images:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=max_images, replace=False))


def figure_indices(
    labels: np.ndarray, preds: np.ndarray, confidence: np.ndarray, per_class: int, num_classes: int, seed: int
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per true class: up to ``per_class`` correctly classified images (a seeded random draw) and up to
    ``per_class`` misclassified ones (the most confident mistakes: the ones worth looking at)."""
    rng = np.random.default_rng(seed)
    chosen = {}
    for index in range(num_classes):
        right = np.flatnonzero((labels == index) & (preds == index))
        wrong = np.flatnonzero((labels == index) & (preds != index))
        right = np.sort(rng.choice(right, size=min(per_class, len(right)), replace=False)) if len(right) else right
        wrong = wrong[np.argsort(-confidence[wrong], kind="stable")[:per_class]]
        chosen[index] = (right, wrong)
    return chosen


def explain_classifier(
    model: torch.nn.Module,
    test: ImageSplit,
    probs: np.ndarray,
    class_names: Sequence[str],
    settings: CamSettings,
    out_dir: Path,
    device: torch.device,
    masks: torch.Tensor | np.ndarray | None = None,
) -> tuple[dict[str, float], list[Path]]:
    """CAM figures and scores for a trained classifier on its test split.

    ``model`` is a :class:`~ssl_hpc.models.classifier.Classifier` (fed float images in [0, 1]) already on
    ``device``; ``probs`` ``[N, K]`` its test probabilities, aligned with ``test``; ``masks`` optional
    ground-truth regions ``[N, H, W]`` (or ``[N, 1, H, W]``), non-zero inside, aligned with ``test``.

    Returns the metrics to log -- ``cam_<method>_road_morf``, ``_road_lerf``, ``_road_combined``,
    ``_topk_conf_drop``, ``_seconds_per_image``, ``_blank_fraction``, ``_randomization_spearman``
    (:mod:`ssl_hpc.explain.sanity`) and, with masks, ``_energy_inside``, ``_magtr``,
    ``_mangtr`` (``gradcam++`` is spelt ``gradcampp``) -- and the files written under ``out_dir``
    (per-class CAM grids, the confidence histograms, ``cam_summary.json``). Nothing when disabled.

    Every score but ``_seconds_per_image`` is a mean over images and comes with its 95 % percentile
    bootstrap interval over those images, ``_<score>_ci_low`` / ``_ci_high``
    (:mod:`ssl_hpc.explain.intervals`): a mean of 64 images is not a mean of 6,000.
    ``_n_images`` is the number of images of the randomisation check and the faithfulness / localization
    scores (``cam.max_images`` at most); ``_blank_fraction`` counts those and the figures' images, and an
    image whose score is undefined (a constant map's correlation, an empty mask) is left out of that
    score's mean and interval (``cam_summary.json`` records each score's count under ``score_counts``).
    """
    if not settings.enabled:
        return {}, []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    probs = np.asarray(probs, dtype=np.float64)
    labels = test.labels.cpu().numpy().astype(np.int64)
    if probs.shape != (len(test), len(class_names)):
        raise ValueError(f"probs has shape {probs.shape}; expected ({len(test)}, {len(class_names)})")
    preds, confidence = probs.argmax(axis=1), probs.max(axis=1)
    region = _check_masks(masks, test) if masks is not None else None

    paths = [confidence_histograms(probs, labels, class_names, out_dir / HISTOGRAMS)]
    if len(test) == 0:
        return {}, paths

    scored = (
        score_indices(len(test), settings.max_images, settings.seed)
        if (settings.faithfulness or region is not None)
        else np.zeros(0, dtype=np.int64)
    )
    per_class = figure_indices(labels, preds, confidence, settings.images_per_class, len(class_names), settings.seed)
    shown = np.concatenate([np.concatenate(pair) for pair in per_class.values()]).astype(np.int64)
    needed = np.unique(np.concatenate([scored, shown]).astype(np.int64))
    position = {int(index): row for row, index in enumerate(needed)}

    images = to_unit_float(test.images[torch.as_tensor(needed, device=test.images.device)].to(device))
    target = resolve_target(model, images[:1], settings.target_layer, settings.min_cam_grid)
    # Plain CAM reads the layer the head pools, and is refused here, before any map is computed, if there is none.
    targets = {
        method: plain_cam_target(model, images[:8], settings.target_layer, settings.min_cam_grid)
        if method == "cam"
        else target
        for method in settings.methods
    }
    summary: dict = {
        "target_layer": target.name,
        "grid": list(target.grid),
        "fell_back_from": target.fell_back_from,
        "methods": list(settings.methods),
        "layers": {method: method_target.name for method, method_target in targets.items()},
        "test_images": len(test),
        "score_images": len(scored),
        "figure_images": len(shown),
        "score_indices": scored.tolist(),
        "figure_indices": shown.tolist(),
        "images_processed": {},
        "seconds": {},
    }

    metrics: dict[str, float] = {}
    maps_by_method: dict[str, np.ndarray] = {}
    checked = scored if len(scored) else needed  # the images of the randomisation check
    checked_rows = np.array([position[int(i)] for i in checked], dtype=np.int64)
    twin = randomized_copy(model, settings.seed)
    twin_layers = {name: resolve_target(twin, images[:1], name) for name in {layer.name for layer in targets.values()}}
    twin_targets = {method: twin_layers[layer.name] for method, layer in targets.items()}
    summary["randomization_fails"] = []
    summary["score_counts"] = {}
    for method in settings.methods:
        slug = metric_slug(method)
        processed = [0]
        started = time.perf_counter()
        maps = compute_cams(
            model,
            images,
            method,
            targets[method],
            preds[needed],
            settings.batch_size,
            settings.scorecam_batch_size,
            on_batch=lambda n, counter=processed: counter.__setitem__(0, counter[0] + n),
            max_channels=settings.max_channels,
        )
        cam_seconds = time.perf_counter() - started
        maps_by_method[method] = maps
        metrics[f"cam_{slug}_blank_fraction"] = blank_fraction(maps)
        per_image: dict[str, np.ndarray] = {"blank_fraction": blank_maps(maps)}
        random_maps = compute_cams(
            twin,
            images[torch.as_tensor(checked_rows, device=images.device)],
            method,
            twin_targets[method],
            preds[checked],
            settings.batch_size,
            settings.scorecam_batch_size,
            max_channels=settings.max_channels,
        )
        correlation = randomization_spearman(maps[checked_rows], random_maps)
        metrics[f"cam_{slug}_randomization_spearman"] = correlation
        metrics[f"cam_{slug}_n_images"] = float(len(checked))
        per_image["randomization_spearman"] = randomization_spearman_per_image(maps[checked_rows], random_maps)
        if correlation > RANDOMIZATION_FAIL_ABOVE:
            summary["randomization_fails"].append(method)
            log.warning(
                "%s maps correlate %.2f with those of a randomly re-initialised model (Adebayo et al., 2018): they "
                "show the input more than what the model learned",
                method,
                correlation,
            )
        summary["images_processed"][method] = processed[0]
        metrics[f"cam_{slug}_seconds_per_image"] = cam_seconds / max(1, processed[0])
        rows = np.array([position[int(i)] for i in scored], dtype=np.int64)
        started = time.perf_counter()
        if settings.faithfulness and len(rows):
            values = faithfulness_per_image(
                model,
                images[torch.as_tensor(rows, device=images.device)],
                maps[rows],
                preds[scored],
                settings.road_percentiles,
                settings.topk_percent,
                settings.batch_size,
                settings.seed,
            )
            metrics.update({f"cam_{slug}_{name}": value for name, value in faithfulness_means(values).items()})
            per_image.update(values)
        if region is not None and len(rows):
            values = localization_per_image(maps[rows], region[scored])
            metrics.update({f"cam_{slug}_{name}": value for name, value in localization_means(values).items()})
            per_image.update(values)
        metrics.update(with_intervals(f"cam_{slug}_", per_image, settings.seed))
        summary["score_counts"][method] = {name: int(np.isfinite(v).sum()) for name, v in per_image.items()}
        summary["seconds"][method] = {"cam": cam_seconds, "scores": time.perf_counter() - started}

    if settings.images_per_class > 0:
        for index, (right, wrong) in per_class.items():
            chosen = np.concatenate([right, wrong]).astype(np.int64)
            rows = np.array([position[int(i)] for i in chosen], dtype=np.int64)
            paths.append(
                class_grid_figure(
                    test.images[torch.as_tensor(chosen, device=test.images.device)].cpu().numpy(),
                    {
                        _header(method, summary["randomization_fails"]): maps[rows]
                        for method, maps in maps_by_method.items()
                    },
                    labels[chosen],
                    preds[chosen],
                    confidence[chosen],
                    len(right),
                    class_names,
                    index,
                    out_dir / f"cam_class{index}_{_file_slug(class_names[index])}.png",
                    settings.display_size,
                )
            )

    summary["metrics"] = metrics
    summary_path = out_dir / SUMMARY
    summary_path.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    paths.append(summary_path)
    return metrics, paths


def _check_masks(masks: torch.Tensor | np.ndarray, test: ImageSplit) -> np.ndarray:
    array = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    expected = (len(test), *test.images.shape[-2:])
    if array.shape != expected:
        raise ValueError(
            f"masks have shape {masks.shape}; expected {expected} (or with a channel axis of 1), "
            "aligned with the test split"
        )
    return array != 0


def _header(method: str, failing: list[str]) -> str:
    """A figure's column header: the method, flagged when it failed the randomisation check."""
    return f"{method} (fails random-model check)" if method in failing else method


def _file_slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(name)).strip("_")[:40] or "class"


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")

"""CAM figures: per-class grids of test images with their maps, confidence histograms, and the
same images across models.

Images are upsampled so 28 px stays readable (nearest neighbour for the image, bilinear for the map,
as pytorch-grad-cam does, overlaid with its ``show_cam_on_image``). A grid is drawn as one mosaic
image with text on it rather than as one matplotlib axes per panel: a run writes a figure per class,
and dozens of axes per figure would cost seconds of CPU per run for nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np  # noqa: E402
from matplotlib.figure import Figure
from pytorch_grad_cam.utils.image import show_cam_on_image  # noqa: E402

DPI = 100
GAP = 4  # px between panels
LABEL_BAND = 30  # px of text above each row
HEADER = 46  # px for the two-line title and the column names
GREEN, RED, GREY = "#1a7f37", "#c62828", "#333333"


def to_display_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """One image (uint8 or float in [0, 1]; ``[C, H, W]`` or ``[H, W]``) -> float RGB ``[size, size, 3]``
    in [0, 1], upsampled with nearest neighbour."""
    image = np.asarray(image)
    image = np.transpose(image, (1, 2, 0)) if image.ndim == 3 else image[..., None]
    image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    image = np.clip(image[..., :3], 0.0, 1.0)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_NEAREST)


def overlay(image: np.ndarray, cam: np.ndarray, size: int, image_weight: float = 0.5) -> np.ndarray:
    """The map (``[H, W]`` in [0, 1]) upsampled bilinearly over the upsampled image, as float RGB in [0, 1]."""
    rgb = to_display_rgb(image, size)
    heat = cv2.resize(
        np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0), (size, size), interpolation=cv2.INTER_LINEAR
    )
    return show_cam_on_image(rgb, heat, use_rgb=True, image_weight=image_weight).astype(np.float32) / 255.0


def _short(name: str, limit: int = 22) -> str:
    name = str(name)
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _mosaic(
    rows: list[tuple[str, str, list[np.ndarray]]], headers: Sequence[str], title: str, size: int, path: Path
) -> Path:
    """Rows of equally sized RGB panels, each row under its own label, drawn as one image."""
    columns = max(len(headers), 1)
    width = max(columns * (size + GAP) + GAP, 260)
    height = HEADER + max(len(rows), 1) * (LABEL_BAND + size + GAP) + GAP
    canvas = np.ones((height, width, 3), dtype=np.float32)
    for row, (_, _, panels) in enumerate(rows):
        top = HEADER + row * (LABEL_BAND + size + GAP) + LABEL_BAND
        for column, panel in enumerate(panels):
            left = GAP + column * (size + GAP)
            canvas[top : top + size, left : left + size] = panel
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    axis = figure.add_axes((0, 0, 1, 1))
    axis.imshow(canvas, interpolation="nearest")
    axis.set_xlim(-0.5, width - 0.5)
    axis.set_ylim(height - 0.5, -0.5)
    axis.axis("off")
    axis.text(GAP, 4, title, fontsize=7.5, va="top", ha="left", color=GREY, wrap=True)
    for column, header in enumerate(headers):
        axis.text(
            GAP + column * (size + GAP) + size / 2, HEADER - 3, header, fontsize=7, va="bottom", ha="center", color=GREY
        )
    for row, (label, colour, _) in enumerate(rows):
        top = HEADER + row * (LABEL_BAND + size + GAP)
        axis.text(GAP, top + LABEL_BAND - 2, label, fontsize=6.5, va="bottom", ha="left", color=colour, linespacing=1.1)
    if not rows:
        axis.text(width / 2, HEADER + 20, "no test images", fontsize=8, ha="center", color=GREY)
    return _save(figure, path)


def class_grid_figure(
    images: np.ndarray,
    maps_by_method: Mapping[str, np.ndarray],
    labels: np.ndarray,
    preds: np.ndarray,
    confidences: np.ndarray,
    correct_count: int,
    class_names: Sequence[str],
    class_index: int,
    path: Path,
    display_size: int = 112,
) -> Path:
    """One true class: a row per test image (the first ``correct_count`` correctly classified, the rest
    misclassified): the image, then its overlay for each CAM method; each row labelled with the true
    and predicted labels and the predicted class's confidence (maps explain the predicted class)."""
    methods = list(maps_by_method)
    rows = []
    for row in range(len(images)):
        ok = row < correct_count
        label = (
            f"{'correct' if ok else 'WRONG'}  true: {_short(class_names[int(labels[row])])}\n"
            f"pred: {_short(class_names[int(preds[row])])} ({float(confidences[row]):.2f})"
        )
        panels = [to_display_rgb(images[row], display_size)]
        panels += [overlay(images[row], maps_by_method[method][row], display_size) for method in methods]
        rows.append((label, GREEN if ok else RED, panels))
    title = (
        f"true class {class_index}: {_short(class_names[class_index], 40)}\n"
        f"{correct_count} correct, {len(images) - correct_count} misclassified"
    )
    return _mosaic(rows, ["image", *methods], title, display_size, path)


def compare_models_figure(
    images: np.ndarray,
    maps_by_model: Mapping[str, np.ndarray],
    labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    path: Path,
    display_size: int = 112,
    preds_by_model: Mapping[str, Sequence[int]] | None = None,
) -> Path:
    """The same test images (rows) across models (a column each, after the image): ``maps_by_model[name]``
    is ``[N, H, W]`` in [0, 1] for ``images`` (``[N, C, H, W]``, uint8 or float in [0, 1]). With
    ``preds_by_model`` each row's label lists every model's prediction."""
    images, labels = np.asarray(images), np.asarray(labels)
    models = list(maps_by_model)
    for name, maps in maps_by_model.items():
        if len(maps) != len(images):
            raise ValueError(f"model {name!r} has {len(maps)} maps for {len(images)} images")
    rows = []
    for row in range(len(images)):
        label = f"true: {_short(class_names[int(labels[row])])}"
        if preds_by_model:
            label += "\n" + "  ".join(
                f"{_short(name, 12)}: {_short(class_names[int(preds_by_model[name][row])], 12)}"
                for name in models
                if name in preds_by_model
            )
        panels = [to_display_rgb(images[row], display_size)]
        panels += [overlay(images[row], maps_by_model[name][row], display_size) for name in models]
        rows.append((label, GREY, panels))
    return _mosaic(
        rows,
        ["image", *[_short(name, 18) for name in models]],
        "the same test images across models",
        display_size,
        path,
    )


def confidence_histograms(
    probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: Path, bins: int = 20
) -> Path:
    """Per true class, the histogram of the model's confidence (its top probability), correct and
    misclassified predictions stacked -- the pulmonary report's confidence histograms."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    preds, confidence = probs.argmax(axis=1), probs.max(axis=1)
    count = len(class_names)
    columns = min(4, count)
    rows = int(np.ceil(count / columns))
    figure = Figure(figsize=(3.0 * columns, 2.3 * rows + 0.4), dpi=DPI)
    axes = figure.subplots(rows, columns, squeeze=False)
    figure.subplots_adjust(
        left=0.08, right=0.98, bottom=0.16 / rows, top=1 - 0.32 / (rows + 0.4), hspace=0.55, wspace=0.3
    )
    edges = np.linspace(0.0, 1.0, bins + 1)
    for index in range(rows * columns):
        axis = axes.flat[index]
        if index >= count:
            axis.axis("off")
            continue
        mine = labels == index
        right, _ = np.histogram(confidence[mine & (preds == labels)], bins=edges)
        wrong, _ = np.histogram(confidence[mine & (preds != labels)], bins=edges)
        axis.stairs(right + wrong, edges, fill=True, color=RED, label=f"wrong ({wrong.sum()})")
        axis.stairs(right, edges, fill=True, color=GREEN, label=f"correct ({right.sum()})")
        axis.set_title(f"true: {_short(class_names[index], 28)} (n={int(mine.sum())})", fontsize=8)
        axis.set_xlim(0, 1)
        axis.set_xlabel("confidence (top probability)", fontsize=7)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=6, loc="upper left")
    figure.suptitle("confidence per true class (stacked: correct + wrong)", fontsize=9)
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path

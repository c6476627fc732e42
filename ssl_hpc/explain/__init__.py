"""CAM figures and CAM quality scores (pytorch-grad-cam): where a classifier looks, and how far to
trust the maps that say so. The fine-tune stage calls :func:`explain_classifier`; the aggregation
step can call :func:`compare_models_figure` (with maps from :func:`compute_cams`).

Names are imported lazily: :mod:`ssl_hpc.config` imports :mod:`ssl_hpc.explain.settings`, and
loading the config must not pull in pytorch-grad-cam, OpenCV and matplotlib (nor risk an import cycle).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CamSettings": "settings",
    "CAM_METHODS": "cams",
    "CamTarget": "cams",
    "compute_cams": "cams",
    "resolve_target": "cams",
    "faithfulness_scores": "faithfulness",
    "topk_binary_maps": "faithfulness",
    "class_grid_figure": "figures",
    "compare_models_figure": "figures",
    "confidence_histograms": "figures",
    "boxes_to_masks": "localization",
    "energy_inside": "localization",
    "localization_scores": "localization",
    "magtr": "localization",
    "mangtr": "localization",
    "explain_classifier": "run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

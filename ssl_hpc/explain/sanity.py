"""How far to trust a CAM: is the map blank, and does it depend on what the model learned?

- :func:`blank_fraction`: the share of maps that are constant. Grad-CAM at a coarse layer of a small
  input is often all zero (every channel's weighted sum negative, then ReLU): a figure of blank maps
  says nothing, and a score averaged over them is meaningless.
- :func:`randomization_spearman`: the model-randomisation sanity check of Adebayo et al. (2018): the
  rank correlation between the maps of the trained model and those of the same architecture with
  re-initialised weights, per image, averaged. A method whose maps barely change (high correlation)
  shows the input's structure (edges, a bright patch), not what the model learned.

  One re-initialised draw (seeded by ``cam.seed``) decides, and for ViTs that draw matters: Grad-CAM of a
  ViT with random weights is driven by the input (on a bright-patch task it lands on the patch for some
  draws and off it for others, its random channel weights setting the sign), so its correlation with the
  trained maps swings with the draw. On that task, with timm's own initialiser, Grad-CAM failed on 3 of 8
  draws (rank correlation -0.7 to 0.9); with the PyTorch re-initialisation used here, on none (-0.3 to 0.4;
  ``tests/test_cam_correctness.py``). Read a ViT's pass or fail as one draw, not a property of the method;
  the per-image bootstrap interval (``_ci_low``/``_ci_high``) covers the images, not the draw.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

# Above this mean rank correlation with a randomly re-initialised model, a method fails the check.
RANDOMIZATION_FAIL_ABOVE = 0.5
_CONSTANT = 1e-6


def blank_maps(maps: np.ndarray) -> np.ndarray:
    """Per map (``[N, H, W]``): 1.0 where its values span less than 1e-6 (nothing to see), else 0.0."""
    if len(maps) == 0:
        return np.zeros(0)
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    return (flat.max(axis=1) - flat.min(axis=1) < _CONSTANT).astype(np.float64)


def blank_fraction(maps: np.ndarray) -> float:
    """Share of maps (``[N, H, W]``) whose values span less than 1e-6: nothing to see."""
    if len(maps) == 0:
        return float("nan")
    return float(np.mean(blank_maps(maps)))


def randomization_spearman_per_image(trained: np.ndarray, randomized: np.ndarray) -> np.ndarray:
    """Spearman correlation of each image's two maps (``[N]``); NaN where either map is constant (no
    ranking)."""
    from scipy.stats import spearmanr

    values = []
    for first, second in zip(np.asarray(trained), np.asarray(randomized)):
        a, b = first.reshape(-1), second.reshape(-1)
        if np.ptp(a) < _CONSTANT or np.ptp(b) < _CONSTANT:
            values.append(np.nan)
            continue
        values.append(spearmanr(a, b).statistic)
    return np.asarray(values, dtype=np.float64)


def randomization_spearman(trained: np.ndarray, randomized: np.ndarray) -> float:
    """Mean Spearman correlation, per image, of two sets of maps of the same images; pairs where either
    map is constant (no ranking) are left out. NaN when none is left."""
    values = randomization_spearman_per_image(trained, randomized)
    values = values[~np.isnan(values)]
    return float(np.mean(values)) if values.size else float("nan")


def randomized_copy(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The same architecture with every layer re-initialised (``reset_parameters``), seeded; the
    model itself is untouched."""
    twin = copy.deepcopy(model)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in twin.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            else:  # parameters held directly (a ViT's position embedding, class token)
                for parameter in module.parameters(recurse=False):
                    torch.nn.init.normal_(parameter, std=0.02)
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
    finally:
        torch.random.set_rng_state(state)
    return twin.eval()

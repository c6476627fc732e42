"""How faithful a CAM is to the model: pytorch-grad-cam's perturbation metrics, batched and seeded.

- ROAD (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution Methods"):
  pixels are removed in the map's order -- most relevant first (MoRF) or least relevant first
  (LeRF) -- and filled by noisy linear imputation from their neighbours, which keeps the
  perturbed image close to the data (no black holes for the model to react to). The score is the
  change in the softmax probability of the explained class, averaged over ``percentiles``
  (``ROADMostRelevantFirstAverage`` / ``ROADLeastRelevantFirstAverage``). A faithful map has a
  strongly negative MoRF change and a LeRF change near 0; ``road_combined`` = (LeRF - MoRF) / 2,
  higher is better.
- Top-k confidence drop: only the top ``k`` % pixels of the map are kept (the rest set to 0, i.e.
  black, in the [0, 1] image the classifier receives) with ``CamMultImageConfidenceChange`` on a
  binary map; the score is the drop of the explained class's probability (positive = the kept
  pixels do not suffice), lower is better.

Both run on the float [0, 1] images the Classifier takes, through pytorch-grad-cam's metric classes
(``PerturbationConfidenceMetric``, ``RemoveMostRelevantFirst`` / ``RemoveLeastRelevantFirst``,
``AveragerAcrossThresholds``, ``CamMultImageConfidenceChange``). One piece is swapped: the ROAD
imputer. ``NoisyLinearImputer`` builds its sparse system with per-offset ``lil_matrix`` assignments,
~40 ms per image and threshold on 2 CPU cores at 28 px, which made ROAD the dominant cost of a run;
:class:`FastNoisyLinearImputer` builds the very same system in one vectorised COO construction
(a test checks it gives the library's output to float precision, noise included). The imputer
handles any channel count: one sparse system per image, one right-hand side per channel (a
1-channel image has a single right-hand side; ``spsolve`` then returns a vector, which broadcasts
back into the ``[1, H*W]`` image). Its noise is drawn from torch's global generator, so the scores
are computed under a forked RNG seeded with ``seed``: reproducible, and the caller's random state
is left untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
from pytorch_grad_cam.metrics.perturbation_confidence import (
    AveragerAcrossThresholds,
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer, neighbors_weights
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve
from torch import nn


class FastNoisyLinearImputer(NoisyLinearImputer):
    """pytorch-grad-cam's ROAD imputer (noisy linear infilling from the 8 neighbours) with its
    equation system assembled in one vectorised step instead of per-offset ``lil_matrix`` writes."""

    @staticmethod
    def setup_sparse_system(mask: np.ndarray, img: np.ndarray, weights=neighbors_weights):
        height, width = mask.shape
        known = mask.reshape(-1) > 0.5
        values = img.reshape(img.shape[0], -1)
        unknown = np.flatnonzero(~known)
        variable = np.full(known.size, -1, dtype=np.int64)
        variable[unknown] = np.arange(len(unknown))
        rows_of, cols_of = unknown // width, unknown % width
        rhs = np.zeros((len(unknown), img.shape[0]))
        weight_sum = np.ones(len(unknown))
        a_rows, a_cols, a_vals = [np.arange(len(unknown))], [np.arange(len(unknown))], []
        for (dy, dx), weight in weights:
            row, col = rows_of + dy, cols_of + dx
            inside = (row >= 0) & (col >= 0) & (row < height) & (col < width)
            weight_sum[~inside] -= weight
            equation = np.flatnonzero(inside)
            neighbour = row[inside] * width + col[inside]
            is_known = known[neighbour]
            np.subtract.at(rhs, equation[is_known], weight * values[:, neighbour[is_known]].T)
            a_rows.append(equation[~is_known])
            a_cols.append(variable[neighbour[~is_known]])
            a_vals.append(np.full(int((~is_known).sum()), weight))
        a_vals.insert(0, -weight_sum)
        system = coo_matrix(
            (np.concatenate(a_vals), (np.concatenate(a_rows), np.concatenate(a_cols))),
            shape=(len(unknown), len(unknown)),
        )
        return system.tocsc(), rhs

    def __call__(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        flat = img.reshape(img.shape[0], -1)
        missing = np.flatnonzero(mask.reshape(-1).numpy() == 0)
        if len(missing) == 0:
            return img.clone()
        system, rhs = self.setup_sparse_system(mask.numpy(), img.numpy(), self.weighting)
        solution = torch.tensor(spsolve(system, rhs), dtype=torch.float)
        filled = flat.clone()
        filled[:, missing] = solution.t() + self.noise * torch.randn_like(solution.t())
        return filled.reshape_as(img)


class _ROADMoRF(PerturbationConfidenceMetric):
    def __init__(self, percentile: int):
        super().__init__(RemoveMostRelevantFirst(percentile, FastNoisyLinearImputer()))


class _ROADLeRF(PerturbationConfidenceMetric):
    def __init__(self, percentile: int):
        super().__init__(RemoveLeastRelevantFirst(percentile, FastNoisyLinearImputer()))


def topk_binary_maps(maps: np.ndarray, percent: float) -> np.ndarray:
    """1 on the ``percent`` % highest pixels of each map (exactly ceil(percent% of H*W) pixels, ties
    broken by position), 0 elsewhere. A constant map therefore keeps a fixed share too."""
    count, height, width = maps.shape
    keep = max(1, math.ceil(height * width * percent / 100.0))
    flat = maps.reshape(count, -1)
    order = np.argsort(-flat, axis=1, kind="stable")[:, :keep]
    binary = np.zeros_like(flat, dtype=np.float32)
    np.put_along_axis(binary, order, 1.0, axis=1)
    return binary.reshape(maps.shape)


def faithfulness_per_image(
    model: nn.Module,
    images: torch.Tensor,
    maps: np.ndarray,
    classes: Sequence[int] | np.ndarray,
    percentiles: Sequence[int] = (20, 40, 60, 80),
    topk_percent: float = 10.0,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """ROAD MoRF / LeRF / combined and top-k confidence drop of each image of ``images`` (float, [0, 1]):
    ``[N]`` arrays, kept per image so that a bootstrap over images can say how far their mean is to be
    trusted (:mod:`ssl_hpc.explain.intervals`)."""
    if len(images) == 0:
        return {}
    was_training = model.training
    model.eval()
    morf, lerf, drop = [], [], []
    binary = topk_binary_maps(maps, topk_percent)
    devices = [images.device] if images.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                part = slice(start, start + len(batch))
                targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes[part]]
                morf.append(AveragerAcrossThresholds(_ROADMoRF, list(percentiles))(batch, maps[part], targets, model))
                lerf.append(AveragerAcrossThresholds(_ROADLeRF, list(percentiles))(batch, maps[part], targets, model))
                drop.append(-CamMultImageConfidenceChange()(batch, binary[part], targets, model))
    finally:
        model.train(was_training)
    morf_values = np.concatenate(morf).astype(np.float64).reshape(-1)
    lerf_values = np.concatenate(lerf).astype(np.float64).reshape(-1)
    return {
        "road_morf": morf_values,
        "road_lerf": lerf_values,
        "road_combined": (lerf_values - morf_values) / 2.0,
        "topk_conf_drop": np.concatenate(drop).astype(np.float64).reshape(-1),
    }


def faithfulness_means(per_image: dict[str, np.ndarray]) -> dict[str, float]:
    """The logged point values: means over the images of :func:`faithfulness_per_image`'s arrays
    (``road_combined`` as (mean LeRF - mean MoRF) / 2, as before per-image values were kept)."""
    if not per_image:
        return {}
    morf_mean = float(np.mean(per_image["road_morf"]))
    lerf_mean = float(np.mean(per_image["road_lerf"]))
    return {
        "road_morf": morf_mean,
        "road_lerf": lerf_mean,
        "road_combined": (lerf_mean - morf_mean) / 2.0,
        "topk_conf_drop": float(np.mean(per_image["topk_conf_drop"])),
    }


def faithfulness_scores(
    model: nn.Module,
    images: torch.Tensor,
    maps: np.ndarray,
    classes: Sequence[int] | np.ndarray,
    percentiles: Sequence[int] = (20, 40, 60, 80),
    topk_percent: float = 10.0,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """Mean ROAD MoRF / LeRF / combined and top-k confidence drop over ``images`` (float, [0, 1])."""
    return faithfulness_means(
        faithfulness_per_image(model, images, maps, classes, percentiles, topk_percent, batch_size, seed)
    )

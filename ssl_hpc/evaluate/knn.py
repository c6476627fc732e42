"""k-nearest-neighbour classification on frozen, L2-normalised features.

The weighted vote of Wu et al. (2018), as used by lightly's benchmarks: each of the k most
cosine-similar training examples votes for its class with weight exp(similarity / T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_hpc.data.augment import to_unit_float
from ssl_hpc.evaluate.predict import forward_in_batches


def extract_features(encoder: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """L2-normalised features of uint8 ``images`` through ``encoder`` (in eval mode)."""
    raw = forward_in_batches(encoder, images, batch_size, lambda batch: encoder(to_unit_float(batch)).float())
    return F.normalize(raw, dim=1)


@torch.no_grad()
def knn_probs(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class probabilities ``[Q, num_classes]`` for each query (features already normalised)."""
    k = min(k, len(train_features))
    outputs = []
    for start in range(0, len(query_features), chunk):
        similarity = query_features[start : start + chunk] @ train_features.T
        weights, indices = similarity.topk(k, dim=1)
        weights = (weights / temperature).exp()
        votes = torch.zeros(len(weights), num_classes, device=weights.device)
        votes.scatter_add_(1, train_labels[indices], weights)
        outputs.append(votes / votes.sum(dim=1, keepdim=True))
    return torch.cat(outputs)

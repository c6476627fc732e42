#!/usr/bin/env python
"""SimCLR pretraining throughput: our pipeline against the thesis's, same model, batch and machine.

Reference (what the thesis ran): lightly's per-sample ``SimCLRTransform`` on PIL images in a
PyTorch DataLoader (``num_workers`` = CPU count, as lightly's examples use all cores), each
batch then copied to the device. Ours: the split held as one uint8 tensor on the device, both
views made by batched kornia augmentation there (:class:`ssl_hpc.train.pretrain.PretextTask`).
Both train the same SimCLR model (ResNet-18, ImageNet stem, NT-Xent) with the same optimiser.

The two pipelines are timed alternately, several rounds each, and the medians compared, so a
machine that speeds up or slows down during the run affects both. Images/s counts both views.
Device-agnostic: it uses the GPU when there is one. Last output line: a JSON object with both
figures and ``ratio`` (ours / reference); on 2 CPU cores the ratio must be >= 1.2.

Usage: MEDMNIST_ROOT=../shared/data python bench/ssl_throughput.py [--batches 12] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import medmnist
import torch
from lightly.transforms import SimCLRTransform

import _common  # noqa: F401  (puts the project on sys.path)
from ssl_hpc.config import PretrainSettings, default_data_root
from ssl_hpc.data.augment import view_augmentation
from ssl_hpc.data.medmnist import load_medmnist
from ssl_hpc.models.backbones import BackboneRequest
from ssl_hpc.models.classifier import Preprocess
from ssl_hpc.models.methods import METHODS
from ssl_hpc.train.loop import batch_order
from ssl_hpc.train.pretrain import PretextTask

SIZE = 28


def build(device: torch.device):
    torch.manual_seed(0)
    spec = METHODS["simclr"]
    model = spec.build_pretext("resnet18", BackboneRequest(3, SIZE, stem="imagenet"), PretrainSettings()).to(device)
    preprocess = Preprocess(3, 3, model.backbone.info.mean, model.backbone.info.std).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9)
    return model, preprocess, optimizer


def step(model, optimizer, views) -> None:
    loss = model.loss(views)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ours(device, images: torch.Tensor, batch_size: int, batches: int) -> float:
    """uint8 split on the device, kornia views on whole batches."""
    model, preprocess, optimizer = build(device)
    augment = view_augmentation("contrastive", SIZE, 3)
    task = PretextTask(model, preprocess, augment, views=2)
    model.train()
    order = batch_order(len(images), seed=0, epoch=0).to(device)
    on_device = images.to(device)
    for index in range(batches + 2):
        if index == 2:  # two warm-up steps
            synchronize(device)
            started = time.perf_counter()
        batch = on_device[order[index * batch_size : (index + 1) * batch_size]]
        step(model, optimizer, task.make_views(batch))
    synchronize(device)
    return 2 * batch_size * batches / (time.perf_counter() - started)


def reference(device, data_root, batch_size: int, batches: int, workers: int) -> float:
    """lightly's per-sample SimCLRTransform on PIL images in a DataLoader."""
    model, preprocess, optimizer = build(device)
    transform = SimCLRTransform(input_size=SIZE, gaussian_blur=0.0, normalize=None)
    dataset = medmnist.PneumoniaMNIST(
        split="train", root=str(data_root), as_rgb=True, transform=transform, download=False
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers, persistent_workers=False
    )
    model.train()
    iterator = iter(loader)
    for index in range(batches + 2):
        if index == 2:
            synchronize(device)
            started = time.perf_counter()
        views, _ = next(iterator)
        views = [preprocess(view.to(device, non_blocking=True)) for view in views]
        step(model, optimizer, views)
    synchronize(device)
    del iterator
    return 2 * batch_size * batches / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data_root = default_data_root()
    images = load_medmnist("pneumoniamnist", SIZE, data_root, download=False).train.images.expand(-1, 3, -1, -1)
    images = images.contiguous()
    ours_runs, reference_runs = [], []
    for round_index in range(args.rounds):
        reference_runs.append(reference(device, data_root, args.batch_size, args.batches, args.workers))
        ours_runs.append(ours(device, images, args.batch_size, args.batches))
        print(f"round {round_index}: reference {reference_runs[-1]:.0f} img/s, ours {ours_runs[-1]:.0f} img/s")
    ours_median, reference_median = statistics.median(ours_runs), statistics.median(reference_runs)
    print(
        json.dumps(
            {
                "device": device.type,
                "batch_size": args.batch_size,
                "reference_workers": args.workers,
                "ours_images_per_s": round(ours_median, 1),
                "reference_images_per_s": round(reference_median, 1),
                "ratio": round(ours_median / reference_median, 3),
            }
        )
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The first thing to run on a machine with a GPU: do the CUDA paths work, and how fast is the grid there?

1. the tests marked ``gpu`` (tests/test_gpu.py: training loop with bf16 + channels_last + CAMs, compile,
   SSL views on the device, packing), in a subprocess;
2. images/s at 28 px, batch 128, for the supervised step and the SimCLR step, measured side by side:
   ``ours`` (uint8 split on the device, kornia augmentation on whole batches), ``limit`` (the same model
   on ready float tensors, no augmentation: what the step costs alone) and ``thesis`` (per-sample
   transforms in a DataLoader: torchvision's for supervised, lightly's SimCLRTransform for SimCLR);
3. the training steps of one 100-epoch fine-tune of a BloodMNIST-sized set (11,959 generated 28 px
   images, 8 classes; validation left out);
4. the aggregate throughput of ``pack: 1, 2, 4, 8`` processes training side by side on the one device,
   and from it a rough estimate of the device-hours of ``sweeps/full_grid.yaml``.

Without CUDA it runs the same code on the CPU with tiny sizes and says so (``"device": "cpu"``,
``"quick": true``), so that CI keeps it from rotting; the gpu tests skip there. Last line: one JSON object.
Within 8 minutes on a GPU machine.

Usage: MEDMNIST_ROOT=../shared/data python bench/gpu_check.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch
import torch.nn.functional as F

import _common  # noqa: F401  (puts the project on sys.path)
from _common import PROJECT_ROOT
from ssl_hpc.config import FinetuneSettings, PretrainSettings, default_data_root, load_sweep
from ssl_hpc.data.augment import classification_augmentation, to_unit_float, view_augmentation
from ssl_hpc.jobs import expand_jobs
from ssl_hpc.models.backbones import BackboneRequest
from ssl_hpc.models.classifier import Preprocess
from ssl_hpc.models.factory import build_classifier
from ssl_hpc.models.methods import METHODS
from ssl_hpc.train.pretrain import PretextTask

SIZE, BATCH = 28, 128
BLOOD_TRAIN, BLOOD_CLASSES = 11_959, 8  # BloodMNIST's train split
GPU_HOURS_NOTE = "sum over full_grid jobs of epochs x train images / (best packed images/s), x (size/28)^2"


def gpu_tests() -> dict[str, object]:
    """``pytest -m gpu`` in a subprocess; its counts (and why they skipped, if they did)."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "gpu.xml"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "0",
            "-m",
            "gpu",
            "tests/test_gpu.py",
            f"--junitxml={report}",
        ]
        started = time.perf_counter()
        subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=420)
        suite = ElementTree.parse(report).getroot().find("testsuite")
        counts = {name: int(suite.get(name, 0)) for name in ("tests", "failures", "errors", "skipped")}
        reasons = sorted({s.get("message", "") for s in suite.iter("skipped")})
    return {
        **counts,
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "skip_reasons": reasons,
        "seconds": round(time.perf_counter() - started, 1),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, step, batches: int, images_per_step: int) -> float:
    """images/s over ``batches`` steps after two warm-up steps."""
    for _ in range(2):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(batches):
        step()
    synchronize(device)
    return images_per_step * batches / (time.perf_counter() - started)


def classifier(device: torch.device):
    config = load_sweep(PROJECT_ROOT / "sweeps" / "smoke.yaml")
    run_config = expand_jobs(config)[0].config
    model = build_classifier(run_config, BLOOD_CLASSES, 3, None).to(device).to(memory_format=torch.channels_last)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def supervised_throughput(device: torch.device, images: torch.Tensor, labels: torch.Tensor, batches: int):
    """ours / limit / thesis images/s for one supervised step (ResNet-18, ImageNet stem, flip + crop)."""
    from torchvision import transforms

    model, optimizer = classifier(device)
    augment = classification_augmentation("crop_flip", SIZE)
    on_device, device_labels = images.to(device), labels.to(device)
    ready = to_unit_float(on_device[:BATCH]).contiguous(memory_format=torch.channels_last)

    def train(batch: torch.Tensor, target: torch.Tensor) -> None:
        with autocast(device):
            loss = F.cross_entropy(model(batch), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    order = iter(torch.randperm(len(images), device=device).split(BATCH) * (batches + 4))  # enough batches

    def ours_step() -> None:
        index = next(order)
        train(augment(to_unit_float(on_device[index])), device_labels[index])

    figures = {
        "ours": timed(device, ours_step, batches, BATCH),
        "limit": timed(device, lambda: train(ready, device_labels[:BATCH]), batches, BATCH),
    }
    per_sample = transforms.Compose(
        [transforms.RandomCrop(SIZE, padding=SIZE // 8, padding_mode="reflect"), transforms.RandomHorizontalFlip()]
    )
    dataset = torch.utils.data.TensorDataset(images, labels)

    def collate(items):
        return torch.stack([per_sample(to_unit_float(x)) for x, _ in items]), torch.stack([y for _, y in items])

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH, shuffle=True, num_workers=min(4, os.cpu_count() or 1), collate_fn=collate
    )
    batches_iter = iter(loader)

    def thesis_step() -> None:
        batch, target = next(batches_iter)
        train(batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last), target.to(device))

    figures["thesis"] = timed(device, thesis_step, min(batches, len(loader) - 3), BATCH)
    return {name: round(value, 1) for name, value in figures.items()}


def simclr_throughput(device: torch.device, images: torch.Tensor, batches: int):
    """ours / limit images/s for one SimCLR step (both views counted); thesis from bench/ssl_throughput.py."""
    model = METHODS["simclr"].build_pretext("resnet18", BackboneRequest(3, SIZE, stem="imagenet"), PretrainSettings())
    model = model.to(device).to(memory_format=torch.channels_last)
    preprocess = Preprocess(3, 3, model.backbone.info.mean, model.backbone.info.std).to(device)
    task = PretextTask(model, preprocess, view_augmentation("contrastive", SIZE, 3), views=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9)
    on_device = images.to(device)
    ready = [preprocess(to_unit_float(on_device[:BATCH]))] * 2

    def train(views) -> None:
        with autocast(device):
            loss = model.loss(views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    figures = {
        "ours": timed(
            device, lambda: train(task.make_views(on_device[torch.randint(len(images), (BATCH,))])), batches, 2 * BATCH
        ),
        "limit": timed(device, lambda: train(ready), batches, 2 * BATCH),
    }
    try:
        import ssl_throughput

        figures["thesis"] = ssl_throughput.reference(device, default_data_root(), BATCH, batches, os.cpu_count() or 1)
    except Exception as error:  # noqa: BLE001 - the reference needs the real PneumoniaMNIST files
        print(f"simclr thesis pipeline not measured: {error}", file=sys.stderr)
    return {name: round(value, 1) for name, value in figures.items()}


def finetune_seconds(device: torch.device, images: torch.Tensor, labels: torch.Tensor, epochs: int) -> float:
    """The training steps of an ``epochs``-epoch fine-tune over ``images`` (our step, as in ``ours``)."""
    model, optimizer = classifier(device)
    augment = classification_augmentation(FinetuneSettings().augment, SIZE)
    on_device, device_labels = images.to(device), labels.to(device)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(epochs):
        for index in torch.randperm(len(images), device=device).split(BATCH):
            batch = to_unit_float(on_device[index])
            batch = augment(batch) if augment is not None else batch
            with autocast(device):
                loss = F.cross_entropy(model(batch.contiguous(memory_format=torch.channels_last)), device_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    synchronize(device)
    return time.perf_counter() - started


def _pack_worker(device_name: str, steps: int, threads: int, ready, results) -> None:
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    images = torch.randint(0, 256, (BATCH * steps, 3, SIZE, SIZE), dtype=torch.uint8)
    labels = torch.randint(0, BLOOD_CLASSES, (BATCH * steps,))
    finetune_seconds(device, images[:BATCH], labels[:BATCH], 1)  # warm-up: CUDA context, kernels
    ready.wait()  # the K processes measure at the same time
    results.put(BATCH * steps / finetune_seconds(device, images, labels, 1))


def pack_throughput(device: torch.device, packs: list[int], steps: int) -> dict[str, float]:
    """Aggregate images/s of K processes each training its own model on the one device."""
    spawn = multiprocessing.get_context("spawn")
    out = {}
    for k in packs:
        results = spawn.Queue()
        threads = max(1, (os.cpu_count() or 1) // k)
        ready = spawn.Barrier(k)
        workers = [
            spawn.Process(target=_pack_worker, args=(str(device), steps, threads, ready, results)) for _ in range(k)
        ]
        for worker in workers:
            worker.start()
        figures = [results.get(timeout=600) for _ in workers]
        for worker in workers:
            worker.join()
        out[str(k)] = round(sum(figures), 1)
    return out


def full_grid_hours(best_images_per_s: float) -> float:
    """Device-hours of the thesis grid at the best packed throughput (ResNet-18 supervised step as the unit)."""
    import medmnist

    sweep = load_sweep(PROJECT_ROOT / "sweeps" / "full_grid.yaml")
    total_images = 0.0
    for job in expand_jobs(sweep):
        config = job.config
        n_train = medmnist.INFO[config.dataset]["n_samples"]["train"] if config.dataset in medmnist.INFO else 10_000
        settings = config.pretrain_settings if config.stage == "pretrain" else config.finetune_settings
        fraction = 1.0 if config.stage == "pretrain" else (config.label_fraction or 1.0)
        views = 2 if config.stage == "pretrain" else 1
        size = config.model.input_size or config.size
        total_images += settings.epochs * n_train * fraction * views * (size / 28) ** 2
    return total_images / best_images_per_s / 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (automatic without CUDA)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    quick = args.quick or not cuda
    device = torch.device("cuda" if cuda else "cpu")
    started = time.perf_counter()
    result: dict[str, object] = {"device": device.type, "quick": quick}
    if cuda:
        result["device_name"] = torch.cuda.get_device_name(0)
    print("gpu tests ...", file=sys.stderr)
    result["gpu_tests"] = gpu_tests()
    n, batches = (BATCH * 4, 3) if quick else (BLOOD_TRAIN, 30)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, BLOOD_CLASSES, (n,), generator=generator)
    print("throughput ...", file=sys.stderr)
    result["supervised_images_per_s"] = supervised_throughput(device, images, labels, batches)
    result["simclr_images_per_s"] = simclr_throughput(device, images, batches)
    epochs = 1 if quick else 100
    print(f"{epochs}-epoch fine-tune ...", file=sys.stderr)
    result["finetune_epochs"] = epochs
    result["finetune_seconds"] = round(finetune_seconds(device, images, labels, epochs), 1)
    print("packing ...", file=sys.stderr)
    packs = [1, 2] if quick else [1, 2, 4, 8]
    result["pack_images_per_s"] = pack_throughput(device, packs, steps=2 if quick else 40)
    best = max(result["pack_images_per_s"].values())
    result["full_grid_device_hours"] = round(full_grid_hours(best), 2)
    result["full_grid_estimate"] = GPU_HOURS_NOTE
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Views by modality: stain colour survives the views of stained images, X-rays keep their up and down,
and each dataset gets its modality's views unless the sweep says otherwise."""

from __future__ import annotations

import torch

from ssl_hpc.config import validate_sweep
from ssl_hpc.data.augment import view_augmentation
from ssl_hpc.jobs import expand_jobs

SIZE = 28


def stained(n: int = 64) -> torch.Tensor:
    """Purple-stained 'cells': red and blue well above green, on a pale background."""
    images = torch.full((n, 3, SIZE, SIZE), 0.9)
    images[:, :, 8:20, 8:20] = torch.tensor([0.6, 0.2, 0.7]).view(1, 3, 1, 1)
    return images


def test_augment_preset_stain_keeps_the_stain_hue_and_never_grays():
    torch.manual_seed(0)
    images = stained()
    for modality, keeps_colour in (("stain", True), ("natural", False)):
        views = view_augmentation("contrastive", SIZE, 3, modality=modality)(images)
        centre = views[:, :, 12:16, 12:16].mean(dim=(2, 3))  # inside the cell whatever the crop
        gray = (centre.max(dim=1).values - centre.min(dim=1).values) < 1e-3
        green_lowest = centre.argmin(dim=1) == 1
        if keeps_colour:
            assert not gray.any() and bool(green_lowest.all())
        else:  # the natural views gray some images out (p = 0.2) and shift hue
            assert gray.any() or not bool(green_lowest.all())


def test_augment_preset_xray_never_turns_an_image_upside_down():
    torch.manual_seed(0)
    images = torch.zeros(64, 1, SIZE, SIZE)
    images[:, :, :4] = 1.0  # a bright band along the top (the clavicles, say)
    for modality, upright in (("xray", True), ("stain", False)):
        views = view_augmentation("contrastive", SIZE, 1, modality=modality)(images)
        top, bottom = views[:, :, : SIZE // 2].mean(dim=(1, 2, 3)), views[:, :, SIZE // 2 :].mean(dim=(1, 2, 3))
        if upright:
            assert bool((top >= bottom).all())
        else:  # stained cells have no up: some views are flipped or rotated
            assert bool((top < bottom).any())


def test_augment_preset_follows_the_dataset_unless_the_sweep_says_otherwise():
    raw = {
        "name": "t",
        "grid": {"dataset": ["bloodmnist", "pneumoniamnist"], "method": ["simclr", "mae"], "finetune": ["frozen"]},
        "methods": {"mae": {"backbone": ["vit_mini"]}},
    }
    modality = {
        (job.config.method, job.config.dataset): job.config.pretrain_settings.modality
        for job in expand_jobs(validate_sweep(raw))
        if job.stage == "pretrain"
    }
    assert modality[("simclr", "bloodmnist")] == "stain" and modality[("simclr", "pneumoniamnist")] == "xray"
    assert modality[("mae", "bloodmnist")] == "auto"  # crop and flip only: the modality does not apply
    raw["pretrain"] = {"modality": "natural"}
    assert {
        job.config.pretrain_settings.modality
        for job in expand_jobs(validate_sweep(raw))
        if job.stage == "pretrain" and job.config.method == "simclr"
    } == {"natural"}

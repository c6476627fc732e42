"""Grad-CAM looks where the evidence is: a model trained on images whose class is decided by a bright
patch at a known place puts most of its map's energy inside that patch (a ResNet and a ViT).

Class 1 images carry an 11 x 11 bright patch at a random place, class 0 images none; the patch's place
is the ground-truth region. The model before training (its own starting weights) is the control. For the
ResNet the control's maps do not concentrate on the patch, so what the trained map shows is learned. For
the ViT they do: 60 steps leave its weights close to where they started, and Grad-CAM of a ViT with weights
drawn by timm's initialiser lands on the bright tokens for some draws (and off them for others), so there
the energy test checks the plumbing -- token grid, prefix tokens, reshape -- not that the map explains the
decision. The model-randomisation check proper (Adebayo et al., 2018: against an independently
re-initialised copy, ``randomized_copy``) is the ``cam_randomization`` tests below.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from ssl_hpc.explain.cams import compute_cams, resolve_target
from ssl_hpc.explain.localization import energy_inside
from ssl_hpc.models.backbones import BackboneRequest, build_backbone
from ssl_hpc.models.classifier import Classifier, Preprocess, build_head

SIZE, PATCH = 28, 11
AREA = PATCH * PATCH / SIZE**2  # 0.154: what a map spread evenly would score


def patch_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Float images in [0, 1] (noise below 96/255; the patch at 1.0), labels, and the patch masks."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (count,), generator=generator)
    images = torch.randint(0, 96, (count, 1, SIZE, SIZE), generator=generator).float()
    corners = torch.randint(0, SIZE - PATCH + 1, (count, 2), generator=generator)
    masks = np.zeros((count, SIZE, SIZE), dtype=bool)
    for index, (row, col) in enumerate(corners.tolist()):
        masks[index, row : row + PATCH, col : col + PATCH] = True
        if labels[index] == 1:
            images[index, :, row : row + PATCH, col : col + PATCH] = 255
    return images / 255, labels, masks


def classifier(backbone_name: str, request: BackboneRequest) -> Classifier:
    torch.manual_seed(0)
    backbone = build_backbone(backbone_name, request)
    return Classifier(
        Preprocess(1, 1, backbone.info.mean, backbone.info.std),
        backbone,
        build_head("linear", backbone.num_features, 2),
    )


def train(model: Classifier, steps: int) -> None:
    images, labels, _ = patch_images(1024, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(images), (64,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def energy_in_patch(model: Classifier, min_grid: int) -> tuple[float, str]:
    """Mean share of Grad-CAM energy inside the patch, over held-out class-1 images, for class 1."""
    images, labels, masks = patch_images(64, seed=1)
    with torch.no_grad():
        accuracy = (model(images).argmax(dim=1) == labels).float().mean().item()
    positive = (labels == 1).numpy()
    target = resolve_target(model, images[:1], min_grid=min_grid)
    maps = compute_cams(model, images[positive], "gradcam", target, labels[positive].numpy())
    return float(np.nanmean(energy_inside(maps, masks[positive]))), f"{target.name} {target.grid} acc={accuracy:.2f}"


MODELS = {
    # backbone, request, training steps, cam.min_cam_grid. The ResNet's layer4 is a 4 x 4 grid at 28 px
    # (7 px cells: too coarse to outline an 11 px patch); min_cam_grid 7 moves the CAM to the last block
    # of layer3 (7 x 7), as a user would. The ViT has 4 px patches: a 7 x 7 token grid.
    "resnet18": ("resnet18", BackboneRequest(1, SIZE, stem="small"), 30, 7),
    "vit": ("vit_mini", BackboneRequest(1, SIZE), 60, 4),
}


@functools.cache
def trained(name: str) -> Classifier:
    backbone_name, request, steps, _ = MODELS[name]
    model = classifier(backbone_name, request)
    train(model, steps)
    return model


@pytest.mark.parametrize("name", list(MODELS))
def test_gradcam_puts_most_of_its_energy_on_the_deciding_patch(name):
    backbone_name, request, _, min_grid = MODELS[name]
    untrained, _ = energy_in_patch(classifier(backbone_name, request), min_grid)
    share, where = energy_in_patch(trained(name), min_grid)
    assert share > 0.5, (share, where)  # most of the map is on the patch that decides the class
    if name == "resnet18":
        assert untrained < 2 * AREA < share, (untrained, share, where)  # and that is learned, not chance


def test_resnet_default_layer4_map_still_prefers_the_patch():
    """The default layer (layer4, 4 x 4 here) is coarse but must still favour the patch over chance."""
    share, where = energy_in_patch(trained("resnet18"), min_grid=4)
    assert "layer4" in where
    assert share > 2 * AREA, (share, where)


def test_cam_blank_fraction_counts_constant_maps():
    from ssl_hpc.explain.sanity import blank_fraction

    maps = np.zeros((4, 7, 7))
    maps[0, 3, 3] = 1.0
    maps[1] = 0.5  # constant but not zero: still nothing to see
    maps[2, :, :3] = 0.2
    assert blank_fraction(maps) == 0.5


def test_cam_randomization_check_passes_for_a_trained_resnet_and_fails_for_a_copy():
    """Grad-CAM of the trained ResNet on the deciding patch barely resembles that of the same network
    re-initialised; a map that ignores the weights (the same maps twice) correlates perfectly."""
    from ssl_hpc.explain.sanity import RANDOMIZATION_FAIL_ABOVE, randomization_spearman, randomized_copy

    model = trained("resnet18")
    images, labels, _ = patch_images(32, seed=1)
    target = resolve_target(model, images[:1], min_grid=7)
    maps = compute_cams(model, images, "gradcam", target, labels.numpy())
    twin = randomized_copy(model)
    assert not torch.equal(next(twin.parameters()), next(model.parameters()))  # re-initialised, a copy
    random_maps = compute_cams(twin, images, "gradcam", resolve_target(twin, images[:1], target.name), labels.numpy())
    assert randomization_spearman(maps, random_maps) < RANDOMIZATION_FAIL_ABOVE
    assert randomization_spearman(maps, maps) == pytest.approx(1.0)


def test_cam_randomization_vit_gradcam_reads_the_last_attention_and_passes_the_check():
    """ViT Grad-CAM at the default layer, the last block's norm1 with the class token dropped and the patch
    tokens laid on their 7 x 7 grid: the trained model's maps are not those of its re-initialised copy.
    The layer is the last one whose patch tokens still reach the head (through the last attention's keys and
    values); a class-token head takes nothing from the block's output patch tokens, whose maps are blank."""
    from ssl_hpc.explain.sanity import RANDOMIZATION_FAIL_ABOVE, blank_fraction, randomization_spearman, randomized_copy

    model = trained("vit")
    images, labels, _ = patch_images(32, seed=1)
    target = resolve_target(model, images[:1])
    assert (target.name, target.grid, target.tokens) == ("backbone.body.blocks.3.norm1", (7, 7), True)
    maps = compute_cams(model, images, "gradcam", target, labels.numpy())
    assert blank_fraction(maps) == 0.0
    after = resolve_target(model, images[:1], "backbone.body.blocks.3")
    assert blank_fraction(compute_cams(model, images, "gradcam", after, labels.numpy())) == 1.0
    twin = randomized_copy(model)
    random_maps = compute_cams(twin, images, "gradcam", resolve_target(twin, images[:1], target.name), labels.numpy())
    assert randomization_spearman(maps, random_maps) < RANDOMIZATION_FAIL_ABOVE


def test_cam_randomization_vit_gradcam_of_random_weights_follows_the_input_with_a_random_sign():
    """Why one draw of the check is fragile for ViTs: with weights drawn by timm's own initialiser, Grad-CAM
    of a ViT that learned nothing puts most of its energy on the bright patch for some draws and almost none
    for others (its random channel weights set the sign of an input-driven map). Its rank correlation with
    the trained maps swings with them, across RANDOMIZATION_FAIL_ABOVE (on this task, -0.7 to 0.9 over 8
    draws; with ``randomized_copy``'s PyTorch re-initialisation -0.3 to 0.4)."""
    from ssl_hpc.explain.sanity import randomized_copy

    model = trained("vit")
    images, labels, masks = patch_images(32, seed=1)
    positive = (labels == 1).numpy()
    target = resolve_target(model, images[:1])
    shares = []
    for seed in range(6):
        twin = randomized_copy(model, seed)
        torch.manual_seed(seed)
        twin.backbone.body.init_weights()  # timm's initialiser: how the trained model started
        maps = compute_cams(twin, images[positive], "gradcam", target_of(twin, target.name), labels[positive].numpy())
        shares.append(float(np.nanmean(energy_inside(maps, masks[positive]))))
    assert max(shares) > 0.5 > 0.2 > min(shares), shares


def target_of(model: Classifier, name: str):
    return resolve_target(model, torch.zeros(1, 1, SIZE, SIZE), name)

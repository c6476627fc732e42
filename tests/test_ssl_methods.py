"""Every pretext method learns on a fixed batch; views differ; weights carry over to fine-tuning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from ssl_hpc.config import PretrainSettings
from ssl_hpc.data.augment import view_augmentation
from ssl_hpc.evaluate.knn import knn_probs
from ssl_hpc.models.backbones import BackboneRequest, build_backbone
from ssl_hpc.models.classifier import Preprocess
from ssl_hpc.models.methods import METHODS
from ssl_hpc.models.methods.rotnet import rotated_batch
from ssl_hpc.train.optim import build_optimizer, set_lr
from ssl_hpc.train.pretrain import PretextTask

PRETEXT = sorted(name for name, spec in METHODS.items() if spec.needs_pretraining)
SIZE = 28


def fixed_batch(n: int = 32, seed: int = 0) -> torch.Tensor:
    """Structured grayscale images (blobs at random places), uint8 [n, 1, 28, 28]."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    centres = torch.randint(6, SIZE - 6, (n, 2, 2), generator=generator)
    images = torch.zeros(n, 1, SIZE, SIZE)
    for blob in range(2):
        cy, cx = centres[:, blob, 0].view(-1, 1, 1), centres[:, blob, 1].view(-1, 1, 1)
        images[:, 0] += torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (8.0 + 8 * blob))
    return (255 * images / images.amax(dim=(1, 2, 3), keepdim=True)).to(torch.uint8)


def make_task(method: str, seed: int = 0) -> PretextTask:
    torch.manual_seed(seed)
    spec = METHODS[method]
    backbone = "vit_mini" if spec.backbone_families == ("vit",) else "resnet18"
    request = BackboneRequest(
        in_channels=1, image_size=SIZE, stem="imagenet", vit_pool=spec.model_defaults.get("vit_pool", "token")
    )
    settings = PretrainSettings(**spec.pretrain_defaults, epochs=10)
    model = spec.build_pretext(backbone, request, settings)
    preprocess = Preprocess(1, 1, model.backbone.info.mean, model.backbone.info.std)
    augment = view_augmentation(spec.view_preset, SIZE, 1)
    return PretextTask(model, preprocess, augment, spec.views)


def digit_batch(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Real handwritten digits (scikit-learn ships 1,797 of them, 8 x 8) enlarged to 28 px, uint8
    [n, 1, 28, 28]: real structure for the contrastive methods, and an upright orientation for RotNet
    to learn (the blobs of :func:`fixed_batch` look the same at every angle)."""
    digits = load_digits().images  # float 0..16
    chosen = torch.randperm(len(digits), generator=torch.Generator().manual_seed(seed))[:n]
    images = torch.as_tensor(digits[chosen.numpy()], dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.pad(F.interpolate(images, size=(SIZE - 4, SIZE - 4), mode="bilinear", align_corners=False), (2,) * 4)
    return (255 * images.clamp(0, 1)).round().to(torch.uint8)


def pretext_loss(task: PretextTask, images: torch.Tensor, state: dict, seeds) -> float:
    """The loss of the weights in ``state`` on the fixed batch with fixed views (the augmentation
    draws of ``seeds``); ``state`` is reloaded before each draw because a forward pass moves memory
    banks and centres."""
    values = []
    with torch.no_grad():
        for seed in seeds:
            task.module.load_state_dict(state)
            torch.manual_seed(seed)
            values.append(float(task.loss(images, torch.zeros(len(images), dtype=torch.long))))
    return sum(values) / len(values)


def snapshot(module: torch.nn.Module) -> dict:
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


# Measured on two machines with the settings below: every method's loss falls by 4-80 % on both the
# views it trained on and fresh ones, while two draws of views of the same weights differ by ~1 %.
STEPS = 40
MIN_RELATIVE_DECREASE = 0.02


def relative_decrease(method: str, lr_scale: float = 1.0) -> dict[str, float]:
    """Trains ``method`` for :data:`STEPS` steps on a fixed batch of digits with the optimiser and
    learning rate a sweep gives it (its own pretraining defaults), then returns how much its loss fell,
    relative to the untrained weights, on views it trained on (``seen``) and on fresh draws of views
    (``fresh``): learning, not memorising one draw of the augmentation."""
    images = digit_batch()
    task = make_task(method)
    task.set_train_mode()
    settings = PretrainSettings(**METHODS[method].pretrain_defaults)
    optimizer = build_optimizer(settings, task.param_groups())
    set_lr(optimizer, settings.lr * lr_scale)
    initial = snapshot(task.module)
    for step in range(STEPS):
        torch.manual_seed(100 + step)
        loss = task.loss(images, torch.zeros(len(images), dtype=torch.long))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        task.after_step((step + 1) / STEPS)
    trained = snapshot(task.module)
    # Judge both weight sets against the same loss state (MoCo's memory bank, DINO's centre): the
    # one training left, so only the weights differ.
    loss_state = {name: tensor for name, tensor in trained.items() if name.startswith("criterion.")}
    draws = {"seen": [100, 100 + STEPS // 2, 100 + STEPS - 1], "fresh": [11, 12, 13]}
    decrease = {}
    for name, seeds in draws.items():
        before = pretext_loss(task, images, {**initial, **loss_state}, seeds)
        after = pretext_loss(task, images, trained, seeds)
        decrease[name] = (before - after) / abs(before)
    return decrease


@pytest.mark.parametrize("method", PRETEXT)
def test_each_method_learns_with_its_own_optimiser_on_seen_and_fresh_views(method):
    decrease = relative_decrease(method)
    assert min(decrease.values()) >= MIN_RELATIVE_DECREASE, f"{method}: relative loss decrease {decrease}"


def test_the_learning_check_fails_when_the_weights_do_not_move(method="simclr"):
    """The control: with a learning rate of zero (the loss's gradient switched off) the same check
    must fail, or the test above would prove nothing."""
    decrease = relative_decrease(method, lr_scale=0.0)
    assert max(decrease.values()) < MIN_RELATIVE_DECREASE, decrease


@pytest.mark.parametrize("preset,channels", [("contrastive", 1), ("contrastive", 3), ("crop_flip", 1)])
def test_two_views_of_one_image_differ_and_views_differ_across_the_batch(preset, channels):
    torch.manual_seed(0)
    one = fixed_batch(1)[0].float() / 255
    batch = one.expand(16, channels, SIZE, SIZE).contiguous()  # sixteen copies of the same image
    augment = view_augmentation(preset, SIZE, channels)
    first, second = augment(batch), augment(batch)
    assert all(not torch.allclose(first[i], second[i]) for i in range(16))  # two views of an image differ
    distinct = {tuple(first[i].flatten()[:64].tolist()) for i in range(16)}
    assert len(distinct) == 16  # random per sample, not one draw for the whole batch


def test_pretext_task_makes_the_method_s_number_of_views():
    images = fixed_batch(4)
    assert len(make_task("simclr").make_views(images)) == 2
    assert len(make_task("rotnet").make_views(images)) == 1


def test_rotations_cover_the_four_angles():
    images = fixed_batch(3).float()
    rotated, labels = rotated_batch(images)
    assert rotated.shape[0] == 12 and labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert torch.equal(rotated[3:6], torch.rot90(images, 1, dims=(2, 3)))


def test_aim_weights_load_into_the_plain_vit_used_for_fine_tuning():
    task = make_task("aim")
    plain = build_backbone("vit_mini", BackboneRequest(1, SIZE, vit_pool="avg"))
    plain.load_state_dict(task.module.backbone.state_dict())  # strict: same keys, same shapes
    images = torch.rand(2, 1, SIZE, SIZE)
    task.module.backbone.eval(), plain.eval()
    causal = task.module.backbone.body.forward_features(images)  # without a mask: bidirectional attention
    assert torch.allclose(causal, plain.body.forward_features(images), atol=1e-5)


def test_mae_trains_the_backbone_s_own_weights():
    task = make_task("mae")
    before = {name: tensor.clone() for name, tensor in task.module.backbone.state_dict().items()}
    loss = task.loss(fixed_batch(8), torch.zeros(8, dtype=torch.long))
    loss.backward()
    torch.optim.SGD(task.param_groups(), lr=0.1).step()
    changed = [
        name for name, tensor in task.module.backbone.state_dict().items() if not torch.equal(before[name], tensor)
    ]
    assert any(name.startswith("body.blocks.0.") for name in changed)


def test_knn_votes_for_the_nearest_class():
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    queries = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05], [0.05, 1.0]]), dim=1)
    probs = knn_probs(bank, labels, queries, num_classes=3, k=3)
    assert probs.argmax(dim=1).tolist() == [0, 1]
    assert torch.allclose(probs.sum(dim=1), torch.ones(2))
    assert (probs[:, 2] == 0).all()


@pytest.mark.parametrize("method", ["mocov2", "byol", "dino"])
def test_momentum_teacher_starts_from_weights_loaded_into_the_backbone(method):
    """Continued pretraining (model.pretrained_weights) loads weights after the teacher was copied."""
    model = make_task(method).module
    torch.manual_seed(99)
    donor = build_backbone("resnet18", BackboneRequest(1, SIZE, stem="imagenet"))
    model.backbone.load_state_dict(donor.state_dict())
    model.backbone_loaded()
    teachers = [m.teacher[0] for m in model.modules() if type(m).__name__ == "MomentumTeacher"]
    assert teachers
    for teacher in teachers:
        for name, tensor in teacher.state_dict().items():
            assert torch.equal(tensor, donor.state_dict()[name]), name


@pytest.mark.parametrize("target", ["next_patch", "same_patch"])
def test_aim_next_patch_prediction_never_sees_its_target(target):
    """AIM regresses the *next* patch: the prediction paired with patch t comes from positions that cannot
    see patch t. lightly's example (``same_patch``, the thesis's AIM) pairs position t with patch t, which
    causal attention lets it see: it can learn to copy its input."""
    torch.manual_seed(0)
    request = BackboneRequest(in_channels=1, image_size=SIZE, vit_pool="avg")
    model = METHODS["aim"].build_pretext("vit_mini", request, PretrainSettings(aim_target=target)).eval()
    images = torch.rand(2, 1, SIZE, SIZE)
    mask = torch.ones(2, model.num_patches, dtype=torch.bool)  # no prefix: every position causal
    size, per_row = model.patch_size, SIZE // model.patch_size
    t = model.num_patches // 2
    perturbed = images.clone()
    top, left = (t // per_row) * size, (t % per_row) * size
    perturbed[:, :, top : top + size, left : left + size] = torch.rand(2, 1, size, size)
    with torch.no_grad():
        before, targets, counted = model.predictions_and_targets(images, mask)
        after, new_targets, _ = model.predictions_and_targets(perturbed, mask)
    pair = t - 1 if target == "next_patch" else t  # the pair whose target is patch t
    assert not torch.allclose(targets[:, pair], new_targets[:, pair])  # its target did change
    assert bool(counted[:, pair].all())
    if target == "next_patch":
        assert torch.allclose(before[:, pair], after[:, pair], atol=1e-6)  # ... its prediction cannot know
        assert torch.allclose(before[:, : pair + 1], after[:, : pair + 1], atol=1e-6)
    else:
        assert not torch.allclose(before[:, pair], after[:, pair], atol=1e-4)


def test_aim_next_patch_loss_leaves_the_prefix_out():
    torch.manual_seed(0)
    request = BackboneRequest(in_channels=1, image_size=SIZE, vit_pool="avg")
    model = METHODS["aim"].build_pretext("vit_mini", request, PretrainSettings())
    mask = torch.zeros(1, model.num_patches, dtype=torch.bool)
    mask[:, 10:] = True  # a prefix of 10 patches
    _, _, counted = model.predictions_and_targets(torch.rand(1, 1, SIZE, SIZE), mask)
    assert counted[0].tolist() == [False] * 9 + [True] * (model.num_patches - 10)  # targets 10.. only


def test_fair_recipes_dino_teacher_temperature_warms_up_and_vicreg_has_its_own_head():
    from lightly.models.modules.heads import VICRegProjectionHead

    dino = make_task("dino").module.criterion
    assert dino.teacher_temp_schedule[0] == pytest.approx(0.04) and dino.teacher_temp == pytest.approx(0.07)
    assert isinstance(make_task("vicreg").module.encoder[1], VICRegProjectionHead)
    assert not isinstance(make_task("barlowtwins").module.encoder[1], VICRegProjectionHead)
    assert make_task("mae").module.norm_pix_loss  # the MAE paper's default
    for method in ("mae", "aim"):
        assert METHODS[method].pretrain_defaults["warmup_epochs"] > 0  # AdamW from a cold start: warm up

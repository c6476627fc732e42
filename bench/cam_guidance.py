#!/usr/bin/env python
"""Does CAM guidance keep a classifier off a shortcut? Cross-entropy against CAM-guided fine-tuning on
images where a marker outside the region of interest gives the answer away.

Generated 28 px grayscale images: a textured square region (the mask, like a lung field) at a random place in
the left of the image, holding a faint blob in class 1 and none in class 0 (the real evidence), and a
bright glyph in the right margin, outside every mask, that names the class (the shortcut: a text label
burnt into an X-ray). The glyph agrees with the class in train, validation and the normal test set; in the
second test set it is drawn at random, so a model that reads the glyph drops to chance there.

The same small CNN (``small_cnn``, from the same seed) is trained with CE only and with
``finetune.guidance`` through the suite's own fine-tune task and training loop (model selection on
val_acc), then scored on both test sets, with the Grad-CAM energy inside the mask of the predicted class
(as the explain step computes ``cam_gradcam_energy_inside``) on the normal test set.

Last output line: ``{"ce": {"acc", "acc_shuffled", "energy_inside", ...}, "guided": {...}}``.

The guided runs use each loss at its defaults (weighted_sum: k1 = k2 = k3 = 1; division: epsilon 0.01); the
first of ``--losses`` is the one reported as ``guided``, the others as ``guided_<loss>``.

Usage: python bench/cam_guidance.py [--epochs 12] [--train 3000] [--losses weighted_sum product division]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ssl_hpc.config import GUIDANCE_LOSSES, FinetuneSettings, GuidanceSettings  # noqa: E402
from ssl_hpc.data.augment import to_unit_float  # noqa: E402
from ssl_hpc.data.splits import ImageSplit  # noqa: E402
from ssl_hpc.evaluate.predict import predict_logits  # noqa: E402
from ssl_hpc.explain.cams import compute_cams, resolve_target  # noqa: E402
from ssl_hpc.explain.localization import localization_scores  # noqa: E402
from ssl_hpc.models.backbones import BackboneRequest, build_backbone  # noqa: E402
from ssl_hpc.models.classifier import Classifier, Preprocess, build_head  # noqa: E402
from ssl_hpc.train.finetune import ClassificationTask  # noqa: E402
from ssl_hpc.train.guidance import GuidedClassificationTask, pack_masks  # noqa: E402
from ssl_hpc.train.loop import Precision, fit  # noqa: E402

SIZE = 28
REGION = 12  # side of the square region (the mask)
# Two glyphs of the "text label": an L and a T, 6 x 4 px, drawn in the right margin (x >= 22).
GLYPHS = {
    0: np.array([[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]),
    1: np.array([[1, 1, 1, 1], [0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0]]),
}


def generate(count: int, seed: int, marker_agrees: bool) -> tuple[ImageSplit, torch.Tensor]:
    """``count`` images (half of each class) and their masks; the glyph names the class, or is random."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % 2)
    images = rng.normal(40, 12, size=(count, SIZE, SIZE))
    masks = np.zeros((count, SIZE, SIZE), dtype=np.uint8)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for index, label in enumerate(labels):
        top, left = rng.integers(1, SIZE - REGION - 1), rng.integers(1, 21 - REGION)
        masks[index, top : top + REGION, left : left + REGION] = 1
        images[index, top : top + REGION, left : left + REGION] += 50 + rng.normal(0, 14, size=(REGION, REGION))
        if label == 1:  # a faint blob somewhere inside the region: the evidence
            cy, cx = top + rng.uniform(3, REGION - 3), left + rng.uniform(3, REGION - 3)
            images[index] += 35 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5**2)) * masks[index]
        glyph = GLYPHS[int(label) if marker_agrees else int(rng.integers(0, 2))]
        row = rng.integers(2, SIZE - 8)
        images[index, row : row + 6, 23:27] += 170 * glyph
    split = ImageSplit(
        torch.from_numpy(np.clip(images, 0, 255).astype(np.uint8))[:, None], torch.from_numpy(labels).long()
    )
    return split, torch.from_numpy(masks)[:, None]


def small_cnn(seed: int) -> Classifier:
    torch.manual_seed(seed)
    backbone = build_backbone("small_cnn", BackboneRequest(1, SIZE))
    info = backbone.info
    return Classifier(Preprocess(1, 1, info.mean, info.std), backbone, build_head("linear", info.num_features, 2))


def train(guidance: GuidanceSettings | None, data: dict, epochs: int, seed: int, workdir: Path) -> Classifier:
    """One fine-tune run of the suite's task in the one training loop; the best epoch on val_acc is kept."""
    model = small_cnn(seed)
    settings = FinetuneSettings(
        epochs=epochs, batch_size=64, optimizer="adam", lr=2e-3, schedule="cosine", min_lr=0.0, guidance=guidance
    )
    (train_split, train_masks), (val, val_masks) = data["train"], data["val"]
    if guidance is None:
        task = ClassificationTask(model, ["*"], val, eval_batch_size=256)
    else:
        task = GuidedClassificationTask(model, ["*"], val, val_masks, guidance, eval_batch_size=256)
        train_split = pack_masks(train_split, train_masks)

    def report(epoch: int, metrics: dict[str, float]) -> None:
        shown = ("train_loss", "val_acc", "val_magtr", "val_mangtr", "train_magtr")
        print(f"  epoch {epoch}: " + ", ".join(f"{k} {metrics[k]:.3f}" for k in shown if k in metrics), flush=True)

    result = fit(
        task,
        train_split,
        settings,
        seed=seed,
        workdir=workdir,
        precision=Precision(torch.device("cpu")),
        select_by="val_acc",
        on_epoch_end=report,
    )
    if result.best_state is not None:
        model.load_state_dict(result.best_state)
    return model


def score(model: Classifier, data: dict) -> dict[str, float]:
    (test, masks), (shuffled, _) = data["test"], data["shuffled"]
    preds = predict_logits(model, test.images, 256).argmax(1)
    shuffled_preds = predict_logits(model, shuffled.images, 256).argmax(1)
    images = to_unit_float(test.images)
    target = resolve_target(model, images[:1], None, 4)
    maps = compute_cams(model, images, "gradcam", target, preds.numpy(), batch_size=256)
    local = localization_scores(maps, masks.numpy())
    return {
        "acc": float((preds == test.labels).float().mean()),
        "acc_shuffled": float((shuffled_preds == shuffled.labels).float().mean()),
        "energy_inside": local["energy_inside"],
        "magtr": local["magtr"],
        "mangtr": local["mangtr"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument(
        "--losses",
        nargs="+",
        choices=GUIDANCE_LOSSES,
        default=["weighted_sum", "product", "division"],
        help="the first is reported as 'guided', the others as 'guided_<loss>'",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = {
        "train": generate(args.train, 1, marker_agrees=True),
        "val": generate(500, 2, marker_agrees=True),
        "test": generate(1000, 3, marker_agrees=True),
        "shuffled": generate(1000, 4, marker_agrees=False),
    }
    print(f"data: {args.train} train, 500 val, 1000 test, 1000 marker-shuffled test (seed {args.seed})")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-cam-guidance-") as folder:
        runs = [("ce", None)] + [
            ("guided" if index == 0 else f"guided_{loss}", GuidanceSettings(loss=loss))
            for index, loss in enumerate(args.losses)
        ]
        for name, guidance in runs:
            print(f"{name}: {'cross-entropy only' if guidance is None else f'guidance {guidance.model_dump()}'}")
            started = time.perf_counter()
            model = train(guidance, data, args.epochs, args.seed, Path(folder) / name)
            results[name] = {**score(model, data), "minutes": (time.perf_counter() - started) / 60}
            shown = ", ".join(f"{k} {v:.3f}" for k, v in results[name].items())
            print(f"{name}: {shown}", flush=True)
    results["settings"] = {"epochs": args.epochs, "train": args.train, "losses": args.losses, "backbone": "small_cnn"}
    print(json.dumps(results))


if __name__ == "__main__":
    main()

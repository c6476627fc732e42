"""The ``cam:`` section of a sweep: which CAMs, on how many images, with which quality scores."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt, field_validator

from ssl_hpc.config.base import Strict

CamMethodName = Literal[
    "gradcam",
    "gradcam++",
    "xgradcam",
    "layercam",
    "eigencam",
    "scorecam",
    "ablationcam",
    "guided_gradcam",  # guided backpropagation x Grad-CAM (Selvaraju et al.): a pixel-level map
    "faster_scorecam",  # Score-CAM over the max_channels channels of highest variance
    "cam",  # the original CAM (Zhou et al., 2016): only for a global-average-pooling + one linear layer head
]


class CamSettings(Strict):
    """CAM figures and CAM quality scores computed at the end of every fine-tune run.

    Cost is bounded whatever the size of the test split: figures use at most
    ``images_per_class`` correct and as many incorrect test images per class, and the
    faithfulness / localization scores use one fixed, seeded set of at most ``max_images``
    test images (the same images for every run on the same test split, since ``seed`` is not
    the run's seed). Each score is logged with a 95 % bootstrap interval over those images (seeded
    with ``seed``), so how far a mean of ``max_images`` images can be trusted is on every run.
    """

    enabled: StrictBool = True
    # Grad-CAM++ by default: on the smoke sweep's ResNet-18 at 28 px (layer2, a 4 x 4 grid) Grad-CAM maps were
    # blank (all zero after its ReLU) for 51 % of test images and Grad-CAM++'s for none, and both pass the
    # model-randomisation check (rank correlation with a re-initialised model 0.01 and -0.06; LayerCAM: 0.60,
    # it fails). Every run logs cam_<method>_blank_fraction and cam_<method>_randomization_spearman.
    methods: list[CamMethodName] = Field(default_factory=lambda: ["gradcam++"], min_length=1)
    # A module path inside the Classifier (e.g. "backbone.body.layer3"); None -> the backbone's own
    # CAM layer (ResNet: last block of layer4; ViT: last block's norm1; small CNNs: last conv).
    target_layer: str | None = None
    # Only with target_layer None: if the default layer's map is coarser than this many cells on a
    # side (ResNet-18 with its ImageNet stem gives 1x1 at 28 px), the last block of the deepest
    # stage that is at least this fine is used instead; 1 never falls back.
    min_cam_grid: StrictInt = Field(4, ge=1, le=64)
    images_per_class: StrictInt = Field(4, ge=0, le=64)
    # The scored images: the faithfulness and localization scores, the randomisation check and the bootstrap
    # interval of each (cam_<method>_<score>_ci_low/_ci_high) use this many test images at most, one fixed
    # seeded set; their cost grows linearly with it and not with the test split. Default 64: the interval's
    # half-width is about 2 sd / sqrt(64) = sd / 4 of the per-image scores; a few hundred (256: half the
    # width) where time allows. ROAD dominates the time: per image and method, 2 * len(road_percentiles)
    # sparse infilling solves (measured on one CPU core: ~7 ms each at 28 px, ~0.1 s at 128 px) and as many
    # forward pairs, so ~0.06 s per image at 28 px and ~1 s at 128 px with the 4 default percentiles.
    max_images: StrictInt = Field(64, ge=1, le=100_000)
    seed: StrictInt = 0
    batch_size: StrictInt = Field(64, ge=1)
    scorecam_batch_size: StrictInt = Field(64, ge=1)
    # faster_scorecam: Score-CAM masks the image with this many activation channels of highest variance
    # (per image) instead of all of them (512 on a ResNet-18's layer4): its cost is one forward pass per
    # channel per image. With as many as the layer has it is Score-CAM exactly.
    max_channels: StrictInt = Field(32, ge=1)
    faithfulness: StrictBool = True
    road_percentiles: list[StrictInt] = Field(default_factory=lambda: [20, 40, 60, 80], min_length=1)
    topk_percent: StrictFloat = Field(10.0, gt=0, lt=100)
    display_size: StrictInt = Field(112, ge=28, le=512)

    @field_validator("methods")
    @classmethod
    def _distinct_methods(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError(f"repeated CAM methods in {values}")
        return values

    @field_validator("road_percentiles")
    @classmethod
    def _percentiles_in_range(cls, values: list[int]) -> list[int]:
        for value in values:
            if not 0 < value < 100:
                raise ValueError(f"ROAD percentile {value} is outside (0, 100); accepted: integers 1..99")
        if len(set(values)) != len(values):
            raise ValueError(f"repeated ROAD percentiles in {values}")
        return values

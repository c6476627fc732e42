"""``finetune.guidance``: CAM-guided fine-tuning (the saliency internship report).

The classifier is trained so that its class activation map for the true class falls inside the
ground-truth region: MAGTR is the mean of the (upsampled, per image [0, 1]-scaled) map inside the mask,
MANGTR its mean outside. Per image with a non-empty mask the loss is

- ``product``: ``CE * (1 - MAGTR)``
- ``division``: ``CE / (MAGTR + epsilon)`` -- ``epsilon`` keeps an all-zero map (a blank Grad-CAM, common
  at 28 px) from dividing by 0; such an image then weighs ``1 / epsilon`` times its CE, which is why this
  is the least stable of the three
- ``weighted_sum``: ``k1 * CE + k2 * (1 - MAGTR) + k3 * MANGTR``

and an image whose mask is empty contributes its CE only. Settings that only one loss or one map uses are
refused for the others (a value that would silently do nothing would also change the run key).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictFloat, StrictInt, model_validator

from ssl_hpc.config.base import FieldError, Strict, Text

GUIDANCE_LOSSES = ("product", "division", "weighted_sum")
GUIDANCE_MAPS = ("gradcam", "faster_scorecam")
# Filled in when the loss or map that reads them is chosen; refused otherwise.
_LOSS_ONLY = {"k1": ("weighted_sum", 1.0), "k2": ("weighted_sum", 1.0), "k3": ("weighted_sum", 1.0)}
_LOSS_ONLY["epsilon"] = ("division", 0.01)
_MAP_ONLY = {"max_channels": ("faster_scorecam", 32)}


class GuidanceSettings(Strict):
    """How the CAM guides fine-tuning. ``map``: ``gradcam`` is differentiated through the network
    (``create_graph``), so the loss reaches every trainable weight through both the activations and the
    gradient-derived channel weights; ``faster_scorecam`` weighs the ``max_channels`` channels of highest
    variance by forward passes on masked images, computed without gradient (as Score-CAM itself does):
    its loss reaches the weights through the activations only. ``layer``: a module path inside the
    classifier (e.g. ``backbone.body.layer3``); ``None`` is the layer the explain step picks by default
    (the backbone's CAM layer, or the deepest stage with at least a 4 x 4 grid)."""

    loss: Literal["product", "division", "weighted_sum"]
    k1: StrictFloat | None = Field(None, ge=0)
    k2: StrictFloat | None = Field(None, ge=0)
    k3: StrictFloat | None = Field(None, ge=0)
    epsilon: StrictFloat | None = Field(None, gt=0, le=1)
    map: Literal["gradcam", "faster_scorecam"] = "gradcam"
    max_channels: StrictInt | None = Field(None, ge=1)
    layer: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_and_refuse(cls, values: Any) -> Any:
        """Fills the defaults of the settings the chosen loss and map read; refuses the others by name."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        for name, (owner, default) in _LOSS_ONLY.items():
            values = _owned(values, name, "loss", owner, default, values.get("loss"), GUIDANCE_LOSSES)
        for name, (owner, default) in _MAP_ONLY.items():
            values = _owned(values, name, "map", owner, default, values.get("map", "gradcam"), GUIDANCE_MAPS)
        return values


def _owned(values: dict, name: str, selector: str, owner: str, default: object, chosen: object, accepted) -> dict:
    if chosen not in accepted:
        return values  # the Literal check names the accepted values
    if chosen == owner:
        if values.get(name) is None:
            values[name] = default
    elif values.get(name) is not None:
        raise FieldError(
            f"finetune.guidance.{name}",
            f"{name} is only read by {selector}: {owner} (this is {selector}: {chosen}); remove it",
        )
    return values


def guided_sections(finetune: Any, overrides: dict[str, dict[str, Any]]) -> list[str]:
    """The fields that turn guidance on: ``finetune.guidance`` (unless every model's override turns it
    off) and each ``methods.<m>.finetune.guidance`` / ``variants.<v>.finetune.guidance`` given.
    ``overrides`` maps ``methods.<m>`` / ``variants.<v>`` to their raw ``finetune`` sections."""
    sections = [f"{where}.finetune.guidance" for where, section in overrides.items() if section.get("guidance")]
    if finetune.guidance is not None:
        sections.insert(0, "finetune.guidance")
    return sections


def masks_refusal(field: str, dataset: str, has_masks: bool | None) -> str | None:
    """Why ``dataset`` cannot be fine-tuned with guidance (``has_masks``: ``None`` for a MedMNIST dataset,
    else whether the image folder declares masks), or ``None``."""
    if has_masks:
        return None
    what = "a MedMNIST dataset, which has no masks" if has_masks is None else "an image folder without masks"
    return (
        f"{field} needs ground-truth masks, but dataset {dataset!r} is {what}; accepted: an image folder "
        "declared under datasets: with masks_subdir or mask_root (or remove the guidance)"
    )

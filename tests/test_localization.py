"""Localization scores of a CAM against a ground-truth region, on hand-made maps and masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ssl_hpc.explain.localization import boxes_to_masks, energy_inside, localization_scores, magtr, mangtr


def square_mask(size: int = 8, top: int = 2, left: int = 2, side: int = 4) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_map_entirely_inside_the_region():
    mask = square_mask()
    cam = mask.astype(float) * 0.8
    assert energy_inside(cam, mask)[0] == pytest.approx(1.0)
    assert magtr(cam, mask)[0] == pytest.approx(0.8)
    assert mangtr(cam, mask)[0] == pytest.approx(0.0)


def test_map_entirely_outside_the_region():
    mask = square_mask()
    cam = (~mask).astype(float)
    assert energy_inside(cam, mask)[0] == pytest.approx(0.0)
    assert magtr(cam, mask)[0] == pytest.approx(0.0)
    assert mangtr(cam, mask)[0] == pytest.approx(1.0)


def test_uniform_map_scores_the_area_share_and_equal_means():
    mask = square_mask()  # 16 of 64 pixels
    cam = np.full((8, 8), 0.5)
    assert energy_inside(cam, mask)[0] == pytest.approx(16 / 64)
    assert magtr(cam, mask)[0] == pytest.approx(0.5)
    assert mangtr(cam, mask)[0] == pytest.approx(0.5)


def test_hand_computed_mixed_map():
    # 4x4 image, region = left column (4 pixels); map: 1 on the region's top two pixels,
    # 0.5 on two pixels outside, 0 elsewhere.
    mask = np.zeros((4, 4), dtype=bool)
    mask[:, 0] = True
    cam = np.zeros((4, 4))
    cam[0, 0] = cam[1, 0] = 1.0
    cam[0, 3] = cam[3, 3] = 0.5
    assert energy_inside(cam, mask)[0] == pytest.approx(2.0 / 3.0)  # 2 of a total 3
    assert magtr(cam, mask)[0] == pytest.approx(2.0 / 4)  # mean over the 4 region pixels
    assert mangtr(cam, mask)[0] == pytest.approx(1.0 / 12)  # 1.0 spread over 12 outside pixels


def test_batch_means_skip_undefined_images():
    masks = np.stack([square_mask(), np.zeros((8, 8), bool), np.ones((8, 8), bool)])
    maps = np.stack([square_mask().astype(float), np.ones((8, 8)), np.zeros((8, 8))])
    per_image = energy_inside(maps, masks)
    assert per_image[0] == pytest.approx(1.0)
    assert math.isnan(per_image[1])  # empty region
    assert math.isnan(per_image[2])  # all-zero map
    assert math.isnan(mangtr(maps, masks)[2])  # region is the whole image: no outside
    scores = localization_scores(maps, masks)
    assert scores["energy_inside"] == pytest.approx(1.0)
    assert scores["magtr"] == pytest.approx((1.0 + 0.0) / 2)  # images 0 and 2 have a region
    assert scores["mangtr"] == pytest.approx((0.0 + 1.0) / 2)  # images 0 and 1 have an outside


def test_masks_with_a_channel_axis_and_integer_values():
    mask = square_mask().astype(np.uint8)[None, None]  # [1, 1, H, W], {0, 1}
    cam = square_mask().astype(float)[None]
    assert energy_inside(cam, mask)[0] == pytest.approx(1.0)


def test_shape_mismatch_and_negative_maps_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        energy_inside(np.zeros((2, 8, 8)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="non-negative"):
        magtr(-np.ones((8, 8)), square_mask())


def test_boxes_become_masks():
    masks = boxes_to_masks([(1, 2, 4, 3), (0.5, 0.5, 1.2, 1.0), (-3, 6, 20, 20), (np.nan,) * 4], height=8, width=8)
    assert masks.shape == (4, 8, 8)
    expected = np.zeros((8, 8), bool)
    expected[2:3, 1:4] = True  # x in [1, 4), y in [2, 3)
    assert (masks[0] == expected).all()
    assert masks[1].sum() == 2 and masks[1][0, 0] and masks[1][0, 1]  # fractional edges round outwards
    assert masks[2].sum() == 2 * 8 and masks[2][6:].all()  # clipped to the image
    assert not masks[3].any()  # no box
    with pytest.raises(ValueError, match="x0 <= x1"):
        boxes_to_masks([(4, 0, 1, 2)], 8, 8)


def test_box_scores_match_mask_scores():
    cam = np.zeros((8, 8))
    cam[2:6, 2:6] = 1.0
    cam[0, 0] = 1.0
    from_box = localization_scores(cam[None], boxes_to_masks([(2, 2, 6, 6)], 8, 8))
    from_mask = localization_scores(cam[None], square_mask()[None])
    assert from_box == pytest.approx(from_mask)
    assert from_box["energy_inside"] == pytest.approx(16 / 17)

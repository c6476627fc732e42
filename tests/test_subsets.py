"""Label budgets: stratified, seeded, nested; labels_per_class."""

from __future__ import annotations

import numpy as np
import pytest

from ssl_hpc.data.subsets import label_subset

LABELS = np.repeat(np.arange(4), [400, 100, 40, 7])
np.random.default_rng(0).shuffle(LABELS)


def counts(indices: np.ndarray) -> np.ndarray:
    return np.bincount(LABELS[indices], minlength=4)


def test_full_fraction_keeps_everything():
    assert np.array_equal(label_subset(LABELS, seed=1, fraction=1.0), np.arange(len(LABELS)))


@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.1, 0.01])
def test_fraction_is_stratified(fraction):
    kept = counts(label_subset(LABELS, seed=3, fraction=fraction))
    expected = np.maximum(1, np.floor(np.array([400, 100, 40, 7]) * fraction + 0.5))
    assert np.array_equal(kept, expected)


def test_every_class_keeps_at_least_one_label():
    assert (counts(label_subset(LABELS, seed=0, fraction=0.001)) >= 1).all()


def test_seeded_reproducible_and_seed_dependent():
    assert np.array_equal(label_subset(LABELS, 7, 0.25), label_subset(LABELS, 7, 0.25))
    assert not np.array_equal(label_subset(LABELS, 7, 0.25), label_subset(LABELS, 8, 0.25))


def test_subsets_are_nested_for_one_seed():
    for seed in range(5):
        half = set(label_subset(LABELS, seed, 0.5))
        quarter = set(label_subset(LABELS, seed, 0.25))
        tenth = set(label_subset(LABELS, seed, 0.1))
        assert tenth <= quarter <= half
        few = set(label_subset(LABELS, seed, per_class=3))
        more = set(label_subset(LABELS, seed, per_class=10))
        assert few <= more


def test_labels_per_class_takes_k_of_each_class():
    kept = label_subset(LABELS, seed=2, per_class=10)
    assert np.array_equal(counts(kept), [10, 10, 10, 7])  # the 7-example class gives all it has
    assert len(np.unique(kept)) == len(kept)


def test_rotation_report_setting_100_labels_on_ten_classes():
    labels = np.repeat(np.arange(10), 600)
    assert len(label_subset(labels, seed=0, per_class=10)) == 100


@pytest.mark.parametrize(
    "kwargs", [{"fraction": 0.0}, {"fraction": 1.5}, {"per_class": 0}, {"fraction": 0.5, "per_class": 3}]
)
def test_invalid_budgets(kwargs):
    with pytest.raises(ValueError):
        label_subset(LABELS, seed=0, **kwargs)

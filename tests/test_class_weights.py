"""Class-weight rules, including the thesis's on the BloodMNIST counts it quotes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from ssl_hpc.data.class_weights import class_counts, class_weights

BLOOD_COUNTS = np.array([852, 2181, 1085, 2026, 849, 993, 2330, 1643])


def test_thesis_rule_on_bloodmnist_counts():
    weights = class_weights("inverse_count_complement", BLOOD_COUNTS)
    total = 11959
    assert BLOOD_COUNTS.sum() == total
    assert weights == pytest.approx((total - BLOOD_COUNTS) / total)
    assert weights[0] == pytest.approx(11107 / 11959)  # 0.92876
    assert weights[6] == pytest.approx(9629 / 11959)  # 0.80517, the largest class weighs least
    assert weights.argmin() == BLOOD_COUNTS.argmax() and weights.argmax() == BLOOD_COUNTS.argmin()


def test_inverse_frequency_is_sklearn_balanced():
    labels = np.repeat(np.arange(8), BLOOD_COUNTS)
    expected = compute_class_weight("balanced", classes=np.arange(8), y=labels)
    assert class_weights("inverse_frequency", BLOOD_COUNTS) == pytest.approx(expected)


def test_effective_number_formula_and_scale():
    beta = 0.99
    weights = class_weights("effective_number", BLOOD_COUNTS[:3], beta=beta)
    raw = (1 - beta) / (1 - beta ** BLOOD_COUNTS[:3].astype(float))
    assert weights == pytest.approx(raw * 3 / raw.sum())
    assert weights.sum() == pytest.approx(3)


def test_effective_number_tends_to_inverse_frequency_as_beta_grows():
    counts = np.array([10, 100])
    weights = class_weights("effective_number", counts, beta=0.999999)
    assert weights[0] / weights[1] == pytest.approx(10, rel=1e-3)


def test_none_means_unweighted():
    assert class_weights("none", BLOOD_COUNTS) is None


def test_missing_class_is_an_error():
    with pytest.raises(ValueError, match=r"classes \[1\]"):
        class_weights("inverse_frequency", np.array([5, 0, 3]))


def test_unknown_rule_lists_accepted():
    with pytest.raises(ValueError, match="accepted: none, inverse_count_complement"):
        class_weights("balanced", BLOOD_COUNTS)


def test_class_counts():
    assert class_counts(np.array([0, 2, 2]), 4).tolist() == [1, 0, 2, 0]


def test_critical_class_weight_by_name_or_index():
    names = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    counts = np.array([10, 20, 30, 5])
    assert class_weights("critical:COVID=3", counts, class_names=names).tolist() == [3, 1, 1, 1]
    assert class_weights("critical:2=1.5", counts, class_names=names).tolist() == [1, 1, 1.5, 1]
    with pytest.raises(ValueError, match="no class 'Covid'; accepted: COVID"):
        class_weights("critical:Covid=3", counts, class_names=names)


def test_critical_rule_syntax_is_checked_in_the_grid():
    from ssl_hpc.config import ConfigError, validate_sweep
    from ssl_hpc.jobs import expand_jobs

    base = {"name": "x", "grid": {"dataset": ["pneumoniamnist"], "method": ["supervised"]}}
    validate_sweep({**base, "grid": {**base["grid"], "class_weight": ["critical:pneumonia=2"]}})
    with pytest.raises(ConfigError, match=r"grid.class_weight.*critical:<class>=<weight>"):
        expand_jobs(validate_sweep({**base, "grid": {**base["grid"], "class_weight": ["critical:pneumonia"]}}))

"""The bootstrap interval of a CAM score over images (ssl_hpc.explain.intervals): against hand computations
and scipy's bootstrap, seeded, narrowing with more images."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom, bootstrap

from ssl_hpc.explain.intervals import bootstrap_interval, with_intervals


def test_cam_interval_of_two_images_by_hand():
    # Resampling [0, 1] gives a mean of 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4: the 2.5th percentile
    # is 0 and the 97.5th is 1.
    assert bootstrap_interval(np.array([0.0, 1.0]), resamples=4000) == (0.0, 1.0)
    # [0, 0, 0, 1]: the resampled mean is Binomial(4, 1/4) / 4. P(0) = 0.32 > 2.5 %, so low = 0;
    # P(<= 2) = 0.949 < 97.5 % < P(<= 3) = 0.996, so high = 3/4.
    assert bootstrap_interval(np.array([0.0, 0.0, 0.0, 1.0]), resamples=20000) == (0.0, 0.75)
    assert bootstrap_interval(np.array([0.3])) == (0.3, 0.3)  # one image: nothing to resample


def test_cam_interval_of_binary_scores_matches_the_binomial_quantiles():
    # A share (like blank_fraction) of k of n images: its bootstrap distribution is Binomial(n, k/n) / n.
    n, k = 60, 9
    values = np.r_[np.ones(k), np.zeros(n - k)]
    low, high = bootstrap_interval(values, resamples=40000, seed=3)
    assert low == pytest.approx(binom.ppf(0.025, n, k / n) / n, abs=1 / n + 1e-9)
    assert high == pytest.approx(binom.ppf(0.975, n, k / n) / n, abs=1 / n + 1e-9)


def test_cam_interval_matches_scipys_percentile_bootstrap():
    values = np.random.default_rng(0).gamma(2.0, 0.1, size=150)  # skewed, like a ROAD score
    ours = bootstrap_interval(values, resamples=20000, seed=1)
    theirs = bootstrap(
        (values,), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95, random_state=2
    ).confidence_interval
    width = theirs.high - theirs.low
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.03 * width)
    assert ours[0] < values.mean() < ours[1]


def test_cam_interval_narrows_with_more_images_and_is_seeded():
    rng = np.random.default_rng(0)
    few, many = rng.normal(0.2, 0.3, 25), rng.normal(0.2, 0.3, 400)
    width_few = np.subtract(*bootstrap_interval(few)[::-1])
    width_many = np.subtract(*bootstrap_interval(many)[::-1])
    assert 0 < width_many < width_few / 2  # 16 times the images: about a quarter of the width
    assert bootstrap_interval(few, seed=5) == bootstrap_interval(few, seed=5)
    assert bootstrap_interval(few, seed=5) != bootstrap_interval(few, seed=6)


def test_cam_interval_leaves_out_undefined_images():
    values = np.array([0.1, np.nan, 0.4, 0.2, np.nan])
    assert bootstrap_interval(values) == bootstrap_interval(values[~np.isnan(values)])
    assert all(np.isnan(bootstrap_interval(np.array([np.nan, np.nan]))))
    assert all(np.isnan(bootstrap_interval(np.zeros(0))))
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(values, level=95)
    metrics = with_intervals("cam_gradcam_", {"magtr": values})
    assert set(metrics) == {"cam_gradcam_magtr_ci_low", "cam_gradcam_magtr_ci_high"}

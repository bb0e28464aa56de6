import math

import numpy as np
import pytest

from models.evaluate import (
    brier,
    calibration_table,
    ece,
    head_metrics,
    lift_at,
    lift_curve,
    log_loss,
    pr_auc,
    roc_auc,
    roc_curve,
)

Y = [0, 0, 1, 1]
P = [0.1, 0.4, 0.35, 0.8]


def test_roc_auc_is_the_share_of_correctly_ordered_pairs() -> None:
    # pairs (pos, neg): (0.35, 0.1) ok, (0.35, 0.4) wrong, (0.8, *) ok -> 3 of 4
    assert roc_auc(Y, P) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert roc_auc([0, 0, 1], [0.2, 0.5, 0.5]) == pytest.approx(0.75)
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_roc_auc_is_invariant_to_monotone_transforms_and_flips_with_the_score() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = rng.random(500) + 0.3 * y
    assert roc_auc(y, p) == pytest.approx(roc_auc(y, np.exp(3 * p)))
    assert roc_auc(y, -p) == pytest.approx(1 - roc_auc(y, p))
    fpr, tpr = roc_curve(y, p)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, p))


def test_pr_auc_is_average_precision_over_distinct_thresholds() -> None:
    # ranked: 0.8 (pos) P=1 R=.5; 0.4 (neg); 0.35 (pos) P=2/3 R=1 -> AP = .5 * 1 + .5 * 2/3
    assert pr_auc(Y, P) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # one tie block holding everything: a single step at precision = base rate
    assert pr_auc([0, 1, 1, 0], [0.3] * 4) == pytest.approx(0.5)


def test_log_loss_and_brier_by_hand() -> None:
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert brier([1, 0], [0.8, 0.4]) == pytest.approx((0.04 + 0.16) / 2)
    assert math.isfinite(log_loss([1], [0.0]))  # clipped, not infinite


def test_ece_weights_each_equal_width_bin_by_its_share_of_users() -> None:
    y = [0, 1, 1, 1, 0]
    p = [0.05, 0.05, 0.95, 0.95, 0.55]
    # bin [0, .1]: |.5 - .05| * 2/5; bin (.5, .6]: |0 - .55| * 1/5; bin (.9, 1]: |1 - .95| * 2/5
    assert ece(y, p) == pytest.approx(0.45 * 0.4 + 0.55 * 0.2 + 0.05 * 0.4)
    assert ece([0, 1] * 50, [0.5] * 100) == pytest.approx(0.0)


def test_ece_bins_are_right_closed_and_the_first_includes_zero() -> None:
    _, _, count = calibration_table([0, 0, 0, 0], [0.0, 0.1, 0.1000001, 1.0], n_bins=10)
    assert count.tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1]


def test_lift_at_10_percent_with_and_without_ties() -> None:
    y = np.zeros(10)
    y[0] = 1
    p = np.linspace(1, 0, 10)
    assert lift_at(y, p, 0.1) == pytest.approx(10.0)  # the one positive is the top 10 %
    assert lift_at(y, -p, 0.1) == pytest.approx(0.0)
    assert lift_at(y, np.full(10, 0.5), 0.1) == pytest.approx(1.0)  # ties shared: expected base rate
    # top 2 of 20 (10 %): scores 0.9, then a tie of 4 at 0.5 holding 2 positives -> (1 + 1 * 2/4) / 2
    y2 = np.array([1, 1, 1, 0, 0] + [0] * 15)
    p2 = np.array([0.9, 0.5, 0.5, 0.5, 0.5] + [0.1] * 15)
    assert lift_at(y2, p2, 0.1) == pytest.approx(((1 + 0.5) / 2) / (3 / 20))
    fr, lift = lift_curve(y2, p2, points=10)
    assert fr[-1] == 1.0 and lift[-1] == pytest.approx(1.0)


def test_head_metrics_rejects_mismatched_or_non_binary_input() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        head_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="0 or 1"):
        head_metrics([0, 2], [0.5, 0.5])
    m = head_metrics(Y, P)
    assert m.roc_auc == pytest.approx(0.75) and m.n == 4 and m.positive_rate == 0.5

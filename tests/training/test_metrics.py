"""Tests of training.metrics against hand-computed cases and known properties."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest

from training import metrics as M

# --------------------------------------------------------------------------- ranking


def test_doctests_pass():
    result = doctest.testmod(M, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8
    assert result.failed == 0


def test_auprc_perfect_ranking_is_one():
    assert M.auprc([0, 1, 0, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(1.0)


def test_auprc_hand_computed():
    # Ranked: 1 (P=1, R=.5), 0, 1 (P=2/3, R=1), 0 -> AP = .5*1 + .5*2/3
    assert M.auprc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 + 1 / 3)


def test_auprc_without_positives_is_nan():
    assert math.isnan(M.auprc([0, 0, 0], [0.1, 0.2, 0.3]))


def test_roc_auc_hand_computed():
    # Positive .35 beats .1 only, .8 beats both negatives: 3 of 4 pairs.
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


@pytest.mark.parametrize("y", [[0, 0, 0], [1, 1, 1]])
def test_roc_auc_single_class_is_nan(y):
    assert math.isnan(M.roc_auc(y, [0.1, 0.5, 0.9]))


def test_precision_recall_at_hand_computed():
    y = [1, 0, 1, 0, 1]
    p = [0.9, 0.8, 0.7, 0.2, 0.1]
    assert M.precision_recall_at(y, p, 0.7) == pytest.approx((2 / 3, 2 / 3))
    # The threshold is inclusive: p == 0.1 is alerted.
    assert M.precision_recall_at(y, p, 0.1) == pytest.approx((3 / 5, 1.0))
    assert M.precision_recall_at(y, p, 0.95) == (0.0, 0.0)


def test_precision_recall_at_accepts_bool_and_float_labels():
    p = [0.9, 0.8, 0.1]
    expected = M.precision_recall_at([1, 0, 1], p, 0.5)
    assert M.precision_recall_at([True, False, True], p, 0.5) == expected
    assert M.precision_recall_at(np.array([1.0, 0.0, 1.0]), p, 0.5) == expected
    assert expected == (0.5, 0.5)


def test_recall_without_positives_is_nan():
    precision, recall = M.precision_recall_at([0, 0], [0.9, 0.1], 0.5)
    assert precision == 0.0
    assert math.isnan(recall)


# --------------------------------------------------------------------------- thresholds


def test_threshold_for_alert_rate_exact():
    p = np.arange(1, 11) / 10.0
    t = M.threshold_for_alert_rate(p, 0.3)
    assert 0.7 < t <= 0.8
    assert np.mean(p >= t) == pytest.approx(0.3)


def test_threshold_for_alert_rate_ties_never_exceed_rate():
    p = np.array([0.9] * 4 + [0.5] * 6)
    # Alerting the 0.9 block would be 40% > 30%, so nothing may be alerted.
    t = M.threshold_for_alert_rate(p, 0.3)
    assert np.mean(p >= t) == 0.0
    assert t > 0.9
    # At 40% the whole tied block fits exactly.
    t = M.threshold_for_alert_rate(p, 0.4)
    assert np.mean(p >= t) == pytest.approx(0.4)
    assert t <= 0.9


def test_threshold_for_alert_rate_is_smallest_on_random_ties():
    rng = np.random.default_rng(7)
    p = np.round(rng.random(2_000), 2)  # ~100 distinct values, many ties
    for rate in (0.001, 0.01, 0.05, 0.123, 0.5, 0.9, 0.999):
        t = M.threshold_for_alert_rate(p, rate)
        assert np.mean(p >= t) <= rate
        # Any lower threshold alerts more than the rate (here: the next score down).
        below = p[p < t].max()
        assert np.mean(p >= below) > rate


def test_threshold_for_alert_rate_float_rounding():
    # 0.7 * 10 == 7.000000000000001 and 0.3 * 10 == 3.0000000000000004
    p = np.arange(10, dtype=float)
    assert np.count_nonzero(p >= M.threshold_for_alert_rate(p, 0.7)) == 7
    assert np.count_nonzero(p >= M.threshold_for_alert_rate(p, 0.3)) == 3


@pytest.mark.parametrize("rate", [0, 1, -0.1, 1.5, float("nan"), "x"])
def test_threshold_for_alert_rate_rejects_bad_rate(rate):
    with pytest.raises(ValueError, match="rate"):
        M.threshold_for_alert_rate([0.1, 0.2], rate)


def test_recall_at_alert_rate():
    y = [1, 0, 1, 0, 0, 1, 0, 0, 0, 0]
    p = [0.95, 0.9, 0.85, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01]
    # 30% alert rate -> top 3 scores -> 2 of the 3 positives.
    assert M.recall_at_alert_rate(y, p, 0.3) == pytest.approx(2 / 3)
    assert M.recall_at_alert_rate(y, p, 0.1) == pytest.approx(1 / 3)


Y_PREC = [1, 1, 0, 1, 0, 0]
P_PREC = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
# Precision at each threshold: .9->1, .8->1, .7->2/3, .6->3/4, .5->3/5, .4->1/2


@pytest.mark.parametrize(
    "target, expected",
    [(1.0, 0.8), (0.8, 0.8), (0.75, 0.6), (0.7, 0.6), (0.6, 0.5), (0.5, 0.4)],
)
def test_threshold_for_precision_hand_computed(target, expected):
    t = M.threshold_for_precision(Y_PREC, P_PREC, target)
    assert t == expected
    assert M.precision_recall_at(Y_PREC, P_PREC, t)[0] >= target


def test_threshold_for_precision_reaches_target_with_most_recall():
    rng = np.random.default_rng(3)
    y = (rng.random(3_000) < 0.1).astype(int)
    p = np.clip(rng.normal(0.3 + 0.3 * y, 0.15), 0, 1).round(3)
    for target in (0.3, 0.5, 0.8):
        t = M.threshold_for_precision(y, p, target)
        precision, recall = M.precision_recall_at(y, p, t)
        assert precision >= target
        # No lower score value reaches the target.
        for lower in np.unique(p[p < t]):
            assert M.precision_recall_at(y, p, lower)[0] < target


def test_threshold_for_precision_unreachable_raises():
    with pytest.raises(ValueError, match="unreachable"):
        M.threshold_for_precision([0, 1], [0.9, 0.1], 0.9)
    with pytest.raises(ValueError, match="unreachable"):
        M.threshold_for_precision([0, 0], [0.9, 0.1], 0.5)
    with pytest.raises(ValueError, match="precision"):
        M.threshold_for_precision([0, 1], [0.9, 0.1], 0.0)


# --------------------------------------------------------------------------- scenarios


def test_per_scenario_recall_counts():
    y = [1, 1, 1, 0, 1, 0, 1]
    p = [0.9, 0.2, 0.8, 0.9, 0.6, 0.9, 0.1]
    s = ["wash", "wash", "layering", None, "layering", "ghost", None]
    out = M.per_scenario_recall(y, p, s, 0.5)
    assert out == {
        "layering": {"events": 2, "recall": 1.0},
        M.UNKNOWN_SCENARIO: {"events": 1, "recall": 0.0},
        "wash": {"events": 2, "recall": 0.5},
    }
    # Only positives count; the negative's scenario "ghost" does not appear.
    assert "ghost" not in out
    assert sum(d["events"] for d in out.values()) == 5


def test_per_scenario_recall_length_mismatch():
    with pytest.raises(ValueError, match="scenarios"):
        M.per_scenario_recall([1, 0], [0.5, 0.5], ["a"], 0.5)


# --------------------------------------------------------------------------- agreement


def test_spearman():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert M.spearman(a, a**3) == pytest.approx(1.0)
    assert M.spearman(a, -a) == pytest.approx(-1.0)
    # d = [0, 0, 1, -1, 0]: rho = 1 - 6*2 / (5*24) = 0.9
    assert M.spearman(a, [1, 2, 4, 3, 5]) == pytest.approx(0.9)
    assert math.isnan(M.spearman(a, np.ones(5)))


def test_top_fraction_overlap_identical_and_reversed():
    a = np.arange(1_000, dtype=float)
    assert M.top_fraction_overlap(a, a) == 1.0
    assert M.top_fraction_overlap(a, a[::-1]) == 0.0
    assert M.top_fraction_overlap(a, a[::-1], fraction=0.5) == 0.0


def test_top_fraction_overlap_hand_computed():
    a = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]      # top-3 indices {7, 8, 9}
    b = [10, 9, 1, 2, 3, 4, 5, 6, 7, 8]      # top-3 indices {0, 1, 9}
    assert M.top_fraction_overlap(a, b, fraction=0.3) == pytest.approx(1 / 3)
    # k = max(1, ceil(0.01 * 10)) = 1: top index 9 for a, 0 for b.
    assert M.top_fraction_overlap(a, b, fraction=0.01) == 0.0
    assert M.top_fraction_overlap(a, a[:9] + [11], fraction=0.01) == 1.0
    # k = ceil(0.07 * 100) = 7 despite 0.07 * 100 == 7.000000000000001
    x = np.arange(100.0)
    y = x.copy()
    y[92] = -1.0  # drop the 8th best from b's top: k=7 keeps full overlap, k=8 would not
    assert M.top_fraction_overlap(x, y, fraction=0.07) == 1.0


@pytest.mark.parametrize("fraction", [0, 1.5, -0.1])
def test_top_fraction_overlap_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        M.top_fraction_overlap([1, 2], [1, 2], fraction=fraction)


# --------------------------------------------------------------------------- calibration


def test_calibration_curve_hand_computed():
    y = [0, 1, 1, 1]
    p = [0.25, 0.25, 0.75, 0.75]
    mean_pred, frac_pos, count = M.calibration_curve(y, p, bins=4)
    # Bins [.25,.5) and [.75,1] are occupied; the two others are empty and omitted.
    np.testing.assert_allclose(mean_pred, [0.25, 0.75])
    np.testing.assert_allclose(frac_pos, [0.5, 1.0])
    np.testing.assert_array_equal(count, [2, 2])
    assert M.expected_calibration_error(y, p, bins=4) == pytest.approx(0.25)


def test_calibration_includes_score_one_in_last_bin():
    mean_pred, frac_pos, count = M.calibration_curve([1, 0], [1.0, 0.0], bins=10)
    np.testing.assert_array_equal(count, [1, 1])
    np.testing.assert_allclose(mean_pred, [0.0, 1.0])
    assert M.expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0
    # Bin edges: 0.85 in [0.8, 0.9); 0.95 and 1.0 share the closed last bin [0.9, 1].
    mean_pred, frac_pos, count = M.calibration_curve([0, 1, 1], [0.85, 0.95, 1.0], bins=10)
    np.testing.assert_array_equal(count, [1, 2])
    np.testing.assert_allclose(mean_pred, [0.85, 0.975])
    np.testing.assert_allclose(frac_pos, [0.0, 1.0])


def test_ece_calibrated_small_miscalibrated_large():
    rng = np.random.default_rng(0)
    p = rng.random(100_000)
    y = (rng.random(p.size) < p).astype(int)
    assert M.expected_calibration_error(y, p) < 0.01
    # Overconfident scores: the squares of the true probabilities.
    assert M.expected_calibration_error(y, p**2) > 0.1
    # Inverted scores are as wrong as can be: E|p - (1-p)| = 0.5.
    assert M.expected_calibration_error(y, 1 - p) > 0.4


def test_calibration_rejects_non_probabilities_and_bad_bins():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.expected_calibration_error([0, 1], [-0.5, 2.0])
    with pytest.raises(ValueError, match="bins"):
        M.calibration_curve([0, 1], [0.2, 0.8], bins=0)


# --------------------------------------------------------------------------- summary


def test_summarize_values_and_json():
    y = [1, 0, 1, 0, 1, 0, 0, 0]
    p = [0.9, 0.8, 0.7, 0.2, 0.1, 0.1, 0.05, 0.0]
    s = ["a", None, "b", None, "a", None, None, None]
    out = M.summarize(y, p, 0.5, scenarios=s)
    assert out["events"] == 8 and out["positives"] == 3
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["alert_rate"] == pytest.approx(3 / 8)
    assert out["auprc"] == pytest.approx(M.auprc(y, p))
    assert out["roc_auc"] == pytest.approx(M.roc_auc(y, p))
    assert out["ece"] == pytest.approx(M.expected_calibration_error(y, p))
    assert out["per_scenario"] == {
        "a": {"events": 2, "recall": 0.5},
        "b": {"events": 1, "recall": 1.0},
    }
    assert all(type(out[k]) is float for k in ("auprc", "roc_auc", "precision", "ece"))
    assert type(out["events"]) is int and type(out["positives"]) is int
    json.dumps(out, allow_nan=False)


def test_summarize_nan_becomes_none():
    out = M.summarize([0, 0, 0], [0.1, 0.6, 0.9], 0.5)
    assert out["roc_auc"] is None and out["auprc"] is None and out["recall"] is None
    assert "per_scenario" not in out
    json.dumps(out, allow_nan=False)
    # Scores that are not probabilities still summarise; only the ECE is undefined.
    raw = M.summarize([0, 1], [-2.0, 3.0], 0.0)
    assert raw["ece"] is None and raw["auprc"] == 1.0


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "y, p, message",
    [
        ([0, 1, 1], [0.1, 0.2], "different lengths"),
        ([], [], "empty"),
        ([0, 2], [0.1, 0.2], "binary"),
        ([0, 0.5], [0.1, 0.2], "binary"),
        ([0, float("nan")], [0.1, 0.2], "binary"),
        (["a", "b"], [0.1, 0.2], "binary"),
        ([0, 1], [0.1, float("nan")], "non-finite"),
        ([0, 1], [0.1, float("inf")], "non-finite"),
        ([0, 1], ["x", "y"], "numbers"),
        ([[0, 1]], [[0.1, 0.2]], "1-dimensional"),
    ],
)
@pytest.mark.parametrize(
    "fn",
    [
        M.auprc,
        M.roc_auc,
        lambda y, p: M.precision_recall_at(y, p, 0.5),
        lambda y, p: M.threshold_for_precision(y, p, 0.5),
        lambda y, p: M.recall_at_alert_rate(y, p, 0.5),
        lambda y, p: M.expected_calibration_error(y, p),
        lambda y, p: M.summarize(y, p, 0.5),
    ],
)
def test_validation_errors(fn, y, p, message):
    with pytest.raises(ValueError, match=message):
        fn(y, p)


def test_validation_of_score_pairs():
    with pytest.raises(ValueError, match="different lengths"):
        M.spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="empty"):
        M.top_fraction_overlap([], [])
    with pytest.raises(ValueError, match="empty"):
        M.threshold_for_alert_rate([], 0.1)
    with pytest.raises(ValueError, match="threshold"):
        M.precision_recall_at([0, 1], [0.1, 0.2], float("nan"))

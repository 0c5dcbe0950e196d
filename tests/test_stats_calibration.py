"""The interval and calibration maths on constructed cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mfaf_cli.scores import calibration as cal
from mfaf_cli.scores import stats
from mfaf_cli.scores.metrics import metrics_from_confusion


def _unit(correct: int, wrong: int) -> np.ndarray:
    """A two-class confusion matrix with ``correct`` pixels right and ``wrong`` ones wrong."""
    return np.array([[correct, wrong], [0, 0]], dtype=np.int64)


def test_confusion_scores_equal_metrics_from_confusion() -> None:
    rng = np.random.default_rng(3)
    cm = rng.integers(0, 50, size=(4, 4))
    cm[3, :] = 0
    cm[:, 3] = 0  # one absent class: left out of the means in both
    m = metrics_from_confusion(cm, list("abcd"))
    s = stats.confusion_scores(cm, list("abcd"))
    for k in ("oa", "miou", "mean_accuracy", "mean_precision", "mean_f1", "kappa"):
        assert float(s[k]) == pytest.approx(m[k], abs=1e-12), k
    assert math.isnan(float(s["iou/d"]))
    assert float(s["iou/b"]) == pytest.approx(m["per_class"]["b"]["iou"])


def test_bootstrap_interval_of_a_proportion_matches_the_normal_answer() -> None:
    """400 equal-sized scenes, half all right, half all wrong: OA = 0.5 and the bootstrap
    interval is the binomial one, 0.5 ± 1.96·sqrt(0.25/400) = ±0.049."""
    units = np.stack([_unit(10, 0)] * 200 + [_unit(0, 10)] * 200)
    iv = stats.bootstrap_intervals(units, lambda c: stats.confusion_scores(c, ["a", "b"]),
                                   n_boot=4000, seed=1)  # fmt: skip
    lo, hi = iv["oa"]
    half = 1.96 * math.sqrt(0.25 / 400)
    assert lo == pytest.approx(0.5 - half, abs=0.006)
    assert hi == pytest.approx(0.5 + half, abs=0.006)


def test_bootstrap_of_identical_units_has_zero_width_and_one_unit_none() -> None:
    units = np.stack([_unit(7, 3)] * 5)
    iv = stats.bootstrap_intervals(units, lambda c: stats.confusion_scores(c, ["a", "b"]))
    assert iv["oa"] == pytest.approx((0.7, 0.7))
    one = stats.bootstrap_intervals(units[:1], lambda c: stats.confusion_scores(c, ["a", "b"]))
    assert all(math.isnan(v) for v in one["oa"])


def test_two_unit_bootstrap_percentiles_are_the_exact_ones() -> None:
    """Two units (OA 1 and 0, equal size): a resample is both-first (¼), mixed (½) or
    both-second (¼), so the 2.5 % and 97.5 % points are exactly 0 and 1."""
    units = np.stack([_unit(4, 0), _unit(0, 4)])
    iv = stats.bootstrap_intervals(units, lambda c: stats.confusion_scores(c, ["a", "b"]))
    assert iv["oa"] == (0.0, 1.0)


def test_paired_difference_sees_a_consistent_small_gain() -> None:
    """B is A plus one more right pixel in each of 50 very different scenes: the unpaired
    intervals overlap widely, the paired difference is significant."""
    rng = np.random.default_rng(0)
    right = rng.integers(10, 90, size=50)
    a = np.stack([_unit(r, 100 - r) for r in right])
    b = np.stack([_unit(r + 1, 99 - r) for r in right])
    fn = lambda c: stats.confusion_scores(c, ["x", "y"])  # noqa: E731
    ia, ib = stats.bootstrap_intervals(a, fn)["oa"], stats.bootstrap_intervals(b, fn)["oa"]
    assert stats.intervals_overlap(ia, ib)
    d = stats.paired_difference(b, a, fn)["oa"]
    assert d["difference"] == pytest.approx(0.01)
    assert d["low"] == pytest.approx(0.01) and d["high"] == pytest.approx(0.01)
    assert d["significant"] is True
    same = stats.paired_difference(a, a, fn)["oa"]
    assert same["difference"] == 0 and same["significant"] is False


def test_mean_interval_two_seeds() -> None:
    m = stats.mean_interval([0.6, 0.7])
    assert m["mean"] == pytest.approx(0.65)
    # t(1) = 12.706, sd = 0.0707, n = 2: half width 12.706 * 0.05
    assert m["high"] - m["mean"] == pytest.approx(12.706 * 0.05)


# ---- calibration ------------------------------------------------------------------------------
def test_ece_and_brier_on_a_hand_computed_case() -> None:
    # four pixels, two classes: confidences 0.9, 0.9 (one right), 0.6, 0.6 (both right)
    probs = np.array([[0.9, 0.9, 0.6, 0.4], [0.1, 0.1, 0.4, 0.6]])
    truth = np.array([0, 1, 0, 1])
    c = cal.calibration_counts(probs, truth)
    # bin of 0.9: acc 0.5, conf 0.9 (2 px); bin of 0.6: acc 1.0, conf 0.6 (2 px)
    assert float(cal.ece(c)) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    brier = (0.01 + 0.01) + (0.81 + 0.81) + (0.16 + 0.16) + (0.16 + 0.16)
    assert float(cal.brier(c)) == pytest.approx(brier / 4)
    nll = -(2 * math.log(0.6) + math.log(0.9) + math.log(0.1)) / 4
    assert float(cal.nll(c)) == pytest.approx(nll)
    # counts add: the halves sum to the whole
    h = cal.calibration_counts(probs[:, :2], truth[:2])
    h = h + cal.calibration_counts(probs[:, 2:], truth[2:])
    assert np.allclose(h, c)


def test_perfect_calibration_has_near_zero_ece() -> None:
    rng = np.random.default_rng(0)
    p1 = rng.uniform(0, 1, 200_000)
    truth = (rng.uniform(0, 1, p1.size) < p1).astype(int)
    c = cal.calibration_counts(np.stack([1 - p1, p1]), truth)
    assert float(cal.ece(c)) < 0.01


def test_fit_temperature_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(7)
    z = rng.normal(0, 3, size=(3, 100_000))
    true_t = 2.5
    p = cal.softmax(z, true_t)
    cum = p.cumsum(axis=0)
    y = (rng.uniform(size=z.shape[1])[None] > cum).sum(axis=0)
    t = cal.fit_temperature(z, y)
    assert t == pytest.approx(true_t, rel=0.03)
    # at the fit the slope of the NLL is zero, and the NLL is lower than at T = 1
    assert abs(cal._nll_slope(z, z[y, np.arange(y.size)], 1 / t)) < 1e-9
    before = cal.nll(cal.calibration_counts(cal.softmax(z, 1.0), y))
    after = cal.nll(cal.calibration_counts(cal.softmax(z, t), y))
    assert after < before


def test_temperature_leaves_labels_unchanged() -> None:
    z = np.random.default_rng(1).normal(0, 4, size=(5, 1000))
    for t in (0.3, 1.0, 2.7, 15.0):
        assert np.array_equal(cal.softmax(z, t).argmax(0), z.argmax(0))


def test_normalised_entropy_ends() -> None:
    p = np.array([[1.0, 0.5, 0.25], [0.0, 0.5, 0.75]])
    h = cal.normalised_entropy(p)
    assert h[0] == 0 and h[1] == pytest.approx(1.0)
    assert h[2] == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2))


def test_per_block_counts_sum_to_the_whole() -> None:
    """Confusion matrices and calibration counts per spatial block sum to the scene's."""
    from mfaf_cli.scores.metrics import confusion_matrix

    rng = np.random.default_rng(5)
    h, w, k, block = 70, 90, 3, 32
    p = cal.softmax(rng.normal(0, 2, (k, h, w)))
    truth = rng.integers(0, k, (h, w))
    truth[:5] = 255  # ignored rows
    pred = p.argmax(0)
    nr, nc = stats.block_grid(h, w, block)
    assert (nr, nc) == (3, 3)
    ids = stats.block_ids(0, 0, h, w, block, nc)
    blocks = confusion_matrix(pred, truth, k, 255, groups=ids, n_groups=nr * nc)
    assert blocks.shape == (9, k, k)
    assert np.array_equal(blocks.sum(0), confusion_matrix(pred, truth, k, 255))
    assert blocks[8].sum() == (h - 64) * (w - 64)  # the partial corner block
    keep = truth != 255
    cb = cal.calibration_counts(p, np.where(keep, truth, 0), keep, groups=ids, n_groups=9)
    assert np.allclose(cb.sum(0), cal.calibration_counts(p, np.where(keep, truth, 0), keep))
    # a window's ids follow the whole grid's blocks
    assert np.array_equal(stats.block_ids(40, 10, 30, 80, block, nc), ids[40:70, 10:90])

"""Metrics against values computed by hand on a small confusion matrix."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mfaf_cli.errors import LabelError
from mfaf_cli.scores.metrics import (
    confusion_matrix,
    format_table,
    metrics_from_confusion,
    plot_confusion,
    to_jsonable,
)

# rows = truth, cols = prediction.  class 2 never true but predicted once; class 3 absent.
CM = np.array(
    [
        [5, 1, 0, 0],
        [2, 3, 1, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
)
NAMES = ["a", "b", "c", "d"]


def test_confusion_matrix_counts_ignores_and_matches_a_loop(rng: np.random.Generator) -> None:
    truth = rng.integers(0, 3, size=(17, 13))
    pred = rng.integers(0, 3, size=(17, 13))
    truth[0, :5] = 255  # ignored truth
    pred[1, :4] = 255  # prediction nodata
    valid = np.ones_like(truth, dtype=bool)
    valid[2, :3] = False
    cm = confusion_matrix(pred, truth, 3, 255, valid=valid)
    expect = np.zeros((3, 3), dtype=np.int64)
    for t, p, v in zip(truth.ravel(), pred.ravel(), valid.ravel(), strict=True):
        if t != 255 and p != 255 and v:
            expect[t, p] += 1
    np.testing.assert_array_equal(cm, expect)
    assert cm.sum() == 17 * 13 - 5 - 4 - 3


def test_confusion_matrix_rejects_unknown_labels() -> None:
    with pytest.raises(LabelError, match=r"truth labels hold values \[3, 7\]"):
        confusion_matrix(np.zeros(4, int), np.array([0, 3, 7, 1]), 3)
    with pytest.raises(LabelError, match="predictions"):
        confusion_matrix(np.array([0, 5, 1, 1]), np.zeros(4, int), 3)
    with pytest.raises(LabelError):
        confusion_matrix(np.zeros(2, int), np.array([-1, 0]), 2, ignore_index=255)


def test_metrics_match_hand_computation() -> None:
    m = metrics_from_confusion(CM, NAMES)
    # OA = (5 + 3) / 12
    assert m["oa"] == pytest.approx(8 / 12)
    assert m["aAcc"] == m["oa"]
    pc = m["per_class"]
    # IoU = tp / (support + predicted - tp)
    assert pc["a"]["iou"] == pytest.approx(5 / 8)  # 5 / (6 + 7 - 5)
    assert pc["b"]["iou"] == pytest.approx(3 / 7)  # 3 / (6 + 4 - 3)
    assert pc["c"]["iou"] == 0.0  # predicted once, never true: counts as 0
    assert math.isnan(pc["d"]["iou"])  # absent everywhere: excluded
    assert m["miou"] == pytest.approx((5 / 8 + 3 / 7 + 0) / 3)
    assert m["classes_excluded"] == ["d"]
    # accuracy = recall = tp / support
    assert pc["a"]["accuracy"] == pytest.approx(5 / 6)
    assert pc["b"]["recall"] == pytest.approx(3 / 6)
    assert math.isnan(pc["c"]["accuracy"])
    assert m["mean_accuracy"] == pytest.approx((5 / 6 + 3 / 6) / 2)
    # precision = tp / predicted
    assert pc["a"]["precision"] == pytest.approx(5 / 7)
    assert pc["b"]["precision"] == pytest.approx(3 / 4)
    assert pc["c"]["precision"] == 0.0
    assert math.isnan(pc["d"]["precision"])
    # F1 = 2 tp / (support + predicted)
    assert pc["a"]["f1"] == pytest.approx(10 / 13)
    assert pc["b"]["f1"] == pytest.approx(6 / 10)
    assert pc["c"]["f1"] == 0.0
    assert m["mean_f1"] == pytest.approx((10 / 13 + 6 / 10 + 0) / 3)
    # kappa: pe = (6*7 + 6*4 + 0*1) / 12^2 = 11/24; (2/3 - 11/24) / (1 - 11/24) = 5/13
    assert m["kappa"] == pytest.approx(5 / 13)
    assert pc["a"]["support"] == 6 and pc["c"]["predicted"] == 1
    assert m["n_pixels"] == 12


def test_perfect_and_degenerate_cases() -> None:
    m = metrics_from_confusion(np.array([[4, 0], [0, 6]]))
    assert m["oa"] == 1.0 and m["miou"] == 1.0 and m["kappa"] == pytest.approx(1.0)
    one = metrics_from_confusion(np.array([[9, 0], [0, 0]]))  # a single class everywhere
    assert one["oa"] == 1.0 and one["miou"] == 1.0 and math.isnan(one["kappa"])
    empty = metrics_from_confusion(np.zeros((2, 2)))
    assert math.isnan(empty["oa"]) and math.isnan(empty["miou"])
    # kappa is 0 for a constant prediction, even with high OA
    const = metrics_from_confusion(np.array([[90, 0], [10, 0]]))
    assert const["oa"] == pytest.approx(0.9) and const["kappa"] == pytest.approx(0.0)


def test_json_table_and_plot(tmp_path) -> None:
    m = metrics_from_confusion(CM, NAMES)
    s = json.dumps(to_jsonable(m))  # strict JSON: NaN -> null
    assert "NaN" not in s and json.loads(s)["per_class"]["d"]["iou"] is None
    table = format_table(m)
    assert "62.50" in table  # IoU of a in percent
    assert "kappa 0.3846" in table
    assert "left out of means): d" in table
    out = plot_confusion(CM, NAMES, tmp_path / "cm.png", title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

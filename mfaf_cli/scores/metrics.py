"""Segmentation metrics from one confusion matrix (pure numpy; plotting imports matplotlib lazily).

Convention: ``cm[t, p]`` counts pixels of true class ``t`` predicted as ``p`` (rows = truth).

Absent classes: a class's ratio is NaN when its denominator is 0, and NaN entries are left out
of the means (mIoU, mean accuracy, mean precision, mean F1):

- IoU is NaN only when the class is neither in the truth nor in the prediction. A class that is
  predicted but never true gets IoU 0 and *does* count in mIoU (false positives cost).
- accuracy (= recall) is NaN when the class has no true pixel (left out of mean accuracy, AA).
- precision is NaN when the class is never predicted.
- F1 is NaN when the class is neither true nor predicted.
- Cohen's kappa is NaN when chance agreement is 1 (one class everywhere in both).

In JSON (``to_jsonable``) NaN is written as ``null``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mfaf_cli.errors import LabelError


def confusion_matrix(
    pred: np.ndarray,
    truth: np.ndarray,
    num_classes: int,
    ignore_index: int | None = 255,
    valid: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    n_groups: int = 1,
) -> np.ndarray:
    """(K, K) int64 confusion matrix (rows truth, columns prediction) by ``np.bincount``;
    with ``groups`` (each pixel's unit id in ``[0, n_groups)``: a spatial block) one matrix
    per unit, (n_groups, K, K), which sum to the single one.

    Pixels are skipped where ``truth == ignore_index``, ``pred == ignore_index`` (prediction
    nodata) or ``valid`` is False. Any other truth or prediction value outside ``[0, K)`` raises
    :class:`LabelError`: silently dropping unknown labels would inflate the scores.
    """
    k = int(num_classes)
    p = np.asarray(pred).reshape(-1)
    t = np.asarray(truth).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"prediction has {p.size} pixels, truth has {t.size}")
    keep = np.ones(t.shape, dtype=bool)
    if ignore_index is not None:
        keep &= (t != ignore_index) & (p != ignore_index)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool).reshape(-1)
    p = p[keep].astype(np.int64, copy=False)
    t = t[keep].astype(np.int64, copy=False)
    for arr, what in ((t, "truth labels"), (p, "predictions")):
        bad = (arr < 0) | (arr >= k)
        if bad.any():
            vals = np.unique(arr[bad])[:8].tolist()
            raise LabelError(
                f"{what} hold values {vals} outside the class table 0..{k - 1}"
                + (f" (ignore value {ignore_index})" if ignore_index is not None else "")
                + "; map them to known classes or to the ignore value"
            )
    if groups is not None:
        g = np.asarray(groups).reshape(-1)[keep].astype(np.int64, copy=False)
        flat = np.bincount(g * (k * k) + t * k + p, minlength=n_groups * k * k)
        return flat.reshape(n_groups, k, k).astype(np.int64)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def metrics_from_confusion(cm: np.ndarray, class_names: list[str] | None = None) -> dict[str, Any]:
    """All metrics from one confusion matrix.

    Returns a dict with ``oa`` (= ``aAcc``), ``miou``, ``mean_accuracy`` (AA, mean recall),
    ``mean_precision``, ``mean_f1``, ``kappa``, ``n_pixels``, ``per_class`` (name -> iou,
    accuracy, recall, precision, f1, support, predicted), ``classes_excluded`` (names left out
    of mIoU because absent from truth and prediction) and ``confusion_matrix`` (nested list).
    """
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix must be square, got {cm.shape}")
    names = list(class_names) if class_names is not None else [f"class-{i}" for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    total = cm.sum()
    iou = _ratio(tp, support + predicted - tp)
    recall = _ratio(tp, support)
    precision = _ratio(tp, predicted)
    f1 = _ratio(2 * tp, support + predicted)
    oa = float(tp.sum() / total) if total > 0 else float("nan")
    if total > 0:
        pe = float((support * predicted).sum() / (total * total))
        kappa = (oa - pe) / (1.0 - pe) if pe < 1.0 else float("nan")
    else:
        kappa = float("nan")
    per_class = {
        names[i]: {
            "iou": float(iou[i]),
            "accuracy": float(recall[i]),
            "recall": float(recall[i]),
            "precision": float(precision[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "predicted": int(predicted[i]),
        }
        for i in range(k)
    }
    return {
        "oa": oa,
        "aAcc": oa,
        "miou": _nanmean(iou),
        "mean_accuracy": _nanmean(recall),
        "mean_precision": _nanmean(precision),
        "mean_f1": _nanmean(f1),
        "kappa": float(kappa),
        "n_pixels": int(total),
        "per_class": per_class,
        "classes_excluded": [names[i] for i in range(k) if not np.isfinite(iou[i])],
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }


def to_jsonable(obj: Any) -> Any:
    """Replace NaN/inf floats by None (JSON has no NaN) and numpy scalars by Python ones."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _pct(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "    -"
    return f"{100.0 * v:5.2f}"


def format_table(metrics: dict[str, Any]) -> str:
    """A readable per-class table plus the summary scores (percent), for stderr."""
    per = metrics["per_class"]
    width = max([len("class"), *(len(n) for n in per)])
    head = f"{'class':<{width}}  {'IoU':>6} {'Acc':>6} {'Prec':>6} {'F1':>6} {'support':>10}"
    lines = [head, "-" * len(head)]
    for name, m in per.items():
        lines.append(
            f"{name:<{width}}  {_pct(m['iou']):>6} {_pct(m['accuracy']):>6} "
            f"{_pct(m['precision']):>6} {_pct(m['f1']):>6} {m['support']:>10d}"
        )
    lines.append("-" * len(head))
    kappa = metrics["kappa"]
    lines.append(
        f"OA (aAcc) {_pct(metrics['oa']).strip()}  mIoU {_pct(metrics['miou']).strip()}  "
        f"AA {_pct(metrics['mean_accuracy']).strip()}  mF1 {_pct(metrics['mean_f1']).strip()}  "
        f"kappa {('-' if kappa is None or not math.isfinite(kappa) else f'{kappa:.4f}')}  "
        f"pixels {metrics['n_pixels']}"
    )
    if metrics.get("classes_excluded"):
        lines.append(
            "classes absent from truth and prediction (left out of means): "
            + ", ".join(metrics["classes_excluded"])
        )
    return "\n".join(lines)


def plot_confusion(cm: np.ndarray, names: list[str], path: str | Path, title: str = "") -> Path:
    """Save a row-normalised confusion-matrix heatmap (counts annotated when K is small)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(3.5, 0.6 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    if k <= 16:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{norm[i, j]:.2f}\n{int(cm[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

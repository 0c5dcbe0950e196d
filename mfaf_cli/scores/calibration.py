"""Calibration maths (pure numpy): reliability counts, ECE, Brier score, NLL, entropy and the
temperature fit of Guo et al. (2017, "On calibration of modern neural networks").

Everything a score needs is kept as *additive counts* (:func:`calibration_counts`), so scenes,
blocks and bootstrap resamples are summed like confusion matrices. The count vector of
``bins`` bins is ``[n (bins), sum of confidence (bins), sum of correct (bins), Brier sum,
NLL sum]``; bin ``b`` holds top probabilities in ``(b/bins, (b+1)/bins]`` (0 goes to bin 0).
"""

from __future__ import annotations

import math

import numpy as np

#: Reliability bins of the expected calibration error (as torchmetrics' default 15).
ECE_BINS = 15
#: Smallest probability a log is taken of (NLL of a confidently wrong pixel stays finite).
EPS = 1e-12


def count_length(bins: int = ECE_BINS) -> int:
    """Length of a count vector of ``bins`` bins."""
    return 3 * bins + 2


def calibration_counts(
    probs: np.ndarray,
    truth: np.ndarray,
    keep: np.ndarray | None = None,
    bins: int = ECE_BINS,
    *,
    groups: np.ndarray | None = None,
    n_groups: int = 1,
) -> np.ndarray:
    """Additive calibration counts of probabilities ``probs`` (K, ...) against class ids
    ``truth`` (...) where ``keep`` (pixels with a label and a prediction); truth must be in
    ``[0, K)`` where kept. With ``groups`` (unit id per pixel), one vector per unit
    (n_groups, L)."""
    k = probs.shape[0]
    p = np.asarray(probs, dtype=np.float64).reshape(k, -1)
    t = np.asarray(truth).reshape(-1)
    g = None if groups is None else np.asarray(groups).reshape(-1).astype(np.int64)
    if keep is not None:
        m = np.asarray(keep, dtype=bool).reshape(-1)
        p, t = p[:, m], t[m]
        g = None if g is None else g[m]
    length = count_length(bins)
    out = np.zeros((n_groups if g is not None else 1, length), dtype=np.float64)
    if t.size:
        t = t.astype(np.int64)
        conf = p.max(axis=0)
        correct = (p.argmax(axis=0) == t).astype(np.float64)
        p_true = p[t, np.arange(t.size)]
        b = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
        gb = b if g is None else g * bins + b
        nb = out.shape[0] * bins
        gg = np.zeros_like(b) if g is None else g
        out[:, :bins] = np.bincount(gb, minlength=nb).reshape(-1, bins)
        out[:, bins : 2 * bins] = np.bincount(gb, weights=conf, minlength=nb).reshape(-1, bins)
        out[:, 2 * bins : 3 * bins] = np.bincount(gb, weights=correct, minlength=nb).reshape(
            -1, bins
        )
        sq = (p * p).sum(axis=0) - 2.0 * p_true + 1.0
        out[:, 3 * bins] = np.bincount(gg, weights=sq, minlength=out.shape[0])
        ll = -np.log(np.maximum(p_true, EPS))
        out[:, 3 * bins + 1] = np.bincount(gg, weights=ll, minlength=out.shape[0])
    return out if g is not None else out[0]


def _bins(counts: np.ndarray) -> int:
    return (counts.shape[-1] - 2) // 3


def ece(counts: np.ndarray) -> np.ndarray:
    """Expected calibration error ``Σ_b n_b/N |acc_b − conf_b|`` (NaN when N = 0); works on a
    stack of count vectors (..., L)."""
    bins = _bins(counts)
    n = counts[..., :bins]
    gap = np.abs(counts[..., 2 * bins : 3 * bins] - counts[..., bins : 2 * bins]).sum(axis=-1)
    total = n.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, gap / np.where(total > 0, total, 1), np.nan)


def _per_pixel(counts: np.ndarray, index: int) -> np.ndarray:
    bins = _bins(counts)
    total = counts[..., :bins].sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts[..., 3 * bins + index] / np.where(total > 0, total, 1),
                        np.nan)  # fmt: skip


def brier(counts: np.ndarray) -> np.ndarray:
    """Mean multi-class Brier score ``Σ_k (p_k − y_k)²`` per pixel (0 best, 2 worst)."""
    return _per_pixel(counts, 0)


def nll(counts: np.ndarray) -> np.ndarray:
    """Mean negative log-likelihood of the true class."""
    return _per_pixel(counts, 1)


def reliability(counts: np.ndarray) -> dict[str, list[float | None]]:
    """Per bin: its upper edge, pixel count, mean confidence and accuracy (None when empty)."""
    bins = _bins(counts)
    n = counts[:bins]
    conf = [float(c / k) if k else None for c, k in zip(counts[bins : 2 * bins], n, strict=True)]
    acc = [float(c / k) if k else None for c, k in zip(counts[2 * bins : 3 * bins], n, strict=True)]
    return {
        "upper_edge": [float((b + 1) / bins) for b in range(bins)],
        "pixels": [float(v) for v in n],
        "confidence": conf,  # type: ignore[dict-item]
        "accuracy": acc,  # type: ignore[dict-item]
    }


def calibration_summary(counts: np.ndarray) -> dict[str, object]:
    """ECE, Brier, NLL, mean confidence and accuracy of one count vector, and its bins."""
    bins = _bins(counts)
    total = float(counts[:bins].sum())
    return {
        "ece": float(ece(counts)),
        "brier": float(brier(counts)),
        "nll": float(nll(counts)),
        "mean_confidence": float(counts[bins : 2 * bins].sum() / total) if total else math.nan,
        "accuracy": float(counts[2 * bins : 3 * bins].sum() / total) if total else math.nan,
        "bins": bins,
        "reliability": reliability(counts),
    }


# ---- probabilities from logits, with a temperature -------------------------------------------
def softmax(logits: np.ndarray, temperature: float = 1.0, axis: int = 0) -> np.ndarray:
    """Softmax of ``logits / temperature`` along ``axis`` (max-shifted, float64)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def normalised_entropy(probs: np.ndarray, axis: int = 0) -> np.ndarray:
    """``−Σ p log p / log K`` along ``axis``: 0 = certain, 1 = uniform (float32)."""
    p = np.asarray(probs, dtype=np.float64)
    k = p.shape[axis]
    if k < 2:
        return np.zeros(np.delete(p.shape, axis), dtype=np.float32)
    h = -(p * np.log(np.maximum(p, EPS))).sum(axis=axis)
    return (h / math.log(k)).astype(np.float32)


def _nll_slope(z: np.ndarray, zy: np.ndarray, beta: float) -> float:
    """d/dβ of the mean NLL of ``softmax(β z)``: E_p[z] − z_y (increasing in β: NLL is convex)."""
    p = softmax(z, 1.0 / beta, axis=0)
    return float(((p * z).sum(axis=0) - zy).mean())


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, *, lo: float = 0.05, hi: float = 20.0
) -> float:
    """The temperature ``T`` in ``[lo, hi]`` minimising the mean NLL of ``softmax(logits / T)``
    over labelled pixels (``logits`` (K, N), ``labels`` (N) in ``[0, K)``).

    NLL is convex in β = 1/T, so its slope is increasing and bisection on log β finds the one
    minimum (to ~1e-12 relative); a minimum outside the range gives the nearer end.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if z.ndim != 2 or z.shape[1] != y.size:
        raise ValueError(f"logits must be (K, N) with N = {y.size} labels, got {z.shape}")
    if y.size == 0:
        raise ValueError("no labelled pixel to fit a temperature on")
    zy = z[y, np.arange(y.size)]
    a, b = math.log(1.0 / hi), math.log(1.0 / lo)  # log β range
    if _nll_slope(z, zy, math.exp(a)) >= 0:
        return hi
    if _nll_slope(z, zy, math.exp(b)) <= 0:
        return lo
    for _ in range(60):
        mid = 0.5 * (a + b)
        if _nll_slope(z, zy, math.exp(mid)) < 0:
            a = mid
        else:
            b = mid
    return float(1.0 / math.exp(0.5 * (a + b)))

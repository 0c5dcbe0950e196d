"""Intervals (pure numpy): percentile bootstrap over units (scenes, or spatial blocks of one
scene) of additive counts, and the paired difference of two models on the same units.

A unit's counts are its confusion matrix (and, where there are probabilities, its calibration
counts, :mod:`mfaf_cli.scores.calibration`); a resample draws units with replacement,
sums their counts and recomputes every score, so a score's interval says how much it would move
on another draw of scenes like these. Blocks of one scene are correlated with their
neighbours: their intervals are narrower than scene intervals would be.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

#: Bootstrap resamples and the interval's level (percentile method).
N_BOOT = 2000
LEVEL = 0.95

ScoreFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(v: np.ndarray) -> np.ndarray:
    ok = np.isfinite(v)
    n = ok.sum(axis=-1)
    s = np.where(ok, v, 0.0).sum(axis=-1)
    return _div(s, n.astype(np.float64))


def confusion_scores(cms: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Every summary score of a stack of confusion matrices (..., K, K) at once, as
    :func:`~mfaf_cli.scores.metrics.metrics_from_confusion` defines them (NaN classes left
    out of the means): ``oa, miou, mean_accuracy, mean_precision, mean_f1, kappa`` and per
    class ``iou/<name>``, ``f1/<name>``, ``precision/<name>``, ``recall/<name>``."""
    cm = np.asarray(cms, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support, predicted = cm.sum(axis=-1), cm.sum(axis=-2)
    total = cm.sum(axis=(-2, -1))
    iou = _div(tp, support + predicted - tp)
    recall, precision = _div(tp, support), _div(tp, predicted)
    f1 = _div(2 * tp, support + predicted)
    oa = _div(tp.sum(axis=-1), total)
    pe = _div((support * predicted).sum(axis=-1), total * total)
    kappa = np.where(pe < 1.0, _div(oa - pe, 1.0 - pe), np.nan)
    out = {
        "oa": oa,
        "miou": _nanmean(iou),
        "mean_accuracy": _nanmean(recall),
        "mean_precision": _nanmean(precision),
        "mean_f1": _nanmean(f1),
        "kappa": kappa,
    }
    for i, n in enumerate(names):
        out[f"iou/{n}"] = iou[..., i]
        out[f"f1/{n}"] = f1[..., i]
        out[f"precision/{n}"] = precision[..., i]
        out[f"recall/{n}"] = recall[..., i]
    return out


def block_grid(height: int, width: int, block: int) -> tuple[int, int]:
    """Rows and columns of ``block``-pixel spatial blocks covering a grid (edges partial)."""
    return -(-int(height) // block), -(-int(width) // block)


def block_ids(row0: int, col0: int, rows: int, cols: int, block: int, n_cols: int) -> np.ndarray:
    """(rows, cols) unit id of every pixel of a grid window: row-major ``block``-pixel blocks
    of a grid ``n_cols`` blocks wide."""
    r = (np.arange(row0, row0 + rows) // block)[:, None]
    c = (np.arange(col0, col0 + cols) // block)[None, :]
    return (r * n_cols + c).astype(np.int64)


def resample_weights(n_units: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """(n_boot, n_units) counts: how often each unit is drawn in each resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_boot)


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    s = samples[np.isfinite(samples)]
    if s.size == 0:
        return float("nan"), float("nan")
    a = 100 * (1 - level) / 2
    lo, hi = np.percentile(s, [a, 100 - a])
    return float(lo), float(hi)


def bootstrap_intervals(
    units: np.ndarray,
    score: ScoreFn,
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every score of summed unit counts ``units`` (U, ...) over
    ``n_boot`` resamples of the units with replacement (one unit: no interval, NaN)."""
    u = np.asarray(units, dtype=np.float64)
    if u.shape[0] < 2:
        return {k: (float("nan"), float("nan")) for k in score(u.sum(axis=0))}
    w = resample_weights(u.shape[0], n_boot, seed).astype(np.float64)
    sums = np.tensordot(w, u, axes=(1, 0))  # (B, ...)
    return {k: _percentiles(np.asarray(v), level) for k, v in score(sums).items()}


def paired_difference(
    units_a: np.ndarray,
    units_b: np.ndarray,
    score: ScoreFn,
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> dict[str, dict[str, float | bool]]:
    """Score of A minus score of B on the same units, with a paired bootstrap interval (one
    draw of units scores both); ``significant`` when the interval excludes 0."""
    a = np.asarray(units_a, dtype=np.float64)
    b = np.asarray(units_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired units differ in shape: {a.shape} vs {b.shape}")
    sa, sb = score(a.sum(axis=0)), score(b.sum(axis=0))
    if a.shape[0] >= 2:
        w = resample_weights(a.shape[0], n_boot, seed).astype(np.float64)
        ra, rb = score(np.tensordot(w, a, axes=(1, 0))), score(np.tensordot(w, b, axes=(1, 0)))
    out: dict[str, dict[str, float | bool]] = {}
    for k in sa:
        d = float(sa[k] - sb[k])
        lo, hi = (
            _percentiles(np.asarray(ra[k] - rb[k]), level) if a.shape[0] >= 2
            else (float("nan"), float("nan"))
        )  # fmt: skip
        out[k] = {"a": float(sa[k]), "b": float(sb[k]), "difference": d, "low": lo, "high": hi,
                  "significant": bool(np.isfinite(lo) and (lo > 0 or hi < 0))}  # fmt: skip
    return out


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals share a point (then a choice between them is not significant)."""
    return not (a[1] < b[0] or b[1] < a[0])


def mean_interval(values: Sequence[float], level: float = LEVEL) -> dict[str, float]:
    """Mean of per-seed figures with a Student-t interval (NaN width for one seed)."""
    from math import sqrt

    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if v.size < 2:
        return {"mean": m, "low": float("nan"), "high": float("nan"), "n": int(v.size)}
    t = _t_quantile(v.size - 1, level)
    h = t * float(v.std(ddof=1)) / sqrt(v.size)
    return {"mean": m, "low": m - h, "high": m + h, "n": int(v.size)}


def _t_quantile(df: int, level: float) -> float:
    """Two-sided Student-t quantile for ``level`` 0.95 (table; between entries the smaller
    df's, which is wider; the normal value past 120)."""
    if abs(level - 0.95) > 1e-9:
        raise ValueError("only 95 % seed intervals are tabulated")
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
             9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000,
             120: 1.980}  # fmt: skip
    if df > 120:
        return 1.960
    return table[max(k for k in table if k <= df)]

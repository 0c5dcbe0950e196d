"""Per-band normalisation shared by training and inference (pure numpy, no I/O).

Both paths must call the same functions so that a model meets at inference exactly the value
distribution it was trained on; see :class:`mfaf_cli.metadata.Normalisation` for the modes.
"""

from __future__ import annotations

import numpy as np

from mfaf_cli.metadata import Normalisation

#: Cap on the number of valid samples used per band to estimate scene percentiles.
MAX_STAT_SAMPLES = 2_000_000


def band_percentiles(
    arr: np.ndarray, valid: np.ndarray | None, p_low: float, p_high: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band ``p_low``/``p_high`` percentiles over valid, finite pixels.

    Args:
        arr: (C, H, W) array in sensor units (any dtype).
        valid: (H, W) bool mask of pixels to use, or None for all finite pixels.
        p_low, p_high: percentiles in [0, 100].

    Returns:
        (lo, hi): float64 arrays of shape (C,). A band with no valid pixel gets (0, 1); a
        constant band gets hi = lo + 1 so the stretch never divides by zero.
    """
    c = arr.shape[0]
    lo = np.zeros(c, dtype=np.float64)
    hi = np.ones(c, dtype=np.float64)
    flat = arr.reshape(c, -1)
    vmask = None if valid is None else valid.reshape(-1)
    for i in range(c):
        v = flat[i].astype(np.float64, copy=False)
        m = np.isfinite(v) if vmask is None else (vmask & np.isfinite(v))
        v = v[m]
        if v.size == 0:
            continue
        if v.size > MAX_STAT_SAMPLES:
            v = v[:: int(np.ceil(v.size / MAX_STAT_SAMPLES))]
        a, b = np.percentile(v, [p_low, p_high])
        lo[i] = a
        hi[i] = b if b > a else a + 1.0
    return lo, hi


def apply_normalisation(
    arr: np.ndarray,
    norm: Normalisation,
    lo: np.ndarray | None = None,
    hi: np.ndarray | None = None,
) -> np.ndarray:
    """Normalise a (C, H, W) array to the model's input distribution, as float32.

    For ``scene-percentile`` mode, ``lo``/``hi`` are the scene's per-band percentiles (from
    :func:`band_percentiles`); they are required. Non-finite values become 0 after
    normalisation (they are masked as nodata elsewhere and never reach the output).
    """
    x = arr.astype(np.float32, copy=True)
    c = x.shape[0]
    mean = np.asarray(norm.mean, dtype=np.float32).reshape(c, 1, 1)
    std = np.asarray(norm.std, dtype=np.float32).reshape(c, 1, 1)
    if norm.mode == "scene-percentile":
        if lo is None or hi is None:
            raise ValueError("scene-percentile normalisation needs the scene's lo/hi")
        lo_ = np.asarray(lo, dtype=np.float32).reshape(c, 1, 1)
        hi_ = np.asarray(hi, dtype=np.float32).reshape(c, 1, 1)
        x = np.clip((x - lo_) / (hi_ - lo_), 0.0, 1.0)
    x = (x - mean) / std
    x[~np.isfinite(x)] = 0.0
    return x


def stretched_moments(arrays: list[np.ndarray], p_low: float, p_high: float) -> tuple[list, list]:
    """Training-split mean/std per band after the per-array percentile stretch.

    Each array is (C, H, W) and gets its own percentiles, exactly as a scene does at predict
    time; returns (mean, std) lists to store in :class:`Normalisation`.
    """
    c = arrays[0].shape[0]
    s = np.zeros(c)
    s2 = np.zeros(c)
    n = np.zeros(c)
    for a in arrays:
        lo, hi = band_percentiles(a, None, p_low, p_high)
        x = np.clip((a.astype(np.float64) - lo.reshape(c, 1, 1)) / (hi - lo).reshape(c, 1, 1), 0, 1)
        x = x.reshape(c, -1)
        fin = np.isfinite(x)
        x = np.where(fin, x, 0.0)
        s += x.sum(1)
        s2 += (x * x).sum(1)
        n += fin.sum(1)
    mean = s / np.maximum(n, 1)
    std = np.sqrt(np.maximum(s2 / np.maximum(n, 1) - mean**2, 1e-12))
    return [float(v) for v in mean], [float(max(v, 1e-3)) for v in std]

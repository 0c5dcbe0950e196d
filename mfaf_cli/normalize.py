"""Per-band normalisation shared by training and inference (pure numpy, no I/O).

Both paths must call the same functions so that a model meets at inference exactly the value
distribution it was trained on; see :class:`mfaf_cli.metadata.Normalisation` for the modes.
"""

from __future__ import annotations

import numpy as np

from mfaf_cli.metadata import Normalisation
from mfaf_cli.scratch import scratch

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
    *,
    copy: bool = True,
) -> np.ndarray:
    """Normalise a (C, H, W) array to the model's input distribution, as float32.

    For ``scene-percentile`` mode, ``lo``/``hi`` are the scene's per-band percentiles (from
    :func:`band_percentiles`); they are required. ``fixed`` mode ignores them and clips to the
    record's own bounds. Non-finite values become 0 after normalisation (they are masked as
    nodata elsewhere and never reach the output). ``copy=False`` normalises a float32 ``arr``
    in place (the inference core's freshly read chunks, which nothing else holds).
    """
    x = arr.astype(np.float32, copy=copy)
    c = x.shape[0]
    mean = np.asarray(norm.mean, dtype=np.float32).reshape(c, 1, 1)
    std = np.asarray(norm.std, dtype=np.float32).reshape(c, 1, 1)
    # in place, operation for operation the same float32 arithmetic as the plain expressions
    # ((x - lo) / (hi - lo), clip, (x - mean) / std): bit-identical, without the temporaries
    if norm.mode == "scene-percentile":
        if lo is None or hi is None:
            raise ValueError("scene-percentile normalisation needs the scene's lo/hi")
        lo_ = np.asarray(lo, dtype=np.float32).reshape(c, 1, 1)
        hi_ = np.asarray(hi, dtype=np.float32).reshape(c, 1, 1)
        x -= lo_
        x /= hi_ - lo_
        np.clip(x, 0.0, 1.0, out=x)
    elif norm.clip_low is not None and norm.clip_high is not None:
        lo_ = np.asarray(norm.clip_low, dtype=np.float32).reshape(c, 1, 1)
        hi_ = np.asarray(norm.clip_high, dtype=np.float32).reshape(c, 1, 1)
        np.clip(x, lo_, hi_, out=x)
    x -= mean
    x /= std
    bad = np.isfinite(x, out=scratch("normalise.bad", x.shape, bool))  # reused: no fresh pages
    np.copyto(x, np.float32(0.0), where=np.logical_not(bad, out=bad))
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


def fixed_moments(
    arrays: list[np.ndarray], q_low: float = 0.5, q_high: float = 99.5, seed: int = 0
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Training-split clip bounds and mean/std per band for ``fixed`` normalisation.

    The bounds are the pooled ``q_low``/``q_high`` quantiles of all finite values of the
    (C, H, W) arrays (a seeded subsample of at most :data:`MAX_STAT_SAMPLES` per band); the
    moments are taken after clipping to them, as :func:`apply_normalisation` will clip.
    Returns (clip_low, clip_high, mean, std).
    """
    c = arrays[0].shape[0]
    rng = np.random.default_rng(seed)
    out: tuple[list[float], list[float], list[float], list[float]] = ([], [], [], [])
    for i in range(c):
        v = np.concatenate([a[i].reshape(-1) for a in arrays]).astype(np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            v = np.zeros(1)
        if v.size > MAX_STAT_SAMPLES:
            v = rng.choice(v, MAX_STAT_SAMPLES, replace=False)
        lo, hi = (float(q) for q in np.percentile(v, [q_low, q_high]))
        hi = hi if hi > lo else lo + 1.0
        v = np.clip(v, lo, hi)
        for lst, val in zip(out, (lo, hi, float(v.mean()), float(max(v.std(), 1e-3))), strict=True):
            lst.append(val)
    return out


def calibration_jitter(
    arrays: dict[str, np.ndarray],
    bounds: dict[str, tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    strength: float,
) -> dict[str, np.ndarray]:
    """Random per-band gain, offset and gamma within each band's ``(lo, hi)`` range.

    Why: with ``fixed`` normalisation a model meets products whose calibration to the training
    units is only approximately known (another sensor, L1C vs L2A, another processor). Each
    band is mapped as if its true range were ``lo..hi`` moved by up to ``strength`` × span at
    either end, with a gamma in [1 / (1 + 2·strength), 1 + 2·strength]; NaN stays NaN and
    ``strength=0`` returns the inputs unchanged.
    """
    if strength <= 0:
        return arrays
    out: dict[str, np.ndarray] = {}
    g_max = 1.0 + 2.0 * strength
    for m, a in arrays.items():
        c = a.shape[0]
        lo, hi = (np.asarray(v, dtype=np.float64).reshape(c, 1, 1) for v in bounds[m])
        span = np.maximum(hi - lo, 1e-6)
        lo2 = lo + rng.uniform(-strength, strength, (c, 1, 1)) * span
        hi2 = hi + rng.uniform(-strength, strength, (c, 1, 1)) * span
        hi2 = np.maximum(hi2, lo2 + 0.05 * span)
        gamma = np.exp(rng.uniform(-np.log(g_max), np.log(g_max), (c, 1, 1)))
        # float32 throughout (the inputs' precision; float64 pow cost as much as the read)
        f32 = np.float32
        x = np.subtract(a, lo2.astype(f32), dtype=f32)
        x *= (1.0 / (hi2 - lo2)).astype(f32)
        np.maximum(x, f32(0.0), out=x)  # NaN stays NaN
        inside = x <= 1.0  # gamma inside the range, linear beyond it
        np.power(x, np.broadcast_to(gamma.astype(f32), x.shape), out=x, where=inside)
        x *= span.astype(f32)
        x += lo.astype(f32)
        x[~np.isfinite(a)] = np.nan
        out[m] = x
    return out

"""Training-time transforms shared by every dataset: padding, crops, window jitter, flips and
photometric jitter.

The calibration jitter of fixed normalisation lives in :mod:`mfaf_cli.normalize`, beside the
normalisation it perturbs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np


def pad_to(
    arrays: dict[str, np.ndarray], mask: np.ndarray, h: int, w: int, ignore_index: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pad (C,h0,w0) arrays (reflect/edge) and the mask (ignore) at bottom/right to h × w."""
    h0, w0 = mask.shape
    if h0 >= h and w0 >= w:
        return arrays, mask
    ph, pw = max(0, h - h0), max(0, w - w0)
    mode: Literal["reflect", "edge"] = "reflect" if (ph < h0 and pw < w0) else "edge"
    out = {k: np.pad(v, ((0, 0), (0, ph), (0, pw)), mode=mode) for k, v in arrays.items()}
    m = np.pad(mask, ((0, ph), (0, pw)), constant_values=ignore_index)
    return out, m


def photometric_jitter(
    arrays: dict[str, np.ndarray],
    lohi: dict[str, tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    strength: float,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Random per-band stretch bounds and gamma, so a model does not learn one sensor's look.

    Why: a model trained on one product (OMBRIA's 8-bit composites) meets others (raw
    Sentinel-2 reflectance, Sentinel-1 dB) whose per-scene stretch differs in shape. Each band's
    percentile bounds move by up to ``strength`` × (hi − lo) and its stretched values get a gamma
    in [1 / (1 + 2·strength), 1 + 2·strength]; ``strength=0`` returns the inputs unchanged.
    Values stay in sensor units (the gamma is applied inside the stretch), so the usual
    :func:`apply_normalisation` follows.
    """
    if strength <= 0:
        return arrays, lohi
    out_a: dict[str, np.ndarray] = {}
    out_l: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    g_max = 1.0 + 2.0 * strength
    for m, a in arrays.items():
        lo, hi = (np.asarray(v, dtype=np.float64) for v in lohi[m])
        span = hi - lo
        c = a.shape[0]
        gamma = np.exp(rng.uniform(-np.log(g_max), np.log(g_max), c)).reshape(c, 1, 1)
        lo_ = lo.reshape(c, 1, 1)
        span_ = span.reshape(c, 1, 1)
        x = np.clip((a.astype(np.float64) - lo_) / span_, 0.0, 1.0) ** gamma
        out_a[m] = (lo_ + x * span_).astype(np.float32)
        out_a[m][~np.isfinite(a)] = np.nan
        lo2 = lo + rng.uniform(-strength, strength, c) * span
        hi2 = hi + rng.uniform(-strength, strength, c) * span
        out_l[m] = (lo2, np.maximum(hi2, lo2 + 0.05 * span))
    return out_a, out_l


def augment(
    arrays: dict[str, np.ndarray], mask: np.ndarray, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The same random 90° rotation and horizontal flip for every modality and the mask."""
    k = int(rng.integers(4))
    flip = bool(rng.random() < 0.5)

    def tf(a: np.ndarray) -> np.ndarray:
        a = np.rot90(a, k, axes=(-2, -1))
        if flip:
            a = a[..., ::-1]
        return np.ascontiguousarray(a)

    return {m: tf(a) for m, a in arrays.items()}, tf(mask)


def random_crop(
    arrays: dict[str, np.ndarray],
    mask: np.ndarray,
    tile: int,
    ignore_index: int,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A random tile × tile crop of every modality and the mask (padding first if smaller)."""
    t = tile
    arrays, mask = pad_to(arrays, mask, t, t, ignore_index)
    h, w = mask.shape
    if h == t and w == t:
        return arrays, mask
    r = int(rng.integers(0, h - t + 1))
    c = int(rng.integers(0, w - t + 1))
    return {k: v[:, r : r + t, c : c + t] for k, v in arrays.items()}, mask[r : r + t, c : c + t]


def jitter_window(
    r: int, c: int, h: int, w: int, tile: int, rng: np.random.Generator | None
) -> tuple[int, int]:
    """A window origin moved by up to half a tile (staying inside h × w); unchanged without rng.

    Why: sheet and scene datasets cut a fixed grid; jitter shows the model other cuts each epoch.
    """
    if rng is None:
        return r, c
    t = tile
    r = int(np.clip(r + rng.integers(-t // 2, t // 2 + 1), 0, max(0, h - t)))
    c = int(np.clip(c + rng.integers(-t // 2, t // 2 + 1), 0, max(0, w - t)))
    return r, c

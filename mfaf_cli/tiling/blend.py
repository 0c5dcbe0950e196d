"""Blend weights for stitching overlapping windows in probability space.

A network sees less context near a tile's edge, so where two windows overlap each should
count less near its own edge and more near its centre. Only the sides that actually overlap
a neighbour are tapered. A side on the scene border has no better-placed neighbour to hand
over to: tapering it (as a centred 2-D Gaussian does) only pushes the border pixels' weight
sums towards zero, where the float32 normalisation turns into a ratio of tiny numbers. Here
the border rows/columns carry the window's maximum weight.

Weights are separable: ``w[y, x] = p_rows[y] * p_cols[x]`` where each 1-D profile is 1 in
the interior and ramps down over the overlap width on the tapered sides. Ramps are strictly
positive (floored at :data:`MIN_WEIGHT`), so every covered pixel gets a positive weight sum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np

from mfaf_cli.errors import UsageError
from mfaf_cli.tiling.windows import Window

#: Smallest weight a ramp gives; keeps weights strictly positive and products finite in float32.
MIN_WEIGHT = 1e-3
#: Width of the Gaussian ramp, as a fraction of the overlap (weight ≈ 0.011 at the far edge).
GAUSSIAN_SIGMA = 1.0 / 3.0

Taper = tuple[int, int, int, int]  # overlap px on the (top, bottom, left, right) side


def _ramp_constant(x: np.ndarray) -> np.ndarray:
    return np.ones_like(x)


def _ramp_cosine(x: np.ndarray) -> np.ndarray:
    # Raised cosine: f(x) + f(1 - x) = 1, so two mirrored ramps already sum to one.
    return 0.5 - 0.5 * np.cos(np.pi * x)


def _ramp_gaussian(x: np.ndarray) -> np.ndarray:
    # Half Gaussian rising to 1 at the inner end of the overlap.
    return np.exp(-0.5 * ((1.0 - x) / GAUSSIAN_SIGMA) ** 2)


#: Blend mode name -> ramp ``f(x)`` for ``x`` in (0, 1] (fraction of the way into the overlap).
BLEND_MODES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gaussian": _ramp_gaussian,
    "cosine": _ramp_cosine,
    "constant": _ramp_constant,
}


def ramp_profile(length: int, start: int, end: int, mode: str) -> np.ndarray:
    """1-D weight profile of ``length`` px tapered over ``start``/``end`` px at either end.

    A side with taper 0 stays at 1 right up to its edge. Pixel ``d`` px from a tapered edge
    (``d = 0`` at the edge) gets ``f((d + 0.5) / taper)`` while ``d < taper``.
    """
    ramp = BLEND_MODES[mode]
    d = np.arange(length, dtype=np.float64)
    prof = np.ones(length, dtype=np.float64)
    for dist, taper in ((d, start), (d[::-1], end)):
        taper = min(max(int(taper), 0), length)
        if taper:
            x = np.minimum((dist + 0.5) / taper, 1.0)
            prof *= np.maximum(ramp(x), MIN_WEIGHT)
    return prof


@lru_cache(maxsize=128)
def _cached(height: int, width: int, mode: str, taper: Taper) -> np.ndarray:
    top, bottom, left, right = taper
    w = np.outer(ramp_profile(height, top, bottom, mode), ramp_profile(width, left, right, mode))
    out = w.astype(np.float32)
    out.flags.writeable = False  # shared between calls: callers must not modify it
    return out


def blend_weights(
    tile: int | tuple[int, int], mode: str = "gaussian", taper: Sequence[int] = (0, 0, 0, 0)
) -> np.ndarray:
    """Weights of one window for blending in probability space.

    Args:
        tile: window side in px, or ``(height, width)``.
        mode: one of :data:`BLEND_MODES` (``gaussian``, ``cosine``, ``constant``).
        taper: overlap width in px with the neighbour on the (top, bottom, left, right)
            side; 0 where there is no neighbour (scene border), which is never tapered.

    Returns:
        Read-only (tile, tile) float32 array, strictly positive, equal to its maximum on
        untapered sides. Cached per (tile, mode, taper).
    """
    if mode not in BLEND_MODES:
        raise UsageError(f"unknown blend mode {mode!r}; use one of {', '.join(BLEND_MODES)}")
    h, w = (tile, tile) if isinstance(tile, int | np.integer) else tile
    if h < 1 or w < 1:
        raise ValueError(f"tile must be >= 1 px, got {tile!r}")
    if len(taper) != 4:
        raise ValueError(f"taper must be (top, bottom, left, right), got {taper!r}")
    key: Taper = tuple(int(t) for t in taper)  # type: ignore[assignment]
    return _cached(int(h), int(w), mode, key)


def _axis_tapers(spans: Sequence[tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """For each distinct origin on one axis: overlap px with the windows before and after."""
    ordered = sorted(set(spans))
    out: dict[int, tuple[int, int]] = {}
    for i, (off, end) in enumerate(ordered):
        before = max((e - off for o, e in ordered[:i] if o < off), default=0)
        after = max((end - o for o, e in ordered[i + 1 :] if o > off), default=0)
        size = end - off
        out[off] = (min(max(before, 0), size), min(max(after, 0), size))
    return out


def window_tapers(windows: Sequence[Window]) -> list[Taper]:
    """Overlap px on each side of each window, from the grid layout of ``windows``.

    Assumes a grid (as :func:`~mfaf_cli.tiling.windows.tile_windows` makes): every row of
    windows spans the full width and every column the full height, so a side is tapered
    exactly when some other row/column of windows overlaps it.
    """
    rows = _axis_tapers([(w.row_off, w.row_end) for w in windows])
    cols = _axis_tapers([(w.col_off, w.col_end) for w in windows])
    return [(*rows[w.row_off], *cols[w.col_off]) for w in windows]


def make_weight_fn(
    windows: Sequence[Window], mode: str = "gaussian"
) -> Callable[[Window], np.ndarray]:
    """``weight_fn(window) -> (h, w) float32`` blend weights for the streaming merger."""
    if mode not in BLEND_MODES:
        raise UsageError(f"unknown blend mode {mode!r}; use one of {', '.join(BLEND_MODES)}")
    tapers = dict(zip(windows, window_tapers(windows), strict=True))

    def weight_fn(window: Window) -> np.ndarray:
        return blend_weights((window.height, window.width), mode, tapers[window])

    return weight_fn

"""Where scene statistics are sampled: whole source blocks spread over the scene.

A decimated read of the whole scene (``out_shape``) decodes every block of the file and,
inside a run's bounded GDAL block cache, decodes most of them more than once: at 16384² it
had not finished after 12 minutes (issue 19). Reading a fixed number of whole blocks, laid
out on a lattice over the scene, costs the same whatever the scene's size and decodes each
chosen block once; the values kept are thinned to a fixed count so memory is bounded too.
The sample is a lattice of strata: a bright feature much smaller than one stratum (e.g. one
town in a corner) can be missed, which a full read would have seen.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

#: Pixels decoded for scene statistics: at least 32 blocks of 512², and SCENE_FRACTION of a
#: larger scene (more strata, so smaller features are hit; still a fixed share of the run).
STATS_DECODE_PIXELS = 32 * 512 * 512
SCENE_FRACTION = 1 / 8
#: Values kept per band for the percentiles (the sample is thinned to about this many).
STATS_KEEP_VALUES = 1_000_000
#: A sampling unit is at least this many pixels on a side (tiny blocks are grouped).
MIN_UNIT = 256
#: Blocks wider than this are strips: a unit then spans the scene's width (decoded anyway).
STRIP_WIDTH = 2048
#: The sample is seeded: the same scene gives the same statistics on every run.
SEED = 0


@dataclass(frozen=True)
class StatsSample:
    """The sample's windows ``(row, col, height, width)`` on the grid and the stride that
    thins each window's pixels; ``to_dict`` is what ``--json`` records."""

    windows: tuple[tuple[int, int, int, int], ...]
    stride: int
    scene_pixels: int

    @property
    def pixels_read(self) -> int:
        return sum(h * w for _, _, h, w in self.windows)

    def to_dict(self) -> dict[str, object]:
        return {
            "method": "blocks", "windows": len(self.windows), "stride": self.stride,
            "pixels_read": self.pixels_read,
            "fraction_read": round(self.pixels_read / max(self.scene_pixels, 1), 4),
        }  # fmt: skip


def _unit(block: int, phase: int, size: int) -> tuple[int, int]:
    """``(unit length, first unit start)`` along one axis: whole blocks, ≥ MIN_UNIT."""
    block = max(block, 1)
    unit = block * math.ceil(MIN_UNIT / block) if block < MIN_UNIT else block
    if unit > STRIP_WIDTH or unit >= size:
        return size, 0
    return unit, phase % unit


def _starts(size: int, unit: int, first: int) -> list[int]:
    """Unit starts along an axis (the first one may be partial, clipped at 0)."""
    starts = [0] if first else []
    return starts + list(range(first, size, unit))


class _Draws:
    """The sample's seeded generator, made on the first draw: a sample that takes every unit
    draws nothing (each stratum one unit) and so needs no generator, nor the import of
    ``numpy.random`` (~10 ms, the first in a predict run: a small scene's SAR units sample)."""

    def __init__(self) -> None:
        self._rng: np.random.Generator | None = None

    def integers(self, low: int, high: int) -> int:
        """One of ``[low, high)``; ``low`` itself where that is the only one (as numpy's
        generator gives it, drawing nothing)."""
        if high - low == 1:
            return low
        if self._rng is None:
            self._rng = np.random.default_rng(SEED)
        return int(self._rng.integers(low, high))


def _spread(n_all: int, k: int, rng: _Draws) -> list[int]:
    """``k`` of ``range(n_all)``: one at a seeded random place in each of k equal strata
    (not each stratum's centre: a regular lattice aliases with periodic scenes, fields and
    orchards, and biased the 98th percentile by 2 % of the stretch on a sinusoidal scene)."""
    k = max(1, min(k, n_all))
    edges = [round(i * n_all / k) for i in range(k + 1)]
    return [rng.integers(a, b) for a, b in itertools.pairwise(edges) if b > a]


def sample_windows(
    height: int,
    width: int,
    block: tuple[int, int, int] = (512, 512, 0),
    decode_pixels: int | None = None,
    keep_values: int | None = None,
) -> StatsSample:
    """Whole-block windows for scene statistics on a ``height`` × ``width`` grid.

    ``block``: ``(block height, block width, grid column where a block starts)`` of the input
    costliest to decode (:meth:`AlignedScene.read_blocks`). Units of whole blocks are picked
    on an even lattice until ``decode_pixels`` would be exceeded (all of them on a small
    scene; default: :data:`STATS_DECODE_PIXELS` or :data:`SCENE_FRACTION` of the scene,
    whichever is more); ``stride`` thins each window so about ``keep_values`` pixels are kept.
    """
    if decode_pixels is None:
        decode_pixels = max(STATS_DECODE_PIXELS, int(height * width * SCENE_FRACTION))
    keep_values = STATS_KEEP_VALUES if keep_values is None else keep_values
    bh, bw, phase = block
    uh, r_first = _unit(bh, 0, height)
    uw, c_first = _unit(bw, phase, width)
    rows, cols = _starts(height, uh, r_first), _starts(width, uw, c_first)
    n = max(1, decode_pixels // (uh * uw))
    k_r, k_c = len(rows), len(cols)
    if n < k_r * k_c:  # a lattice of strata about as square as the scene
        k_r = max(1, min(len(rows), n, round(math.sqrt(n * len(rows) / len(cols)))))
        k_c = max(1, min(len(cols), n // k_r))
    rng = _Draws()
    windows = []
    for i in _spread(len(rows), k_r, rng):
        r1 = rows[i + 1] if i + 1 < len(rows) else height
        for j in _spread(len(cols), k_c, rng):  # drawn afresh per row: no aligned columns
            c1 = cols[j + 1] if j + 1 < len(cols) else width
            windows.append((rows[i], cols[j], r1 - rows[i], c1 - cols[j]))
    read = sum(h * w for _, _, h, w in windows)
    stride = max(1, math.ceil(math.sqrt(read / max(keep_values, 1))))
    return StatsSample(tuple(windows), stride, height * width)

"""The window plan of a run, anchored to the reference raster's own pixel grid.

A run over a crop (``--bounds``) must compute exactly the windows the whole-scene run
computes, or its seams differ from the whole run's. So windows are laid out over the full
reference raster (origins every ``stride`` from its top-left pixel, the last one ending at its
edge, as :func:`~mfaf_cli.tiling.windows.tile_windows` does), and a crop takes the windows
that touch it. Those windows reach past the crop; the reader reads the real pixels there (the
*read grid* is the crop grown to cover its windows, clipped to the reference raster), so only
where the reference raster itself ends is anything padded. Blend tapers come from the full
layout too, so a crop's border windows keep the weights they have in the whole run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mfaf_cli.tiling.windows import Window, validate_tiling

Taper = tuple[int, int, int, int]


def axis_offsets(size: int, tile: int, stride: int) -> list[int]:
    """Window origins along one axis of the full raster: every ``stride``, the last one
    shifted back to end at ``size`` (one window at 0 when ``size <= tile``)."""
    if size <= tile:
        return [0]
    offs = list(range(0, size - tile, stride))
    offs.append(size - tile)
    return offs


def axis_tapers(offsets: list[int], tile: int) -> dict[int, tuple[int, int]]:
    """Overlap px with the previous and next window for each origin of a sorted axis."""
    out: dict[int, tuple[int, int]] = {}
    for i, off in enumerate(offsets):
        before = offsets[i - 1] + tile - off if i > 0 else 0
        after = off + tile - offsets[i + 1] if i + 1 < len(offsets) else 0
        out[off] = (min(max(before, 0), tile), min(max(after, 0), tile))
    return out


@dataclass(frozen=True)
class AxisPlan:
    """One axis of a plan, in reference-raster pixels."""

    starts: list[int]  # origins of the windows touching the crop
    tapers: dict[int, tuple[int, int]]
    read_start: int  # the read grid's first pixel
    read_size: int


def plan_axis(ref_size: int, start: int, size: int, tile: int, stride: int) -> AxisPlan:
    """The windows of a full ``ref_size`` axis that touch the crop ``[start, start + size)``."""
    full = axis_offsets(ref_size, tile, stride)
    starts = [o for o in full if o < start + size and o + tile > start]
    tapers = axis_tapers(full, tile)
    if not starts:
        return AxisPlan([], tapers, start, size)
    lo = min(start, starts[0])  # starts are >= 0: inside the raster
    hi = max(start + size, min(starts[-1] + tile, ref_size))  # past the raster: padded
    return AxisPlan(starts, {o: tapers[o] for o in starts}, lo, hi - lo)


@dataclass(frozen=True)
class WindowPlan:
    """Windows of a run over an ``height × width`` output grid.

    ``windows`` are in output-grid pixels (they may reach past it); :meth:`read_window`
    gives the same window in read-grid pixels, whose origin is ``read_offset`` (rows, cols)
    from the output grid's origin (negative or zero) and whose size is ``read_shape``.
    """

    height: int
    width: int
    tile: int
    windows: list[Window]
    tapers: dict[Window, Taper]
    read_offset: tuple[int, int]
    read_shape: tuple[int, int]

    @property
    def anchored(self) -> bool:
        """Whether the read grid differs from the output grid."""
        return self.read_offset != (0, 0) or self.read_shape != (self.height, self.width)

    def read_window(self, window: Window) -> Window:
        dr, dc = self.read_offset
        return Window(window.row_off - dr, window.col_off - dc, window.height, window.width)

    def columns(self, c0: int, c1: int) -> WindowPlan:
        """The plan of output columns ``[c0, c1)`` alone (a column panel): the windows that
        touch them, in panel pixels, with their tapers from this plan and the same read grid
        (so each panel pixel gets exactly the contributions it gets in the whole plan)."""
        if not 0 <= c0 < c1 <= self.width:
            raise ValueError(f"columns {c0}..{c1} outside 0..{self.width}")
        windows: list[Window] = []
        tapers: dict[Window, Taper] = {}
        for w in self.windows:
            if w.col_off < c1 and w.col_off + w.width > c0:
                moved = Window(w.row_off, w.col_off - c0, w.height, w.width)
                windows.append(moved)
                tapers[moved] = self.tapers[w]
        dr, dc = self.read_offset
        return WindowPlan(
            self.height, c1 - c0, self.tile, windows, tapers, (dr, dc - c0), self.read_shape
        )

    def weight_fn(self, mode: str) -> Callable[[Window], np.ndarray]:
        """``weight_fn(window)`` for the streaming merger, tapered as in the full layout."""
        from mfaf_cli.tiling.blend import BLEND_MODES, blend_weights

        if mode not in BLEND_MODES:
            raise ValueError(f"unknown blend mode {mode!r}")
        tapers = self.tapers

        def weight_fn(window: Window) -> np.ndarray:
            return blend_weights((window.height, window.width), mode, tapers[window])

        return weight_fn


def plan_windows(
    height: int,
    width: int,
    tile: int,
    overlap: float,
    anchor: tuple[int, int, int, int] | None = None,
) -> WindowPlan:
    """The window plan of an ``height × width`` output grid.

    ``anchor = (row0, col0, ref_height, ref_width)``: the output grid's origin in the pixels of
    a reference raster of that size on the same pixel lattice; windows are then those of the
    whole reference raster that touch the output grid. None: the output grid is its own anchor
    (the plan equals :func:`~mfaf_cli.tiling.windows.tile_windows`).
    """
    stride = validate_tiling(tile, overlap)
    if height < 1 or width < 1:
        raise ValueError(f"raster size must be >= 1x1, got {height}x{width}")
    r0, c0, ref_h, ref_w = anchor if anchor is not None else (0, 0, height, width)
    rows = plan_axis(ref_h, r0, height, tile, stride)
    cols = plan_axis(ref_w, c0, width, tile, stride)
    windows: list[Window] = []
    tapers: dict[Window, Taper] = {}
    for r in rows.starts:
        for c in cols.starts:
            w = Window(r - r0, c - c0, tile, tile)
            windows.append(w)
            tapers[w] = (*rows.tapers[r], *cols.tapers[c])
    offset = (rows.read_start - r0, cols.read_start - c0)
    return WindowPlan(
        height, width, tile, windows, tapers, offset, (rows.read_size, cols.read_size)
    )

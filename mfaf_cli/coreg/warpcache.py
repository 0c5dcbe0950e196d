"""Warped blocks of the grid kept between reads, for readers that come back to the same area.

Why: training reads a scene's windows again every epoch (jittered, so never twice the same
window), and a source in another CRS is warped by GDAL per read: that warp was most of a
training sample's CPU (benchmarks/train_bench.py). Here a warped source is warped once per
fixed block of the grid (``block`` × ``block`` from the grid's origin) and windows are cut
from the blocks: a window's values are those of the blocks under it, whatever the window.
Readers that keep a whole scene use :data:`SCENE_BLOCK`-pixel blocks: each warp call costs
~3 ms of fixed set-up in rasterio and GDAL besides its pixels, so 256² blocks made the first
epoch warp at 1.6× the CPU of 1024² ones (4.6 vs 2.8 ms per 256² of 2-band SAR).
The blocks are kept least-recently-used first out, within ``max_bytes`` per process, so
memory does not grow with the scene (a scene larger than the budget is warped again where
its blocks were dropped). Predict does not use it: it reads each window once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np

#: Block side of a cache that holds a whole scene (coreg/align.py): large enough that the
#: per-call cost of a warp is small beside its pixels, small enough that one block of a
#: scene's many bands stays a few tens of MB while it is warped.
SCENE_BLOCK = 1024

#: warps grid block (row, col, h, w) of one source: (C, h, w) float32 values, (h, w) valid
Warp = Callable[[int, int, int, int], "tuple[np.ndarray, np.ndarray]"]


class WarpCache:
    """Grid blocks of warped sources, keyed by ``(source key, block row, block col)``."""

    def __init__(self, max_bytes: int, block: int = 256) -> None:
        if block < 1:
            raise ValueError(f"block must be ≥ 1, got {block}")
        self.max_bytes, self.block = int(max_bytes), int(block)
        self._blocks: OrderedDict[Hashable, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = self.misses = 0

    def read(
        self,
        key: Hashable,
        warp: Warp,
        window: tuple[int, int, int, int],
        grid_hw: tuple[int, int],
        bands: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fresh (values, valid) of grid ``window`` ``(row, col, h, w)`` (inside the grid)."""
        row, col, h, w = window
        b = self.block
        data = np.empty((bands, h, w), dtype=np.float32)
        ok = np.empty((h, w), dtype=bool)
        for br in range(row // b, (row + h - 1) // b + 1):
            for bc in range(col // b, (col + w - 1) // b + 1):
                r0, c0 = br * b, bc * b
                vals, vok = self._block(key, warp, br, bc, grid_hw)
                ys = slice(max(row, r0), min(row + h, r0 + vok.shape[0]))
                xs = slice(max(col, c0), min(col + w, c0 + vok.shape[1]))
                dst = (slice(ys.start - row, ys.stop - row), slice(xs.start - col, xs.stop - col))
                src = (slice(ys.start - r0, ys.stop - r0), slice(xs.start - c0, xs.stop - c0))
                data[(slice(None), *dst)] = vals[(slice(None), *src)]
                ok[dst] = vok[src]
        return data, ok

    def _block(
        self, key: Hashable, warp: Warp, br: int, bc: int, grid_hw: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        k = (key, br, bc)
        with self._lock:
            got = self._blocks.get(k)
            if got is not None:
                self._blocks.move_to_end(k)
                self.hits += 1
                return got
        b = self.block
        r0, c0 = br * b, bc * b
        got = warp(r0, c0, min(b, grid_hw[0] - r0), min(b, grid_hw[1] - c0))
        size = got[0].nbytes + got[1].nbytes
        with self._lock:
            self.misses += 1
            if size <= self.max_bytes and k not in self._blocks:
                self._blocks[k] = got
                self.bytes += size
                while self.bytes > self.max_bytes:
                    _, (v, m) = self._blocks.popitem(last=False)
                    self.bytes -= v.nbytes + m.nbytes
        return got

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self.bytes = 0

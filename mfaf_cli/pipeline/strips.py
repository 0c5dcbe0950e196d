"""Read each grid row once: window reads served from full-width row chunks.

Overlapping windows read every pixel ~1.8 times (at 25 % overlap) and pay GDAL's per-call
cost (warp set-up, block lookups) per window; profiling the null-engine run put ~70 % of
its time in those reads. Here the read grid's rows are cut at every window-row edge into
chunks; each chunk is read (and warped) once, over the full width, in a small thread pool
ahead of need, and a window is sliced from the chunks it spans. A chunk is dropped as soon
as no later window row needs it, so memory holds about one window row of input.

Results equal :meth:`AlignedScene.read` window by window wherever a block's values do not
depend on how the grid is cut (direct reads exactly; warps up to GDAL's resampling).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from mfaf_cli.coreg.align import AlignedScene, reflect_pad
from mfaf_cli.tiling.windows import Window

Chunk = tuple[dict[str, np.ndarray], np.ndarray]
#: Applied to each chunk's arrays once, in the reader thread (e.g. the model's normalisation,
#: which is per pixel, so a chunk normalised equals its windows normalised one by one).
ChunkTransform = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def chunk_edges(row_offsets: Sequence[int], tile: int, height: int) -> list[int]:
    """Sorted chunk boundaries: every window row's first and last-plus-one row, in [0, H]."""
    edges = {0, height}
    for r in row_offsets:
        edges.add(min(max(r, 0), height))
        edges.add(min(max(r + tile, 0), height))
    return sorted(edges)


class StripReader:
    """``read(window)`` like :meth:`AlignedScene.read`, from row chunks read ahead in threads.

    Windows must be requested from one thread in raster order of their rows (as the core
    does); ``threads`` chunk readers run ahead by up to ``ahead`` chunks (0: read in the
    caller). ``transform`` (per-pixel) is applied to every chunk as it is read, so each pixel
    is transformed once, in a reader thread, however many windows overlap it.
    """

    def __init__(
        self,
        scene: AlignedScene,
        row_offsets: Sequence[int],
        tile: int,
        threads: int = 1,
        ahead: int = 4,
        transform: ChunkTransform | None = None,
        cols: tuple[int, int] | None = None,
    ) -> None:
        self.scene = scene
        self._transform = transform
        self.height, self.width = scene.grid.height, scene.grid.width
        #: The grid columns the chunks span (a column panel's windows need no more).
        self.cols = cols or (0, self.width)
        self.tile = tile
        self.edges = chunk_edges(row_offsets, tile, self.height)
        self._pool = (
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mfaf-strip")
            if threads > 0
            else None
        )
        self._chunks: dict[int, Future[Chunk]] = {}
        self._next = 0  # next chunk index to submit
        self._ahead = max(ahead, 1)
        self._lock = threading.Lock()

    def _read_chunk(self, j: int) -> Chunk:
        r0, r1 = self.edges[j], self.edges[j + 1]
        a, b = self.cols
        return self._read_scene(Window(r0, a, r1 - r0, b - a))

    def _read_scene(self, window: Window) -> Chunk:
        arrays, valid = self.scene.read(window)
        if self._transform is not None:
            arrays = self._transform(arrays)
        return arrays, valid

    def _chunk(self, j: int) -> Chunk:
        with self._lock:
            if self._pool is None:  # no reader threads: read in the caller
                if j not in self._chunks:
                    done: Future[Chunk] = Future()
                    done.set_result(self._read_chunk(j))
                    self._chunks[j] = done
            while (
                self._pool is not None
                and self._next < len(self.edges) - 1
                and (self._next <= j + self._ahead)
            ):
                self._chunks[self._next] = self._pool.submit(self._read_chunk, self._next)
                self._next += 1
            fut = self._chunks[j]
        if self._pool is not None and fut.cancel():
            # not started (the readers are busy ahead of it): read it here, not wait idle
            done = Future()
            done.set_result(self._read_chunk(j))
            with self._lock:
                self._chunks[j] = done
            fut = done
        return fut.result()

    def _release_before(self, row: int) -> None:
        """Drop chunks that end at or above ``row`` (no later window row needs them)."""
        with self._lock:
            for j in [j for j in self._chunks if self.edges[j + 1] <= row]:
                del self._chunks[j]

    def read(self, window: Window) -> tuple[dict[str, np.ndarray], np.ndarray]:
        r0w, c0w, hw, ww = window.row_off, window.col_off, window.height, window.width
        r0, c0 = max(0, r0w), max(0, c0w)
        r1, c1 = min(self.height, r0w + hw), min(self.width, c0w + ww)
        if r1 <= r0 or c1 <= c0:
            return self._read_scene(window)  # all outside: zeros, as the scene gives
        arrays, valid = self._slice(self._parts(r0, r1), r0, r1, c0, c1)
        pads = ((r0 - r0w, r0w + hw - r1), (c0 - c0w, c0w + ww - c1))
        if any(p for pair in pads for p in pair):
            arrays = {k: reflect_pad(v, pads) for k, v in arrays.items()}
            valid = np.pad(valid, pads, mode="constant", constant_values=False)
        self._release_before(r0w)  # later windows start at or below this row
        return arrays, valid

    def read_into(
        self, window: Window, arrays: Mapping[str, np.ndarray], valid: np.ndarray
    ) -> None:
        """:meth:`read` written into the given (C,h,w) arrays and (h,w) mask, e.g. a batch's
        slots: one copy from the chunks, where ``read`` and stacking a batch make two."""
        r0, c0 = window.row_off, window.col_off
        r1, c1 = r0 + window.height, c0 + window.width
        if r0 < 0 or c0 < 0 or r1 > self.height or c1 > self.width:  # padded: the slow way
            got, ok = self.read(window)
            for name, out in arrays.items():
                out[...] = got[name]
            valid[...] = ok
            return
        x0, x1 = self._columns(c0, c1)
        for (arrs, ok), e0, e1 in self._parts(r0, r1):
            a, b = max(r0, e0), min(r1, e1)
            valid[a - r0 : b - r0] = ok[a - e0 : b - e0, x0:x1]
            for name, out in arrays.items():
                out[:, a - r0 : b - r0] = arrs[name][:, a - e0 : b - e0, x0:x1]
        self._release_before(r0)

    def _columns(self, c0: int, c1: int) -> tuple[int, int]:
        """Grid columns ``[c0, c1)`` in the chunks' own columns."""
        if c0 < self.cols[0] or c1 > self.cols[1]:
            raise ValueError(f"columns {c0}..{c1} reach past the reader's {self.cols}")
        return c0 - self.cols[0], c1 - self.cols[0]

    def _parts(self, r0: int, r1: int) -> list[tuple[Chunk, int, int]]:
        """The chunks rows ``[r0, r1)`` span, with each chunk's first and end row."""
        j = bisect.bisect_right(self.edges, r0) - 1
        parts = []
        while self.edges[j] < r1:
            parts.append((self._chunk(j), self.edges[j], self.edges[j + 1]))
            j += 1
        return parts

    def _slice(
        self, parts: list[tuple[Chunk, int, int]], r0: int, r1: int, c0: int, c1: int
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        x0, x1 = self._columns(c0, c1)
        arrays: dict[str, list[np.ndarray]] = {}
        valids: list[np.ndarray] = []
        for (arrs, ok), e0, e1 in parts:
            a, b = max(r0, e0) - e0, min(r1, e1) - e0
            valids.append(ok[a:b, x0:x1])
            for name, v in arrs.items():
                arrays.setdefault(name, []).append(v[:, a:b, x0:x1])
        out = {name: np.concatenate(v, axis=1) for name, v in arrays.items()}
        return out, np.concatenate(valids, axis=0)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._chunks.clear()

    def __getattr__(self, name: str) -> Any:  # grid, sources, ...: as the scene
        return getattr(self.scene, name)

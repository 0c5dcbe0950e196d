"""Streaming, weighted merge of overlapping window predictions into finished raster rows.

A 20 000 × 20 000 scene with 8 classes would need 12.8 GB for a full-scene float32
accumulator. Windows arrive in raster order, so at any time only the rows between the top of
the oldest unfinished window row and the bottom of the newest window are still being written
to. :class:`StreamingMerger` keeps just that band (``K × rows × W`` weighted sums plus a
``rows × W`` weight sum and an invalid mask), and as soon as every window touching a row has
been accounted for, normalises the row and hands it to a sink, in order, then forgets it.
Peak memory is ``O(K × (tile + stride) × W)`` whatever the scene height.

:class:`RowBandMerger` is the bookkeeping (which windows are still due, which rows are
finished, how far the band reaches); :class:`StreamingMerger` keeps the band in numpy and
:class:`~mfaf_cli.stitch.torch_merger.DeviceMerger` in torch tensors on the model's device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from mfaf_cli.scratch import scratch
from mfaf_cli.tiling.windows import Window

#: ``sink(row0, probs (K, r, W) float32, valid (r, W) bool)``; called for finished rows, in order.
Sink = Callable[[int, np.ndarray, np.ndarray], None]
WeightFn = Callable[[Window], np.ndarray]
#: The band's array type: numpy arrays, or torch tensors on a device.
A = TypeVar("A")


class RowBandMerger(Generic[A]):
    """Window and row bookkeeping of a streaming merger; subclasses hold the band itself.

    Args:
        height, width: raster (grid) size.
        num_classes: K, the number of probability planes.
        windows: every window that will be added or skipped (the plan), normally from
            :func:`~mfaf_cli.tiling.windows.tile_windows`. Add them in raster order to keep
            the band small; any order is correct, just more memory.
        weight_fn: ``weight_fn(window) -> (h, w)`` blend weights (e.g. from
            :func:`~mfaf_cli.tiling.blend.make_weight_fn`); None = equal weights.

    A pixel is valid in the output when at least one window added it as valid and no window
    marked it invalid; pixels covered only by skipped windows are invalid (nodata).
    """

    def __init__(
        self,
        height: int,
        width: int,
        num_classes: int,
        windows: Sequence[Window],
        weight_fn: WeightFn | None,
    ) -> None:
        if height < 1 or width < 1 or num_classes < 1:
            raise ValueError(f"bad merger size {num_classes}x{height}x{width}")
        self.height, self.width, self.num_classes = int(height), int(width), int(num_classes)
        self._weight_fn = weight_fn
        self._pending: set[Window] = set()
        self._remaining = np.zeros(self.height, dtype=np.int32)  # unaccounted windows per row
        cap = 1
        for w in windows:
            if w in self._pending:
                raise ValueError(f"window listed twice: {w}")
            self._pending.add(w)
            c = w.clip(self.height, self.width)
            if not c.is_empty():
                self._remaining[c.row_off : c.row_end] += 1
                cap = max(cap, c.height)
        self._next_row = 0  # first row not yet emitted == first row of the band
        self._band_end = 0  # one past the last row any window has touched
        self._capacity = 0
        self._realloc(cap, 0)
        self._capacity = cap
        #: Most rows the band ever spanned, and the rows allocated for it (for memory tests).
        self.max_band_rows = 0
        self.windows_added = 0
        self.windows_skipped = 0

    # ---- state -----------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Rows currently allocated for the band."""
        return self._capacity

    @property
    def next_row(self) -> int:
        """First row not yet handed to the sink."""
        return self._next_row

    @property
    def done(self) -> bool:
        return self._next_row >= self.height

    @property
    def pending(self) -> int:
        """Windows of the plan not yet added or skipped."""
        return len(self._pending)

    # ---- input -----------------------------------------------------------------------
    def add(self, window: Window, probs: Any, valid: np.ndarray | None = None) -> None:
        """Blend one window's probabilities ``(K, h, w)``; ``valid`` (h, w) bool or None."""
        want = (self.num_classes, window.height, window.width)
        if tuple(probs.shape) != want:
            raise ValueError(
                f"probabilities for {window} have shape {tuple(probs.shape)}, expected {want}"
            )
        if valid is not None and valid.shape != window.shape:
            raise ValueError(f"valid mask for {window} has shape {valid.shape}")
        self._take(window)
        c = window.clip(self.height, self.width)
        if not c.is_empty():
            ys = slice(c.row_off - window.row_off, c.row_end - window.row_off)
            xs = slice(c.col_off - window.col_off, c.col_end - window.col_off)
            w = self._weights(window, c.shape, ys, xs)
            self._grow_to(c.row_end)
            b = slice(c.row_off - self._next_row, c.row_end - self._next_row)
            v = None if valid is None else np.asarray(valid[ys, xs], dtype=bool)
            self._accumulate(probs[:, ys, xs], w, v, b, slice(c.col_off, c.col_end))
            self._remaining[c.row_off : c.row_end] -= 1
        self.windows_added += 1
        self._emit_ready()

    def add_skipped(self, window: Window) -> None:
        """Account for a window that was not predicted (entirely nodata), so rows can finish."""
        self._take(window)
        c = window.clip(self.height, self.width)
        if not c.is_empty():
            self._remaining[c.row_off : c.row_end] -= 1
        self.windows_skipped += 1
        self._emit_ready()

    def finish(self) -> None:
        """Emit any rows left (rows no window covers come out invalid); check nothing is missing."""
        if self._pending:
            raise RuntimeError(f"{len(self._pending)} windows were never added or skipped")
        if self._next_row < self.height:
            self._emit(self.height)

    # ---- what a band implementation provides -------------------------------------------
    def _realloc(self, rows: int, used: int) -> None:
        """Make the buffers ``rows`` rows tall, keeping their first ``used`` rows."""
        raise NotImplementedError

    def _weights(self, window: Window, shape: tuple[int, int], ys: slice, xs: slice) -> A:
        """Blend weights of the clipped part ``[ys, xs]`` (of size ``shape``) of ``window``."""
        raise NotImplementedError

    def _accumulate(self, p: A, w: A, v: np.ndarray | None, b: slice, cols: slice) -> None:
        """Add probabilities ``p`` (K, r, c) with weights ``w`` (r, c) to band rows ``b``."""
        raise NotImplementedError

    def _emit_band(self, row0: int, n: int) -> None:
        """Normalise the band's first ``n`` rows (raster row ``row0`` on) and hand them over."""
        raise NotImplementedError

    def _shift(self, n: int, used: int) -> None:
        """Drop the band's first ``n`` of ``used`` rows: move the rest up, clear the freed rows."""
        raise NotImplementedError

    def _emit_empty(self, row0: int, rows: int) -> None:
        """Hand over ``rows`` rows no window ever touched (all nodata)."""
        raise NotImplementedError

    # ---- internals -------------------------------------------------------------------
    def _take(self, window: Window) -> None:
        try:
            self._pending.remove(window)
        except KeyError:
            raise ValueError(f"{window} is not in the plan or was already added") from None

    def _window_weights(self, window: Window) -> np.ndarray | None:
        """``weight_fn(window)`` as float32, checked; None for equal weights."""
        if self._weight_fn is None:
            return None
        w = np.asarray(self._weight_fn(window), dtype=np.float32)
        if w.shape != window.shape:
            raise ValueError(f"weight_fn gave shape {w.shape} for {window}")
        return w

    def _grow_to(self, row_end: int) -> None:
        """Make the band reach ``row_end`` (absolute), reallocating only if it must."""
        needed = row_end - self._next_row
        if needed > self.capacity:
            self._realloc(needed, self._band_end - self._next_row)
            self._capacity = needed
        self._band_end = max(self._band_end, row_end)
        self.max_band_rows = max(self.max_band_rows, self._band_end - self._next_row)

    def _emit_ready(self) -> None:
        stop = self._next_row
        remaining = self._remaining
        while stop < self.height and remaining[stop] == 0:
            stop += 1
        if stop > self._next_row:
            self._emit(stop)

    def _emit(self, stop: int) -> None:
        """Normalise rows [next_row, stop), send them to the sink and drop them."""
        start = self._next_row
        n = max(min(stop, self._band_end) - start, 0)  # rows held in the band
        if n:
            self._emit_band(start, n)
            self._shift(n, self._band_end - start)
        row = start + n
        chunk = self.capacity
        while row < stop:  # rows no window ever touched: nodata
            r = min(chunk, stop - row)
            self._emit_empty(row, r)
            row += r
        self._next_row = stop
        self._band_end = max(self._band_end, stop)


#: Rows a streaming merger hands a sink that copies what it keeps at a time: the rows'
#: planes (probabilities, mask, labels, codes) then stay in the core's cache through the
#: sink's passes, where a whole band (a window row, ~192 rows of 2048 columns) went out to
#: memory between them. Measured with the null engine (alternating pairs): 8192² on one core,
#: merge thread 0.80-0.95 -> 0.72-0.78 CPU s, the whole run 4.84-5.64 -> 4.60-4.91; 2048² on
#: two, ratio to the bare read 2.04-2.15 -> 1.73-2.00 (5 pairs), peak RSS -6 to -12 MB.
EMIT_ROWS = 64


class StreamingMerger(RowBandMerger[np.ndarray]):
    """Blend window probabilities in a rolling band of rows (numpy) and emit finished rows.

    Arguments as :class:`RowBandMerger`, plus ``sink``: receives finished rows (fresh arrays
    it may keep). Invalid pixels have probability 0 and ``valid=False``. ``lend_rows``: the
    sink copies whatever it keeps (a file writer), so the rows it gets are lent, reused from
    band to band (fresh arrays of a band's size cost page faults on every band).
    """

    def __init__(
        self,
        height: int,
        width: int,
        num_classes: int,
        windows: Sequence[Window],
        weight_fn: WeightFn | None,
        sink: Sink,
        lend_rows: bool = False,
    ) -> None:
        self._sink = sink
        self._lend = lend_rows
        self._scratch = np.empty(0, dtype=np.float32)
        self._bool_scratch = np.empty((0, width), dtype=bool)
        self._acc = np.empty((0, 0, 0), dtype=np.float32)  # allocated by the base's __init__
        self._wsum = np.empty((0, 0), dtype=np.float32)
        self._invalid = np.empty((0, 0), dtype=bool)
        super().__init__(height, width, num_classes, windows, weight_fn)

    def _scratch_for(self, shape: tuple[int, ...]) -> np.ndarray:
        """A reused float32 work array (fresh large arrays cost page faults on every window)."""
        size = int(np.prod(shape))
        if self._scratch.size < size:
            self._scratch = np.empty(size, dtype=np.float32)
        return self._scratch[:size].reshape(shape)

    def _realloc(self, rows: int, used: int) -> None:
        acc, wsum, inv = self._acc, self._wsum, self._invalid
        self._acc = np.zeros((self.num_classes, rows, self.width), dtype=np.float32)
        self._wsum = np.zeros((rows, self.width), dtype=np.float32)
        self._invalid = np.zeros((rows, self.width), dtype=bool)
        if used:
            self._acc[:, :used] = acc[:, :used]
            self._wsum[:used] = wsum[:used]
            self._invalid[:used] = inv[:used]

    def _weights(self, window: Window, shape: tuple[int, int], ys: slice, xs: slice) -> np.ndarray:
        w = self._window_weights(window)
        return np.ones(shape, dtype=np.float32) if w is None else w[ys, xs]

    def _accumulate(
        self, p: np.ndarray, w: np.ndarray, v: np.ndarray | None, b: slice, cols: slice
    ) -> None:
        if v is None or v.all():
            tmp = self._scratch_for(p.shape)
            np.multiply(p, w, out=tmp)
            self._acc[:, b, cols] += tmp
        else:
            # Invalid pixels may hold anything (NaN from padding): select, do not multiply.
            w = np.where(v, w, np.float32(0))
            self._acc[:, b, cols] += np.where(v, p * w, np.float32(0))
            self._invalid[b, cols] |= ~v
        self._wsum[b, cols] += w

    def _emit_band(self, row0: int, n: int) -> None:
        step = EMIT_ROWS if self._lend else n
        for first in range(0, n, step):
            self._emit_rows(row0, first, min(step, n - first))

    def _emit_rows(self, row0: int, first: int, n: int) -> None:
        """Rows ``first .. first + n`` of the band (grid rows from ``row0 + first``)."""
        rows = slice(first, first + n)
        wsum = self._wsum[rows]
        valid = probs = None
        if self._lend:  # the merge thread's own arrays, valid until its next rows
            valid = scratch("merger.valid", wsum.shape, bool)
            probs = scratch("merger.probs", (self.num_classes, n, self.width), np.float32)
        valid = np.greater(wsum, 0, out=valid)
        valid &= np.logical_not(self._invalid[rows], out=self._invalid_scratch(n))
        inv = self._scratch_for(wsum.shape)
        inv[...] = 0
        np.divide(np.float32(1), wsum, out=inv, where=valid)
        probs = np.multiply(self._acc[:, rows], inv, out=probs)  # invalid pixels: 0 * 0
        self._sink(row0 + first, probs, valid)

    def _invalid_scratch(self, n: int) -> np.ndarray:
        """A reused (n, W) bool work array (see :meth:`_scratch_for`)."""
        if self._bool_scratch.shape[0] < n:
            self._bool_scratch = np.empty((n, self.width), dtype=bool)
        return self._bool_scratch[:n]

    def _shift(self, n: int, used: int) -> None:
        m = used - n  # rows still open: move them to the top of the buffers
        if m:
            self._acc[:, :m] = self._acc[:, n:used]
            self._wsum[:m] = self._wsum[n:used]
            self._invalid[:m] = self._invalid[n:used]
        self._acc[:, m:used] = 0.0
        self._wsum[m:used] = 0.0
        self._invalid[m:used] = False

    def _emit_empty(self, row0: int, rows: int) -> None:
        self._sink(
            row0,
            np.zeros((self.num_classes, rows, self.width), dtype=np.float32),
            np.zeros((rows, self.width), dtype=bool),
        )

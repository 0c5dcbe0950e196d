"""Read each grid row once: window reads served from full-width row chunks.

Overlapping windows read every pixel ~1.8 times (at 25 % overlap) and pay GDAL's per-call
cost (warp set-up, block lookups) per window; profiling the null-engine run put ~70 % of
its time in those reads. Here the read grid's rows are cut at every window-row edge into
chunks; each chunk is read (and warped) once, over the full width, by reader threads ahead of
need, and a window is sliced from the chunks it spans. A chunk is dropped as soon as no later
window row needs it, so memory holds about one window row of input.

Each reader thread owns a column part of every chunk, cut at block edges of the costliest
input: GDAL caches decoded blocks per dataset handle (one per thread), so readers taking
whole chunks in turn would each decode every block row of the file (measured with 4 readers
on 2 cores: 6.4 CPU-s per 4096² null run against 3.6 with column parts).

Results equal :meth:`AlignedScene.read` window by window wherever a block's values do not
depend on how the grid is cut (direct reads exactly; warps up to GDAL's resampling).
"""

from __future__ import annotations

import bisect
import itertools
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np

from mfaf_cli.coreg.align import AlignedScene, reflect_pad
from mfaf_cli.pipeline.cputime import charge
from mfaf_cli.pipeline.planes import PlaneTap
from mfaf_cli.pipeline.spec import lower_reader_priority
from mfaf_cli.tiling.windows import Window

#: One reader's share of a row chunk: ``(arrays, valid, first column, end column)``.
Part = tuple[dict[str, np.ndarray], np.ndarray, int, int]
#: A row chunk: its column parts, left to right.
Chunk = list[Part]
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


def chunks_spanning(edges: Sequence[int], rows: int) -> int:
    """The most chunks (cut at ``edges``) a reader must have queued beyond the one being
    taken for its queue to reach ``rows`` rows below that chunk's end: those starting
    within the rows (the last one crossing their end; at least 1)."""
    most = 1
    for j in range(len(edges) - 1):
        k = bisect.bisect_left(edges, edges[j + 1] + rows, lo=j + 1)  # first edge past them
        most = max(most, min(k, len(edges) - 1) - (j + 1))
    return most


#: Row chunks a lone reader of a reader-bound run reads ahead at least, and at least one
#: block row of its costliest input (:func:`chunks_spanning`). Why: that reader is the
#: run's critical path, and with 2 chunks ahead it waited on the main thread
#: ~0.10-0.16 s of a 4096² null-engine run's ~1.3 s (4: 0.03-0.06 s; wall ratio to the bare
#: read 2.56-2.76 -> 2.35-2.48, interleaved on the shared machine). It decodes a whole block
#: row at the chunk that enters it (a 512-row block row of a 2048-wide panel: ~35 ms), so a
#: queue shorter than a block row left it idle until the main thread, then waiting on that
#: decode, took a chunk (2048², 6 interleaved pairs, 8 chunks against 4: median ratio to
#: the bare read 2.34 -> 2.06; a 512-row block row is 6 chunks of a run's 256² windows at
#: 25 % overlap). Each chunk costs its memory (64 or 128 rows of a panel, every band).
LONE_READER_AHEAD = 4


def column_parts(
    cols: tuple[int, int], n: int, block: int = 1, phase: int = 0
) -> list[tuple[int, int]]:
    """``[a, b)`` cut into at most ``n`` ranges of about equal width, at columns where a block
    starts (``phase`` mod ``block``), so that no block is decoded by two readers."""
    a, b = cols
    cuts = [a]
    for k in range(1, max(n, 1)):
        target = a + (b - a) * k / n
        cut = phase + round((target - phase) / block) * block
        if cuts[-1] < cut < b:
            cuts.append(int(cut))
    return list(zip(cuts, [*cuts[1:], b], strict=True))


def modality_groups(scene: Any) -> list[tuple[str, ...] | None]:
    """The modalities a lone reader's raw reads split between two threads: those read
    straight off the grid, and those warped onto it, the costlier group first (its thread
    keeps the reader's priority; :func:`read_cost`); ``[None]``: no split, one read.

    Why: a reader-bound run on two cores has one reader, the run's critical path, decoding
    one input after the other while the other threads wait on it; the inputs are separate
    files (each thread its own GDAL handle), so reading them side by side decodes nothing
    twice. Only for a plain :class:`AlignedScene` (a wrapper's read takes every modality).
    """
    if not isinstance(scene, AlignedScene):
        return [None]
    direct = tuple(n for n, s in scene.sources.items() if s.offset is not None)
    warped = tuple(n for n, s in scene.sources.items() if s.offset is None)
    if not direct or not warped:
        return [None]
    if read_cost(scene, warped) > read_cost(scene, direct):
        return [warped, direct]  # the costlier one first
    return [direct, warped]


#: A warped value's cost in decoded values: measured at 8192², null engine, 20 m float32 SAR
#: onto a 10 m grid: decode 0.51 CPU s, decode + unit conversions + resampling 1.29.
WARP_COST = 2.5


def read_cost(scene: AlignedScene, names: Sequence[str]) -> float:
    """A rough cost of reading ``names`` per grid pixel: source values decoded (bands times
    source pixels per grid pixel), warped ones weighted by :data:`WARP_COST`."""
    gx, gy = scene.grid.res
    cost = 0.0
    for name in names:
        src = scene.sources[name]
        rx, ry = (max(v, 1e-12) for v in src.res_in_grid)
        weight = 1.0 if src.offset is not None else WARP_COST
        cost += len(src.indexes) * (gx / rx) * (gy / ry) * weight
    return cost


def joined(parts: Sequence[Part]) -> Part:
    """One part from the reads of its modality groups: their arrays, the AND of their masks
    (as one read of every modality makes it)."""
    arrays, valid, a, b = parts[0]
    arrays = dict(arrays)
    for more, ok, _, _ in parts[1:]:
        arrays.update(more)
        valid &= ok
    return arrays, valid, a, b


class EdgeMasks:
    """Valid masks, left of a column panel's edge, of the windows that straddle it: kept by
    the panel that reads them for the next one, which then reads no column left of its edge.

    Why: the next panel needs those columns of a window carried over the edge only for its
    valid mask (its probabilities come carried, and the merger clips the mask to the panel),
    yet reading them decoded a block column of every input a second time per edge (measured
    at 8192², null engine: ~0.35 of the reader's 4 CPU s). The mask decides, as in the
    whole-width run, whether the window has a valid pixel at all, so it is kept exactly
    (packed: a bit a pixel). ``left``: the read column this panel's reading starts at (None:
    the first panel, which reads what its windows need); ``right``: the read column the next
    panel starts at (None: the last panel).
    """

    def __init__(
        self,
        left: int | None = None,
        right: int | None = None,
        masks_in: dict[tuple[int, int], tuple[int, np.ndarray]] | None = None,
        masks_out: dict[tuple[int, int], tuple[int, np.ndarray]] | None = None,
    ) -> None:
        self.left, self.right = left, right
        self._in = masks_in if masks_in is not None else {}
        self._out = masks_out if masks_out is not None else {}

    def carried(self, window: Window) -> bool:
        """Whether ``window`` (read grid) reaches left of this panel's edge: carried over it."""
        return self.left is not None and window.col_off < self.left

    def keep(self, window: Window, valid: np.ndarray) -> None:
        """Keep the mask of ``window`` left of the next panel's edge, if it straddles it."""
        cut = -1 if self.right is None else self.right - window.col_off
        if 0 < cut < window.width:
            self._out[(window.row_off, window.col_off)] = (cut, np.packbits(valid[:, :cut]))

    def take(self, window: Window) -> np.ndarray:
        """The mask of a carried window left of this panel's edge, as the last panel kept it."""
        got = self._in.pop((window.row_off, window.col_off), None)
        if got is None:
            raise ValueError(f"{window} reaches left of column {self.left}: no mask was kept")
        cut, bits = got
        mask = np.unpackbits(bits, count=window.height * cut).view(bool)
        return mask.reshape(window.height, cut)


class ReaderThreads:
    """Reader threads that the strip readers of one run's column panels share, each pool
    made on first use and kept, with its threads' GDAL handles, until :meth:`close`.

    Why: a reader per panel started threads of its own, whose GDAL handles each parsed the
    file's CRS again (~10-25 ms a handle: GDAL makes a PROJ context per thread), and nothing
    was read while a panel's last windows were merged and the next panel's threads started
    (measured at 8192², null engine: ~0.1 s per panel edge of a 3.6-4 s run). Kept threads
    let the next panel's reader queue its first chunks behind this panel's last ones
    (:meth:`StripReader.start`). ``lower``: threads yield to a CPU engine's by default.
    """

    def __init__(self, scene: Any, lower: bool = True) -> None:
        self.scene = scene
        self._lower = lower
        self._pools: dict[tuple[str, int, bool], ThreadPoolExecutor] = {}
        self._idents: set[int] = set()  # reader thread idents (their handles close with us)
        self._lock = threading.Lock()

    def pool(
        self,
        name: str,
        workers: int,
        lower: bool | None = None,
        modalities: Sequence[str] | None = None,
    ) -> ThreadPoolExecutor:
        """The pool ``name`` of ``workers`` threads, made on first use (``lower``: its
        threads' priority, default the reader's), each thread given handles of
        ``modalities`` (default all) opened here (``AlignedScene.thread_handles``)."""
        key = (name, workers, self._lower if lower is None else lower)
        if key not in self._pools:
            handles: queue.SimpleQueue[Any] = queue.SimpleQueue()
            opener = getattr(self.scene, "thread_handles", None)
            if opener is not None:
                for _ in range(workers):
                    handles.put(opener(modalities))
            self._pools[key] = ThreadPoolExecutor(
                workers, f"mfaf-{name}", initializer=partial(self._start, key[2], handles)
            )
        return self._pools[key]

    def _start(self, lower: bool, handles: queue.SimpleQueue[Any]) -> None:
        """A reader thread's start: at a lower priority if ``lower``, with handles opened
        for it, its ident kept so that its GDAL handles close with the threads."""
        if lower:
            lower_reader_priority()
        with self._lock:
            self._idents.add(threading.get_ident())
        if not handles.empty():
            self.scene.adopt_handles(handles.get())

    def close(self) -> None:
        """Stop the threads (reads not started are dropped) and close their handles."""
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        self._pools.clear()
        close_handles = getattr(self.scene, "close_thread_handles", None)
        if close_handles is not None:  # the readers are gone: so are their GDAL handles
            close_handles(self._idents)
        self._idents.clear()


class StripReader:
    """``read(window)`` like :meth:`AlignedScene.read`, from row chunks read ahead in threads.

    Windows must be requested from one thread in raster order of their rows (as the core
    does). Each of ``threads`` readers owns a column part of every chunk (cut at the costliest
    input's block edges: a reader's own GDAL handle then decodes each of its blocks once);
    where the blocks cannot be cut (a striped file) but are short, the readers take whole
    chunks in turn instead. They run ahead by up to ``ahead`` chunks; ``threads=0`` reads in
    the caller; ``pools``: threads shared with other readers (a run's column panels, see
    :class:`ReaderThreads`), else the reader's own. ``transform`` (per-pixel) is applied to
    every part as it is read, so each pixel is transformed once, in a reader thread, however
    many windows overlap it. One reader that does not yield (a reader-bound run on 2 cores)
    leaves that transform and the outermost plane tap to the thread taking the chunk, which
    waits on it anyway (measured at 4096², null engine: the reader thread 0.90-0.93 ->
    0.77-0.80 CPU s, the main thread +0.14).
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
        yield_to_engine: bool = True,
        edge: EdgeMasks | None = None,
        pools: ReaderThreads | None = None,
    ) -> None:
        self.scene = scene
        #: masks of windows that straddle the panel's edges (see :class:`EdgeMasks`); the
        #: reader then reads no column left of ``edge.left``
        self.edge = edge
        if edge is not None and edge.left is not None and cols is not None:
            cols = (max(cols[0], edge.left), cols[1])
        self._transform = transform
        self.height, self.width = scene.grid.height, scene.grid.width
        #: The grid columns the chunks span (a column panel's windows need no more).
        self.cols = cols or (0, self.width)
        self.tile = tile
        self.edges = chunk_edges(row_offsets, tile, self.height)
        #: A reader-bound run with one reader (a 2-core machine: the engine waits on it) leaves
        #: each part's per-pixel work after the read, the outermost tap's plane and
        #: ``transform``, to the thread that takes the chunk (the core's main thread, idle while
        #: it waits): the reader, the run's critical path, then only decodes and warps. With
        #: more readers that work is already spread; one taking thread would serialise it.
        self._finish_here = not yield_to_engine and threads == 1
        blocks = threads > 1 or self._finish_here
        block_h, block_w, phase = scene.read_blocks() if blocks else (1, 1, 0)
        self.parts = column_parts(self.cols, threads, block_w, phase)
        shortest = min((b - a for a, b in itertools.pairwise(self.edges)), default=1)
        if len(self.parts) == 1 and threads > 1 and 4 * block_h <= shortest:
            # blocks too wide to cut (strips) but short: readers take whole chunks in turn,
            # decoding only the strips that two chunks share a second time
            sizes = [threads]
        else:
            sizes = [1] * (len(self.parts) if threads > 0 else 0)
        self._chunks: dict[int, list[Future[Part]]] = {}
        #: Arrays of dropped chunks, by (modality, shape), for later chunks to read into: a
        #: fresh array per chunk costs page faults (measured ~30 % of reading the optical).
        self._free: dict[tuple[str, tuple[int, ...]], list[np.ndarray]] = {}
        #: chunk height -> the last chunk of that height: a dropped chunk's arrays are kept
        #: only while a chunk still to be read has their shape (the first and last chunks'
        #: heights come once: kept, they would sit in the pool for the rest of the panel)
        self._last_of_height = {b - a: j for j, (a, b) in enumerate(itertools.pairwise(self.edges))}
        self._next = 0  # next chunk index to submit
        self._ahead = max(ahead, 1)
        if self._finish_here:  # the run's critical path reads further ahead
            self._ahead = max(self._ahead, LONE_READER_AHEAD, chunks_spanning(self.edges, block_h))
        self._lock = threading.Lock()
        self._source: Any = scene
        self._keep: Callable[[Window, dict[str, np.ndarray]], None] | None = None
        if self._finish_here and isinstance(scene, PlaneTap):
            self._source, self._keep = scene.scene, scene.keep
        self._finished: dict[int, Chunk] = {}  # chunks whose parts the taking thread finished
        #: modality groups read by threads of their own (None: all modalities, one read)
        self._groups: list[tuple[str, ...] | None] = [None]
        if self._finish_here and sizes:
            self._groups = modality_groups(self._source)
        #: reader threads (shared by a run's panels, or this reader's own): see ReaderThreads
        self._threads = pools if pools is not None else ReaderThreads(scene, yield_to_engine)
        self._own_threads = pools is None
        self._pools = [
            self._threads.pool(f"strip{i}", n, modalities=self._groups[0])
            for i, n in enumerate(sizes)
        ]
        self._pools += [
            # a cheaper modality group's thread yields to the costliest group's reader, the
            # run's critical path, on a shared core (interleaved 3x on 2 cores, wall ratio to
            # the bare read 2048² 2.27 -> 2.11, 4096² 1.93 -> 1.92, 8192² 2.02 -> 1.90)
            self._threads.pool(f"strip-m{g}", 1, lower=True, modalities=self._groups[g])
            for g in range(1, len(self._groups))
        ]

    def _read_part(self, j: int, p: int, group: tuple[str, ...] | None = None) -> Part:
        r0, r1 = self.edges[j], self.edges[j + 1]
        a, b = self.parts[p]
        window = Window(r0, a, r1 - r0, b - a)
        with charge("read"):
            if group is not None:  # one modality group of the raw read (see modality_groups)
                out = self._buffers(window, group)
                arrays, valid = self._source.read(window, out=out, modalities=group)
            elif self._finish_here:  # the raw read: :meth:`_finish` does the rest
                arrays, valid = self._source.read(window, out=self._buffers(window))
            else:
                arrays, valid = self._read_scene(window, self._buffers(window))
        return arrays, valid, a, b

    def _finish(self, j: int, part: Part) -> Part:
        """The work :meth:`_read_part` left to the taking thread: the plane, the transform."""
        arrays, valid, a, b = part
        r0, r1 = self.edges[j], self.edges[j + 1]
        with charge("read"):
            if self._keep is not None:
                self._keep(Window(r0, a, r1 - r0, b - a), arrays)
            if self._transform is not None:
                arrays = self._transform(arrays)
        return arrays, valid, a, b

    def _read_scene(
        self, window: Window, out: dict[str, np.ndarray] | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        arrays, valid = self.scene.read(window, out=out)
        if self._transform is not None:
            arrays = self._transform(arrays)
        return arrays, valid

    def _buffers(
        self, window: Window, names: tuple[str, ...] | None = None
    ) -> dict[str, np.ndarray]:
        """Arrays for a chunk part (of modalities ``names``, default all): recycled where one
        of its shape is free."""
        out = {}
        with self._lock:
            for name, bands in self.scene.band_counts.items():
                if names is not None and name not in names:
                    continue
                shape = (bands, window.height, window.width)
                free = self._free.get((name, shape))
                out[name] = free.pop() if free else np.empty(shape, np.float32)
        return out

    def _recycle(self, futs: list[Future[Part]]) -> None:
        """Keep a dropped chunk's arrays for later chunks of their shape (nothing else holds
        them: windows are copied out of the chunks). Called with the lock held."""
        for fut in futs:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                for name, arr in fut.result()[0].items():
                    if arr.dtype == np.float32 and arr.flags.c_contiguous:
                        self._free.setdefault((name, arr.shape), []).append(arr)
        for key in [k for k in self._free if not self._needed(k[1][1])]:
            del self._free[key]  # no chunk still to read has this height

    def _needed(self, height: int) -> bool:
        """Whether a chunk not yet submitted has ``height`` rows."""
        return self._last_of_height.get(height, -1) >= self._next

    def _chunk(self, j: int) -> Chunk:
        if not self._pools and j not in self._chunks:  # no reader threads: read here
            done: Future[Part] = Future()
            done.set_result(self._read_part(j, 0))
            self._chunks[j] = [done]
            self._next = max(self._next, j + 1)  # chunks from here on are still to read
        with self._lock:
            self._submit_upto(j + self._ahead)
            futs = self._chunks[j]
        # no stealing a part its reader has not started: this thread's own GDAL handle would
        # decode that reader's blocks a second time (measured: more CPU, less throughput)
        if not self._finish_here:
            return [f.result() for f in futs]
        if j not in self._finished:
            parts = [f.result() for f in futs]
            if len(self._groups) > 1:
                parts = [joined(parts)]
            self._finished[j] = [self._finish(j, part) for part in parts]
        return self._finished[j]

    def _submit_upto(self, last: int) -> None:
        """Hand the reader threads every chunk up to index ``last`` not yet submitted (lock
        held)."""
        while self._pools and self._next < len(self.edges) - 1 and self._next <= last:
            if len(self._groups) > 1:  # one part, its modality groups on their own threads
                self._chunks[self._next] = [
                    pool.submit(self._read_part, self._next, 0, group)
                    for pool, group in zip(self._pools, self._groups, strict=True)
                ]
            else:
                self._chunks[self._next] = [
                    pool.submit(self._read_part, self._next, p)
                    for p, pool in enumerate(self._pools)
                ]
            self._next += 1

    def start(self) -> None:
        """Submit the first chunks now, before a window asks for them: a panel's reader is
        started while the last panel's tail runs (see :class:`ReaderThreads`)."""
        with self._lock:
            self._submit_upto(self._ahead)

    @property
    def submitted_all(self) -> bool:
        """Whether every chunk has gone to the reader threads (their queue then runs dry
        once those are read)."""
        return self._next >= len(self.edges) - 1

    def _release_before(self, row: int) -> None:
        """Drop chunks that end at or above ``row`` (no later window row needs them).

        Called before a window's chunks are fetched, which submits the reads ahead: those
        then reuse the dropped chunks' arrays instead of allocating while the dropped ones
        wait in the free pool (measured at 4096²: ~6-12 MB of a 2048-wide panel's peak)."""
        with self._lock:
            for j in [j for j in self._chunks if self.edges[j + 1] <= row]:
                self._recycle(self._chunks.pop(j))
                self._finished.pop(j, None)

    def read(self, window: Window) -> tuple[dict[str, np.ndarray], np.ndarray]:
        r0w, c0w, hw, ww = window.row_off, window.col_off, window.height, window.width
        self._release_before(r0w)  # later windows start at or below this row
        r0, c0 = max(0, r0w), max(0, c0w)
        r1, c1 = min(self.height, r0w + hw), min(self.width, c0w + ww)
        if r1 <= r0 or c1 <= c0:
            return self._read_scene(window)  # all outside: zeros, as the scene gives
        inner = Window(r0, c0, r1 - r0, c1 - c0)
        first = self._parts(r0, r1)[0][0][0][0]
        arrays = {k: np.empty((v.shape[0], r1 - r0, c1 - c0), v.dtype) for k, v in first.items()}
        valid = np.empty((r1 - r0, c1 - c0), dtype=bool)
        self._copy(inner, arrays, valid)
        pads = ((r0 - r0w, r0w + hw - r1), (c0 - c0w, c0w + ww - c1))
        if any(p for pair in pads for p in pair):
            arrays = {k: reflect_pad(v, pads) for k, v in arrays.items()}
            valid = np.pad(valid, pads, mode="constant", constant_values=False)
        return arrays, valid

    def read_into(
        self, window: Window, arrays: Mapping[str, np.ndarray], valid: np.ndarray
    ) -> None:
        """:meth:`read` written into the given (C,h,w) arrays and (h,w) mask, e.g. a batch's
        slots: one copy from the chunks, where ``read`` and stacking a batch make two. A
        window carried over the panel's left edge gets its mask there from :attr:`edge` and
        NaN values (the model does not run it again)."""
        edge = self.edge
        if edge is not None and edge.left is not None and edge.carried(window):
            cut = edge.left - window.col_off
            right = Window(window.row_off, window.col_off + cut, window.height, window.width - cut)
            self._read_into(right, {m: a[:, :, cut:] for m, a in arrays.items()}, valid[:, cut:])
            valid[:, :cut] = edge.take(window)
            for a in arrays.values():
                a[:, :, :cut] = np.nan
        else:
            self._read_into(window, arrays, valid)
        if edge is not None:
            edge.keep(window, valid)

    def _read_into(
        self, window: Window, arrays: Mapping[str, np.ndarray], valid: np.ndarray
    ) -> None:
        r0, c0 = window.row_off, window.col_off
        if r0 < 0 or c0 < 0 or r0 + window.height > self.height or c0 + window.width > self.width:
            got, ok = self.read(window)  # padded: the slow way
            for name, out in arrays.items():
                out[...] = got[name]
            valid[...] = ok
            return
        self._release_before(r0)  # before the chunks ahead are submitted: they reuse its arrays
        self._copy(window, arrays, valid)

    def _copy(self, window: Window, arrays: Mapping[str, np.ndarray], valid: np.ndarray) -> None:
        """Copy a window inside the grid (and the reader's columns) from the chunks."""
        r0, c0 = window.row_off, window.col_off
        r1, c1 = r0 + window.height, c0 + window.width
        if c0 < self.cols[0] or c1 > self.cols[1]:
            raise ValueError(f"columns {c0}..{c1} reach past the reader's {self.cols}")
        for chunk, e0, e1 in self._parts(r0, r1):
            a, b = max(r0, e0), min(r1, e1)
            for arrs, ok, p0, p1 in chunk:
                x0, x1 = max(c0, p0), min(c1, p1)
                if x0 >= x1:
                    continue
                valid[a - r0 : b - r0, x0 - c0 : x1 - c0] = ok[a - e0 : b - e0, x0 - p0 : x1 - p0]
                for name, out in arrays.items():
                    out[:, a - r0 : b - r0, x0 - c0 : x1 - c0] = arrs[name][
                        :, a - e0 : b - e0, x0 - p0 : x1 - p0
                    ]

    def _parts(self, r0: int, r1: int) -> list[tuple[Chunk, int, int]]:
        """The chunks rows ``[r0, r1)`` span, with each chunk's first and end row."""
        j = bisect.bisect_right(self.edges, r0) - 1
        parts = []
        while self.edges[j] < r1:
            parts.append((self._chunk(j), self.edges[j], self.edges[j + 1]))
            j += 1
        return parts

    def close(self) -> None:
        with self._lock:
            for futs in self._chunks.values():
                for fut in futs:
                    fut.cancel()  # not started: no thread reads it (one reading finishes)
        if self._own_threads:
            self._threads.close()
        self._chunks.clear()
        self._finished.clear()
        self._free.clear()

    def __getattr__(self, name: str) -> Any:  # grid, sources, ...: as the scene
        return getattr(self.scene, name)

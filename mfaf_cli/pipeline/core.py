"""The sliding-window inference core shared by predict, batch mode and evaluate.

Stages, each on its own thread(s) so that none waits for another:

1. **reader pool** (``read_threads`` threads, each owning a column part): read and warp
   full-width row chunks ahead of the windows
   (:class:`~mfaf_cli.pipeline.strips.StripReader`: each grid row read and normalised once;
   GDAL and numpy release the GIL); windows are copied from them in order into reused
   :class:`BatchSlots`;
2. **predictor**: the network on one batch, in the calling thread, or (a predictor with
   ``submit``, e.g. the ONNX engine's streams) in the background while the calling thread
   fills the next batch;
3. **merge worker** (one thread): blends each window into the
   :class:`~mfaf_cli.stitch.StreamingMerger`'s row band and hands finished rows to the
   **sink** — label/probability/confidence GeoTIFFs (:class:`~mfaf_cli.io.raster.OutputSet`),
   a confusion matrix (:class:`~mfaf_cli.pipeline.sinks.ConfusionSink`) or nothing
   (:class:`~mfaf_cli.pipeline.sinks.NullSink`). A new output is one sink class.
   With a torch predictor on CUDA the band lives on the GPU instead
   (:class:`~mfaf_cli.stitch.torch_merger.DeviceMerger`, see :func:`use_device_merger`):
   probabilities stay there and only labels and the planes the sink asks for come back.

Windows come from a :class:`~mfaf_cli.tiling.plan.WindowPlan` anchored to the reference
raster's pixel grid, so a crop computes exactly the windows of the whole run.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np

from mfaf_cli.coreg.align import AlignedScene
from mfaf_cli.coreg.grid import Grid
from mfaf_cli.metadata import ModelMeta
from mfaf_cli.normalize import apply_normalisation
from mfaf_cli.pipeline.clock import ModelClock
from mfaf_cli.pipeline.cputime import CpuClock, charge
from mfaf_cli.pipeline.strips import EdgeMasks, ReaderThreads, StripReader
from mfaf_cli.tiling.plan import WindowPlan, plan_windows
from mfaf_cli.tiling.windows import Window, batched
from mfaf_cli.types import Blend

log = logging.getLogger("mfaf")

#: Batches queued for the merge worker (reading ahead is the strip reader's).
MERGE_QUEUE = 2
#: A scene wider than this runs as column panels of this width (a multiple of 512, so no
#: GeoTIFF block of the outputs is shared by two panels): every buffer of the core — read
#: chunks, GDAL's block cache, the merger's band, the writers' stripes — then spans a panel,
#: not the scene, so memory does not grow with the width. Windows that straddle a panel edge
#: are predicted once (:class:`EdgeCarry` keeps their part past the edge for the next panel).
PANEL_WIDTH = 2048
#: The panel width of a run that a CPU network bounds (see :func:`panel_width`).
ENGINE_PANEL_WIDTH = 1024


def engine_bound(predictor: Any) -> bool:
    """Whether a network on the CPU bounds the run: not a GPU engine, nor a predictor that
    says reading bounds it (the benchmarks' null engine)."""
    on_gpu = str(getattr(predictor, "device", "cpu")).startswith("cuda")
    return not on_gpu and not getattr(predictor, "reader_bound", False)


def panel_width(predictor: Any) -> int:
    """Column panels of :data:`ENGINE_PANEL_WIDTH` when a CPU network bounds the run, else
    :data:`PANEL_WIDTH` (never wider than that).

    Why: every panel-wide buffer (read chunks, GDAL's block cache, the merger's band) halves
    with the panel, while the cost, a block column that two panels' reads share decoded twice
    per panel edge, hides behind the network's time. Measured at 4096² with the shipped
    MFAFNet-S on ONNX (2 cores): peak RSS -23 MB, reading +0.3 CPU-s of a 44 CPU-s run. Where
    reading bounds the run that decode would be the run's own time: wide panels.
    """
    return min(PANEL_WIDTH, ENGINE_PANEL_WIDTH) if engine_bound(predictor) else PANEL_WIDTH


class Sink(Protocol):
    """Receives finished rows: ``(row0, probs (K, r, w), valid (r, w), col0=0)``."""

    def __call__(self, row0: int, probs: np.ndarray, valid: np.ndarray, col0: int = 0) -> None:
        """Take rows ``row0 .. row0 + r`` of columns ``col0 .. col0 + w``."""


Percentiles = Mapping[str, tuple[np.ndarray, np.ndarray]]


@dataclass
class PreparedBatch:
    """A batch of windows read and normalised, ready for the model."""

    windows: list[Window]
    run: list[int]  # indexes into ``windows`` that go to the model
    arrays: dict[str, np.ndarray]  # modality -> (len(run), C, h, w) normalised float32
    valid: np.ndarray  # (len(windows), h, w) bool


@dataclass
class RunStats:
    """What one pass over a scene did."""

    windows: int
    skipped: int
    #: the model's seconds, device work included (:class:`~mfaf_cli.pipeline.clock.ModelClock`)
    model_seconds: float
    #: modality -> which bands were read and how they were chosen (BandChoice.to_dict())
    bands: dict[str, Any] = field(default_factory=dict)
    #: CPU seconds by stage (engine / read / merge / total), see :mod:`.cputime`
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    #: how scene statistics were sampled, and the pre-pass's seconds (none: fixed records)
    statistics: dict[str, Any] = field(default_factory=dict)


# ---- window plan ------------------------------------------------------------------------------
def reference_anchor(ref_path: str, grid: Grid) -> tuple[int, int, int, int] | None:
    """``(row0, col0, ref_height, ref_width)`` when ``grid`` lies on the reference raster's
    pixel lattice (same CRS and pixel size, whole-pixel offset: e.g. a ``--bounds`` crop
    snapped to its pixels); None when it was reprojected or resampled (then the grid anchors
    its own windows)."""
    import rasterio

    from mfaf_cli.coreg.align import _grid_offset

    with rasterio.open(ref_path) as ds:
        off = _grid_offset(ds, grid)
        if off is None:
            return None
        return off[0], off[1], int(ds.height), int(ds.width)


def scene_plan(ref_path: str, grid: Grid, tile: int, overlap: float) -> WindowPlan:
    """The plan of a run over ``grid``, anchored to the reference raster when possible."""
    anchor = reference_anchor(ref_path, grid)
    if anchor is not None and anchor[:2] == (0, 0) and anchor[2:] == (grid.height, grid.width):
        anchor = None  # the whole raster: its own anchor
    plan = plan_windows(grid.height, grid.width, tile, overlap, anchor)
    if anchor is not None and not plan.windows:  # crop outside the raster: nothing to anchor
        plan = plan_windows(grid.height, grid.width, tile, overlap)
    return plan


def read_grid(grid: Grid, plan: WindowPlan) -> Grid:
    """The grid the reader reads: ``grid`` grown to the plan's read extent (same lattice)."""
    if not plan.anchored:
        return grid
    from rasterio.transform import Affine

    dr, dc = plan.read_offset
    h, w = plan.read_shape
    return Grid(grid.crs, grid.transform @ Affine.translation(dc, dr), w, h)


# ---- reader pool ------------------------------------------------------------------------------
def normaliser(
    meta: ModelMeta, percentiles: Percentiles, *, in_place: bool = False
) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """The model's per-pixel normalisation of a read's arrays (other modalities pass as read);
    ``in_place`` overwrites the arrays given (fresh reads that nothing else holds)."""

    def normalise(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(arrays)
        for spec in meta.modalities:
            if spec.name in arrays:
                lo, hi = percentiles.get(spec.name, (None, None))
                out[spec.name] = apply_normalisation(
                    arrays[spec.name], spec.normalisation, lo, hi, copy=not in_place
                )
        return out

    return normalise


def prepare_batch(
    scene: Any,
    windows: list[Window],
    meta: ModelMeta,
    percentiles: Percentiles,
    *,
    normalised: bool = False,
    slots: BatchSlots | None = None,
) -> PreparedBatch:
    """Read and normalise a batch (``normalised``: ``scene`` already returns normalised
    arrays); windows without a single valid pixel are left out. ``slots``: fill reused
    arrays (see :class:`BatchSlots`) when ``scene`` can write into them."""
    if normalised and hasattr(scene, "read_into") and windows:
        slots = slots or BatchSlots(meta, len(windows), windows[0].shape)
        return _fill_batch(scene, windows, slots)
    per_mod: dict[str, list[np.ndarray]] = {m: [] for m in meta.modality_names}
    valids: list[np.ndarray] = []
    run: list[int] = []
    normalise = None if normalised else normaliser(meta, percentiles)
    for i, w in enumerate(windows):
        arrays, valid = scene.read(w)
        valids.append(valid)
        if not valid.any():
            continue
        run.append(i)
        if normalise is not None:
            arrays = normalise(arrays)
        for m in meta.modality_names:
            per_mod[m].append(arrays[m])
    stacked = {m: np.stack(v) if v else np.empty((0,)) for m, v in per_mod.items()}
    return PreparedBatch(windows, run, stacked, np.stack(valids))


class BatchSlots:
    """Batch arrays reused from batch to batch.

    Why: a fresh batch is megabytes that the allocator maps and the kernel zeroes page by
    page, then unmaps: on the null engine at 4096² those page faults cost as much as all the
    reading. The model inputs are needed only until the predictor returns, so ``inputs``
    sets serve every batch: one when the core waits for each batch's results before filling
    the next, two when the predictor runs one batch while the next is filled; the valid
    masks go on to the merge worker, so they rotate through ``masks`` sets, handed back with
    :meth:`release` once merged. (Outputs that alias an input are copied: see
    :func:`_finish_batch`.)
    """

    def __init__(
        self,
        meta: ModelMeta,
        batch_size: int,
        shape: tuple[int, int],
        masks: int = 1,
        extra: Mapping[str, int] | None = None,
        inputs: int = 1,
    ) -> None:
        h, w = shape
        self.shape = (batch_size, h, w)
        # ``extra``: planes a wrapped scene hands the predictor besides the model inputs
        # (name -> bands, e.g. the source codes of pipeline/fallback.py)
        bands = {m.name: m.n_bands for m in meta.modalities} | dict(extra or {})
        # ``inputs`` sets taken in turn: two while the predictor runs one batch as the
        # next is filled (:func:`_submit_batch`)
        self._inputs = [
            {k: np.empty((batch_size, c, h, w), np.float32) for k, c in bands.items()}
            for _ in range(max(inputs, 1))
        ]
        self._turn = 0
        self._free: queue.Queue[np.ndarray] = queue.Queue()
        for _ in range(max(masks, 1)):
            self._free.put(np.empty(self.shape, dtype=bool))

    def take(self, n: int, shape: tuple[int, int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Arrays for ``n`` windows of ``shape``: the next input set and a free mask set
        (waits for one while all are with the merge worker)."""
        if n > self.shape[0] or shape != self.shape[1:]:
            raise ValueError(f"{n} windows of {shape} do not fit slots of {self.shape}")
        arrays = self._inputs[self._turn]
        self._turn = (self._turn + 1) % len(self._inputs)
        return {m: a[:n] for m, a in arrays.items()}, self._free.get()[:n]

    def release(self, valid: np.ndarray) -> None:
        """Hand back a mask set from :meth:`take` (its base array) once nothing reads it."""
        self._free.put(valid if valid.base is None else valid.base)


def _fill_batch(scene: Any, windows: list[Window], slots: BatchSlots) -> PreparedBatch:
    """:func:`prepare_batch` from a reader that writes windows straight into batch slots."""
    arrays, valid = slots.take(len(windows), windows[0].shape)
    for i, win in enumerate(windows):
        scene.read_into(win, {m: a[i] for m, a in arrays.items()}, valid[i])
    n = len(windows)
    run = [i for i in range(n) if valid[i].any()]
    if len(run) < n:
        arrays = {m: a[run] if run else np.empty((0,)) for m, a in arrays.items()}
    return PreparedBatch(windows, run, arrays, valid)


# ---- merge worker -----------------------------------------------------------------------------
class MergeWorker:
    """Blend batches into the merger (and so into the sink) on a background thread.

    ``submit`` queues a batch (blocking while ``MERGE_QUEUE`` batches wait, so memory stays
    bounded); the first error raised in the worker is re-raised by the next ``submit`` or by
    ``close``. ``threaded=False`` merges in the calling thread (for debugging).
    """

    def __init__(
        self,
        merger: Any,
        threaded: bool = True,
        done: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        self._merger = merger
        self._done = done  # called with each batch's valid masks once merged (or dropped)
        self._error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=MERGE_QUEUE)
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._loop, name="mfaf-merge", daemon=True)
            self._thread.start()

    def _merge(self, windows: list[Window], probs: Any, valid: np.ndarray) -> None:
        for i, w in enumerate(windows):
            p = None if probs is None else probs[i]
            if p is None:
                self._merger.add_skipped(w)
            else:
                self._merger.add(w, p, valid[i])

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    with charge("merge"):
                        self._merge(*item)
                except BaseException as err:  # re-raised in the caller's thread
                    self._error = err
            self._release(item[2])

    def _release(self, valid: np.ndarray) -> None:
        if self._done is not None:
            self._done(valid)

    def submit(self, windows: list[Window], probs: Sequence[Any], valid: np.ndarray) -> None:
        """Queue windows with their probabilities (None entries: skipped windows)."""
        self._raise()
        if self._thread is None:
            try:
                self._merge(windows, probs, valid)
            finally:
                self._release(valid)
            return
        while True:
            try:
                self._queue.put((windows, probs, valid), timeout=0.5)
                return
            except queue.Full:
                self._raise()

    def close(self, ok: bool = True) -> None:
        """Wait for the queued batches (``ok``) or drop them, stop the thread, re-raise."""
        if self._thread is not None:
            if not ok:
                self._error = self._error or RuntimeError("aborted")
            self._put_stop()
            self._thread.join()
            self._thread = None
        if ok:
            self._raise()

    def _put_stop(self) -> None:
        while True:
            try:
                self._queue.put(None, timeout=0.5)
                return
            except queue.Full:
                if self._thread is None or not self._thread.is_alive():
                    return

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


# ---- which merger ------------------------------------------------------------------------------
#: ``1``: use the device merger wherever the predictor and sink allow it (on CPU too, for
#: tests); ``0``: never; unset: only for a torch predictor on CUDA.
DEVICE_MERGER_ENV = "MFAF_DEVICE_MERGER"


def use_device_merger(
    predictor: Any, sink: Any, num_classes: int, force: bool | None = None
) -> bool:
    """Whether to keep the row band on the predictor's device: the predictor can hand out
    device tensors (``predict_tensor``), the sink takes finished rows, the index fits uint8,
    and the device is a GPU (or ``force`` / :data:`DEVICE_MERGER_ENV` says so)."""
    from mfaf_cli.stitch.rows import MAX_INDEXED_CLASSES, FinishedRowsSink

    if force is None:
        env = os.environ.get(DEVICE_MERGER_ENV, "").strip()
        force = {"1": True, "0": False}.get(env)
    able = (
        callable(getattr(predictor, "predict_tensor", None))
        and isinstance(sink, FinishedRowsSink)
        and num_classes <= MAX_INDEXED_CLASSES
        and getattr(sink, "device_rows", True)  # e.g. an entropy plane: host rows only
    )
    if not able or force is False:
        return False
    return bool(force) or str(getattr(predictor, "device", "cpu")).startswith("cuda")


def _nonfinite_error() -> Exception:
    from mfaf_cli.errors import EngineError

    return EngineError("the model produced non-finite probabilities")


def make_merger(
    plan: WindowPlan, meta: ModelMeta, predictor: Any, sink: Any, blend: Blend, device: bool
) -> tuple[Any, Callable[[Any], Any]]:
    """``(merger, predict)``: the numpy merger fed by ``predictor(batch)``, or (``device``)
    the device merger fed by ``predictor.predict_tensor(batch)``."""
    from mfaf_cli.stitch import StreamingMerger

    weight_fn = plan.weight_fn(blend)
    if not device:
        merger = StreamingMerger(plan.height, plan.width, meta.num_classes, plan.windows,
                                 weight_fn, sink, getattr(sink, "copies_rows", False))  # fmt: skip
        return merger, predictor
    from mfaf_cli.stitch.torch_merger import DeviceMerger

    log.debug("row band on %s", predictor.device)
    on_device = DeviceMerger(
        plan.height, plan.width, meta.num_classes, plan.windows, weight_fn,
        sink.write_finished, device=predictor.device, needs=sink.row_needs(),
        nonfinite=getattr(predictor, "nonfinite_error", _nonfinite_error),
    )  # fmt: skip
    return on_device, predictor.predict_tensor


# ---- the pass over a scene ---------------------------------------------------------------------
def column_panels(width: int, panel: int) -> list[tuple[int, int]]:
    """``[c0, c1)`` column ranges of at most ``panel`` columns covering ``[0, width)``."""
    if panel < 1:
        raise ValueError(f"panel width must be >= 1, got {panel}")
    return [(c, min(c + panel, width)) for c in range(0, width, panel)]


def read_columns(plan: WindowPlan, read_width: int) -> tuple[int, int]:
    """The read-grid columns a plan's windows read (inside the read grid)."""
    reads = [plan.read_window(w) for w in plan.windows]
    lo = min((w.col_off for w in reads), default=0)
    hi = max((w.col_off + w.width for w in reads), default=read_width)
    return max(lo, 0), min(max(hi, 1), read_width)


def panel_read_spans(
    plan: WindowPlan, read_width: int, panel: int | None = None
) -> list[tuple[int, int]]:
    """The read-grid columns each column panel of ``plan`` reads (as :func:`run_scene` cuts
    it, ``panel`` columns wide, default :data:`PANEL_WIDTH`): what GDAL's block cache must
    span at a time."""
    panels = column_panels(plan.width, panel or PANEL_WIDTH)
    if len(panels) == 1:
        return [read_columns(plan, read_width)]
    spans = []
    for c0, c1 in panels:
        sub = plan.columns(c0, c1)
        lo, hi = read_columns(sub, read_width)
        # a panel after the first reads from its edge on (see EdgeMasks)
        spans.append((lo if c0 == 0 else max(lo, panel_edge(sub)), hi))
    return spans


def panel_edge(plan: WindowPlan) -> int:
    """The read-grid column of a (panel) plan's first output column."""
    return plan.read_window(Window(0, 0, 1, 1)).col_off


def panel_reader(
    scene: Any, plan: WindowPlan, reads: Sequence[Window], carry: EdgeCarry, **kw: Any
) -> StripReader:
    """The strip reader of one panel (or the whole scene): the columns its windows read,
    from the panel's edge on after the first panel (masks of windows carried over an edge
    pass from panel to panel: :class:`~mfaf_cli.pipeline.strips.EdgeMasks`)."""
    left = panel_edge(plan)
    edge = EdgeMasks(
        left if carry.c0 > 0 else None,
        None if carry.width is None else left + plan.width,
        carry.masks_in, carry.masks_out,
    )  # fmt: skip
    cols = read_columns(plan, scene.grid.width)
    return StripReader(scene, [w.row_off for w in reads], plan.tile, cols=cols, edge=edge, **kw)


class _NoBar:
    """A progress bar that shows nothing (tqdm imported only when a bar is shown: ~1.4 MB)."""

    def update(self, n: int = 1) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to close."""


def progress_bar(total: int, desc: str, show: bool) -> Any:
    """A tqdm bar of ``total`` windows on stderr, or one that shows nothing."""
    if not show:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="win", desc=desc, file=sys.stderr, dynamic_ncols=True)


def run_scene(
    scene: AlignedScene,
    plan: WindowPlan,
    meta: ModelMeta,
    predictor: Any,
    percentiles: Percentiles,
    sink: Sink,
    *,
    batch_size: int,
    blend: Blend,
    read_threads: int,
    progress: bool = False,
    desc: str = "predict",
    device_merger: bool | None = None,
) -> RunStats:
    """Stream every window of ``plan`` through ``predictor`` into ``sink``, column panel by
    column panel (:func:`panel_width`; one panel for most scenes).

    ``scene`` reads the plan's read grid; the sink receives finished rows of the output grid,
    each panel's in order, ``(row0, probs (K, r, w), valid (r, w), col0=...)``, or as
    ``sink.write_finished(rows)`` from the device merger (``device_merger``: see
    :func:`use_device_merger`)."""
    panels = column_panels(plan.width, panel_width(predictor))
    subplans = [plan if len(panels) == 1 else plan.columns(c0, c1) for c0, c1 in panels]
    on_device = use_device_merger(predictor, sink, meta.num_classes, device_merger)
    clock = ModelClock(predictor)
    bar = progress_bar(sum(len(p.windows) for p in subplans), desc, progress)
    skipped: set[tuple[int, int]] = set()
    # readers yield to a CPU engine's threads; not when they are the bottleneck (a GPU
    # engine, or a predictor that says reading bounds it)
    yield_ = not on_device and not getattr(predictor, "reader_bound", False)
    yield_ = yield_ and not str(getattr(predictor, "device", "cpu")).startswith("cuda")
    cpu_clock = CpuClock()
    normalise = normaliser(meta, percentiles, in_place=True)
    pools = ReaderThreads(scene, lower=yield_)
    make = partial(panel_reader, scene, threads=read_threads, ahead=max(2, read_threads),
                   transform=normalise, yield_to_engine=yield_, pools=pools)  # fmt: skip
    readers = PanelReaders([c0 for c0, _ in panels], subplans, make, pools)
    try:
        for k, ((c0, _), sub) in enumerate(zip(panels, subplans, strict=True)):
            panel_sink = sink if len(panels) == 1 else PanelSink(sink, c0)
            merger, predict = make_merger(sub, meta, predictor, panel_sink, blend, on_device)
            reader, carry = readers.take(k)
            skip = _run_panel(
                reader, sub, meta, merger, predict, percentiles, batch_size=batch_size,
                bar=bar, carry=carry, clock=clock, read_all=partial(readers.start, k + 1),
            )  # fmt: skip
            skipped |= {(w.row_off, w.col_off + c0) for w in skip}
    finally:
        readers.close()
        bar.close()
    cpu = cpu_clock.split().to_dict()
    return RunStats(len(plan.windows), len(skipped), clock.seconds(), cpu_seconds=cpu)


class EdgeCarry:
    """The probabilities of windows that straddle a panel's right edge, kept for the next
    panel so that no window runs twice: only the columns right of the edge (the next panel
    clips the rest away), so it holds one window column's overlap, not a panel."""

    def __init__(
        self,
        c0: int = 0,
        width: int | None = None,
        parts: dict[Any, Any] | None = None,
        masks: dict[Any, Any] | None = None,
    ) -> None:
        self.c0, self.width = c0, width  # width None: no panel follows, nothing to keep
        self._parts: dict[tuple[int, int], tuple[int, Any]] = parts or {}
        self._next: dict[tuple[int, int], tuple[int, Any]] = {}
        #: carried windows' valid masks left of the edge, for this panel's reader and from it
        #: for the next (:class:`~mfaf_cli.pipeline.strips.EdgeMasks`)
        self.masks_in: dict[tuple[int, int], Any] = masks if masks is not None else {}
        self.masks_out: dict[tuple[int, int], Any] = {}

    def next_panel(self, c0: int, width: int, last: bool) -> EdgeCarry:
        """The carry of the panel ``[c0, c0 + width)``, holding what this one kept."""
        return EdgeCarry(c0, None if last else width, self._next, self.masks_out)

    def key(self, w: Window) -> tuple[int, int]:
        return (w.row_off, w.col_off + self.c0)  # whole-grid position

    def cached(self, w: Window) -> Any | None:
        """The window's probabilities (columns left of the panel zero), if carried in."""
        got = self._parts.pop(self.key(w), None)
        if got is None:
            return None
        cut, part = got
        shape = (part.shape[0], w.height, w.width)
        full = part.new_zeros(shape) if hasattr(part, "new_zeros") else np.zeros(shape, part.dtype)
        full[:, :, cut:] = part
        return full

    def keep(self, w: Window, probs: Any) -> None:
        """Keep the columns right of this panel's edge of a window that straddles it."""
        cut = -1 if self.width is None else self.width - w.col_off
        if 0 < cut < w.width:
            part = probs[:, :, cut:]
            self._next[self.key(w)] = (cut, part.clone() if hasattr(part, "clone") else part.copy())


class PanelReaders:
    """The strip reader (and edge carry) of each column panel, in order, made by ``make(plan,
    reads, carry)``: :meth:`start` makes the next one early, so that its first chunks are
    read while this panel's last windows run and merge (the readers share
    :class:`~mfaf_cli.pipeline.strips.ReaderThreads`: its chunks queue behind this panel's).
    """

    def __init__(
        self,
        starts: Sequence[int],
        plans: Sequence[WindowPlan],
        make: Callable[[WindowPlan, list[Window], EdgeCarry], StripReader],
        pools: ReaderThreads,
    ) -> None:
        self._starts, self._plans, self._make = list(starts), list(plans), make
        self.pools = pools
        self._carry = EdgeCarry()  # the last panel's made so far
        self._made: dict[int, tuple[StripReader, EdgeCarry]] = {}
        self._next = 0  # the next panel to make

    def start(self, k: int) -> None:
        """Make panel ``k``'s reader (and those before it) and queue its first chunks; a
        panel past the last is none."""
        while self._next <= k and self._next < len(self._plans):
            i, plan = self._next, self._plans[self._next]
            last = i == len(self._plans) - 1
            self._carry = self._carry.next_panel(self._starts[i], plan.width, last=last)
            reader = self._make(plan, [plan.read_window(w) for w in plan.windows], self._carry)
            reader.start()
            self._made[i] = (reader, self._carry)
            self._next += 1

    def take(self, k: int) -> tuple[StripReader, EdgeCarry]:
        """Panel ``k``'s reader and carry (made now if :meth:`start` has not)."""
        self.start(k)
        return self._made.pop(k)

    def close(self) -> None:
        """Close readers made and not taken (a run that failed), then the reader threads."""
        for reader, _ in self._made.values():
            reader.close()
        self._made.clear()
        self.pools.close()


class PanelSink:
    """A sink seen through one column panel: rows come with the panel's first column."""

    def __init__(self, sink: Any, col0: int) -> None:
        self.sink, self.col0 = sink, col0

    def __call__(self, row0: int, probs: np.ndarray, valid: np.ndarray, col0: int = 0) -> None:
        self.sink(row0, probs, valid, col0=self.col0 + col0)

    @property
    def copies_rows(self) -> bool:
        """Whether the sink copies what it keeps of the rows (see ``StreamingMerger``)."""
        return bool(getattr(self.sink, "copies_rows", False))

    def row_needs(self) -> Any:
        return self.sink.row_needs()

    def write_finished(self, rows: Any) -> None:
        self.sink.write_finished(dataclasses.replace(rows, col0=rows.col0 + self.col0))


def _run_panel(
    reader: StripReader,
    plan: WindowPlan,
    meta: ModelMeta,
    merger: Any,
    predict: Callable[[Any], Any],
    percentiles: Percentiles,
    *,
    batch_size: int,
    bar: Any,
    carry: EdgeCarry,
    clock: ModelClock,
    read_all: Callable[[], None] | None = None,
) -> list[Window]:
    """One panel (or the whole scene) read by ``reader``: the windows skipped as all nodata;
    ``clock`` times the model. ``read_all`` is called once the reader has every chunk
    queued (the next panel's reader then starts: :class:`PanelReaders`)."""
    reads = [plan.read_window(w) for w in plan.windows]
    to_out = dict(zip(reads, plan.windows, strict=True))
    ahead = 1 if asynchronous(predict) else 0  # batches submitted before the oldest is done
    # masks: one per batch the worker may hold (queued, merging), in flight and being filled
    shape = reads[0].shape if reads else (plan.tile, plan.tile)
    extra = {k: c for k, c in reader.band_counts.items() if k.startswith("_")}
    slots = BatchSlots(meta, batch_size, shape, masks=MERGE_QUEUE + 2 + ahead, extra=extra,
                       inputs=1 + ahead)  # fmt: skip
    worker = MergeWorker(merger, done=slots.release)
    ok, skipped, flying = False, list[Window](), collections.deque[InFlight]()

    def finish_oldest() -> None:
        job = flying.popleft()
        probs = _finish_batch(job, carry, clock)
        skipped.extend(w for w, p in zip(job.windows, probs, strict=True) if p is None)
        worker.submit(job.windows, probs, job.batch.valid)
        bar.update(len(job.windows))

    try:
        # windows are sliced from row chunks that reader threads read and normalise ahead;
        # slicing a batch is cheap, so it runs here, in window order
        for batch in batched(reads, batch_size):
            pb = prepare_batch(reader, batch, meta, percentiles, normalised=True, slots=slots)
            if read_all is not None and reader.submitted_all:
                read_all()
                read_all = None
            windows = [to_out[w] for w in pb.windows]
            flying.append(_submit_batch(pb, windows, predict, carry, clock))
            if len(flying) > ahead:
                finish_oldest()
        while flying:
            finish_oldest()
        worker.close()
        ok = True
        merger.finish()
    finally:
        if not ok:
            worker.close(ok=False)
        reader.close()
    return skipped


def take_windows(arrays: Mapping[str, np.ndarray], keep: list[int]) -> dict[str, np.ndarray]:
    """The batch arrays of windows ``keep`` (sorted indexes): views where they are one run
    of consecutive windows, as when a panel's first window comes carried from the last panel.

    Why: a copy is megabytes a batch that the allocator maps and the kernel zeroes (measured
    at 8192², null engine: 0.26 of the main thread's CPU s); the values, and so the batch the
    model sees, are the same."""
    if keep and keep[-1] - keep[0] == len(keep) - 1:
        return {m: a[keep[0] : keep[-1] + 1] for m, a in arrays.items()}
    return {m: a[keep] for m, a in arrays.items()}


def asynchronous(predict: Any) -> bool:
    """Whether ``predict`` runs a batch in the background (``predict.submit``, e.g. the ONNX
    engine's streams), so that the core fills the next batch meanwhile."""
    return callable(getattr(predict, "submit", None)) and bool(
        getattr(predict, "asynchronous", False)
    )


@dataclass
class InFlight:
    """A batch handed to the predictor (:func:`_submit_batch`), not yet collected."""

    batch: PreparedBatch
    windows: list[Window]
    probs: list[Any]  # per window: carried in, or None until collected
    fresh: list[int]  # positions in ``batch.run`` that went to the model
    arrays: dict[str, np.ndarray]  # what went to the model
    result: Any  # the probabilities, or (``waiting``) what ``predict.submit`` returned
    waiting: bool
    started: float


def _submit_batch(
    pb: PreparedBatch,
    windows: list[Window],
    predict: Any,
    carry: EdgeCarry,
    clock: ModelClock | None = None,
) -> InFlight:
    """Hand a batch's windows to the predictor: those carried in from the last panel are not
    run again; an asynchronous predictor (:func:`asynchronous`) returns before they ran, a
    synchronous one is timed by ``clock`` here."""
    probs: list[Any] = [None] * len(pb.windows)
    for i in pb.run:
        probs[i] = carry.cached(windows[i])
    fresh = [k for k, i in enumerate(pb.run) if probs[i] is None]
    arrays = pb.arrays
    if fresh and len(fresh) < len(pb.run):
        arrays = take_windows(arrays, fresh)
    t0, waiting = time.perf_counter(), bool(fresh) and asynchronous(predict)
    result: Any = None
    if waiting:
        result = predict.submit(arrays)
    elif fresh:
        result = (clock or ModelClock(None)).time(predict, arrays)
    return InFlight(pb, windows, probs, fresh, arrays, result, waiting, t0)


def _finish_batch(job: InFlight, carry: EdgeCarry, clock: ModelClock | None = None) -> list[Any]:
    """Probabilities per window of a submitted batch (None: skipped as all nodata); an
    asynchronous batch's interval is added to ``clock``."""
    probs, run = job.probs, job.batch.run
    if job.fresh:
        out = job.result
        if job.waiting:
            out = job.result.result()
            if clock is not None:
                clock.add(job.started, job.result.finished_at)
        aliased = isinstance(out, np.ndarray) and any(
            np.may_share_memory(out, a) for a in job.arrays.values()
        )
        if aliased:
            out = out.copy()  # a view of the inputs, whose slots a later batch refills
        for j, k in enumerate(job.fresh):
            probs[run[k]] = out[j]
    for i in run:
        carry.keep(job.windows[i], probs[i])
    return probs

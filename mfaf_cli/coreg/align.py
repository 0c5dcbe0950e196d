"""Read every modality on one grid, one window at a time.

:class:`AlignedScene` is what predict, coregister, evaluate and the folder dataset read through.
Each window is read straight from the file when the file is already on the grid (an integer
pixel offset away), and otherwise warped from just the source pixels under the window — the
whole scene is never in memory. Resampling follows the band kind: bilinear for continuous
values, SAR intensities averaged in *linear power* (dB → power → resample → dB), nearest for
categorical rasters. Anything that is nodata, NaN/inf or outside a file's footprint is marked
invalid, so no class is ever guessed there.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.transform import Affine
from rasterio.warp import reproject
from rasterio.windows import Window as RioWindow

from mfaf_cli.coreg.bands import BAND_FLAG, BandChoice, choose_bands, select_bands
from mfaf_cli.coreg.bands import band_tokens as band_tokens  # moved; importable from here
from mfaf_cli.coreg.edges import read_bounds
from mfaf_cli.coreg.georef import Ground
from mfaf_cli.coreg.grid import Grid, check_overlap, footprint_in
from mfaf_cli.coreg.resample import axis_aligned, resample_block
from mfaf_cli.coreg.stack import band_of_file_name
from mfaf_cli.coreg.validity import Limits, current_overrides, limits_for
from mfaf_cli.coreg.warpcache import SCENE_BLOCK, WarpCache
from mfaf_cli.errors import UsageError
from mfaf_cli.io.inputs import open_raster, read_error
from mfaf_cli.metadata import RESAMPLING_KIND, ModelMeta
from mfaf_cli.scratch import scratch

log = logging.getLogger("mfaf")

#: Kinds of band and how they are resampled; modality names not listed in
#: :data:`mfaf_cli.metadata.RESAMPLING_KIND` (e.g. ``label``) are categorical.
CATEGORICAL_KIND = "nearest"

#: Long side of the decimated read used for scene statistics, and the cap on values read.
STATS_LONG_SIDE = 1024
STATS_MAX_VALUES = 32_000_000

#: rasterio's in-memory warp of numpy arrays is not safe to run from two threads at once
#: (rare "no geotransform" warnings under load), so warps are serialised; file reads and
#: decoding, the expensive part, still run in parallel.
_WARP_LOCK = threading.Lock()

#: Source dtypes whose every value float32 holds exactly (read straight into float32).
_EXACT_IN_FLOAT32 = {np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "float32")}

#: Resamplings done in numpy between north-up grids of one CRS (see ``coreg/resample.py``);
#: ``average`` (SAR downsampling) and other CRSs stay with GDAL.
_NUMPY_RESAMPLING = {Resampling.bilinear: "bilinear", Resampling.nearest: "nearest"}


# ---- pure helpers (tested exactly) ---------------------------------------------------------
#: 10^(x/10) = e^(x·ln10/10) and 10·log10(p) = ln(p)·10/ln10: numpy's float32 exp and log are
#: vectorised, its power and log10 are not (2-3× slower; the same values to float32 rounding).
_DB_TO_LN = np.float32(np.log(10.0) / 10.0)
_LN_TO_DB = np.float32(10.0 / np.log(10.0))


def db_to_linear(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """SAR backscatter dB → linear power (into ``out``, e.g. ``x`` itself, if given)."""
    out = np.multiply(x, _DB_TO_LN, dtype=np.float32, out=out)
    return np.exp(out, out=out)


def linear_to_db(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Linear power → dB; non-positive power is clamped to -100 dB rather than -inf (into
    ``out``, e.g. ``x`` itself, if given)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.maximum(x, np.float32(1e-10), dtype=np.float32, out=out)
        np.log(out, out=out)
        out *= _LN_TO_DB
        return out


def convert_units(x: np.ndarray, src: str, dst: str, *, in_place: bool = False) -> np.ndarray:
    """Convert SAR values between ``db`` and ``linear``; other pairs are a no-op.
    ``in_place``: overwrite ``x`` (float32, e.g. a fresh read: no new array per block)."""
    if src == dst or not src or not dst:
        return x
    out = x if in_place and x.dtype == np.float32 else None
    if src == "db" and dst == "linear":
        return db_to_linear(x, out)
    if src == "linear" and dst == "db":
        return linear_to_db(x, out)
    raise ValueError(f"unknown SAR units {src!r} -> {dst!r}")


def detect_sar_units(sample: np.ndarray, dtype: str) -> str:
    """``db`` if a float raster's median valid value is negative, else ``linear``.

    The median's sign by counting, not sorting: negative exactly when more than half the
    values are, or, with exactly half (an even count), when the two middle values (the
    largest negative, the smallest other) sum below zero. Why: the partition of the 1 M
    sampled values was ~11 ms of the set-up every run waits for before its first read
    (a 2048² null-engine run's whole read is ~130 ms)."""
    if not np.issubdtype(np.dtype(dtype), np.floating):
        return "linear"
    v = sample[np.isfinite(sample)]
    if v.size == 0:
        return "linear"
    negative = v < 0
    twice = 2 * int(np.count_nonzero(negative))
    if twice != v.size:
        return "db" if twice > v.size else "linear"
    middle = float(v[negative].max()) + float(v[~negative].min())
    return "db" if middle < 0 else "linear"


def reflect_pad(arr: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Reflect-pad the last two axes of ``arr`` (repeats the reflection for large pads)."""
    if not any(p for pair in pads for p in pair):
        return arr
    lead = [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, [*lead, pads[0], pads[1]], mode="reflect")


# ---- the scene --------------------------------------------------------------------------------
@dataclass
class _Source:
    """One modality's file and how to read it on the grid."""

    modality: str
    path: Path
    uri: str  # as given (reopened per thread; may be a /vsi path)
    indexes: list[int]
    nodata: list[float | None]
    use_mask: bool
    kind: str  # "bilinear" | "sar" | "nearest"
    units: str  # SAR input units ("db" | "linear"), "" otherwise
    out_units: str
    offset: tuple[int, int] | None  # (row, col) of grid pixel (0, 0) in the file, if on-grid
    downsampling: bool
    res_in_grid: tuple[float, float]
    dtype: str
    same_crs: bool  # the file is in the grid's CRS (then a north-up pair resamples in numpy)
    limits: Limits | None = None  # physically possible values (coreg/validity.py)
    ground: Ground | None = None  # located by GCPs or RPCs, not a CRS (coreg/georef.py)


def file_descriptions(path: str, count: int, described: Sequence[str | None] | None) -> list[str]:
    """A file's band descriptions ("" when none); a one-band file without one is described by
    its name when that says the band (``..._VV.tif``, ``s1a-iw-grd-vh-...tiff``, ``..._B04``)."""
    out = [d or "" for d in (described or [None] * count)]
    if count == 1 and not out[0]:
        out[0] = band_of_file_name(path) or ""
    return out


class AlignedScene:
    """All modalities of one scene, read window by window on a common :class:`Grid`.

    Args:
        inputs: modality name → raster path (``optical``, ``sar``, ``hsi``, ``lidar``; any other
            name, e.g. ``label``, is treated as categorical and resampled nearest).
        grid: the target grid.
        bands: modality → band list (1-based ints or band-description names).
        units: SAR input units, ``auto`` (float and negative median → dB), ``db`` or ``linear``.
        meta: the model's metadata; when given, band counts are checked against it and SAR is
            returned in the units the model expects.
        kinds: override the resampling kind per modality (``bilinear``, ``sar``, ``nearest``).
        band_flags: modality → the option or key its band list came from (error messages).
        nodata: modality → the value that is nodata in its file (replaces the file's own; by
            default the ``--nodata`` of :func:`~mfaf_cli.coreg.validity.nodata_overrides`).
        quiet: say nothing about band choices and impossible values (a second reader of the
            same inputs, e.g. the exclusion check, whose first reader already said it).
        warp_cache_bytes: keep warped sources' grid blocks between reads when the whole warped
            scene fits in this many bytes (0: never). For a reader that comes back to the same
            area (training epochs); a window's values are then those of the fixed
            :data:`~mfaf_cli.coreg.warpcache.SCENE_BLOCK`-pixel blocks under it
            (coreg/warpcache.py).
    """

    def __init__(
        self,
        inputs: Mapping[str, str | os.PathLike[str]],
        grid: Grid,
        bands: Mapping[str, Sequence[int | str] | None] | None = None,
        units: str = "auto",
        *,
        sar_units: str | None = None,
        meta: ModelMeta | None = None,
        kinds: Mapping[str, str] | None = None,
        band_flags: Mapping[str, str] | None = None,
        nodata: Mapping[str, float] | None = None,
        quiet: bool = False,
        warp_cache_bytes: int = 0,
    ) -> None:
        units = sar_units or units
        self.quiet = quiet
        #: modality → the option or key its band list came from, for error messages
        self.band_flags = dict(band_flags or {})
        self._nodata = dict(current_overrides() if nodata is None else nodata)
        if units not in ("auto", "db", "linear"):
            raise UsageError(f"SAR units must be auto, db or linear, got {units!r}")
        self.grid = grid
        self.meta = meta
        self._local = threading.local()
        self._all_handles: list[Any] = []
        self._by_thread: dict[int, list[Any]] = {}  # thread ident -> the handles it opened
        self._lock = threading.Lock()
        bands = dict(bands or {})
        self.sources: dict[str, _Source] = {}
        #: Which bands of each input are read, and how they were chosen (for logs and --json).
        self.band_choices: dict[str, BandChoice] = {}
        #: How the last scene statistics were sampled (see :meth:`sample_values`).
        self.stats_sampling: dict[str, object] = {}
        #: warped sources' grid blocks kept between reads (training; coreg/warpcache.py)
        self.warp_cache: WarpCache | None = None
        handles: dict[str, Any] = {}
        try:
            for name, path in inputs.items():
                ds = open_raster(path, name)
                handles[name] = ds
                self._all_handles.append(ds)
                check_overlap(ds, grid, name)
                self.sources[name] = self._describe(
                    name, ds, os.fspath(path), bands.get(name), units, kinds
                )
        except BaseException:
            self.close()
            raise
        self._local.handles = handles
        warped = sum(4 * len(s.indexes) + 1 for s in self.sources.values() if s.offset is None)
        if warped and 0 < warped * grid.height * grid.width <= warp_cache_bytes:
            # only a cache that holds the whole warped scene: a window cut from blocks may
            # need 4 block warps, so a partial cache would warp more than it saves
            self.warp_cache = WarpCache(warp_cache_bytes, block=SCENE_BLOCK)

    # -- set-up --------------------------------------------------------------------------
    def _describe(
        self,
        name: str,
        ds: Any,
        uri: str,
        band_spec: Sequence[int | str] | None,
        units: str,
        kinds: Mapping[str, str] | None,
    ) -> _Source:
        path = Path(ds.name)
        choice = self._choose(name, ds, path.name, band_spec)
        self.band_choices[name] = choice
        indexes = list(choice.indexes)
        kind = (kinds or {}).get(name) or RESAMPLING_KIND.get(name, CATEGORICAL_KIND)
        in_units = ""
        out_units = ""
        if kind == "sar":
            in_units = units if units != "auto" else _file_units(ds, indexes[:1])
            out_units = in_units
            if self.meta is not None and name in self.meta.modality_names:
                want = self.meta.modality(name).units
                if want in ("db", "linear"):
                    out_units = want
        flags = [ds.mask_flag_enums[i - 1] for i in indexes]
        nodata = [ds.nodatavals[i - 1] for i in indexes]
        if name in self._nodata:  # --nodata MOD=VALUE replaces the file's own
            nodata = [self._nodata[name]] * len(indexes)
        use_mask = all(v is None for v in nodata) and any(
            MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags
        )
        spec = self.meta.modality(name) if self.meta and name in self.meta.modality_names else None
        offset = _grid_offset(ds, self.grid)
        fl, fb, fr, ft = footprint_in(ds, self.grid.crs)
        res_in_grid = ((fr - fl) / ds.width, (ft - fb) / ds.height)
        gx, gy = self.grid.res
        downsampling = res_in_grid[0] * 1.01 < gx or res_in_grid[1] * 1.01 < gy
        return _Source(
            modality=name,
            path=path,
            uri=uri,
            indexes=indexes,
            nodata=nodata,
            use_mask=use_mask,
            kind=kind,
            units=in_units,
            out_units=out_units,
            offset=offset,
            downsampling=downsampling,
            res_in_grid=res_in_grid,
            dtype=ds.dtypes[indexes[0] - 1],
            same_crs=ds.crs == self.grid.crs,
            limits=limits_for(kind, in_units, spec, (ds.height, ds.width)),
            ground=Ground.of(ds),
        )

    def _choose(
        self, name: str, ds: Any, path: str, band_spec: Sequence[int | str] | None
    ) -> BandChoice:
        """Pick the bands: by the model's band meanings when it takes this modality (see
        :func:`~mfaf_cli.coreg.bands.choose_bands`), else as listed or all of them."""
        descriptions = file_descriptions(path, ds.count, ds.descriptions)
        flag = self.band_flags.get(name)
        if self.meta is not None and name in self.meta.modality_names:
            choice = choose_bands(
                self.meta.modality(name), band_spec, ds.count, descriptions,
                path=path, model=self.meta.arch, flag=flag,
            )  # fmt: skip
            for text in () if self.quiet else choice.warnings:
                log.warning("%s", text)
            return choice
        indexes = select_bands(
            band_spec, ds.count, descriptions, path=path, modality=name, flag=flag
        )
        how = (flag or BAND_FLAG.get(name, f"--{name}-bands")) if band_spec else "file order"
        return BandChoice(tuple(indexes), how, tuple(descriptions[i - 1] or "" for i in indexes))

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.sources)

    @property
    def band_counts(self) -> dict[str, int]:
        return {k: len(s.indexes) for k, s in self.sources.items()}

    @property
    def units(self) -> dict[str, str]:
        """SAR units of the values returned by :meth:`read` (per SAR modality)."""
        return {k: s.out_units for k, s in self.sources.items() if s.kind == "sar"}

    def cache_bytes(
        self,
        tile: int,
        columns: int | None = None,
        spans: Sequence[tuple[int, int]] | None = None,
    ) -> int:
        """A GDAL block-cache size that holds the source blocks a row of windows touches.

        GDAL's default cache (5 % of RAM) keeps every decoded block of a scene read window by
        window, so memory would grow with the scene; a cache larger than the reading order
        needs only holds blocks that are never read again (it fills to its cap). Raster-order
        reads need the block rows a window's height can touch (two for a window shorter than
        a block) per input, less one for the input whose rows are smallest (all bands of
        pixel-interleaved files, the mask of a masked one), over the columns read at a time:
        ``spans``, the grid column ranges read at a time (a run's column panels with their
        windows' reach), whose blocks are counted exactly for inputs on the grid; else any
        ``columns`` consecutive grid columns (default the whole grid). Plus
        :data:`CACHE_SLACK`, clamped to [:data:`CACHE_FLOOR`, 2 GiB].
        """
        cols = columns if columns is not None else self.grid.width
        total, spare = 0, []
        for name, src in self.sources.items():
            ds = self._handles()[name]
            per_pixel = _cached_bytes_per_pixel(ds, src)
            block_h, block_w = (int(v) for v in ds.block_shapes[0])
            span = math.ceil(tile * self.grid.res[1] / max(src.res_in_grid[1], 1e-12))
            rows = ((span - 1) // block_h + 2) * block_h  # block rows a window row can touch
            if spans:
                blocks = max(self._blocks_across(src, ds, a, b) for a, b in spans)
            else:
                across = cols * self.grid.res[0] / max(src.res_in_grid[0], 1e-12)
                blocks = _blocks_in_any(across, block_w)
            row_bytes = block_h * min(ds.width, blocks * block_w) * per_pixel
            total += rows // block_h * row_bytes
            spare.append((rows // block_h - 1) * row_bytes)
        # between two reads of a block the next chunk needs, LRU sees the rest of its input's
        # last block row and every other input's rows: one input gets by with a row less
        total -= min(spare, default=0)
        return int(min(max(total + CACHE_SLACK, CACHE_FLOOR), 2 << 30))

    def _blocks_across(self, src: _Source, ds: Any, a: int, b: int) -> int:
        """Blocks of ``ds`` (across) that grid columns ``[a, b)`` read: exact on the grid or
        on an axis-aligned grid of the same CRS (with the resampling kernel's margin), at
        the worst placement otherwise."""
        block_w = max(int(ds.block_shapes[0][1]), 1)
        if src.offset is not None:
            return blocks_across(a + src.offset[1], b + src.offset[1], block_w, ds.width)
        t, g = ds.transform, self.grid.transform
        if src.same_crs and t.b == 0 and g.b == 0 and t.a > 0 and g.a > 0:
            x0 = (g.c + a * g.a - t.c) / t.a - WARP_MARGIN
            x1 = (g.c + b * g.a - t.c) / t.a + WARP_MARGIN
            return blocks_across(x0, x1, block_w, ds.width)
        across = (b - a) * self.grid.res[0] / max(src.res_in_grid[0], 1e-12)
        return _blocks_in_any(across + 2 * WARP_MARGIN, block_w)

    def read_blocks(self) -> tuple[int, int, int]:
        """``(block height, block width, a grid column where a block starts)`` of the input
        read straight off the grid with the most bytes per grid pixel (the costliest to
        decode), so that readers can split their work where no block is decoded twice;
        ``(1, 1, 0)`` when no input is on the grid."""
        best, found = 0, (1, 1, 0)
        for name, src in self.sources.items():
            if src.offset is None:
                continue
            ds = self._handles()[name]
            size = len(src.indexes) * np.dtype(ds.dtypes[src.indexes[0] - 1]).itemsize
            if size > best:
                height, width = (max(int(v), 1) for v in ds.block_shapes[0])
                best, found = size, (height, width, -src.offset[1] % width)
        return found

    def _handles(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """This thread's open datasets, those of ``names`` (default all) at least (GDAL
        handles are not thread-safe; each opened once per thread, when first needed: a
        reader of some modalities only holds no other's decoder state, ~7 MB a handle)."""
        h: dict[str, Any] | None = getattr(self._local, "handles", None)
        if h is None:
            h = self._local.handles = {}
        missing = [n for n in (self.sources if names is None else names) if n not in h]
        if missing:
            opened = {name: open_raster(self.sources[name].uri, name) for name in missing}
            h.update(opened)
            with self._lock:
                self._all_handles.extend(opened.values())
                self._by_thread.setdefault(threading.get_ident(), []).extend(opened.values())
        return h

    def thread_handles(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """Handles of ``names`` (default all) opened in this thread for a reader thread to
        :meth:`adopt_handles`: GDAL parses a file's CRS at open with the opening thread's PROJ
        context, which a fresh thread first creates (measured: ~10 ms an open in a fresh
        thread, 26 ms beside a busy one, against ~1-2 ms here), on the run's critical path
        as its readers start. Until adopted they close with the scene."""
        wanted = list(self.sources if names is None else names)
        opened = {name: open_raster(self.sources[name].uri, name) for name in wanted}
        with self._lock:
            self._all_handles.extend(opened.values())
        return opened

    def adopt_handles(self, handles: Mapping[str, Any]) -> None:
        """Make ``handles`` (:meth:`thread_handles`) the calling thread's own: a GDAL handle
        serves one thread at a time, not necessarily the one that opened it."""
        h: dict[str, Any] | None = getattr(self._local, "handles", None)
        if h is None:
            h = self._local.handles = {}
        h.update(handles)
        with self._lock:
            self._by_thread.setdefault(threading.get_ident(), []).extend(handles.values())

    def close_thread_handles(self, idents: Iterable[int]) -> None:
        """Close the handles that finished threads opened. Each keeps a few MB of decoder
        state (measured: ~7 MB per deflate GeoTIFF handle), so a run that starts reader
        threads per column panel would otherwise grow with the number of panels."""
        with self._lock:
            for ident in idents:
                for ds in self._by_thread.pop(ident, []):
                    self._all_handles.remove(ds)
                    _close_quietly(ds)

    def close(self) -> None:
        for name, src in self.sources.items():  # one line per input that had impossible values
            text = src.limits.warning(name, src.path.name) if src.limits else None
            if text and not self.quiet:
                log.warning("%s", text)
                src.limits = None
        with self._lock:
            for ds in self._all_handles:
                _close_quietly(ds)
            self._all_handles.clear()
            self._by_thread.clear()
        self._local = threading.local()

    def __enter__(self) -> AlignedScene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------
    def read(
        self,
        window: Any,
        out: Mapping[str, np.ndarray] | None = None,
        modalities: Sequence[str] | None = None,
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Read one window (grid pixel coordinates; may extend past the grid).

        Returns ``(arrays, valid)``: each array (C, h, w) float32 in the modality's band order
        (NaN where that modality has no data); ``valid`` (h, w) bool, True only where every
        modality has data and the pixel lies inside the grid. Parts of the window outside the
        grid are reflect-padded so the network sees natural-looking context.

        ``out``: modality → (C, h, w) float32 arrays to fill and return, for a window inside
        the grid (a reader reusing its buffers: fresh arrays cost page faults per read).
        ``modalities``: read only these (``valid`` then over them alone; the AND of the
        reads of a partition of the modalities is the whole read's mask).
        """
        r0w, c0w = int(window.row_off), int(window.col_off)
        hw, ww = int(window.height), int(window.width)
        r0, c0 = max(0, r0w), max(0, c0w)
        r1, c1 = min(self.grid.height, r0w + hw), min(self.grid.width, c0w + ww)
        arrays: dict[str, np.ndarray] = {}
        sources = self.sources
        if modalities is not None:
            sources = {name: sources[name] for name in modalities}
        handles = self._handles(sources)
        if r1 <= r0 or c1 <= c0:
            valid = np.zeros((hw, ww), dtype=bool)
            for name, src in sources.items():
                arrays[name] = np.zeros((len(src.indexes), hw, ww), dtype=np.float32)
            return arrays, valid
        valid_in = np.ones((r1 - r0, c1 - c0), dtype=bool)
        pads = ((r0 - r0w, r0w + hw - r1), (c0 - c0w, c0w + ww - c1))
        padded = any(p for pair in pads for p in pair)
        for name, src in sources.items():
            into = None if out is None or padded else out.get(name)
            arr, ok = self._read_inner(
                handles[name], src, self.grid, r0, c0, r1 - r0, c1 - c0, out=into
            )
            arrays[name] = arr
            valid_in &= ok
        if padded:
            arrays = {k: reflect_pad(v, pads) for k, v in arrays.items()}
            valid = np.pad(valid_in, pads, mode="constant", constant_values=False)
        else:
            valid = valid_in
        return arrays, valid

    def _read_inner(
        self,
        ds: Any,
        src: _Source,
        grid: Grid,
        row: int,
        col: int,
        h: int,
        w: int,
        *,
        stats: bool = False,
        out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Values (C,h,w) float32 with NaN where invalid (in ``out`` if given), and the valid
        mask, for a grid block."""
        if src.offset is not None and grid is self.grid:
            place = (row + src.offset[0], col + src.offset[1], h, w)
            data, ok = _read_direct(ds, src, *place, out=out)
            if src.kind == "sar":
                data = convert_units(data, src.units, src.out_units, in_place=True)
        elif self.warp_cache is not None and grid is self.grid and not stats:
            data, ok = self.warp_cache.read(
                src.modality,
                lambda r, c, bh, bw: _read_warped(ds, src, grid, r, c, bh, bw, stats=False),
                (row, col, h, w),
                (grid.height, grid.width),
                len(src.indexes),
            )
        else:
            data, ok = _read_warped(ds, src, grid, row, col, h, w, stats=stats, out=out)
        if out is not None and data is not out:
            out[...] = data
            data = out
        if not ok.all():
            data[:, ~ok] = np.nan
        return data, ok

    def read_modality(self, name: str, window: Any) -> tuple[np.ndarray, np.ndarray]:
        """One modality's values and *its own* valid mask (for coregister's per-file output)."""
        src = self.sources[name]
        r0, c0 = int(window.row_off), int(window.col_off)
        return self._read_inner(
            self._handles()[name], src, self.grid, r0, c0, int(window.height), int(window.width)
        )

    def read_decimated(
        self, long_side: int = STATS_LONG_SIDE
    ) -> tuple[dict[str, np.ndarray], np.ndarray, Grid]:
        """The whole scene on a coarse grid (≤ ``long_side`` px), sampled nearest.

        Used for scene statistics: memory stays bounded whatever the scene size, and source
        files are read with ``out_shape`` so GDAL decimates (or uses overviews) on the fly.
        """
        total_c = sum(len(s.indexes) for s in self.sources.values())
        side = min(long_side, int(math.sqrt(STATS_MAX_VALUES / max(total_c, 1))))
        factor = max(1.0, max(self.grid.width, self.grid.height) / max(side, 1))
        coarse = self.grid if factor <= 1.0 else self.grid.scaled(factor)
        handles = self._handles()
        arrays: dict[str, np.ndarray] = {}
        valid = np.ones((coarse.height, coarse.width), dtype=bool)
        for name, src in self.sources.items():
            arr, ok = self._read_inner(
                handles[name], src, coarse, 0, 0, coarse.height, coarse.width, stats=True
            )
            arrays[name] = arr
            valid &= ok
        return arrays, valid, coarse

    def percentiles(
        self, meta: ModelMeta | None = None
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-band scene percentiles of each modality, over pixels valid in every modality.

        Uses each modality's ``p_low``/``p_high`` from ``meta`` (2/98 without one), on the values
        exactly as :meth:`read` returns them (same bands, same SAR units), from whole blocks
        spread over the scene (:func:`~mfaf_cli.coreg.sampling.sample_windows`: a fixed cost
        whatever the scene's size); :attr:`stats_sampling` records the sample.
        """
        from mfaf_cli.normalize import band_percentiles

        meta = meta or self.meta
        values = self.sample_values()
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, arr in values.items():
            p_low, p_high = 2.0, 98.0
            if meta is not None and name in meta.modality_names:
                norm = meta.modality(name).normalisation
                p_low, p_high = norm.p_low, norm.p_high
            out[name] = band_percentiles(arr[:, None, :], None, p_low, p_high)
        return out

    def sample_values(self) -> dict[str, np.ndarray]:
        """``(C, N)`` values of each modality at the statistics sample's pixels that are
        valid in every modality; sets :attr:`stats_sampling`."""
        from mfaf_cli.coreg.sampling import sample_windows

        g = self.grid
        block = self.read_blocks()
        sample = sample_windows(g.height, g.width, block if block[:2] != (1, 1) else (512, 512, 0))
        s = sample.stride
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.sources}
        for r0, c0, h, w in sample.windows:
            arrays, valid = self.read(RioWindow(c0, r0, w, h))
            keep = valid[::s, ::s]
            for name, arr in arrays.items():
                parts[name].append(arr[:, ::s, ::s][:, keep])
        self.stats_sampling = sample.to_dict()
        return {
            name: np.concatenate(p, axis=1) if p else np.zeros((len(self.sources[name].indexes), 0))
            for name, p in parts.items()
        }


# ---- readers ------------------------------------------------------------------------------
def _close_quietly(ds: Any) -> None:
    try:
        ds.close()
    except (OSError, RasterioError) as err:  # read-only handle: nothing is lost
        log.debug("closing %s failed: %s", getattr(ds, "name", ds), err)


def _invalid_mask(
    data: np.ndarray, nodata: Sequence[float | None], floating: bool | None = None
) -> np.ndarray:
    """Pixels that are nodata in any band, or non-finite in a floating-point file."""
    floating = data.dtype.kind == "f" if floating is None else floating
    if floating:  # the per-band tests in reused arrays: only the (h, w) result is fresh
        finite = np.isfinite(data, out=scratch("align.finite", data.shape, bool))
        bad = finite.all(axis=0)
        np.logical_not(bad, out=bad)
    else:
        bad = np.zeros(data.shape[1:], dtype=bool)
    for i, nd in enumerate(nodata):
        if nd is not None and not (isinstance(nd, float) and math.isnan(nd)):
            bad |= np.equal(data[i], nd, out=scratch("align.nodata", bad.shape, bool))
    return bad


def _read_block(
    ds: Any,
    src: _Source,
    win: RioWindow,
    out_shape: tuple[int, int] | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a window that lies inside the file: float32 values (into ``out`` where GDAL can
    convert as it copies) + valid mask."""
    kw: dict[str, Any] = {"window": win}
    if out_shape is not None:
        kw["out_shape"] = (len(src.indexes), *out_shape)
        kw["resampling"] = Resampling.nearest
    try:
        # GDAL converts as it copies where float32 holds every value (and nodata) exactly
        exact = np.dtype(src.dtype) in _EXACT_IN_FLOAT32
        if exact and out is not None and out_shape is None:
            raw = ds.read(src.indexes, out=out, **kw)
        else:
            raw = ds.read(src.indexes, out_dtype=np.float32 if exact else None, **kw)
        ok = _invalid_mask(raw, src.nodata, np.dtype(src.dtype).kind == "f")
        np.logical_not(ok, out=ok)
        if src.limits is not None:  # counted once per source pixel, not in decimated reads
            place = (int(win.row_off), int(win.col_off)) if out_shape is None else None
            bad = src.limits.invalid(raw, place, ok)
            if bad.any():  # mostly none: no second mask then
                ok &= ~bad
        if src.use_mask:
            mkw = dict(kw)
            if out_shape is not None:
                mkw["out_shape"] = out_shape
            ok &= ds.read_masks(src.indexes[0], **mkw) > 0
    except RasterioIOError as err:  # truncated / corrupt blocks show up only when read
        raise read_error(ds.name, err) from None
    return raw.astype(np.float32, copy=False), ok


def _read_direct(
    ds: Any, src: _Source, row: int, col: int, h: int, w: int, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a block of a file that is on the grid; parts outside the file are invalid."""
    rr0, cc0 = max(row, 0), max(col, 0)
    rr1, cc1 = min(row + h, ds.height), min(col + w, ds.width)
    if (rr0, cc0, rr1, cc1) == (row, col, row + h, col + w):  # inside the file: read as is
        return _read_block(ds, src, RioWindow(col, row, w, h), out=out)
    data = np.full((len(src.indexes), h, w), np.nan, dtype=np.float32)
    ok = np.zeros((h, w), dtype=bool)
    if rr1 > rr0 and cc1 > cc0:
        vals, vok = _read_block(ds, src, RioWindow(cc0, rr0, cc1 - cc0, rr1 - rr0))
        data[:, rr0 - row : rr1 - row, cc0 - col : cc1 - col] = vals
        ok[rr0 - row : rr1 - row, cc0 - col : cc1 - col] = vok
    return data, ok


def _read_warped(
    ds: Any,
    src: _Source,
    grid: Grid,
    row: int,
    col: int,
    h: int,
    w: int,
    *,
    stats: bool,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Warp just the source pixels under a grid block onto it (into ``out``, (C, h, w)
    float32, where the warp can write there; the values returned are then ``out``).

    The source window is the block's bounds transformed into the file's CRS, padded by a few
    pixels for the resampling kernel. For SAR, dB values are converted to linear power before
    resampling (averaged when downsampling, bilinear otherwise) and back afterwards.
    """
    c = len(src.indexes)
    dst_transform = grid.transform @ Affine.translation(col, row)
    left, top = dst_transform @ (0, 0)
    right, bottom = dst_transform @ (w, h)
    block = (min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    pad = 3
    if src.ground is not None:  # GCPs / RPCs: the inverse transform finds the pixels
        r0, c0, r1, c1 = src.ground.source_window(grid.crs, block, pad)
    else:
        b = read_bounds(grid.crs, block, ds)  # never left > right (antimeridian, poles)
        fwin = ds.window(*b)
        r0 = max(0, math.floor(min(fwin.row_off, fwin.row_off + fwin.height)) - pad)
        c0 = max(0, math.floor(min(fwin.col_off, fwin.col_off + fwin.width)) - pad)
        r1 = min(ds.height, math.ceil(max(fwin.row_off, fwin.row_off + fwin.height)) + pad)
        c1 = min(ds.width, math.ceil(max(fwin.col_off, fwin.col_off + fwin.width)) + pad)
    if r1 <= r0 or c1 <= c0:
        return np.full((c, h, w), np.nan, dtype=np.float32), np.zeros((h, w), dtype=bool)
    win = RioWindow(c0, r0, c1 - c0, r1 - r0)
    out_shape = None
    src_transform = ds.transform @ Affine.translation(c0, r0)
    src_place = (ds.transform, r0, c0)  # the block in its file, for numpy resampling
    if stats:
        # Decimate the source read to about the coarse grid's resolution.
        f = int(min(grid.res[0] / src.res_in_grid[0], grid.res[1] / src.res_in_grid[1]))
        if f >= 2:
            out_shape = (max(1, (r1 - r0) // f), max(1, (c1 - c0) // f))
            src_transform = src_transform @ Affine.scale(
                (c1 - c0) / out_shape[1], (r1 - r0) / out_shape[0]
            )
            src_place = (src_transform, 0, 0)
    # the source block lives only inside this call: a reused array (see mfaf_cli/scratch.py)
    into = scratch("align.source", (c, r1 - r0, c1 - c0)) if out_shape is None else None
    vals, vok = _read_block(ds, src, win, out_shape, out=into)
    if src.kind == "sar":
        vals = convert_units(vals, src.units, "linear", in_place=True)
    vals[:, ~vok] = np.nan
    if stats or src.kind == CATEGORICAL_KIND:
        resampling = Resampling.nearest
    elif src.kind == "sar" and src.downsampling:
        resampling = Resampling.average
    else:
        resampling = Resampling.bilinear
    geometry = _Geometry(src_transform, dst_transform, src_place, (grid.transform, row, col))
    if src.ground is not None:
        sy, sx = ((r1 - r0) / out_shape[0], (c1 - c0) / out_shape[1]) if out_shape else (1, 1)
        geometry = replace(geometry, ground=src.ground.warp_kwargs(r0, c0, sy, sx))
    data, ok = _warp(vals, vok, ds, src, grid, geometry, (c, h, w), resampling, out)
    if src.kind == "sar":
        data = convert_units(data, "linear", src.out_units, in_place=True)
    return data, ok


@dataclass(frozen=True)
class _Geometry:
    """Where a source block and a grid block lie: block transforms for GDAL, and each block's
    raster transform with its first (row, col) for the numpy resampler."""

    src_transform: Affine
    dst_transform: Affine
    src_place: tuple[Affine, int, int]
    dst_place: tuple[Affine, int, int]
    ground: dict[str, Any] | None = None  # GCPs / RPCs of the source block, for GDAL


def _warp(
    vals: np.ndarray,
    vok: np.ndarray,
    ds: Any,
    src: _Source,
    grid: Grid,
    geo: _Geometry,
    shape: tuple[int, int, int],
    resampling: Resampling,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a source block onto the grid block (``shape`` (C, h, w)): in numpy between
    north-up grids of one CRS, with GDAL otherwise (and on ties). Returns (values, valid):
    values in ``out`` where the numpy path could write there, fresh otherwise."""
    if (
        src.same_crs
        and resampling in _NUMPY_RESAMPLING
        and axis_aligned(geo.src_transform, geo.dst_transform)
    ):
        method = _NUMPY_RESAMPLING[resampling]
        fast = resample_block(vals, vok, geo.src_place, geo.dst_place, shape[1:], method, out)
        if fast is not None:
            return fast
    data = np.full(shape, np.nan, dtype=np.float32)
    ok8 = np.zeros(shape[1:], dtype=np.uint8)
    common = {
        "src_transform": geo.src_transform,
        "src_crs": ds.crs,
        "dst_transform": geo.dst_transform,
        "dst_crs": grid.crs,
    }
    if geo.ground is not None:  # located by GCPs or RPCs: no source transform
        del common["src_transform"]
        common.update(geo.ground)
    if vok.all():  # the warped mask would be 1 exactly where GDAL wrote a value
        with _WARP_LOCK:
            _reproject_valid(vals, data, resampling, common)
        return data, np.asarray(np.isfinite(data).all(axis=0))
    with _WARP_LOCK:
        _reproject_pair(vals, data, vok, ok8, resampling, common)
    return data, (ok8 > 0) & np.isfinite(data).all(axis=0)


def _reproject_pair(
    vals: np.ndarray,
    data: np.ndarray,
    vok: np.ndarray,
    ok8: np.ndarray,
    resampling: Resampling,
    common: dict[str, Any],
) -> None:
    """Warp values (NaN = nodata) and, nearest, the validity mask with the same geometry."""
    _reproject_values(vals, data, resampling, common)
    reproject(
        vok.astype(np.uint8),
        ok8,
        src_nodata=0,
        dst_nodata=0,
        resampling=Resampling.nearest,
        **common,
    )


def _reproject_values(
    vals: np.ndarray, data: np.ndarray, resampling: Resampling, common: dict[str, Any]
) -> None:
    """Warp values (NaN = nodata) into ``data`` (NaN where no source pixel maps).

    With every source pixel valid, the nearest-warped validity mask is 1 exactly where this
    writes a value (GDAL tests a destination pixel's source position against the source
    block alike for every resampling), so :func:`_warp` skips that second warp.
    """
    reproject(vals, data, src_nodata=np.nan, dst_nodata=np.nan, resampling=resampling, **common)


def _reproject_valid(
    vals: np.ndarray, data: np.ndarray, resampling: Resampling, common: dict[str, Any]
) -> None:
    """:func:`_reproject_values` for a source block without one invalid pixel, at half the
    CPU: GDAL's kernels without a source nodata skip the per-pixel validity test (measured:
    2.9 vs 6.2 ms per 256² grid block of 2-band SAR, bilinear), and nothing is
    pre-filled, so a grid pixel no source pixel maps to keeps the NaN ``data`` holds — the
    same values, bit for bit, as with NaN nodata (tests/test_warpcache.py)."""
    reproject(vals, data, resampling=resampling, init_dest_nodata=False, **common)


def _grid_offset(ds: Any, grid: Grid) -> tuple[int, int] | None:
    """(row, col) of the grid's origin in ``ds`` if ``ds`` is on the grid, else None."""
    t, g = ds.transform, grid.transform
    if ds.crs != grid.crs or t.b != 0 or t.d != 0 or g.b != 0 or g.d != 0:
        return None
    if not (math.isclose(t.a, g.a, rel_tol=1e-9) and math.isclose(t.e, g.e, rel_tol=1e-9)):
        return None
    col = (g.c - t.c) / t.a
    row = (g.f - t.f) / t.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return (round(row), round(col))


#: GDAL block cache for what the inputs' block rows leave out: the outputs' blocks being
#: written (whole 512-row stripes, so a block pushed out early is written once, not read
#: back); see :meth:`AlignedScene.cache_bytes`.
CACHE_SLACK = 1 << 20
#: The least block cache a run gets.
CACHE_FLOOR = 16 << 20
#: Source columns a warp may read past a window's own (the resampling kernel's reach).
WARP_MARGIN = 4


def blocks_across(x0: float, x1: float, block: int, size: int) -> int:
    """How many blocks of ``block`` columns hold source columns ``[x0, x1)`` of a
    ``size``-column raster (clipped to the raster; at least one)."""
    a = min(max(math.floor(x0), 0), size - 1)
    b = min(max(math.ceil(x1), a + 1), size)
    return (b - 1) // block - a // block + 1


def _blocks_in_any(across: float, block: int) -> int:
    """Blocks that ``across`` consecutive columns can touch wherever they start."""
    return (max(math.ceil(across), 1) - 1) // block + 2


def _cached_bytes_per_pixel(ds: Any, src: _Source) -> int:
    """Block-cache bytes per source pixel: every band of a pixel-interleaved file (GDAL
    decodes them together), the read bands of others, and a per-dataset mask's byte."""
    from rasterio.enums import Interleaving

    bands = ds.count if ds.interleaving == Interleaving.pixel else len(src.indexes)
    itemsize = np.dtype(ds.dtypes[src.indexes[0] - 1]).itemsize
    return bands * itemsize + (1 if src.use_mask else 0)


#: Pixels decoded to tell a SAR file's units: a few whole blocks spread over the file. A
#: decimated read of the whole file decodes every block (0.04 s of a 4096² null-engine run's
#: critical path for its 2048² SAR, growing with the scene).
UNITS_DECODE_PIXELS = 4 * 512 * 512


def _file_units(ds: Any, indexes: list[int]) -> str:
    """:func:`detect_sar_units` of a file's band: a file of integers is linear (DN) whatever
    its values, so nothing of it is decoded; a floating one's sample (:func:`_units_sample`)."""
    dtype = ds.dtypes[indexes[0] - 1]
    if not np.issubdtype(np.dtype(dtype), np.floating):
        return "linear"
    return detect_sar_units(_units_sample(ds, indexes), dtype)


def _units_sample(ds: Any, indexes: list[int]) -> np.ndarray:
    """Values (NaN at nodata) of whole blocks on :func:`sample_windows`' lattice, about
    :data:`UNITS_DECODE_PIXELS` of them; the decimated whole file (:func:`_decimated_sample`)
    where those blocks hold no finite value (a mostly empty file)."""
    from mfaf_cli.coreg.sampling import sample_windows

    bh, bw = (max(int(v), 1) for v in ds.block_shapes[0])
    sample = sample_windows(ds.height, ds.width, (bh, bw, 0), decode_pixels=UNITS_DECODE_PIXELS)
    parts = []
    for r0, c0, h, w in sample.windows:
        raw = _floating(ds.read(indexes, window=RioWindow(c0, r0, w, h)))
        parts.append(_nodata_to_nan(raw, ds, indexes).reshape(len(indexes), -1))
    values = np.concatenate(parts, axis=1)
    return values if np.isfinite(values).any() else _decimated_sample(ds, indexes)


def _floating(raw: np.ndarray) -> np.ndarray:
    """``raw`` where it can hold NaN (a float file's values as read: a float64 copy of a 1 M
    sample cost ~3 ms of every run's set-up), else as float64."""
    return raw if raw.dtype.kind == "f" else raw.astype(np.float64)


def _nodata_to_nan(raw: np.ndarray, ds: Any, indexes: list[int]) -> np.ndarray:
    for i, nd in enumerate(ds.nodatavals[j - 1] for j in indexes):
        if nd is not None:  # compared in float64, whatever the values' float type
            raw[i][np.equal(raw[i], np.float64(nd))] = np.nan
    return raw


def _decimated_sample(ds: Any, indexes: list[int], long_side: int = 256) -> np.ndarray:
    f = max(1.0, max(ds.width, ds.height) / long_side)
    shape = (len(indexes), max(1, int(ds.height / f)), max(1, int(ds.width / f)))
    raw = ds.read(indexes, out_shape=shape, resampling=Resampling.nearest)
    return _nodata_to_nan(_floating(raw), ds, indexes)

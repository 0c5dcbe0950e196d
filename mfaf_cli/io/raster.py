"""Georeferenced outputs of predict: label, probability and confidence GeoTIFFs, written atomically.

Rows arrive from :class:`~mfaf_cli.stitch.merger.StreamingMerger` band by band. Each writer
buffers one stripe of full GeoTIFF blocks (512 rows by default) and writes it in one call, so
every compressed block is written exactly once: letting GDAL flush partial blocks and rewrite
them later would append a second copy of each block to the file.

Outputs are written to hidden temp files next to their targets (unique per process, so
``xargs -P`` runs into one folder are safe) and renamed into place only when everything
succeeded; on any error, Ctrl-C or SystemExit the temp files are removed. ``--cog`` converts
the finished tiled GeoTIFF with GDAL's COG driver (overviews by mode for labels, average for
probabilities) before the rename.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from mfaf_cli.errors import OutputExistsError, OutputPathError, OutputWriteError, UsageError
from mfaf_cli.metadata import NODATA_LABEL, ClassInfo, ModelMeta
from mfaf_cli.scratch import scratch
from mfaf_cli.stitch.rows import PROB_NODATA_U8 as PROB_NODATA_U8
from mfaf_cli.stitch.rows import PROB_SCALE as PROB_SCALE
from mfaf_cli.stitch.rows import FinishedRows, RowNeeds
from mfaf_cli.stitch.rows import ProbDtype as ProbDtype

log = logging.getLogger("mfaf")

PathLike = str | os.PathLike[str]

#: Compression codecs accepted for ``--compress`` (GDAL names, case-insensitive).
COMPRESSIONS = ("deflate", "zstd", "lzw", "none")
BLOCK_SIZE = 512
#: Sidecars GDAL may create next to a dataset (the COG driver's own temporaries included);
#: removed with a failed temp file.
_SIDECARS = (".aux.xml", ".ovr", ".msk", ".ovr.tmp", ".msk.ovr.tmp", ".msk.tmp")
#: GTiff creation options the COG driver spells differently or does not take.
_COG_RENAME = {"BLOCKXSIZE": "BLOCKSIZE", "ZLEVEL": "LEVEL", "ZSTD_LEVEL": "LEVEL"}
_COG_DROP = {"TILED", "BLOCKYSIZE", "INTERLEAVE", "PHOTOMETRIC"}


# ---- creation options --------------------------------------------------------------------
def gtiff_options(
    compress: str = "deflate", creation_options: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Creation options for a tiled output GeoTIFF; ``creation_options`` override the defaults."""
    codec = str(compress).lower()
    if codec not in COMPRESSIONS:
        raise UsageError(f"unknown compression {compress!r}; use one of {', '.join(COMPRESSIONS)}")
    opts = {
        "TILED": "YES",
        "BLOCKXSIZE": str(BLOCK_SIZE),
        "BLOCKYSIZE": str(BLOCK_SIZE),
        "COMPRESS": codec.upper(),
        "BIGTIFF": "IF_SAFER",
    }
    for key, value in (creation_options or {}).items():
        opts[str(key).upper()] = str(value)
    return opts


class _GdalComplaints(logging.Handler):
    """Collects the warnings GDAL raises (through rasterio's logger) while a probe runs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "CPLE_NotSupported" in text or "CPLE_IllegalArg" in text:
            self.messages.append(text.split(" in ", 1)[-1].strip())


def check_creation_options(creation_options: Mapping[str, Any] | None) -> None:
    """Create a small in-memory GeoTIFF with the user's ``--co`` now, so that a value GDAL
    rejects (or an option it does not know, which it only warns about) is a usage error
    before the inference rather than an ignored setting or a failure at the end."""
    if not creation_options:
        return
    from rasterio.errors import RasterioError
    from rasterio.io import MemoryFile
    from rasterio.transform import Affine

    options = gtiff_options("deflate", creation_options)
    complaints = _GdalComplaints()
    gdal_log = logging.getLogger("rasterio._env")
    gdal_log.addHandler(complaints)
    try:
        with MemoryFile() as mf, mf.open(
            driver="GTiff", width=BLOCK_SIZE, height=BLOCK_SIZE, count=1, dtype="uint8",
            crs="EPSG:4326", transform=Affine(0.1, 0.0, 0.0, 0.0, -0.1, 0.0), **options,
        ):  # fmt: skip
            pass
    except RasterioError as err:
        complaints.messages.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
    finally:
        gdal_log.removeHandler(complaints)
    if complaints.messages:
        given = " ".join(f"--co {k}={v}" for k, v in creation_options.items())
        reason = complaints.messages[0].rstrip(". ")
        raise UsageError(f"{given}: GDAL says {reason}; check the --co values")


def cog_options(gtiff: Mapping[str, str], resampling: str) -> dict[str, str]:
    """Translate GTiff creation options to the COG driver's, with overview resampling."""
    opts: dict[str, str] = {}
    for key, value in gtiff.items():
        if key in _COG_DROP:
            continue
        opts[_COG_RENAME.get(key, key)] = value
    opts["OVERVIEW_RESAMPLING"] = resampling.upper()
    opts.setdefault("OVERVIEWS", "AUTO")
    return opts


# ---- pixel conversions (pure) ------------------------------------------------------------
def argmax_max(probs: np.ndarray, reuse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: index of the most probable class (first on ties) and its probability.

    One pass over the planes gives both the label and the confidence, and is faster than
    ``np.argmax(axis=0)``, which reduces along the slowest axis. ``reuse``: both results are
    the calling thread's reused arrays (:mod:`mfaf_cli.scratch`), valid until its next call.
    """
    shape = probs.shape[1:]
    idx_dtype = np.uint8 if len(probs) <= 256 else np.int64
    if reuse:
        best = scratch("argmax.best", shape, np.float32)
        np.copyto(best, probs[0])
        idx = scratch("argmax.idx", shape, idx_dtype)
        idx.fill(0)
    else:
        best = probs[0].astype(np.float32, copy=True)
        idx = np.zeros(shape, dtype=idx_dtype)
    better = scratch("argmax.better", shape, bool)  # one mask for every plane
    for k in range(1, len(probs)):
        np.greater(probs[k], best, out=better)
        np.copyto(idx, k, where=better, casting="unsafe")
        np.maximum(best, probs[k], out=best)
    return idx, best


#: Values per :func:`count_values` call of ``np.bincount``: its int64 copy of them (128 KiB)
#: then comes from the heap, reused, not from fresh pages.
COUNT_BLOCK = 1 << 14


def count_values(values: np.ndarray, minlength: int, where: np.ndarray | None = None) -> np.ndarray:
    """``np.bincount(values[where].ravel(), minlength)`` of small non-negative ints, in blocks.

    Why: ``np.bincount`` first copies its input to int64, 8 bytes a pixel: for a band of
    finished rows that is megabytes the allocator maps and the kernel zeroes on every call.
    uint8 values that take only a few values (class indexes, labels or codes with a nodata
    value above them) are counted by a comparison per value instead (:func:`_count_few`).
    """
    if values.dtype == np.uint8 and values.size:
        few = _count_few(values, minlength, where)
        if few is not None:
            return few
    flat = values.ravel()
    mask = None if where is None else where.ravel()
    counts = np.zeros(minlength, dtype=np.int64)
    for i in range(0, flat.size, COUNT_BLOCK):
        part = flat[i : i + COUNT_BLOCK]
        if mask is not None:
            part = part[mask[i : i + COUNT_BLOCK]]
        got = np.bincount(part, minlength=minlength)
        if got.size > minlength:
            counts = np.concatenate([counts, np.zeros(got.size - minlength, np.int64)])
            minlength = got.size
        counts[: got.size] += got
    return counts


#: Values below which :func:`_count_few` counts value by value (a vectorised comparison and
#: count each, ~20x faster than ``np.bincount`` on a band of 2-class rows, measured).
FEW_VALUES = 16


def _count_few(values: np.ndarray, minlength: int, where: np.ndarray | None) -> np.ndarray | None:
    """:func:`count_values` of uint8 ``values`` that are all below :data:`FEW_VALUES` but for
    one top value (e.g. nodata 255), by one comparison per value; None for other values."""
    top = int(values.max())
    hit = scratch("count.hit", values.shape, bool)
    rest = top
    if top >= FEW_VALUES:  # the largest value below the top one
        np.not_equal(values, top, out=hit)
        rest = int(
            np.multiply(values, hit, out=scratch("count.rest", values.shape, np.uint8)).max()
        )
        if rest >= FEW_VALUES:
            return None
    counts = np.zeros(max(minlength, top + 1), dtype=np.int64)
    for v in {*range(1, rest + 1), top} - {0}:
        np.equal(values, v, out=hit)
        if where is not None:
            hit &= where
        counts[v] = np.count_nonzero(hit)
    total = values.size if where is None else np.count_nonzero(where)
    counts[0] = total - counts[1:].sum()
    nonzero = np.flatnonzero(counts)  # as long as bincount's: past the largest value counted
    return counts[: max(minlength, int(nonzero[-1]) + 1 if nonzero.size else 0)]


def ids_to_labels(
    idx: np.ndarray,
    valid: np.ndarray,
    class_ids: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Class-plane indexes -> uint8 class ids, :data:`NODATA_LABEL` where not valid (where
    ``idx`` may hold anything, e.g. the nodata value of a finished-rows index); into ``out``
    ((r, w) uint8) where given and the class ids are the indexes."""
    if class_ids is None and out is not None:
        out.fill(NODATA_LABEL)
        np.copyto(out, idx, where=valid, casting="unsafe")  # as astype(uint8) converts
        return out
    if class_ids is None:
        return np.where(valid, idx, NODATA_LABEL).astype(np.uint8, copy=False)
    labels = class_ids[np.where(valid, idx, 0)].astype(np.uint8)
    labels[~valid] = NODATA_LABEL
    return labels


def scale_probs(probs: np.ndarray, valid: np.ndarray, dtype: ProbDtype) -> np.ndarray:
    """Probabilities (C, r, W) as stored: uint8 ``floor(p*254 + 0.5)`` / 255 nodata, or
    float32 / NaN nodata."""
    if dtype == "uint8":
        tmp = np.multiply(probs, np.float32(PROB_SCALE), dtype=np.float32)
        tmp += np.float32(0.5)
        np.clip(tmp, 0.0, PROB_SCALE + 0.5, out=tmp)
        out = tmp.astype(np.uint8)
        out[:, ~valid] = PROB_NODATA_U8
    elif dtype == "float32":
        out = probs.astype(np.float32, copy=True)
        out[:, ~valid] = np.nan
    else:
        raise UsageError(f"probability dtype must be uint8 or float32, got {dtype!r}")
    return out


# ---- write failures ----------------------------------------------------------------------
#: errno values that mean the device (or the user's quota) is full.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Below this many free bytes a failed write is put down to a full device (GDAL reports a
#: full disk only as "Write failed" / "Write error at scanline N").
_NEARLY_FULL = 1 << 20


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from (GDAL's detail is in ``__cause__``)."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def device_full(folder: Path, err: BaseException, need: int = 0) -> bool:
    """Whether a failed write into ``folder`` is down to a full device: an ENOSPC/EDQUOT in
    the chain, or less free space left than the write needed (at least 1 MiB)."""
    for e in _chain(err):
        if getattr(e, "errno", None) in _FULL_ERRNOS or "no space left" in str(e).lower():
            return True
    try:
        return shutil.disk_usage(folder).free < max(_NEARLY_FULL, need)
    except OSError:
        return False


def write_failure(final: PathLike, err: BaseException, need: int = 0) -> OutputWriteError:
    """The one-line error for a failed write of ``final`` (the user's path, not the temp)."""
    final = Path(final)
    if device_full(final.absolute().parent, err, need):
        return OutputWriteError(
            f"could not write {final}: no space left on device; free some space or write "
            "to another disk (nothing was written)"
        )
    details = [str(e).strip() for e in _chain(err) if str(e).strip()]
    detail = "; ".join(d for d in details if not d.startswith("Write failed. See previous"))
    return OutputWriteError(
        f"could not write {final}: {detail or type(err).__name__} (nothing was written)"
    )


@contextlib.contextmanager
def write_errors_as(final: PathLike, need: int = 0) -> Iterator[None]:
    """Turn an OS / GDAL error raised while writing ``final`` into :func:`write_failure`."""
    from rasterio.errors import RasterioError

    try:
        yield
    except (OSError, RasterioError) as err:
        raise write_failure(final, err, need) from err


# ---- atomic outputs ----------------------------------------------------------------------
def _temp_name(final: Path, tag: str = "") -> Path:
    rand = secrets.token_hex(4)
    return final.parent / f".{final.name}.mfaf-{os.getpid()}-{rand}{tag}.tmp"


def remove_quietly(path: Path) -> None:
    """Remove a (temp) file and any GDAL sidecars; never raises."""
    for p in (path, *(Path(str(path) + s) for s in _SIDECARS)):
        with contextlib.suppress(OSError):
            p.unlink()


def check_output_path(path: PathLike, overwrite: bool) -> Path:
    """Fail early, before any work, if ``path`` cannot be written.

    Raises:
        OutputPathError: folder missing, not a folder, or not writable; or path is a folder.
        OutputExistsError: the file exists and ``overwrite`` is False.
    """
    final = Path(path).expanduser().absolute()
    folder = final.parent
    if not folder.exists():
        raise OutputPathError(
            f"output folder {folder} does not exist; create it (mkdir -p) or choose another path"
        )
    if not folder.is_dir():
        raise OutputPathError(f"output folder {folder} is not a folder; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"output folder {folder} is not writable; choose a folder you can write to"
        )
    if final.is_dir():
        raise OutputPathError(f"output {final} is a folder; give a file name such as map.tif")
    if final.exists() and not overwrite:
        raise OutputExistsError(f"output {final} exists; pass --overwrite to replace it")
    return final


@contextlib.contextmanager
def atomic_outputs(
    paths: Iterable[PathLike | None], overwrite: bool = False
) -> Iterator[list[Path | None]]:
    """Yield temp paths for ``paths`` (None stays None); rename them into place on success.

    Everything is checked before the body runs (see :func:`check_output_path`) and the temp
    files are created right away, so an unwritable folder fails fast. If the body raises
    anything (including KeyboardInterrupt/SystemExit), the temp files are removed and no
    output appears; existing outputs are left untouched.
    """
    finals: list[Path | None] = [
        None if p is None else check_output_path(p, overwrite) for p in paths
    ]
    real = [f for f in finals if f is not None]
    if len(set(real)) != len(real):
        raise UsageError("the same output path is given twice; give each output its own file")
    temps: list[Path | None] = []
    try:
        for final in finals:
            if final is None:
                temps.append(None)
                continue
            tmp = _temp_name(final)
            try:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            except OSError as err:  # permission, read-only file system, ...
                raise OutputPathError(
                    f"output folder {final.parent} is not writable ({err.strerror}); "
                    "choose a folder you can write to"
                ) from err
            temps.append(tmp)
        yield temps
        if not overwrite:  # something may have appeared while we worked
            for out in real:
                if out.exists():
                    raise OutputExistsError(f"output {out} exists; pass --overwrite to replace it")
        for dst, src in zip(finals, temps, strict=True):
            if dst is not None and src is not None:
                os.replace(src, dst)
                _move_sidecar(src, dst)
                remove_quietly(src)  # sidecars only; src itself is gone
    finally:
        for leftover in temps:
            if leftover is not None:
                remove_quietly(leftover)


# ---- class names for GIS (GDAL category names + raster attribute table) -----------------------
def category_name(c: ClassInfo) -> str:
    """A class's name for GIS legends, with its label product's code where it has one (a
    WorldCover model's id 0 reads "tree-cover (code 10)")."""
    return c.name if c.code is None else f"{c.name} (code {c.code})"


def category_sidecar_xml(meta: ModelMeta) -> str:
    """A GDAL PAM document (``<file>.aux.xml``) with band 1's category names and a thematic
    raster attribute table (Value, Name, Red, Green, Blue).

    GeoTIFF keeps category names and RATs only in this sidecar (what GDAL's own
    ``SetCategoryNames`` writes), and ``gdalinfo`` / QGIS read them from it, so a legend shows
    "water" rather than 1. Category names are indexed by pixel value; gaps are empty.
    """
    from mfaf_cli.io.xmltext import escape

    by_id = {c.id: c for c in meta.classes}
    top = max(by_id) if by_id else -1
    cats = "".join(
        f"<Category>{escape(category_name(by_id[i])) if i in by_id else ''}</Category>"
        for i in range(top + 1)
    )
    fields = [("Value", 0, 5), ("Name", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8)]
    defs = "".join(
        f'<FieldDefn index="{k}"><Name>{n}</Name><Type>{t}</Type><Usage>{u}</Usage></FieldDefn>'
        for k, (n, t, u) in enumerate(fields)
    )
    rows = "".join(
        f'<Row index="{k}"><F>{c.id}</F><F>{escape(category_name(c))}</F>'
        + "".join(f"<F>{int(v)}</F>" for v in c.color)
        + "</Row>"
        for k, c in enumerate(meta.classes)
    )
    return (
        '<PAMDataset><PAMRasterBand band="1">'
        f"<CategoryNames>{cats}</CategoryNames>"
        f'<GDALRasterAttributeTable tableType="thematic">{defs}{rows}</GDALRasterAttributeTable>'
        "</PAMRasterBand></PAMDataset>\n"
    )


def weights_tags(name: str, sha256: str | None) -> dict[str, str]:
    """Tags that say which weights made a map (whether they were trained is the label
    writer's ``MODEL_WEIGHTS`` tag, from the model record)."""
    return {"WEIGHTS": name, "WEIGHTS_SHA256": sha256 or "unknown"}


def _move_sidecar(tmp: Path, final: Path) -> None:
    """A raster's ``.aux.xml`` travels with it; a stale one of a replaced output goes."""
    src, dst = Path(str(tmp) + ".aux.xml"), Path(str(final) + ".aux.xml")
    if src.exists():
        os.replace(src, dst)
    else:
        with contextlib.suppress(OSError):
            dst.unlink()


# ---- writers -----------------------------------------------------------------------------
class GeoTiffWriter:
    """A GeoTIFF on the grid, filled top to bottom in whole block stripes.

    ``grid`` is anything with ``crs``, ``transform``, ``width``, ``height``
    (:class:`mfaf_cli.coreg.Grid`).
    """

    def __init__(
        self,
        path: PathLike,
        grid: Any,
        *,
        count: int,
        dtype: str,
        nodata: float | None,
        options: Mapping[str, str],
    ) -> None:
        import rasterio

        self.path = Path(path)
        self.width, self.height = int(grid.width), int(grid.height)
        self.count = count
        self.options = dict(options)
        self._ds = rasterio.open(
            self.path,
            "w",
            driver="GTiff",
            width=self.width,
            height=self.height,
            count=count,
            dtype=dtype,
            crs=grid.crs,
            transform=grid.transform,
            nodata=nodata,
            **self.options,
        )
        self._stripe = min(int(self._ds.block_shapes[0][0]), self.height)
        self._cols = (0, self.width)  # the columns the buffer holds (one panel at a time)
        self._buf = np.empty((count, self._stripe, self.width), dtype=dtype)
        self._buf_row0 = 0  # first raster row held in the buffer
        self._filled = 0  # rows of the buffer filled
        self.pixels_written = 0

    @property
    def dataset(self) -> Any:
        return self._ds

    @property
    def buffer_bytes(self) -> int:
        """Bytes of one buffered stripe: what a single write needs on disk (uncompressed)."""
        return int(self._buf.nbytes)

    def write_rows(self, row0: int, data: np.ndarray, col0: int = 0) -> None:
        """Append rows ``row0 .. row0 + r`` of columns ``col0 .. col0 + w`` (``data``
        (count, r, w)). Rows of one column range come in order; a new range (the next column
        panel) flushes the last one and starts over. Whole-width rows are the usual case."""
        cols = (col0, col0 + data.shape[2])
        if data.shape[0] != self.count or col0 < 0 or cols[1] > self.width:
            raise ValueError(
                f"rows of shape {data.shape} at column {col0} for a {self.count}-band "
                f"{self.width}-wide raster"
            )
        if cols != self._cols:
            self._flush()
            self._cols, self._buf_row0 = cols, row0
            self._buf = np.empty((self.count, self._stripe, cols[1] - col0), self._buf.dtype)
        if row0 != self._buf_row0 + self._filled:
            raise ValueError(
                f"rows out of order: got {row0}, expected {self._buf_row0 + self._filled}"
            )
        if row0 + data.shape[1] > self.height:
            raise ValueError(
                f"rows {row0}..{row0 + data.shape[1]} past raster height {self.height}"
            )
        done = 0
        while done < data.shape[1]:
            n = min(data.shape[1] - done, self._buf.shape[1] - self._filled)
            self._buf[:, self._filled : self._filled + n] = data[:, done : done + n]
            self._filled += n
            done += n
            if self._filled == self._buf.shape[1] or self._buf_row0 + self._filled == self.height:
                self._flush()

    def _flush(self) -> None:
        from rasterio.windows import Window as RioWindow

        if self._filled:
            c0, c1 = self._cols
            window = RioWindow(c0, self._buf_row0, c1 - c0, self._filled)
            self._ds.write(self._buf[:, : self._filled], window=window)
            self.pixels_written += self._filled * (c1 - c0)
            self._buf_row0 += self._filled
            self._filled = 0

    def close(self) -> None:
        """Flush and close; refuse to finish a raster whose rows did not all arrive."""
        if self._ds.closed:
            return
        self._flush()
        self._ds.close()
        if self.pixels_written != self.height * self.width:
            raise RuntimeError(
                f"{self.path}: {self.pixels_written} of {self.height * self.width} pixels written"
            )

    def abort(self) -> None:
        """Close without flushing or checking (the file is about to be deleted)."""
        with contextlib.suppress(Exception):
            if not self._ds.closed:
                self._ds.close()


def weights_status(meta: ModelMeta) -> str:
    """The ``MODEL_WEIGHTS`` tag: a map made with random weights must say so in the file too."""
    return "TRAINED" if meta.trained else "UNTRAINED (random weights: the map is not meaningful)"


class LabelWriter(GeoTiffWriter):
    """uint8 class ids, nodata 255, GDAL colour table and class names from the model metadata."""

    overview_resampling = "MODE"

    def __init__(
        self,
        path: PathLike,
        grid: Any,
        meta: ModelMeta,
        options: Mapping[str, str],
        tags: Mapping[str, str] | None = None,
    ):
        super().__init__(path, grid, count=1, dtype="uint8", nodata=NODATA_LABEL, options=options)
        self.meta = meta
        ids = np.array([c.id for c in meta.classes], dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= NODATA_LABEL):
            raise UsageError(f"class ids must be in 0..254 to write a uint8 label map, got {ids}")
        self._ids = None if np.array_equal(ids, np.arange(ids.size)) else ids
        #: Pixels written per label value (index 255 = nodata), for summaries.
        self.counts = np.zeros(256, dtype=np.int64)
        ds = self.dataset
        ds.set_band_description(1, "class")
        ds.write_colormap(1, meta.colormap())
        names = {str(c.id): c.name for c in meta.classes}
        ds.update_tags(
            CLASS_NAMES=json.dumps([c.name for c in meta.classes]),
            CLASS_IDS=json.dumps([c.id for c in meta.classes]),
            MODEL=meta.arch,
            MODEL_WEIGHTS=weights_status(meta),
            **{f"CLASS_{k}": v for k, v in names.items()},
            **dict(tags or {}),
        )
        ds.update_tags(1, **{f"CLASS_{k}": v for k, v in names.items()})

    def write(self, row0: int, probs: np.ndarray, valid: np.ndarray, col0: int = 0) -> None:
        self.write_index(row0, argmax_max(probs)[0], valid, col0)

    def write_index(self, row0: int, idx: np.ndarray, valid: np.ndarray, col0: int = 0) -> None:
        """Write rows given the arg-max class-plane index (r, w)."""
        reused = scratch("labels", idx.shape, np.uint8)  # copied into the stripe below
        labels = ids_to_labels(idx, valid, self._ids, out=reused)
        self.counts += count_values(labels, 256)
        self.write_rows(row0, labels[None], col0)


class ProbabilityWriter(GeoTiffWriter):
    """One band per class (described by class name): uint8 0..254 (255 nodata) or float32/NaN."""

    overview_resampling = "AVERAGE"

    def __init__(
        self,
        path: PathLike,
        grid: Any,
        meta: ModelMeta,
        options: Mapping[str, str],
        dtype: ProbDtype = "uint8",
    ):
        nodata = PROB_NODATA_U8 if dtype == "uint8" else float("nan")
        if dtype not in ("uint8", "float32"):
            raise UsageError(f"probability dtype must be uint8 or float32, got {dtype!r}")
        super().__init__(
            path, grid, count=meta.num_classes, dtype=dtype, nodata=nodata, options=options
        )
        self.prob_dtype: ProbDtype = dtype
        ds = self.dataset
        for i, c in enumerate(meta.classes, start=1):
            ds.set_band_description(i, c.name)
        if dtype == "uint8":
            ds.scales = (1.0 / PROB_SCALE,) * meta.num_classes
            ds.offsets = (0.0,) * meta.num_classes
        ds.update_tags(
            CLASS_NAMES=json.dumps(meta.class_names),
            PROBABILITY_SCALE="1/254" if dtype == "uint8" else "1",
            MODEL=meta.arch,
            MODEL_WEIGHTS=weights_status(meta),
        )

    def write(self, row0: int, probs: np.ndarray, valid: np.ndarray, col0: int = 0) -> None:
        self.write_rows(row0, scale_probs(probs, valid, self.prob_dtype), col0)


class ConfidenceWriter(GeoTiffWriter):
    """Maximum class probability per pixel, stored like probabilities."""

    overview_resampling = "AVERAGE"

    def __init__(
        self,
        path: PathLike,
        grid: Any,
        options: Mapping[str, str],
        dtype: ProbDtype = "uint8",
        kind: str = "top",
    ):
        if dtype not in ("uint8", "float32"):
            raise UsageError(f"probability dtype must be uint8 or float32, got {dtype!r}")
        nodata = PROB_NODATA_U8 if dtype == "uint8" else float("nan")
        super().__init__(path, grid, count=1, dtype=dtype, nodata=nodata, options=options)
        self.prob_dtype: ProbDtype = dtype
        self.kind = kind  # "top": max probability; "entropy": normalised entropy (0..1)
        self.dataset.set_band_description(
            1, "confidence" if kind == "top" else "normalised entropy"
        )
        if dtype == "uint8":
            self.dataset.scales = (1.0 / PROB_SCALE,)
            self.dataset.offsets = (0.0,)

    def write(self, row0: int, probs: np.ndarray, valid: np.ndarray, col0: int = 0) -> None:
        self.write_max(row0, self.plane(probs, argmax_max(probs)[1]), valid, col0)

    def plane(self, probs: np.ndarray, best: np.ndarray) -> np.ndarray:
        """The stored quantity: ``best`` (max probability) or the normalised entropy."""
        if self.kind == "top":
            return best
        from mfaf_cli.scores.calibration import normalised_entropy

        return normalised_entropy(probs)

    def write_max(self, row0: int, best: np.ndarray, valid: np.ndarray, col0: int = 0) -> None:
        """Write rows given the maximum probability (r, w)."""
        self.write_rows(row0, scale_probs(best[None], valid, self.prob_dtype), col0)


class ExclusionWriter(GeoTiffWriter):
    """Exclusion mask: uint8 reason codes (0 ok, 1 outside the training range, 2... one per
    rule, 255 nodata), named by band-1 tags and GDAL category names (see
    :mod:`mfaf_cli.applicability`)."""

    overview_resampling = "MODE"

    def __init__(
        self, path: PathLike, grid: Any, options: Mapping[str, str], reasons: Sequence[str]
    ):
        super().__init__(path, grid, count=1, dtype="uint8", nodata=NODATA_LABEL, options=options)
        self.reasons = list(reasons)
        self.dataset.set_band_description(1, "exclusion reason")
        names = {f"REASON_{k}": v for k, v in enumerate(self.reasons)}
        self.dataset.update_tags(REASONS=json.dumps(self.reasons), **names)
        self.dataset.update_tags(1, **names)

    def sidecar_xml(self) -> str:
        """Category names of the codes (``gdalinfo`` / QGIS legends)."""
        from mfaf_cli.io.xmltext import escape

        cats = "".join(f"<Category>{escape(n)}</Category>" for n in self.reasons)
        return (
            '<PAMDataset><PAMRasterBand band="1">'
            f"<CategoryNames>{cats}</CategoryNames></PAMRasterBand></PAMDataset>\n"
        )


class SourceWriter(GeoTiffWriter):
    """Source map: uint8 codes of the model that made each pixel (0 none, 1 fusion, 2...
    a fallback; see :mod:`mfaf_cli.pipeline.fallback`), named by tags and category names."""

    overview_resampling = "MODE"

    def __init__(self, path: PathLike, grid: Any, options: Mapping[str, str], names: Sequence[str]):
        super().__init__(path, grid, count=1, dtype="uint8", nodata=None, options=options)
        self.names = list(names)
        self.dataset.set_band_description(1, "source model")
        tags = {f"SOURCE_{k}": v for k, v in enumerate(self.names)}
        self.dataset.update_tags(SOURCES=json.dumps(self.names), **tags)
        self.dataset.update_tags(1, **tags)

    def sidecar_xml(self) -> str:
        from mfaf_cli.io.xmltext import escape

        cats = "".join(f"<Category>{escape(n)}</Category>" for n in self.names)
        return (
            '<PAMDataset><PAMRasterBand band="1">'
            f"<CategoryNames>{cats}</CategoryNames></PAMRasterBand></PAMDataset>\n"
        )


def to_cog(src: Path, options: Mapping[str, str], resampling: str) -> None:
    """Replace the finished tiled GeoTIFF ``src`` by a COG with internal overviews."""
    from rasterio.shutil import copy as rio_copy

    tmp = _temp_name(src, ".cog")
    try:
        rio_copy(str(src), str(tmp), driver="COG", **cog_options(options, resampling))
        os.replace(tmp, src)
    finally:
        remove_quietly(tmp)


class OutputSet:
    """All outputs of one predict run: ``with OutputSet(...) as out: merger sink = out``.

    Opens the label (and optional probability / confidence) GeoTIFFs on temp files; calling
    the object with ``(row0, probs, valid)`` writes those rows to every output. On a clean
    exit the files are closed, converted to COG if asked, and renamed into place; on any
    exception nothing is left behind.
    """

    #: Rows handed to :meth:`__call__` are copied into the writers' stripes, nothing of them
    #: kept: a merger may lend its reused row arrays (``StreamingMerger(lend_rows=...)``).
    copies_rows = True

    def __init__(
        self,
        grid: Any,
        meta: ModelMeta,
        label: PathLike | None,
        probabilities: PathLike | None = None,
        confidence: PathLike | None = None,
        *,
        compress: str = "deflate",
        creation_options: Mapping[str, Any] | None = None,
        probability_dtype: ProbDtype = "uint8",
        cog: bool = False,
        overwrite: bool = False,
        tags: Mapping[str, str] | None = None,
        confidence_kind: str = "top",
        exclusion: PathLike | None = None,
        excluder: Callable[[int, int, np.ndarray], np.ndarray] | None = None,
        mask_excluded: bool = False,
        reasons: Sequence[str] | None = None,
        source: PathLike | None = None,
        sourcer: Callable[[int, int, np.ndarray], np.ndarray] | None = None,
    ) -> None:
        if confidence_kind not in ("top", "entropy"):
            raise UsageError(f"confidence kind must be top or entropy, got {confidence_kind!r}")
        self.confidence_kind = confidence_kind
        # the device merger computes the max probability only: entropy rows come from the host
        self.device_rows = confidence is None or confidence_kind == "top"
        if probability_dtype not in ("uint8", "float32"):
            raise UsageError(
                f"probability dtype must be uint8 or float32, got {probability_dtype!r}"
            )
        self.grid, self.meta = grid, meta
        self.options = gtiff_options(compress, creation_options)
        self._user_options = dict(creation_options or {})
        self.probability_dtype = probability_dtype
        self.cog = cog
        self.overwrite = overwrite
        self.tags = dict(tags or {})  # extra label tags (the weights used)
        self.paths: dict[str, Path | None] = {
            "label": None if label is None else Path(label),
            "probabilities": None if probabilities is None else Path(probabilities),
            "confidence": None if confidence is None else Path(confidence),
            "exclusion": None if exclusion is None else Path(exclusion),
            "source": None if source is None else Path(source),
        }
        #: ``sourcer(row0, col0, valid)`` -> source codes (mfaf_cli.pipeline.fallback), counted
        #: in ``source_counts`` and written to ``source`` when given
        self.sourcer = sourcer
        self.source_counts = np.zeros(256, dtype=np.int64)
        #: ``excluder(row0, col0, valid)`` -> reason codes (mfaf_cli.pipeline.exclusion);
        #: ``mask_excluded`` writes excluded pixels as nodata everywhere.
        self.excluder, self.mask_excluded = excluder, mask_excluded
        #: names of the reason codes (default: the excluder's; given where counts are summed
        #: from elsewhere, e.g. the assembly of a split scene)
        self.reasons: list[str] = list(reasons or getattr(excluder, "reasons", None) or ())
        self.exclusion_counts = np.zeros(256, dtype=np.int64)  # pixels per reason code
        self.input_valid_pixels = 0  # valid input pixels seen (before any masking)
        self.writers: dict[
            str, LabelWriter | ProbabilityWriter | ConfidenceWriter | ExclusionWriter | SourceWriter
        ] = {}
        self._atomic: contextlib.AbstractContextManager[list[Path | None]] | None = None
        #: Valid pixels per class plane written so far, and all pixels seen (for summaries).
        self.class_counts = np.zeros(meta.num_classes, dtype=np.int64)
        self.pixels = 0

    def __enter__(self) -> OutputSet:
        self._atomic = atomic_outputs(list(self.paths.values()), self.overwrite)
        temps = dict(zip(self.paths, self._atomic.__enter__(), strict=True))
        try:
            if temps["label"] is not None:
                self.writers["label"] = LabelWriter(
                    temps["label"], self.grid, self.meta, self.options, self.tags
                )
            if temps["probabilities"] is not None:
                self.writers["probabilities"] = ProbabilityWriter(
                    temps["probabilities"],
                    self.grid,
                    self.meta,
                    self.options,
                    self.probability_dtype,
                )
            if temps["confidence"] is not None:
                self.writers["confidence"] = ConfidenceWriter(
                    temps["confidence"], self.grid, self.options, self.probability_dtype,
                    self.confidence_kind,
                )  # fmt: skip
            if temps["exclusion"] is not None:
                self.writers["exclusion"] = ExclusionWriter(
                    temps["exclusion"], self.grid, self.options, self.reasons
                )
            if temps["source"] is not None:
                names = getattr(self.sourcer, "names", ())
                self.writers["source"] = SourceWriter(
                    temps["source"], self.grid, self.options, names
                )
        except BaseException as err:
            self._abort()
            self._atomic.__exit__(type(err), err, err.__traceback__)
            from rasterio.errors import RasterioError

            if not isinstance(err, (OSError, RasterioError)):
                raise
            key = next((k for k, v in temps.items() if v and k not in self.writers), "label")
            final = self.paths[key] or Path(".")
            if self._user_options and not device_full(final.absolute().parent, err):
                raise UsageError(
                    f"GDAL could not create the outputs with creation options "
                    f"{self._user_options} ({err}); check the --co values"
                ) from err
            raise write_failure(final, err) from err
        return self

    def __call__(self, row0: int, probs: np.ndarray, valid: np.ndarray, col0: int = 0) -> None:
        """Merger sink: write finished rows ``probs`` (K, r, w), ``valid`` (r, w) of columns
        ``col0 .. col0 + w`` (the whole width, or one column panel) everywhere."""
        valid = self._exclude(row0, col0, valid)
        # one pass, shared by the counts, label and confidence, into this thread's reused
        # arrays (the writers copy what they keep)
        idx, best = argmax_max(probs, reuse=True)
        self.pixels += valid.size
        self.class_counts += count_values(idx, len(self.class_counts), where=valid)
        for key, w in self.writers.items():
            with self._write_errors(key):
                if isinstance(w, ProbabilityWriter):
                    w.write(row0, probs, valid, col0)
                elif isinstance(w, LabelWriter):
                    w.write_index(row0, idx, valid, col0)
                elif isinstance(w, ConfidenceWriter):
                    w.write_max(row0, w.plane(probs, best), valid, col0)

    write = __call__

    def _exclude(self, row0: int, col0: int, valid: np.ndarray) -> np.ndarray:
        """Reason codes of these rows: counted, written to the exclusion mask, and (with
        ``mask_excluded``) taken out of ``valid``; ``valid`` as given without an excluder."""
        self.input_valid_pixels += int(np.count_nonzero(valid))
        self._source(row0, col0, valid)
        if self.excluder is None:
            return valid
        codes = self.excluder(row0, col0, valid)
        self.exclusion_counts += count_values(codes, 256)
        w = self.writers.get("exclusion")
        if w is not None:
            with self._write_errors("exclusion"):
                w.write_rows(row0, codes[None], col0)
        return valid & (codes == 0) if self.mask_excluded else valid

    def _source(self, row0: int, col0: int, valid: np.ndarray) -> None:
        """Source codes of these rows: counted and written to the source map."""
        if self.sourcer is None:
            return
        codes = self.sourcer(row0, col0, valid)
        self.source_counts += count_values(codes, 256)
        w = self.writers.get("source")
        if w is not None:
            with self._write_errors("source"):
                w.write_rows(row0, codes[None], col0)

    def row_needs(self) -> RowNeeds:
        """The planes :meth:`write_finished` needs besides the index (for a device merger)."""
        dtype = self.probability_dtype
        return RowNeeds(
            probabilities=dtype if self.paths["probabilities"] is not None else None,
            confidence=dtype if self.paths["confidence"] is not None else None,
        )

    def write_finished(self, rows: FinishedRows) -> None:
        """Write rows whose index and stored planes were computed already (asked for through
        :meth:`row_needs`), e.g. on the GPU; same files as :meth:`__call__` writes."""
        idx, valid = rows.index, self._exclude(rows.row0, rows.col0, rows.valid)
        if valid is not rows.valid:  # masked: the device's planes get nodata there too
            gone = rows.valid & ~valid
            for plane in (rows.probabilities, rows.confidence):
                if plane is not None:
                    plane[:, gone] = PROB_NODATA_U8 if plane.dtype == np.uint8 else np.nan
        self.pixels += valid.size
        self.class_counts += count_values(idx, len(self.class_counts), where=valid)
        for key, w in self.writers.items():
            data = {"probabilities": rows.probabilities, "confidence": rows.confidence}.get(key)
            with self._write_errors(key):
                if isinstance(w, ExclusionWriter | SourceWriter):
                    continue  # written by _exclude
                if isinstance(w, LabelWriter):
                    w.write_index(rows.row0, idx, valid, rows.col0)
                elif data is None:
                    raise ValueError(f"finished rows carry no {key} planes (see row_needs)")
                else:
                    w.write_rows(rows.row0, data, rows.col0)

    @property
    def label_counts(self) -> np.ndarray | None:
        """Pixels per label value written so far (index 255 = nodata), or None."""
        w = self.writers.get("label")
        return w.counts if isinstance(w, LabelWriter) else None

    def exclusion_summary(self) -> dict[str, Any] | None:
        """Excluded fraction of valid pixels, per reason (None without an excluder)."""
        if not self.reasons:
            return None
        from mfaf_cli.applicability import summary  # a pure room below io

        out = summary(self.exclusion_counts, self.reasons)
        alternatives = getattr(self.excluder, "alternatives", None)
        return out | {"rules": alternatives} if alternatives else out

    def _tag_exclusion(self) -> None:
        """The exclusion summary as tags of every output (``EXCLUDED_FRACTION``, per reason)."""
        s = self.exclusion_summary()
        if s is None:
            return
        tags = {"EXCLUDED_FRACTION": f"{s['excluded']:.6f}", "MASKED_EXCLUDED": str(
            self.mask_excluded).upper()} | {
            f"EXCLUDED_{k.upper().replace('-', '_')}": f"{v:.6f}" for k, v in s["reasons"].items()
        }  # fmt: skip
        for w in self.writers.values():
            w.dataset.update_tags(**tags)

    def _abort(self) -> None:
        for w in self.writers.values():
            w.abort()

    def _write_errors(self, key: str) -> contextlib.AbstractContextManager[None]:
        """OS / GDAL failures while writing output ``key`` as one line naming its file."""
        w = self.writers[key]
        return write_errors_as(self.paths[key] or w.path, need=w.buffer_bytes)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        assert self._atomic is not None, "OutputSet used without 'with'"
        if exc is None:
            try:
                self._tag_exclusion()
                for key, w in self.writers.items():
                    with self._write_errors(key):
                        w.close()
                if self.cog:
                    for key, w in self.writers.items():
                        with self._write_errors(key):
                            to_cog(w.path, w.options, w.overview_resampling)
                label = self.writers.get("label")
                if label is not None:
                    Path(str(label.path) + ".aux.xml").write_text(
                        category_sidecar_xml(self.meta), encoding="utf-8"
                    )
                for key in ("exclusion", "source"):
                    mask = self.writers.get(key)
                    if isinstance(mask, ExclusionWriter | SourceWriter):
                        Path(str(mask.path) + ".aux.xml").write_text(
                            mask.sidecar_xml(), encoding="utf-8"
                        )
            except BaseException as err:
                self._abort()
                self._atomic.__exit__(type(err), err, err.__traceback__)
                raise
            self._atomic.__exit__(None, None, None)
            return False
        self._abort()
        self._atomic.__exit__(exc_type, exc, tb)
        return False

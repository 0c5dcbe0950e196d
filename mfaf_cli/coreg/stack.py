"""Several files per modality, stacked on the fly: ``--optical B12.tif --optical B08.tif ...``
or a Sentinel-2 SAFE / L2A folder (``--optical S2B_MSIL2A_....SAFE``).

Sentinel-2 comes as one file per band at 10 / 20 / 60 m. The files of one modality become one
virtual multi-band raster: a GDAL VRT whose bands point at the files, on the finest input grid
(or the one the user names), resampled by GDAL window by window as the pipeline reads it. No
scene is ever loaded whole; the VRT is a few hundred bytes of XML in a temporary folder that
lives as long as the run. Band names come from Sentinel-2 file names (``..._B12_20m.jp2`` →
``B12``), else from the file's band description, else from the file name.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mfaf_cli.errors import CRSError, InputError, UsageError
from mfaf_cli.io.remote import shown_path
from mfaf_cli.io.xmltext import escape, quoteattr
from mfaf_cli.metadata import MEANINGS

R = TypeVar("R")

#: ``..._B8A``, ``..._B02_10m``, ``T29SND_20200101T112431_B12_20m`` (a file stem's band token).
_S2_TOKEN = re.compile(r"(?:^|_)B(0?[1-9]|1[0-2]|8A)(?:_(\d+)m)?$", re.IGNORECASE)
#: Sentinel-2 band order (L1C; L2A lacks B10).
S2_ORDER = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
#: Band meanings used in model records → the Sentinel-2 band that carries them. ``swir`` is
#: B12 (2.19 µm), the band the shipped models were trained and tested with.
S2_MEANINGS: dict[str, str] = {
    "coastal": "B1", "blue": "B2", "green": "B3", "red": "B4", "rededge1": "B5",
    "rededge2": "B6", "rededge3": "B7", "nir": "B8", "nir08": "B8A", "narrow_nir": "B8A",
    "water_vapour": "B9", "cirrus": "B10", "swir1": "B11", "swir16": "B11", "swir": "B12",
    "swir2": "B12", "swir22": "B12",
}  # fmt: skip
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")
_GDAL_TYPES = {
    "uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
    "int32": "Int32", "float32": "Float32", "float64": "Float64",
}  # fmt: skip


# ---- pure helpers (tested exactly) ----------------------------------------------------------
def s2_band_of(name: str) -> tuple[str, int | None] | None:
    """``"T29SND_..._B08_10m"`` → ``("B8", 10)``; ``"x_B8A"`` → ``("B8A", None)``; else None."""
    m = _S2_TOKEN.search(Path(name).stem if "." in name else name)
    if m is None:
        return None
    band = m.group(1).upper().lstrip("0")
    return f"B{band}", (int(m.group(2)) if m.group(2) else None)


#: A polarisation token in a SAR file name: BigEarthNet ``..._VV.tif``, Sentinel-1 SAFE
#: ``s1a-iw-grd-vh-20170613t...-001.tiff``, STAC asset ``vv.tif``.
_POL_TOKEN = re.compile(r"(?:^|[_\-])(vv|vh|hh|hv)(?=$|[_\-])", re.IGNORECASE)


def band_of_file_name(name: str) -> str | None:
    """The band a one-band file's name says it holds: a Sentinel-2 token (``..._B08`` → ``B8``)
    or exactly one polarisation token (``..._VH`` / ``-vh-`` / ``vv`` → ``VH`` / ``VV``)."""
    stem = Path(name).name
    for suffix in (*RASTER_SUFFIXES, ".vrt"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    hit = s2_band_of(stem)
    if hit is not None:
        return hit[0]
    pols = {p.upper() for p in _POL_TOKEN.findall(stem)}
    return pols.pop() if len(pols) == 1 else None


def canonical_band(name: str) -> str:
    """One spelling per Sentinel-2 band: ``B08``/``b8``/``nir`` → ``B8``; others unchanged."""
    text = name.strip()
    meaning = S2_MEANINGS.get(text.lower())
    if meaning is not None:
        return meaning
    hit = s2_band_of(text) if re.fullmatch(r"[Bb]\d{1,2}[Aa]?", text) else None
    return hit[0] if hit else text


@dataclass(frozen=True)
class FileInfo:
    """What the VRT needs to know about one input file."""

    path: str
    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]  # a, b, c, d, e, f
    width: int
    height: int
    dtypes: tuple[str, ...]
    nodata: tuple[float | None, ...]
    names: tuple[str, ...]

    @property
    def res(self) -> tuple[float, float]:
        return abs(self.transform[0]), abs(self.transform[4])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        a, _, c, _, e, f = self.transform
        return c, f + e * self.height, c + a * self.width, f


def pick_grid(infos: Sequence[FileInfo], choice: str | None) -> int:
    """Index of the file whose grid the stack takes: ``finest`` (default), ``coarsest``, a
    1-based position among the files, or a file name/path."""
    areas = [i.res[0] * i.res[1] for i in infos]
    if choice in (None, "", "finest"):
        return int(np.argmin(areas))
    if choice == "coarsest":
        return int(np.argmax(areas))
    if str(choice).isdigit() and 1 <= int(str(choice)) <= len(infos):
        return int(str(choice)) - 1
    for k, info in enumerate(infos):
        if Path(info.path).name == Path(str(choice)).name:
            return k
    raise UsageError(
        f"--stack-grid {choice!r}: use finest, coarsest, 1..{len(infos)} or one of the file "
        f"names ({', '.join(Path(i.path).name for i in infos)})"
    )


def _dst_rect(info: FileInfo, grid: FileInfo) -> tuple[float, float, float, float]:
    """Where ``info`` lands on ``grid``, in grid pixels (xoff, yoff, xsize, ysize)."""
    left, bottom, right, top = info.bounds
    g_left, _, _, g_top = grid.bounds
    gx, gy = grid.res
    return (left - g_left) / gx, (g_top - top) / gy, (right - left) / gx, (top - bottom) / gy


def stack_vrt_xml(infos: Sequence[FileInfo], grid_index: int) -> str:
    """A VRT stacking every band of every file, in order, on ``infos[grid_index]``'s grid.

    Coarser files are upsampled bilinearly, finer ones averaged (GDAL resamples on read).
    All files must share the CRS and be north-up (Sentinel-2 band files always are).
    """
    grid = infos[grid_index]
    for info in infos:
        if info.crs_wkt != grid.crs_wkt:
            raise CRSError(
                f"{Path(info.path).name} is in another CRS than {Path(grid.path).name}; the "
                "files of one modality must share a CRS (warp them with gdalwarp first)"
            )
        if info.transform[1] or info.transform[3]:
            raise InputError(f"{Path(info.path).name} has a rotated grid; it cannot be stacked")
    dtype = np.result_type(*[np.dtype(d) for i in infos for d in i.dtypes]).name
    if dtype not in _GDAL_TYPES:
        dtype = "float64"
    a, b, c, d, e, f = grid.transform
    parts = [
        f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">',
        f"<SRS>{escape(grid.crs_wkt)}</SRS>",
        f"<GeoTransform>{c!r}, {a!r}, {b!r}, {f!r}, {d!r}, {e!r}</GeoTransform>",
    ]
    band = 0
    for info in infos:
        x, y, w, h = _dst_rect(info, grid)
        coarser = info.res[0] * info.res[1] > grid.res[0] * grid.res[1] * 1.0001
        finer = info.res[0] * info.res[1] * 1.0001 < grid.res[0] * grid.res[1]
        resampling = "bilinear" if coarser else "average" if finer else "nearest"
        for k, name in enumerate(info.names):
            band += 1
            nd = info.nodata[k]
            nd_xml = "" if nd is None else f"<NoDataValue>{_num(nd)}</NoDataValue>"
            src_nd = "" if nd is None else f"<NODATA>{_num(nd)}</NODATA>"
            parts.append(
                f'<VRTRasterBand dataType="{_GDAL_TYPES[dtype]}" band="{band}">'
                f"<Description>{escape(name)}</Description>{nd_xml}"
                f'<ComplexSource resampling="{resampling}">'
                f'<SourceFilename relativeToVRT="0">{escape(info.path)}</SourceFilename>'
                f"<SourceBand>{k + 1}</SourceBand>"
                f'<SrcRect xOff="0" yOff="0" xSize="{info.width}" ySize="{info.height}"/>'
                f"<DstRect xOff={quoteattr(repr(x))} yOff={quoteattr(repr(y))} "
                f"xSize={quoteattr(repr(w))} ySize={quoteattr(repr(h))}/>{src_nd}"
                "</ComplexSource></VRTRasterBand>"
            )
    parts.append("</VRTDataset>")
    return "\n".join(parts) + "\n"


def _num(v: float) -> str:
    if math.isnan(v):
        return "nan"
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def band_names(path: str, descriptions: Sequence[str | None]) -> tuple[str, ...]:
    """Names of a file's bands: a Sentinel-2 token in a one-band file's name, else the band
    descriptions, else the file name (with ``:k`` for multi-band files)."""
    stem = Path(path).stem
    if len(descriptions) == 1:
        hit = s2_band_of(stem)
        if hit is not None:
            return (hit[0],)
        pol = band_of_file_name(path)
        if pol is not None and not descriptions[0]:
            return (pol,)
        return (canonical_band(descriptions[0]) if descriptions[0] else stem,)
    return tuple(canonical_band(d) if d else f"{stem}:{k + 1}" for k, d in enumerate(descriptions))


# ---- Sentinel-2 folders -----------------------------------------------------------------------
def find_s2_bands(folder: Path) -> dict[str, Path]:
    """Band → file in a Sentinel-2 SAFE / L2A / BigEarthNet folder (GeoTIFF or JP2), the
    finest resolution where a band comes at several (L2A's R10m/R20m/R60m). Quality masks
    (``MSK_*``, ``QI_DATA``) are skipped."""
    best: dict[str, tuple[float, Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in RASTER_SUFFIXES or not p.is_file():
            continue
        if p.name.upper().startswith("MSK_") or "QI_DATA" in p.parts:
            continue
        hit = s2_band_of(p.stem)
        if hit is None:
            continue
        band, res = hit
        rank = float(res) if res is not None else _file_res(p)
        if band not in best or rank < best[band][0]:
            best[band] = (rank, p)
    return {b: best[b][1] for b in sorted(best, key=_s2_rank)}


def _s2_rank(band: str) -> int:
    return S2_ORDER.index(band) if band in S2_ORDER else len(S2_ORDER)


def _file_res(path: Path) -> float:
    import rasterio

    with rasterio.open(path) as ds:
        return float(abs(ds.res[0]))


def pick_s2_files(folder: Path, wanted: Sequence[int | str] | None, modality: str) -> list[Path]:
    """The files of ``wanted`` bands (names or meanings, in that order; all bands when None)."""
    found = find_s2_bands(folder)
    if not found:
        raise InputError(
            f"{modality} folder {folder} holds no Sentinel-2 band files (names like "
            "T29SND_20200101T112431_B12_20m.jp2 or ..._B04.tif); pass raster files instead"
        )
    if not wanted:
        return list(found.values())
    out = []
    for item in wanted:
        if isinstance(item, int):
            raise UsageError(
                f"--{modality}-bands {item}: a Sentinel-2 folder's bands are picked by name "
                f"(e.g. B12,B8,B4); the folder has {', '.join(found)}"
            )
        band = canonical_band(str(item))
        if band not in found:
            raise InputError(
                f"{modality} folder {folder} has no band {item!r} ({band}); it has "
                f"{', '.join(found)}"
            )
        out.append(found[band])
    return out


# ---- Sentinel-1 folders -----------------------------------------------------------------------
S1_ORDER = ("VV", "VH", "HH", "HV")


def find_s1_bands(folder: Path) -> dict[str, Path]:
    """Polarisation → file in a Sentinel-1 folder: a SAFE product's ``measurement/*-vv-*.tiff``,
    a BigEarthNet patch (``..._VV.tif``, ``..._VH.tif``) or STAC assets (``vv.tif``); the one
    file named for each polarisation (two files for one is an error: which one?)."""
    found: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in RASTER_SUFFIXES or not p.is_file():
            continue
        pol = band_of_file_name(p.name)
        if pol not in S1_ORDER:
            continue
        if pol in found:
            raise InputError(
                f"sar folder {folder} holds two {pol} files ({found[pol].name}, {p.name}); "
                "pass the file to use with --sar"
            )
        found[pol] = p
    return {b: found[b] for b in S1_ORDER if b in found}


def _georeferenced(path: Path) -> None:
    """SAFE measurement files are in radar geometry (ground control points, no map grid)."""
    import rasterio

    with rasterio.open(path) as ds:
        if ds.crs is None and ds.gcps[0]:
            raise InputError(
                f"{path} is in radar geometry (ground control points, no map grid): "
                "terrain-correct the product first (e.g. SNAP, or gdalwarp -tps -t_srs ...)"
            )


def pick_s1_files(folder: Path, wanted: Sequence[int | str] | None, modality: str) -> list[Path]:
    """The files of ``wanted`` polarisations (``VV``, ``vv``...; all when None) in a
    Sentinel-1 folder."""
    found = find_s1_bands(folder)
    if not found:
        raise InputError(
            f"{modality} folder {folder} holds no Sentinel-1 polarisation files (names like "
            "..._VV.tif, s1a-iw-grd-vh-...tiff or vv.tif); pass raster files instead"
        )
    out = []
    for item in wanted or list(found):
        if isinstance(item, int):
            raise UsageError(
                f"--{modality}-bands {item}: a Sentinel-1 folder's bands are picked by name "
                f"(e.g. VV); the folder has {', '.join(found)}"
            )
        pol = band_of_file_name(str(item)) or str(item).strip().upper()
        if pol not in found:
            raise InputError(
                f"{modality} folder {folder} has no {pol} file; it has {', '.join(found)}"
            )
        out.append(found[pol])
    for p in out:
        _georeferenced(p)
    return out


# ---- building the stack -----------------------------------------------------------------------
def file_info(path: str, what: str = "input", name_from: str | None = None) -> FileInfo:
    """A file's grid, types, nodata and band names (named from ``name_from``, default the
    path itself); URLs keep their GDAL path."""
    from mfaf_cli.io.inputs import open_raster
    from mfaf_cli.io.remote import gdal_path, is_remote

    with open_raster(path, what) as ds:
        t = ds.transform
        return FileInfo(
            path=gdal_path(path) if is_remote(path) else str(Path(path).absolute()),
            crs_wkt=ds.crs.to_wkt(),
            transform=(t.a, t.b, t.c, t.d, t.e, t.f),
            width=ds.width,
            height=ds.height,
            dtypes=tuple(ds.dtypes),
            nodata=tuple(ds.nodatavals),
            names=band_names(name_from or path, list(ds.descriptions)),
        )


def write_stack(paths: Sequence[str], out: Path, grid: str | None = None) -> tuple[str, ...]:
    """Write the VRT of ``paths`` to ``out``; returns its band names."""
    infos = [file_info(p) for p in paths]
    out.write_text(stack_vrt_xml(infos, pick_grid(infos, grid)), encoding="utf-8")
    return tuple(n for i in infos for n in i.names)


def needs_stacking(value: Any, modality: str = "optical") -> bool:
    """A list of files, or an optical / SAR folder (a Sentinel-2 / -1 product), not one raster
    file. Folders of other modalities are left for the input checks to refuse."""
    if isinstance(value, list | tuple):
        return len(value) > 1 or (len(value) == 1 and needs_stacking(value[0], modality))
    folder = isinstance(value, str | os.PathLike) and Path(value).is_dir()
    return folder and modality in ("optical", "sar")


def _translate_bands(spec: Sequence[int | str], names: Sequence[str]) -> list[int | str]:
    """``--optical-bands B08,nir`` against a stack named ``B8, ...``: the stack's spelling."""
    out: list[int | str] = []
    for item in spec:
        if isinstance(item, str) and item not in names and canonical_band(item) in names:
            out.append(canonical_band(item))
        else:
            out.append(item)
    return out


@contextlib.contextmanager
def stacked_inputs(
    inputs: Mapping[str, Any],
    bands: Mapping[str, Sequence[int | str] | None] | None,
    *,
    model_bands: Callable[[str], Sequence[str] | None] = lambda m: None,
    grid: str | None = None,
    rule_bands: Callable[[str], Sequence[str]] = lambda m: (),
) -> Iterator[tuple[dict[str, str], dict[str, list[int | str]], dict[str, str]]]:
    """Replace file lists and Sentinel-2 folders by VRT stacks for the body of the block.

    Yields ``(inputs, bands, described)``: one path per modality, the band lists adjusted to
    the stacks (a folder's stack already holds exactly the bands asked for, plus those of
    ``rule_bands`` — bands the model's applicability rules may read — that it has), and what
    each stack is made of (``"a.tif;b.tif"``) for reports.
    """
    flat: dict[str, str] = {}
    new_bands = {k: list(v) for k, v in (bands or {}).items() if v}
    described: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="mfaf-stack-") as tmp:
        for mod, value in inputs.items():
            if value is None:
                continue
            if not needs_stacking(value, mod):
                one = value[0] if isinstance(value, list | tuple) else value
                flat[mod] = os.fspath(one)
                continue
            items = [os.fspath(v) for v in (value if isinstance(value, list | tuple) else [value])]
            if len(items) == 1:  # a folder
                wanted = new_bands.pop(mod, None) or model_bands(mod)
                if wanted and mod == "optical":
                    wanted = [*wanted, *_held(Path(items[0]), wanted, rule_bands(mod))]
                pick = pick_s1_files if mod == "sar" else pick_s2_files
                files = [str(p) for p in pick(Path(items[0]), wanted, mod)]
            else:
                files = items
                dirs = [f for f in files if Path(f).is_dir()]
                if dirs:
                    raise UsageError(f"--{mod} {dirs[0]} is a folder: give one folder or files")
            vrt = Path(tmp) / f"{mod}.vrt"
            names = write_stack(files, vrt, grid)
            if mod in new_bands:
                new_bands[mod] = _translate_bands(new_bands[mod], names)
            flat[mod] = str(vrt)
            described[mod] = ";".join(shown_path(f) for f in files)
        yield flat, new_bands, described


def _held(folder: Path, wanted: Sequence[int | str], extra: Sequence[str]) -> list[str]:
    """The bands of ``extra`` that a Sentinel-2 folder has and ``wanted`` does not name."""
    if not extra:
        return []
    have, asked = find_s2_bands(folder), {canonical_band(str(b)) for b in wanted}
    return [b for b in dict.fromkeys(canonical_band(e) for e in extra)
            if b in have and b not in asked]  # fmt: skip


def expand_stacks(fn: Callable[..., R]) -> Callable[..., R]:
    """Let ``fn(inputs, ...)`` (predict, coregister) take several files or a Sentinel-2 folder
    per modality. Extra keyword ``stack_grid``: ``finest`` (default), ``coarsest``, a 1-based
    file position or a file name. A folder picks the bands given in ``bands``, else the
    bands the model takes (``model`` / ``predictor`` arguments), else all its bands.

    The wrapper takes more than ``fn`` does (lists of files, ``stack_grid``), so it is typed
    ``Callable[..., R]``: only the result type carries over."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(inputs: Mapping[str, Any], *args: Any, **kw: Any) -> R:
        grid = kw.pop("stack_grid", None)
        if not any(needs_stacking(v, m) for m, v in inputs.items() if v is not None):
            flat = {k: (v[0] if isinstance(v, list | tuple) else v) for k, v in inputs.items()}
            return fn(flat, *args, **kw)
        bound = sig.bind_partial(inputs, *args, **kw).arguments

        def model_bands(mod: str) -> Sequence[str] | None:
            return _model_band_names(bound, tuple(m for m in inputs if inputs[m]), mod)

        def rule_bands(mod: str) -> Sequence[str]:
            return _rule_band_names(bound, tuple(m for m in inputs if inputs[m]), mod)

        with stacked_inputs(inputs, kw.get("bands"), model_bands=model_bands, grid=grid,
                            rule_bands=rule_bands) as (flat, bands, described):  # fmt: skip
            kw["bands"] = bands
            result = fn(flat, *args, **kw)
        if hasattr(result, "inputs"):
            result.inputs.update(described)
        return result

    return wrapper


def _run_meta(bound: Mapping[str, Any], modalities: tuple[str, ...]) -> Any:
    """The run's model record (None without a model: coregister)."""
    predictor = bound.get("predictor")
    if predictor is not None:
        return predictor.meta
    if "model" in bound or "output" in bound:
        from mfaf_cli.models.resolve import resolve_model

        return resolve_model(bound.get("model"), modalities).meta
    return None


def _model_band_names(
    bound: Mapping[str, Any], modalities: tuple[str, ...], mod: str
) -> Sequence[str] | None:
    """The band names the run's model takes for ``mod`` (None without a model: coregister)."""
    meta = _run_meta(bound, modalities)
    if meta is None:
        return None
    return meta.modality(mod).bands if mod in meta.modality_names else None


def _rule_band_names(bound: Mapping[str, Any], modalities: tuple[str, ...], mod: str) -> list[str]:
    """Bands of ``mod`` beyond the model's that its applicability rules' alternatives read
    (by meaning: ``green``, ``swir1``), so that a folder's stack holds them when it can."""
    from mfaf_cli.applicability import Checks

    meta = _run_meta(bound, modalities)
    if meta is None or not meta.rules:
        return []
    return [b for b in Checks.of(meta).extra_bands if MEANINGS[b].modality == mod]

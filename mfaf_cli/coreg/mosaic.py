"""Mosaics: several files (or STAC items) of one modality as one raster on one grid.

An area of interest across two Sentinel-2 tiles is one run: the files become a GDAL VRT
whose extent is the union of theirs, at the finest resolution among them. Where they
overlap, the file with the higher priority wins (the most recent item, or the first file
given); a file's nodata pixels never cover another file's data, so the gaps of one tile
(its no-data wedge) are filled from its neighbour. Pixels no file covers are the mosaic's
nodata (the files' own, else NaN for float bands and 0 for integer bands). The files of a
mosaic must share a CRS (tiles of one UTM zone, or items reprojected beforehand).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from mfaf_cli.coreg.stack import _GDAL_TYPES, FileInfo, _num
from mfaf_cli.errors import CRSError, InputError
from mfaf_cli.io.remote import gdal_path, is_remote, url_of


@dataclass(frozen=True)
class Tile:
    """One file of a mosaic and which of its bands (1-based) make the mosaic's bands."""

    info: FileInfo
    bands: tuple[int, ...]


def source_info(path: str, what: str = "input") -> FileInfo:
    """A file's grid, types, nodata and band names; URLs keep their GDAL path."""
    from mfaf_cli.coreg.stack import band_names
    from mfaf_cli.io.inputs import open_raster

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
            names=band_names(url_of(path), list(ds.descriptions)),
        )


def mosaic_grid(infos: Sequence[FileInfo]) -> tuple[tuple[float, ...], int, int]:
    """``(transform, width, height)`` of the union of ``infos`` at the finest pixel size,
    anchored at the union's top-left corner (one lattice when the files share one)."""
    first = infos[0]
    for info in infos:
        if info.crs_wkt != first.crs_wkt:
            raise CRSError(
                f"{_name(info)} is in another CRS than {_name(first)}; the tiles of a mosaic "
                "must share a CRS (warp them to one with gdalwarp first)"
            )
        if info.transform[1] or info.transform[3]:
            raise InputError(f"{_name(info)} has a rotated grid; it cannot be mosaicked")
    rx = min(i.res[0] for i in infos)
    ry = min(i.res[1] for i in infos)
    left = min(i.bounds[0] for i in infos)
    bottom = min(i.bounds[1] for i in infos)
    right = max(i.bounds[2] for i in infos)
    top = max(i.bounds[3] for i in infos)
    width = max(math.ceil((right - left) / rx - 1e-6), 1)
    height = max(math.ceil((top - bottom) / ry - 1e-6), 1)
    return (rx, 0.0, left, 0.0, -ry, top), width, height


def mosaic_vrt_xml(tiles: Sequence[Tile], names: Sequence[str]) -> str:
    """The VRT of ``tiles`` (highest priority first), one band per entry of ``names``.

    Every tile gives as many bands as ``names``; band k of the mosaic is band
    ``tile.bands[k]`` of each tile, drawn lowest priority first so the first tile ends on top.
    """
    infos = [t.info for t in tiles]
    (a, b, c, d, e, f), width, height = mosaic_grid(infos)
    dtype = _dtype(tiles)
    parts = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f"<SRS>{escape(infos[0].crs_wkt)}</SRS>",
        f"<GeoTransform>{c!r}, {a!r}, {b!r}, {f!r}, {d!r}, {e!r}</GeoTransform>",
    ]
    for k, name in enumerate(names):
        nd = _band_nodata(tiles, k, dtype)
        parts.append(
            f'<VRTRasterBand dataType="{_GDAL_TYPES[dtype]}" band="{k + 1}">'
            f"<Description>{escape(name)}</Description><NoDataValue>{_num(nd)}</NoDataValue>"
        )
        for tile in reversed(tiles):
            parts.append(_source_xml(tile.info, tile.bands[k], (a, e, c, f)))
        parts.append("</VRTRasterBand>")
    parts.append("</VRTDataset>")
    return "\n".join(parts) + "\n"


def mosaic_info(tiles: Sequence[Tile], names: Sequence[str], path: str) -> FileInfo:
    """What :func:`mosaic_vrt_xml` describes, without opening the VRT (no extra reads)."""
    transform, width, height = mosaic_grid([t.info for t in tiles])
    dtype = _dtype(tiles)
    return FileInfo(
        path=path,
        crs_wkt=tiles[0].info.crs_wkt,
        transform=transform,  # type: ignore[arg-type]
        width=width,
        height=height,
        dtypes=(dtype,) * len(names),
        nodata=tuple(_band_nodata(tiles, k, dtype) for k in range(len(names))),
        names=tuple(names),
    )


def _dtype(tiles: Sequence[Tile]) -> str:
    dtype = np.result_type(*[np.dtype(t.info.dtypes[k - 1]) for t in tiles for k in t.bands])
    return dtype.name if dtype.name in _GDAL_TYPES else "float64"


def _band_nodata(tiles: Sequence[Tile], k: int, dtype: str) -> float:
    for t in tiles:
        nd = t.info.nodata[t.bands[k] - 1]
        if nd is not None:
            return float(nd)
    return math.nan if np.dtype(dtype).kind == "f" else 0.0


def _source_xml(info: FileInfo, band: int, grid: tuple[float, float, float, float]) -> str:
    ga, ge, gc, gf = grid
    left, bottom, right, top = info.bounds
    x, y = (left - gc) / ga, (gf - top) / -ge
    w, h = (right - left) / ga, (top - bottom) / -ge
    coarser = info.res[0] > ga * 1.0001
    finer = info.res[0] * 1.0001 < ga
    resampling = "bilinear" if coarser else "average" if finer else "nearest"
    nd = info.nodata[band - 1]
    src_nd = "" if nd is None else f"<NODATA>{_num(nd)}</NODATA>"
    return (
        f'<ComplexSource resampling="{resampling}">'
        f'<SourceFilename relativeToVRT="0">{escape(info.path)}</SourceFilename>'
        f"<SourceBand>{band}</SourceBand>"
        f'<SrcRect xOff="0" yOff="0" xSize="{info.width}" ySize="{info.height}"/>'
        f"<DstRect xOff={quoteattr(repr(x))} yOff={quoteattr(repr(y))} "
        f"xSize={quoteattr(repr(w))} ySize={quoteattr(repr(h))}/>{src_nd}</ComplexSource>"
    )


def _name(info: FileInfo) -> str:
    return url_of(info.path) if is_remote(info.path) else Path(info.path).name


def write_mosaic(paths: Sequence[str], out: Path, what: str) -> tuple[str, ...]:
    """Mosaic files (first given wins) with all their bands; returns the band names."""
    infos = [source_info(os.fspath(p), what) for p in paths]
    counts = {len(i.dtypes) for i in infos}
    if len(counts) > 1:
        raise InputError(
            f"the {what} tiles of a mosaic have different band counts "
            f"({', '.join(f'{_name(i)}: {len(i.dtypes)}' for i in infos)}); give tiles of "
            "one product"
        )
    n = counts.pop()
    tiles = [Tile(i, tuple(range(1, n + 1))) for i in infos]
    out.write_text(mosaic_vrt_xml(tiles, infos[0].names), encoding="utf-8")
    return infos[0].names

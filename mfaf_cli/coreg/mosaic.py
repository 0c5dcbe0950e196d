"""Mosaics: several files (or STAC items) of one modality as one raster on one grid.

An area of interest across two Sentinel-2 tiles is one run: the files become a GDAL VRT
whose extent is the union of theirs, at the finest resolution among them. Where they
overlap, the file with the higher priority wins (the most recent item, or the first file
given); a file's nodata pixels never cover another file's data, so the gaps of one tile
(its no-data wedge) are filled from its neighbour. Pixels no file covers are the mosaic's
nodata (the files' own, else NaN for float bands and 0 for integer bands). A file in another
CRS than the top one (a tile across a UTM zone boundary) is first reprojected onto the top
file's CRS and pixel lattice by a warped VRT (bilinear), so the mosaic stays one VRT of
virtual files and nothing is read before the windows ask for it.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mfaf_cli.coreg.stack import _GDAL_TYPES, FileInfo, _num
from mfaf_cli.errors import CRSError, InputError
from mfaf_cli.io.remote import is_remote, url_of
from mfaf_cli.io.xmltext import escape, quoteattr


@dataclass(frozen=True)
class Tile:
    """One file of a mosaic and which of its bands (1-based) make the mosaic's bands."""

    info: FileInfo
    bands: tuple[int, ...]


def source_info(path: str, what: str = "input") -> FileInfo:
    """A file's grid, types, nodata and band names (named from its URL's path)."""
    from mfaf_cli.coreg.stack import file_info

    return file_info(path, what, url_of(path))


def mosaic_grid(infos: Sequence[FileInfo]) -> tuple[tuple[float, ...], int, int]:
    """``(transform, width, height)`` of the union of ``infos`` at the finest pixel size,
    anchored at the union's top-left corner (one lattice when the files share one)."""
    first = infos[0]
    for info in infos:
        if info.crs_wkt != first.crs_wkt and not _same_crs(info.crs_wkt, first.crs_wkt):
            raise CRSError(  # one_crs() warps them first; this is a programming error
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


# ---- tiles in another CRS: a warped VRT onto the top tile's lattice ---------------------------
def warped_grid(info: FileInfo, target: FileInfo) -> tuple[tuple[float, ...], int, int]:
    """``(transform, width, height)`` of ``info`` reprojected onto ``target``'s CRS, pixel
    size and lattice (its bounds snapped outwards)."""
    from rasterio.warp import transform_bounds

    left, bottom, right, top = transform_bounds(
        info.crs_wkt, target.crs_wkt, *info.bounds, densify_pts=21
    )
    rx, ry = target.res
    x0 = target.transform[2] + math.floor((left - target.transform[2]) / rx + 1e-9) * rx
    y0 = target.transform[5] - math.floor((target.transform[5] - top) / ry + 1e-9) * ry
    width = max(math.ceil((right - x0) / rx - 1e-9), 1)
    height = max(math.ceil((y0 - bottom) / ry - 1e-9), 1)
    return (rx, 0.0, x0, 0.0, -ry, y0), width, height


def warped_vrt_xml(info: FileInfo, target: FileInfo) -> tuple[str, FileInfo]:
    """A GDAL warped VRT of every band of ``info`` on ``target``'s lattice (bilinear), and
    what it describes. Nodata: the file's, else NaN (float) / 0 (integer)."""
    from rasterio.transform import Affine

    transform, width, height = warped_grid(info, target)
    src_t, dst_t = Affine(*info.transform), Affine(*transform)
    nodata = tuple(
        float(nd) if nd is not None else (math.nan if np.dtype(d).kind == "f" else 0.0)
        for nd, d in zip(info.nodata, info.dtypes, strict=True)
    )
    work = np.result_type(*[np.dtype(d) for d in info.dtypes], np.float32).name
    bands = "".join(
        f'<VRTRasterBand dataType="{_GDAL_TYPES.get(d, "Float64")}" band="{k + 1}" '
        f'subClass="VRTWarpedRasterBand"><NoDataValue>{_num(nd)}</NoDataValue></VRTRasterBand>'
        for k, (d, nd) in enumerate(zip(info.dtypes, nodata, strict=True))
    )
    mapping = "".join(
        f'<BandMapping src="{k + 1}" dst="{k + 1}">'
        + ("" if info.nodata[k] is None else f"<SrcNoDataReal>{_num(nd)}</SrcNoDataReal>")
        + f"<DstNoDataReal>{_num(nd)}</DstNoDataReal></BandMapping>"
        for k, nd in enumerate(nodata)
    )
    xml = (
        f'<VRTDataset subClass="VRTWarpedDataset" rasterXSize="{width}" '
        f'rasterYSize="{height}"><SRS>{escape(target.crs_wkt)}</SRS>'
        f"<GeoTransform>{_gt(dst_t)}</GeoTransform>{bands}"
        "<BlockXSize>512</BlockXSize><BlockYSize>128</BlockYSize><GDALWarpOptions>"
        "<WarpMemoryLimit>67108864</WarpMemoryLimit><ResampleAlg>Bilinear</ResampleAlg>"
        f"<WorkingDataType>{_GDAL_TYPES.get(work, 'Float64')}</WorkingDataType>"
        '<Option name="INIT_DEST">NO_DATA</Option>'
        f'<SourceDataset relativeToVRT="0">{escape(info.path)}</SourceDataset>'
        "<Transformer><ApproxTransformer><MaxError>0.125</MaxError><BaseTransformer>"
        f"<GenImgProjTransformer><SrcGeoTransform>{_gt(src_t)}</SrcGeoTransform>"
        f"<SrcInvGeoTransform>{_gt(~src_t)}</SrcInvGeoTransform>"
        f"<DstGeoTransform>{_gt(dst_t)}</DstGeoTransform>"
        f"<DstInvGeoTransform>{_gt(~dst_t)}</DstInvGeoTransform>"
        "<ReprojectTransformer><ReprojectionTransformer>"
        f"<SourceSRS>{escape(info.crs_wkt)}</SourceSRS>"
        f"<TargetSRS>{escape(target.crs_wkt)}</TargetSRS>"
        "</ReprojectionTransformer></ReprojectTransformer></GenImgProjTransformer>"
        "</BaseTransformer></ApproxTransformer></Transformer>"
        f"<BandList>{mapping}</BandList></GDALWarpOptions></VRTDataset>\n"
    )
    warped = FileInfo(
        path="", crs_wkt=target.crs_wkt, transform=transform,  # type: ignore[arg-type]
        width=width, height=height, dtypes=info.dtypes, nodata=nodata, names=info.names,
    )  # fmt: skip
    return xml, warped


def _gt(t: Any) -> str:
    """GDAL's geotransform order (c, a, b, f, d, e) of an affine transform."""
    return f"{t.c!r},{t.a!r},{t.b!r},{t.f!r},{t.d!r},{t.e!r}"


def one_crs(tiles: Sequence[Tile], folder: Path) -> list[Tile]:
    """``tiles`` with those in another CRS than the first replaced by warped VRTs (files in
    ``folder``) on the first tile's lattice."""
    import dataclasses

    first = tiles[0].info
    out = []
    for k, tile in enumerate(tiles):
        if tile.info.crs_wkt == first.crs_wkt or _same_crs(tile.info.crs_wkt, first.crs_wkt):
            out.append(tile)
            continue
        xml, info = warped_vrt_xml(tile.info, first)
        fd, name = tempfile.mkstemp(prefix=f"warped-{k}-", suffix=".vrt", dir=folder)
        os.close(fd)
        path = Path(name)
        path.write_text(xml, encoding="utf-8")
        out.append(Tile(dataclasses.replace(info, path=str(path)), tile.bands))
    return out


def _same_crs(a: str, b: str) -> bool:
    from rasterio.crs import CRS

    return bool(CRS.from_wkt(a) == CRS.from_wkt(b))


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
    tiles = one_crs([Tile(i, tuple(range(1, n + 1))) for i in infos], out.parent)
    out.write_text(mosaic_vrt_xml(tiles, infos[0].names), encoding="utf-8")
    return infos[0].names

"""A VRT over a batch's label maps (``predict --batch --mosaic-vrt OUT.vrt``).

A GDAL virtual mosaic: one file that GIS software opens as the whole area, reading each
scene's map where it lies. The maps must share a CRS and a pixel lattice (same resolution,
origins a whole number of pixels apart), which target-aligned grids (``--tap``, on with
``--crs``/``--resolution``) give; otherwise placing them would resample, and this refuses.
Where scenes overlap, the later row of the CSV wins over nodata-free pixels of earlier ones
(nodata 255 never covers a class).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mfaf_cli.errors import InputError
from mfaf_cli.io.atomic import atomic_path
from mfaf_cli.io.inputs import open_raster
from mfaf_cli.io.xmltext import escape

#: How far (in pixels) two origins may be from a whole number of pixels apart.
LATTICE_TOL = 1e-6


def write_mosaic_vrt(maps: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """Write a VRT of ``maps`` (label GeoTIFFs on one lattice) to ``out``, atomically."""
    if not maps:
        raise InputError(f"no label map to put in the mosaic {out}: no scene succeeded")
    infos = [_describe(p) for p in maps]
    first = infos[0]
    for info in infos[1:]:
        _check_lattice(first, info)
    rx, ry = first["res"]
    left = min(i["left"] for i in infos)
    top = max(i["top"] for i in infos)
    right = max(i["left"] + i["width"] * rx for i in infos)
    bottom = min(i["top"] - i["height"] * ry for i in infos)
    width, height = round((right - left) / rx), round((top - bottom) / ry)
    sources = []
    for info in infos:
        col, row = round((info["left"] - left) / rx), round((top - info["top"]) / ry)
        sources.append(_source(info, col, row))
    colors = "".join(
        f'<Entry c1="{c[0]}" c2="{c[1]}" c3="{c[2]}" c4="{c[3]}"/>' for c in first["colors"]
    )
    table = f"<ColorInterp>Palette</ColorInterp><ColorTable>{colors}</ColorTable>" if colors else ""
    xml = (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n'
        f"  <SRS>{escape(first['wkt'])}</SRS>\n"
        f"  <GeoTransform>{left!r}, {rx!r}, 0.0, {top!r}, 0.0, {-ry!r}</GeoTransform>\n"
        f'  <VRTRasterBand dataType="Byte" band="1">\n'
        f"    <NoDataValue>255</NoDataValue>{table}\n"
        + "".join(sources)
        + "  </VRTRasterBand>\n</VRTDataset>\n"
    )
    final = Path(out)
    with atomic_path(final) as tmp:
        tmp.write_text(xml, encoding="utf-8")
    return final


def _describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    with open_raster(path, "label map") as ds:
        t = ds.transform
        if t.b != 0 or t.d != 0 or t.e >= 0:
            raise InputError(f"label map {path} is not north-up; it cannot join a VRT mosaic")
        try:
            cmap = ds.colormap(1)
            colors = [cmap.get(i, (0, 0, 0, 0)) for i in range(256)]
        except ValueError:  # no colour table
            colors = []
        return {
            "path": str(Path(path).absolute()),
            "crs": ds.crs,
            "wkt": ds.crs.to_wkt(),
            "res": (t.a, -t.e),
            "left": t.c,
            "top": t.f,
            "width": ds.width,
            "height": ds.height,
            "colors": colors,
        }


def _check_lattice(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Same CRS, same pixel size, origins whole pixels apart — or one line saying which."""
    name = Path(b["path"]).name
    if a["crs"] != b["crs"]:
        raise InputError(
            f"label map {name} is in {b['crs'].to_string()}, the first in {a['crs'].to_string()}; "
            "a VRT mosaic needs one CRS: run the batch with --crs and --resolution"
        )
    (ax, ay), (bx, by) = a["res"], b["res"]
    same = math.isclose(ax, bx, rel_tol=1e-9) and math.isclose(ay, by, rel_tol=1e-9)
    dx, dy = (b["left"] - a["left"]) / ax, (b["top"] - a["top"]) / ay
    whole = abs(dx - round(dx)) < LATTICE_TOL and abs(dy - round(dy)) < LATTICE_TOL
    if not (same and whole):
        raise InputError(
            f"label map {name} is not on the first map's pixel lattice (pixel {bx:g} × {by:g} "
            f"vs {ax:g} × {ay:g}, origin {dx:.3f}, {dy:.3f} px away); run the batch with --crs "
            "and --resolution (target-aligned pixels) so the maps share one grid"
        )


def _source(info: dict[str, Any], col: int, row: int) -> str:
    w, h = info["width"], info["height"]
    return (
        "    <ComplexSource>\n"
        f'      <SourceFilename relativeToVRT="0">{escape(info["path"])}</SourceFilename>\n'
        "      <SourceBand>1</SourceBand>\n"
        f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>\n'
        f'      <DstRect xOff="{col}" yOff="{row}" xSize="{w}" ySize="{h}"/>\n'
        "      <NODATA>255</NODATA>\n"
        "    </ComplexSource>\n"
    )

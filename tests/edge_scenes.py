"""Scenes at the edges of the Earth, made from the real Sentinel chip in examples/sen1floods11.

A 96 × 96 crop of the chip's S2 and S1 (real pixels) is placed (its georeferencing reassigned)
across the antimeridian at 60° N, or centred on the South Pole in EPSG:3031, and one modality
is warped into another CRS, as a user's files of one scene in two CRSs would be.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from conftest import EXAMPLES, write_geotiff
from rasterio.transform import Affine, from_origin
from rasterio.warp import calculate_default_transform, reproject

CHIP = EXAMPLES / "sen1floods11"


def chip(name: str, n: int = 96) -> tuple[np.ndarray, list[str], tuple[float, float]]:
    with rasterio.open(CHIP / f"{name}.tif") as ds:
        arr = ds.read(window=((100, 100 + n), (100, 100 + n)))
        return arr, [d or "" for d in ds.descriptions], ds.res


def _warp_to(src: Path, dst: Path, crs: str, nodata: float | None) -> Path:
    with rasterio.open(src) as ds:
        t, w, h = calculate_default_transform(ds.crs, crs, ds.width, ds.height, *ds.bounds)
        fill = np.nan if nodata is None else nodata
        out = np.full((ds.count, h, w), fill, dtype=ds.dtypes[0])
        reproject(ds.read(), out, src_transform=ds.transform, src_crs=ds.crs, dst_transform=t,
                  dst_crs=crs, src_nodata=fill, dst_nodata=fill)  # fmt: skip
        desc = [d or "" for d in ds.descriptions]
    return write_geotiff(dst, out, crs, t, nodata, desc)


def antimeridian_pair(folder: Path) -> tuple[Path, Path]:
    """(optical in UTM zone 1N, SAR in EPSG:4326 at longitudes 179.996..180.005)."""
    s2, d2, res = chip("S2")
    s1, d1, _ = chip("S1")
    t = from_origin(179.996, 60.0, res[0], res[1])
    opt_ll = write_geotiff(folder / "s2_ll.tif", s2, "EPSG:4326", t, 0, d2)
    sar = write_geotiff(folder / "s1_ll.tif", s1, "EPSG:4326", t, None, d1)
    return _warp_to(opt_ll, folder / "s2_utm1n.tif", "EPSG:32601", 0), sar


def polar_pair(folder: Path) -> tuple[Path, Path]:
    """(optical in EPSG:3031 centred on the South Pole, SAR in EPSG:4326 round the pole)."""
    s2, d2, _ = chip("S2")
    s1, d1, _ = chip("S1")
    t = from_origin(-480.0, 480.0, 10.0, 10.0)
    opt = write_geotiff(folder / "s2_3031.tif", s2, "EPSG:3031", t, 0, d2)
    sar_ps = write_geotiff(folder / "s1_3031.tif", s1, "EPSG:3031", t, None, d1)
    w, h = 256, 48  # the whole longitude range, 90° S .. 89.9955° S
    t_ll = Affine(360.0 / w, 0.0, -180.0, 0.0, -0.0045 / h, -89.9955)
    out = np.full((2, h, w), np.nan, dtype=np.float32)
    with rasterio.open(sar_ps) as ds:
        reproject(ds.read(), out, src_transform=ds.transform, src_crs=ds.crs, dst_transform=t_ll,
                  dst_crs="EPSG:4326", src_nodata=np.nan, dst_nodata=np.nan)  # fmt: skip
    return opt, write_geotiff(folder / "s1_pole.tif", out, "EPSG:4326", t_ll, None, d1)

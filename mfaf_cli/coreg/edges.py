"""Bounds at the edges of the Earth: across the antimeridian and around a pole.

``transform_bounds`` into a geographic CRS returns longitudes in [-180, 180]: a box that
crosses 180° comes back with ``left > right`` and a box around a pole as the whole
[-180, 180] range. Neither is a usable window. Here a box is transformed into the geographic
CRS *unwrapped* around a chosen longitude (PROJ's ``+lon_wrap``), so a scene at 179.9°..180.1°
stays 0.2° wide whichever convention its file uses, and a box that holds a pole spans the
whole longitude range of the file it is read from.
"""

from __future__ import annotations

from typing import Any

from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import calculate_default_transform, transform_bounds

Bounds = tuple[float, float, float, float]

#: A transformed box at least this wide (degrees) goes all the way round: it holds a pole.
FULL_CIRCLE = 359.999


def lon_wrapped(crs: CRS, centre: float) -> CRS:
    """``crs`` (geographic) with longitudes in [centre - 180, centre + 180]."""
    text = crs.to_proj4().replace("=True", "")
    return CRS.from_proj4(f"{text} +lon_wrap={centre:.9g}")


def centre_lon(crs: CRS | None, bounds: Bounds) -> float | None:
    """The middle longitude of a box in a geographic CRS (None for projected CRSs)."""
    if crs is None or not crs.is_geographic:
        return None
    return (bounds[0] + bounds[2]) / 2.0


def crossing_centre(b: Bounds) -> float:
    """The middle longitude of a box ``transform_bounds`` returned across 180° (left > right)."""
    return (b[0] + b[2] + 360.0) / 2.0


def bounds_in(src_crs: CRS, dst_crs: CRS, bounds: Bounds, centre: float | None = None) -> Bounds:
    """``bounds`` (in ``src_crs``) in ``dst_crs``, never ``left > right``.

    For a geographic ``dst_crs`` the longitudes are continuous around ``centre`` (default: the
    box's own middle), e.g. (179.9, ..., 180.1, ...) rather than (179.9, ..., -179.9, ...).
    """
    if src_crs == dst_crs and centre is None:
        return bounds
    plain = _transform(src_crs, dst_crs, bounds)
    if not dst_crs.is_geographic:
        return plain
    if centre is None:
        if plain[0] <= plain[2]:
            return plain
        centre = crossing_centre(plain)
    out = _transform(src_crs, lon_wrapped(dst_crs, centre), bounds)
    if out[0] > out[2]:  # cannot happen after unwrapping; never hand it on
        return (centre - 180.0, out[1], centre + 180.0, out[3])
    return out


def shift_near(b: Bounds, centre: float) -> Bounds:
    """A geographic box moved by whole turns (360°) so that its middle is within 180° of
    ``centre`` (two files of one scene in -180..180 and 0..360 conventions)."""
    turns = round(((b[0] + b[2]) / 2.0 - centre) / 360.0)
    return (b[0] - 360.0 * turns, b[1], b[2] - 360.0 * turns, b[3])


def holds_pole(b: Bounds) -> bool:
    """A geographic box that goes all the way round (the transformed box held a pole)."""
    return b[2] - b[0] >= FULL_CIRCLE


def read_bounds(grid_crs: CRS, block: Bounds, ds: Any) -> Bounds:
    """A grid block's bounds in the CRS of the file ``ds`` it is read from, in the file's own
    longitude convention; a block around a pole spans the file's whole width."""
    centre = centre_lon(ds.crs, tuple(ds.bounds))  # type: ignore[arg-type]
    b = bounds_in(grid_crs, ds.crs, block, centre)
    if centre is not None and holds_pole(b):
        return (float(ds.bounds.left), b[1], float(ds.bounds.right), b[3])
    return b


def suggested_grid(ds: Any, dst_crs: CRS, resolution: Any = None) -> tuple[Affine, int, int]:
    """GDAL's suggested warp output for ``ds`` in ``dst_crs`` (transform, width, height), kept
    continuous across 180° (a geographic target unwrapped around the footprint) and, around a
    pole, the footprint's whole longitude range with the file's own pixel counts."""
    if ds.crs is None:  # located by GCPs or RPCs (coreg/georef.py)
        from mfaf_cli.coreg.georef import Ground

        return Ground.of(ds).suggested_grid(dst_crs, resolution)  # type: ignore[union-attr]
    t, w, h = calculate_default_transform(
        ds.crs, dst_crs, ds.width, ds.height, *ds.bounds, resolution=resolution
    )
    if not dst_crs.is_geographic or (w > 0 and h > 0 and abs(t.a) * w < 180.0):
        return t, w, h
    b = bounds_in(ds.crs, dst_crs, tuple(ds.bounds))
    if not holds_pole(b):
        return calculate_default_transform(
            ds.crs, lon_wrapped(dst_crs, (b[0] + b[2]) / 2.0), ds.width, ds.height,
            *ds.bounds, resolution=resolution,
        )  # fmt: skip
    if resolution is None:
        rx, ry = (b[2] - b[0]) / ds.width, (b[3] - b[1]) / ds.height
    else:
        rx, ry = (resolution, resolution) if isinstance(resolution, int | float) else resolution
    w, h = max(1, round((b[2] - b[0]) / rx)), max(1, round((b[3] - b[1]) / ry))
    return Affine(rx, 0.0, b[0], 0.0, -ry, b[3]), w, h


def _transform(src: CRS, dst: CRS, b: Bounds) -> Bounds:
    return tuple(transform_bounds(src, dst, *b, densify_pts=21))  # type: ignore[return-value]

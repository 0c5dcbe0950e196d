"""Polygons in WGS 84 as RFC 7946 wants them: cut at the antimeridian, valid around the poles.

Reprojecting a polygon that crosses 180° into longitude/latitude gives a ring that jumps from
+179.9° to -179.9° and back: a polygon 359.8° wide (RFC 7946 §3.1.9 asks for it to be cut
in two). A ring around a pole jumps once: the polygon it draws is not the area it encloses.
Here each ring is unwrapped (longitudes made continuous), a ring that goes once round a pole is
closed along that pole's parallel, and the polygon is cut into [-180°, 180°] pieces.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.ops import unary_union


def to_rfc7946(geoms: np.ndarray, crs: Any) -> np.ndarray:
    """``geoms`` (shapely polygons in ``crs``) in EPSG:4326 longitude/latitude, each within
    [-180, 180] (a polygon across 180° becomes a MultiPolygon) and valid."""
    from pyproj import CRS, Transformer

    src = CRS.from_user_input(crs.to_wkt())
    to_ll = Transformer.from_crs(src, CRS.from_epsg(4326), always_xy=True)
    out = shapely.transform(geoms, lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
    if len(out) == 0:
        return out
    b = shapely.bounds(out)
    bad = ((b[:, 2] - b[:, 0]) > 180.0) | (b[:, 0] < -180.0) | (b[:, 2] > 180.0)
    bad |= ~shapely.is_valid(out)
    for i in np.flatnonzero(bad):
        out[i] = fix_polygon(out[i])
    return out


def fix_polygon(geom: Any) -> Any:
    """One lon/lat polygon (or multipolygon) unwrapped, closed round a pole if it encircles
    one, cut at ±180° and made valid."""
    parts = geom.geoms if isinstance(geom, MultiPolygon) else [geom]
    pieces = [p for poly in parts for p in _polygons(split_at_antimeridian(_unwrapped(poly)))]
    return pieces[0] if len(pieces) == 1 else MultiPolygon(pieces)


def unwrap_ring(coords: np.ndarray) -> np.ndarray:
    """A closed ring's (lon, lat) with continuous longitudes; a ring that goes once round a
    pole is closed along the pole (two extra corners at ±90°)."""
    lon = np.unwrap(coords[:, 0], period=360.0)
    lat = coords[:, 1]
    turns = round((lon[-1] - lon[0]) / 360.0)
    if turns == 0:
        return np.column_stack([lon, lat])
    pole = -90.0 if float(np.mean(lat)) < 0 else 90.0
    ring = np.column_stack([lon, lat])
    corners = np.array([[lon[-1], pole], [lon[0], pole], [lon[0], lat[0]]])
    return np.vstack([ring, corners])


def split_at_antimeridian(poly: Any) -> Any:
    """A polygon with unwrapped longitudes cut into pieces each moved into [-180, 180]."""
    if poly.is_empty:
        return poly
    minx, _, maxx, _ = poly.bounds
    pieces = []
    for k in range(
        int(np.floor((minx + 180.0) / 360.0)), int(np.floor((maxx + 180.0) / 360.0)) + 1
    ):
        part = poly.intersection(box(360.0 * k - 180.0, -90.0, 360.0 * k + 180.0, 90.0))
        if not part.is_empty:
            pieces.append(shapely.affinity.translate(part, xoff=-360.0 * k))
    return unary_union(pieces) if len(pieces) > 1 else pieces[0] if pieces else poly


def _unwrapped(poly: Polygon) -> Any:
    shell = unwrap_ring(np.asarray(poly.exterior.coords))
    centre = float(np.mean(shell[:, 0]))
    holes = []
    for ring in poly.interiors:
        h = unwrap_ring(np.asarray(ring.coords))
        h[:, 0] -= 360.0 * round((float(np.mean(h[:, 0])) - centre) / 360.0)
        holes.append(h)
    return shapely.make_valid(Polygon(shell, holes))


def _polygons(geom: Any) -> list[Polygon]:
    """The polygons of any geometry (make_valid / intersections can add lines and points)."""
    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    return [p for g in getattr(geom, "geoms", []) for p in _polygons(g)]

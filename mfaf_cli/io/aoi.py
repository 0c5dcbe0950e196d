"""Areas of interest: ``--aoi FILE`` (GeoJSON, GeoPackage, Shapefile; any CRS).

The polygons of the file (all layers' features of the first layer, dissolved into one
geometry) in their own CRS; :meth:`Aoi.in_crs` reprojects them to the run's grid. A file
without a CRS is refused unless it is GeoJSON (which RFC 7946 says is WGS 84).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfaf_cli.errors import InputError


@dataclass(frozen=True)
class Aoi:
    """A dissolved (multi)polygon and its CRS (anything ``pyproj.CRS.from_user_input`` takes)."""

    geometry: Any  # shapely geometry
    crs: Any
    source: str

    def in_crs(self, crs: Any) -> Any:
        """The geometry in ``crs`` (densified edges, so a long straight side stays close)."""
        from pyproj import CRS, Transformer
        from shapely.ops import transform

        src, dst = CRS.from_user_input(self.crs), CRS.from_user_input(crs)
        if src == dst:
            return self.geometry
        geom = self.geometry.segmentize(_step(self.geometry))
        fwd = Transformer.from_crs(src, dst, always_xy=True).transform
        return transform(fwd, geom).buffer(0)


def _step(geom: Any) -> float:
    minx, miny, maxx, maxy = geom.bounds
    return max(maxx - minx, maxy - miny) / 64 or 1.0


def read_aoi(path: str | os.PathLike[str]) -> Aoi:
    """The polygons of ``path`` as one :class:`Aoi`, or one :class:`InputError` line."""
    import pyogrio  # type: ignore[import-untyped]
    from shapely import from_wkb, union_all

    p = Path(path)
    if not p.exists():
        raise InputError(f"--aoi {p} does not exist; give a GeoJSON, GeoPackage or Shapefile")
    try:
        meta, _, geoms, _ = pyogrio.raw.read(p, read_geometry=True, columns=[])
    except Exception as err:  # pyogrio's DataSourceError and friends: not a vector file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"--aoi {p} is not a readable vector file ({first})") from None
    shapes = [g for g in from_wkb(geoms) if g is not None and not g.is_empty]
    polys = [g for g in shapes if g.geom_type in ("Polygon", "MultiPolygon")]
    if not polys:
        raise InputError(f"--aoi {p} holds no polygon (points or lines do not make an area)")
    crs = meta.get("crs")
    if not crs:
        if p.suffix.lower() not in (".geojson", ".json"):
            raise InputError(f"--aoi {p} has no CRS; save it with one (e.g. EPSG:4326)")
        crs = "EPSG:4326"
    geom = union_all([g.buffer(0) for g in polys])
    return Aoi(geom, crs, str(p))

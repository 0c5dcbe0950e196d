"""Polygonise a label raster: one feature per connected region, with class and area.

Why the work is done in *pixel* space: rasterio/GDAL polygonise to pixel-corner coordinates,
which are exact small integers there. That makes areas exact (pixel area x |det(transform)|),
and lets shared borders be densified to unit steps so that neighbouring polygons have matching
vertices, which coverage simplification needs to keep borders shared (no gaps, no slivers).
Geometries are moved to map coordinates only at the end, with one vectorised affine transform.

Memory: the label array (plus a validity mask) and the polygons; features from
``rasterio.features.shapes`` are packed into flat coordinate arrays in batches, never kept as
per-feature Python dicts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from rasterio.errors import RasterioError
from rasterio.transform import Affine

from mfaf_cli.errors import (
    CRSError,
    InputError,
    MfafError,
    OutputExistsError,
    OutputPathError,
    UsageError,
)
from mfaf_cli.io.inputs import open_raster, read_error
from mfaf_cli.metadata import META_KEY, NODATA_LABEL

log = logging.getLogger("mfaf")

#: output extension -> writer ("parquet" = GeoParquet via geopandas, else an OGR driver name)
VECTOR_FORMATS: dict[str, str] = {
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".parquet": "parquet",
    ".shp": "ESRI Shapefile",
}
#: files that make up one shapefile (all are replaced/removed together)
SHAPEFILE_SIDECARS: tuple[str, ...] = (
    ".shp",
    ".shx",
    ".dbf",
    ".prj",
    ".cpg",
    ".qix",
    ".sbn",
    ".sbx",
    ".shp.xml",
)
#: dtypes GDAL polygonize/sieve accept without conversion
_NATIVE_DTYPES = ("uint8", "uint16", "int16", "int32")
#: features packed per batch before conversion to shapely geometries
_BATCH = 4096


@dataclass
class VectorizeResult:
    """What ``vectorize_raster`` wrote, for the CLI's summary / ``--json`` line."""

    input: str
    output: str
    format: str
    crs: str | None
    n_polygons: int
    per_class: dict[str, int] = field(default_factory=dict)
    area_m2_per_class: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "vectorize",
            "input": self.input,
            "output": self.output,
            "format": self.format,
            "crs": self.crs,
            "polygons": self.n_polygons,
            "per_class": self.per_class,
            "area_m2_per_class": {k: round(v, 3) for k, v in self.area_m2_per_class.items()},
            "seconds": round(self.seconds, 3),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)


# ---- small pure helpers ---------------------------------------------------------------------
def vector_format(path: str | os.PathLike[str]) -> str:
    """Writer for an output path from its extension, or UsageError listing the supported ones."""
    ext = Path(path).suffix.lower()
    if ext not in VECTOR_FORMATS:
        supported = ", ".join(VECTOR_FORMATS)
        raise UsageError(
            f"unsupported vector output extension {ext or '(none)'!r} for {path}; "
            f"use one of {supported}"
        )
    return VECTOR_FORMATS[ext]


def output_files(path: str | os.PathLike[str]) -> list[Path]:
    """All files that an output at ``path`` consists of (a shapefile has sidecars)."""
    p = Path(path)
    if p.suffix.lower() == ".shp":
        base = p.with_suffix("")
        return [Path(str(base) + ext) for ext in SHAPEFILE_SIDECARS]
    return [p]


def parse_class_names(tags: Mapping[str, str]) -> dict[int, str]:
    """Class names from raster tags written by mfaf (or by hand).

    Understood, later ones winning: an ``mfaf_meta`` model record with a class table;
    ``CLASS_NAMES`` as a JSON list (ids from ``CLASS_IDS``, else the index) or JSON object
    (id -> name); ``CLASS_<id>=name``.
    """
    names: dict[int, str] = {}
    meta = tags.get(META_KEY) or tags.get(META_KEY.upper())
    if meta:
        try:
            for c in json.loads(meta).get("classes", []):
                names[int(c["id"])] = str(c["name"])
        except (ValueError, TypeError, KeyError, AttributeError):
            pass
    raw = tags.get("CLASS_NAMES") or tags.get("class_names")
    if raw:
        try:
            val = json.loads(raw)
        except ValueError:
            val = [s.strip() for s in raw.split(",")]
        if isinstance(val, list):
            ids: list[Any] = list(range(len(val)))
            try:  # mfaf label maps also carry CLASS_IDS when ids are not 0..K-1
                tag_ids = json.loads(tags.get("CLASS_IDS", "null"))
                if isinstance(tag_ids, list) and len(tag_ids) == len(val):
                    ids = [int(i) for i in tag_ids]
            except (ValueError, TypeError):
                pass
            names.update({i: str(n) for i, n in zip(ids, val, strict=True) if n not in (None, "")})
        elif isinstance(val, dict):
            for k, n in val.items():
                try:
                    names[int(k)] = str(n)
                except ValueError:
                    continue
    for key, val in tags.items():
        head, _, tail = key.partition("_")
        if head.upper() == "CLASS" and tail.isdigit() and val:
            names[int(tail)] = str(val)
    return names


def class_name(names: Mapping[int, str], class_id: int) -> str:
    """Name of a class id, or the ``class-<id>`` fallback."""
    return names.get(int(class_id), f"class-{int(class_id)}")


def resolve_classes(
    classes: Iterable[int | str], names: Mapping[int, str], present: Iterable[int] = ()
) -> list[int]:
    """Turn ``--classes`` items (ids, digit strings, names, ``class-<id>``) into class ids."""
    by_name = {n.lower(): i for i, n in names.items()}
    for i in present:
        by_name.setdefault(f"class-{int(i)}", int(i))
    out: list[int] = []
    for item in classes:
        if isinstance(item, (int, np.integer)):
            out.append(int(item))
            continue
        s = str(item).strip()
        if not s:
            continue
        if s.lstrip("-").isdigit():
            out.append(int(s))
        elif s.lower() in by_name:
            out.append(by_name[s.lower()])
        else:
            known = ", ".join(f"{n} ({i})" for i, n in sorted(names.items())) or "none named"
            raise UsageError(f"unknown class {s!r} in --classes; known classes: {known}")
    return sorted(set(out))


def linear_unit_factor(crs: Any) -> float:
    """Metres per CRS linear unit of a projected CRS (CRSError if it has no linear unit)."""
    from rasterio.errors import CRSError as RioCRSError

    try:
        _, factor = crs.linear_units_factor
    except RioCRSError as err:
        raise CRSError(
            f"the CRS {crs_label(crs)} has no usable linear unit, so areas in m² cannot be "
            f"computed ({err}); reproject the raster to a projected or geographic CRS"
        ) from err
    return float(factor)


#: A --simplify tolerance above this many pixels turns regions into crude polygons: warn.
SIMPLIFY_WARN_PX = 3.0


def pixel_size_m(transform: Affine, crs: Any, width: int, height: int) -> float:
    """Side in metres of a square with one pixel's area, so that --simplify is in metres.

    Projected CRS: CRS units × metres per unit. Geographic CRS: the pixel's east-west and
    north-south extents measured on the CRS's ellipsoid (pyproj Geod) at the raster centre,
    i.e. the metres per degree there; away from the centre the error grows with cos(latitude)
    differences, which is negligible for a scene-sized raster.
    """
    if not crs.is_geographic:
        return math.sqrt(abs(transform.a * transform.e - transform.b * transform.d)) * (
            linear_unit_factor(crs)
        )
    from pyproj import CRS as ProjCRS

    geod = ProjCRS.from_user_input(crs.to_wkt()).get_geod()
    assert geod is not None, "a geographic CRS always has an ellipsoid"
    cx, cy = transform @ (width / 2, height / 2)
    dx, dy = math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e)
    _, _, east_m = geod.inv(cx - dx / 2, cy, cx + dx / 2, cy)
    _, _, north_m = geod.inv(cx, cy - dy / 2, cx, cy + dy / 2)
    return math.sqrt(abs(east_m * north_m))


def crs_label(crs: Any) -> str | None:
    """``EPSG:<code>`` when the CRS has one, else its name (or WKT as a last resort)."""
    if crs is None:
        return None
    from rasterio.errors import CRSError as RioCRSError

    try:
        code = crs.to_epsg()
    except RioCRSError:
        code = None
    if code:
        return f"EPSG:{code}"
    return crs_name(crs) or str(crs.to_wkt())


def crs_name(crs: Any) -> str | None:
    """The CRS's human name (pyproj), or None when pyproj is missing or cannot parse it."""
    try:
        from pyproj import CRS
        from pyproj.exceptions import CRSError as ProjCRSError
    except ImportError:
        return None
    try:
        return str(CRS.from_user_input(crs.to_wkt()).name)
    except ProjCRSError:
        return None


def pixel_areas(geoms: np.ndarray) -> np.ndarray:
    """Planar areas in pixel units (exact for unsimplified pixel-corner polygons)."""
    return np.asarray(shapely.area(geoms), dtype=np.float64)


def planar_areas_m2(pixel_area: np.ndarray, transform: Affine, unit_factor: float) -> np.ndarray:
    """Pixel-space areas to m²: an affine map scales areas by |det|, units by factor²."""
    det = abs(transform.a * transform.e - transform.b * transform.d)
    return pixel_area * det * unit_factor**2


def geodesic_areas_m2(geoms: np.ndarray, geod: Any) -> np.ndarray:
    """Ellipsoidal areas (m²) of lon/lat polygons: |exterior| - sum |holes| per part."""
    out = np.zeros(len(geoms), dtype=np.float64)
    if len(geoms) == 0:
        return out
    parts, part_idx = shapely.get_parts(geoms, return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
    # Ring starts; the first ring of each part is its exterior, the others are holes.
    starts = np.searchsorted(coord_ring, np.arange(len(rings) + 1))
    is_exterior = np.ones(len(rings), dtype=bool)
    is_exterior[1:] = ring_part[1:] != ring_part[:-1]
    for r in range(len(rings)):
        lo, hi = starts[r], starts[r + 1]
        a, _ = geod.polygon_area_perimeter(coords[lo:hi, 0], coords[lo:hi, 1])
        a = abs(a)
        out[part_idx[ring_part[r]]] += a if is_exterior[r] else -a
    return out


def affine_apply(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Pixel (col, row) coordinates -> map coordinates, vectorised over all vertices."""
    t = transform
    off = np.array([t.c, t.f], dtype=np.float64)
    if t.b == 0 and t.d == 0:  # north-up grid: a scale and a shift (the common, fast case)
        scale = np.array([t.a, t.e], dtype=np.float64)
        return shapely.transform(geoms, lambda xy: xy * scale + off)

    def rotated(xy: np.ndarray) -> np.ndarray:
        out = np.empty_like(xy)
        out[:, 0] = t.a * xy[:, 0] + t.b * xy[:, 1] + t.c
        out[:, 1] = t.d * xy[:, 0] + t.e * xy[:, 1] + t.f
        return out

    return shapely.transform(geoms, rotated)


def densify_unit(geoms: np.ndarray) -> np.ndarray:
    """Insert a vertex at every pixel corner along edges, snapped to exact integers.

    GDAL writes a vertex only where a border turns, so two neighbours may describe a shared
    border with different vertices; coverage simplification needs them identical.
    """
    dense = shapely.segmentize(geoms, 1.0)
    return shapely.transform(dense, np.round)


def simplify_coverage(geoms: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Topology-preserving simplification that keeps shared borders shared.

    Uses GEOS coverage simplification (shapely >= 2.1); falls back to per-polygon
    ``preserve_topology`` simplification (borders may then drift apart slightly).
    """
    if tolerance_px <= 0 or len(geoms) == 0:
        return geoms
    if hasattr(shapely, "coverage_simplify"):
        return shapely.coverage_simplify(densify_unit(geoms), tolerance_px)
    return shapely.simplify(geoms, tolerance_px, preserve_topology=True)


def to_multipolygons(geoms: np.ndarray) -> np.ndarray:
    """Promote every geometry to MultiPolygon, so a layer has one geometry type."""
    out = np.empty(len(geoms), dtype=object)
    if len(geoms) == 0:
        return out
    parts, idx = shapely.get_parts(geoms, return_index=True)
    is_poly = shapely.get_type_id(parts) == shapely.GeometryType.POLYGON
    if is_poly.all() and np.array_equal(np.unique(idx), np.arange(len(geoms))):
        out[:] = shapely.multipolygons(parts, indices=idx)
        return out
    # polygonal parts only (make_valid may leave collapsed lines/points behind)
    for k, g in enumerate(geoms):
        polys = [p for p in shapely.get_parts(g) if p.geom_type == "Polygon"]
        out[k] = shapely.MultiPolygon(polys)
    return out


def dissolve_by_class(geoms: np.ndarray, class_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One MultiPolygon per class.

    Regions of one class never share an edge (they would be one region), so collecting them
    into a MultiPolygon is already their union; ``union_all`` is used only if that is invalid
    (e.g. after a simplification that is not coverage-preserving).
    """
    ids = np.unique(class_ids)
    out = np.empty(len(ids), dtype=object)
    for k, cid in enumerate(ids):
        parts = shapely.get_parts(geoms[class_ids == cid])
        multi = shapely.multipolygons(parts)
        if not shapely.is_valid(multi):
            multi = shapely.union_all(parts)
        out[k] = multi
    return to_multipolygons(out), ids


# ---- polygon extraction -----------------------------------------------------------------------
def _pack(batch: list[tuple[list[Any], float]]) -> tuple[np.ndarray, np.ndarray]:
    """Convert a batch of ``shapes`` rings to shapely polygons via one ragged-array call."""
    ring_arrays: list[np.ndarray] = []
    ring_ends: list[int] = []
    poly_ends: list[int] = []
    values = np.empty(len(batch), dtype=np.int64)
    n = 0
    for k, (rings, value) in enumerate(batch):
        for ring in rings:
            arr = np.asarray(ring, dtype=np.float64)
            ring_arrays.append(arr)
            n += len(arr)
            ring_ends.append(n)
        poly_ends.append(len(ring_ends))
        values[k] = value
    coords = np.concatenate(ring_arrays) if ring_arrays else np.empty((0, 2))
    ring_offsets = np.concatenate([[0], np.asarray(ring_ends, dtype=np.int64)])
    poly_offsets = np.concatenate([[0], np.asarray(poly_ends, dtype=np.int64)])
    geoms = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, coords, (ring_offsets, poly_offsets)
    )
    return np.asarray(geoms, dtype=object), values


def iter_region_batches(
    labels: np.ndarray, mask: np.ndarray | None, connectivity: int, batch: int = _BATCH
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(polygons_in_pixel_coords, class_ids)`` batches, one polygon per region."""
    from rasterio import features

    pending: list[tuple[list[Any], float]] = []
    for geom, value in features.shapes(
        labels, mask=mask, connectivity=connectivity, transform=Affine.identity()
    ):
        pending.append((geom["coordinates"], value))
        if len(pending) >= batch:
            yield _pack(pending)
            pending = []
    if pending:
        yield _pack(pending)


def polygonize(
    labels: np.ndarray, mask: np.ndarray | None, connectivity: int = 4, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """All regions of ``labels`` where ``mask`` is true: (polygons in pixel space, class ids)."""
    from tqdm import tqdm

    geoms: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    with tqdm(
        desc="polygonising",
        unit=" polygons",
        disable=not progress,
        file=sys.stderr,
    ) as bar:
        for g, v in iter_region_batches(labels, mask, connectivity):
            geoms.append(g)
            ids.append(v)
            bar.update(len(g))
    if not geoms:
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
    all_geoms = np.concatenate(geoms)
    if connectivity == 8:
        # 8-connected regions may touch themselves at a corner, which OGC calls invalid.
        bad = ~shapely.is_valid(all_geoms)
        if bad.any():
            all_geoms[bad] = _make_valid_polygonal(all_geoms[bad])
    return all_geoms, np.concatenate(ids)


def _make_valid_polygonal(geoms: np.ndarray) -> np.ndarray:
    """Repair invalid polygons keeping only polygonal output."""
    try:
        return np.asarray(shapely.make_valid(geoms, method="structure"), dtype=object)
    except TypeError:  # shapely < 2.1
        return to_multipolygons(np.asarray(shapely.make_valid(geoms), dtype=object))


# ---- output -------------------------------------------------------------------------------
def check_output(path: Path, overwrite: bool) -> None:
    """Fail before any work if the output cannot or must not be written."""
    if vector_format(path) == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError(
                f"{path}: GeoParquet output needs pyarrow, which is not installed; "
                "pip install 'mfaf[parquet]', or write .gpkg / .geojson / .shp instead"
            ) from None
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputPathError(f"output folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"output folder {folder} is not writable; choose another -o")
    if path.is_dir():
        raise OutputPathError(f"output {path} is a directory; give a file name")
    if not overwrite and any(p.exists() for p in output_files(path)):
        raise OutputExistsError(f"output {path} already exists; pass --overwrite to replace it")


def _temp_base(path: Path) -> Path:
    """A temp name in the target folder, unique per process and call (safe under xargs -P)."""
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    return path.with_name(f".{path.stem}.mfaf-tmp-{token}")


def _write_frame(gdf: Any, tmp: Path, driver: str, layer: str, geometry_type: str) -> None:
    """Write a GeoDataFrame to ``tmp`` (arrow path when available)."""
    if driver == "parquet":
        gdf.to_parquet(tmp, index=False)
        return
    kwargs: dict[str, Any] = {"driver": driver, "engine": "pyogrio", "index": False}
    if driver != "ESRI Shapefile":
        kwargs["layer"] = layer
    if len(gdf) == 0:
        kwargs["geometry_type"] = geometry_type
    try:
        import pyarrow  # noqa: F401

        gdf.to_file(tmp, use_arrow=True, **kwargs)
    except ImportError:
        gdf.to_file(tmp, **kwargs)


def write_vector_atomic(
    gdf: Any, path: Path, *, overwrite: bool, geometry_type: str = "Polygon"
) -> None:
    """Write to a temp file in the target folder, then rename; nothing partial is left behind."""
    driver = vector_format(path)
    base = _temp_base(path)
    is_shp = driver == "ESRI Shapefile"
    tmp = Path(str(base) + path.suffix)
    finals = output_files(path)
    temps = [Path(str(base) + f.name[len(path.stem) :]) for f in finals] if is_shp else [tmp]
    # GPKG/SQLite may leave journal files next to the temp file if interrupted.
    debris = [Path(str(tmp) + s) for s in ("-journal", "-wal", "-shm")]
    try:
        _write_frame(gdf, tmp, driver, path.stem, geometry_type)
        if not overwrite and any(p.exists() for p in finals):
            raise OutputExistsError(f"output {path} appeared while writing; pass --overwrite")
        for t, f in zip(temps, finals, strict=True):
            if t.exists():
                os.replace(t, f)
            elif is_shp and f.exists():
                f.unlink()  # stale sidecar of the replaced shapefile (e.g. an old .qix)
    except BaseException as err:
        for t in [*temps, *debris]:
            try:
                t.unlink()
            except FileNotFoundError:
                pass
        if isinstance(err, MfafError) or not isinstance(err, Exception):
            raise
        raise MfafError(f"could not write {path}: {err}") from err


# ---- the public entry point ------------------------------------------------------------
def _read_labels(
    src: Any, band: int, nodata: float | None
) -> tuple[np.ndarray, np.ndarray, int | float]:
    """Read one band once and build the validity mask (nodata and per-dataset masks out)."""
    from rasterio.enums import MaskFlags

    dtype = np.dtype(src.dtypes[band - 1])
    if dtype.kind not in "ui":
        raise InputError(
            f"{src.name} holds {dtype.name} values; a label raster must hold integer class ids"
        )
    if nodata is None:
        nodata = src.nodatavals[band - 1]
    if nodata is None:
        nodata = NODATA_LABEL
    try:
        data = src.read(band)
    except (OSError, RasterioError) as err:  # truncated / corrupt: GDAL notices when reading
        raise read_error(src.name, err) from None
    if data.dtype.name not in _NATIVE_DTYPES:
        lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
        if lo < np.iinfo(np.int32).min or hi > np.iinfo(np.int32).max:
            raise InputError(f"{src.name}: class ids out of the int32 range ({lo}..{hi})")
        data = data.astype(np.int32)
    valid = data != nodata
    if MaskFlags.per_dataset in src.mask_flag_enums[band - 1]:
        valid &= src.read_masks(band) > 0
    return data, valid, nodata


def vectorize_raster(
    label_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    sieve: int = 0,
    simplify: float = 0.0,
    min_area: float = 0.0,
    classes: Sequence[int | str] | None = None,
    dissolve: bool = False,
    overwrite: bool = False,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    nodata: float | None = None,
    connectivity: int = 4,
    band: int = 1,
    progress: bool = False,
    geojson_wgs84: bool = True,
) -> VectorizeResult:
    """Polygonise a label raster into a vector file (format from the extension).

    Args:
        label_path: GeoTIFF (or any GDAL raster) of integer class ids.
        out_path: .gpkg, .geojson, .parquet (GeoParquet) or .shp.
        sieve: merge regions smaller than this many pixels into their largest neighbour first.
        simplify: tolerance in metres whatever the CRS (converted with :func:`pixel_size_m`;
            topology-preserving, shared borders stay shared); warns above a few pixels.
        min_area: drop polygons smaller than this many m² (geodesic areas for geographic
            CRSs), after simplification.
        classes: keep only these class ids / names.
        dissolve: one MultiPolygon feature per class instead of one per region.
        overwrite: replace an existing output.
        class_names: id -> name (or a list indexed by id); default from the raster's tags.
        nodata: label value never polygonised; default the raster's nodata, else 255.
        connectivity: 4 or 8 (which pixel neighbours make one region).
        band: band holding the labels.
        progress: tqdm bar on stderr.
        geojson_wgs84: write .geojson in WGS 84 (EPSG:4326) as RFC 7946 asks; False keeps
            the raster's CRS.

    Returns:
        :class:`VectorizeResult`.
    """
    t0 = time.perf_counter()
    src_path, out = Path(label_path), Path(out_path)
    _check_options(connectivity, sieve, simplify, min_area)
    raster = _read_label_raster(src_path, out, overwrite, band, nodata)
    names = _with_class_names(raster.names, class_names)
    geoms, ids = _regions(raster, names, sieve, classes, connectivity, progress)
    shape, transform, crs = raster.labels.shape, raster.transform, raster.crs
    del raster  # the label array: polygons from here on
    if simplify > 0 and len(geoms):
        geoms, ids = _simplify(geoms, ids, simplify, transform, crs, shape, src_path.name)
    geoms, areas = _georeference(geoms, transform, crs)
    if min_area > 0:
        big = areas >= min_area
        geoms, ids, areas = geoms[big], ids[big], areas[big]
    geoms, ids, areas, geometry_type = _feature_geometries(geoms, ids, areas, dissolve)
    name_of = {int(u): class_name(names, int(u)) for u in np.unique(ids)}
    gdf, out_crs = _frame(geoms, ids, areas, name_of, crs, out, geojson_wgs84)
    write_vector_atomic(gdf, out, overwrite=overwrite, geometry_type=geometry_type)
    uniq, counts = np.unique(ids, return_counts=True)
    return VectorizeResult(
        input=str(src_path),
        output=str(out),
        format=vector_format(out),
        crs=crs_label(out_crs),
        n_polygons=len(gdf),
        per_class={name_of[int(u)]: int(c) for u, c in zip(uniq, counts, strict=True)},
        area_m2_per_class={name_of[int(u)]: float(areas[ids == u].sum()) for u in uniq},
        seconds=time.perf_counter() - t0,
    )


def _check_options(connectivity: int, sieve: int, simplify: float, min_area: float) -> None:
    if connectivity not in (4, 8):
        raise UsageError(f"connectivity must be 4 or 8, not {connectivity}")
    if sieve < 0 or simplify < 0 or min_area < 0:
        raise UsageError("--sieve, --simplify and --min-area must not be negative")


@dataclass
class _LabelRaster:
    """One label band read into memory, with what polygonising and measuring need."""

    crs: Any
    transform: Any
    names: dict[int, str]  # class names from the raster's tags
    labels: np.ndarray
    valid: np.ndarray
    nodata: int | float


def _read_label_raster(
    src_path: Path, out: Path, overwrite: bool, band: int, nodata: float | None
) -> _LabelRaster:
    """Open, check (output path first, before the possibly long read) and read the labels."""
    # require_crs=False: a missing CRS gets the error below, which says why vectors need one
    with open_raster(src_path, "label raster", require_crs=False) as src:
        check_output(out, overwrite)
        if not 1 <= band <= src.count:
            raise UsageError(f"band {band} out of range: {src_path} has {src.count} band(s)")
        if src.crs is None:
            raise CRSError(
                f"{src_path} has no CRS, so polygons cannot be georeferenced or measured in m²; "
                "assign one (e.g. gdal_edit.py -a_srs EPSG:xxxx)"
            )
        names = dict(parse_class_names(src.tags()))
        names.update(parse_class_names(src.tags(band)))
        labels, valid, nd = _read_labels(src, band, nodata)
        raster = _LabelRaster(src.crs, src.transform, names, labels, valid, nd)
    if not valid.any():
        raise InputError(f"{src_path} holds only nodata ({nd:g}); there is nothing to vectorise")
    return raster


def _with_class_names(
    names: dict[int, str], class_names: Mapping[int, str] | Sequence[str] | None
) -> dict[int, str]:
    """The raster's class names, overridden by the caller's (a mapping or a list by id)."""
    if class_names is None:
        return names
    if isinstance(class_names, Mapping):
        return names | {int(k): str(v) for k, v in class_names.items()}
    return names | dict(enumerate(str(v) for v in class_names))


def _regions(
    raster: _LabelRaster,
    names: Mapping[int, str],
    sieve: int,
    classes: Sequence[int | str] | None,
    connectivity: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(pixel-space polygons, their int64 class ids) of the sieved, class-filtered labels.

    The sieved labels and the class mask replace ``raster.labels`` / ``raster.valid``, so the
    arrays they were made from are freed before polygonising (one label array at a time)."""
    if sieve > 1:
        from rasterio import features

        valid = raster.valid
        raster.labels = features.sieve(
            raster.labels, int(sieve), mask=valid, connectivity=connectivity
        )
        raster.labels[~valid] = np.asarray(raster.nodata).astype(raster.labels.dtype)
    if classes:
        keep = np.asarray(resolve_classes(classes, names, present=()), dtype=np.int64)
        raster.valid = raster.valid & np.isin(raster.labels, keep)
    geoms, ids = polygonize(raster.labels, raster.valid, connectivity, progress=progress)
    return geoms, ids.astype(np.int64)


def _simplify(
    geoms: np.ndarray,
    ids: np.ndarray,
    simplify: float,
    transform: Any,
    crs: Any,
    shape: tuple[int, ...],
    what: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Simplify by ``simplify`` metres (in pixels, borders kept shared); drop what vanishes."""
    tolerance_px = simplify / pixel_size_m(transform, crs, shape[1], shape[0])
    if tolerance_px > SIMPLIFY_WARN_PX:
        log.warning(
            "--simplify %g m is %.1f pixels of %s: borders will be coarse (a tolerance "
            "of about 1 pixel keeps the shapes)", simplify, tolerance_px, what
        )  # fmt: skip
    geoms = simplify_coverage(geoms, tolerance_px)
    keep = ~shapely.is_empty(geoms)
    return geoms[keep], ids[keep]


def _georeference(geoms: np.ndarray, transform: Any, crs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(polygons in the raster's CRS, their areas in m²: geodesic for geographic CRSs)."""
    if crs.is_geographic:
        from pyproj import CRS as ProjCRS

        geod = ProjCRS.from_user_input(crs.to_wkt()).get_geod()
        geoms = affine_apply(geoms, transform)
        return geoms, geodesic_areas_m2(geoms, geod)
    factor = linear_unit_factor(crs)
    areas = planar_areas_m2(pixel_areas(geoms), transform, factor)
    return affine_apply(geoms, transform), areas


def _feature_geometries(
    geoms: np.ndarray, ids: np.ndarray, areas: np.ndarray, dissolve: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """One feature per region (MultiPolygon layer if any region split), or per class."""
    if dissolve:
        geoms, uids = dissolve_by_class(geoms, ids)
        areas = np.array([areas[ids == u].sum() for u in uids], dtype=np.float64)
        return geoms, uids, areas, "MultiPolygon"
    if len(geoms) and (shapely.get_type_id(geoms) != shapely.GeometryType.POLYGON).any():
        return to_multipolygons(geoms), ids, areas, "MultiPolygon"
    return geoms, ids, areas, "Polygon"


def _frame(
    geoms: np.ndarray,
    ids: np.ndarray,
    areas: np.ndarray,
    name_of: Mapping[int, str],
    crs: Any,
    out: Path,
    geojson_wgs84: bool,
) -> tuple[Any, Any]:
    """(GeoDataFrame of the features, the CRS written: WGS 84 for GeoJSON per RFC 7946)."""
    import geopandas as gpd

    gdf = gpd.GeoDataFrame(
        {
            "class_id": ids.astype(np.int32),
            "class_name": np.array([name_of[int(i)] for i in ids], dtype=object),
            "area_m2": areas,
        },
        geometry=gpd.GeoSeries(geoms, crs=crs.to_wkt()),
    )
    if geojson_wgs84 and vector_format(out) == "GeoJSON":
        from rasterio.crs import CRS as RioCRS

        from mfaf_cli.vectorize.rfc7946 import to_rfc7946

        # cut at 180°, valid round the poles (also for a 4326 raster with longitudes > 180)
        wgs84 = to_rfc7946(np.asarray(gdf.geometry.values, dtype=object), crs)
        return gdf.set_geometry(gpd.GeoSeries(wgs84, crs="EPSG:4326")), RioCRS.from_epsg(4326)
    return gdf, crs

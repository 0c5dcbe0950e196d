"""Across the antimeridian and round a pole: co-registration, overlap reports, GeoJSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from edge_scenes import antimeridian_pair, polar_pair
from pyproj import Geod
from rasterio.warp import Resampling, reproject
from shapely.geometry import Polygon, shape

from mfaf_cli.coreg.align import AlignedScene
from mfaf_cli.coreg.edges import bounds_in, read_bounds
from mfaf_cli.coreg.grid import grid_from_reference
from mfaf_cli.tiling.windows import Window
from mfaf_cli.vectorize.rfc7946 import fix_polygon, unwrap_ring

PAIRS = {"antimeridian": antimeridian_pair, "pole": polar_pair}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("edges")
    return {k: make(root) for k, make in PAIRS.items()}


def test_bounds_across_180_are_unwrapped() -> None:
    # a UTM-1N box across 180°: plain transform_bounds says left > right
    b = bounds_in(rasterio.CRS.from_epsg(32601), rasterio.CRS.from_epsg(4326),
                  (332400.0, 6654200.0, 333000.0, 6655200.0))  # fmt: skip
    assert b[0] < 180.0 < b[2] and b[2] - b[0] < 0.02


@pytest.mark.parametrize("name", list(PAIRS))
def test_windowed_warp_equals_whole_scene_warp(pairs, name: str) -> None:
    """Every 32 × 32 window of the SAR warped onto the optical grid matches GDAL's warp of the
    whole file (the source window of a block across 180° or round the pole is right)."""
    opt, sar = pairs[name]
    grid = grid_from_reference(opt)
    got = np.full((2, grid.height, grid.width), np.nan, dtype=np.float32)
    with AlignedScene({"sar": sar}, grid, kinds={"sar": "nearest"}) as scene:
        for r in range(0, grid.height, 32):
            for c in range(0, grid.width, 32):
                w = Window(r, c, min(32, grid.height - r), min(32, grid.width - c))
                vals, _ = scene.read_modality("sar", w)
                got[:, r : r + w.height, c : c + w.width] = vals
    want = np.full_like(got, np.nan)
    with rasterio.open(sar) as ds:
        reproject(ds.read(), want, src_transform=ds.transform, src_crs=ds.crs,
                  dst_transform=grid.transform, dst_crs=grid.crs, src_nodata=np.nan,
                  dst_nodata=np.nan, resampling=Resampling.nearest)  # fmt: skip
    both = np.isfinite(got).all(0) & np.isfinite(want).all(0)
    assert both.mean() > 0.75
    assert (np.isfinite(got).all(0) == np.isfinite(want).all(0)).mean() > 0.98
    # nearest: no kernel whose footprint GDAL scales by the block's size (bilinear blocks differ
    # from one whole warp, most round the pole); a wrong source window would differ everywhere
    assert (got[:, both] == want[:, both]).mean() > 0.99


def test_read_bounds_round_the_pole_span_the_file(pairs) -> None:
    opt, sar = pairs["pole"]
    grid = grid_from_reference(opt)
    with rasterio.open(sar) as ds:
        b = read_bounds(grid.crs, (-100.0, -100.0, 100.0, 100.0), ds)  # holds the pole
        assert (b[0], b[2]) == (ds.bounds.left, ds.bounds.right) and b[1] == pytest.approx(-90)
        b = read_bounds(grid.crs, (-100.0, 200.0, 100.0, 400.0), ds)  # across lon 180
        assert b[0] <= b[2]


@pytest.mark.parametrize("name", list(PAIRS))
def test_predict_info_and_geojson(pairs, runner, tmp_path: Path, name: str) -> None:
    opt, sar = pairs[name]
    out, vec = tmp_path / "map.tif", tmp_path / "map.geojson"
    code, _, err = runner("predict", "--optical", opt, "--sar", sar, "-o", out, "--vector", vec,
                          "--tile", 32, "--engine", "torch", "--quiet")  # fmt: skip
    assert code == 0, err
    with rasterio.open(out) as ds:
        labels = ds.read(1)
    assert (labels != 255).mean() > 0.75 and set(np.unique(labels)) <= {0, 1, 255}
    # the overlap report with the geographic file first (unwrapped round its longitudes)
    code, stdout, err = runner("info", sar, opt, "--json")
    assert code == 0, err
    overlap = json.loads(stdout)["overlap"]
    assert overlap["intersection"] is not None and overlap["per_file"][1]["percent"] > 50
    # RFC 7946: longitudes within ±180, every polygon valid, pieces never ~360° wide, and the
    # polygons' geodesic areas match the areas measured in the raster's own CRS
    geod = Geod(ellps="WGS84")
    feats = json.loads(vec.read_text())["features"]
    assert feats
    for f in feats:
        g = shape(f["geometry"])
        assert g.is_valid and -180 <= g.bounds[0] and g.bounds[2] <= 180
        area = abs(geod.geometry_area_perimeter(g.segmentize(0.5))[0])
        assert area == pytest.approx(f["properties"]["area_m2"], rel=0.08), f["properties"]
        if name == "antimeridian":
            assert all(p.bounds[2] - p.bounds[0] < 0.01 for p in getattr(g, "geoms", [g]))
    if name == "antimeridian":  # at least one polygon is cut in two at 180°
        assert any(shape(f["geometry"]).geom_type == "MultiPolygon" for f in feats)


@pytest.mark.parametrize("name", list(PAIRS))
def test_crs_4326_grid_is_continuous(pairs, name: str) -> None:
    opt, _ = pairs[name]
    grid = grid_from_reference(opt, crs="EPSG:4326")
    left, _, right, _ = grid.bounds
    assert grid.width < 500 and grid.height < 500
    if name == "antimeridian":
        assert left < 180.0 < right < 180.02
    else:
        assert (left, right) == pytest.approx((-180.0, 180.0))


def test_rfc7946_cuts_and_closes_exactly() -> None:
    square = Polygon([(179.0, 0.0), (181.0, 0.0), (181.0, 1.0), (179.0, 1.0)])
    wrapped = Polygon([(179.0, 0.0), (-179.0, 0.0), (-179.0, 1.0), (179.0, 1.0)])
    for g in (square, wrapped):
        parts = sorted(fix_polygon(g).geoms, key=lambda p: p.bounds[0])
        assert [p.bounds for p in parts] == [(-180.0, 0.0, -179.0, 1.0), (179.0, 0.0, 180.0, 1.0)]
    # a ring round the South Pole at 89° S closes along the pole: one polygon, the whole cap
    lons = np.linspace(-180.0, 180.0, 9)[:-1]
    ring = np.column_stack([np.r_[lons, lons[0]], np.full(9, -89.0)])
    closed = unwrap_ring(ring)
    assert closed[-3:, 1].tolist() == [-90.0, -90.0, -89.0]
    cap = fix_polygon(Polygon(ring))
    assert cap.is_valid and cap.bounds == (-180.0, -90.0, 180.0, -89.0)

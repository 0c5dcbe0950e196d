"""mfaf vectorize: polygons per region, class names, areas, filters, formats, atomic output."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from conftest import write_geotiff
from pyproj import Geod
from rasterio.transform import from_origin

from mfaf_cli.errors import (
    CRSError,
    InputError,
    MfafError,
    OutputExistsError,
    OutputPathError,
    UsageError,
)
from mfaf_cli.vectorize import polygons as vp
from mfaf_cli.vectorize import vectorize_raster

NAMES = ["background", "crop", "urban", "water"]
RES = 10.0


def scene() -> np.ndarray:
    """8 x 10 labels with six known 4-connected regions and a 6-pixel nodata block.

    class 0: one region (49 px) with a one-pixel hole (the water pixel);
    class 1 ("crop"): three regions of 9, 4 and 3 px; class 2: 8 px; class 3: 1 px.
    """
    a = np.zeros((8, 10), np.uint8)
    a[0:3, 5:8] = 1  # 9 px
    a[0:4, 8:10] = 2  # 8 px
    a[2, 2] = 3  # 1 px, a hole in class 0
    a[4:6, 0:2] = 1  # 4 px
    a[6, 9] = a[7, 8] = a[7, 9] = 1  # 3 px
    a[3:5, 5:8] = 255  # nodata, 6 px
    return a


def write_labels(
    path: Path,
    data: np.ndarray,
    crs: str | None = "EPSG:32630",
    transform=None,
    nodata: float | None = 255,
    tags: dict[str, str] | None = None,
) -> Path:
    """A one-band (H, W) label GeoTIFF on a RES m UTM grid, nodata 255 unless told."""
    transform = transform or from_origin(500_000.0, 4_500_000.0, RES, RES)
    return write_geotiff(path, data, crs, transform, nodata, tags=tags)


@pytest.fixture
def labels(tmp_path: Path) -> Path:
    return write_labels(tmp_path / "labels.tif", scene(), tags={"CLASS_NAMES": json.dumps(NAMES)})


def read(path: Path) -> gpd.GeoDataFrame:
    if path.suffix == ".parquet":
        return gpd.read_parquet(path)
    return gpd.read_file(path)


def by_class(gdf: gpd.GeoDataFrame) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for name, area in zip(gdf["class_name"], gdf["area_m2"], strict=True):
        out.setdefault(name, []).append(float(area))
    return {k: sorted(v) for k, v in out.items()}


# ---- regions, names, areas ---------------------------------------------------------------
def test_one_polygon_per_region_with_names_and_exact_areas(labels: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gpkg"
    res = vectorize_raster(labels, out)
    gdf = read(out)
    assert res.n_polygons == len(gdf) == 6
    assert res.per_class == {"background": 1, "crop": 3, "urban": 1, "water": 1}
    assert by_class(gdf) == {
        "background": [4900.0],
        "crop": [300.0, 400.0, 900.0],
        "urban": [800.0],
        "water": [100.0],
    }
    assert set(gdf["class_id"]) == {0, 1, 2, 3}
    assert gdf.crs.to_epsg() == 32630 and res.crs == "EPSG:32630"
    # area_m2 is the geometry's own planar area; the background keeps the water pixel as a hole
    np.testing.assert_allclose(gdf.geometry.area, gdf["area_m2"], rtol=1e-12)
    bg = gdf[gdf["class_name"] == "background"].geometry.iloc[0]
    assert len(bg.interiors) == 1
    water = gdf[gdf["class_name"] == "water"].geometry.iloc[0]
    # georeferenced: pixel (row 2, col 2) of a grid at (500000, 4500000), 10 m
    assert water.bounds == (500_020.0, 4_499_970.0, 500_030.0, 4_499_980.0)


def test_nodata_never_polygonised(labels: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gpkg"
    vectorize_raster(labels, out)
    gdf = read(out)
    assert 255 not in set(gdf["class_id"])
    covered = shapely.union_all(gdf.geometry.values)
    assert covered.area == pytest.approx((80 - 6) * RES * RES)
    hole = shapely.box(500_050.0, 4_499_950.0, 500_080.0, 4_499_970.0)  # rows 3-4, cols 5-7
    assert covered.intersection(hole).area == pytest.approx(0.0, abs=1e-6)


def test_nodata_from_raster_and_override(tmp_path: Path) -> None:
    a = scene()
    a[a == 255] = 0
    a[7, 0:3] = 9
    p = write_labels(tmp_path / "l.tif", a, nodata=9)
    vectorize_raster(p, tmp_path / "a.gpkg")
    assert 9 not in set(read(tmp_path / "a.gpkg")["class_id"])
    vectorize_raster(p, tmp_path / "b.gpkg", nodata=0)  # now 0 is skipped and 9 kept
    ids = set(read(tmp_path / "b.gpkg")["class_id"])
    assert 0 not in ids and 9 in ids


def test_class_names_from_tags_and_fallback(tmp_path: Path) -> None:
    a = np.array([[0, 0, 5], [0, 7, 5]], np.uint8)
    tags = {"CLASS_NAMES": json.dumps(["land", "lake"]), "CLASS_IDS": json.dumps([0, 5])}
    p = write_labels(tmp_path / "l.tif", a, tags=tags)
    res = vectorize_raster(p, tmp_path / "o.gpkg")
    assert res.per_class == {"land": 1, "lake": 1, "class-7": 1}
    p2 = write_labels(tmp_path / "m.tif", a, tags={"CLASS_0": "soil", "CLASS_7": "roof"})
    res = vectorize_raster(p2, tmp_path / "p.gpkg", class_names={5: "pond"})
    assert set(read(tmp_path / "p.gpkg")["class_name"]) == {"soil", "pond", "roof"}


def test_parse_class_names_variants() -> None:
    assert vp.parse_class_names({"CLASS_NAMES": '["a", "b"]'}) == {0: "a", 1: "b"}
    assert vp.parse_class_names({"CLASS_NAMES": '{"3": "x"}', "CLASS_4": "y"}) == {
        3: "x",
        4: "y",
    }
    meta = json.dumps({"classes": [{"id": 2, "name": "city", "color": [1, 2, 3]}]})
    assert vp.parse_class_names({"mfaf_meta": meta}) == {2: "city"}
    assert vp.parse_class_names({"OTHER": "1", "CLASS_X": "no"}) == {}


def test_projected_feet_units_are_converted_to_m2(tmp_path: Path) -> None:
    # EPSG:2272: NAD83 / Pennsylvania South (US survey feet); 10 ft pixels
    p = write_labels(
        tmp_path / "ft.tif",
        scene(),
        crs="EPSG:2272",
        transform=from_origin(2_000_000.0, 300_000.0, 10.0, 10.0),
    )
    vectorize_raster(p, tmp_path / "ft.gpkg")
    gdf = read(tmp_path / "ft.gpkg")
    ft = 1200.0 / 3937.0  # metres per US survey foot
    water = gdf[gdf["class_id"] == 3]["area_m2"].iloc[0]
    assert water == pytest.approx(100.0 * ft * ft, rel=1e-9)


def _ellipsoid_rect_area(lon0: float, lon1: float, lat0: float, lat1: float) -> float:
    """Exact area of a lon/lat rectangle on WGS84 (band between parallels), closed form."""
    a, f = 6378137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    e = math.sqrt(e2)
    b2 = a * a * (1 - e2)

    def q(phi: float) -> float:
        s = math.sin(phi)
        return s / (1 - e2 * s * s) + math.log((1 + e * s) / (1 - e * s)) / (2 * e)

    return (
        abs(math.radians(lon1 - lon0)) * b2 / 2 * abs(q(math.radians(lat1)) - q(math.radians(lat0)))
    )


def test_geographic_crs_gets_geodesic_area(tmp_path: Path) -> None:
    d = 0.001
    p = write_labels(
        tmp_path / "geo.tif",
        scene(),
        crs="EPSG:4326",
        transform=from_origin(-3.0, 40.0, d, d),
        tags={"CLASS_NAMES": json.dumps(NAMES)},
    )
    res = vectorize_raster(p, tmp_path / "geo.gpkg")
    gdf = read(tmp_path / "geo.gpkg")
    assert gdf.crs.to_epsg() == 4326 and res.crs == "EPSG:4326"
    urban = gdf[gdf["class_name"] == "urban"]["area_m2"].iloc[0]  # rows 0-3, cols 8-9
    lon0, lon1, lat0, lat1 = -3.0 + 8 * d, -3.0 + 10 * d, 40.0 - 4 * d, 40.0
    # pyproj reference on a densified rectangle, and the closed form
    n = 50
    xs = np.r_[
        np.linspace(lon0, lon1, n), np.full(n, lon1), np.linspace(lon1, lon0, n), np.full(n, lon0)
    ]
    ys = np.r_[
        np.full(n, lat0), np.linspace(lat0, lat1, n), np.full(n, lat1), np.linspace(lat1, lat0, n)
    ]
    ref, _ = Geod(ellps="WGS84").polygon_area_perimeter(xs, ys)
    assert urban == pytest.approx(abs(ref), rel=5e-3)
    assert urban == pytest.approx(_ellipsoid_rect_area(lon0, lon1, lat0, lat1), rel=5e-3)
    # the background polygon's hole (the water pixel) is subtracted
    bg = gdf[gdf["class_name"] == "background"]["area_m2"].iloc[0]
    total = _ellipsoid_rect_area(-3.0, -3.0 + 10 * d, 40.0 - 8 * d, 40.0)
    assert bg + gdf[gdf["class_name"] != "background"]["area_m2"].sum() == pytest.approx(
        total * 74 / 80, rel=5e-3
    )


def test_geodesic_area_subtracts_holes() -> None:
    outer = shapely.box(10.0, 50.0, 10.02, 50.02)
    inner = shapely.box(10.005, 50.005, 10.01, 50.01)
    poly = shapely.Polygon(outer.exterior.coords, [inner.exterior.coords])
    geod = Geod(ellps="WGS84")
    got = vp.geodesic_areas_m2(np.array([poly, shapely.MultiPolygon([inner])]), geod)
    ref_outer = abs(geod.geometry_area_perimeter(outer)[0])
    ref_inner = abs(geod.geometry_area_perimeter(inner)[0])
    np.testing.assert_allclose(got, [ref_outer - ref_inner, ref_inner], rtol=1e-9)


# ---- sieve, min-area, classes, dissolve, connectivity, simplify ------------------------------
@pytest.mark.parametrize(
    ("sieve", "expected"),
    [(0, 6), (2, 5), (4, 4), (5, 3)],  # 1-px water, then the 3-px, then the 4-px crop merge
)
def test_sieve_removes_small_regions_but_not_nodata(
    labels: Path, tmp_path: Path, sieve: int, expected: int
) -> None:
    res = vectorize_raster(labels, tmp_path / f"s{sieve}.gpkg", sieve=sieve)
    gdf = read(tmp_path / f"s{sieve}.gpkg")
    assert res.n_polygons == len(gdf) == expected
    assert gdf["area_m2"].sum() == pytest.approx(74 * RES * RES)  # nodata stays out
    if sieve >= 2:
        assert "water" not in set(gdf["class_name"])


def test_min_area_drops_small_polygons(labels: Path, tmp_path: Path) -> None:
    vectorize_raster(labels, tmp_path / "m.gpkg", min_area=350.0)
    gdf = read(tmp_path / "m.gpkg")
    assert sorted(gdf["area_m2"]) == [400.0, 800.0, 900.0, 4900.0]


def test_classes_filter_by_name_and_id(labels: Path, tmp_path: Path) -> None:
    res = vectorize_raster(labels, tmp_path / "c.gpkg", classes=["crop", "3"])
    assert res.per_class == {"crop": 3, "water": 1}
    assert set(read(tmp_path / "c.gpkg")["class_id"]) == {1, 3}
    with pytest.raises(UsageError, match=r"unknown class 'forest'.*crop"):
        vectorize_raster(labels, tmp_path / "d.gpkg", classes=["forest"])
    assert not (tmp_path / "d.gpkg").exists()


def test_dissolve_merges_by_class(labels: Path, tmp_path: Path) -> None:
    res = vectorize_raster(labels, tmp_path / "d.gpkg", dissolve=True)
    gdf = read(tmp_path / "d.gpkg")
    assert res.n_polygons == len(gdf) == 4
    crop = gdf[gdf["class_name"] == "crop"].iloc[0]
    assert crop.geometry.geom_type == "MultiPolygon" and len(crop.geometry.geoms) == 3
    assert crop["area_m2"] == pytest.approx(1600.0)
    assert set(gdf.geom_type) == {"MultiPolygon"}


def test_connectivity_8_joins_diagonal_pixels(tmp_path: Path) -> None:
    a = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], np.uint8)
    p = write_labels(tmp_path / "d.tif", a)
    r4 = vectorize_raster(p, tmp_path / "c4.gpkg")
    r8 = vectorize_raster(p, tmp_path / "c8.gpkg", connectivity=8)
    assert (r4.per_class, r8.per_class) == (
        {"class-0": 1, "class-1": 2},
        {"class-0": 1, "class-1": 1},
    )
    gdf = read(tmp_path / "c8.gpkg")
    assert gdf.is_valid.all()
    assert gdf[gdf["class_id"] == 1]["area_m2"].iloc[0] == pytest.approx(200.0)


def _blobs(n: int, cell: int, seed: int) -> np.ndarray:
    """Voronoi-ish regions: nearest of jittered seeds, random classes (irregular borders)."""
    rng = np.random.default_rng(seed)
    k = n // cell + 1
    pts = (
        np.stack(np.meshgrid(np.arange(k), np.arange(k), indexing="ij"), -1)
        + rng.uniform(0, 1, (k, k, 2))
    ).reshape(-1, 2) * cell
    cls = rng.integers(0, 4, len(pts))
    rr, cc = np.mgrid[0:n, 0:n]
    d = (rr[..., None] - pts[:, 0]) ** 2 + (cc[..., None] - pts[:, 1]) ** 2
    return cls[d.argmin(-1)].astype(np.uint8)


def test_simplify_keeps_shared_borders(tmp_path: Path) -> None:
    a = _blobs(64, 12, seed=3)
    a[:6, :6] = 255
    p = write_labels(tmp_path / "b.tif", a)
    raw = vectorize_raster(p, tmp_path / "raw.gpkg")
    simp = vectorize_raster(p, tmp_path / "simp.gpkg", simplify=2 * RES)
    g_raw, g = read(tmp_path / "raw.gpkg"), read(tmp_path / "simp.gpkg")
    assert simp.n_polygons == raw.n_polygons > 10
    assert (
        shapely.get_num_coordinates(g.geometry.values).sum()
        < 0.7 * shapely.get_num_coordinates(g_raw.geometry.values).sum()
    )
    geoms = g.geometry.values
    assert g.is_valid.all()
    assert shapely.coverage_is_valid(geoms)  # no overlaps, matching shared edges
    union = shapely.union_all(geoms)
    assert union.area == pytest.approx(g["area_m2"].sum(), rel=1e-9)  # no overlaps
    np.testing.assert_allclose(g.geometry.area, g["area_m2"], rtol=1e-9)
    # the footprint barely moves (tolerance 2 px on a 64-px scene)
    raw_union = shapely.union_all(g_raw.geometry.values)
    assert union.symmetric_difference(raw_union).area < 0.03 * raw_union.area


def test_pixel_size_m_projected_and_geographic() -> None:
    from rasterio.crs import CRS

    assert vp.pixel_size_m(from_origin(0, 0, 10, 10), CRS.from_epsg(32630), 5, 5) == 10.0
    assert vp.pixel_size_m(from_origin(0, 0, 10, 10), CRS.from_epsg(2229), 5, 5) == (
        pytest.approx(10 * 0.3048006096, rel=1e-9)  # US survey feet
    )
    # WGS 84 at the equator: 111 319.49 m per degree of longitude, 110 574.27 m of latitude
    d = 0.001
    got = vp.pixel_size_m(from_origin(-0.05, 0.05, d, d), CRS.from_epsg(4326), 100, 100)
    assert got == pytest.approx(math.sqrt(111.31949 * 110.57427), rel=1e-5)
    # at 60° N a degree of longitude is about half as long
    got60 = vp.pixel_size_m(from_origin(-0.05, 60.05, d, d), CRS.from_epsg(4326), 100, 100)
    assert got60 == pytest.approx(math.sqrt(55.80 * 111.41), rel=2e-3)


def test_simplify_is_metres_on_a_geographic_grid(tmp_path: Path, caplog) -> None:
    a = _blobs(64, 12, seed=3)
    d = 10 / 111_000  # about 10 m pixels at the equator
    geo = write_labels(tmp_path / "g.tif", a, crs="EPSG:4326", transform=from_origin(0, 0.01, d, d))
    raw = vectorize_raster(geo, tmp_path / "raw.gpkg")
    simp = vectorize_raster(geo, tmp_path / "s.gpkg", simplify=20.0)  # 2 px, not 20 degrees
    g_raw, g = read(tmp_path / "raw.gpkg"), read(tmp_path / "s.gpkg")
    assert simp.n_polygons == raw.n_polygons > 10
    n_raw = shapely.get_num_coordinates(g_raw.geometry.values).sum()
    assert shapely.get_num_coordinates(g.geometry.values).sum() < 0.7 * n_raw
    footprint = shapely.union_all(g_raw.geometry.values)
    moved = shapely.union_all(g.geometry.values).symmetric_difference(footprint).area
    assert moved < 0.03 * footprint.area
    assert "pixels" not in caplog.text
    vectorize_raster(geo, tmp_path / "coarse.gpkg", simplify=100.0)  # 10 px
    assert "--simplify 100 m is 10.0 pixels" in caplog.text


def test_geojson_is_wgs84_unless_kept(labels: Path, tmp_path: Path, runner) -> None:
    res = vectorize_raster(labels, tmp_path / "a.geojson")
    doc = json.loads((tmp_path / "a.geojson").read_text())
    lon, lat = doc["features"][0]["geometry"]["coordinates"][0][0]
    assert res.crs == "EPSG:4326" and -4 < lon < -2 and 40 < lat < 41  # UTM 30N, 500 km E
    code, _, err = runner("vectorize", labels, "-o", tmp_path / "b.geojson", "--keep-crs")
    assert code == 0, err
    assert gpd.read_file(tmp_path / "b.geojson").crs.to_epsg() == 32630


def test_progress_bar_counts_the_polygons(labels: Path, tmp_path: Path, capsys) -> None:
    vectorize_raster(labels, tmp_path / "p.gpkg", progress=True)
    assert "6 polygons" in capsys.readouterr().err


# ---- formats, overwrite, atomicity -----------------------------------------------------------
@pytest.mark.parametrize("ext", [".gpkg", ".geojson", ".parquet", ".shp"])
def test_formats_round_trip_with_crs(labels: Path, tmp_path: Path, ext: str) -> None:
    out = tmp_path / f"out{ext}"
    res = vectorize_raster(labels, out)
    gdf = read(out)
    assert len(gdf) == 6 and res.format == vp.VECTOR_FORMATS[ext]
    assert gdf.crs is not None and gdf.crs.to_epsg() == (4326 if ext == ".geojson" else 32630)
    assert {"class_id", "class_name", "area_m2"} <= set(gdf.columns)
    assert by_class(gdf)["crop"] == [300.0, 400.0, 900.0]
    if ext == ".gpkg":
        import pyogrio

        assert pyogrio.list_layers(out)[0][0] == "out"  # not the temp file's name
    leftovers = [f.name for f in tmp_path.iterdir() if "mfaf-tmp" in f.name]
    assert leftovers == []


def test_unsupported_extension_lists_supported(labels: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"\.gpkg, \.geojson, \.parquet, \.shp"):
        vectorize_raster(labels, tmp_path / "out.kml")


def test_refuses_to_overwrite(labels: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gpkg"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        vectorize_raster(labels, out)
    assert out.read_bytes() == b"keep me"
    vectorize_raster(labels, out, overwrite=True)
    assert len(read(out)) == 6


def test_shapefile_sidecars_count_as_existing_and_are_replaced(
    labels: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.shp"
    (tmp_path / "out.dbf").write_bytes(b"x")
    with pytest.raises(OutputExistsError):
        vectorize_raster(labels, out)
    (tmp_path / "out.qix").write_bytes(b"stale index")
    vectorize_raster(labels, out, overwrite=True)
    assert not (tmp_path / "out.qix").exists()
    assert len(read(out)) == 6


def test_output_folder_missing(labels: Path, tmp_path: Path) -> None:
    with pytest.raises(OutputPathError, match="does not exist"):
        vectorize_raster(labels, tmp_path / "nope" / "out.gpkg")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_output_folder_read_only(labels: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match="not writable"):
            vectorize_raster(labels, ro / "out.gpkg")
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("ext", [".gpkg", ".shp", ".parquet"])
@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_no_partial_output_on_failure(
    labels: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ext: str, exc: BaseException
) -> None:
    real = vp._write_frame

    def write_then_fail(gdf, tmp, *args, **kwargs):  # type: ignore[no-untyped-def]
        real(gdf, tmp, *args, **kwargs)  # the temp file(s) really exist when it fails
        assert any("mfaf-tmp" in f.name for f in tmp_path.iterdir())
        raise exc

    monkeypatch.setattr(vp, "_write_frame", write_then_fail)
    before = sorted(f.name for f in tmp_path.iterdir())
    with pytest.raises(type(exc) if isinstance(exc, KeyboardInterrupt) else MfafError):
        vectorize_raster(labels, tmp_path / f"out{ext}")
    assert sorted(f.name for f in tmp_path.iterdir()) == before


# ---- bad input ---------------------------------------------------------------------------
def test_raster_without_crs_is_refused(tmp_path: Path) -> None:
    p = write_labels(tmp_path / "nocrs.tif", scene(), crs=None)
    with pytest.raises(CRSError, match="no CRS"):
        vectorize_raster(p, tmp_path / "o.gpkg")
    assert not (tmp_path / "o.gpkg").exists()


def test_float_and_all_nodata_rasters_are_refused(tmp_path: Path) -> None:
    p = write_labels(tmp_path / "f.tif", scene().astype(np.float32))
    with pytest.raises(InputError, match="integer class ids"):
        vectorize_raster(p, tmp_path / "o.gpkg")
    q = write_labels(tmp_path / "n.tif", np.full((4, 4), 255, np.uint8))
    with pytest.raises(InputError, match="only nodata"):
        vectorize_raster(q, tmp_path / "o.gpkg")
    assert not (tmp_path / "o.gpkg").exists()


def test_wide_integer_labels_are_supported(tmp_path: Path) -> None:
    a = scene().astype(np.int64)
    a[a == 3] = 70_000
    p = write_labels(tmp_path / "i.tif", a, nodata=255)
    res = vectorize_raster(p, tmp_path / "o.gpkg")
    assert res.per_class["class-70000"] == 1


# ---- CLI -----------------------------------------------------------------------------------
def test_cli_json_line_and_filters(runner, labels: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.geojson"
    code, stdout, _ = runner(
        "vectorize",
        labels,
        "-o",
        out,
        "--classes",
        "water,1",
        "--min-area",
        "350",
        "--json",
        "--quiet",
    )
    assert code == 0
    lines = stdout.strip().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["polygons"] == 2 and rec["per_class"] == {"crop": 2}
    assert rec["output"] == str(out) and rec["crs"] == "EPSG:4326"  # GeoJSON: RFC 7946
    assert len(read(out)) == 2


def test_cli_errors_are_one_line_with_exit_codes(runner, labels: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.gpkg"
    code, _, err = runner("vectorize", labels, "-o", out, "--quiet")
    assert code == 0 and out.exists()
    code, _, err = runner("vectorize", labels, "-o", out)
    assert code == 2 and err.strip().startswith("Error:") and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = runner("vectorize", tmp_path / "missing.tif", "-o", tmp_path / "x.gpkg")
    assert code == 1 and "does not exist" in err and len(err.strip().splitlines()) == 1
    code, _, err = runner("vectorize", tmp_path, "-o", tmp_path / "x.gpkg")
    assert code == 1 and "directory" in err
    (tmp_path / "zero.tif").write_bytes(b"")
    code, _, err = runner("vectorize", tmp_path / "zero.tif", "-o", tmp_path / "x.gpkg")
    assert code == 1 and "zero-byte" in err
    (tmp_path / "text.tif").write_text("not a tiff")
    code, _, err = runner("vectorize", tmp_path / "text.tif", "-o", tmp_path / "x.gpkg")
    assert code == 1 and "not a readable raster" in err and "Traceback" not in err
    big = write_labels(tmp_path / "big.tif", np.tile(scene(), (32, 32)))  # 256 x 320
    (tmp_path / "trunc.tif").write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    code, _, err = runner("vectorize", tmp_path / "trunc.tif", "-o", tmp_path / "x.gpkg")
    assert code == 1 and "truncated or corrupt" in err and len(err.strip().splitlines()) == 1
    code, _, err = runner("vectorize", labels, "-o", tmp_path / "x.csv")
    assert code == 2 and ".parquet" in err
    code, _, err = runner("vectorize", labels, "-o", tmp_path / "x.gpkg", "--connectivity", "6")
    assert code == 2
    assert not (tmp_path / "x.gpkg").exists()
    assert [f.name for f in tmp_path.iterdir() if "mfaf-tmp" in f.name] == []


def test_rotated_grid_geometry_and_area(tmp_path: Path) -> None:
    from rasterio.transform import Affine

    t = Affine(8.0, 6.0, 1000.0, 6.0, -8.0, 5000.0)  # 10 m pixels, rotated ~37°
    sq = vp.affine_apply(np.array([shapely.box(0, 0, 1, 1)]), t)[0]
    assert sorted(sq.exterior.coords[:-1]) == sorted(
        [(1000.0, 5000.0), (1008.0, 5006.0), (1014.0, 4998.0), (1006.0, 4992.0)]
    )
    p = write_labels(tmp_path / "rot.tif", scene(), transform=t, tags={"CLASS_1": "crop"})
    vectorize_raster(p, tmp_path / "rot.gpkg")
    gdf = read(tmp_path / "rot.gpkg")
    assert by_class(gdf)["crop"] == pytest.approx([300.0, 400.0, 900.0])
    np.testing.assert_allclose(gdf.geometry.area, gdf["area_m2"], rtol=1e-9)


def test_filter_leaving_nothing_writes_an_empty_layer(labels: Path, tmp_path: Path) -> None:
    out = tmp_path / "none.gpkg"
    res = vectorize_raster(labels, out, classes=[42], dissolve=True)
    gdf = read(out)
    assert res.n_polygons == len(gdf) == 0 and res.per_class == {}
    assert gdf.crs.to_epsg() == 32630 and "area_m2" in gdf.columns

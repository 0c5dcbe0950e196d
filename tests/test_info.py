"""mfaf info: per-file description, footprint overlap, models listing, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pyproj import Geod
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

from mfaf_cli.cli import info


def run_json(runner, *args: object) -> dict:
    code, out, err = runner("info", *args, "--json")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_describes_each_file(runner, make_geotiff) -> None:
    a = make_geotiff(
        "s2.tif",
        np.zeros((4, 20, 30), np.uint16),
        nodata=0,
        descriptions=["red", "green", "blue", "nir"],
    )
    rec = run_json(runner, a)
    f = rec["files"][0]
    assert f["driver"] == "GTiff" and f["crs"] == "EPSG:32630"
    assert (f["width"], f["height"], f["count"]) == (30, 20, 4)
    assert f["resolution"] == [10.0, 10.0] and f["units"] == "metre"
    assert f["bounds"] == [500_000.0, 4_499_800.0, 500_300.0, 4_500_000.0]
    assert f["dtype"] == "uint16" and f["nodata"] == 0
    assert f["band_descriptions"] == ["red", "green", "blue", "nir"]
    assert rec["overlap"] is None

    code, out, _ = runner("info", a)
    assert code == 0
    for text in ("EPSG:32630", "UTM zone 30N", "30 x 20 px, 4 band(s)", "uint16", "1: red"):
        assert text in out


def test_float_nan_nodata_and_no_crs(runner, make_geotiff) -> None:
    a = make_geotiff("sar.tif", np.zeros((2, 8, 8), np.float32), nodata=float("nan"))
    b = make_geotiff("plain.tif", np.zeros((8, 8), np.uint8), crs=None)
    rec = run_json(runner, a, b)
    assert rec["files"][0]["nodata"] == "nan" and rec["files"][0]["dtype"] == "float32"
    assert rec["files"][1]["crs"] is None and rec["files"][1]["nodata"] is None
    assert rec["overlap"]["crs"] is None and "no CRS" in rec["overlap"]["note"]


def test_overlap_same_crs_exact(runner, make_geotiff) -> None:
    # A: 100 x 100 px at 10 m; B: 50 x 200 px at 20 m, shifted so that they share 500 x 1000 m
    a = make_geotiff("a.tif", np.zeros((100, 100), np.uint8))
    b = make_geotiff(
        "b.tif",
        np.zeros((200, 50), np.uint8),
        transform=from_origin(500_500.0, 4_500_000.0, 20.0, 20.0),
    )
    o = run_json(runner, a, b)["overlap"]
    assert o["crs"] == "EPSG:32630" and o["same_crs"] is True
    assert o["intersection"] == [500_500.0, 4_499_000.0, 501_000.0, 4_500_000.0]
    assert o["area_m2"] == pytest.approx(500.0 * 1000.0)
    assert [f["percent"] for f in o["per_file"]] == [50.0, 12.5]
    assert o["size_in_first_pixels"] == [50.0, 100.0]

    _, out, _ = runner("info", a, b)
    assert "50.00 % of" in out and "12.50 % of" in out and "0.5 km²" in out


def test_overlap_across_crs_in_first_files_crs(runner, make_geotiff) -> None:
    utm = from_origin(500_000.0, 4_500_000.0, 10.0, 10.0)
    a = make_geotiff("utm.tif", np.zeros((100, 100), np.uint8), transform=utm)
    # B covers the same ground in EPSG:4326 (its bbox, so slightly more)
    w, s, e, n = transform_bounds(
        CRS.from_epsg(32630), CRS.from_epsg(4326), 500_000, 4_499_000, 501_000, 4_500_000
    )
    d = (e - w) / 100
    b = make_geotiff(
        "geo.tif",
        np.zeros((int(np.ceil((n - s) / d)), 100), np.uint8),
        crs="EPSG:4326",
        transform=from_origin(w, n, d, d),
    )
    o = run_json(runner, a, b)["overlap"]
    assert o["same_crs"] is False and o["crs"] == "EPSG:32630"
    pa, pb = (f["percent"] for f in o["per_file"])
    assert pa == pytest.approx(100.0)
    assert 90.0 < pb < 100.0
    assert o["area_m2"] == pytest.approx(1e6, rel=1e-6)

    # first file geographic: area of the intersection is geodesic
    o2 = run_json(runner, b, a)["overlap"]
    assert o2["crs"] == "EPSG:4326"
    assert o2["area_m2"] == pytest.approx(1e6, rel=0.05)


def test_disjoint_inputs(runner, make_geotiff) -> None:
    a = make_geotiff("a.tif", np.zeros((10, 10), np.uint8))
    b = make_geotiff(
        "b.tif", np.zeros((10, 10), np.uint8), transform=from_origin(600_000, 4_500_000, 10, 10)
    )
    o = run_json(runner, a, b)["overlap"]
    assert o["intersection"] is None and o["area_m2"] == 0.0
    assert [f["percent"] for f in o["per_file"]] == [0.0, 0.0]
    code, out, _ = runner("info", a, b)
    assert code == 0 and "do not overlap" in out


def test_pure_helpers() -> None:
    assert info.bbox_intersection([(0, 0, 10, 10), (5, -5, 20, 8)]) == (5, 0, 10, 8)
    assert info.bbox_intersection([(0, 0, 10, 10), (10, 0, 20, 10)]) is None
    crs = CRS.from_epsg(4326)
    got = info.box_area_m2((10.0, 50.0, 10.1, 50.1), crs)
    n = 200
    xs = np.r_[np.linspace(10, 10.1, n), np.full(n, 10.1), np.linspace(10.1, 10, n), np.full(n, 10)]
    ys = np.r_[np.full(n, 50), np.linspace(50, 50.1, n), np.full(n, 50.1), np.linspace(50.1, 50, n)]
    ref, _ = Geod(ellps="WGS84").polygon_area_perimeter(xs, ys)
    assert got == pytest.approx(abs(ref), rel=1e-4)
    assert info.box_area_m2((0, 0, 3, 2), CRS.from_epsg(2272)) == pytest.approx(
        6 * (1200 / 3937) ** 2
    )


def test_models_listing(runner) -> None:
    code, out, err = runner("info", "--models")
    assert code == 0, err
    assert "mfafnet-s" in out and "comix-s" in out
    rec = run_json(runner, "--models")
    names = {a["name"] for a in rec["architectures"]}
    assert {"mfafnet-s", "unet"} <= names
    mfaf = next(a for a in rec["architectures"] if a["name"] == "mfafnet-s")
    assert mfaf["modalities"] == ["optical", "sar"]
    assert isinstance(rec["weights"], list)


def test_models_listing_reads_manifest(runner, tmp_path: Path, monkeypatch) -> None:
    manifest = {
        "format_version": 1,
        "models": [
            {
                "name": "water-s1s2",
                "file": "water-s1s2.safetensors",
                "arch": "mfafnet-s",
                "modalities": ["optical", "sar"],
                "classes": ["not-water", "water"],
                "trained": True,
                "default": True,
                "description": "flood mapping",
            }
        ],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("MFAF_WEIGHTS_DIR", str(tmp_path))
    rec = run_json(runner, "--models")
    (w,) = rec["weights"]
    assert w["name"] == "water-s1s2" and w["default"] is True and w["present"] is False
    _, out, _ = runner("info", "--models")
    assert "water-s1s2" in out and "FILE MISSING" in out and "default" in out


def test_bad_input_one_line_exit_1(runner, tmp_path: Path, make_geotiff) -> None:
    good = make_geotiff("good.tif", np.zeros((4, 4), np.uint8))
    (tmp_path / "zero.tif").write_bytes(b"")
    (tmp_path / "notes.tif").write_text("hello, not a raster")
    (tmp_path / "trunc.tif").write_bytes(good.read_bytes()[:200])
    cases = {
        tmp_path / "missing.tif": "does not exist",
        tmp_path: "is a directory",
        tmp_path / "zero.tif": "zero-byte",
        tmp_path / "notes.tif": "not a readable raster",
        tmp_path / "trunc.tif": "truncated or corrupt",
    }
    for path, text in cases.items():
        code, out, err = runner("info", good, path)
        assert code == 1, (path, err)
        assert out == ""
        assert err.startswith("Error: ") and text in err and len(err.strip().splitlines()) == 1


def test_usage_errors_exit_2(runner, make_geotiff) -> None:
    a = make_geotiff("a.tif", np.zeros((4, 4), np.uint8))
    assert runner("info")[0] == 2
    code, _, err = runner("info", a, "--models")
    assert code == 2 and "not both" in err

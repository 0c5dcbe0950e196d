"""Co-registration: target grid, input checks, per-window warping, SAR power averaging, bands."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pyproj import Transformer
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

from mfaf_cli.coreg import AlignedScene, Grid, grid_from_reference
from mfaf_cli.coreg.align import (
    convert_units,
    detect_sar_units,
    reflect_pad,
    select_bands,
)
from mfaf_cli.errors import BandMismatchError, CRSError, InputError, NoOverlapError, UsageError
from mfaf_cli.metadata import ModalitySpec, ModelMeta, Normalisation, default_classes
from mfaf_cli.normalize import band_percentiles
from mfaf_cli.tiling.windows import Window

UTM_ORIGIN = (500_000.0, 4_500_000.0)


def utm(res: float = 10.0, x0: float = UTM_ORIGIN[0], y0: float = UTM_ORIGIN[1]):
    return from_origin(x0, y0, res, res)


def meta_for(n_opt: int = 4, n_sar: int = 1, sar_units: str = "db") -> ModelMeta:
    return ModelMeta(
        arch="mfafnet-s",
        modalities=(
            ModalitySpec(
                "optical", ("red", "green", "blue", "nir")[:n_opt], Normalisation.identity(n_opt)
            ),
            ModalitySpec("sar", ("vv", "vh")[:n_sar], Normalisation.identity(n_sar), sar_units),
        ),
        classes=default_classes(2),
    )


def sar_partial_pair(make_geotiff, rng, h=60, w=80):
    """Optical in UTM 30N at 10 m; SAR in EPSG:4326 at ~20 m covering its west and south part.

    SAR values are a smooth dB plane in lon/lat so warped values can be checked too.
    """
    opt = make_geotiff(
        "opt.tif", rng.integers(1, 3000, (4, h, w)).astype("uint16"), transform=utm(), nodata=0
    )
    left, bottom, right, top = transform_bounds(
        "EPSG:32630", "EPSG:4326", UTM_ORIGIN[0], UTM_ORIGIN[1] - 10 * h,
        UTM_ORIGIN[0] + 10 * w, UTM_ORIGIN[1]
    )  # fmt: skip
    dx, dy = 0.00024, 0.00018  # ~20 m at 40.6° N
    # West edge outside the scene, east edge ~60 % across, top ~30 % down.
    s_left = left - 5 * dx
    s_top = top - 0.3 * (top - bottom)
    sw = int(np.ceil((left + 0.6 * (right - left) - s_left) / dx))
    sh = int(np.ceil((s_top - bottom) / dy)) + 5
    lon = s_left + dx * (np.arange(sw) + 0.5)
    lat = s_top - dy * (np.arange(sh) + 0.5)
    db = -15.0 + 200.0 * (lon[None, :] - left) + 150.0 * (lat[:, None] - bottom)
    sar_t = from_origin(s_left, s_top, dx, dy)
    sar = make_geotiff("sar.tif", db[None].astype("float32"), crs="EPSG:4326", transform=sar_t)
    return opt, sar, (s_left, s_top - sh * dy, s_left + sw * dx, s_top), (dx, dy)


def grid_centres_lonlat(grid: Grid):
    rows, cols = np.mgrid[0 : grid.height, 0 : grid.width]
    t = grid.transform
    x = t.c + t.a * (cols + 0.5)
    y = t.f + t.e * (rows + 0.5)
    tr = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    return tr.transform(x, y)


# ---- pure helpers -----------------------------------------------------------------------------
def test_db_linear_round_trip_and_values():
    x = np.array([-20.0, -10.0, 0.0, 3.0], dtype=np.float32)
    lin = convert_units(x, "db", "linear")
    np.testing.assert_allclose(lin, [0.01, 0.1, 1.0, 10**0.3], rtol=1e-6)
    np.testing.assert_allclose(convert_units(lin, "linear", "db"), x, atol=1e-5)
    assert convert_units(np.zeros(1, np.float32), "linear", "db")[0] == pytest.approx(-100.0)


def test_detect_sar_units():
    assert detect_sar_units(np.array([-12.0, -8.0, 1.0]), "float32") == "db"
    assert detect_sar_units(np.array([0.01, 0.2, np.nan]), "float32") == "linear"
    assert detect_sar_units(np.array([-5.0]), "int16") == "linear"  # DN, not dB


def test_integer_sar_is_linear_without_decoding_and_float_sar_is_sampled(tmp_path, monkeypatch):
    """A SAR file of integers is linear (DN) whatever its values: its scene opens without
    decoding a sample of it; a float file's units come from its sample, read as float32
    with nodata compared in float64 (-9999 is nodata, not a negative dB value)."""
    import rasterio

    from mfaf_cli.coreg import align

    sampled: list[str] = []
    real = align._units_sample

    def spy(ds, indexes):
        sampled.append(ds.dtypes[indexes[0] - 1])
        values = real(ds, indexes)
        assert values.dtype == np.float32
        return values

    monkeypatch.setattr(align, "_units_sample", spy)
    prof = dict(driver="GTiff", width=64, height=64, count=1, crs="EPSG:32630",
                transform=utm(20.0))  # fmt: skip
    ints = tmp_path / "ints.tif"
    with rasterio.open(ints, "w", dtype="int16", **prof) as ds:
        ds.write(np.full((1, 64, 64), -12, np.int16))
    floats = tmp_path / "floats.tif"
    data = np.full((1, 64, 64), -9999.0, np.float32)
    data[0, :10] = 0.05  # linear power; the rest nodata
    with rasterio.open(floats, "w", dtype="float32", nodata=-9999.0, **prof) as ds:
        ds.write(data)
    grid = grid_from_reference(ints)
    with AlignedScene({"sar": ints}, grid, kinds={"sar": "sar"}) as scene:
        assert scene.units["sar"] == "linear" and sampled == []
    with AlignedScene({"sar": floats}, grid, kinds={"sar": "sar"}) as scene:
        assert scene.units["sar"] == "linear" and sampled == ["float32"]


def test_sar_units_are_told_from_a_few_blocks(tmp_path, monkeypatch):
    """The units of a SAR file come from a few whole blocks spread over it (a fixed cost), not
    a decimated read of every block; a file whose sampled blocks are all nodata falls back
    to the decimated read of the whole file."""
    import rasterio

    from mfaf_cli.coreg import align
    from mfaf_cli.coreg.align import _units_sample

    monkeypatch.setattr(align, "UNITS_DECODE_PIXELS", 4 * 128 * 128)  # 4 of the 64 blocks
    path = tmp_path / "s1.tif"
    prof = dict(
        driver="GTiff",
        width=1024,
        height=1024,
        count=1,
        dtype="float32",
        nodata=-9999.0,
        crs="EPSG:32630",
        transform=utm(20.0),
        tiled=True,
        blockxsize=128,
        blockysize=128,
    )
    data = np.full((1, 1024, 1024), -12.0, np.float32)
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(data)
    with rasterio.open(path) as ds:
        values = _units_sample(ds, [1])
    assert values.size == 4 * 128 * 128 and detect_sar_units(values, "float32") == "db"
    data[:] = -9999.0
    data[0, 1000:, 1000:] = -14.0  # one corner holds data
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(data)
    with rasterio.open(path) as ds:
        values = _units_sample(ds, [1])
    assert values.size == 256 * 256  # the decimated whole file
    assert detect_sar_units(values, "float32") == "db"


def test_select_bands_by_number_and_name():
    desc = ["B1", "B2", "Red", "NIR"]
    assert select_bands([4, 3], 4, desc, path="a.tif", modality="optical") == [4, 3]
    assert select_bands(["nir", "RED", "b1"], 4, desc, path="a.tif", modality="optical") == [
        4,
        3,
        1,
    ]
    assert select_bands(None, 4, desc, path="a.tif", modality="optical") == [1, 2, 3, 4]
    with pytest.raises(BandMismatchError, match=r"--optical-bands 5 is out of range.*4 band"):
        select_bands([5], 4, desc, path="a.tif", modality="optical")
    with pytest.raises(BandMismatchError, match=r"'swir'.*1=B1"):
        select_bands(["swir"], 4, desc, path="a.tif", modality="optical")
    # by meaning: B08 and "nir" find the band described as NIR; B4 finds "Red"
    assert select_bands(["B08", "b4"], 4, desc, path="a.tif", modality="optical") == [4, 3]


def test_reflect_pad_mirrors_without_repeating_the_edge():
    a = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    p = reflect_pad(a, ((0, 2), (0, 2)))
    assert p.shape == (1, 4, 5)
    np.testing.assert_array_equal(p[0, 0], [0, 1, 2, 1, 0])
    np.testing.assert_array_equal(p[0, 2], p[0, 0])


# ---- grid -------------------------------------------------------------------------------------
def test_grid_from_reference_and_overrides(make_geotiff):
    path = make_geotiff("ref.tif", np.ones((1, 50, 70), "uint8"), transform=utm())
    g = grid_from_reference(path)
    assert (g.width, g.height, g.res) == (70, 50, (10.0, 10.0))
    assert g.bounds == (500_000.0, 4_499_500.0, 500_700.0, 4_500_000.0)
    assert g.window_transform(Window(2, 3, 4, 4)) @ (0, 0) == (500_030.0, 4_499_980.0)

    g20 = grid_from_reference(path, resolution=20)
    assert (g20.width, g20.height, g20.bounds) == (35, 25, g.bounds)

    gb = grid_from_reference(path, bounds=(500_100, 4_499_600, 500_300, 4_499_900))
    assert (gb.width, gb.height) == (20, 30)
    assert gb.transform.c == 500_100 and gb.transform.f == 4_499_900

    gll = grid_from_reference(path, crs="EPSG:4326")
    assert gll.crs.to_epsg() == 4326
    lb = transform_bounds("EPSG:32630", "EPSG:4326", *g.bounds)
    assert gll.bounds[0] <= lb[0] + gll.res[0] and gll.bounds[2] >= lb[2] - gll.res[0]

    with pytest.raises(UsageError, match="--crs"):
        grid_from_reference(path, crs="EPSG:not-a-crs")
    with pytest.raises(UsageError, match="bounds"):
        grid_from_reference(path, bounds=(1, 1, 0, 2))


def test_input_checks_name_the_problem_and_fix(make_geotiff, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        grid_from_reference(tmp_path / "missing.tif")
    with pytest.raises(InputError, match="is a directory"):
        grid_from_reference(tmp_path)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="not a readable raster"):
        grid_from_reference(empty)
    text = tmp_path / "notes.tif"
    text.write_text("this is not a GeoTIFF\n" * 20)
    with pytest.raises(InputError, match=r"notes.tif is not a readable raster \("):
        grid_from_reference(text)
    nocrs = make_geotiff("nocrs.tif", np.ones((1, 8, 8), "uint8"), crs=None)
    with pytest.raises(CRSError, match=r"has no CRS; assign one with gdal_edit\.py -a_srs"):
        grid_from_reference(nocrs)
    if os.geteuid() != 0:  # root can read anything
        locked = make_geotiff("locked.tif", np.ones((1, 8, 8), "uint8"))
        locked.chmod(0)
        try:
            with pytest.raises(InputError, match="permission"):
                grid_from_reference(locked)
        finally:
            locked.chmod(0o644)


def test_disjoint_and_sub_pixel_overlaps_are_refused(make_geotiff):
    opt = make_geotiff("opt.tif", np.ones((4, 20, 20), "uint16"), transform=utm())
    far = make_geotiff("far.tif", np.ones((1, 20, 20), "float32"), transform=utm(10, 600_000))
    g = grid_from_reference(opt)
    with pytest.raises(NoOverlapError, match="does not overlap"):
        AlignedScene({"optical": opt, "sar": far}, g)
    # SAR touching the optical's east edge with 4 m of overlap (< one 10 m pixel).
    sliver = make_geotiff("sliver.tif", np.ones((1, 20, 20), "float32"), transform=utm(10, 500_196))
    with pytest.raises(NoOverlapError, match="less than one target pixel"):
        AlignedScene({"optical": opt, "sar": sliver}, g)


# ---- aligned reads ----------------------------------------------------------------------------
def test_utm_optical_with_partial_wgs84_sar(make_geotiff, rng):
    opt, sar, sar_bounds, (dx, dy) = sar_partial_pair(make_geotiff, rng)
    g = grid_from_reference(opt)
    scene = AlignedScene({"optical": opt, "sar": sar}, g)
    assert scene.units == {"sar": "db"}
    arrays, valid = scene.read(Window(0, 0, g.height, g.width))
    assert arrays["optical"].shape == (4, g.height, g.width)
    assert arrays["sar"].shape == (1, g.height, g.width)

    # Independent footprint: grid pixel centres inside the SAR raster's lon/lat rectangle.
    lon, lat = grid_centres_lonlat(g)
    sl, sb, sr, st = sar_bounds
    inside = (lon > sl) & (lon < sr) & (lat > sb) & (lat < st)
    assert 0.2 < inside.mean() < 0.8  # genuinely partial
    np.testing.assert_array_equal(valid, inside)
    assert np.isfinite(arrays["sar"][0][inside]).all()
    assert np.isnan(arrays["sar"][0][~inside]).all()
    # Optical on its own grid is read untouched.
    with __import__("rasterio").open(opt) as ds:
        np.testing.assert_array_equal(arrays["optical"], ds.read().astype(np.float32))
    # The warped SAR is the dB plane sampled at the pixel centres (no shift or flip).
    left, bottom = transform_bounds("EPSG:32630", "EPSG:4326", *g.bounds)[:2]
    expect = -15.0 + 200.0 * (lon - left) + 150.0 * (lat - bottom)
    core = (lon > sl + dx) & (lon < sr - dx) & (lat > sb + dy) & (lat < st - dy)
    np.testing.assert_allclose(arrays["sar"][0][core], expect[core], atol=0.02)

    # Windows read the same pixels as the full read (per-window warping is seamless).
    w = Window(17, 23, 32, 32)
    a2, v2 = scene.read(w)
    np.testing.assert_array_equal(v2, valid[w.slices])
    np.testing.assert_allclose(a2["sar"][0][v2], arrays["sar"][0][w.slices][v2], atol=1e-4)
    scene.close()


def test_sar_downsampling_averages_linear_power(make_geotiff, rng):
    # Optical at 20 m, SAR at 10 m on the same UTM grid origin: each output pixel = 2x2 SAR.
    opt = make_geotiff(
        "opt.tif", rng.integers(1, 100, (4, 8, 8)).astype("uint16"), transform=utm(20)
    )
    db = rng.uniform(-25, 0, (1, 16, 16)).astype("float32")
    sar = make_geotiff("sar.tif", db, transform=utm(10))
    scene = AlignedScene({"optical": opt, "sar": sar}, grid_from_reference(opt))
    assert scene.units["sar"] == "db"
    arrays, valid = scene.read(Window(0, 0, 8, 8))
    assert valid.all()
    blocks = db[0].astype(np.float64).reshape(8, 2, 8, 2)
    expect = 10 * np.log10((10 ** (blocks / 10)).mean(axis=(1, 3)))
    np.testing.assert_allclose(arrays["sar"][0], expect, atol=1e-4)
    mean_db = blocks.mean(axis=(1, 3))
    assert np.abs(arrays["sar"][0] - mean_db).max() > 0.5  # averaging dB would be wrong

    # Linear-power input is averaged as is, and converted to dB when the model wants dB.
    lin = make_geotiff("lin.tif", (10 ** (db / 10)).astype("float32"), transform=utm(10))
    s_lin = AlignedScene({"optical": opt, "sar": lin}, grid_from_reference(opt))
    assert s_lin.units["sar"] == "linear"
    a_lin, _ = s_lin.read(Window(0, 0, 8, 8))
    np.testing.assert_allclose(a_lin["sar"][0], 10 ** (expect / 10), rtol=1e-4)
    s_db = AlignedScene(
        {"optical": opt, "sar": lin}, grid_from_reference(opt), meta=meta_for(sar_units="db")
    )
    assert s_db.units["sar"] == "db"
    np.testing.assert_allclose(s_db.read(Window(0, 0, 8, 8))[0]["sar"][0], expect, atol=1e-4)


def test_categorical_rasters_are_resampled_nearest(make_geotiff, rng):
    opt = make_geotiff("opt.tif", np.ones((4, 8, 8), "uint16"), transform=utm(20))
    lab = rng.integers(0, 5, (1, 16, 16)).astype("uint8")
    labp = make_geotiff("label.tif", lab, transform=utm(10, UTM_ORIGIN[0] + 3, UTM_ORIGIN[1]))
    scene = AlignedScene({"optical": opt, "label": labp}, grid_from_reference(opt))
    arrays, valid = scene.read(Window(0, 0, 8, 8))
    got = arrays["label"][0][valid]
    assert set(np.unique(got)) <= set(np.unique(lab))  # no blended class ids


def test_nodata_nan_inf_and_declared_nodata_are_invalid(make_geotiff):
    data = np.full((4, 10, 10), 500, "uint16")
    data[:, 2, 3] = 0  # declared nodata
    opt = make_geotiff("opt.tif", data, transform=utm(), nodata=0)
    sdata = np.full((1, 10, 10), -10.0, "float32")
    sdata[0, 5, 5] = np.nan
    sdata[0, 6, 1] = np.inf
    sar = make_geotiff("sar.tif", sdata, transform=utm())
    scene = AlignedScene({"optical": opt, "sar": sar}, grid_from_reference(opt))
    arrays, valid = scene.read(Window(0, 0, 10, 10))
    bad = {(2, 3), (5, 5), (6, 1)}
    assert {tuple(ix) for ix in np.argwhere(~valid)} == bad
    assert np.isnan(arrays["optical"][:, 2, 3]).all()
    assert np.isnan(arrays["sar"][0, 5, 5]) and arrays["optical"][0, 5, 5] == 500


def test_window_past_the_grid_is_reflect_padded_and_invalid(make_geotiff, rng):
    data = rng.integers(1, 1000, (4, 20, 30)).astype("uint16")
    opt = make_geotiff("opt.tif", data, transform=utm())
    sar = make_geotiff(
        "sar.tif", rng.normal(-10, 2, (1, 20, 30)).astype("float32"), transform=utm()
    )
    scene = AlignedScene({"optical": opt, "sar": sar}, grid_from_reference(opt))
    arrays, valid = scene.read(Window(0, 0, 32, 32))
    assert arrays["optical"].shape == (4, 32, 32) and valid.shape == (32, 32)
    assert valid[:20, :30].all() and not valid[20:].any() and not valid[:, 30:].any()
    np.testing.assert_array_equal(arrays["optical"][:, 20, :30], data[:, 18])  # reflect
    np.testing.assert_array_equal(arrays["optical"][:, :20, 31], data[:, :, 27])
    assert np.isfinite(arrays["sar"]).all()


def test_band_selection_and_model_band_count(make_geotiff, rng):
    data = rng.integers(0, 1000, (13, 12, 12)).astype("int16")
    desc = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
    s2 = make_geotiff("s2.tif", data, transform=utm(), descriptions=desc)
    bare = make_geotiff("bare.tif", data, transform=utm())  # no band descriptions
    s1 = make_geotiff("s1.tif", rng.normal(-10, 2, (2, 12, 12)).astype("float32"), transform=utm())
    g = grid_from_reference(s2)
    meta = meta_for()
    with pytest.raises(BandMismatchError) as e:
        AlignedScene({"optical": bare, "sar": s1}, g, meta=meta)
    msg = str(e.value)
    assert "model mfafnet-s takes 4 optical bands: red ≈ Sentinel-2 B4, green ≈ B3" in msg
    assert "bare.tif has 13 bands and no band descriptions" in msg
    assert "(4,3,2,8 if it is a 13-band Sentinel-2 L1C stack" in msg

    by_index = AlignedScene(
        {"optical": s2, "sar": s1}, g, bands={"optical": [4, 3, 2, 8], "sar": [1]}, meta=meta
    )
    by_name = AlignedScene(
        {"optical": s2, "sar": s1}, g, bands={"optical": ["b4", "B3", "b2", "b8"], "sar": [1]}
    )
    by_meaning = AlignedScene({"optical": s2, "sar": bare_sar(make_geotiff, rng)}, g, meta=meta)
    assert by_meaning.band_choices["optical"].indexes == (4, 3, 2, 8)
    assert by_meaning.band_choices["optical"].picked_by == "band descriptions"
    a1, _ = by_index.read(Window(0, 0, 12, 12))
    a2, _ = by_name.read(Window(0, 0, 12, 12))
    a3, _ = by_meaning.read(Window(0, 0, 12, 12))
    np.testing.assert_array_equal(a1["optical"], data[[3, 2, 1, 7]].astype(np.float32))
    np.testing.assert_array_equal(a2["optical"], a1["optical"])
    np.testing.assert_array_equal(a3["optical"], a1["optical"])
    with pytest.raises(BandMismatchError, match="--optical-bands selected 3"):
        AlignedScene({"optical": s2, "sar": s1}, g, bands={"optical": [4, 3, 2], "sar": [1]},
                     meta=meta)  # fmt: skip


def bare_sar(make_geotiff, rng):  # type: ignore[no-untyped-def]
    """A one-band SAR file without band descriptions (taken as it is: the band count fits)."""
    return make_geotiff("vv.tif", rng.normal(-10, 2, (1, 12, 12)).astype("float32"),
                        transform=utm())  # fmt: skip


def test_percentiles_from_decimated_read_match_full_scene(make_geotiff, rng, monkeypatch):
    h, w = 400, 300
    data = rng.gamma(2.0, 300.0, (4, h, w)).astype("float32")
    data[:, :50, :] = -9999  # nodata strip, must not count
    opt = make_geotiff("opt.tif", data, transform=utm(), nodata=-9999)
    sar = make_geotiff("sar.tif", rng.normal(-12, 3, (1, h, w)).astype("float32"), transform=utm())
    scene = AlignedScene({"optical": opt, "sar": sar}, grid_from_reference(opt))
    monkeypatch.setattr("mfaf_cli.coreg.align.STATS_LONG_SIDE", 128)
    _, _, coarse = scene.read_decimated(128)
    assert max(coarse.width, coarse.height) <= 128 and coarse.bounds == scene.grid.bounds
    pct = scene.percentiles(meta_for())
    full_lo, full_hi = band_percentiles(data[:, 50:], None, 2, 98)
    np.testing.assert_allclose(pct["optical"][0], full_lo, rtol=0.1)
    np.testing.assert_allclose(pct["optical"][1], full_hi, rtol=0.05)
    assert pct["sar"][0][0] == pytest.approx(-12 - 2.054 * 3, abs=0.6)


def test_threads_get_their_own_handles(make_geotiff, rng):
    from concurrent.futures import ThreadPoolExecutor

    data = rng.integers(1, 1000, (4, 64, 64)).astype("uint16")
    opt = make_geotiff("opt.tif", data, transform=utm())
    sar = make_geotiff("sar.tif", rng.normal(-10, 2, (1, 32, 32)).astype("float32"),
                       transform=utm(20))  # fmt: skip
    scene = AlignedScene({"optical": opt, "sar": sar}, grid_from_reference(opt))
    wins = [Window(r, c, 16, 16) for r in range(0, 64, 16) for c in range(0, 64, 16)]
    serial = [scene.read(w) for w in wins]
    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(scene.read, wins))
    for (a, v), (b, u) in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(v, u)
        np.testing.assert_array_equal(a["sar"], b["sar"])
    scene.close()
    assert Path(opt).exists()


def test_sar_units_by_counting_agree_with_the_median() -> None:
    """The sign of the median by counting (no sort) agrees with np.median, ties included:
    odd and even counts, exactly half negative with the middle pair summing either way."""
    rng = np.random.default_rng(7)
    cases = [np.array(c, dtype=np.float64) for c in (
        [-3.0, 1.0], [-1.0, 3.0], [-2.0, 2.0], [-1.0, -1.0, 5.0, 0.5], [-0.5, -9.0, 0.2, 7.0],
        [0.0, -0.0], [-1.0, np.nan, 2.0, 0.0], [1e-45, -1e-45],
    )]  # fmt: skip
    cases += [rng.normal(m, 3, n) for m in (-0.5, 0.0, 0.5) for n in (1, 2, 7, 100, 1001)]
    for v in cases:
        finite = v[np.isfinite(v)]
        want = "db" if float(np.median(finite)) < 0 else "linear"
        assert detect_sar_units(v, "float32") == want, v

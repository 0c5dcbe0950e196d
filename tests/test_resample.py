"""Numpy resampling between north-up grids of one CRS equals GDAL's warp, and does not
depend on how the grid is cut into blocks."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import Affine, from_origin
from rasterio.warp import reproject

from mfaf_cli.coreg import align
from mfaf_cli.coreg.align import AlignedScene
from mfaf_cli.coreg.grid import Grid
from mfaf_cli.coreg.resample import (
    _gathered_pass,
    _pass,
    axis_aligned,
    bilinear_taps,
    periodic_run,
    resample_block,
    source_coords,
)

CRS = "EPSG:32630"


def gdal(vals, vok, src_t, dst_t, shape, method):
    """The GDAL path of ``coreg.align``: values (NaN nodata) and, nearest, the valid mask."""
    rs = Resampling.bilinear if method == "bilinear" else Resampling.nearest
    data = np.full((vals.shape[0], *shape), np.nan, np.float32)
    ok8 = np.zeros(shape, np.uint8)
    common = dict(src_transform=src_t, src_crs=CRS, dst_transform=dst_t, dst_crs=CRS)
    reproject(vals, data, src_nodata=np.nan, dst_nodata=np.nan, resampling=rs, **common)
    reproject(vok.astype(np.uint8), ok8, src_nodata=0, dst_nodata=0,
              resampling=Resampling.nearest, **common)  # fmt: skip
    return data, (ok8 > 0) & np.isfinite(data).all(axis=0)


def random_case(rng):
    sres = float(rng.choice([10.0, 20.0, 30.0, 17.3]))
    method = str(rng.choice(["bilinear", "nearest"]))
    dres = float(rng.choice([5.0, 7.7, 10.0, sres] + ([40.0] if method == "nearest" else [])))
    dres = min(dres, sres) if method == "bilinear" else dres
    file_t = from_origin(1000.0, 5000.0, sres, sres)
    sr, sc = (int(x) for x in rng.integers(0, 20, 2))
    hs, ws = (int(x) for x in rng.integers(4, 40, 2))
    ox, oy = rng.uniform(-60, 200, 2)
    grid_t = from_origin(1000.0 + ox, 5000.0 - oy, dres, dres)
    dr, dc = (int(x) for x in rng.integers(0, 10, 2))
    h, w = (int(x) for x in rng.integers(3, 50, 2))
    vals = rng.gamma(2.0, 0.05, (2, hs, ws)).astype(np.float32)
    vok = rng.random((hs, ws)) > 0.15
    vals[:, ~vok] = np.nan
    return vals, vok, (file_t, sr, sc), (grid_t, dr, dc), (h, w), method


def block_transform(place):
    t, r, c = place
    return t @ Affine.translation(c, r)


def test_equals_gdal_on_random_geometries():
    rng = np.random.default_rng(0)
    compared = 0
    for _ in range(150):
        vals, vok, src, dst, shape, method = random_case(rng)
        fast = resample_block(vals, vok, src, dst, shape, method)
        if fast is None:
            continue
        ref, ref_ok = gdal(vals, vok, block_transform(src), block_transform(dst), shape, method)
        assert np.array_equal(fast[1], ref_ok)
        np.testing.assert_allclose(fast[0][:, ref_ok], ref[:, ref_ok], rtol=1e-6)
        assert np.isnan(fast[0][:, ~ref_ok]).all()
        compared += 1
    assert compared > 100  # ties are rare: almost every case ran in numpy


@pytest.mark.parametrize("holes", ["scattered", "one corner"])
def test_blocks_are_bit_identical_to_one_read(holes):
    """Row chunks and column panels see the same taps and weights as the whole read, whether
    or not their own source block holds an invalid pixel."""
    rng = np.random.default_rng(1)
    file_t, grid_t = from_origin(0, 0, 20.0, 20.0), from_origin(3.0, -7.0, 10.0, 10.0)
    vals = rng.gamma(2.0, 0.05, (1, 40, 40)).astype(np.float32)
    vok = rng.random((40, 40)) > 0.1
    if holes == "one corner":  # blocks away from it are all valid, the whole read is not
        vok[:] = True
        vok[0, 0] = False
    whole = resample_block(vals, vok, (file_t, 0, 0), (grid_t, 0, 0), (70, 70), "bilinear")
    assert whole is not None
    for r0, c0, h, w in [(0, 0, 70, 33), (0, 33, 70, 37), (21, 0, 30, 70), (5, 9, 40, 50)]:
        # the source block under the grid block, padded as coreg.align pads it
        sr, sc = max(0, r0 // 2 - 3), max(0, c0 // 2 - 3)
        er, ec = min(40, (r0 + h) // 2 + 4), min(40, (c0 + w) // 2 + 4)
        part = resample_block(vals[:, sr:er, sc:ec], vok[sr:er, sc:ec], (file_t, sr, sc),
                              (grid_t, r0, c0), (h, w), "bilinear")  # fmt: skip
        assert part is not None
        np.testing.assert_array_equal(part[1], whole[1][r0 : r0 + h, c0 : c0 + w])
        np.testing.assert_array_equal(part[0], whole[0][:, r0 : r0 + h, c0 : c0 + w])


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("first", [0, 1, 37])
def test_periodic_pass_gives_the_gathered_bits(scale, first):
    """An integer scale's taps repeat, so the pass takes strided slices instead of gathering;
    the block's edges (a neighbour past it renormalised away) break the period and are
    gathered. Either way the same float32 operations on the same pixels: the same bits."""
    rng = np.random.default_rng(scale + first)
    src_res, n_src = 10.0 * scale, 30
    vals = rng.gamma(2.0, 0.05, (2, n_src, n_src)).astype(np.float32)
    u = source_coords(0.0, 10.0, first, 70, 0.0, src_res)
    taps = bilinear_taps(u, int(np.floor(u[0])) - 2 if first else 0, n_src)
    run = periodic_run(taps)
    assert run is not None and run.period == scale and run.stop - run.start > 40
    for axis in (1, 2):
        shape = list(vals.shape)
        shape[axis] = len(taps.i0)
        gathered = np.empty(shape, np.float32)
        _gathered_pass(vals, taps, axis, gathered)
        assert _pass(vals, taps, axis).tobytes() == gathered.tobytes()


def test_no_period_is_gathered_whole():
    u = source_coords(0.0, 7.7, 0, 50, 0.0, 17.3)  # a scale of 2.25: no short period
    assert periodic_run(bilinear_taps(u, 0, 30)) is None


def test_results_are_not_reused_work_arrays():
    """The warp's work arrays are reused call after call; what it returns is not one."""
    rng = np.random.default_rng(3)
    file_t, grid_t = from_origin(0, 0, 20.0, 20.0), from_origin(3.0, -7.0, 10.0, 10.0)
    vals = rng.gamma(2.0, 0.05, (1, 40, 40)).astype(np.float32)
    vok = np.ones((40, 40), bool)
    first = resample_block(vals, vok, (file_t, 0, 0), (grid_t, 0, 0), (60, 60), "bilinear")
    kept = first[0].copy()
    resample_block(vals * 2, vok, (file_t, 0, 0), (grid_t, 0, 0), (60, 60), "bilinear")
    assert np.array_equal(first[0], kept)
    out = np.empty((1, 60, 60), np.float32)
    into = resample_block(vals, vok, (file_t, 0, 0), (grid_t, 0, 0), (60, 60), "bilinear", out)
    assert into[0] is out and np.array_equal(out, kept)


def test_ties_and_bilinear_downsampling_are_left_to_gdal():
    vals, vok = np.ones((1, 8, 8), np.float32), np.ones((8, 8), bool)
    t = from_origin(0, 0, 10.0, 10.0)
    half = from_origin(5.0, 0, 10.0, 10.0)  # centres on the source pixel edges
    assert resample_block(vals, vok, (t, 0, 0), (half, 0, 0), (4, 4), "nearest") is None
    coarse = from_origin(5.0, -5.0, 20.0, 20.0)  # centres mid-pixel: no tie
    assert resample_block(vals, vok, (t, 0, 0), (coarse, 0, 0), (4, 4), "bilinear") is None
    assert resample_block(vals, vok, (t, 0, 0), (coarse, 0, 0), (4, 4), "nearest") is not None
    assert not axis_aligned(Affine(10, 1, 0, 0, -10, 0), t)
    assert not axis_aligned(Affine(10, 0, 0, 0, 10, 0), t)  # south-up


@pytest.fixture
def sar_pair(tmp_path):
    """A 20 m SAR file (dB, NaN holes) under a 10 m grid offset by a quarter pixel."""
    rng = np.random.default_rng(2)
    sar = (-12 + 3 * rng.standard_normal((1, 60, 50))).astype(np.float32)
    sar[0, 10:14, 20:25] = np.nan
    path = tmp_path / "sar.tif"
    t = from_origin(400_000.0, 4_600_000.0, 20.0, 20.0)
    profile = dict(driver="GTiff", width=50, height=60, count=1, dtype="float32", crs=CRS)
    with rasterio.open(path, "w", transform=t, **profile) as dst:
        dst.write(sar)
    grid = Grid(CRS, from_origin(400_005.0, 4_599_995.0, 10.0, 10.0), 90, 110)
    return path, grid


def test_aligned_scene_reads_equal_the_gdal_path(sar_pair, monkeypatch):
    path, grid = sar_pair
    windows = [(0, 0, 110, 90), (17, 5, 64, 64), (90, 60, 40, 40)]
    with AlignedScene({"sar": path}, grid) as scene:
        fast = [scene.read_modality("sar", _win(*w)) for w in windows]
    monkeypatch.setattr(align, "_NUMPY_RESAMPLING", {})
    with AlignedScene({"sar": path}, grid) as scene:
        slow = [scene.read_modality("sar", _win(*w)) for w in windows]
    for (a, a_ok), (b, b_ok) in zip(fast, slow, strict=True):
        assert np.array_equal(a_ok, b_ok) and a_ok.any() and not a_ok.all()
        np.testing.assert_allclose(a[:, a_ok], b[:, b_ok], rtol=1e-5, atol=1e-5)


def _win(r, c, h, w):
    from mfaf_cli.tiling.windows import Window

    return Window(r, c, h, w)

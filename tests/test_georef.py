"""Inputs located by ground control points or RPCs (no CRS + geotransform) are warped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import EXAMPLES
from rasterio.control import GroundControlPoint
from rasterio.rpc import RPC

from mfaf_cli.coreg.align import AlignedScene
from mfaf_cli.coreg.georef import Ground, georeferencing
from mfaf_cli.coreg.grid import grid_from_reference
from mfaf_cli.tiling.windows import Window

CHIP = EXAMPLES / "sen1floods11"
N = 128  # a 128 × 128 crop of the real chip


def _crop(name: str) -> tuple[np.ndarray, dict, list[str]]:
    with rasterio.open(CHIP / f"{name}.tif") as ds:
        win = ((0, N), (0, N))
        profile = dict(ds.profile, width=N, height=N, transform=ds.window_transform(win))
        return ds.read(window=win), profile, [d or "" for d in ds.descriptions]


def _write(path: Path, arr: np.ndarray, profile: dict, desc: list[str], **geo: object) -> Path:
    p = {k: v for k, v in profile.items() if k not in ("crs", "transform")}
    with rasterio.open(path, "w", **p, **geo) as ds:
        ds.write(arr)
        for i, d in enumerate(desc, 1):
            ds.set_band_description(i, d)
    return path


def affine_rpcs(t: rasterio.Affine, width: int, height: int) -> RPC:
    """RPCs of a north-up lon/lat grid: sample = L, line = -P in normalised coordinates."""
    zero = [0.0] * 20
    den, samp, line = list(zero), list(zero), list(zero)
    den[0], samp[1], line[2] = 1.0, 1.0, -1.0
    lon0, lat0 = t * (width / 2, height / 2)
    return RPC(height_off=0.0, height_scale=100.0, lat_off=lat0, lat_scale=-t.e * height / 2,
               line_den_coeff=den, line_num_coeff=line, line_off=height / 2 - 0.5,
               line_scale=height / 2, long_off=lon0, long_scale=t.a * width / 2,
               samp_den_coeff=den, samp_num_coeff=samp, samp_off=width / 2 - 0.5,
               samp_scale=width / 2)  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The crop's optical (CRS), its SAR as is, with 36 GCPs, with RPCs, and with nothing."""
    d = tmp_path_factory.mktemp("georef")
    s2, p2, d2 = _crop("S2")
    s1, p1, d1 = _crop("S1")
    t = p1["transform"]
    gcps = [
        GroundControlPoint(row=r, col=c, x=(t * (c, r))[0], y=(t * (c, r))[1], z=0.0)
        for r in np.linspace(0, N, 6)
        for c in np.linspace(0, N, 6)
    ]
    return {
        "optical": _write(d / "s2.tif", s2, p2, d2, crs=p2["crs"], transform=p2["transform"]),
        "sar": _write(d / "s1.tif", s1, p1, d1, crs=p1["crs"], transform=t),
        "gcps": _write(d / "s1_gcps.tif", s1, p1, d1, gcps=gcps, crs="EPSG:4326"),
        "rpcs": _write(d / "s1_rpcs.tif", s1, p1, d1, rpcs=affine_rpcs(t, N, N)),
        "none": _write(d / "s1_bare.tif", s1, p1, d1),
    }


def test_georeferencing_kinds(files) -> None:
    kinds = {}
    for k in ("sar", "gcps", "rpcs", "none"):
        with rasterio.open(files[k]) as ds:
            kinds[k] = georeferencing(ds)
    assert kinds == {"sar": "crs", "gcps": "gcps", "rpcs": "rpcs", "none": "none"}


@pytest.mark.parametrize("kind", ["gcps", "rpcs"])
def test_windowed_warp_reproduces_the_grid(files, kind: str) -> None:
    """A file whose GCPs / RPCs describe the chip's own grid, warped in 32 px windows and in
    the decimated statistics read, gives back the chip's pixels."""
    grid = grid_from_reference(files["optical"])
    with rasterio.open(files["sar"]) as ds:
        want = ds.read()
    got = np.full_like(want, np.nan)
    with AlignedScene({"sar": files[kind]}, grid, kinds={"sar": "bilinear"}) as scene:
        for r in range(0, N, 32):
            for c in range(0, N, 32):
                got[:, r : r + 32, c : c + 32] = scene.read_modality("sar", Window(r, c, 32, 32))[0]
        coarse, ok, cgrid = scene.read_decimated(long_side=32)
    with AlignedScene({"sar": files["sar"]}, grid, kinds={"sar": "bilinear"}) as scene:
        expected, _, _ = scene.read_decimated(long_side=32)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert cgrid.shape == (32, 32) and ok.all()
    # the decimated read (GCPs / RPCs scaled to the coarser source block) samples as the
    # CRS file's does
    assert (coarse["sar"] == expected["sar"]).mean() > 0.97


@pytest.mark.parametrize("kind", ["gcps", "rpcs"])
def test_grid_and_footprint_from_ground_points(files, kind: str) -> None:
    ref = grid_from_reference(files["optical"])
    grid = grid_from_reference(files[kind])
    assert grid.crs == ref.crs and grid.shape == ref.shape
    assert np.allclose(tuple(grid.transform)[:6], tuple(ref.transform)[:6], rtol=0, atol=1e-9)
    with rasterio.open(files[kind]) as ds:
        foot = Ground.of(ds).footprint(ref.crs)  # type: ignore[union-attr]
    assert foot == pytest.approx(ref.bounds, abs=1e-9)


@pytest.mark.parametrize("kind", ["gcps", "rpcs"])
def test_predict_and_info_with_ground_points(files, runner, tmp_path, kind: str) -> None:
    maps = {}
    for sar in ("sar", kind) if kind == "gcps" else ():  # RPC reads: exact above
        out = tmp_path / f"{sar}.tif"
        code, _, err = runner("predict", "--optical", files["optical"], "--sar", files[sar],
                              "-o", out, "--engine", "torch", "--quiet")  # fmt: skip
        assert code == 0, err
        with rasterio.open(out) as ds:
            maps[sar] = ds.read(1)
    if maps:
        assert np.array_equal(maps["sar"], maps[kind])
    code, stdout, err = runner("info", files[kind], files["optical"], "--json")
    assert code == 0, err
    report = json.loads(stdout)
    located = report["files"][0]["georeferencing"]
    assert located.startswith("36 GCPs (EPSG:4326)" if kind == "gcps" else "RPCs")
    assert [f["percent"] for f in report["overlap"]["per_file"]] == pytest.approx([100, 100])


def test_no_georeferencing_at_all_is_one_line(files, runner, tmp_path) -> None:
    out = tmp_path / "map.tif"
    code, _, err = runner("predict", "--optical", files["optical"], "--sar", files["none"],
                          "-o", out)  # fmt: skip
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "has no CRS; assign one with gdal_edit.py -a_srs" in err
    assert "no ground control points or RPCs either" in err
    assert list(tmp_path.iterdir()) == []
    code, stdout, _ = runner("info", files["none"], "--json")
    assert code == 0 and json.loads(stdout)["files"][0]["georeferencing"] == "none"

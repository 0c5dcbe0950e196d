"""Target-aligned pixels (--tap) and the --batch --mosaic-vrt VRT of neighbouring scenes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import EXAMPLES, write_geotiff
from rasterio.transform import from_origin

from mfaf_cli.coreg.grid import grid_from_reference
from mfaf_cli.coreg.tap import aligned_bounds
from mfaf_cli.errors import InputError, UsageError
from mfaf_cli.io.mosaic import write_mosaic_vrt

CHIP = EXAMPLES / "sen1floods11"


def test_aligned_bounds_exact() -> None:
    assert aligned_bounds((694414.33, 4218608.8, 697531.2, 4222528.8), (10.0, 10.0)) == (
        694410.0, 4218600.0, 697540.0, 4222530.0,
    )  # fmt: skip
    # edges already on the lattice stay (no extra pixel from float rounding)
    assert aligned_bounds((0.3, -0.6, 0.9, 0.3), (0.3, 0.3)) == pytest.approx((0.3, -0.6, 0.9, 0.3))


def _crop(folder: Path, name: str, cols: slice) -> tuple[Path, Path]:
    out = []
    for mod in ("S2", "S1"):
        with rasterio.open(CHIP / f"{mod}.tif") as ds:
            win = ((0, 160), (cols.start, cols.stop))
            arr = ds.read(window=win)
            t = ds.window_transform(win)
            desc = [d or "" for d in ds.descriptions]
            nodata = ds.nodata
        out.append(write_geotiff(folder / f"{name}_{mod}.tif", arr, "EPSG:4326", t, nodata, desc))
    return out[0], out[1]


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path]]:
    """Two overlapping crops of the real chip (columns 0..200 and 150..384)."""
    folder = tmp_path_factory.mktemp("tap")
    return [_crop(folder, "a", slice(0, 200)), _crop(folder, "b", slice(150, 384))]


def test_crs_resolution_grids_share_one_lattice(neighbours) -> None:
    grids = [grid_from_reference(opt, crs="EPSG:32630", resolution=10) for opt, _ in neighbours]
    for g in grids:
        assert g.transform.c % 10 == 0 and g.transform.f % 10 == 0
    untapped = [
        grid_from_reference(o, crs="EPSG:32630", resolution=10, tap=False) for o, _ in neighbours
    ]
    assert untapped[0].transform.c % 10 != 0  # the reprojected corner, as before
    # the aligned grid holds the unaligned one
    a, u = grids[0].bounds, untapped[0].bounds
    assert a[0] <= u[0] and a[1] <= u[1] and a[2] >= u[2] and a[3] >= u[3]
    assert grids[0].width - untapped[0].width in (0, 1, 2)


def test_tap_with_degrees_and_metres_is_an_error(neighbours, runner, tmp_path) -> None:
    with pytest.raises(UsageError, match="resolution is in the CRS's units, degrees"):
        grid_from_reference(neighbours[0][0], crs="EPSG:4326", resolution=10)
    opt, sar = neighbours[0]
    out = tmp_path / "map.tif"
    code, _, err = runner("predict", "--optical", opt, "--sar", sar, "-o", out,
                          "--crs", "EPSG:4326", "--resolution", "10")  # fmt: skip
    assert code == 2 and "--tap on a grid in EPSG:4326 (degrees)" in err
    assert len(err.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []
    # the reference's own CRS in degrees, no --crs: the same mistake
    code, _, err = runner("predict", "--optical", opt, "--sar", sar, "-o", out,
                          "--resolution", "10")  # fmt: skip
    assert code == 2 and "--tap on a grid in EPSG:4326 (degrees)" in err
    assert list(tmp_path.iterdir()) == []
    # an explicit --no-tap keeps the old behaviour (degrees are the user's business)
    grid_from_reference(opt, crs="EPSG:4326", resolution=10, tap=False)


def test_batch_mosaic_vrt(neighbours, runner, tmp_path) -> None:
    csv = tmp_path / "scenes.csv"
    rows = [
        f"{n},{o},{s},{tmp_path / (n + '.tif')}" for n, (o, s) in zip("ab", neighbours, strict=True)
    ]
    csv.write_text("scene,optical,sar,output\n" + "\n".join(rows) + "\n")
    vrt = tmp_path / "maps.vrt"
    code, _, err = runner("predict", "--batch", csv, "--crs", "EPSG:32630", "--resolution", 10,
                          "--mosaic-vrt", vrt, "--engine", "torch", "--quiet")  # fmt: skip
    assert code == 0, err
    with rasterio.open(vrt) as m:
        mosaic, mt = m.read(1), m.transform
        assert m.crs.to_epsg() == 32630 and mt.c % 10 == 0 and mt.f % 10 == 0
    covered = np.zeros(mosaic.shape, dtype=bool)
    for name in "ba":  # later rows win where they have data; earlier ones fill the rest
        with rasterio.open(tmp_path / f"{name}.tif") as ds:
            labels, t = ds.read(1), ds.transform
        r, c = round((mt.f - t.f) / 10), round((t.c - mt.c) / 10)
        part = mosaic[r : r + ds.height, c : c + ds.width]
        take = (labels != 255) & ~covered[r : r + ds.height, c : c + ds.width]
        assert np.array_equal(part[take], labels[take])
        covered[r : r + ds.height, c : c + ds.width] |= labels != 255
    assert (mosaic[~covered] == 255).all() and covered.mean() > 0.5
    # maps off one lattice (as --no-tap grids of neighbouring scenes are): refused, no VRT
    shifted = write_geotiff(tmp_path / "c.tif", np.zeros((1, 4, 4), "uint8"), "EPSG:32630",
                            from_origin(mt.c + 3.3, mt.f, 10, 10))  # fmt: skip
    with pytest.raises(InputError, match="not on the first map's pixel lattice"):
        write_mosaic_vrt([tmp_path / "a.tif", shifted], tmp_path / "off.vrt")
    assert not (tmp_path / "off.vrt").exists()
    code, _, err = runner("predict", "--optical", neighbours[0][0], "--mosaic-vrt", vrt)
    assert code == 2 and "add --batch" in err

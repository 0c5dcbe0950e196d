"""The GDAL block cache a run gets: the block rows its column panels read, and no more."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from mfaf_cli.coreg import AlignedScene, grid_from_reference
from mfaf_cli.coreg.align import CACHE_FLOOR, CACHE_SLACK, blocks_across
from mfaf_cli.pipeline import core
from mfaf_cli.tiling.plan import plan_windows

MIB = 1 << 20


def _tiled(path: Path, count: int, size: int, res: float, dtype: str, pixel: bool) -> Path:
    profile = dict(driver="GTiff", width=size, height=size, count=count, dtype=dtype,
                   crs="EPSG:32630", transform=from_origin(400_000.0, 4_600_000.0, res, res),
                   tiled=True, blockxsize=512, blockysize=512,
                   interleave="pixel" if pixel else "band")  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.ones((count, size, size), dtype))
    return path


def test_blocks_across() -> None:
    assert blocks_across(0, 2176, 512, 4096) == 5  # columns 0..2175: blocks 0..4
    assert blocks_across(1920, 4096, 512, 4096) == 5  # blocks 3..7
    assert blocks_across(1920, 4288, 512, 8192) == 6  # blocks 3..8
    assert blocks_across(511.5, 512.2, 512, 4096) == 2  # a fraction of a column counts
    assert blocks_across(-40, 100, 512, 4096) == 1  # clipped to the raster
    assert blocks_across(4000, 4400, 512, 4096) == 1
    assert blocks_across(5000, 6000, 512, 4096) == 1  # outside: at least one


def test_cache_holds_two_block_rows_of_each_panels_blocks(tmp_path: Path) -> None:
    """4096² optical (4 bands uint16, pixel-interleaved, 512² blocks) + SAR at 20 m (warped,
    float32), 256² tiles at 25 %: two 2048-wide panels that read columns 0..2176 and
    2048..4096 (the second reads nothing left of its edge), so 5 optical blocks and 3 SAR
    blocks (columns 0..1088 + the warp's margin) across."""
    opt = _tiled(tmp_path / "o.tif", 4, 4096, 10.0, "uint16", pixel=True)
    sar = _tiled(tmp_path / "s.tif", 1, 2048, 20.0, "float32", pixel=False)
    grid = grid_from_reference(opt)
    plan = plan_windows(4096, 4096, 256, 0.25)
    spans = core.panel_read_spans(plan, grid.width)
    assert spans == [(0, 2176), (2048, 4096)]
    inputs = {"optical": opt, "sar": sar}
    with AlignedScene(inputs, grid, bands={"optical": [1, 2, 3], "sar": [1]}) as scene:
        got = scene.cache_bytes(256, spans=spans)
        any_place = scene.cache_bytes(256, core.PANEL_WIDTH + 2 * 256)
    optical_row = 512 * (5 * 512) * 4 * 2  # all 4 bands: GDAL decodes them together
    sar_row = 512 * (3 * 512) * 1 * 4
    # two block rows each, less one of the input with the smallest rows (the SAR)
    assert got == 2 * optical_row + sar_row + CACHE_SLACK == 24 * MIB
    # without the panels' placement: 6 optical and 4 SAR blocks could be touched
    assert any_place == 2 * 512 * 6 * 512 * 8 + 512 * 4 * 512 * 4 + CACHE_SLACK == 29 * MIB


def test_small_scene_cache_is_the_floor(tmp_path: Path) -> None:
    opt = _tiled(tmp_path / "o.tif", 1, 512, 10.0, "uint8", pixel=False)
    grid = grid_from_reference(opt)
    plan = plan_windows(512, 512, 256, 0.25)
    with AlignedScene({"optical": opt}, grid) as scene:
        assert scene.cache_bytes(256, spans=core.panel_read_spans(plan, 512)) == CACHE_FLOOR


def test_panel_width_narrow_only_where_a_cpu_network_bounds_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Net:
        device = "cpu"

    class Gpu:
        device = "cuda:0"

    class Null:
        device = "cpu"
        reader_bound = True

    assert core.panel_width(Net()) == core.ENGINE_PANEL_WIDTH == 1024
    assert core.panel_width(Gpu()) == core.panel_width(Null()) == core.PANEL_WIDTH == 2048
    monkeypatch.setattr(core, "PANEL_WIDTH", 100)  # never wider than the panel width
    assert core.panel_width(Net()) == 100
    plan = plan_windows(4096, 4096, 256, 0.25)
    assert core.panel_read_spans(plan, 4096, 1024) == [
        (0, 1216), (1024, 2176), (2048, 3136), (3072, 4096)
    ]  # fmt: skip

"""StripReader: window reads from full-width row chunks equal AlignedScene.read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_geotiff
from rasterio.transform import from_origin

from mfaf_cli.coreg import AlignedScene, grid_from_reference
from mfaf_cli.pipeline.strips import StripReader, chunk_edges
from mfaf_cli.tiling.windows import Window, tile_windows


def test_chunk_edges() -> None:
    assert chunk_edges([0, 48, 72], 64, 136) == [0, 48, 64, 72, 112, 136]
    assert chunk_edges([0], 64, 40) == [0, 40]


@pytest.mark.parametrize("threads", [0, 2])
def test_strip_reads_equal_window_reads(tmp_path: Path, threads: int) -> None:
    rng = np.random.default_rng(0)
    opt = rng.integers(1, 3000, (3, 150, 130)).astype("uint16")
    opt[:, 10:20, 30:50] = 0  # nodata patch
    t = from_origin(500_000.0, 4_500_000.0, 10.0, 10.0)
    o = write_geotiff(tmp_path / "o.tif", opt, transform=t, nodata=0)
    sar = rng.normal(-12, 3, (1, 80, 70)).astype("float32")  # 20 m: warped
    s = write_geotiff(
        tmp_path / "s.tif", sar, transform=from_origin(500_005.0, 4_500_005.0, 20.0, 20.0)
    )
    grid = grid_from_reference(o)
    windows = tile_windows(grid.height, grid.width, 64, 0.25)
    windows += [Window(130, 120, 64, 64), Window(-10, -5, 64, 64)]  # past the edges
    windows.sort(key=lambda w: (w.row_off, w.col_off))
    with AlignedScene({"optical": o, "sar": s}, grid) as scene:
        reader = StripReader(scene, [w.row_off for w in windows], 64, threads=threads, ahead=1)
        try:
            for w in windows:
                a, va = reader.read(w)
                b, vb = scene.read(w)
                np.testing.assert_array_equal(va, vb)
                for m in b:
                    np.testing.assert_array_equal(a[m], b[m])
        finally:
            reader.close()

"""Tile windows: coverage, raster order, edge shifting, small rasters, validation messages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfaf_cli.errors import UsageError
from mfaf_cli.tiling import Window, batched, check_tile, stride_for, tile_windows


def _offsets(windows: list[Window]) -> tuple[list[int], list[int]]:
    return sorted({w.row_off for w in windows}), sorted({w.col_off for w in windows})


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap", "rows", "cols"),
    [
        # stride 192; the last window is shifted back to end exactly at the edge
        (1000, 1000, 256, 0.25, [0, 192, 384, 576, 744], [0, 192, 384, 576, 744]),
        # size - tile is a multiple of the stride: no duplicate last window
        (448, 640, 256, 0.25, [0, 192], [0, 192, 384]),
        # exactly one tile
        (256, 256, 256, 0.25, [0], [0]),
        # one pixel more than a tile: a second, heavily overlapping window
        (257, 256, 256, 0.0, [0, 1], [0]),
        # smaller than the tile on one or both axes: one window extending past the raster
        (100, 300, 256, 0.25, [0], [0, 44]),
        (7, 5, 256, 0.5, [0], [0]),
        # no overlap
        (64, 50, 16, 0.0, [0, 16, 32, 48], [0, 16, 32, 34]),
        # large overlap: stride 4
        (20, 16, 16, 0.75, [0, 4], [0]),
    ],
)
def test_tile_windows_offsets(height, width, tile, overlap, rows, cols):
    wins = tile_windows(height, width, tile, overlap)
    assert _offsets(wins) == (rows, cols)
    assert len(wins) == len(rows) * len(cols)
    assert all(w.height == tile and w.width == tile for w in wins)
    # raster order: row-major
    assert [(w.row_off, w.col_off) for w in wins] == [(r, c) for r in rows for c in cols]


def test_stride_rounds_overlap_pixels():
    assert stride_for(256, 0.25) == 192
    assert stride_for(100, 0.333) == 67
    assert stride_for(10, 0.0) == 10


@settings(max_examples=150, deadline=None)
@given(
    height=st.integers(1, 200),
    width=st.integers(1, 200),
    tile=st.integers(3, 96),
    overlap=st.floats(0.0, 0.95, allow_nan=False),
)
def test_windows_cover_every_pixel(height, width, tile, overlap):
    if stride_for(tile, overlap) < 1:
        with pytest.raises(UsageError):
            tile_windows(height, width, tile, overlap)
        return
    wins = tile_windows(height, width, tile, overlap)
    count = np.zeros((height, width), dtype=np.int32)
    for w in wins:
        c = w.clip(height, width)
        count[c.slices] += 1
    assert count.min() >= 1
    stride = stride_for(tile, overlap)
    rows, cols = _offsets(wins)
    for offs, size in ((rows, height), (cols, width)):
        assert offs[0] == 0
        if size >= tile:
            # never past the edge, the last ends exactly at it
            assert offs[-1] + tile == size
        else:
            assert offs == [0]
        # consecutive origins advance by at most the stride, and at least one pixel
        steps = np.diff(offs)
        assert (steps >= 1).all() and (steps <= stride).all()
    assert wins == sorted(wins, key=lambda w: (w.row_off, w.col_off))


@pytest.mark.parametrize("overlap", [1.0, 1.5, -0.1, float("nan"), float("inf"), "abc"])
def test_bad_overlap_is_usage_error(overlap):
    with pytest.raises(UsageError, match=r"overlap") as exc:
        tile_windows(100, 100, 64, overlap)
    assert exc.value.exit_code == 2
    assert "--overlap" in str(exc.value)


@pytest.mark.parametrize("tile", [0, -16, 2.5, True])
def test_bad_tile_is_usage_error(tile):
    with pytest.raises(UsageError, match=r"tile"):
        tile_windows(100, 100, tile, 0.25)


def test_overlap_leaving_no_stride_is_refused():
    # round(4 * 0.9) = 4 -> stride 0 would never advance
    with pytest.raises(UsageError, match="stride"):
        tile_windows(100, 100, 4, 0.9)


def test_check_tile_message():
    check_tile(256, 16, "mfafnet-s")
    check_tile(250, 1)
    with pytest.raises(UsageError) as exc:
        check_tile(250, 16, "mfafnet-s")
    assert str(exc.value) == "tile 250 is not a multiple of 16 required by mfafnet-s; use 256"
    assert exc.value.exit_code == 2
    with pytest.raises(UsageError, match=r"use 32$"):
        check_tile(5, 32, "unet")


def test_window_geometry():
    w = Window(10, 20, 30, 40)
    assert w.slices == (slice(10, 40), slice(20, 60))
    arr = np.arange(100 * 100).reshape(100, 100)
    assert arr[w.slices].shape == (30, 40)
    rw = w.to_rasterio()
    assert (rw.row_off, rw.col_off, rw.height, rw.width) == (10, 20, 30, 40)
    assert Window(-5, 90, 20, 20).clip(100, 100) == Window(0, 90, 15, 10)
    assert Window(120, 0, 10, 10).clip(100, 100).is_empty()
    with pytest.raises(ValueError):
        Window(0, 0, -1, 5)
    # hashable and comparable: used as keys by the merger
    assert {Window(0, 0, 4, 4): 1}[Window(0, 0, 4, 4)] == 1


def test_batched_keeps_order_and_sizes():
    wins = tile_windows(100, 70, 32, 0.25)
    batches = list(batched(wins, 4))
    assert [w for b in batches for w in b] == wins
    assert all(len(b) == 4 for b in batches[:-1]) and 1 <= len(batches[-1]) <= 4
    with pytest.raises(UsageError):
        list(batched(wins, 0))


def test_bottom_right_pad_reflects_only_where_it_fits() -> None:
    from mfaf_cli.tiling.pad import bottom_right_pad, round_up

    assert [round_up(n, 16) for n in (1, 15, 16, 17, 32)] == [16, 16, 16, 32, 32]
    assert bottom_right_pad(20, 30, 32, 32) == (12, 2, "reflect")
    assert bottom_right_pad(20, 30, 20, 30) == (0, 0, "reflect")
    assert bottom_right_pad(5, 30, 16, 32) == (11, 2, "edge")  # 11 rows of pad > 5 rows
    assert bottom_right_pad(16, 8, 16, 16) == (0, 8, "edge")  # pad == size cannot reflect
    with pytest.raises(ValueError, match="cannot pad"):
        bottom_right_pad(20, 30, 16, 32)

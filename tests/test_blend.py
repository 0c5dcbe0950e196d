"""Blend weights: positive, tapered only across overlaps, border kept at full weight."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfaf_cli.errors import UsageError
from mfaf_cli.stitch import BLEND_MODES, blend_weights, make_weight_fn, window_tapers
from mfaf_cli.tiling import Window, stride_for, tile_windows
from mfaf_cli.tiling.blend import MIN_WEIGHT

MODES = sorted(BLEND_MODES)


@pytest.mark.parametrize("mode", MODES)
def test_untapered_window_is_flat(mode):
    w = blend_weights(64, mode, (0, 0, 0, 0))
    assert w.shape == (64, 64) and w.dtype == np.float32
    np.testing.assert_array_equal(w, np.ones((64, 64), np.float32))


@pytest.mark.parametrize("mode", ["gaussian", "cosine"])
def test_taper_only_on_overlapping_sides(mode):
    # neighbours above (16 px overlap) and to the right (8 px); nothing below or to the left
    w = blend_weights(32, mode, (16, 0, 0, 8))
    assert (w > 0).all()
    # untapered sides carry the maximum of their row/column
    np.testing.assert_array_equal(w[-1, :], w.max(axis=0))
    np.testing.assert_array_equal(w[:, 0], w.max(axis=1))
    # the far half of the top taper and the rest of the window are flat
    assert (w[16:, :24] == 1).all()
    # across the overlap the weight rises strictly towards the window's inside
    assert (np.diff(w[:16, 0]) > 0).all()
    assert (np.diff(w[0, 24:]) < 0).all()
    assert w[0, 0] < 0.1 and w[0, -1] < w[0, 0]


def test_constant_mode_ignores_taper():
    np.testing.assert_array_equal(blend_weights(16, "constant", (8, 8, 8, 8)), np.ones((16, 16)))


def test_cosine_ramps_of_neighbours_sum_to_one():
    # two windows overlapping by 12 px: A's right ramp and B's left ramp are mirror images
    a = blend_weights(40, "cosine", (0, 0, 0, 12))[0, -12:]
    b = blend_weights(40, "cosine", (0, 0, 12, 0))[0, :12]
    np.testing.assert_allclose(a + b, 1.0, atol=1e-6)


def test_weights_are_cached_and_read_only():
    a = blend_weights(32, "gaussian", (8, 0, 8, 0))
    assert blend_weights(32, "gaussian", [8, 0, 8, 0]) is a
    assert blend_weights(32, "gaussian", (0, 8, 8, 0)) is not a
    with pytest.raises(ValueError):
        a[0, 0] = 5


def test_unknown_mode_is_usage_error():
    with pytest.raises(UsageError, match="gaussian"):
        blend_weights(32, "median")
    with pytest.raises(UsageError):
        make_weight_fn([Window(0, 0, 8, 8)], "nope")


def test_tapers_follow_the_window_grid():
    # 448 px, tile 256, overlap 0.25 -> origins 0 and 192, 64 px overlap
    wins = tile_windows(448, 448, 256, 0.25)
    assert window_tapers(wins) == [
        (0, 64, 0, 64),
        (0, 64, 64, 0),
        (64, 0, 0, 64),
        (64, 0, 64, 0),
    ]
    # the last window shifted back to the edge overlaps more than the nominal overlap
    wins = tile_windows(300, 100, 256, 0.25)  # rows 0 and 44, one column (extends past)
    assert window_tapers(wins) == [(0, 212, 0, 0), (212, 0, 0, 0)]
    # a raster smaller than the tile: one window, nothing to taper
    assert window_tapers(tile_windows(10, 12, 64, 0.5)) == [(0, 0, 0, 0)]


def test_overlap_beyond_half_tapers_both_ends():
    # stride 4, tile 16: each inner window overlaps 12 px on both sides
    wins = tile_windows(24, 16, 16, 0.75)
    tapers = window_tapers(wins)
    assert tapers[0] == (0, 12, 0, 0) and tapers[-1] == (12, 0, 0, 0)
    assert tapers[1] == (12, 12, 0, 0)
    w = blend_weights(16, "cosine", tapers[1])
    assert (w > 0).all() and np.isfinite(w).all()


@settings(max_examples=120, deadline=None)
@given(
    height=st.integers(1, 120),
    width=st.integers(1, 120),
    tile=st.integers(4, 64),
    overlap=st.floats(0.0, 0.8, allow_nan=False),
    mode=st.sampled_from(MODES),
)
def test_blend_properties_on_random_grids(height, width, tile, overlap, mode):
    if stride_for(tile, overlap) < 1:
        return
    wins = tile_windows(height, width, tile, overlap)
    fn = make_weight_fn(wins, mode)
    tapers = dict(zip(wins, window_tapers(wins), strict=True))
    wsum = np.zeros((height, width), np.float64)
    weights = []
    for win in wins:
        w = fn(win)
        assert w.shape == (tile, tile) and w.dtype == np.float32
        assert (w >= MIN_WEIGHT**2 * 0.999).all()  # strictly positive, never underflows
        top, bottom, left, right = tapers[win]
        # sides without a neighbour are never tapered, in particular the scene border
        if win.row_off == 0:
            assert top == 0
        if win.row_end >= height:
            assert bottom == 0
        if win.col_off == 0:
            assert left == 0
        if win.col_end >= width:
            assert right == 0
        # ... and an untapered side holds the maximum of every row/column crossing it
        if top == 0:
            assert (w[0, :] == w.max(axis=0)).all()
        if bottom == 0:
            assert (w[-1, :] == w.max(axis=0)).all()
        if left == 0:
            assert (w[:, 0] == w.max(axis=1)).all()
        if right == 0:
            assert (w[:, -1] == w.max(axis=1)).all()
        c = win.clip(height, width)
        crop = w[: c.height, : c.width].astype(np.float64)
        wsum[c.slices] += crop
        weights.append((c, crop))
    assert (wsum > 0).all()
    # normalised weights form a partition of unity at every pixel
    total = np.zeros_like(wsum)
    for c, crop in weights:
        total[c.slices] += crop / wsum[c.slices]
    np.testing.assert_allclose(total, 1.0, rtol=1e-12)
    # pixels on the scene border covered by a single window keep that window's full weight
    single = np.zeros((height, width), np.int32)
    for c, _ in weights:
        single[c.slices] += 1
    border = np.zeros((height, width), bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    lone = border & (single == 1)
    np.testing.assert_array_equal(wsum[lone], 1.0)

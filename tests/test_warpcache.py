"""Warped grid blocks kept between reads (coreg/warpcache.py), and the one-warp path of a
fully valid source block (coreg/align.py): what training reads, and how it stays bounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dataset_builders import make_landcover
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

from mfaf_cli.coreg import align
from mfaf_cli.coreg.align import AlignedScene
from mfaf_cli.coreg.grid import grid_from_reference
from mfaf_cli.coreg.warpcache import SCENE_BLOCK, WarpCache


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    root = make_landcover(tmp_path_factory.mktemp("wc") / "lc", size=64).parent
    # the label grid is EPSG:3035, the imagery UTM 32N: both modalities are warped
    return {"optical": root / "s2_0.tif", "sar": root / "s1_0.tif"}, root / "worldcover_0.tif"


def _open(scene: tuple[dict[str, Path], Path], cache: WarpCache | None) -> AlignedScene:
    inputs, label = scene
    s = AlignedScene(inputs, grid_from_reference(label))
    s.warp_cache = cache
    return s


WINDOWS = [(0, 0, 16, 16), (5, 9, 16, 16), (13, 30, 20, 11), (40, 47, 24, 17)]


@pytest.mark.parametrize("win", WINDOWS)
def test_a_cached_window_is_cut_from_the_warped_blocks_under_it(
    scene: tuple[dict[str, Path], Path], win: tuple[int, int, int, int]
) -> None:
    cached, plain = _open(scene, WarpCache(2**30, block=16)), _open(scene, None)
    r, c, h, w = win
    got, ok = cached.read(Window(c, r, w, h))
    gh, gw = plain.grid.height, plain.grid.width
    want = {m: np.full_like(a, -1.0) for m, a in got.items()}
    want_ok = np.zeros_like(ok)
    for br in range(r // 16 * 16, r + h, 16):
        for bc in range(c // 16 * 16, c + w, 16):
            bh, bw = min(16, gh - br), min(16, gw - bc)
            arrays, valid = plain.read(Window(bc, br, bw, bh))
            ys = slice(max(r, br), min(r + h, br + bh))
            xs = slice(max(c, bc), min(c + w, bc + bw))
            dst = (slice(ys.start - r, ys.stop - r), slice(xs.start - c, xs.stop - c))
            src = (slice(ys.start - br, ys.stop - br), slice(xs.start - bc, xs.stop - bc))
            for m in want:
                want[m][(slice(None), *dst)] = arrays[m][(slice(None), *src)]
            want_ok[dst] = valid[src]
    assert np.array_equal(ok, want_ok) and ok.any()
    for m in got:
        assert np.array_equal(got[m], want[m], equal_nan=True), m
    # and close to warping the window as one block (GDAL's approximate transformer differs
    # by a fraction of a pixel with the block's origin)
    direct, dok = plain.read(Window(c, r, w, h))
    both = ok & dok
    assert both.mean() > 0.8
    for m in got:
        span = np.nanmax(direct[m]) - np.nanmin(direct[m])
        assert np.nanmax(np.abs(got[m][:, both] - direct[m][:, both])) < 0.25 * span


def test_blocks_are_warped_once_and_the_cache_stays_within_its_budget(
    scene: tuple[dict[str, Path], Path],
) -> None:
    big = WarpCache(2**30, block=16)
    s = _open(scene, big)
    first = s.read(Window(3, 3, 30, 30))
    misses = big.misses
    assert misses == 2 * 9  # two warped modalities, 3 × 3 blocks
    again = s.read(Window(3, 3, 30, 30))
    assert big.misses == misses and big.hits == misses
    for m in first[0]:
        assert np.array_equal(first[0][m], again[0][m], equal_nan=True)
    one_block = 16 * 16 * (3 * 4 + 1)  # optical: 3 float32 bands + the valid mask
    small = WarpCache(one_block, block=16)
    t = _open(scene, small)
    for r in range(0, 64, 16):
        t.read(Window(0, r, 64, 16))
        assert small.bytes <= one_block
    assert small.misses == 2 * 16 and len(small._blocks) <= 2  # SAR blocks are smaller


@pytest.mark.parametrize(
    ("coarser", "kinds"),
    [(1, None), (1, {"optical": "nearest"}), (3, None)],  # bilinear, nearest, SAR averaged
)
def test_a_fully_valid_source_block_is_warped_once_without_a_source_nodata(
    scene: tuple[dict[str, Path], Path],
    monkeypatch: pytest.MonkeyPatch,
    coarser: int,
    kinds: dict[str, str] | None,
) -> None:
    """The one-warp path without a source nodata (GDAL's kernels skip their per-pixel
    validity test; nothing pre-filled) gives, bit for bit, the values and valid mask of the
    values warped with NaN nodata plus the validity mask warped nearest: reads of windows
    that run past the imagery (the label grid reaches beyond it), for each resampling."""
    inputs, label = scene
    grid = grid_from_reference(label).scaled(coarser)
    side = grid.height // 3 + 2
    windows = [Window(c, r, side, side) for r in (0, side // 2, 2 * side - 2)
               for c in (0, side, 2 * side - 2)]  # fmt: skip
    fast = [AlignedScene(inputs, grid, kinds=kinds).read(w) for w in windows]
    calls: list[int] = []

    def both_warps(vals, data, resampling, common):  # type: ignore[no-untyped-def]
        """The values with NaN nodata, then the all-valid mask warped nearest, as before."""
        calls.append(1)
        align._reproject_values(vals, data, resampling, common)
        ok8 = np.zeros(data.shape[1:], dtype=np.uint8)
        reproject(np.ones(vals.shape[1:], np.uint8), ok8, src_nodata=0, dst_nodata=0,
                  resampling=Resampling.nearest, **common)  # fmt: skip
        data[:, ok8 == 0] = np.nan

    monkeypatch.setattr(align, "_reproject_valid", both_warps)
    slow = [AlignedScene(inputs, grid, kinds=kinds).read(w) for w in windows]
    assert len(calls) >= 2 * len(windows)  # both modalities of every window took that path
    assert any(not ok.all() for _, ok in fast)  # some windows do run past the imagery
    assert any(ok.any() for _, ok in fast)
    for (a, ok_a), (b, ok_b) in zip(fast, slow, strict=True):
        assert np.array_equal(ok_a, ok_b)
        for m in a:
            assert np.array_equal(a[m], b[m], equal_nan=True)


def test_a_scene_cache_cuts_windows_from_blocks_of_a_thousand_pixels(
    scene: tuple[dict[str, Path], Path],
) -> None:
    """What a training sample holds: a window of a scene kept whole is cut from its
    SCENE_BLOCK-pixel blocks — here one block, the whole 64-pixel grid warped at once (not
    16- or 256-pixel blocks: fewer, larger warps are what makes the first epoch cheap)."""
    inputs, label = scene
    grid = grid_from_reference(label)
    kept = AlignedScene(inputs, grid, warp_cache_bytes=2**30)
    assert kept.warp_cache is not None and kept.warp_cache.block == SCENE_BLOCK == 1024
    plain = AlignedScene(inputs, grid)
    whole, whole_ok = plain.read(Window(0, 0, grid.width, grid.height))
    for r, c, h, w in WINDOWS:
        got, ok = kept.read(Window(c, r, w, h))
        assert np.array_equal(ok, whole_ok[r : r + h, c : c + w])
        for m in got:
            assert np.array_equal(got[m], whole[m][:, r : r + h, c : c + w], equal_nan=True)
    assert kept.warp_cache.misses == 2  # one warp per warped modality for the whole scene


def test_the_cache_is_kept_only_for_a_scene_whose_warped_sources_fit_whole(
    scene: tuple[dict[str, Path], Path],
) -> None:
    inputs, label = scene
    grid = grid_from_reference(label)
    need = (3 * 4 + 1 + 1 * 4 + 1) * grid.height * grid.width  # optical 3 + SAR 1, both warped
    fits = AlignedScene(inputs, grid, warp_cache_bytes=need)
    assert fits.warp_cache is not None and fits.warp_cache.max_bytes == need
    assert AlignedScene(inputs, grid, warp_cache_bytes=need - 1).warp_cache is None
    assert AlignedScene(inputs, grid).warp_cache is None

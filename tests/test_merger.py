"""Streaming merger: exact reconstruction, per-pixel function equivalence, nodata, memory."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfaf_cli.stitch import StreamingMerger, make_weight_fn
from mfaf_cli.tiling import Window, batched, stride_for, tile_windows


class Collect:
    """A sink that checks rows arrive once, in order, and assembles the full result."""

    def __init__(self, k: int, height: int, width: int) -> None:
        self.probs = np.full((k, height, width), np.nan, np.float32)
        self.valid = np.zeros((height, width), bool)
        self.next = 0
        self.calls = 0
        self.rows: list[int] = []

    def __call__(self, row0: int, probs: np.ndarray, valid: np.ndarray) -> None:
        assert row0 == self.next, "rows must come in order, each once"
        assert probs.dtype == np.float32 and valid.dtype == bool
        r = probs.shape[1]
        assert r >= 1 and valid.shape == (r, probs.shape[2])
        self.probs[:, row0 : row0 + r] = probs
        self.valid[row0 : row0 + r] = valid
        self.next += r
        self.calls += 1
        self.rows.append(r)


def read_window(arr: np.ndarray, win: Window, fill: float = np.nan) -> np.ndarray:
    """(C, tile, tile) crop of ``arr``; outside the raster filled with ``fill`` (like padding)."""
    c, h, w = arr.shape
    out = np.full((c, win.height, win.width), fill, arr.dtype)
    clip = win.clip(h, w)
    out[:, : clip.height, : clip.width] = arr[(slice(None), *clip.slices)]
    return out


def read_window_reflect(arr: np.ndarray, win: Window) -> np.ndarray:
    """Reflect-padded read, as the co-registration reader does outside the grid."""
    _, h, w = arr.shape
    pad = ((0, 0), (0, max(win.row_end - h, 0)), (0, max(win.col_end - w, 0)))
    return np.pad(arr, pad, mode="symmetric")[(slice(None), *win.slices)]


def merge(arr, tile, overlap, mode, reader=read_window, valid=None, batch=1, k=None):
    c, h, w = arr.shape
    k = c if k is None else k
    wins = tile_windows(h, w, tile, overlap)
    sink = Collect(k, h, w)
    m = StreamingMerger(h, w, k, wins, make_weight_fn(wins, mode), sink)
    for group in batched(wins, batch):
        probs = np.stack([reader(arr, win) for win in group])
        v = None
        if valid is not None:
            v = np.stack([read_window(valid[None], win, fill=0)[0].astype(bool) for win in group])
        for i, win in enumerate(group):
            m.add(win, probs[i], None if v is None else v[i])
    m.finish()
    assert m.done and m.pending == 0 and sink.next == h
    return sink, m


SIZES = [
    # (H, W, tile, overlap): not multiples of the stride, smaller than a tile, thin strips
    (67, 45, 16, 0.25),
    (100, 77, 32, 0.5),
    (20, 13, 32, 0.25),
    (5, 90, 16, 0.25),
    (90, 3, 16, 0.0),
    (1, 1, 16, 0.5),
    (31, 29, 8, 0.75),
]


@pytest.mark.parametrize("mode", ["gaussian", "cosine", "constant"])
@pytest.mark.parametrize(("h", "w", "tile", "overlap"), SIZES)
def test_merging_windows_of_an_array_gives_it_back(h, w, tile, overlap, mode, rng):
    # NaN outside the raster proves the padded part of each window is cropped away
    p = rng.random((3, h, w)).astype(np.float32)
    sink, _ = merge(p, tile, overlap, mode)
    assert sink.valid.all()
    np.testing.assert_allclose(sink.probs, p, rtol=2e-6, atol=0)


def softmax_1x1(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """A fixed per-pixel 'network': 1×1 convolution then softmax over classes."""
    logits = np.einsum("kc,chw->khw", weight, x) + bias[:, None, None]
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 70),
    w=st.integers(1, 70),
    tile=st.sampled_from([8, 16, 32]),
    overlap=st.sampled_from([0.0, 0.25, 0.5, 0.6]),
    mode=st.sampled_from(["gaussian", "cosine", "constant"]),
    batch=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_streamed_blend_equals_whole_image_function(h, w, tile, overlap, mode, batch, seed):
    if stride_for(tile, overlap) < 1:
        return
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(4, h, w)).astype(np.float32)
    weight, bias = rng.normal(size=(3, 4)), rng.normal(size=3)

    def model_on_window(arr: np.ndarray, win: Window) -> np.ndarray:
        return softmax_1x1(read_window_reflect(arr, win), weight, bias)

    sink, _ = merge(image, tile, overlap, mode, reader=model_on_window, batch=batch, k=3)
    expected = softmax_1x1(image, weight, bias)
    np.testing.assert_allclose(sink.probs, expected, rtol=1e-5, atol=1e-6)
    assert sink.valid.all()


def test_blend_of_disagreeing_windows_is_the_weighted_mean():
    # Two windows with constant, different predictions: in the overlap the result is their
    # weighted mean; outside it, each window's own value.
    h, w, tile = 8, 12, 8
    wins = tile_windows(h, w, tile, 0.5)  # cols 0 and 4, 4 px overlap
    assert [win.col_off for win in wins] == [0, 4]
    fn = make_weight_fn(wins, "cosine")
    sink = Collect(1, h, w)
    m = StreamingMerger(h, w, 1, wins, fn, sink)
    m.add(wins[0], np.full((1, 8, 8), 0.2, np.float32))
    m.add(wins[1], np.full((1, 8, 8), 0.8, np.float32))
    m.finish()
    wa, wb = fn(wins[0])[0, 4:], fn(wins[1])[0, :4]
    np.testing.assert_allclose(sink.probs[0, 0, 4:8], (0.2 * wa + 0.8 * wb) / (wa + wb), rtol=1e-6)
    np.testing.assert_allclose(sink.probs[0, :, :4], 0.2, rtol=1e-6)
    np.testing.assert_allclose(sink.probs[0, :, 8:], 0.8, rtol=1e-6)
    # cosine ramps are a partition of unity, so the mean moves linearly-ish from 0.2 to 0.8
    assert (np.diff(sink.probs[0, 0, 3:9]) > 0).all()


def test_invalid_pixels_stay_nodata_and_do_not_leak(rng):
    h, w = 40, 50
    p = rng.random((2, h, w)).astype(np.float32)
    valid = np.ones((h, w), bool)
    valid[10:14, 20:35] = False  # a nodata hole crossing window overlaps
    p_in = p.copy()
    p_in[:, ~valid] = np.nan  # whatever the model says there must not spread
    sink, _ = merge(p_in, 16, 0.25, "gaussian", valid=valid)
    np.testing.assert_array_equal(sink.valid, valid)
    np.testing.assert_allclose(sink.probs[:, valid], p[:, valid], rtol=2e-6)
    assert (sink.probs[:, ~valid] == 0).all()


def test_invalid_in_any_window_wins():
    # If one window marks a pixel invalid and another valid, the output is nodata (never a guess).
    wins = tile_windows(8, 12, 8, 0.5)
    sink = Collect(1, 8, 12)
    m = StreamingMerger(8, 12, 1, wins, None, sink)
    v0 = np.ones((8, 8), bool)
    v0[0, 5] = False  # col 5 is in the overlap
    m.add(wins[0], np.full((1, 8, 8), 0.5, np.float32), v0)
    m.add(wins[1], np.full((1, 8, 8), 0.5, np.float32), np.ones((8, 8), bool))
    m.finish()
    assert not sink.valid[0, 5] and sink.valid.sum() == 8 * 12 - 1


def test_skipped_windows_finish_rows_as_nodata(rng):
    # Left 40 columns entirely nodata: the pipeline skips windows with no valid pixel.
    h, w, tile = 70, 100, 16
    p = rng.random((3, h, w)).astype(np.float32)
    valid = np.ones((h, w), bool)
    valid[:, :40] = False
    wins = tile_windows(h, w, tile, 0.25)
    sink = Collect(3, h, w)
    m = StreamingMerger(h, w, 3, wins, make_weight_fn(wins, "gaussian"), sink)
    skipped = 0
    for win in wins:
        v = read_window(valid[None], win, fill=0)[0].astype(bool)
        if not v.any():
            m.add_skipped(win)
            skipped += 1
        else:
            m.add(win, read_window(p, win), v)
    assert skipped > 0 and m.windows_skipped == skipped
    m.finish()
    np.testing.assert_array_equal(sink.valid, valid)
    np.testing.assert_allclose(sink.probs[:, valid], p[:, valid], rtol=2e-6)


def test_rows_are_emitted_as_soon_as_finished():
    h, w, tile = 50, 20, 16
    wins = tile_windows(h, w, tile, 0.25)  # rows 0, 12, 24, 34
    sink = Collect(1, h, w)
    m = StreamingMerger(h, w, 1, wins, None, sink)
    seen = []
    for win in wins:
        m.add(win, np.zeros((1, tile, tile), np.float32))
        seen.append(sink.next)
    # after the last window of window-row r, all rows above the next window row are out
    row_ends = {win.row_off: i for i, win in enumerate(wins)}  # last index per window row
    starts = sorted(row_ends)
    for nxt, r in zip(starts[1:], starts[:-1], strict=True):
        assert seen[row_ends[r]] == nxt
    assert seen[-1] == h


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_band_memory_does_not_grow_with_height(mode):
    tile, overlap, w = 32, 0.25, 24
    stride = stride_for(tile, overlap)
    held = {}
    for h in (100, 1000):
        wins = tile_windows(h, w, tile, overlap)
        m = StreamingMerger(h, w, 4, wins, make_weight_fn(wins, mode), lambda *a: None)
        probs = np.full((4, tile, tile), 0.25, np.float32)
        for batch in batched(wins, 3):  # batches straddle window rows
            for win in batch:
                m.add(win, probs)
        m.finish()
        assert m.max_band_rows <= tile + stride
        assert m.capacity <= tile + stride
        held[h] = (m.max_band_rows, m.capacity)
    assert held[100] == held[1000]


def test_uncovered_rows_come_out_as_nodata():
    # A plan that does not reach the bottom (not what tile_windows makes): rows still emitted.
    wins = [Window(0, 0, 4, 6)]
    sink = Collect(2, 10, 6)
    m = StreamingMerger(10, 6, 2, wins, None, sink)
    m.add(wins[0], np.full((2, 4, 6), 0.5, np.float32))
    assert sink.next == 10  # rows no window touches are finished straight away
    m.finish()
    assert sink.valid[:4].all() and not sink.valid[4:].any()


def test_plan_errors():
    wins = tile_windows(20, 20, 16, 0.25)
    m = StreamingMerger(20, 20, 2, wins, None, lambda *a: None)
    with pytest.raises(ValueError, match="shape"):
        m.add(wins[0], np.zeros((3, 16, 16), np.float32))
    m.add(wins[0], np.zeros((2, 16, 16), np.float32))
    with pytest.raises(ValueError, match="already added"):
        m.add(wins[0], np.zeros((2, 16, 16), np.float32))
    with pytest.raises(ValueError, match="not in the plan"):
        m.add_skipped(Window(3, 3, 16, 16))
    with pytest.raises(RuntimeError, match="never added"):
        m.finish()
    with pytest.raises(ValueError, match="twice"):
        StreamingMerger(20, 20, 2, [wins[0], wins[0]], None, lambda *a: None)


class Copying(Collect):
    """A sink that copies the rows it gets (as the GeoTIFF writers do) and says so."""

    copies_rows = True

    def __init__(self, k: int, height: int, width: int) -> None:
        super().__init__(k, height, width)
        self.buffers: set[int] = set()

    def __call__(self, row0: int, probs: np.ndarray, valid: np.ndarray) -> None:
        super().__call__(row0, probs, valid)
        self.buffers.add(probs.__array_interface__["data"][0])


def test_lent_rows_are_the_same_rows_in_reused_arrays():
    """A sink that copies what it keeps gets every band in the merge thread's reused arrays
    (no fresh pages per band), with the same values as fresh rows."""
    rng = np.random.default_rng(5)
    arr = rng.random((3, 200, 150)).astype(np.float32)
    wins = tile_windows(200, 150, 64, 0.25)
    sinks = [Collect(3, 200, 150), Copying(3, 200, 150)]
    for sink, lend in zip(sinks, (False, True), strict=True):
        m = StreamingMerger(200, 150, 3, wins, make_weight_fn(wins, "gaussian"), sink, lend)
        for win in wins:
            m.add(win, read_window_reflect(arr, win))
        m.finish()
    assert sinks[0].probs.tobytes() == sinks[1].probs.tobytes()
    assert np.array_equal(sinks[0].valid, sinks[1].valid)
    assert sinks[1].calls > 2 and len(sinks[1].buffers) < sinks[1].calls


def test_lent_rows_come_in_pieces_of_at_most_emit_rows():
    """A band taller than EMIT_ROWS reaches a copying sink in pieces (kept in the cache
    through the sink's passes), with the values and rows of whole bands."""
    from mfaf_cli.stitch.merger import EMIT_ROWS

    rng = np.random.default_rng(6)
    h, w = 2 * EMIT_ROWS + 150, 90
    arr = rng.random((2, h, w)).astype(np.float32)
    wins = tile_windows(h, w, 2 * EMIT_ROWS + 32, 0.25)  # bands of ~1.5 EMIT_ROWS rows
    sinks = [Collect(2, h, w), Copying(2, h, w)]
    rows: list[int] = []
    for sink, lend in zip(sinks, (False, True), strict=True):
        m = StreamingMerger(h, w, 2, wins, make_weight_fn(wins, "gaussian"), sink, lend)
        for win in wins:
            m.add(win, read_window_reflect(arr, win))
        m.finish()
        rows.append(max(sink.rows))
    assert sinks[0].probs.tobytes() == sinks[1].probs.tobytes()
    assert np.array_equal(sinks[0].valid, sinks[1].valid)
    assert rows[0] > EMIT_ROWS >= rows[1]

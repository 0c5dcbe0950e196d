"""Property tests that complete test_windows.py / test_blend.py / test_merger.py.

Those cover tiles >= 3-4 px, overlaps <= 0.8-0.95 and a few sampled tile/overlap pairs for the
merger. Here: the whole accepted range (any tile >= 1, any overlap in [0, 1) that still
advances, heavily biased towards the extreme overlaps users reach for), and the merger fed
*disagreeing* random probabilities per window, where the blend must be a convex combination.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfaf_cli.errors import UsageError
from mfaf_cli.stitch import BLEND_MODES, StreamingMerger, make_weight_fn
from mfaf_cli.tiling import stride_for, tile_windows

OVERLAPS = st.one_of(
    st.floats(0.0, 0.999, allow_nan=False),
    st.sampled_from([0.0, 0.5, 0.75, 0.9, 0.95, 0.97, 0.99]),
)


@settings(max_examples=150, deadline=None)
@given(
    height=st.integers(1, 90),
    width=st.integers(1, 90),
    tile=st.integers(1, 96),
    overlap=OVERLAPS,
    mode=st.sampled_from(sorted(BLEND_MODES)),
)
def test_coverage_and_normalised_weights_over_the_whole_range(height, width, tile, overlap, mode):
    if stride_for(tile, overlap) < 1:
        with pytest.raises(UsageError, match="stride"):
            tile_windows(height, width, tile, overlap)
        return
    wins = tile_windows(height, width, tile, overlap)
    fn = make_weight_fn(wins, mode)
    count = np.zeros((height, width), np.int32)
    wsum = np.zeros((height, width), np.float64)
    crops = []
    for win in wins:
        w = fn(win)
        assert w.shape == (tile, tile) and np.isfinite(w).all() and (w > 0).all()
        c = win.clip(height, width)
        assert not c.is_empty()  # no window lies wholly outside the raster
        crop = w[: c.height, : c.width].astype(np.float64)
        count[c.slices] += 1
        wsum[c.slices] += crop
        crops.append((c, crop))
    assert count.min() >= 1  # every pixel covered
    total = np.zeros_like(wsum)
    for c, crop in crops:
        total[c.slices] += crop / wsum[c.slices]
    np.testing.assert_allclose(total, 1.0, rtol=1e-12)  # normalised weights sum to 1


class _Collect:
    def __init__(self, k: int, h: int, w: int) -> None:
        self.probs = np.full((k, h, w), np.nan, np.float32)
        self.valid = np.zeros((h, w), bool)

    def __call__(self, row0: int, probs: np.ndarray, valid: np.ndarray) -> None:
        self.probs[:, row0 : row0 + probs.shape[1]] = probs
        self.valid[row0 : row0 + probs.shape[1]] = valid


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 60),
    width=st.integers(1, 60),
    tile=st.integers(1, 40),
    overlap=OVERLAPS,
    mode=st.sampled_from(sorted(BLEND_MODES)),
    k=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_blend_of_disagreeing_windows_is_a_probability(height, width, tile, overlap, mode, k,
                                                      seed):  # fmt: skip
    """Each window predicts its own random softmax: every output pixel must still be a
    probability vector (sum 1), inside the range of the windows that cover it."""
    if stride_for(tile, overlap) < 1:
        return
    rng = np.random.default_rng(seed)
    wins = tile_windows(height, width, tile, overlap)
    sink = _Collect(k, height, width)
    merger = StreamingMerger(height, width, k, wins, make_weight_fn(wins, mode), sink)
    lo = np.full((k, height, width), np.inf)
    hi = np.full((k, height, width), -np.inf)
    for win in wins:
        logits = rng.normal(0, 3, (k, tile, tile))
        p = np.exp(logits - logits.max(axis=0))
        p = (p / p.sum(axis=0)).astype(np.float32)
        merger.add(win, p)
        c = win.clip(height, width)
        crop = p[:, : c.height, : c.width]
        lo[(slice(None), *c.slices)] = np.minimum(lo[(slice(None), *c.slices)], crop)
        hi[(slice(None), *c.slices)] = np.maximum(hi[(slice(None), *c.slices)], crop)
    merger.finish()
    assert sink.valid.all()
    np.testing.assert_allclose(sink.probs.sum(axis=0), 1.0, atol=1e-5)
    assert (sink.probs >= lo - 1e-6).all() and (sink.probs <= hi + 1e-6).all()

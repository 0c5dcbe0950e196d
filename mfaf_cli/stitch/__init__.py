"""Blending overlapping window predictions and streaming finished rows to the writers."""

from __future__ import annotations

from mfaf_cli.stitch.merger import StreamingMerger
from mfaf_cli.tiling.blend import BLEND_MODES, blend_weights, make_weight_fn, window_tapers

__all__ = ["BLEND_MODES", "StreamingMerger", "blend_weights", "make_weight_fn", "window_tapers"]

"""Tile windows over a raster grid (pure arithmetic)."""

from __future__ import annotations

from mfaf_cli.tiling.windows import (
    Window,
    batched,
    check_tile,
    stride_for,
    tile_windows,
    validate_tiling,
)

__all__ = ["Window", "batched", "check_tile", "stride_for", "tile_windows", "validate_tiling"]

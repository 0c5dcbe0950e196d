"""Overlapping tile windows over a raster grid: pure arithmetic, no I/O.

Windows are what the predict spine reads, feeds to the network and blends back. They are
all ``tile × tile`` so batches stack; the last row/column of windows is shifted back to end
exactly at the raster edge (so no window sticks out of a raster larger than a tile), and a
raster smaller than a tile gets windows that extend past it, which the reader fills by
reflect padding and the merger crops away.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from mfaf_cli.errors import UsageError


@dataclass(frozen=True, slots=True)
class Window:
    """A rectangle of grid pixels: offsets of its top-left corner and its size.

    Offsets may be negative and the rectangle may extend past the raster; use
    :meth:`clip` to get the part inside a ``height × width`` raster.
    """

    row_off: int
    col_off: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height < 0 or self.width < 0:
            raise ValueError(f"window size must be >= 0, got {self.height}x{self.width}")

    @property
    def row_end(self) -> int:
        """One past the last row."""
        return self.row_off + self.height

    @property
    def col_end(self) -> int:
        """One past the last column."""
        return self.col_off + self.width

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices for indexing a (..., H, W) array."""
        return slice(self.row_off, self.row_end), slice(self.col_off, self.col_end)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def to_rasterio(self) -> Any:
        """The same rectangle as a :class:`rasterio.windows.Window`."""
        from rasterio.windows import Window as RioWindow

        return RioWindow(self.col_off, self.row_off, self.width, self.height)

    def clip(self, height: int, width: int) -> Window:
        """The part of this window inside a ``height × width`` raster (possibly empty)."""
        r0, c0 = max(self.row_off, 0), max(self.col_off, 0)
        r1, c1 = min(self.row_end, height), min(self.col_end, width)
        return Window(r0, c0, max(r1 - r0, 0), max(c1 - c0, 0))

    def is_empty(self) -> bool:
        return self.height == 0 or self.width == 0


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def stride_for(tile: int, overlap: float) -> int:
    """Distance between neighbouring window origins: ``tile - round(tile * overlap)``."""
    return tile - round(tile * overlap)


def validate_tiling(tile: int, overlap: float) -> int:
    """Check ``tile`` and ``overlap`` as given on the command line; return the stride.

    Raises:
        UsageError: tile not a positive integer, overlap outside [0, 1), or an overlap so
            close to 1 that windows would not advance.
    """
    if not _is_int(tile) or tile <= 0:
        raise UsageError(f"tile must be a positive number of pixels, got {tile!r}; e.g. --tile 256")
    try:
        ov = float(overlap)
    except (TypeError, ValueError):
        raise UsageError(
            f"overlap must be a number in [0, 1), got {overlap!r}; e.g. --overlap 0.25"
        ) from None
    if not math.isfinite(ov) or not 0.0 <= ov < 1.0:
        raise UsageError(
            f"overlap must be in [0, 1), got {overlap!r}; use e.g. --overlap 0.25 "
            "(a fraction of the tile, not pixels)"
        )
    stride = stride_for(tile, ov)
    if stride < 1:
        raise UsageError(
            f"overlap {overlap!r} leaves no stride for tile {tile} (windows would not advance); "
            "use a smaller --overlap, e.g. 0.25"
        )
    return stride


def _offsets(size: int, tile: int, stride: int) -> list[int]:
    """Window origins along one axis: every ``stride``, the last shifted to end at ``size``."""
    if size <= tile:
        return [0]
    offs = list(range(0, size - tile, stride))
    offs.append(size - tile)
    return offs


def tile_windows(height: int, width: int, tile: int, overlap: float) -> list[Window]:
    """All ``tile × tile`` windows covering a ``height × width`` raster, in raster order.

    Args:
        height, width: raster size in pixels (>= 1).
        tile: window side in pixels.
        overlap: fraction of the tile shared by neighbouring windows, in [0, 1).

    Returns:
        Windows row-major (top to bottom, left to right within a row). Every pixel is
        covered; windows never start past the edge; on an axis shorter than ``tile`` the
        single window starts at 0 and extends past the raster.

    Raises:
        UsageError: invalid tile/overlap (see :func:`validate_tiling`).
    """
    stride = validate_tiling(tile, overlap)
    if height < 1 or width < 1:
        raise ValueError(f"raster size must be >= 1x1, got {height}x{width}")
    rows = _offsets(height, tile, stride)
    cols = _offsets(width, tile, stride)
    return [Window(r, c, tile, tile) for r in rows for c in cols]


def check_tile(tile: int, divisor: int, arch: str = "the model") -> None:
    """Refuse a tile size the network cannot take (its input must divide by ``divisor``).

    Raises:
        UsageError: e.g. "tile 250 is not a multiple of 16 required by mfafnet-s; use 256".
    """
    if divisor <= 1 or tile % divisor == 0:
        return
    suggestion = max(divisor, round(tile / divisor) * divisor)
    raise UsageError(
        f"tile {tile} is not a multiple of {divisor} required by {arch}; use {suggestion}"
    )


def batched(windows: Iterable[Window], batch_size: int) -> Iterator[list[Window]]:
    """Group windows into lists of at most ``batch_size``, keeping their order."""
    if not _is_int(batch_size) or batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
    batch: list[Window] = []
    for w in windows:
        batch.append(w)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch

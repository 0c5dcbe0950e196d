"""Target-aligned pixels (gdalwarp's ``-tap``): grids whose edges are multiples of the pixel size.

Two neighbouring scenes warped to one CRS and resolution land on the *same* pixel lattice only
if the grid's origin is a multiple of the resolution (as ESA WorldCover's fixed tiling); their
maps can then be mosaicked without resampling. On by default when ``--crs`` or
``--resolution`` is given (the user asked for a grid of their own); the reference's own grid
is kept otherwise.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from typing import Any

from rasterio.transform import Affine

from mfaf_cli.errors import UsageError

_TAP: contextvars.ContextVar[bool | None] = contextvars.ContextVar("mfaf_tap", default=None)

#: A pixel larger than this many degrees in a geographic CRS is a resolution meant in metres.
MAX_DEGREES = 1.0


@contextlib.contextmanager
def tap_default(tap: bool | None) -> Iterator[None]:
    """``--tap`` / ``--no-tap`` for every grid made inside (None: the default rule)."""
    token = _TAP.set(tap)
    try:
        yield
    finally:
        _TAP.reset(token)


def resolve_tap(tap: bool | None, crs: Any, resolution: Any, target: Any = None) -> bool:
    """Whether a grid is target-aligned: ``tap``, else the context's, else on when a CRS or a
    resolution is given. A geographic target CRS (``target``, default ``crs``) with a pixel
    over a degree is a resolution meant in metres: a usage error when aligning (the lattice
    would be whole degrees)."""
    on = tap if tap is not None else _TAP.get()
    if on is None:
        on = crs is not None or resolution is not None
    target = crs if target is None else target
    if on and target is not None and target.is_geographic and resolution is not None:
        pair = (resolution, resolution) if isinstance(resolution, int | float) else resolution
        if max(float(v) for v in pair) > MAX_DEGREES:
            raise UsageError(
                f"--tap on a grid in {target.to_string()} (degrees) with --resolution "
                f"{resolution}: the resolution is in the CRS's units, degrees; give e.g. "
                "--resolution 0.0001 (about 10 m), or a projected CRS for metres"
            )
    return bool(on)


def aligned_bounds(
    bounds: tuple[float, float, float, float], res: tuple[float, float]
) -> tuple[float, float, float, float]:
    """The smallest box with edges on multiples of ``res`` that holds ``bounds`` (a tolerance
    of 1e-6 px keeps an edge already on the lattice where it is)."""
    rx, ry = res
    eps = 1e-6

    def down(v: float, r: float) -> float:
        return math.floor(v / r + eps) * r

    def up(v: float, r: float) -> float:
        return math.ceil(v / r - eps) * r

    left, bottom, right, top = bounds
    return (down(left, rx), down(bottom, ry), up(right, rx), up(top, ry))


def align_grid(grid: Any) -> Any:
    """``grid`` (north-up) grown to target-aligned edges, at its resolution."""
    t = grid.transform
    if t.b != 0 or t.d != 0:
        return grid
    rx, ry = grid.res
    left, bottom, right, top = aligned_bounds(grid.bounds, (rx, ry))
    width, height = max(1, round((right - left) / rx)), max(1, round((top - bottom) / ry))
    return type(grid)(grid.crs, Affine(rx, 0.0, left, 0.0, -ry, top), width, height)

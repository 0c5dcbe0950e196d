"""The target grid every modality is aligned to, and the overlap check against it.

The grid is the reference modality's own grid (optical or HSI) unless ``--crs``,
``--resolution`` or ``--bounds`` override it; everything downstream (windows, outputs) is in
grid pixel coordinates. Inputs are opened with :func:`mfaf_cli.io.inputs.open_raster`.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rasterio.crs import CRS
from rasterio.transform import Affine

from mfaf_cli.coreg.edges import bounds_in, centre_lon, suggested_grid
from mfaf_cli.errors import NoOverlapError, UsageError
from mfaf_cli.io.inputs import open_raster

Bounds = tuple[float, float, float, float]


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: CRS, affine transform and size in pixels."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    def __repr__(self) -> str:
        crs = self.crs.to_string() if self.crs else None
        return f"Grid(crs={crs}, transform={tuple(self.transform)[:6]}, {self.width}x{self.height})"

    @property
    def bounds(self) -> Bounds:
        """(left, bottom, right, top) in grid CRS units."""
        t = self.transform
        left, top = t.c, t.f
        right = left + t.a * self.width
        bottom = top + t.e * self.height
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y), positive."""
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def window_transform(self, window: Any) -> Affine:
        """Affine transform of a window (anything with row_off/col_off) of this grid."""
        return self.transform @ Affine.translation(window.col_off, window.row_off)

    def to_dict(self) -> dict[str, Any]:
        return {
            "crs": self.crs.to_string() if self.crs else None,
            "transform": list(self.transform)[:6],
            "width": self.width,
            "height": self.height,
        }

    def scaled(self, factor: float) -> Grid:
        """A coarser grid over the same bounds, ``factor`` times fewer pixels per side."""
        w = max(1, math.ceil(self.width / factor))
        h = max(1, math.ceil(self.height / factor))
        t = self.transform @ Affine.scale(self.width / w, self.height / h)
        return Grid(self.crs, t, w, h)


def parse_crs(crs: str | CRS | None) -> CRS | None:
    if crs is None or isinstance(crs, CRS):
        return crs
    try:
        out = CRS.from_user_input(crs)
    except (ValueError, TypeError) as err:  # rasterio's CRSError is a ValueError
        raise UsageError(f"--crs {crs!r} is not a valid CRS; use e.g. EPSG:32630") from err
    return out


def grid_from_reference(
    path: str | os.PathLike[str],
    crs: str | CRS | None = None,
    resolution: float | tuple[float, float] | None = None,
    bounds: Bounds | None = None,
    tap: bool | None = None,
) -> Grid:
    """The target grid: the reference raster's grid with optional overrides.

    Args:
        path: reference raster (optical or HSI).
        crs: target CRS (the reference extent is reprojected into it).
        resolution: target pixel size in target CRS units (one value or (x, y)).
        bounds: (left, bottom, right, top) in target CRS units; the grid covers exactly that.
        tap: target-aligned pixels (gdalwarp's ``-tap``): the grid's edges are multiples of
            the resolution, so grids of neighbouring scenes line up. None: the
            :func:`~mfaf_cli.coreg.tap.tap_default` in force, else on when ``crs`` or
            ``resolution`` is given.
    """
    from mfaf_cli.coreg.tap import align_grid, resolve_tap

    crs_obj = parse_crs(crs)
    with open_raster(path, "reference") as ds:
        grid = _grid_for(ds, crs_obj, resolution, bounds)
    on = resolve_tap(tap, crs_obj, resolution, grid.crs)
    return align_grid(grid) if on else grid


def check_resolution(
    resolution: float | tuple[float, float] | None,
) -> tuple[float, float] | None:
    """``--resolution`` as an (x, y) pair of positive sizes (None: the reference's)."""
    if resolution is None:
        return None
    pair = (resolution, resolution) if isinstance(resolution, int | float) else resolution
    res = (float(pair[0]), float(pair[1]))
    if not all(v > 0 and math.isfinite(v) for v in res):
        raise UsageError(f"--resolution must be positive, got {resolution}")
    return res


def check_bounds(bounds: Bounds) -> None:
    """``--bounds`` must enclose an area."""
    left, bottom, right, top = (float(v) for v in bounds)
    if not (right > left and top > bottom):
        raise UsageError(
            f"--bounds {bounds} is empty; give left,bottom,right,top with left<right, "
            "bottom<top, in the target CRS units"
        )


def _grid_for(
    ds: Any, crs: CRS | None, resolution: float | tuple[float, float] | None, bounds: Bounds | None
) -> Grid:
    res = check_resolution(resolution)
    if bounds is not None:
        check_bounds(bounds)
        left, bottom, right, top = (float(v) for v in bounds)
    if ds.crs is None:  # GCPs or RPCs: the grid is in their CRS unless --crs says otherwise
        from mfaf_cli.coreg.georef import Ground

        crs = crs or Ground.of(ds).crs  # type: ignore[union-attr]
    same_crs = crs is None or crs == ds.crs
    target_crs = ds.crs if crs is None else crs
    if same_crs and res is None and bounds is None and ds.transform.b == 0 and ds.transform.d == 0:
        return Grid(target_crs, ds.transform, ds.width, ds.height)
    # Reprojected / resampled / cropped grid.
    if same_crs and ds.transform.b == 0 and ds.transform.d == 0:
        native_res = (abs(ds.transform.a), abs(ds.transform.e))
        native_bounds: Bounds = tuple(ds.bounds)  # type: ignore[assignment]
    else:
        with warnings.catch_warnings():  # rasterio's from_bounds multiplies affines with `*`,
            warnings.simplefilter("ignore", PendingDeprecationWarning)  # deprecated in affine 3
            t, w, h = suggested_grid(ds, target_crs, resolution)  # across 180°, around poles
        native_res = (abs(t.a), abs(t.e))
        native_bounds = (t.c, t.f + t.e * h, t.c + t.a * w, t.f)
    rx, ry = res if res is not None else native_res
    left, bottom, right, top = bounds if bounds is not None else native_bounds
    width = max(1, round((right - left) / rx))
    height = max(1, round((top - bottom) / ry))
    transform = Affine(rx, 0.0, left, 0.0, -ry, top)
    return Grid(target_crs, transform, width, height)


def footprint_in(ds: Any, crs: CRS, near: Bounds | None = None) -> Bounds:
    """A raster's bounds expressed in ``crs`` (densified edges, so curved edges are covered);
    in a geographic ``crs`` with longitudes continuous around the middle of ``near`` (e.g. the
    grid's bounds), so a footprint across 180° is never ``left > right``."""
    if ds.crs == crs:
        return tuple(ds.bounds)  # type: ignore[return-value]
    if ds.crs is None:  # GCPs or RPCs
        from mfaf_cli.coreg.georef import Ground

        return Ground.of(ds).footprint(crs)  # type: ignore[union-attr]
    return bounds_in(ds.crs, crs, tuple(ds.bounds), centre_lon(crs, near) if near else None)


def check_overlap(ds: Any, grid: Grid, name: str, ref_name: str = "the target grid") -> None:
    """Raise if ``ds`` does not cover at least one target pixel of ``grid``."""
    fl, fb, fr, ft = footprint_in(ds, grid.crs, grid.bounds)
    gl, gb, gr, gt = grid.bounds
    ow = min(fr, gr) - max(fl, gl)
    oh = min(ft, gt) - max(fb, gb)
    path = Path(ds.name).name
    if ow <= 0 or oh <= 0:
        raise NoOverlapError(
            f"{name} {path} does not overlap {ref_name} (its extent in {grid.crs.to_string()} is "
            f"{_fmt_bounds((fl, fb, fr, ft))}, the grid's is {_fmt_bounds(grid.bounds)}); "
            "check that both files cover the same area and have the right CRS"
        )
    rx, ry = grid.res
    tol = 1 - 1e-6  # an exact one-pixel overlap computed in floating point is one pixel
    if ow < rx * tol or oh < ry * tol:
        raise NoOverlapError(
            f"{name} {path} overlaps {ref_name} by less than one target pixel "
            f"({ow:.3g} × {oh:.3g} CRS units, pixel {rx:.3g} × {ry:.3g}); "
            "the inputs cover different areas"
        )


def _fmt_bounds(b: Bounds) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in b) + ")"

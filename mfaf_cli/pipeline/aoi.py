"""``--aoi``: a run over a polygon rather than a rectangle.

The run's grid is the polygon's bounds on the reference grid (a crop anchored as
``--bounds`` is, so the windows are those of the whole run); :class:`AoiScene` then marks
every pixel outside the polygon invalid, so it is nodata in every output and in no polygon,
and it does not read at all a block that no window touching the polygon needs. Pixels inside
the polygon get exactly the windows (and context) of a whole-scene run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mfaf_cli.coreg.grid import Grid, grid_from_reference
from mfaf_cli.errors import NoOverlapError, UsageError
from mfaf_cli.io.aoi import Aoi
from mfaf_cli.tiling.windows import Window


def aoi_grid(ref_path: str, aoi: Aoi, *, crs: Any = None, resolution: Any = None,
             bounds: Any = None) -> tuple[Grid, Any]:  # fmt: skip
    """The grid over the polygon's bounds and the polygon in that grid's CRS."""
    if bounds is not None:
        raise UsageError("--aoi and --bounds both set the extent: give one of them")
    full = grid_from_reference(ref_path, crs=crs, resolution=resolution)
    geom = aoi.in_crs(full.crs)
    if geom.is_empty or not geom.intersects(_box(full.bounds)):
        raise NoOverlapError(
            f"--aoi {aoi.source} does not overlap the reference input ({_fmt(full.bounds)} "
            f"in {full.crs}); check the file and its CRS"
        )
    grid = grid_from_reference(ref_path, crs=crs, resolution=resolution, bounds=geom.bounds)
    return grid, geom


def _box(b: Any) -> Any:
    from shapely.geometry import box

    return box(*b)


def _fmt(b: Any) -> str:
    return ", ".join(f"{v:.6g}" for v in b)


def polygon_mask(geom: Any, grid: Grid, window: Window) -> np.ndarray:
    """(h, w) bool: pixel centres of ``window`` (grid pixels, may reach past it) inside."""
    from rasterio.features import geometry_mask
    from rasterio.transform import Affine

    transform = grid.transform @ Affine.translation(window.col_off, window.row_off)
    return geometry_mask([geom], (window.height, window.width), transform, invert=True)


def needed_windows(geom: Any, grid: Grid, windows: list[Window]) -> list[Window]:
    """The windows (read-grid pixels) whose pixel centres span an area the polygon enters
    (a window that only shares an edge with it is not needed)."""
    import shapely
    from shapely.geometry import box

    def foot(w: Window) -> Any:
        x0, y0 = grid.transform @ (w.col_off + 0.5, w.row_off + 0.5)
        x1, y1 = grid.transform @ (w.col_off + w.width - 0.5, w.row_off + w.height - 0.5)
        return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    shapely.prepare(geom)
    hits = shapely.intersects(geom, [foot(w) for w in windows])
    return [w for w, hit in zip(windows, hits, strict=True) if hit]


def _overlaps(a: Window, b: Window) -> bool:
    return (a.row_off < b.row_off + b.height and b.row_off < a.row_off + a.height
            and a.col_off < b.col_off + b.width and b.col_off < a.col_off + a.width)  # fmt: skip


def _clip(win: Window, hits: list[Window]) -> Window:
    """The part of ``win`` inside the bounding box of the windows ``hits``."""
    r0 = max(win.row_off, min(h.row_off for h in hits))
    c0 = max(win.col_off, min(h.col_off for h in hits))
    r1 = min(win.row_off + win.height, max(h.row_off + h.height for h in hits))
    c1 = min(win.col_off + win.width, max(h.col_off + h.width for h in hits))
    return Window(r0, c0, r1 - r0, c1 - c0)


class AoiScene:
    """An :class:`~mfaf_cli.coreg.align.AlignedScene` seen through a polygon: ``read``
    marks pixels outside it invalid and skips reads no needed window overlaps."""

    def __init__(self, scene: Any, geom: Any, needed: list[Window]) -> None:
        self._scene, self._geom, self._needed = scene, geom, needed
        self.skipped_reads = 0

    def __getattr__(self, name: str) -> Any:  # grid, sources, band_choices, ...: the scene's
        return getattr(self._scene, name)

    def read(
        self, window: Any, out: Mapping[str, np.ndarray] | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        win = Window(int(window.row_off), int(window.col_off), int(window.height),
                     int(window.width))  # fmt: skip
        hits = [n for n in self._needed if _overlaps(win, n)]
        if not hits:
            self.skipped_reads += 1
            return self._empty(win, out)
        part = _clip(win, hits)
        if part == win:
            arrays, valid = self._scene.read(window, out=out)
        else:  # only the columns / rows the needed windows cover; NaN (invalid) around them
            self.skipped_reads += 1
            arrays, valid = self._empty(win, out)
            got, ok = self._scene.read(part)
            r, c = part.row_off - win.row_off, part.col_off - win.col_off
            for name, arr in got.items():
                arrays[name][:, r : r + part.height, c : c + part.width] = arr
            valid[r : r + part.height, c : c + part.width] = ok
        valid &= polygon_mask(self._geom, self._scene.grid, win)
        return arrays, valid

    def _empty(
        self, win: Window, out: Mapping[str, np.ndarray] | None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        arrays = {}
        for name, bands in self._scene.band_counts.items():
            arr = out.get(name) if out is not None else None
            if arr is None or arr.shape != (bands, win.height, win.width):
                arr = np.empty((bands, win.height, win.width), np.float32)
            arr.fill(np.nan)
            arrays[name] = arr
        return arrays, np.zeros((win.height, win.width), dtype=bool)


def aoi_scene(scene: Any, geom: Any, plan: Any) -> AoiScene:
    """``scene`` (on the plan's read grid) seen through ``geom``."""
    windows = [plan.read_window(w) for w in plan.windows]
    return AoiScene(scene, geom, needed_windows(geom, scene.grid, windows))

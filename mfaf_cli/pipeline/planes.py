"""Per-pixel planes the sink needs, taken from the run's own reads (no second read).

The exclusion check's reason codes (of the raw inputs, in sensor units) and a fallback run's
source codes depend only on each pixel's own input values. The reader threads already hold
those values, one row chunk at a time, before the model's normalisation; a :class:`PlaneTap`
computes the plane there and keeps it in a :class:`PlaneStore` by grid position until the
merge thread's sink asks for the finished rows. Before, the exclusion check and the source
mapper opened the inputs again and decoded every block a second and a third time on the merge
thread (profiled: two thirds of the null engine's merge thread).

A tap wraps a scene (:class:`~mfaf_cli.coreg.align.AlignedScene` or a wrapper of one) and is
read through like it; it keeps the part of each read inside the grid (reflect-padded margins
are not pixels of the grid).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mfaf_cli.scratch import scratch
from mfaf_cli.tiling.windows import Window

#: ``plane_of(arrays) -> (h, w) uint8``: the plane of a read's arrays (modality -> (C, h, w)).
PlaneOf = Callable[[Mapping[str, np.ndarray]], np.ndarray]


class PlaneStore:
    """uint8 planes put by reader threads at read-grid positions, taken by the sink as
    finished output rows.

    ``offset``: the read grid's origin from the output grid's origin, (rows, cols), zero or
    negative (``WindowPlan.read_offset``). The sink takes rows in order within a column
    panel, so a piece is dropped once a take has reached its last row in its columns: the
    store holds about the rows the readers run ahead of the merger.
    """

    def __init__(self) -> None:
        self.offset = (0, 0)
        self._pieces: list[tuple[int, int, np.ndarray]] = []
        self._lock = threading.Lock()

    def put(self, row0: int, col0: int, plane: np.ndarray) -> None:
        """Keep ``plane`` (h, w) at read-grid rows ``row0..``, columns ``col0..``."""
        with self._lock:
            self._pieces.append((row0, col0, plane))

    def take(
        self, row0: int, col0: int, valid: np.ndarray, fill: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        """The plane at output-grid rows ``row0..`` and columns ``col0..`` (``valid``'s
        shape), ``fill`` where ``valid`` is False (into ``out``, (h, w) uint8, if given).
        Every valid pixel must have been put: it was read for a window that covers it."""
        h, w = valid.shape
        r0, c0 = row0 - self.offset[0], col0 - self.offset[1]
        out = np.empty((h, w), dtype=np.uint8) if out is None else out
        out.fill(fill)
        seen = scratch("planes.seen", (h, w), bool)  # the merge thread's, reused row to row
        seen.fill(False)
        with self._lock:
            kept = []
            for piece in self._pieces:
                pr, pc, plane = piece
                rows = (max(r0, pr), min(r0 + h, pr + plane.shape[0]))
                cols = (max(c0, pc), min(c0 + w, pc + plane.shape[1]))
                if cols[0] < cols[1] and rows[0] < rows[1]:
                    dst = np.s_[rows[0] - r0 : rows[1] - r0, cols[0] - c0 : cols[1] - c0]
                    out[dst] = plane[rows[0] - pr : rows[1] - pr, cols[0] - pc : cols[1] - pc]
                    seen[dst] = True
                done = cols[0] < cols[1] and pr + plane.shape[0] <= r0 + h
                if not done:
                    kept.append(piece)
            self._pieces = kept
        unseen = np.logical_not(seen, out=seen)
        if np.logical_and(unseen, valid, out=unseen).any():
            raise RuntimeError(
                f"no plane was read for valid pixels of rows {row0}..{row0 + h}, columns "
                f"{col0}..{col0 + w} (a read that bypassed the tap)"
            )
        np.copyto(out, np.uint8(fill), where=np.logical_not(valid, out=seen))
        return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._pieces)


def inside(window: Any, height: int, width: int) -> Window | None:
    """The part of ``window`` inside a ``height`` x ``width`` grid (None: no part)."""
    r0, c0 = max(0, int(window.row_off)), max(0, int(window.col_off))
    r1 = min(height, int(window.row_off) + int(window.height))
    c1 = min(width, int(window.col_off) + int(window.width))
    if r1 <= r0 or c1 <= c0:
        return None
    return Window(r0, c0, r1 - r0, c1 - c0)


class PlaneTap:
    """``scene`` read through as it is, each read's plane (``plane_of`` its arrays, inside
    the grid) put in ``store``. Everything else (grid, sources, band counts...) is the
    scene's."""

    def __init__(self, scene: Any, plane_of: PlaneOf, store: PlaneStore) -> None:
        self.scene, self._plane_of, self.store = scene, plane_of, store

    def read(
        self, window: Any, out: Mapping[str, np.ndarray] | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        arrays, valid = self.scene.read(window, out=out)
        self.keep(window, arrays)
        return arrays, valid

    def keep(self, window: Any, arrays: Mapping[str, np.ndarray]) -> None:
        """Put the plane of ``arrays``, a read of ``window`` from :attr:`scene` not changed
        since (a strip reader may compute it in another thread than the read's)."""
        part = inside(window, self.scene.grid.height, self.scene.grid.width)
        if part is not None:
            dr, dc = part.row_off - int(window.row_off), part.col_off - int(window.col_off)
            cut = np.s_[dr : dr + part.height, dc : dc + part.width]
            plane = self._plane_of({k: v[:, cut[0], cut[1]] for k, v in arrays.items()})
            self.store.put(part.row_off, part.col_off, plane)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scene, name)


#: ``tapper(scene) -> PlaneTap``: e.g. ``StoredExcluder.tap``.
Tapper = Callable[[Any], PlaneTap]


@dataclass(frozen=True)
class ReadTaps:
    """The taps of one run, by the scene they read: ``raw`` the inputs as read (sensor
    values, below any fallback mask: the exclusion check), ``mapped`` the scene the
    predictor reads (a fallback run's source codes)."""

    raw: Sequence[Tapper] = ()
    mapped: Sequence[Tapper] = ()


def tapped(scene: Any, tappers: Sequence[Tapper], offset: tuple[int, int]) -> Any:
    """``scene`` read through each tapper's tap, whose store learns the plan's read offset
    (``WindowPlan.read_offset``: the sink asks in output-grid pixels)."""
    for tapper in tappers:
        tap = tapper(scene)
        tap.store.offset = offset
        scene = tap
    return scene

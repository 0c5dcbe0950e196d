"""Sinks of the inference core: what happens to finished rows of blended probabilities.

A sink is called with ``(row0, probs (K, r, w) float32, valid (r, w) bool, col0=0)`` for
consecutive row bands of the output grid, in order, from the core's merge worker thread; a
scene wider than the core's column panel comes panel by panel (each panel's rows in order,
``col0`` its first column), so memory does not grow with the scene's width. A sink that also
has ``row_needs()`` and ``write_finished(rows)``
(:class:`~mfaf_cli.stitch.rows.FinishedRowsSink`) can be fed by the device merger instead,
which hands it labels and stored planes computed on the GPU. The GeoTIFF
outputs (label / probabilities / confidence) are :class:`~mfaf_cli.io.raster.OutputSet`;
this module adds a confusion-matrix sink (so evaluate scores a scene without writing a map)
and a null sink (so benchmarks measure the machinery alone).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from mfaf_cli.coreg.grid import Grid
from mfaf_cli.errors import LabelError
from mfaf_cli.metadata import NODATA_LABEL
from mfaf_cli.stitch.rows import FinishedRows, RowNeeds


class NullSink:
    """Counts pixels and nothing else."""

    def __init__(self) -> None:
        self.pixels = 0
        self.valid_pixels = 0

    def __call__(self, row0: int, probs: np.ndarray, valid: np.ndarray, col0: int = 0) -> None:
        self.pixels += valid.size
        self.valid_pixels += int(valid.sum())

    def row_needs(self) -> RowNeeds:
        return RowNeeds()

    def write_finished(self, rows: FinishedRows) -> None:
        self.pixels += rows.index.size
        self.valid_pixels += int(np.count_nonzero(rows.valid))

    def __enter__(self) -> NullSink:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class ConfusionSink:
    """Scores rows against a truth raster as they come, the way
    :func:`~mfaf_cli.training.evaluate.raster_confusion` scores a written label map:
    label = arg-max where valid (nodata elsewhere), truth resampled nearest onto the grid,
    ``label_fn``/``mapping`` applied, ``ignore_index`` skipped."""

    def __init__(
        self,
        truth_path: str | os.PathLike[str],
        grid: Grid,
        num_classes: int,
        *,
        label_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        mapping: dict[int, int] | None = None,
        ignore_index: int = NODATA_LABEL,
        block: int | None = None,
        calibration: bool = False,
        excluder: Callable[[int, int, np.ndarray], np.ndarray] | None = None,
    ) -> None:
        from mfaf_cli.scores.calibration import count_length
        from mfaf_cli.scores.stats import block_grid

        self.truth_path = truth_path
        #: with ``excluder`` (mfaf_cli.pipeline.exclusion): ``kept`` scores only the pixels
        #: its check keeps (code 0), beside ``confusion`` of all pixels
        self.excluder = excluder
        self.grid = grid
        self.num_classes = int(num_classes)
        self.label_fn, self.mapping, self.ignore_index = label_fn, mapping, ignore_index
        # spatial blocks (units of a one-scene bootstrap): one matrix per block; the sum is
        # ``confusion``. ``calibration``: reliability / Brier / NLL counts per block as well.
        self.block = int(block or max(grid.height, grid.width, 1))
        self.block_shape = block_grid(grid.height, grid.width, self.block)
        nb = self.block_shape[0] * self.block_shape[1]
        self.block_confusion = np.zeros((nb, self.num_classes, self.num_classes), np.int64)
        self.calibration = calibration
        self.block_calibration = np.zeros((nb, count_length()), np.float64)
        self.kept = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self._ds: Any = None

    @property
    def confusion(self) -> np.ndarray:
        """The scene's confusion matrix (the sum over its blocks)."""
        return self.block_confusion.sum(axis=0)

    def __enter__(self) -> ConfusionSink:
        from mfaf_cli.io.inputs import open_raster

        self._ds = open_raster(self.truth_path, "truth", require_crs=False).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ds is not None:
            self._ds.close()
            self._ds = None

    def _truth_rows(self, row0: int, rows: int, col0: int, cols: int) -> np.ndarray:
        from rasterio.windows import Window as RioWindow

        from mfaf_cli.io.truth import truth_on_grid

        ds, g = self._ds, self.grid
        if ds.crs == g.crs and ds.transform == g.transform and ds.shape == (g.height, g.width):
            t = ds.read(1, window=RioWindow(col0, row0, cols, rows)).astype(np.float64)
            if ds.nodata is not None:
                t[t == ds.nodata] = np.nan
            return t
        from rasterio.transform import Affine

        transform = g.transform @ Affine.translation(col0, row0)
        return truth_on_grid(ds, g.crs, transform, (rows, cols))

    def __call__(self, row0: int, probs: np.ndarray, valid: np.ndarray, col0: int = 0) -> None:
        from mfaf_cli.io.raster import argmax_max

        idx = argmax_max(probs)[0].astype(np.int64)
        self._score(row0, col0, idx, valid, probs if self.calibration else None)

    def row_needs(self) -> RowNeeds:
        # the index is all the confusion needs; calibration needs the probabilities
        return RowNeeds(probabilities="float32" if self.calibration else None)

    def write_finished(self, rows: FinishedRows) -> None:
        self._score(rows.row0, rows.col0, rows.index.astype(np.int64), rows.valid,
                    rows.probabilities if self.calibration else None)  # fmt: skip

    def _score(
        self, row0: int, col0: int, idx: np.ndarray, valid: np.ndarray, probs: Any = None
    ) -> None:
        """Add rows of predicted class planes ``idx`` (int64, overwritten where not valid)
        to their blocks' confusion matrices (and calibration counts, given ``probs``)."""
        from mfaf_cli.io.truth import truth_labels
        from mfaf_cli.scores.calibration import calibration_counts
        from mfaf_cli.scores.metrics import confusion_matrix
        from mfaf_cli.scores.stats import block_ids

        idx[~valid] = self.ignore_index
        rows, cols = valid.shape
        truth = truth_labels(
            self._truth_rows(row0, rows, col0, cols), self.label_fn, self.mapping,
            self.ignore_index,
        )  # fmt: skip
        ids = block_ids(row0, col0, rows, cols, self.block, self.block_shape[1])
        nb = len(self.block_confusion)
        try:
            self.block_confusion += confusion_matrix(
                idx, truth, self.num_classes, self.ignore_index, groups=ids, n_groups=nb
            )
            if self.excluder is not None:
                idx[self.excluder(row0, col0, valid) != 0] = self.ignore_index
                self.kept += confusion_matrix(idx, truth, self.num_classes, self.ignore_index)
        except LabelError as err:
            name = os.path.basename(os.fspath(self.truth_path))
            raise LabelError(f"{name}: {err} (classes the model does not know)") from None
        if probs is not None:
            keep = valid & (truth != self.ignore_index)
            self.block_calibration += calibration_counts(
                probs, np.where(keep, truth, 0), keep, groups=ids, n_groups=nb
            )

"""Finished rows: what a merger that computes labels itself hands to a sink.

:class:`~mfaf_cli.stitch.StreamingMerger` hands a sink raw blended probabilities; the sink
derives labels and stored probabilities on the CPU. A merger whose band lives on a GPU
(:class:`~mfaf_cli.stitch.torch_merger.DeviceMerger`) derives them there instead and copies
only the results back, so its sinks take :class:`FinishedRows` and say beforehand, through
:class:`RowNeeds`, which planes they want copied. The stored forms (uint8 scale, nodata
values) are defined here once, for both paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from mfaf_cli.metadata import NODATA_LABEL

ProbDtype = Literal["uint8", "float32"]
#: uint8 probabilities: 0..254 maps to 0..1, 255 is nodata.
PROB_SCALE = 254
PROB_NODATA_U8 = 255
#: The most class planes a uint8 index with :data:`NODATA_LABEL` for nodata can tell apart.
MAX_INDEXED_CLASSES = NODATA_LABEL


@dataclass(frozen=True)
class RowNeeds:
    """The planes a sink wants besides the arg-max index, in their stored dtype (None: not
    wanted)."""

    probabilities: ProbDtype | None = None
    confidence: ProbDtype | None = None


@dataclass(frozen=True)
class FinishedRows:
    """Rows ``row0 .. row0 + r`` (columns ``col0 .. col0 + W``) of the output grid, ready to
    store.

    ``index`` (r, W) uint8: arg-max class plane (first on ties), :data:`NODATA_LABEL` where
    not valid. ``probabilities`` (K, r, W) and ``confidence`` (1, r, W), when asked for: as
    stored (uint8 ``floor(p*254 + 0.5)`` with 255 nodata, or float32 with NaN nodata). The
    arrays are the sink's to keep.
    """

    row0: int
    index: np.ndarray
    probabilities: np.ndarray | None = None
    confidence: np.ndarray | None = None
    col0: int = 0  # first column (a column panel's; 0 for whole-width rows)

    @property
    def valid(self) -> np.ndarray:
        return self.index != NODATA_LABEL

    @property
    def rows(self) -> int:
        return int(self.index.shape[0])


@runtime_checkable
class FinishedRowsSink(Protocol):
    """A sink that can take :class:`FinishedRows` (besides raw probabilities)."""

    def row_needs(self) -> RowNeeds: ...

    def write_finished(self, rows: FinishedRows) -> None: ...


def empty_rows(row0: int, rows: int, width: int, num_classes: int, needs: RowNeeds) -> FinishedRows:
    """All-nodata rows (no window touched them), in the stored forms ``needs`` asks for."""

    def stored(planes: int, dtype: ProbDtype | None) -> np.ndarray | None:
        if dtype is None:
            return None
        if dtype == "uint8":
            return np.full((planes, rows, width), PROB_NODATA_U8, dtype=np.uint8)
        return np.full((planes, rows, width), np.nan, dtype=np.float32)

    return FinishedRows(
        row0,
        np.full((rows, width), NODATA_LABEL, dtype=np.uint8),
        stored(num_classes, needs.probabilities),
        stored(1, needs.confidence),
    )

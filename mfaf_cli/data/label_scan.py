"""Block-wise scans of label rasters (nothing holds a whole label raster in memory)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def labelled(block: np.ndarray, nodata: float | None, ignores: Sequence[float]) -> np.ndarray:
    """True where a label block holds a value that is neither nodata nor an ignore value."""
    keep = np.ones(block.shape, dtype=bool)
    if nodata is not None:
        keep &= ~np.isnan(block) if math.isnan(nodata) else block != nodata
    for v in ignores:
        keep &= block != v
    return keep


def has_labelled_pixel(path: Path, ignores: Sequence[float] = ()) -> bool:
    """Whether band 1 of ``path`` holds any labelled pixel, reading block by block and
    stopping at the first one."""
    import rasterio

    with rasterio.open(path) as ds:
        nodata = ds.nodata
        for _, window in ds.block_windows(1):
            if labelled(ds.read(1, window=window), nodata, ignores).any():
                return True
    return False

"""Reading a truth raster for scoring: onto a grid block, and from raw values to class ids.

Both evaluate's raster comparison (``training/evaluate.py``) and the inference core's
confusion sink (``pipeline/sinks.py``) score against truth this way, so it lives below both.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mfaf_cli.errors import InputError


def apply_mapping(values: np.ndarray, mapping: dict[int, int] | None) -> np.ndarray:
    """Map truth values; values not in the mapping pass through unchanged."""
    if not mapping:
        return values
    out = values.copy()
    for k, v in mapping.items():
        out[values == k] = v
    return out


def truth_on_grid(
    truth_ds: Any, dst_crs: Any, dst_transform: Any, shape: tuple[int, int]
) -> np.ndarray:
    """Truth band 1 resampled (nearest) onto a grid block; NaN where nodata/outside."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    if truth_ds.crs is None or dst_crs is None:
        raise InputError(
            f"{Path(truth_ds.name).name} or the prediction has no CRS; both must be georeferenced "
            "(or have the same grid) to be compared"
        )
    out = np.full(shape, np.nan, dtype=np.float64)
    reproject(
        source=rasterio.band(truth_ds, 1),
        destination=out,
        src_transform=truth_ds.transform,
        src_crs=truth_ds.crs,
        src_nodata=truth_ds.nodata,
        dst_transform=dst_transform,
        dst_crs=dst_crs,
        dst_nodata=np.nan,
        resampling=Resampling.nearest,
    )
    return out


def truth_labels(
    t: np.ndarray,
    label_fn: Callable[[np.ndarray], np.ndarray] | None,
    mapping: dict[int, int] | None,
    ignore_index: int,
) -> np.ndarray:
    """Truth values (float, NaN = nodata/outside) → class ids, ``ignore_index`` where unusable."""
    finite = np.isfinite(t)
    raw = np.where(finite, t, -1).astype(np.int64)
    if label_fn is not None:  # only real values reach the dataset's mapping (no -1 filler)
        truth = np.full(raw.shape, ignore_index, dtype=np.int64)
        if finite.any():
            truth[finite] = label_fn(raw[finite])
    else:
        truth = apply_mapping(raw, mapping)
        truth[(raw == -1) | ~finite] = ignore_index
    return truth

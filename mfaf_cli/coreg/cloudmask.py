"""Optical masks: which optical pixels are clouds, shadows, snow or otherwise unusable.

``--optical-mask FILE`` is one of three things, read on the run's grid like any input
(nearest resampling, per window, so a mask on another grid or CRS is co-registered):

* a **Sentinel-2 L2A SCL band** (file name or band description ``SCL``): its classes 0 no data,
  1 saturated/defective, 3 cloud shadow, 8/9 cloud medium/high probability, 10 thin cirrus and
  11 snow/ice mask the optical; values outside 0–11 are not an SCL band (an error);
* a **cloud-probability raster** (``MSK_CLDPRB``, s2cloudless; 0–100) with
  ``--cloud-threshold T``: pixels with probability above ``T`` are masked;
* a **0/1 mask**: 1 masked, 0 usable (other values are an error naming the other two kinds).

Mask nodata (outside the mask's footprint) masks nothing: the mask says nothing there. Masked
optical pixels count as missing (NaN), exactly like optical nodata.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from mfaf_cli.errors import InputError, UsageError

MaskKind = Literal["binary", "scl", "probability"]
#: The name under which the mask is read beside the modalities (categorical: nearest).
MASK_INPUT = "optical_mask"
#: SCL classes that make an optical pixel unusable (ESA's L2A scene classification).
SCL_MASKED: dict[int, str] = {
    0: "no data", 1: "saturated or defective", 3: "cloud shadows",
    8: "cloud medium probability", 9: "cloud high probability", 10: "thin cirrus",
    11: "snow or ice",
}  # fmt: skip
SCL_MAX = 11
_SCL_NAME = re.compile(r"(?:^|[_\-.])SCL(?:[_\-.]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class OpticalMask:
    """A mask input: its path, what its values mean and (probability) the threshold."""

    path: str
    kind: MaskKind
    threshold: float | None = None

    def masked(self, values: np.ndarray) -> np.ndarray:
        """(h, w) bool: optical pixels this mask takes out, from its (1, h, w) values read on
        the grid (NaN = the mask's nodata: nothing masked there). Raises ``InputError`` on
        values the kind does not allow."""
        v = values[0]
        known = np.isfinite(v)
        if self.kind == "probability":
            assert self.threshold is not None
            return known & (v > self.threshold)
        seen = v[known]
        if self.kind == "scl":
            bad = seen[(seen < 0) | (seen > SCL_MAX) | (seen != np.round(seen))]
            if bad.size:
                raise InputError(
                    f"optical mask {Path(self.path).name} is read as a Sentinel-2 SCL band but "
                    f"holds {float(bad[0]):g}; SCL classes are 0-11"
                )
            return known & np.isin(v, list(SCL_MASKED))
        bad = seen[(seen != 0) & (seen != 1)]
        if bad.size:
            raise InputError(
                f"optical mask {Path(self.path).name} holds {float(bad[0]):g}; a mask raster is "
                "0 (usable) / 1 (masked): for a cloud-probability raster give --cloud-threshold, "
                "for a Sentinel-2 SCL band name the file ..._SCL_20m or describe its band SCL"
            )
        return known & (v == 1)


def is_scl(path: str | os.PathLike[str], description: str | None = None) -> bool:
    """Whether a file is a Sentinel-2 SCL band, by its name or its band description."""
    if description and description.strip().upper() == "SCL":
        return True
    return bool(_SCL_NAME.search(Path(path).stem))


def optical_mask(
    path: str | os.PathLike[str], threshold: float | None = None, *, kind: MaskKind | None = None
) -> OpticalMask:
    """The mask input for ``--optical-mask`` / ``--cloud-threshold``: a threshold makes it a
    probability raster (0-100), an SCL name or band description an SCL band, else a 0/1 mask.
    An S2 L2A folder gives its SCL band (:func:`find_scl`)."""
    if threshold is not None and not (0.0 <= float(threshold) <= 100.0):
        raise UsageError(f"--cloud-threshold must be within 0-100 (a percentage), got {threshold}")
    p = Path(path)
    if p.is_dir():
        scl = find_scl(p)
        if scl is None:
            raise InputError(f"optical mask folder {p} holds no Sentinel-2 SCL band (*_SCL_20m)")
        p = scl
    if kind is None:
        if threshold is not None:
            kind = "probability"
        else:
            kind = "scl" if is_scl(p, _description(p)) else "binary"
    if kind == "probability" and threshold is None:
        raise UsageError("a cloud-probability mask needs --cloud-threshold (0-100)")
    return OpticalMask(os.fspath(p), kind, None if threshold is None else float(threshold))


def _description(path: Path) -> str | None:
    """Band 1's description, or None when the file cannot be opened here (the reader's
    one-line error comes later, with the file's role)."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            return ds.descriptions[0] if ds.count else None
    except (rasterio.errors.RasterioError, OSError):
        return None


def find_scl(folder: str | os.PathLike[str]) -> Path | None:
    """The SCL band of a Sentinel-2 L2A product folder (``.SAFE`` or its granule), the finest
    resolution where it comes at several (20 m before 60 m); None if it has none."""
    best: tuple[int, Path] | None = None
    for p in sorted(Path(folder).rglob("*")):
        if p.suffix.lower() not in (".tif", ".tiff", ".jp2") or not p.is_file():
            continue
        if not _SCL_NAME.search(p.stem):
            continue
        m = re.search(r"_(\d+)m$", p.stem)
        res = int(m.group(1)) if m else 0
        if best is None or res < best[0]:
            best = (res, p)
    return None if best is None else best[1]

"""A small optical + SAR scene pair for batch and scale-out tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import write_geotiff as write_tif


def scene_pair(folder: Path, name: str, size: int = 40, seed: int = 0, bands: int = 4):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    opt = rng.integers(0, 3000, (bands, size, size)).astype("int16")
    opt[-1] += (900 * np.sin(np.arange(size) / 4.0)).astype("int16")[None, :]
    sar = rng.normal(-12.0, 3.0, (1, size, size)).astype("float32")
    return write_tif(folder / f"{name}_s2.tif", opt), write_tif(folder / f"{name}_s1.tif", sar)

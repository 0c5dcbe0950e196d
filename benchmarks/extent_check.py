"""Does a pixel's class depend on the extent of the run? Whole scene vs four quadrant runs.

Predicts the scene whole, then as four ``--bounds`` quadrants, mosaics the quadrants and prints
JSON: the fraction of pixels valid in both on which the two maps agree (issue 8 asks ≥ 0.995;
the fixed normalisation plus windows anchored to the reference grid make it 1.0), and, when the
model has an exclusion check (issue 20), whether the exclusion masks are pixel-identical.

    python3 benchmarks/extent_check.py ../shared/data/sen1floods11_sample/Spain_7370579_S2Hand.tif \
        ../shared/data/sen1floods11_sample/Spain_7370579_S1Hand.tif [--model NAME]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import rasterio

from mfaf_cli import predict


def quadrants(bounds: tuple[float, ...], transform: object) -> list[tuple[float, ...]]:
    """Four quadrant bounds snapped to the raster's pixel edges."""
    left, bottom, right, top = bounds
    res_x, res_y = transform.a, -transform.e  # type: ignore[attr-defined]
    mid_x = left + round((right - left) / 2 / res_x) * res_x
    mid_y = bottom + round((top - bottom) / 2 / res_y) * res_y
    return [(left, mid_y, mid_x, top), (mid_x, mid_y, right, top),
            (left, bottom, mid_x, mid_y), (mid_x, bottom, right, mid_y)]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("optical")
    ap.add_argument("sar")
    ap.add_argument("--model", default=None)
    a = ap.parse_args()
    inputs = {"optical": a.optical, "sar": a.sar}
    with tempfile.TemporaryDirectory() as tmp, rasterio.open(a.optical) as ref:
        whole = Path(tmp) / "whole.tif"
        r = predict(inputs, whole, model=a.model, progress=False)
        ex = {"exclusion": Path(tmp) / "whole_ex.tif"} if r.exclusion else {}
        if ex:
            predict(inputs, whole, model=a.model, progress=False, overwrite=True, **ex)
        full = rasterio.open(whole).read()
        if ex:
            full = np.concatenate([full, rasterio.open(ex["exclusion"]).read()])
        mosaic = np.full_like(full, 255)
        for i, b in enumerate(quadrants(ref.bounds, ref.transform)):
            part = Path(tmp) / f"q{i}.tif"
            qex = {"exclusion": Path(tmp) / f"q{i}_ex.tif"} if ex else {}
            predict(inputs, part, model=a.model, bounds=b, progress=False, **qex)
            with rasterio.open(part) as ds:
                col, row = ~ref.transform @ (ds.bounds.left, ds.bounds.top)
                r0, c0 = round(row), round(col)
                mosaic[0, r0 : r0 + ds.height, c0 : c0 + ds.width] = ds.read(1)
                if ex:
                    mosaic[1, r0 : r0 + ds.height, c0 : c0 + ds.width] = rasterio.open(
                        qex["exclusion"]).read(1)  # fmt: skip
    both = (full[0] != 255) & (mosaic[0] != 255)
    print(json.dumps({
        "model": a.model or "default", "pixels_compared": int(both.sum()),
        "agreement": float((full[0][both] == mosaic[0][both]).mean()),
        "differing_pixels": int((full[0][both] != mosaic[0][both]).sum()),
        "exclusion_identical": bool(np.array_equal(full[1], mosaic[1])) if ex else None,
    }))  # fmt: skip


if __name__ == "__main__":
    main()

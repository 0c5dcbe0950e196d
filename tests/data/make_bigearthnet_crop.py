"""Cut the committed test crop from one BigEarthNet-MM patch (run from the repository root).

    python3 tests/data/make_bigearthnet_crop.py ../shared/data/bigearthnet_example

Keeps the north-west 600 m x 600 m of patch S2A_MSIL2A_20170613T101031_87_48 (and its S1
partner, VV and VH): 60 x 60 px at 10 m, 30 x 30 at 20 m, 10 x 10 at 60 m, with the original
georeferencing and values. See README.md next to this script for the source and licence.
"""

from __future__ import annotations

import sys
from pathlib import Path

import rasterio
from rasterio.windows import Window, transform

PATCH = "S2A_MSIL2A_20170613T101031_87_48"
S1 = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"
BANDS = ("B01", "B02", "B03", "B04", "B08", "B11", "B12")
SIDE_M = 600.0


def crop(src: Path, dst: Path) -> None:
    with rasterio.open(src) as ds:
        n = round(SIDE_M / ds.res[0])
        win = Window(0, 0, n, n)
        profile = ds.profile | {
            "width": n, "height": n, "transform": transform(win, ds.transform),
            "compress": "deflate", "tiled": False,
        }  # fmt: skip
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
        with rasterio.open(dst, "w", **profile) as out:
            out.write(ds.read(window=win))


def main(root: Path) -> None:
    here = Path(__file__).parent / "bigearthnet_crop"
    here.mkdir(exist_ok=True)
    s2 = root / "BigEarthNet-S2-Example" / PATCH
    for b in BANDS:
        crop(s2 / f"{PATCH}_{b}.tif", here / f"{PATCH}_{b}.tif")
    for pol in ("VV", "VH"):
        crop(root / "BigEarthNet-S1-Example" / S1 / f"{S1}_{pol}.tif", here / f"{S1}_{pol}.tif")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

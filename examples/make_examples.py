"""Regenerate examples/sen1floods11/ from the Sen1Floods11 sample chip (run once, by hand).

    python examples/make_examples.py /path/to/shared/data/sen1floods11_sample

Crops rows/cols 64..448 (384 × 384 px, ~25 % water) of chip Spain_7370579, keeping every band,
dtype, nodata, band description, CRS and the exact (shifted) geotransform. Nothing in mfaf
reads the source folder at run time; the crops are committed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import rasterio
from rasterio.windows import Window

CROP = Window(col_off=64, row_off=64, width=384, height=384)
FILES = {
    "S2.tif": "Spain_7370579_S2Hand.tif",
    "S1.tif": "Spain_7370579_S1Hand.tif",
    "label.tif": "Spain_7370579_LabelHand.tif",
}


def main(src_dir: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for out_name, src_name in FILES.items():
        with rasterio.open(src_dir / src_name) as src:
            data = src.read(window=CROP)
            profile = src.profile | {
                "width": CROP.width,
                "height": CROP.height,
                "transform": src.window_transform(CROP),
                "tiled": True,
                "blockxsize": 128,
                "blockysize": 128,
                "compress": "deflate",
                "predictor": 3 if data.dtype.kind == "f" else 2,
            }
            with rasterio.open(out_dir / out_name, "w", **profile) as dst:
                dst.write(data)
                for i, d in enumerate(src.descriptions, start=1):
                    if d:
                        dst.set_band_description(i, d)
        print(out_name, data.shape, data.dtype)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parent / "sen1floods11")

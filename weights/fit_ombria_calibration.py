"""Fit the affine map from OMBRIA's 8-bit products to Sentinel units (S2 reflectance x 1e4, S1 dB).

Why: OMBRIA ships 8-bit PNG composites, users bring raw Sentinel GeoTIFFs. A fixed, per-band
map lets the model train in Sentinel units and run on any extent without scene statistics.

How: two anchors per band. The dark end: the 2 % quantile of all pixels of OMBRIA train patches
(a seeded sample of 200 train ids) against the 2 % quantile of all pixels of the six
BigEarthNet-MM example pairs (real S2 L2A / S1 GRD at native units, ../shared/data; one holds
lakes, so both sides contain dark water). The body: the median of OMBRIA *land* pixels (mask 0)
against the median of the five BigEarthNet pairs whose labels hold no water. A full quantile
match was tried first and rejected: flood-scene land and BigEarthNet farmland differ so much in
NIR that it mapped PNG 0 to NIR 2163 (water is ~300), erasing the water signal. No test scene
(OMBRIA test, Sen1Floods11) is used. Prints JSON: per modality, per band, the map
``sentinel = scale * png + offset``.

    python3 weights/fit_ombria_calibration.py ../shared/data
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

S2_BANDS = ("B12", "B08", "B04")  # OMBRIA optical = swir, nir, red
S1_BANDS = ("VV",)


def _png(path: str) -> np.ndarray:
    a = np.asarray(Image.open(path))
    return a if a.ndim == 3 else a[..., None]


def ombria_pixels(root: Path, n_ids: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """(N, C) pixels of the optical and SAR train PNGs, and (N,) land flags ("land")."""
    files = sorted(glob.glob(str(root / "OmbriaS2/train/AFTER/S2_after_*.png")))
    ids = [Path(f).stem.split("_")[-1] for f in files]
    pick = np.random.default_rng(seed).choice(len(ids), min(n_ids, len(ids)), replace=False)
    opt, sar, land = [], [], []
    for k in sorted(pick):
        i = ids[k]
        m = _png(str(root / f"OmbriaS2/train/MASK/S2_mask_{i}.png"))[..., 0].reshape(-1)
        o = _png(str(root / f"OmbriaS2/train/AFTER/S2_after_{i}.png"))[..., :3].reshape(-1, 3)
        s = _png(str(root / f"OmbriaS1/train/AFTER/S1_after_{i}.png"))[..., :1].reshape(-1, 1)
        opt.append(o)
        sar.append(s)
        land.append(m == 0)
    return {k: np.concatenate(v) for k, v in (("optical", opt), ("sar", sar), ("land", land))}


def has_water(patch: Path) -> bool:
    meta = json.loads(next(patch.glob("*_labels_metadata.json")).read_text())
    return any("water" in label.lower() for label in meta["labels"])


def bigearthnet(root: Path, folder: str, bands: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) values of every patch (B12 read at its own 20 m grid: only quantiles are used),
    and (N,) flags of pixels in patches without water."""
    cols, flags = [], []
    for b in bands:
        vals, dry = [], []
        for patch in sorted((root / folder).iterdir()):
            v = rasterio.open(next(patch.glob(f"*_{b}.tif"))).read(1).ravel().astype(np.float64)
            vals.append(v)
            dry.append(np.full(v.size, not has_water(patch)))
        cols.append(np.concatenate(vals))
        flags.append(np.concatenate(dry))
    return cols, flags  # type: ignore[return-value]


def fit(png: np.ndarray, land: np.ndarray, cols: list, dry: list) -> list[dict[str, float]]:
    """Per band: sentinel = scale * png + offset through the dark and the land-median anchors."""
    out = []
    for c in range(png.shape[1]):
        p = png[:, c].astype(np.float64)
        x0, x1 = np.percentile(p, 2), np.median(p[land])
        v = cols[c][np.isfinite(cols[c])]
        y0, y1 = np.percentile(v, 2), np.median(cols[c][dry[c] & np.isfinite(cols[c])])
        scale = (y1 - y0) / (x1 - x0)
        out.append({"scale": float(scale), "offset": float(y0 - scale * x0)})
    return out


def main(shared: str) -> None:
    data = Path(shared)
    px = ombria_pixels(data / "ombria")
    be = data / "bigearthnet_example"
    s2 = bigearthnet(be, "BigEarthNet-S2-Example", S2_BANDS)
    s1 = bigearthnet(be, "BigEarthNet-S1-Example", S1_BANDS)
    result = {
        "optical": fit(px["optical"], px["land"], *s2),
        "sar": fit(px["sar"], px["land"], *s1),
        "anchors": "2 % quantile of all pixels; median of land / water-free patches",
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")

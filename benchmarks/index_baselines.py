"""Index baselines for water mapping on a Sen1Floods11 chip, scored with mfaf's own metrics.

    python benchmarks/index_baselines.py S2.tif S1.tif LABEL.tif

Prints one JSON object: water IoU (and OA, mIoU) over valid pixels for NDWI > 0, Otsu on NDWI
and Otsu on VV dB (water = below the threshold). These are the figures a learned model has to
beat (cf. ../shared/data/README.md: 0.68 / 0.69 / 0.57 on the full chip).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import rasterio

from mfaf_cli.scores.metrics import confusion_matrix, metrics_from_confusion


def otsu_threshold(values: np.ndarray, bins: int = 512) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance of a histogram."""
    hist, edges = np.histogram(values, bins=bins)
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    mu = np.cumsum(p * centres)
    mu_t = mu[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu_t * w0 - mu) ** 2 / (w0 * (1 - w0))
    between[~np.isfinite(between)] = -1
    return float(centres[int(np.argmax(between))])


def score(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    cm = confusion_matrix(pred.astype(np.int64), truth, 2, ignore_index=255)
    m = metrics_from_confusion(cm, ["not-water", "water"])
    return {
        "water_iou": round(float(m["per_class"]["water"]["iou"]), 4),
        "miou": round(float(m["miou"]), 4),
        "oa": round(float(m["oa"]), 4),
    }


def main(s2_path: str, s1_path: str, label_path: str) -> dict[str, object]:
    with rasterio.open(s2_path) as s2:
        green, nir = s2.read(3).astype(np.float64), s2.read(8).astype(np.float64)
    with rasterio.open(s1_path) as s1:
        vv = s1.read(1).astype(np.float64)
    with rasterio.open(label_path) as lb:
        label = lb.read(1)
    valid = (label >= 0) & (green > 0) & (nir > 0) & np.isfinite(vv)
    truth = np.where(valid, label, 255).astype(np.int64)
    ndwi = (green - nir) / np.maximum(green + nir, 1e-9)
    t_ndwi = otsu_threshold(ndwi[valid])
    t_vv = otsu_threshold(vv[valid])
    return {
        "scene": label_path,
        "valid_pixels": int(valid.sum()),
        "ndwi_gt_0": score(ndwi > 0, truth),
        "otsu_ndwi": score(ndwi > t_ndwi, truth) | {"threshold": round(t_ndwi, 4)},
        "otsu_vv_db": score(vv < t_vv, truth) | {"threshold_db": round(t_vv, 3)},
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))

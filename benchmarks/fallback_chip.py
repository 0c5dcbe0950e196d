"""Issue 24 acceptance on a Sen1Floods11 chip: optical blanked over a 200 x 200 px square.

    python benchmarks/fallback_chip.py SAR_MODEL [--chip DIR] [--fusion MODEL] [--size 200]

DIR holds S2.tif (13 bands), S1.tif (VV, VH dB) and label.tif (-1 nodata, 0, 1); default the
committed crop examples/sen1floods11 (384 px), or ../shared/data/sen1floods11_sample (512 px,
files named *_S2Hand.tif, *_S1Hand.tif, *_LabelHand.tif). Runs, all on the same grid:

* ``fusion_plain``: the fusion model on the blanked optical, no fallback (the square nodata);
* ``fusion_fallback``: the same with the SAR-only fallback, ``--source`` written;
* ``cloud_mask``: the *unblanked* optical with a 0/1 ``--optical-mask`` over the square;
* ``sar_only``: the SAR-only model alone; ``fusion_unmasked``: the fusion model on the full
  optical (what the optical would have given); ``otsu_vv``: Otsu on VV dB (whole chip);
* ``fusion_self_no_optical``: the fusion model maps the square itself with its optical missing
  (fallback ``self``: the modality-dropout way; pass a --modality-dropout model as --fusion).

Water IoU in the square for each, the fraction of the square mapped, and whether the rest of
the map equals ``fusion_plain`` (labels; max |probability difference|). Last line: one JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_baselines import otsu_threshold

from mfaf_cli.pipeline.predict import predict
from mfaf_cli.scores.metrics import confusion_matrix, metrics_from_confusion

ROOT = Path(__file__).resolve().parents[1]
BANDS = {"optical": ["B12", "B8", "B4"], "sar": ["VV"]}


def chip_files(d: Path) -> tuple[Path, Path, Path]:
    def one(*pats: str) -> Path:
        for p in pats:
            hit = sorted(d.glob(p))
            if hit:
                return hit[0]
        raise SystemExit(f"no {pats} in {d}")

    return (
        one("S2.tif", "*S2Hand.tif"),
        one("S1.tif", "*S1Hand.tif"),
        one("label.tif", "*LabelHand.tif"),
    )


def water_iou(pred: np.ndarray, truth: np.ndarray, where: np.ndarray) -> float | None:
    t = np.where(where & (truth >= 0), truth, 255).astype(np.int64)
    p = np.where(pred == 255, 0, pred).astype(np.int64)  # nodata counted as not water
    if not (t != 255).any():
        return None
    cm = confusion_matrix(p, t, 2, ignore_index=255)
    return round(
        float(metrics_from_confusion(cm, ["not-water", "water"])["per_class"]["water"]["iou"]), 4
    )


def run(inputs: dict, out: Path, model: str, **kw: object) -> tuple[np.ndarray, np.ndarray, dict]:
    bands = {m: BANDS[m] for m in inputs}
    res = predict(inputs, out, model, bands=bands, progress=False, overwrite=True, threads=1,
                  probabilities=out.with_suffix(".p.tif"), probabilities_dtype="float32",
                  **kw)  # type: ignore[arg-type]  # fmt: skip
    with rasterio.open(out) as a, rasterio.open(out.with_suffix(".p.tif")) as p:
        return a.read(1), p.read(), res.to_dict()


def main() -> dict[str, object]:
    ap = argparse.ArgumentParser()
    ap.add_argument("sar_model")
    ap.add_argument("--chip", default=str(ROOT / "examples" / "sen1floods11"))
    ap.add_argument("--fusion", default="mfafnet-s-ombria-water")
    ap.add_argument("--size", type=int, default=200)
    a = ap.parse_args()
    s2, s1, lab = chip_files(Path(a.chip))
    with rasterio.open(s2) as ds:
        data, profile, desc = ds.read(), ds.profile, ds.descriptions
    with rasterio.open(lab) as ds:
        truth = ds.read(1).astype(np.int64)
    with rasterio.open(s1) as ds:
        vv = ds.read(1)
    h, w = truth.shape
    r0, c0 = (h - a.size) // 2, (w - a.size) // 2
    square = np.zeros((h, w), bool)
    square[r0 : r0 + a.size, c0 : c0 + a.size] = True
    out: dict[str, object] = {"chip": str(a.chip), "square": [r0, c0, a.size], "fusion": a.fusion,
                              "sar_model": a.sar_model}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        blank = data.copy()
        blank[:, square] = 0  # the file's nodata
        with rasterio.open(t / "S2blank.tif", "w", **profile) as dst:
            dst.write(blank)
            dst.descriptions = desc
        mask_prof = profile | {"count": 1, "dtype": "uint8", "nodata": None}
        with rasterio.open(t / "mask.tif", "w", **mask_prof) as dst:
            dst.write(square.astype(np.uint8)[None])
        both = {"optical": str(t / "S2blank.tif"), "sar": str(s1)}
        fb = {"optical": a.sar_model}
        plain, plain_p, _ = run(both, t / "plain.tif", a.fusion, fallbacks={})
        fall, fall_p, res = run(both, t / "fb.tif", a.fusion, fallbacks=fb, source=t / "src.tif")
        full = {"optical": str(s2), "sar": str(s1)}
        cloud, _, cres = run(full, t / "cloud.tif", a.fusion, fallbacks=fb,
                                   optical_mask=t / "mask.tif", source=t / "csrc.tif")  # fmt: skip
        # the SAR-only model alone, on the fusion run's windows (its own record's tile may
        # differ: training crops), so its pixels are comparable one for one
        sar, _, _ = run({"sar": str(s1)}, t / "sar.tif", a.sar_model, tile=res["tile"])
        unmasked, _, _ = run(full, t / "full.tif", a.fusion, fallbacks={})
        # the modality-dropout alternative: the fusion model maps the square itself, its optical
        # fed as missing (meaningful for a model trained with --modality-dropout: --fusion)
        itself, _, _ = run(both, t / "self.tif", a.fusion, fallbacks={"optical": "self"})
        with rasterio.open(t / "src.tif") as ds:
            src = ds.read(1)
    ok = np.isfinite(vv) & (truth >= 0)
    otsu = np.where(vv < otsu_threshold(vv[ok].astype(np.float64)), 1, 0)
    rest = ~square
    out["water_iou_in_square"] = {
        "fusion_plain": water_iou(plain, truth, square),
        "fusion_fallback": water_iou(fall, truth, square),
        "cloud_mask": water_iou(cloud, truth, square),
        "sar_only": water_iou(sar, truth, square),
        "fusion_unmasked": water_iou(unmasked, truth, square),
        "fusion_self_no_optical": water_iou(itself, truth, square),
        "otsu_vv": water_iou(otsu, truth, square),
    }
    out["water_iou_outside_square"] = {
        "fusion_fallback": water_iou(fall, truth, rest),
        "fusion_unmasked": water_iou(unmasked, truth, rest),
    }
    out["square_mapped_fraction"] = {
        "fusion_plain": round(float((plain[square] != 255).mean()), 4),
        "fusion_fallback": round(float((fall[square] != 255).mean()), 4),
        "cloud_mask": round(float((cloud[square] != 255).mean()), 4),
    }
    out["rest_unchanged"] = {
        "labels_equal": bool(np.array_equal(fall[rest], plain[rest])),
        "max_abs_prob_diff": float(np.nanmax(np.abs(fall_p[:, rest] - plain_p[:, rest]))),
    }
    out["cloud_mask_equals_blanked"] = bool(np.array_equal(cloud, fall))
    out["square_source_codes"] = {
        str(k): int(v) for k, v in zip(*np.unique(src[square], return_counts=True), strict=True)
    }
    out["sources"] = res["sources"]
    out["cloud_sources"] = cres["sources"]
    out["fallback_windows"] = res["fallback_windows"]
    out["windows"] = res["windows"]
    return out


if __name__ == "__main__":
    print(json.dumps(main()))

"""Issue 20's acceptance figures: excluded fractions on unseen scenes, and the chip's water IoU.

For each BigEarthNet pair (S2 folder + the S1 ``_VV.tif``) and the Sen1Floods11 chip it runs
``predict`` with ``--exclusion`` and prints one JSON line per scene (excluded fraction per
reason, water fraction), then the chip's water IoU with and without ``--mask-excluded``
(excluded pixels scored as "not counted"): the examples/ crop and the whole 512² chip.

    MFAF_WEIGHTS_DIR=/tmp/w python3 benchmarks/exclusion_check.py ../shared/data [--model NAME]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import rasterio

from mfaf_cli import predict

CHIP = Path(__file__).resolve().parents[1] / "examples" / "sen1floods11"


def run(inputs: dict[str, str], out: Path, model: str | None, **kw: Any) -> dict[str, Any]:
    r = predict(inputs, out, model=model, exclusion=out.with_suffix(".mask.tif"),
                overwrite=True, progress=False, **kw)  # fmt: skip
    return {"exclusion": r.exclusion, "water": r.class_fractions.get("water"), "model": r.model}


def water_iou(label: Path, truth: Path) -> float:
    with rasterio.open(label) as a, rasterio.open(truth) as b:
        pred, ref = a.read(1), b.read(1)
    ok = (pred != 255) & (ref >= 0) & (ref <= 1)
    p, t = pred[ok] == 1, ref[ok] == 1
    return float((p & t).sum() / max((p | t).sum(), 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shared_data", type=Path)
    ap.add_argument("--model", default=None)
    a = ap.parse_args()
    s2_root = a.shared_data / "bigearthnet_example" / "BigEarthNet-S2-Example"
    s1_root = a.shared_data / "bigearthnet_example" / "BigEarthNet-S1-Example"
    with tempfile.TemporaryDirectory() as tmp:
        for s1 in sorted(s1_root.iterdir()):
            meta = json.loads(next(s1.glob("*_labels_metadata.json")).read_text())
            s2 = s2_root / meta["corresponding_s2_patch"]
            inputs = {"optical": str(s2), "sar": str(next(s1.glob("*_VV.tif")))}
            rec = run(inputs, Path(tmp) / f"{s2.name}.tif", a.model)
            print(json.dumps({"scene": s2.name, **rec}, sort_keys=True))
        full = a.shared_data / "sen1floods11_sample"
        chips = {"sen1floods11_chip": (CHIP / "S2.tif", CHIP / "S1.tif", CHIP / "label.tif"),
                 "sen1floods11_chip_full": tuple(full / f"Spain_7370579_{k}.tif" for k in
                                                 ("S2Hand", "S1Hand", "LabelHand"))}  # fmt: skip
        for name, (s2, s1, truth) in chips.items():
            chip = {"optical": str(s2), "sar": str(s1)}
            bands: dict[str, list[int | str]] = {"optical": [13, 8, 4], "sar": [1]}
            plain, masked = Path(tmp) / f"{name}.tif", Path(tmp) / f"{name}_masked.tif"
            rec = run(chip, plain, a.model, bands=bands)
            predict(chip, masked, model=a.model, bands=bands, mask_excluded=True, overwrite=True,
                    progress=False)  # fmt: skip
            rec |= {"water_iou": water_iou(plain, truth),
                    "water_iou_mask_excluded": water_iou(masked, truth)}  # fmt: skip
            print(json.dumps({"scene": name, **rec}, sort_keys=True))


if __name__ == "__main__":
    main()

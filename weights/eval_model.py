"""Score one checkpoint on the three held-out checks of the model cards; print one JSON line.

1. OMBRIA test split (70 patches; never trained on or selected with).
2. The Sen1Floods11 hand-labelled chip, S2 B12,B8,B4 + S1 VV (a different product, country and
   sensor processing; never trained on, never used to choose anything).
3. False water on the BigEarthNet-MM example pairs whose labels hold no water: the fraction of
   valid pixels predicted as water (the S2 B12 20 m file is resampled bilinearly onto the
   10 m B08 grid and stacked with B08, B04; S1 VV as it is).

    python3 weights/eval_model.py runs/<run>/best.safetensors ../shared/data > eval.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import Resampling, reproject

S2_BANDS = ("B12", "B08", "B04")
TILE = 256  # the shipped inference tile (weights/make_shipped.py)


def _evaluate(model: str, *args: str) -> dict:
    cmd = [sys.executable, "-m", "mfaf_cli", "evaluate", "--model", model, "--json", "-q"]
    cmd += ["--tile", str(TILE), *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _summary(result: dict) -> dict:
    m = result["metrics"]
    keys = ("oa", "miou", "kappa")
    return {k: m.get(k) for k in keys} | {"water_iou": m["per_class"]["water"]["iou"]}


def stack_s2(patch: Path, out: Path) -> Path:
    """B12 (20 m, bilinear onto the 10 m grid), B08, B04 as one GeoTIFF with band names."""
    ref = rasterio.open(next(patch.glob("*_B08.tif")))
    data = np.zeros((3, ref.height, ref.width), dtype=np.float32)
    for i, b in enumerate(S2_BANDS):
        with rasterio.open(next(patch.glob(f"*_{b}.tif"))) as src:
            reproject(
                src.read(1).astype(np.float32),
                data[i],
                src_transform=src.transform,
                src_crs=src.crs,
                dst_transform=ref.transform,
                dst_crs=ref.crs,
                resampling=Resampling.bilinear,
            )
    prof = ref.profile | {"count": 3, "dtype": "float32", "nodata": None}
    with rasterio.open(out, "w", **prof) as dst:
        dst.write(data)
        dst.descriptions = S2_BANDS
    return out


def false_water(model: str, shared: Path, work: Path) -> dict:
    from mfaf_cli import predict

    s2_root = shared / "bigearthnet_example" / "BigEarthNet-S2-Example"
    s1_root = shared / "bigearthnet_example" / "BigEarthNet-S1-Example"
    per_pair = {}
    for s1 in sorted(s1_root.iterdir()):
        meta = json.loads(next(s1.glob("*_labels_metadata.json")).read_text())
        if any("water" in lab.lower() for lab in meta["labels"]):
            continue
        s2 = s2_root / meta["corresponding_s2_patch"]
        opt = stack_s2(s2, work / f"{s2.name}.tif")
        out = work / f"{s2.name}_map.tif"
        mods = modalities_of(model)
        inputs = {"optical": str(opt), "sar": str(next(s1.glob("*_VV.tif")))}
        bands = {"optical": ["1", "2", "3"], "sar": ["1"]}
        predict(
            {m: inputs[m] for m in mods},
            str(out),
            model=model,
            bands={m: bands[m] for m in mods},
            overwrite=True,
            progress=False,
        )
        lab = rasterio.open(out).read(1)
        valid = lab != 255
        per_pair[s2.name] = float((lab[valid] == 1).mean())
    return {"mean": float(np.mean(list(per_pair.values()))), "per_pair": per_pair}


#: the chip's bands per modality (a SAR-only model is scored with its SAR band only)
CHIP_BANDS = {"optical": "optical=13,8,4", "sar": "sar=1"}


def modalities_of(model: str) -> tuple[str, ...]:
    from mfaf_cli.io.weights import read_meta

    return read_meta(model).modality_names


def main(model: str, shared_dir: str) -> None:
    shared = Path(shared_dir)
    mods = modalities_of(model)
    chip = tuple(x for m in mods for x in ("--bands", CHIP_BANDS[m]))
    result = {
        "model": model,
        "ombria_test": _summary(
            _evaluate(model, "--dataset", "ombria", "--data-root", str(shared / "ombria"))
        ),
        "sen1floods11_chip": _summary(
            _evaluate(
                model,
                "--dataset",
                "sen1floods11",
                "--split",
                "all",
                "--data-root",
                str(shared / "sen1floods11_sample"),
                *chip,
            )
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        result["bigearthnet_false_water"] = false_water(model, shared, Path(tmp))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "../shared/data")

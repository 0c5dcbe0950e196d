"""Fit the temperature of each shipped model on its validation holdout and store it in the
record (re-runnable; the weights are copied bit for bit, only the record changes).

Each shipped model was trained on OMBRIA with a seeded 15 % validation holdout of the train
ids (the seed is the run's, in the record's ``training.seed``); the temperature minimises the
NLL of the model's raw logits on those 94 patches (whole 256 px patches, as validation ran).
Then it measures, with ``mfaf evaluate``'s calibration counts, ECE (15 bins), Brier and NLL
before (T = 1) and after on data the fit never saw: the Sen1Floods11 crop in
``examples/sen1floods11``, the whole hand-labelled chip and OMBRIA's test split.

    python3 weights/recalibrate.py --data ../shared/data [--weights-dir DIR] \
        [--log weights/logs/recalibration.json]

Re-running gives the same temperature (the fit starts from the raw logits, whatever the
record holds), so it can follow any other change of the records (e.g. weights/make_shipped.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mfaf_cli.io.weights import load_checkpoint, read_manifest, register_weights, save_checkpoint
from mfaf_cli.metadata import ModelMeta

HERE = Path(__file__).resolve().parent
PACKAGE_WEIGHTS = HERE.parent / "mfaf_cli" / "weights"
EXAMPLE = HERE.parent / "examples" / "sen1floods11"
CHIP_BANDS = {"optical": [13, 8, 4], "sar": [1]}  # B12, B8, B4 and VV


def val_pairs(model: Any, meta: ModelMeta, ds: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Raw logits (1, K, H, W) and labels of each validation patch, normalised as the record
    says (whole patches, one forward pass each, as the trainer's validation)."""
    from mfaf_cli.training.evaluate import _normalised

    for i in range(len(ds)):
        arrays, mask, _ = ds.raw(i)
        valid = np.ones(mask.shape, dtype=bool)
        for a in arrays.values():
            valid &= np.isfinite(a).all(axis=0)
        norm = _normalised(arrays, valid, meta)
        with torch.inference_mode():
            logits = model(*(torch.from_numpy(norm[m])[None] for m in meta.modality_names))
        yield logits.float().numpy(), np.where(valid, mask, meta.ignore_index)[None]


def calibration_on(ckpt: Path, dataset: str, root: Path, split: str, **kw: Any) -> dict:
    """ECE / Brier / NLL (and their bootstrap intervals) of a checkpoint on a dataset split."""
    from mfaf_cli.pipeline.spec import InferenceSpec
    from mfaf_cli.training.evaluate import evaluate_model

    spec = InferenceSpec(tile=256, device="cpu", engine="torch")
    r = evaluate_model(ckpt, dataset, root, split, spec=spec, progress=False, **kw)
    c = r.report["calibration"]
    iv = r.report["intervals"]
    return {
        "ece": c["ece"], "ece_interval": iv["ece"], "brier": c["brier"],
        "brier_interval": iv["brier"], "nll": c["nll"], "mean_confidence": c["mean_confidence"],
        "accuracy": c["accuracy"], "water_iou": r.metrics["per_class"]["water"]["iou"],
        "units": r.report["interval_method"]["units"], "over": r.report["interval_method"]["over"],
    }  # fmt: skip


def example_layout(tmp: Path) -> Path:
    """``examples/sen1floods11`` in Sen1Floods11's flat layout (links), so the dataset reads it."""
    for src, dst in (("S1", "S1Hand"), ("S2", "S2Hand"), ("label", "LabelHand")):
        (tmp / f"Spain_example_{dst}.tif").symlink_to(EXAMPLE / f"{src}.tif")
    return tmp


def checks(before: Path, after: Path, data: Path, tmp: Path) -> dict[str, Any]:
    """Calibration before and after on the three held-out sets."""
    ex = example_layout(tmp / "example")
    sets = {
        "sen1floods11_example_crop": ("sen1floods11", ex, "all", {"bands": CHIP_BANDS}),
        "sen1floods11_chip": ("sen1floods11", data / "sen1floods11_sample", "all",
                              {"bands": CHIP_BANDS}),
        "ombria_test": ("ombria", data / "ombria", "test", {}),
    }  # fmt: skip
    out = {}
    for name, (ds, root, split, kw) in sets.items():
        out[name] = {
            "before": calibration_on(before, ds, root, split, **kw),
            "after": calibration_on(after, ds, root, split, **kw),
        }
    return out


def recalibrate(entry: dict, weights_dir: Path, data: Path, tmp: Path) -> dict[str, Any]:
    """Fit, store and check one shipped model; returns its log entry."""
    from mfaf_cli.data.datasets import open_dataset
    from mfaf_cli.training.temperature import collect, fit_report, with_temperature

    path = weights_dir / entry["file"]
    model, meta = load_checkpoint(path)
    model.eval()
    raw = dataclasses.replace(meta, temperature=1.0)
    seed = int(meta.training["seed"])
    val = open_dataset("ombria", data / "ombria", "val", seed=seed, val_fraction=0.15,
                       modalities=meta.modality_names, augment=False)  # fmt: skip
    if len(val) != meta.training["split"]["val"]:
        raise SystemExit(f"{entry['name']}: {len(val)} val patches, the record says "
                         f"{meta.training['split']['val']}")  # fmt: skip
    z, y = collect(val_pairs(model, raw, val), meta.ignore_index, seed=0)
    report = fit_report(z, y, f"OMBRIA validation holdout (seed {seed}, 15 %, {len(val)} patches)")
    calibrated = with_temperature(meta, report)
    before = save_checkpoint(model, raw, tmp / f"{entry['name']}-t1.safetensors")
    after = save_checkpoint(model, calibrated, tmp / f"{entry['name']}.safetensors")
    held_out = checks(before, after, data, tmp / entry["name"])
    calibrated.metrics["calibration"] = {**report, "held_out": held_out}
    save_checkpoint(model, calibrated, after)
    register_weights(after, entry["name"], default=entry["default"], root=weights_dir,
                     description=entry.get("description", ""))  # fmt: skip
    return {"name": entry["name"], **calibrated.metrics["calibration"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--weights-dir", type=Path, default=PACKAGE_WEIGHTS)
    ap.add_argument("--log", type=Path, default=HERE / "logs" / "recalibration.json")
    ap.add_argument("--only", action="append", help="model name (default: every shipped one)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = []
    for entry in read_manifest(a.weights_dir):
        if a.only and entry["name"] not in a.only:
            continue
        with tempfile.TemporaryDirectory(prefix="mfaf-recal-") as tmp:
            (Path(tmp) / entry["name"]).mkdir()
            (Path(tmp) / entry["name"] / "example").mkdir()
            log = recalibrate(entry, a.weights_dir, a.data, Path(tmp))
        out.append(log)
        print(json.dumps({k: log[k] for k in ("name", "temperature", "before", "after")}))
    a.log.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

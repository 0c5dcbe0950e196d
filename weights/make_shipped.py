"""Turn a finished training run into a shipped weight (run by hand, once per model).

The shipped weights are package data: the file and its manifest entry go to
``mfaf_cli/weights/`` (``--weights-dir`` overrides), so every install, wheels included, has them.
Any name works: the wheel ships whatever ``mfaf_cli/weights/manifest.json`` lists.

    python weights/make_shipped.py runs/mfafnet-s-ombria mfafnet-s-ombria-water --default \
        --eval runs/mfafnet-s-ombria/eval_ombria_test.json:ombria_test \
        --eval runs/mfafnet-s-ombria/eval_s1f11_13_8_4.json:sen1floods11_chip

What it changes, and why, in the metadata record only (the weights are copied bit for bit):
- ``tile_size`` 256: training used random 128 px crops of OMBRIA's 256 px patches and validation
  ran on whole 256 px patches; 256 px windows are the inference default (fewer seams);
- optical band names ``swir, nir, red``: OMBRIA's optical PNGs are a false-colour composite
  (see mfaf_cli/data/ombria.py, OmbriaDataset); runs started before that was recorded carry the
  PNG's nominal "red, green, blue" names;
- ``metrics``: adds the held-out test figures measured by ``mfaf evaluate`` (JSON outputs).
Then it registers the file in mfaf_cli/weights/manifest.json with its sha256.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from mfaf_cli.io.weights import load_checkpoint, register_weights, save_checkpoint
from mfaf_cli.metadata import ModalitySpec

#: Where shipped weights live: package data, next to the code that loads them.
PACKAGE_WEIGHTS = Path(__file__).resolve().parents[1] / "mfaf_cli" / "weights"


def summarise(path: Path) -> dict[str, object]:
    d = json.loads(path.read_text())
    m = d["metrics"]
    return {
        "oa": m["oa"],
        "miou": m["miou"],
        "kappa": m["kappa"],
        "per_class_iou": {k: v["iou"] for k, v in m["per_class"].items()},
        "n_pixels": m["n_pixels"],
        "source": {k: d.get(k) for k in ("mode", "dataset", "split", "bands") if k in d},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("name")
    ap.add_argument("--default", action="store_true")
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--optical-bands", default="swir,nir,red")
    ap.add_argument(
        "--eval", action="append", default=[], help="EVAL.json (eval_model.py) or FILE.json:KEY"
    )
    ap.add_argument("--description", default="")
    ap.add_argument(
        "--by-name-only", default="", metavar="WHY",
        help="ship it, but never as the model for its modalities without --model NAME",
    )  # fmt: skip
    ap.add_argument("--weights-dir", type=Path, default=PACKAGE_WEIGHTS)
    a = ap.parse_args()

    model, meta = load_checkpoint(a.run / "best.safetensors")
    mods = []
    for m in meta.modalities:
        if m.name == "optical" and a.optical_bands:
            m = dataclasses.replace(m, bands=tuple(a.optical_bands.split(",")))
        mods.append(m)
    metrics = dict(meta.metrics)
    for item in a.eval:
        if item.endswith(".json"):  # weights/eval_model.py output: all held-out checks at once
            held_out = json.loads(Path(item).read_text())
            metrics.update({k: v for k, v in held_out.items() if k != "model"})
            continue
        file, key = item.rsplit(":", 1)
        metrics[key] = summarise(Path(file))
    meta = dataclasses.replace(meta, modalities=tuple(mods), tile_size=a.tile_size, metrics=metrics)
    assert all(isinstance(m, ModalitySpec) for m in meta.modalities)
    out = a.run / f"{a.name}.safetensors"
    save_checkpoint(model, meta, out)
    entry = register_weights(
        out, a.name, default=a.default, description=a.description, root=a.weights_dir,
        by_name_only=a.by_name_only,
    )  # fmt: skip
    print(json.dumps({k: entry[k] for k in ("name", "file", "sha256", "size_bytes", "default")}))


if __name__ == "__main__":
    main()

"""Add the exclusion-check facts to the shipped OMBRIA models' records (re-runnable).

    python weights/add_applicability.py --data-root ../shared/data/ombria [--default NAME]

For every shipped model trained on OMBRIA (the record's ``training.dataset``) it:

- recomputes the training split exactly as the record says it was drawn (OMBRIA train ids
  minus the seeded validation holdout: the record's seed and ``val_fraction``), read in
  Sentinel units through the calibration of the model cards (``data.ombria.to_sentinel_units``,
  fitted by weights/fit_ombria_calibration.py), with the trainer's own statistics sample
  (``SegDataset.compute_normalisation``: at most 256 patches, the dataset seed);
- checks that the clip quantiles it gets equal the recorded ones (so the sample and the
  calibration are the ones the model was trained with) and records the per-band 0.1 / 99.9 %
  quantiles of that sample as ``range_low`` / ``range_high``, with ``range_open`` where the
  8-bit products saturate, and ``range_floor``: the Sentinel-1 noise floor of the SAR band
  (mfaf_cli/applicability.py);
- sets the record's rules to :data:`RULES` (OMBRIA has no snow: snow is mapped as water; a
  rule may carry alternatives, the first whose bands the input holds runs);
- saves the checkpoint in place (weights bit for bit, only the record changes) and updates its
  manifest entry (sha256, size); ``--default NAME`` moves the default flag to NAME.

Other fields of the record (e.g. a calibration temperature added by another script) are kept,
so the scripts can run in any order.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from mfaf_cli.applicability import with_noise_floor
from mfaf_cli.data.registry import open_dataset
from mfaf_cli.io.weights import load_checkpoint, read_manifest, register_weights, save_checkpoint

PACKAGE_WEIGHTS = Path(__file__).resolve().parents[1] / "mfaf_cli" / "weights"
#: Applicability rules of the shipped water models (Sentinel-2 reflectance x 10 000). Snow has
#: two alternatives, tried in order (mfaf_cli/applicability.py, ``rule_groups``); both use the
#: same near-infrared test, the one established snow masks use to keep water out (water absorbs
#: near-infrared, snow reflects it): ESA's Sentinel-2 processor Sen2Cor (scene classification,
#: snow filter on B8A, top-of-atmosphere reflectance; Main-Knorn et al. 2017, Proc. SPIE 10427)
#: gives snow zero confidence below 0.15; SNOMAP (Hall, Riggs & Salomonson 1995, RSE
#: 54:127-140) and Fmask (Zhu & Woodcock 2012, RSE 118:83-94) use 0.11. The Sentinel-2 value is
#: used: these models take Sentinel-2 B8, L1C (top-of-atmosphere) as well as L2A.
#:
#: 1. the NDSI snow test, on bands the models do not take but a full Sentinel-2 input holds (B3
#:    green, B11 SWIR 1.6 um): NDSI = (green - swir1) / (green + swir1) >= 0.4 (SNOMAP's NDSI
#:    threshold; Sen2Cor's NDSI filter ramps over the same range);
#: 2. for inputs with only the models' bands (B12, B8, B4): issue 20's NDSI-like test (red for
#:    green, B12 for B11) with red > 0.15.
RULES: tuple[tuple[str, str], ...] = (
    ("snow", "(green - swir1) / (green + swir1) >= 0.4 and nir > 1500"),
    ("snow", "(red - swir) / (red + swir) > 0.4 and red > 1500 and nir > 1500"),
)


def training_ranges(meta: object, data_root: Path) -> dict[str, tuple[tuple[object, ...], ...]]:
    training = meta.training  # type: ignore[attr-defined]
    split = training.get("split", {})
    val_fraction = float(split.get("val_fraction", 0.15))
    ds = open_dataset(
        "ombria", data_root, "train", modalities=meta.modality_names,  # type: ignore[attr-defined]
        seed=int(training["seed"]), val_fraction=val_fraction, normalisation="fixed", augment=False,
    )  # fmt: skip
    if len(ds) != int(split.get("train", len(ds))):
        raise SystemExit(f"train split has {len(ds)} items, the record says {split.get('train')}")
    norms = ds.compute_normalisation()
    for spec in meta.modalities:  # type: ignore[attr-defined]
        got, want = norms[spec.name], spec.normalisation
        for a, b in ((got.clip_low, want.clip_low), (got.clip_high, want.clip_high)):
            if a is None or b is None or max(abs(x - y) for x, y in zip(a, b, strict=True)) > 1e-3:
                raise SystemExit(f"{spec.name}: recomputed clip bounds {a} != recorded {b}")
    return dict(ds.ranges)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data/ombria"))
    ap.add_argument("--weights-dir", type=Path, default=PACKAGE_WEIGHTS)
    ap.add_argument("--default", default=None, help="make this shipped model the default")
    a = ap.parse_args()
    entries = read_manifest(a.weights_dir)
    default = a.default or next((e["name"] for e in entries if e.get("default")), None)
    for e in entries:
        path = a.weights_dir / e["file"]
        model, meta = load_checkpoint(path)
        if meta.training.get("dataset") != "ombria":
            continue
        ranges = training_ranges(meta, a.data_root)
        mods = tuple(
            with_noise_floor(dataclasses.replace(
                s, range_low=ranges[s.name][0], range_high=ranges[s.name][1],
                range_open=ranges[s.name][2]))  # type: ignore[arg-type]
            for s in meta.modalities
        )  # fmt: skip
        # the rules read optical bands: a SAR-only model keeps its own (none)
        rules = RULES if "optical" in meta.modality_names else meta.rules
        meta = dataclasses.replace(meta, modalities=mods, rules=rules)
        save_checkpoint(model, meta, path)
        entry = register_weights(
            path, e["name"], default=e["name"] == default, description=e.get("description", ""),
            root=a.weights_dir,
        )  # fmt: skip
        ranges_out = {s.name: [[round(v, 3) for v in s.range_low or ()],
                               [round(v, 3) for v in s.range_high or ()], list(s.range_open),
                               list(s.range_floor)] for s in mods}  # fmt: skip
        print(json.dumps({"name": e["name"], "sha256": entry["sha256"], "ranges": ranges_out,
                          "rules": list(map(list, rules)), "default": entry["default"]}))


if __name__ == "__main__":
    main()

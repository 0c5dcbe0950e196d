"""Issue 24 item 3 on the OMBRIA test split: a SAR-only fallback model vs one fusion network
trained with ``--modality-dropout``, where the optical is missing.

    python benchmarks/dropout_ombria.py --sar SAR_MODEL --dropout DROPOUT_MODEL \
        [--fusion mfafnet-s-ombria-water] [--data ../shared/data/ombria] [--square 128]

For each of the 70 test patches (never trained on or selected with), on the model's own
inference path (:func:`mfaf_cli.training.evaluate.predict_arrays`: the shipped tile, gaussian
blending; a missing optical pixel reaches a fusion network as 0 after normalisation, as in
predict):

* ``square``: the optical is missing in a centred ``--square`` px square. Water IoU in the
  square for the fallback way (the SAR-only model there), the dropout way (the dropout model
  with its optical missing there) and what the full optical would have given (each fusion model
  on the full inputs); outside the square, whether each way leaves the full-input map unchanged
  (the fallback way does by construction: the fusion model's pixels are kept).
* ``whole``: the optical is missing everywhere: the SAR-only model vs the dropout model on SAR
  alone vs the plain fusion model on SAR alone (what a fusion model not trained for it gives).

Scores pool every patch's pixels (as ``benchmarks/ombria_sar_otsu.py``, whose SAR-Otsu figures
are the baseline). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mfaf_cli.engine import create_predictor
from mfaf_cli.scores.metrics import confusion_matrix, metrics_from_confusion
from mfaf_cli.training.evaluate import predict_arrays

Arrays = dict[str, np.ndarray]


def square_mask(h: int, w: int, side: int) -> np.ndarray:
    """(H, W) bool: a centred ``side`` x ``side`` square (the whole patch if it is larger)."""
    m = np.zeros((h, w), dtype=bool)
    r0, c0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    m[r0 : r0 + side, c0 : c0 + side] = True
    return m


def without_optical(arrays: Arrays, where: np.ndarray) -> Arrays:
    """The arrays with the optical missing (NaN) under ``where``."""
    opt = arrays["optical"].copy()
    opt[:, where] = np.nan
    return {**arrays, "optical": opt}


def runner(model: str, tile: int) -> Callable[[Arrays], np.ndarray]:
    """A function: arrays -> class ids (H, W), the model seeing only its own modalities; every
    pixel with a finite SAR value is mapped (a missing optical pixel goes in as 0)."""
    pred = create_predictor(model, engine="torch", device="cpu", batch_size=4, threads=2)
    meta = pred.meta

    def run(arrays: Arrays) -> np.ndarray:
        own = {m: arrays[m] for m in meta.modality_names}
        valid = np.asarray(np.isfinite(arrays["sar"]).all(axis=0))
        labels, _ = predict_arrays(pred, own, valid, meta, tile=tile)
        return labels.astype(np.int64)

    return run


class Pool:
    """Confusion matrices pooled over patches, per named map and region."""

    def __init__(self) -> None:
        self.cms: dict[str, np.ndarray] = {}

    def add(self, key: str, pred: np.ndarray, truth: np.ndarray, where: np.ndarray) -> None:
        t = np.where(where, truth, 255)
        cm = confusion_matrix(np.where(pred == 255, 0, pred), t, 2, 255)
        self.cms[key] = self.cms.get(key, 0) + cm

    def water_iou(self) -> dict[str, float]:
        names = ["not-water", "water"]
        return {
            k: round(metrics_from_confusion(cm, names)["per_class"]["water"]["iou"], 4)
            for k, cm in self.cms.items()
        }


def main(args: argparse.Namespace) -> dict[str, Any]:
    from mfaf_cli.data.datasets import open_dataset

    ds = open_dataset("ombria", args.data, "test", modalities=("optical", "sar"))
    run = {k: runner(m, args.tile) for k, m in
           (("sar", args.sar), ("dropout", args.dropout), ("fusion", args.fusion))}  # fmt: skip
    pool, changed = Pool(), 0
    n_out = 0
    n = min(len(ds), args.limit or len(ds))
    for i in range(n):
        arrays, truth, _ = ds.raw(i, None)
        sq = square_mask(truth.shape[0], truth.shape[1], args.square)
        full = {k: run[k](arrays) for k in ("dropout", "fusion")}
        sar = run["sar"](arrays)
        drop_sq = run["dropout"](without_optical(arrays, sq))
        every = np.ones_like(sq)
        no_opt = without_optical(arrays, every)
        for key, pred, where in (
            ("square/fallback_sar_only", sar, sq),
            ("square/dropout_optical_missing", drop_sq, sq),
            ("square/dropout_full_inputs", full["dropout"], sq),
            ("square/fusion_full_inputs", full["fusion"], sq),
            ("outside/dropout_square_missing", drop_sq, ~sq),
            ("outside/fusion_full_inputs", full["fusion"], ~sq),
            ("whole/sar_only", sar, every),
            ("whole/dropout_no_optical", run["dropout"](no_opt), every),
            ("whole/fusion_no_optical", run["fusion"](no_opt), every),
            ("whole/dropout_full_inputs", full["dropout"], every),
            ("whole/fusion_full_inputs", full["fusion"], every),
        ):
            pool.add(key, pred, truth, where)
        n_out += int((~sq).sum())
        changed += int((drop_sq != full["dropout"])[~sq].sum())
    return {
        "patches": n,
        "square_px": args.square,
        "models": {"sar": args.sar, "dropout": args.dropout, "fusion": args.fusion},
        "water_iou": pool.water_iou(),
        # the fallback way keeps the fusion model's pixels there (benchmarks/fallback_chip.py)
        "outside_square_changed_fraction_dropout": round(changed / max(n_out, 1), 5),
    }


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sar", required=True, help="SAR-only model (name or checkpoint)")
    p.add_argument("--dropout", required=True, help="fusion model trained with dropout")
    p.add_argument("--fusion", default="mfafnet-s-ombria-water", help="plain fusion model")
    p.add_argument("--data", default=str(Path("../shared/data/ombria")))
    p.add_argument("--square", type=int, default=128)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--limit", type=int, default=0, help="first N patches only (a smoke run)")
    return p.parse_args()


if __name__ == "__main__":
    print(json.dumps(main(parse())))

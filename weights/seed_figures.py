"""Per-seed and mean figures with intervals for the shipped models, and whether the choice
between them is significant; stored in each record (``metrics.seeds``, ``metrics.choice``).

- **Per seed** (``weights/logs/<run>-s<seed>/eval.json``, weights/eval_model.py): OMBRIA test
  and Sen1Floods11 chip water IoU / mIoU and BigEarthNet false water. Only the shipped seed's
  checkpoint is kept, so only it gets a bootstrap interval (over OMBRIA's 70 test patches;
  over 128 px blocks of the one chip, which are correlated: optimistic).
- **Mean over seeds** with a Student-t 95 % interval (2 seeds: t = 12.7, so wide).
- **Choice:** the two candidates' seed-mean intervals, and the paired bootstrap difference of
  the two shipped checkpoints on the same patches / blocks. Where the seed intervals overlap
  the record says the choice is not significant.

    python3 weights/seed_figures.py --data ../shared/data [--weights-dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from mfaf_cli.io.weights import load_checkpoint, read_manifest, register_weights, save_checkpoint
from mfaf_cli.pipeline.spec import InferenceSpec
from mfaf_cli.scores.stats import intervals_overlap, mean_interval
from mfaf_cli.training.evaluate import EvalResult, compare_results, evaluate_model

HERE = Path(__file__).resolve().parent
PACKAGE_WEIGHTS = HERE.parent / "mfaf_cli" / "weights"
#: shipped name → the training runs (round 3) it was chosen from
RUNS = {"unet-ombria-water": "unet-r3", "mfafnet-s-ombria-water": "mfafnet-s-r3"}
FIGURES = (("ombria_test", "water_iou"), ("ombria_test", "miou"),
           ("sen1floods11_chip", "water_iou"), ("sen1floods11_chip", "miou"),
           ("bigearthnet_false_water", "mean"))  # fmt: skip
CHIP_BANDS = {"optical": [13, 8, 4], "sar": [1]}


def per_seed(run: str) -> dict[str, dict[str, float]]:
    """seed → figure → value, from the runs' held-out evaluations."""
    out = {}
    for f in sorted((HERE / "logs").glob(f"{run}-s*/eval.json")):
        d = json.loads(f.read_text())
        out[f.parent.name.rsplit("-s", 1)[1]] = {f"{a}/{b}": float(d[a][b]) for a, b in FIGURES}
    return out


def shipped_runs(path: Path, data: Path) -> dict[str, EvalResult]:
    """The shipped checkpoint on OMBRIA test (per patch) and the chip (128 px blocks)."""
    spec = InferenceSpec(tile=256, device="cpu", engine="torch")
    kw: dict[str, Any] = {"spec": spec, "progress": False}
    return {
        "ombria_test": evaluate_model(path, "ombria", data / "ombria", "test", **kw),
        "sen1floods11_chip": evaluate_model(path, "sen1floods11", data / "sen1floods11_sample",
                                            "all", bands=CHIP_BANDS, block=128, **kw),
    }  # fmt: skip


def _iv(res: EvalResult, key: str) -> list[float]:
    return list(res.report["intervals"][key])


def model_figures(name: str, runs: dict[str, EvalResult], seed: str) -> dict[str, Any]:
    seeds = per_seed(RUNS[name])
    keys = [f"{a}/{b}" for a, b in FIGURES]
    shipped = {f"{c}/{k}": _iv(r, "iou/water" if k == "water_iou" else k)
               for c, r in runs.items() for k in ("water_iou", "miou")}  # fmt: skip
    return {
        "runs": RUNS[name],
        "per_seed": {s: {k: v[k] for k in keys} for s, v in seeds.items()},
        "shipped_seed": seed,
        "shipped_seed_intervals": shipped,
        "mean": {k: mean_interval([v[k] for v in seeds.values()]) for k in keys},
        "note": "per-seed figures from weights/logs/<run>-s<seed>/eval.json; only the shipped "
        "seed's checkpoint exists, so only it has bootstrap intervals (OMBRIA test: over 70 "
        "patches; chip: over 128 px blocks, correlated, so optimistic); mean: Student-t 95 % "
        "over seeds",
    }


def choice(figs: dict[str, dict[str, Any]], paired: dict[str, Any]) -> dict[str, Any]:
    """Per figure: are the candidates' seed-mean intervals apart, and the paired difference."""
    a, b = list(figs)
    out: dict[str, Any] = {"a": a, "b": b, "figures": {}}
    for key in figs[a]["mean"]:
        ma, mb = figs[a]["mean"][key], figs[b]["mean"][key]
        overlap = intervals_overlap((ma["low"], ma["high"]), (mb["low"], mb["high"]))
        out["figures"][key] = {
            "a_mean": ma["mean"], "b_mean": mb["mean"],
            "seed_intervals_overlap": overlap,
            "verdict": "not significant (seed intervals overlap)" if overlap
            else "significant (seed intervals apart)",
        }  # fmt: skip
    for check, report in paired.items():
        for k in ("iou/water", "miou"):
            d = report["difference"][k]
            key = f"{check}/{'water_iou' if k == 'iou/water' else 'miou'}"
            out["figures"].setdefault(key, {})["shipped_paired_difference"] = {
                "a_minus_b": d["difference"], "interval": [d["low"], d["high"]],
                "significant": d["significant"], "over": report["interval_method"]["over"],
            }  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--weights-dir", type=Path, default=PACKAGE_WEIGHTS)
    ap.add_argument("--log", type=Path, default=HERE / "logs" / "seed_figures.json")
    a = ap.parse_args()
    entries = {e["name"]: e for e in read_manifest(a.weights_dir) if e["name"] in RUNS}
    runs, figs = {}, {}
    for name, e in entries.items():
        path = a.weights_dir / e["file"]
        runs[name] = shipped_runs(path, a.data)
        seed = str(load_checkpoint(path)[1].training["seed"])
        figs[name] = model_figures(name, runs[name], seed)
    na, nb = list(entries)
    paired = {c: compare_results(runs[na][c], runs[nb][c], na, nb) for c in runs[na]}
    verdict = choice(figs, paired)
    for name, e in entries.items():
        path = a.weights_dir / e["file"]
        model, meta = load_checkpoint(path)
        metrics = {**meta.metrics, "seeds": figs[name], "choice": verdict}
        save_checkpoint(model, dataclasses.replace(meta, metrics=metrics), path)
        register_weights(path, name, default=e["default"], root=a.weights_dir,
                         description=e.get("description", ""))  # fmt: skip
    a.log.write_text(json.dumps({"seeds": figs, "choice": verdict}, indent=1) + "\n")
    print(json.dumps(verdict["figures"], indent=1))


if __name__ == "__main__":
    main()

"""Real-data check of the HSI + X path: CoMiX-lite vs the early-fusion U-Net on hsi_dsm_crop.

The crop (../shared/data/hsi_dsm_crop: 5 PCA scores of a hyperspectral cube, an 8-bit LiDAR
DSM and a dense 12-class ground truth, 300 × 300 px, no georeferencing) is written as GeoTIFFs
on a **synthetic local grid** (EPSG:32615, 1 m pixels, an arbitrary origin: not the scene's
true location) and split spatially into three disjoint crops listed in a ``--dataset folder``
scene file:

* train: rows 0-235 of columns 0-135, val: rows 236-299 of columns 0-135 (checkpoint
  selection is not used: the last checkpoint is evaluated);
* a 64-column gap (columns 136-199, one 64-px training tile, CoMiX's receptive field within
  a tile is the whole tile) that no run sees;
* test: columns 200-299 (the right third), all rows.

Labels are written as class ids 0..11 (ground truth 1..12), unlabelled pixels as nodata 255.
Every model is trained with the same budget (epochs, batch, tile, lr) through the user's path
(``python3 -m mfaf_cli train --dataset folder``) and scored on the test crop with
``python3 -m mfaf_cli evaluate``. The exact command lines are in :func:`train_cmd` and
:func:`eval_cmd` and are stored in the results JSON (they inherit this script's niceness: run
it under ``nice -n 10``, as below).

    nice -n 10 python3 benchmarks/hsi_dsm_check.py --work /tmp/hsi_dsm \\
        --out benchmarks/results/hsi_dsm_check.json

``--select-on-val`` chooses each network's recipe without looking at the test part: the first
seed trains every recipe, the others the one with the best validation mIoU of the last epoch
(the checkpoint that is evaluated); CoMiX-S takes CoMiX-lite's choice (``RECIPE_FROM``), which
keeps it to one recipe on a CPU. ``--jobs 2`` runs two trainings at once; ``--recipe
MODEL=RECIPE`` gives a recipe chosen before (e.g. for a longer ``--epochs`` budget). Each run's
stdout/stderr are kept under ``WORK/logs``; rows carry wall and CPU seconds of the training and
the last epoch's validation scores, and the document a ``verdict`` (the best network on
validation against the random forest + 0.05, test mIoU, seed means):

    nice -n 10 python3 benchmarks/hsi_dsm_check.py --work /tmp/hsi_ev --epochs 15 --jobs 2 \\
        --select-on-val --out benchmarks/results/hsi_dsm_check_evidence_15ep.json

Recipes (``--recipes``): ``plain`` (the defaults) and ``balanced`` (``--sampling balanced
--class-weights auto``). A per-pixel random forest (scikit-learn, a benchmark-only dependency:
``pip install scikit-learn``; 300 trees, default settings) trained on every labelled pixel of
columns 0-135 is scored on the same test part with mfaf's metrics (``--no-rf`` skips it).
Rows are written to ``--out`` after every run, so a time-boxed job keeps what it finished.

Caveat: 5 PCA components are not a hyperspectral cube, so this checks that the HSI + X path
learns on real imagery; it says nothing about CoMiX's spectral modelling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hsi_dsm_crop"
#: (part, row slice, column slice) of the 300 × 300 crop
PARTS = (
    ("train", slice(0, 236), slice(0, 136)),
    ("val", slice(236, 300), slice(0, 136)),
    ("test", slice(0, 300), slice(200, 300)),
)
GAP_COLUMNS = (136, 200)
MODELS = {
    "comix-lite": ["--model-opt", "stem_stride=2"],
    "comix-s": ["--model-opt", "stem_stride=2"],
    "unet-hsi-lidar": [],
}
BUDGET = {"epochs": 15, "batch_size": 4, "tile": 64, "lr": 6e-4}
#: training recipes: the defaults, and what issue 18 added for imbalanced land cover
RECIPES = {
    "plain": [],
    "balanced": ["--sampling", "balanced", "--class-weights", "auto"],
}
#: the per-pixel baseline a user tries first: scikit-learn's random forest, default settings
RF_TREES = 300


def write_crops(work: Path) -> Path:
    """GeoTIFFs of every part (hsi, lidar, label) and the scene list; returns its path."""
    import rasterio
    from rasterio.transform import from_origin

    hsi = np.load(DATA / "hsi_pca5.npy").astype("float32")
    dsm = np.load(DATA / "dsm.npy").astype("float32")
    gt = np.load(DATA / "gt.npy").astype("int64")
    label = np.where(gt > 0, gt - 1, 255).astype("uint8")[None]
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for part, rs, cs in PARTS:
        transform = from_origin(270000.0 + cs.start, 3290000.0 - rs.start, 1.0, 1.0)
        for name, arr, nodata in (("hsi", hsi, None), ("lidar", dsm, None), ("label", label, 255)):
            crop = arr[:, rs, cs]
            prof = {"driver": "GTiff", "height": crop.shape[1], "width": crop.shape[2]}
            prof |= {"count": crop.shape[0], "dtype": crop.dtype.name, "crs": "EPSG:32615"}
            prof |= {"transform": transform, "nodata": nodata}
            with rasterio.open(work / f"{part}_{name}.tif", "w", **prof) as ds:
                ds.write(crop)
        rows.append(
            f'[[scene]]\nid = "{part}"\nsplit = "{part}"\nhsi = "{part}_hsi.tif"\n'
            f'lidar = "{part}_lidar.tif"\nlabel = "{part}_label.tif"\n'
        )
    classes = ", ".join(f'"c{i}"' for i in range(1, 13))
    scenes = work / "scenes.toml"
    # ignore_value -1: `mfaf evaluate` hands the label mapping nodata pixels as -1
    scenes.write_text(f"classes = [{classes}]\nignore_value = -1\n\n" + "\n".join(rows))
    return scenes


def train_cmd(
    scenes: Path, model: str, seed: int, run: Path, budget: dict[str, Any], recipe: str = "plain"
) -> list[str]:
    return [
        *(sys.executable, "-m", "mfaf_cli", "train"),
        *("--dataset", "folder", "--data-root", str(scenes), "--model", model),
        *("-o", str(run), "--epochs", str(budget["epochs"])),
        *("--batch-size", str(budget["batch_size"]), "--tile", str(budget["tile"])),
        *("--lr", str(budget["lr"]), "--seed", str(seed), "--threads", "1", "--device", "cpu"),
        *MODELS[model],
        *RECIPES[recipe],
        *("--quiet", "--json", "--overwrite"),
    ]


def eval_cmd(scenes: Path, run: Path, tile: int) -> list[str]:
    return [
        *(sys.executable, "-m", "mfaf_cli", "evaluate"),
        *("--model", str(run / "last.safetensors"), "--dataset", "folder"),
        *("--data-root", str(scenes), "--split", "test", "--tile", str(tile)),
        *("--device", "cpu", "--precision", "fp32", "--quiet", "--json"),
    ]


def last_json(text: str) -> dict[str, Any]:
    """The last JSON object line a ``--json`` command printed."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise ValueError(f"no JSON line in output:\n{text[-2000:]}")


def run_logged(cmd: list[str], env: dict[str, str], log: Path) -> tuple[str, float, float]:
    """Run ``cmd`` with stdout/stderr kept in ``log``(.out/.err); its stdout, wall and CPU s."""
    out, err = log.with_suffix(".out"), log.with_suffix(".err")
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with out.open("w") as fo, err.open("w") as fe:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fo, stderr=fe)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{cmd[3]} failed ({log}):\n{err.read_text()[-3000:]}")
    return out.read_text(), wall, usage.ru_utime + usage.ru_stime


def last_val(run: Path) -> dict[str, float]:
    """Validation scores of the last epoch (the checkpoint that is evaluated) from metrics.csv."""
    import csv

    with (run / "metrics.csv").open() as f:
        last = list(csv.DictReader(f))[-1]
    return {k: float(last[f"val_{k}"]) for k in ("oa", "miou", "kappa")}


def run_one(
    scenes: Path, work: Path, model: str, seed: int, budget: dict[str, Any], recipe: str
) -> dict:
    """Train, then evaluate on the test crop; the scores, wall/CPU times and exact commands."""
    run = work / "runs" / f"{model}-{recipe}-e{budget['epochs']}-seed{seed}"
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    tcmd = train_cmd(scenes, model, seed, run, budget, recipe)
    ecmd = eval_cmd(scenes, run, budget["tile"])
    logs = work / "logs" / run.name
    tr_out, t_train, cpu_train = run_logged(tcmd, env, logs.with_name(run.name + "-train"))
    ev_out, _, _ = run_logged(ecmd, env, logs.with_name(run.name + "-evaluate"))
    scores = last_json(ev_out)["metrics"]
    return {
        "model": model,
        "recipe": recipe,
        "seed": seed,
        "epochs": budget["epochs"],
        "train_wall_s": round(t_train, 1),
        "train_cpu_s": round(cpu_train, 1),
        "val_last_epoch": last_val(run),
        "train_summary": last_json(tr_out),
        "test": {k: scores.get(k) for k in ("oa", "miou", "kappa", "mean_accuracy")},
        "test_per_class": scores.get("per_class"),
        "commands": [" ".join(tcmd), " ".join(ecmd)],
    }


def random_forest(seed: int) -> dict[str, Any]:
    """The per-pixel baseline: a random forest on the six bands of every labelled pixel of
    the train and val parts (columns 0-135), scored on the test part with mfaf's metrics."""
    from sklearn.ensemble import RandomForestClassifier

    from mfaf_cli.scores.metrics import confusion_matrix, metrics_from_confusion

    feats = np.concatenate(
        [np.load(DATA / "hsi_pca5.npy"), np.load(DATA / "dsm.npy")], axis=0
    ).astype("float32")
    gt = np.load(DATA / "gt.npy").astype("int64")

    def pixels(cols: slice) -> tuple[np.ndarray, np.ndarray]:
        x, y = feats[:, :, cols].reshape(feats.shape[0], -1).T, gt[:, cols].reshape(-1)
        return x[y > 0], y[y > 0] - 1

    x_tr, y_tr = pixels(slice(0, GAP_COLUMNS[0]))
    x_te, y_te = pixels(PARTS[2][2])
    t0, c0 = time.perf_counter(), time.thread_time()
    rf = RandomForestClassifier(n_estimators=RF_TREES, random_state=seed, n_jobs=1)
    rf.fit(x_tr, y_tr)
    cm = confusion_matrix(rf.predict(x_te), y_te, 12, 255)
    scores = metrics_from_confusion(cm, [f"c{i}" for i in range(1, 13)])
    return {
        "model": "random-forest",
        "recipe": f"sklearn RandomForestClassifier(n_estimators={RF_TREES}), per pixel, 6 bands",
        "seed": seed,
        "train_wall_s": round(time.perf_counter() - t0, 1),
        "train_cpu_s": round(time.thread_time() - c0, 1),
        "train_pixels": int(y_tr.size),
        "test": {k: scores.get(k) for k in ("oa", "miou", "kappa", "mean_accuracy")},
        "test_per_class": scores.get("per_class"),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model and recipe: mean and min/max over seeds of OA, mIoU and kappa."""
    out: dict[str, Any] = {}
    keys = sorted({(r["model"], r["recipe"]) for r in rows})
    for model, recipe in keys:
        got = [r["test"] for r in rows if r["model"] == model and r["recipe"] == recipe]
        out[f"{model} / {recipe}"] = {
            k: {
                "mean": round(statistics.fmean(g[k] for g in got), 4),
                "min": round(min(g[k] for g in got), 4),
                "max": round(max(g[k] for g in got), 4),
            }
            for k in ("oa", "miou", "kappa")
        }
    return out


def verdict(rows: list[dict[str, Any]], chosen: dict[str, Any]) -> dict[str, Any]:
    """Issue 18's target: the best fusion network (picked by validation mIoU, each with its
    chosen recipe) against the random forest, test mIoU, seed means."""
    mean = statistics.fmean
    rf = [r["test"]["miou"] for r in rows if r["model"] == "random-forest"]
    nets: dict[str, Any] = {}
    for model in sorted({r["model"] for r in rows} - {"random-forest"}):
        recipe = chosen.get(RECIPE_FROM.get(model, model), {}).get("recipe")
        got = [r for r in rows if r["model"] == model and r["recipe"] == recipe]
        if got:
            nets[model] = {
                "recipe": recipe,
                "seeds": [r["seed"] for r in got],
                "val_miou_mean": round(mean(r["val_last_epoch"]["miou"] for r in got), 4),
                "test_miou_mean": round(mean(r["test"]["miou"] for r in got), 4),
            }
    if not rf or not nets:
        return {"networks": nets}
    best = max(nets, key=lambda m: nets[m]["val_miou_mean"])
    target = mean(rf) + 0.05
    return {
        "networks": nets,
        "random_forest_test_miou_mean": round(mean(rf), 4),
        "target_test_miou": round(target, 4),
        "best_on_val": best,
        "met": nets[best]["test_miou_mean"] >= target,
    }


def write_doc(
    rows: list[dict[str, Any]],
    budget: dict[str, Any],
    out: Path | None,
    chosen: dict[str, Any] | None = None,
) -> str:
    """The results document (to ``out`` when given) as JSON text."""
    doc = {
        "data": "hsi_dsm_crop (5 PCA components + 8-bit DSM + 12-class gt), see ../shared/data",
        "grid": "synthetic local grid: EPSG:32615, 1 m pixels, arbitrary origin",
        "parts": {p: [rs.start, rs.stop, cs.start, cs.stop] for p, rs, cs in PARTS},
        "gap_columns": list(GAP_COLUMNS),
        "budget": budget,
        "recipes": RECIPES,
        "load_average_at_end": list(os.getloadavg()),
        "summary": summarise(rows),
        "chosen_recipes": chosen or {},
        "verdict": verdict(rows, chosen or {}),
        "runs": rows,
        "caveat": "5 PCA bands are not a hyperspectral cube",
    }
    text = json.dumps(doc, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return text


#: a network that takes another's recipe choice (to fit a CPU budget: CoMiX-S is CoMiX-lite's
#: bigger sibling, several times slower to train)
RECIPE_FROM = {"comix-s": "comix-lite"}
Task = tuple[str, "str | None", int]  # (model or "random-forest", recipe or None = chosen, seed)


def plan(
    models: list[str],
    recipes: list[str],
    seeds: list[int],
    select: bool,
    rf: bool,
    given: dict[str, str] | None = None,
) -> list:
    """Runs in priority order (the random forest last). With ``select``, the first seed trains
    every recipe and the others train the one with the best last-epoch validation mIoU (the
    test part is not used); a network in ``given`` trains its given recipe only."""
    given = given or {}
    forest: list[Task] = [("random-forest", None, s) for s in seeds] * rf
    if not select:
        tasks = [(m, given.get(m, r), s) for s in seeds for m in models for r in recipes]
        return list(dict.fromkeys(tasks)) + forest
    borrows = [m for m in models if RECIPE_FROM.get(m) in models and m not in given]
    own = [m for m in models if m not in borrows and m not in given]
    tasks = [(m, r, seeds[0]) for m in own for r in recipes]
    tasks += [(m, given[m], s) for s in seeds for m in models if m in given]
    tasks += [(m, None, s) for m in borrows for s in seeds]
    return tasks + [(m, None, s) for s in seeds[1:] for m in own] + forest


def choose(rows: list[dict[str, Any]], model: str, seed: int) -> dict[str, Any]:
    """The recipe of ``model`` with the highest last-epoch validation mIoU at ``seed``."""
    got = [r for r in rows if r["model"] == model and r["seed"] == seed]
    best = max(got, key=lambda r: r["val_last_epoch"]["miou"])
    val = {r["recipe"]: round(r["val_last_epoch"]["miou"], 4) for r in got}
    return {"recipe": best["recipe"], "on": f"val mIoU, last epoch, seed {seed}", "val_miou": val}


def schedule(
    tasks: list,
    jobs: int,
    work: Path,
    scenes: Path,
    budget: dict[str, Any],
    out: Path | None,
    given: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``tasks`` on ``jobs`` workers, each as soon as its recipe is known; rows are written
    to ``out`` after every run, so a time-boxed job keeps what it finished."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    rows: list[dict[str, Any]] = []
    chosen: dict[str, Any] = {
        m: {"recipe": r, "on": "given (--recipe)"} for m, r in (given or {}).items()
    }
    pending, running = list(tasks), {}

    def ready(task: Task) -> Task | None:
        model, recipe, seed = task
        if recipe is not None or model == "random-forest":
            return task
        source = RECIPE_FROM.get(model, model)
        if source not in chosen:
            first = [t for t in tasks if t[0] == source and t[1] is not None]
            if any(t in pending for t in first) or any(t in running.values() for t in first):
                return None
            chosen[source] = choose(rows, source, first[0][2])
        return (model, chosen[source]["recipe"], seed)

    def job(task: Task) -> dict[str, Any]:
        model, recipe, seed = task
        print(f"hsi_dsm_check: start {model} {recipe} seed {seed}", file=sys.stderr, flush=True)
        if model == "random-forest":
            return random_forest(seed)
        return run_one(scenes, work, model, seed, budget, str(recipe))

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            for task in list(pending):
                if len(running) < jobs and (go := ready(task)) is not None:
                    pending.remove(task)
                    running[pool.submit(job, go)] = task
            if not running:
                raise RuntimeError(f"runs that cannot start: {pending}")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                task = running.pop(fut)
                try:
                    rows.append(fut.result())
                except Exception as exc:  # a failed run is reported, the others go on
                    print(f"hsi_dsm_check: {task} failed: {exc}", file=sys.stderr, flush=True)
                    continue
                print(f"hsi_dsm_check: done {task} {json.dumps(rows[-1]['test'])}", file=sys.stderr)
                write_doc(rows, budget, out, chosen)
    return rows, chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/hsi_dsm_check"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--no-rf", action="store_true", help="skip the random forest baseline")
    ap.add_argument("--epochs", type=int, default=BUDGET["epochs"])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--jobs", type=int, default=1, help="training processes at once (default 1)")
    ap.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="MODEL=RECIPE",
        help="a network's recipe, chosen before (e.g. on validation in an earlier run)",
    )
    ap.add_argument(
        "--select-on-val",
        action="store_true",
        help="first seed: every recipe; other seeds: the best one on validation (not test)",
    )
    args = ap.parse_args(argv)
    budget = BUDGET | {"epochs": args.epochs}
    scenes = write_crops(args.work)
    given = dict(g.split("=", 1) for g in args.recipe)
    tasks = plan(args.models, args.recipes, args.seeds, args.select_on_val, not args.no_rf, given)
    rows, chosen = schedule(tasks, args.jobs, args.work, scenes, budget, args.out, given)
    print(write_doc(rows, budget, args.out, chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())

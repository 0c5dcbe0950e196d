"""mfaf predict vs MONAI's sliding-window inference, side by side (issue 19).

The same exported ONNX network (``mfaf export`` of the shipped MFAFNet-S), the same generated
N×N optical (4 × uint16, 10 m) + SAR (float32 dB, 20 m) scene, the same 256² tiles, overlap
0.25, batch 4 and mfaf's gaussian window weights. mfaf runs as a user runs it
(``mfaf predict --model model.onnx``, default threads); MONAI runs the way its users do:
the whole scene read into memory (read, warped and normalised by mfaf's own reader in
512-row stripes, so the inputs are identical), ``monai.inferers.sliding_window_inference``
over an ONNX Runtime
session with ORT's defaults (every core), labels written as a GeoTIFF. Each run is its own
process; wall time and peak RSS (``wait4``'s ``ru_maxrss`` of that process) are taken from
outside. Label agreement is over the whole scene.

MONAI is a benchmark-only dependency (``pip install monai --no-deps``: it must not replace
the pinned torch); it is not in mfaf's runtime dependencies.

    python benchmarks/vs_monai.py --sizes 4096 --repeats 2
    python benchmarks/vs_monai.py --sizes 4096,8192 > benchmarks/results/vs_monai.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL = "mfafnet-s-ombria-water"
TILE, OVERLAP, BATCH = 256, 0.25, 4
STRIPE = 512  # rows a whole-scene read for MONAI takes at a time


def _env() -> dict[str, str]:
    path = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=path)


def measured(cmd: list[str], timeout: float) -> dict:
    """Wall seconds and peak RSS (MB) of one process, from outside; its stdout's last line."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, env=_env())
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                return {"error": f"timed out after {timeout:.0f} s"}
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        lines = out.read().strip().splitlines()
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}"}
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "stdout": lines[-1] if lines else "",
    }


def mfaf_cmd(folder: Path, size: int, onnx: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "mfaf_cli", "predict", "--model", str(onnx),
            "--optical", str(folder / f"optical_{size}.tif"),
            "--sar", str(folder / f"sar_{size}.tif"), "--tile", str(TILE),
            "--optical-bands", "1,2,3", "--sar-bands", "1",
            "--overlap", str(OVERLAP), "--batch-size", str(BATCH), "--blend", "gaussian",
            "-o", str(out), "--overwrite", "-q", "--json"]  # fmt: skip


def monai_cmd(folder: Path, size: int, onnx: Path, out: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--monai-worker", "--size", str(size),
            "--workdir", str(folder), "--onnx", str(onnx), "--out", str(out)]  # fmt: skip


def interior_weights() -> np.ndarray:
    """mfaf's gaussian weights of a window with neighbours on all four sides (MONAI takes
    one map for every window; mfaf leaves scene borders untapered, the only difference)."""
    from mfaf_cli.tiling.blend import blend_weights

    taper = round(TILE * OVERLAP)
    return np.ascontiguousarray(blend_weights(TILE, "gaussian", (taper,) * 4))


def read_whole(scene: Any, height: int, width: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The whole scene in memory, read in stripes of :data:`STRIPE` rows into scene-sized
    arrays: mfaf's readers keep per-thread work arrays as large as their largest read, which
    one whole-scene read would make scene-sized too (+400 MB at 4096²), memory a MONAI user
    reading with rasterio would not hold. A stripe's pixels equal the whole read's."""
    from mfaf_cli.tiling.windows import Window

    arrays: dict[str, np.ndarray] = {}
    valid = np.empty((height, width), bool)
    for r in range(0, height, STRIPE):
        h = min(STRIPE, height - r)
        part, ok = scene.read(Window(r, 0, h, width))
        for m, a in part.items():
            if m not in arrays:
                arrays[m] = np.empty((a.shape[0], height, width), a.dtype)
            arrays[m][:, r : r + h] = a
        valid[r : r + h] = ok
    return arrays, valid


def monai_worker(args: argparse.Namespace) -> dict:
    """The whole scene in memory, MONAI's sliding window over a default ORT session."""
    import rasterio
    import torch
    from monai.inferers import sliding_window_inference

    from mfaf_cli.coreg import AlignedScene, grid_from_reference
    from mfaf_cli.engine.onnx_predictor import OnnxPredictor
    from mfaf_cli.pipeline.core import normaliser

    folder = Path(args.workdir)
    opt = folder / f"optical_{args.size}.tif"
    inputs = {"optical": opt, "sar": folder / f"sar_{args.size}.tif"}
    predictor = OnnxPredictor(args.onnx, threads=None)  # ORT's defaults: every core, spinning
    meta = predictor.meta
    grid = grid_from_reference(opt)
    bands = {"optical": [1, 2, 3], "sar": [1]}  # the model's 3 optical bands, as for mfaf
    scene_inputs = {m: inputs[m] for m in meta.modality_names}
    with AlignedScene(scene_inputs, grid, bands=bands, meta=meta) as scene:
        pct = (
            scene.percentiles(meta)
            if any(s.normalisation.mode == "scene-percentile" for s in meta.modalities)
            else {}
        )
        arrays, valid = read_whole(scene, grid.height, grid.width)
    arrays = normaliser(meta, pct, in_place=True)(arrays)
    names = meta.modality_names
    bounds = np.cumsum([0] + [arrays[m].shape[0] for m in names])
    x = torch.from_numpy(np.concatenate([arrays[m] for m in names])[None])
    del arrays

    def network(t: torch.Tensor) -> torch.Tensor:
        a = t.numpy()
        batch = {m: a[:, bounds[i] : bounds[i + 1]] for i, m in enumerate(names)}
        return torch.from_numpy(predictor(batch))

    weights = torch.from_numpy(interior_weights())
    with torch.no_grad():
        probs = sliding_window_inference(x, (TILE, TILE), BATCH, network, overlap=OVERLAP,
                                         mode="gaussian", roi_weight_map=weights)  # fmt: skip
    labels = probs[0].argmax(0).numpy().astype("uint8")
    labels[~valid] = 255
    profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": 1,
               "dtype": "uint8", "crs": grid.crs, "transform": grid.transform, "nodata": 255,
               "tiled": True, "compress": "deflate"}  # fmt: skip
    with rasterio.open(args.out, "w", **profile) as dst:
        dst.write(labels, 1)
    return {"ok": True}


def agreement(a: Path, b: Path) -> dict:
    """Share of pixels (valid in both) where the two label maps agree, stripe by stripe."""
    import rasterio
    from rasterio.windows import Window

    same = total = 0
    with rasterio.open(a) as da, rasterio.open(b) as db:
        for r in range(0, da.height, 512):
            w = Window(0, r, da.width, min(512, da.height - r))
            la, lb = da.read(1, window=w), db.read(1, window=w)
            ok = np.ones(la.shape, bool)
            for ds, lab in ((da, la), (db, lb)):
                if ds.nodata is not None:
                    ok &= lab != ds.nodata
            same += int((la[ok] == lb[ok]).sum())
            total += int(ok.sum())
    return {"label_agreement": round(same / max(total, 1), 6), "pixels_compared": total}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="4096,8192")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repeats per size")
    ap.add_argument("--workdir", default=None, help="keep generated data here (default: temp)")
    ap.add_argument("--timeout", type=float, default=1800, help="per run, seconds")
    ap.add_argument("--monai-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--onnx", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.monai_worker:
        print(json.dumps(monai_worker(args)))
        return 0
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mfaf-vs-monai-")
        args.workdir = tmp.name
    folder = Path(args.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    onnx = folder / "model.onnx"
    if not onnx.exists():
        subprocess.run([sys.executable, "-m", "mfaf_cli", "export", "--model", MODEL, "-o",
                        str(onnx)], check=True, env=_env(), stdout=subprocess.DEVNULL)  # fmt: skip
    results = []
    try:
        for size in [int(s) for s in args.sizes.split(",") if s.strip()]:
            gen = [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                   "from predict_bench import generate_pair; from pathlib import Path; "
                   "generate_pair(Path(sys.argv[2]), int(sys.argv[3]))",
                   str(HERE), str(folder), str(size)]  # fmt: skip
            subprocess.run(gen, check=True, env=_env())
            runs: dict[str, list[dict]] = {"mfaf": [], "monai": []}
            outs = {"mfaf": folder / f"mfaf_{size}.tif", "monai": folder / f"monai_{size}.tif"}
            for r in range(args.repeats):
                order = ["mfaf", "monai"] if r % 2 == 0 else ["monai", "mfaf"]
                for tool in order:
                    make = mfaf_cmd if tool == "mfaf" else monai_cmd
                    res = measured(make(folder, size, onnx, outs[tool]), args.timeout)
                    res.pop("stdout", None)
                    print(json.dumps({"size": size, "tool": tool, **res}), file=sys.stderr)
                    runs[tool].append(res)
            results.append(summarise(size, runs, outs))
    finally:
        if tmp is not None:
            tmp.cleanup()
    import monai

    print(json.dumps({"onnx_model": MODEL, "tile": TILE, "overlap": OVERLAP, "batch": BATCH,
                      "cores": len(os.sched_getaffinity(0)), "monai": monai.__version__,
                      "results": results}))  # fmt: skip
    return 0


def summarise(size: int, runs: dict[str, list[dict]], outs: dict[str, Path]) -> dict:
    """Medians per tool and the ratios the issue's targets name."""
    row: dict = {"size": size, "runs": runs}
    ok = all(runs[t] and all("error" not in r for r in runs[t]) for t in runs)
    if not ok:
        return row
    med = {t: {k: float(np.median([r[k] for r in runs[t]])) for k in ("wall_s", "peak_rss_mb")}
           for t in runs}  # fmt: skip
    row["median"] = med
    row["speed_mfaf_over_monai"] = round(med["monai"]["wall_s"] / med["mfaf"]["wall_s"], 3)
    row["rss_mfaf_over_monai"] = round(med["mfaf"]["peak_rss_mb"] / med["monai"]["peak_rss_mb"], 3)
    row.update(agreement(outs["mfaf"], outs["monai"]))
    return row


if __name__ == "__main__":
    sys.exit(main())

"""Training data-path benchmark: mfaf's training loader, model-only vs end-to-end steps, and
(optionally) TorchGeo's documented equivalent on the same files.

Generates (or reuses in ``--workdir``) one realistic scene as tiled, deflate GeoTIFFs: optical
4 bands uint16 at 10 m in EPSG:32630, SAR 2 bands float32 (dB) at ~20 m in EPSG:4326 (so every
sample is warped onto the label grid), a uint8 label at 10 m with ESA WorldCover codes, plus the
``scenes.toml`` scene list that :class:`mfaf_cli.data.folder.FolderDataset` reads. Each
measurement runs in a fresh subprocess (its own peak RSS):

- the loader mfaf's trainer builds (``mfaf_cli.training.loading``): samples/s at 0, 1, 2
  workers, epoch 1 (cold: no open handles, fresh workers) and later epochs (warm) apart;
- per model (``unet``, ``mfafnet-s``): steps/s of a training step (forward, CE, backward,
  AdamW) on batches already in memory (model only) and fed by the loader (end to end), at the
  default (``auto``) workers or ``--step-workers``; cross-entropy only, the same step in both.

CPU: ``main_cpu_ms_per_sample`` per epoch is the main process's (with 0 workers, all of the
loading; with workers, collating and receiving only); ``cpu_s_with_workers`` is the whole
subprocess with its workers, set-up included. Both sides report both.

TorchGeo (``--torchgeo-venv DIR``, a venv with torch + torchvision + torchgeo; never a
dependency of mfaf): one ``RasterDataset`` subclass per file, ``&``, ``RandomGeoSampler`` with
the same patch size and sample count, ``stack_samples``, at the same worker counts.

    python benchmarks/train_bench.py --size 512 --models unet          # quick check
    python benchmarks/train_bench.py --workdir /tmp/tb                  # 2048², the default
    python benchmarks/train_bench.py --torchgeo-venv /tmp/tg-venv       # with TorchGeo
    python benchmarks/train_bench.py --device cuda --workers 0,4,8      # on a GPU

The last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vectorize_bench import rss_mb as peak_rss_mb  # this process's VmHWM or VmRSS, MiB

WORLDCOVER = (10, 20, 30, 40, 50, 60, 80, 90)


def children_peak_rss_mb() -> float:
    """The largest peak RSS of any finished child (loader workers), in MiB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


# ---- the scene set ------------------------------------------------------------------------
def _smooth_field(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """A smooth random field (bilinear upsampling of coarse noise), values about in [0, 1]."""
    gh, gw = h // cell + 2, w // cell + 2
    coarse = rng.random((gh, gw))
    ys, xs = np.arange(h) / cell, np.arange(w) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    b = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return (a * (1 - fy) + b * fy).astype(np.float32)


def generate_scene(folder: Path, size: int, seed: int = 0) -> Path:
    """Write optical/SAR/label GeoTIFFs and scenes.toml under ``folder`` (reused if there)."""
    import rasterio
    from rasterio.transform import from_bounds, from_origin
    from rasterio.warp import transform_bounds

    folder.mkdir(parents=True, exist_ok=True)
    listing = folder / "scenes.toml"
    if listing.exists():
        return listing
    rng = np.random.default_rng(seed)
    common = {"driver": "GTiff", "tiled": True, "blockxsize": 256, "blockysize": 256,
              "compress": "deflate"}  # fmt: skip
    x0, y0, res = 400_000.0, 4_600_000.0, 10.0
    utm = from_origin(x0, y0, res, res)
    field = _smooth_field(rng, size, size, 64)
    codes = np.asarray(WORLDCOVER, dtype=np.uint8)
    label = codes[np.minimum((field * len(codes)).astype(int), len(codes) - 1)]
    utm_kw = {**common, "width": size, "height": size, "crs": "EPSG:32630", "transform": utm}
    with rasterio.open(folder / "label.tif", "w", **utm_kw, count=1, dtype="uint8",
                       nodata=0) as dst:  # fmt: skip
        dst.write(label, 1)
    texture = rng.random((size, size), dtype=np.float32)
    with rasterio.open(folder / "optical.tif", "w", **utm_kw, count=4, dtype="uint16",
                       nodata=0) as dst:  # fmt: skip
        for b in range(4):
            v = 300 + 2500 * field * (0.6 + 0.2 * b) + 400 * texture
            dst.write(v.astype(np.uint16), b + 1)
    bounds = transform_bounds("EPSG:32630", "EPSG:4326", x0, y0 - size * res, x0 + size * res, y0)
    ss = size // 2 + 8  # ~20 m, a little wider than the optical footprint
    pad = (bounds[2] - bounds[0]) * 4 / ss
    geo = from_bounds(bounds[0] - pad, bounds[1] - pad, bounds[2] + pad, bounds[3] + pad, ss, ss)
    sar_field = _smooth_field(rng, ss, ss, 32)
    with rasterio.open(folder / "sar.tif", "w", **common, width=ss, height=ss, count=2,
                       dtype="float32", crs="EPSG:4326", transform=geo) as dst:  # fmt: skip
        dst.write((-20 + 12 * sar_field + rng.normal(0, 1.5, (ss, ss))).astype(np.float32), 1)
        dst.write((-27 + 10 * sar_field + rng.normal(0, 1.5, (ss, ss))).astype(np.float32), 2)
    listing.write_text(
        'classes = "worldcover"\n\n[[scene]]\nid = "bench"\nlabel = "label.tif"\n'
        'optical = "optical.tif"\nsar = "sar.tif"\n'
    )
    return listing


# ---- mfaf side (run in subprocesses) ------------------------------------------------------
def _dataset(root: Path, tile: int, seed: int) -> Any:
    from mfaf_cli.data.folder import FolderDataset

    ds = FolderDataset(root, "all", tile=tile, seed=seed, augment=True, normalisation="fixed",
                       photometric=0.15)  # fmt: skip
    ds.set_normalisation(ds.compute_normalisation())
    return ds


def _has_loading() -> bool:
    import importlib.util

    return importlib.util.find_spec("mfaf_cli.training.loading") is not None


def _loader(ds: Any, workers: int | str, batch: int, seed: int, device: str) -> Any:
    """The trainer's own loader: an object whose ``epoch(e)`` yields that epoch's batches."""
    from mfaf_cli.training.config import TrainConfig
    from mfaf_cli.training.distributed import _Dist

    if workers == "auto" and not _has_loading():  # before issue 23: no "auto"
        workers = max(0, len(os.sched_getaffinity(0)) - 1)
    cfg = TrainConfig(batch_size=batch, seed=seed, tile=ds.tile, num_workers=workers,  # type: ignore[arg-type]
                      device=device)  # fmt: skip
    try:
        from mfaf_cli.training.loading import TrainLoader
    except ImportError:  # before issue 23: a fresh DataLoader (and fresh workers) per epoch
        from mfaf_cli.training.trainer import _train_loader

        class _PerEpoch:
            def epoch(self, e: int) -> Any:
                return iter(_train_loader(ds, cfg, e, _Dist()))

            workers = cfg.num_workers

        return _PerEpoch()
    return TrainLoader(ds, cfg, _Dist(), torch_device=device)


def run_loader(args: argparse.Namespace) -> dict[str, Any]:
    ds = _dataset(Path(args.root), args.tile, args.seed)
    rss0 = peak_rss_mb("VmRSS")
    loader = _loader(ds, args.w, args.batch, args.seed, "cpu")
    rates, cpu_ms = [], []
    for e in range(args.epochs):
        t0, c0, n = time.perf_counter(), time.process_time(), 0
        for b in loader.epoch(e):
            n += int(b["mask"].shape[0])
            if args.samples and n >= args.samples:
                break
        rates.append(n / (time.perf_counter() - t0))
        cpu_ms.append(round((time.process_time() - c0) / n * 1e3, 1))
    workers = loader.workers
    del loader  # shuts the (persistent) workers down, so their peak RSS is counted
    import gc

    gc.collect()
    cpu = sum(
        r.ru_utime + r.ru_stime
        for r in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
    )
    return {"workers": workers, "samples_per_epoch": min(len(ds), args.samples or len(ds)),
            "cold": round(rates[0], 1),
            "warm": [round(r, 1) for r in rates[1:]],
            "warm_median": round(statistics.median(rates[1:]), 1) if len(rates) > 1 else None,
            "peak_rss_mb": round(peak_rss_mb(), 1), "rss_after_setup_mb": round(rss0, 1),
            "workers_peak_rss_mb": round(children_peak_rss_mb(), 1),
            "cpu_s_with_workers": round(cpu, 2),
            "main_cpu_ms_per_sample": cpu_ms}  # fmt: skip


def run_model(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from mfaf_cli.registry import create_model

    torch.manual_seed(args.seed)
    ds = _dataset(Path(args.root), args.tile, args.seed)
    loader = _loader(ds, args.w, args.batch, args.seed, args.device)
    dev = torch.device(args.device)
    net = create_model(args.model, ds.in_channels, ds.num_classes).to(dev).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    mods = ds.modalities

    def step(b: dict[str, Any]) -> None:
        xs = [b["inputs"][m].to(dev, non_blocking=True) for m in mods]
        y = b["mask"].to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=args.amp and dev.type == "cuda"):
            loss = F.cross_entropy(net(*xs).float(), y, ignore_index=ds.ignore_index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    steps = -(-args.samples // args.batch) if args.samples else None
    ready = list(islice(loader.epoch(0), steps))  # epoch 0 (cold) untimed; warms the model
    step(ready[0])
    sync()
    t0 = time.perf_counter()
    for b in ready:
        step(b)
    sync()
    model_only = len(ready) / (time.perf_counter() - t0)
    t0, n = time.perf_counter(), 0
    for b in islice(loader.epoch(1), steps):
        step(b)
        n += 1
    sync()
    e2e = n / (time.perf_counter() - t0)
    return {"model": args.model, "workers": loader.workers, "steps": n,
            "model_only_steps_per_s": round(model_only, 3), "end_to_end_steps_per_s": round(e2e, 3),
            "end_to_end_over_model_only": round(e2e / model_only, 3),
            "peak_rss_mb": round(peak_rss_mb(), 1)}  # fmt: skip


# ---- TorchGeo side (run with the TorchGeo venv's python) ----------------------------------
TORCHGEO_RUNNER = r"""
import json, sys, time, resource
from torch.utils.data import DataLoader
from torchgeo.datasets import RasterDataset, stack_samples
from torchgeo.samplers import RandomGeoSampler

root = sys.argv[1]
workers, batch, patch, n, epochs = (int(v) for v in sys.argv[2:7])

class Optical(RasterDataset):
    filename_glob = "optical.tif"
    is_image = True
    dtype = __import__("torch").float32

class Sar(RasterDataset):
    filename_glob = "sar.tif"
    is_image = True
    dtype = __import__("torch").float32

class Label(RasterDataset):
    filename_glob = "label.tif"
    is_image = False

label = Label(root)
ds = Optical(root, crs=label.crs, res=label.res) & Sar(root, crs=label.crs, res=label.res) & label
sampler = RandomGeoSampler(ds, size=patch, length=n)
dl = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                collate_fn=stack_samples, persistent_workers=workers > 0)
rates, cpu_ms = [], []
for e in range(epochs):
    t0, c0, k = time.perf_counter(), time.process_time(), 0
    for b in dl:
        k += b["image"].shape[0]
    rates.append(k / (time.perf_counter() - t0))
    cpu_ms.append(round((time.process_time() - c0) / k * 1e3, 1))
rss = 0.0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        rss = int(line.split()[1]) / 1024
del dl  # the persistent workers exit, so their CPU and peak RSS are counted
import gc; gc.collect()
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
cpu = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                           resource.getrusage(resource.RUSAGE_CHILDREN)))
print(json.dumps({"workers": workers, "cold": round(rates[0], 1),
                  "warm": [round(r, 1) for r in rates[1:]], "peak_rss_mb": round(rss, 1),
                  "workers_peak_rss_mb": round(kids, 1), "cpu_s_with_workers": round(cpu, 2),
                  "main_cpu_ms_per_sample": cpu_ms}))
"""


def run_torchgeo(venv: Path, root: Path, workers: int, args: argparse.Namespace, n: int) -> Any:
    py = venv / "bin" / "python"
    cmd = [str(py), "-c", TORCHGEO_RUNNER, str(root), str(workers), str(args.batch),
           str(args.tile), str(n), str(args.epochs)]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    if p.returncode:
        return {"workers": workers, "error": p.stderr.strip().splitlines()[-1:]}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["warm_median"] = round(statistics.median(out["warm"]), 1) if out["warm"] else None
    return out


# ---- driver -------------------------------------------------------------------------------
def _sub(args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--root", str(args.root), "--tile", str(args.tile),
           "--batch", str(args.batch), "--seed", str(args.seed), "--epochs", str(args.epochs),
           "--samples", str(args.samples),
           "--device", args.device, *(["--amp"] if args.amp else []), *extra]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(extra)} failed:\n{p.stderr[-3000:]}")
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


def _windows(size: int, tile: int) -> int:
    """Windows of one epoch of the generated scene (the folder reader's tile grid)."""
    from mfaf_cli.data.splits import grid_offsets

    return len(grid_offsets(size, tile)) ** 2


def _best(rows: list[dict[str, Any]], key: str) -> float:
    return max(float(r[key]) for r in rows if r.get(key) is not None)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mfaf-train-bench"))
    ap.add_argument("--workers", default="0,1,2", help="loader worker counts to measure")
    ap.add_argument("--models", default="unet,mfafnet-s")
    ap.add_argument("--step-workers", default="auto",
                    help="loader workers of the end-to-end steps (comma list)")  # fmt: skip
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3, help="epoch 1 is cold, the rest warm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=0,
                    help="samples per epoch (0: every window of the scene once)")  # fmt: skip
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="mixed precision steps (CUDA)")
    ap.add_argument("--torchgeo-venv", type=Path, default=None,
                    help="a venv with torchgeo to run its side")  # fmt: skip
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--w", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.w is not None:  # a subprocess
        args.w = args.w if args.w == "auto" else int(args.w)
        print(json.dumps(run_model(args) if args.model else run_loader(args)))
        return
    load0 = [round(x, 2) for x in os.getloadavg()]
    args.root = generate_scene(args.workdir / f"scene_{args.size}", args.size, args.seed)
    counts = [int(w) for w in args.workers.split(",")]
    n = _windows(args.size, args.tile)
    n = min(n, args.samples) if args.samples else n
    loader_rows: list[dict[str, Any]] = []
    tg_rows: list[dict[str, Any]] | None = [] if args.torchgeo_venv is not None else None
    for w in counts:  # interleaved, so a shared machine's load falls on both sides alike
        loader_rows.append(_sub(args, "--w", str(w)))
        if tg_rows is not None:
            tg_rows.append(run_torchgeo(args.torchgeo_venv, args.root.parent, w, args, n))
    print(json.dumps({"loader": loader_rows}), file=sys.stderr)
    steps_w = args.step_workers.split(",")
    model_rows = [_sub(args, "--w", w, "--model", m)
                  for m in args.models.split(",") if m for w in steps_w]  # fmt: skip
    print(json.dumps({"models": model_rows}), file=sys.stderr)
    reason = "not run: give --torchgeo-venv DIR (a venv with torch, torchvision and torchgeo)"
    if tg_rows is not None:
        if all("error" in r for r in tg_rows):
            reason, tg_rows = f"TorchGeo failed: {tg_rows[0]['error']}", None
    mfaf_rate = {str(r["workers"]): {"cold": r["cold"], "warm": r["warm_median"]}
                 for r in loader_rows}  # fmt: skip
    out: dict[str, Any] = {
        "benchmark": "train_bench", "size": args.size, "tile": args.tile, "batch": args.batch,
        "samples_per_epoch": n, "epochs": args.epochs, "device": args.device,
        "cores": len(os.sched_getaffinity(0)), "load_average_start": load0,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "mfaf_samples_per_s": mfaf_rate,
        "train_end_to_end_over_model_only": {
            r["model"] + ("" if len(steps_w) == 1 else f"@{r['workers']}"):
            r["end_to_end_over_model_only"] for r in model_rows},
        "peak_rss_mb": {"loader_main": max(r["peak_rss_mb"] for r in loader_rows),
                        "loader_worker": max(r["workers_peak_rss_mb"] for r in loader_rows),
                        "training": max((r["peak_rss_mb"] for r in model_rows),
                                        default=None)},
        "loader": loader_rows, "models": model_rows,
        "torchgeo_samples_per_s": None, "ratio_vs_torchgeo": None, "torchgeo_reason": reason,
    }  # fmt: skip
    if tg_rows:
        ok = [r for r in tg_rows if "error" not in r]
        out["torchgeo_samples_per_s"] = {str(r["workers"]): {"cold": r["cold"],
                                         "warm": r["warm_median"]} for r in ok}  # fmt: skip
        out["torchgeo"] = tg_rows
        out["ratio_vs_torchgeo"] = {
            "cold": round(_best(loader_rows, "cold") / _best(ok, "cold"), 2),
            "warm": round(_best(loader_rows, "warm_median") / _best(ok, "warm_median"), 2),
        }
        out["torchgeo_reason"] = None
    print(json.dumps(out))


if __name__ == "__main__":
    main()

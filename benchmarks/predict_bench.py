"""End-to-end predict benchmark: throughput vs the model alone, and peak memory vs scene size.

Generates an N×N optical (4 bands, uint16, 10 m) + SAR (1 band, float32 dB, 20 m, so it is
warped window by window) pair in a temp folder, then for each size runs, in a fresh
subprocess (so ``ru_maxrss`` is that run's own peak):

1. ``mfaf_cli.predict`` end to end (read + warp + normalise + model + blend + write);
2. the model alone on the same windows and batches (inputs prepared beforehand, not timed).

Prints one JSON object: per size end-to-end MP/s, model-only MP/s, their ratio (target ≥ 0.9)
and peak RSS; across sizes the RSS ratio of the largest to the smallest (target ≤ 1.3).

    python benchmarks/predict_bench.py --size 512              # quick check
    python benchmarks/predict_bench.py                         # 2048² and 8192² (slow on CPU)
    python benchmarks/predict_bench.py --sizes 2048,8192 --device cuda --model mfafnet-s
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

STRIPE = 512


def peak_rss_bytes(field: str = "VmHWM") -> int:
    """This process's own peak (``VmHWM``) or current (``VmRSS``) resident set, in bytes.

    Not ``ru_maxrss``: on Linux a child started by ``subprocess`` (vfork + exec) inherits its
    parent's high-water mark there, so after the parent generated an 8192² pair (~700 MB of
    float64 stripes, plus torch) the worker reported the parent's peak, not its own. VmHWM
    belongs to the process's own address space. ``ru_maxrss`` only where /proc is missing.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def generate_pair(folder: Path, size: int, seed: int = 0) -> tuple[Path, Path]:
    """Write the optical + SAR pair stripe by stripe (never the whole scene in memory)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    opt_path, sar_path = folder / f"optical_{size}.tif", folder / f"sar_{size}.tif"
    if opt_path.exists() and sar_path.exists():
        return opt_path, sar_path
    rng = np.random.default_rng(seed)
    common = {"driver": "GTiff", "crs": "EPSG:32630", "tiled": True, "blockxsize": 512,
              "blockysize": 512, "compress": "deflate"}  # fmt: skip
    x0, y0 = 400_000.0, 4_600_000.0
    opt_profile = dict(common, width=size, height=size, count=4, dtype="uint16", nodata=0,
                       transform=from_origin(x0, y0, 10.0, 10.0))  # fmt: skip
    ss = max(1, size // 2)
    sar_profile = dict(common, width=ss, height=ss, count=1, dtype="float32",
                       transform=from_origin(x0, y0, 20.0, 20.0))  # fmt: skip
    cols = np.arange(size)
    with rasterio.open(opt_path, "w", **opt_profile) as dst:
        for r in range(0, size, STRIPE):
            h = min(STRIPE, size - r)
            rows = np.arange(r, r + h)[:, None]
            field = 1500 + 900 * np.sin(cols[None] / 37.0) * np.cos(rows / 53.0)
            block = field[None] + rng.gamma(2.0, 150.0, (4, h, size))
            dst.write(np.clip(block, 1, 65535).astype("uint16"), window=Window(0, r, size, h))
    scols = np.arange(ss)
    with rasterio.open(sar_path, "w", **sar_profile) as dst:
        for r in range(0, ss, STRIPE):
            h = min(STRIPE, ss - r)
            rows = np.arange(r, r + h)[:, None]
            field = -12 + 4 * np.sin(scols[None] / 19.0 + rows / 23.0)
            block = (field + rng.normal(0, 2.0, (h, ss)))[None].astype("float32")
            dst.write(block, window=Window(0, r, ss, h))
    return opt_path, sar_path


def save_narrow_unet(folder: Path, width: int) -> Path:
    """A seeded (untrained) early-fusion U-Net checkpoint with base width ``width``."""
    import torch

    from mfaf_cli.io.weights import save_checkpoint
    from mfaf_cli.registry import create_model, default_meta

    torch.manual_seed(0)
    chans = {"optical": 4, "sar": 1}
    meta = default_meta("unet", chans, num_classes=2, base_width=width)
    path = folder / f"unet_w{width}.safetensors"
    save_checkpoint(create_model("unet", chans, 2, base_width=width), meta, path)
    return path


class NullPredictor:
    """Zero-cost engine: fixed probabilities, so the machinery's own ceiling is measured.

    With ``device`` other than cpu (``--device cuda``) it also hands out the probabilities as a
    tensor on that device (``predict_tensor``), so the device merger's ceiling is measured too.
    """

    engine = "null"
    precision = "fp32"
    reader_bound = True  # nothing to compute: the split moves cores to readers

    def __init__(self, meta: object, batch_size: int, tile: int, device: str = "cpu") -> None:
        self.meta = meta
        self.device = device
        k = meta.num_classes  # type: ignore[attr-defined]
        probs = np.linspace(1.0, 2.0, k, dtype=np.float32)
        probs /= probs.sum()
        self._out = np.broadcast_to(probs[None, :, None, None], (batch_size, k, tile, tile))
        self._tensor = None

    def __call__(self, batch: dict) -> np.ndarray:
        n = len(next(iter(batch.values())))
        return self._out[:n]

    def predict_tensor(self, batch: dict) -> object:  # a torch.Tensor (torch imported lazily)
        import torch

        if self._tensor is None:
            self._tensor = torch.from_numpy(np.ascontiguousarray(self._out[:1])).to(self.device)
        n = len(next(iter(batch.values())))
        return self._tensor.expand(n, *self._out.shape[1:])


class RssTrace:
    """Samples this process's resident set every 0.1 s on a thread; ``stop()`` gives it at
    each tenth of the run (MB): memory that grows with the rows done shows as a slope."""

    def __init__(self) -> None:
        import threading

        self._samples: list[int] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(0.1):
            self._samples.append(peak_rss_bytes("VmRSS"))

    def stop(self) -> list[float]:
        self._done.set()
        self._thread.join()
        s = self._samples or [peak_rss_bytes("VmRSS")]
        return [round(s[min(len(s) - 1, i * len(s) // 10)] / 2**20, 1) for i in range(11)]


def scene_percentile_meta(meta: Any) -> Any:
    """``meta`` with every modality's record asking for scene percentiles (the pre-pass)."""
    mods = tuple(
        dataclasses.replace(m, normalisation=dataclasses.replace(
            m.normalisation, mode="scene-percentile", clip_low=None, clip_high=None))
        for m in meta.modalities
    )  # fmt: skip
    return dataclasses.replace(meta, modalities=mods)


def bare_block_read(inputs: dict[str, Path], bands: dict[str, list[int]]) -> float:
    """Seconds to read every block of the inputs once, one thread, nothing else: the floor
    under any reader (decode only: no warp, normalisation, windows or copies). GDAL's block
    cache is capped (each block is read once, nothing is re-read), so this read does not
    raise the process's peak RSS above the run's own."""
    import rasterio

    t0 = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=32 << 20):
        for name, path in inputs.items():
            with rasterio.open(path) as ds:
                for _, window in ds.block_windows(1):
                    ds.read(bands[name], window=window)
    return time.perf_counter() - t0


class _RowsSinkProbe:
    """Stands for a sink that takes finished rows, to ask the core which merger it picks."""

    def row_needs(self) -> object:
        from mfaf_cli.stitch.rows import RowNeeds

        return RowNeeds()

    def write_finished(self, rows: object) -> None:
        return None


#: ``--merger`` -> MFAF_DEVICE_MERGER for the worker (unset: the core's automatic choice)
MERGER_ENV = {"auto": None, "numpy": "0", "device": "1"}


def null_device(device: str) -> str:
    """The null engine's device: cpu unless a GPU is named explicitly."""
    return device if device.startswith("cuda") else "cpu"


def run_worker(args: argparse.Namespace) -> dict:
    """One size, in this process: end-to-end predict, then the model alone on the same batches."""
    from mfaf_cli.coreg import AlignedScene, grid_from_reference
    from mfaf_cli.engine import create_predictor
    from mfaf_cli.models.resolve import resolve_model
    from mfaf_cli.pipeline.predict import predict, prepare_batch
    from mfaf_cli.tiling.windows import batched, tile_windows

    folder = Path(args.workdir)
    opt, sar = folder / f"optical_{args.size}.tif", folder / f"sar_{args.size}.tif"
    inputs = {"optical": opt, "sar": sar}
    source = resolve_model(args.model, ("optical", "sar"))
    tile = args.tile or source.meta.tile_size
    from mfaf_cli.malloc import limit_malloc_growth
    from mfaf_cli.pipeline.spec import split_threads, usable_cores

    limit_malloc_growth()  # as the mfaf CLI does
    if args.scene_percentile:
        source = dataclasses.replace(source, meta=scene_percentile_meta(source.meta))
    engine_threads, readers = split_threads(
        args.threads or usable_cores(), reader_bound=args.engine == "null"
    )
    if args.read_threads is not None:
        readers = args.read_threads
    if args.engine == "null":
        predictor = NullPredictor(source.meta, args.batch_size, tile, null_device(args.device))
    else:
        predictor = create_predictor(source, engine=args.engine, device=args.device,
                                     precision=args.precision, modalities=("optical", "sar"),
                                     batch_size=args.batch_size, tile=tile,
                                     threads=engine_threads)  # fmt: skip
    meta = predictor.meta
    # Warm-up (allocator, kernels) on one batch of the real shape, untimed.
    warm = {m.name: np.zeros((args.batch_size, m.n_bands, tile, tile), np.float32)
            for m in meta.modalities}  # fmt: skip
    predictor(warm)
    from mfaf_cli.pipeline.core import use_device_merger

    on_device = use_device_merger(predictor, _RowsSinkProbe(), meta.num_classes)
    if on_device:  # torch imported and the device's context made before the clock starts
        predictor.predict_tensor(warm)
    rss_loaded = peak_rss_bytes("VmRSS")  # model loaded and warmed up

    # the generated optical has 4 bands; a model taking fewer gets the first n
    bands = {m.name: list(range(1, m.n_bands + 1)) for m in meta.modalities}
    out = folder / f"map_{args.size}.tif"
    c_bare = cpu_seconds()
    bare_s = [bare_block_read({m: inputs[m] for m in meta.modality_names}, bands)]
    bare_cpu_s = cpu_seconds() - c_bare
    tracer = RssTrace()
    cpu0 = cpu_seconds()
    res = predict(inputs, out, predictor=predictor, tile=tile, overlap=args.overlap,
                  batch_size=args.batch_size, overwrite=True, progress=args.progress,
                  read_threads=readers, bands=bands)  # fmt: skip
    rss_predict = peak_rss_bytes()
    predict_cpu_s = cpu_seconds() - cpu0
    rss_trace = tracer.stop()
    bare_s.append(bare_block_read({m: inputs[m] for m in meta.modality_names}, bands))
    if args.engine != "null" and not args.no_model_only:
        # the honest limit: the network alone with every core, as ORT's or torch's defaults
        # give a user (threads=None), not the run's own engine threads
        predictor = create_predictor(source, engine=args.engine, device=args.device,
                                     precision=args.precision, modalities=("optical", "sar"),
                                     batch_size=args.batch_size, tile=tile,
                                     threads=None)  # fmt: skip
        predictor(warm)

    # Model only: the same windows and batches, read and normalised beforehand (not timed).
    grid = grid_from_reference(opt)
    model_s = model_cpu_s = 0.0
    scene_inputs = {m: inputs[m] for m in meta.modality_names}
    with AlignedScene(scene_inputs, grid, bands=bands, meta=meta) as scene:
        pct = scene.percentiles(meta)
        windows = tile_windows(grid.height, grid.width, tile, args.overlap)
        if args.engine == "null" or args.no_model_only:  # nothing (asked) to time
            windows = []
        for batch in batched(windows, args.batch_size):
            pb = prepare_batch(scene, batch, meta, pct)
            if not pb.run:
                continue
            t0, c0 = time.perf_counter(), cpu_seconds()
            predictor(pb.arrays)
            model_s += time.perf_counter() - t0
            model_cpu_s += cpu_seconds() - c0
    mpix = grid.width * grid.height / 1e6
    e2e_s = mpix / res.megapixels_per_second
    return {
        "size": args.size,
        "megapixels": round(mpix, 3),
        "windows": res.windows,
        "tile": tile,
        "batch_size": args.batch_size,
        "model": res.model,
        "device": res.device,
        "engine": res.engine,
        "precision": res.precision,
        "end_to_end_seconds": round(e2e_s, 3),
        "end_to_end_mp_per_s": round(res.megapixels_per_second, 4),
        "model_only_seconds": round(model_s, 3),
        "model_only_mp_per_s": round(mpix / model_s, 4) if model_s else None,
        "ratio_end_to_end_to_model": round(model_s / e2e_s, 4) if e2e_s else None,
        "peak_rss_mb": round(rss_predict / 2**20, 1),
        # CPU seconds of the whole predict call (all threads): a load-independent cost figure
        "end_to_end_cpu_seconds": round(predict_cpu_s, 3),
        "mp_per_cpu_second": round(mpix / predict_cpu_s, 4) if predict_cpu_s else None,
        "rss_after_model_load_mb": round(rss_loaded / 2**20, 1),
        "read_threads": readers,
        "merger": "device" if on_device else "numpy",
        "engine_threads": engine_threads,
        "threads": args.threads or usable_cores(),
        "model_only_threads": "all (engine defaults)",
        "model_only_cpu_seconds": round(model_cpu_s, 3),
        "total_seconds_with_model_load": res.seconds,
        "cpu_seconds_by_stage": res.cpu_seconds,
        "bare_block_read_seconds": [round(x, 3) for x in bare_s],
        "ratio_end_to_end_to_bare_read": round(e2e_s / min(bare_s), 3),
        "bare_block_read_cpu_seconds": round(bare_cpu_s, 3),
        "ratio_cpu_seconds_end_to_end_to_bare_read": round(
            predict_cpu_s / max(bare_cpu_s, 1e-9), 3
        ),
        "rss_mb_over_the_run": rss_trace,
        "statistics": res.statistics,
        "statistics_share_of_run": (
            round(res.statistics["seconds"] / e2e_s, 4) if res.statistics else None
        ),
    }


CHIP = Path(__file__).resolve().parents[1] / "examples" / "sen1floods11"


def _cli_seconds(args: list[str], env: dict[str, str]) -> float:
    """Wall time of one ``mfaf predict`` process, as a user runs it."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mfaf_cli", "predict", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - t0


def run_chip(repeats: int, threads: int | None) -> dict:
    """Default predict vs ``--engine torch`` vs a pre-exported ONNX model on the examples/
    Sentinel chip, interleaved repeats in one run (the machine is shared and noisy)."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="mfaf-chip-") as tmp:
        path = str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")
        env = dict(os.environ, MFAF_CACHE_DIR=str(Path(tmp) / "cache"), PYTHONPATH=path)
        onnx = Path(tmp) / "model.onnx"
        subprocess.run([sys.executable, "-m", "mfaf_cli", "export", "--model",
                        "mfafnet-s-ombria-water", "-o", str(onnx)],
                       check=True, env=env, stdout=subprocess.DEVNULL)  # fmt: skip
        base = ["--optical", str(CHIP / "S2.tif"), "--sar", str(CHIP / "S1.tif"),
                "--optical-bands", "13,8,4", "--sar-bands", "1", "-q", "--overwrite",
                "-o", str(Path(tmp) / "map.tif")]  # fmt: skip
        base += ["--threads", str(threads)] if threads else []
        configs = {
            "default": [],
            "torch": ["--engine", "torch"],
            "onnx_file": ["--model", str(onnx)],
        }
        first_default = _cli_seconds(base, env)  # exports into the (empty) cache
        times: dict[str, list[float]] = {k: [] for k in configs}
        for _ in range(repeats):
            for name, extra in configs.items():
                times[name].append(_cli_seconds(base + extra, env))
    stats = {k: {"median_s": round(float(np.median(v)), 3), "min_s": round(min(v), 3),
                 "max_s": round(max(v), 3), "runs": [round(x, 3) for x in v]}
             for k, v in times.items()}  # fmt: skip
    ref = stats["onnx_file"]["median_s"]
    return {
        "chip": str(CHIP), "repeats": repeats, "threads": threads,
        "first_default_run_with_export_s": round(first_default, 3), "configs": stats,
        "ratio_default_to_onnx_file": round(stats["default"]["median_s"] / ref, 3),
        "ratio_torch_to_onnx_file": round(stats["torch"]["median_s"] / ref, 3),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, help="run one size only (e.g. 512 for a quick check)")
    ap.add_argument(
        "--sizes", default="2048,8192", help="comma-separated sizes (default 2048,8192)"
    )
    ap.add_argument("--model", default="unet", help="registry arch, shipped name or file")
    ap.add_argument(
        "--unet-width",
        type=int,
        default=None,
        help="use a seeded early-fusion U-Net of this base width (saved in the workdir) instead "
        "of --model: a real network cheap enough to run 8192² on a CPU for the memory figures",
    )
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--engine", default="auto", help="auto | torch | onnx | null (no model)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument(
        "--read-threads",
        type=int,
        default=None,
        help="override the reader threads of the --threads split",
    )
    ap.add_argument(
        "--merger",
        choices=sorted(MERGER_ENV),
        default="auto",
        help="row-band merger: auto (on the GPU for a torch predictor on CUDA), numpy, or "
        "device (the torch merger on the predictor's device, also on CPU)",
    )
    ap.add_argument(
        "--no-model-only",
        action="store_true",
        help="skip the model-only pass (only the end-to-end figures are wanted)",
    )
    ap.add_argument(
        "--scene-percentile",
        action="store_true",
        help="make the model's record ask for scene percentiles (times the statistics pre-pass)",
    )
    ap.add_argument("--workdir", default=None, help="keep generated data here (default: temp)")
    ap.add_argument("--progress", action="store_true", help="show tqdm bars (stderr)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--chip",
        action="store_true",
        help="default predict vs --engine torch vs an exported .onnx on examples/",
    )
    ap.add_argument("--repeats", type=int, default=3, help="repeats per config (--chip)")
    ap.add_argument("--threads", type=int, default=None, help="--threads for the runs")
    args = ap.parse_args(argv)
    if args.chip:
        print(json.dumps(run_chip(args.repeats, args.threads)))
        return 0

    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0

    sizes = [args.size] if args.size else [int(s) for s in args.sizes.split(",") if s.strip()]
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mfaf-bench-")
        args.workdir = tmp.name
    folder = Path(args.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    if args.unet_width:
        args.model = str(save_narrow_unet(folder, args.unet_width))
    results = []
    try:
        for size in sizes:
            t0 = time.perf_counter()
            generate_pair(folder, size)
            gen_s = time.perf_counter() - t0
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--size", str(size)]
            cmd += ["--model", args.model, "--tile", str(args.tile), "--overlap", str(args.overlap)]
            cmd += ["--batch-size", str(args.batch_size), "--device", args.device]
            cmd += [
                "--engine",
                args.engine,
                "--precision",
                args.precision,
                "--workdir",
                str(folder),
            ]
            cmd += [] if args.read_threads is None else ["--read-threads", str(args.read_threads)]
            cmd += [] if args.threads is None else ["--threads", str(args.threads)]
            cmd += ["--progress"] if args.progress else []
            cmd += ["--no-model-only"] if args.no_model_only else []
            cmd += ["--scene-percentile"] if args.scene_percentile else []
            env = dict(os.environ)
            env.pop("MFAF_DEVICE_MERGER", None)
            if MERGER_ENV[args.merger] is not None:
                env["MFAF_DEVICE_MERGER"] = MERGER_ENV[args.merger]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
            if proc.returncode != 0:
                print(json.dumps({"error": f"size {size} failed (exit {proc.returncode})"}))
                return 1
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["generate_seconds"] = round(gen_s, 2)
            results.append(r)
    finally:
        if tmp is not None:
            tmp.cleanup()
    summary: dict = {"results": results}
    if len(results) >= 2:
        small, large = results[0], results[-1]
        summary["rss_ratio_largest_to_smallest"] = round(
            large["peak_rss_mb"] / small["peak_rss_mb"], 3
        )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

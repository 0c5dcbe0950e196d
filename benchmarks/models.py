"""Parameters, FLOPs and CPU forward time per 256² tile for every network and variant.

Prints one JSON document (and writes it with ``--out``). FLOPs are measured with
``torch.utils.flop_counter.FlopCounterMode`` (it counts conv / matmul / attention ops, not
grid_sample, interpolation, norms or activations) and compared with the analytic estimates of
ARCHITECTURE.md §5.1 (which count ~4-8 MACs per bilinear/trilinear sample). Timings are the
median (and min/max) of ``--repeats`` no-grad batch-1 forwards after warm-up, taken round-robin
over the networks so that a shared machine's load hits all of them alike; ``time_ratios`` pairs
the rounds. ``--memory`` adds each forward's peak RSS above its starting RSS, measured in a fresh
process per network (tracemalloc does not see torch's allocator).

    python benchmarks/models.py --out benchmarks/results/models.json
    nice -n 10 python benchmarks/models.py --threads 1 --repeats 7 --memory \\
        --only mfafnet-s comix-s comix-lite --out benchmarks/results/models_comix_threads1.json
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

# measure this checkout's package, not an installed copy elsewhere
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mfaf_cli.models import count_parameters, create_model

#: (label, registry name, in_channels, classes, config, brief estimate (params M, GFLOPs) or None)
CASES: list[tuple[str, str, dict[str, int], int, dict[str, Any], tuple[float, float] | None]] = [
    ("mfafnet-s", "mfafnet-s", {"optical": 4, "sar": 1}, 8, {}, (4.3, 9.7)),
    ("mfafnet-s (OMBRIA RGB+SAR, K=2)", "mfafnet-s", {"optical": 3, "sar": 1}, 2, {}, None),
    ("mfafnet-b", "mfafnet-b", {"optical": 4, "sar": 1}, 8, {}, (20.6, 38.1)),
    ("unet (width 32)", "unet", {"optical": 4, "sar": 1}, 8, {}, (4.3, 20.2)),
    (
        "unet (width 64, bilinear)",
        "unet",
        {"optical": 4, "sar": 1},
        8,
        {"base_width": 64},
        (17.3, 80.2),
    ),
    (
        "unet (width 64, transposed)",
        "unet",
        {"optical": 4, "sar": 1},
        8,
        {"base_width": 64, "bilinear": False},
        (31.0, 109.0),
    ),
    ("unet-optical (width 32)", "unet-optical", {"optical": 4}, 8, {}, None),
    ("unet-sar (width 32)", "unet-sar", {"sar": 1}, 8, {}, None),
    ("comix-s", "comix-s", {"hsi": 144, "lidar": 1}, 15, {}, (8.5, 8.5)),
    (
        "comix-s (batched sampler, as before)",
        "comix-s",
        {"hsi": 144, "lidar": 1},
        15,
        {"dcn_sampling": "batched"},
        None,
    ),
    ("comix-lite", "comix-lite", {"hsi": 144, "lidar": 1}, 15, {}, (8.3, 7.3)),
    (
        "comix-lite (batched sampler, as before)",
        "comix-lite",
        {"hsi": 144, "lidar": 1},
        15,
        {"dcn_sampling": "batched"},
        None,
    ),
    (
        "comix-s (banded band reduction)",
        "comix-s",
        {"hsi": 144, "lidar": 1},
        15,
        {"band_reduction": "banded"},
        None,
    ),
    (
        "comix-lite (banded band reduction)",
        "comix-lite",
        {"hsi": 144, "lidar": 1},
        15,
        {"band_reduction": "banded"},
        None,
    ),
    ("comix-b", "comix-b", {"hsi": 144, "lidar": 1}, 15, {}, (40.8, 38.2)),
]


def build(
    name: str, chans: dict[str, int], k: int, cfg: dict[str, Any], size: int
) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """A seeded eval-mode network and its batch-1 size×size inputs."""
    torch.manual_seed(0)
    model = create_model(name, chans, k, **cfg).eval()
    return model, [torch.randn(1, chans[m], size, size) for m in model.modalities]


def static_figures(model: torch.nn.Module, xs: list[torch.Tensor]) -> dict[str, Any]:
    """Parameter count and counted GFLOPs of one forward."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*xs)
    return {"params": count_parameters(model), "gflops": round(counter.get_total_flops() / 1e9, 3)}


def interleaved_times(
    nets: list[tuple[torch.nn.Module, list[torch.Tensor]]], repeats: int, warmup: int
) -> list[list[float]]:
    """Forward ms per network, round-robin (one forward of each per round), so that load
    changes on a shared machine hit every network alike and their ratios stay comparable."""
    times: list[list[float]] = [[] for _ in nets]
    with torch.no_grad():
        for model, xs in nets:
            for _ in range(warmup):
                model(*xs)
        for _ in range(repeats):
            for i, (model, xs) in enumerate(nets):
                t0 = time.perf_counter()
                model(*xs)
                times[i].append((time.perf_counter() - t0) * 1000.0)
    return times


def rss_bytes(field: str) -> int:
    """This process's VmHWM (peak) or VmRSS (current) from /proc, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def memory_worker(index: int, size: int, threads: int) -> dict[str, float]:
    """In a fresh process: peak RSS of one no-grad forward above the RSS before it (MiB).

    The kernel's high-water mark is reset (``clear_refs`` 5) after the model and inputs exist,
    so the figure is the forward's own working memory (activations, sampling buffers). The
    parent fixes glibc's mmap threshold, so freed warm-up buffers go back to the kernel instead
    of hiding inside the RSS measured before the forward.
    """
    torch.set_num_threads(threads)
    _, name, chans, k, cfg, _ = CASES[index]
    model, xs = build(name, chans, k, cfg, size)
    with torch.no_grad():
        model(*xs)  # first call allocates lazily-built caches; measure the steady state
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = rss_bytes("VmRSS")
    with torch.no_grad():
        model(*xs)
    peak = rss_bytes("VmHWM")
    return {"forward_peak_mib": round((peak - before) / 2**20, 1)}


def measure_memory(index: int, size: int, threads: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--memory-worker", str(index), "--size", str(size)]
    cmd += ["--threads", str(threads)]
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return dict(json.loads(out))


def spread(times: list[float]) -> dict[str, Any]:
    return {
        "forward_ms": round(statistics.median(times), 1),
        "forward_ms_min": round(min(times), 1),
        "forward_ms_max": round(max(times), 1),
        "forward_ms_all": [round(t, 1) for t in times],
    }


#: (numerator label, denominator label) time ratios reported in the summary
RATIOS = [
    ("comix-s", "mfafnet-s"),
    ("comix-lite", "mfafnet-s"),
    ("comix-s (batched sampler, as before)", "mfafnet-s"),
    ("comix-lite (batched sampler, as before)", "mfafnet-s"),
    ("comix-s (banded band reduction)", "comix-s"),
    ("comix-lite (banded band reduction)", "comix-lite"),
]


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and per-round min/max of time ratios (rounds are interleaved, so pairable)."""
    by = {r["label"]: r for r in rows}
    out: dict[str, Any] = {}
    for a, b in RATIOS:
        if a in by and b in by:
            per_round = [
                x / y for x, y in zip(by[a]["forward_ms_all"], by[b]["forward_ms_all"], strict=True)
            ]
            out[f"{a} / {b}"] = {
                "median": round(statistics.median(per_round), 2),
                "min": round(min(per_round), 2),
                "max": round(max(per_round), 2),
            }
    return out


#: (numerator label, denominator label) peak-memory ratios reported with ``--memory``
MEMORY_RATIOS = [
    ("comix-s", "comix-s (batched sampler, as before)"),
    ("comix-lite", "comix-lite (batched sampler, as before)"),
    ("comix-lite", "mfafnet-s"),
]


def memory_ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Peak forward memory of one network over another's (fresh process each)."""
    by = {r["label"]: r for r in rows if "forward_peak_mib" in r}
    return {
        f"{a} / {b}": round(by[a]["forward_peak_mib"] / by[b]["forward_peak_mib"], 3)
        for a, b in MEMORY_RATIOS
        if a in by and b in by
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="labels (prefix match) to run")
    ap.add_argument("--memory", action="store_true", help="also peak forward RSS per network")
    ap.add_argument("--memory-worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.memory_worker is not None:
        print(json.dumps(memory_worker(args.memory_worker, args.size, args.threads)))
        return 0
    torch.set_num_threads(args.threads)
    chosen = [
        (i, c)
        for i, c in enumerate(CASES)
        if not args.only or any(c[0].startswith(o) for o in args.only)
    ]
    rows, nets = [], []
    for _, (label, name, chans, k, cfg, est) in chosen:
        print(f"benchmark: {label} ...", file=sys.stderr, flush=True)
        model, xs = build(name, chans, k, cfg, args.size)
        r = static_figures(model, xs)
        row: dict[str, Any] = {"label": label, "arch": name, "in_channels": chans, "classes": k}
        row |= {"config": cfg, **r, "tile": args.size}
        if est is not None:
            row["brief_params_m"], row["brief_gflops"] = est
            row["params_ratio"] = round(r["params"] / 1e6 / est[0], 3)
            row["gflops_ratio"] = round(r["gflops"] / est[1], 3)
        rows.append(row)
        nets.append((model, xs))
    for row, times in zip(rows, interleaved_times(nets, args.repeats, args.warmup), strict=True):
        row |= spread(times)
    del nets
    if args.memory:
        for (i, _), row in zip(chosen, rows, strict=True):
            print(f"memory: {row['label']} ...", file=sys.stderr, flush=True)
            row |= measure_memory(i, args.size, args.threads)
    doc = {
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": list(os.getloadavg()),
        "flop_counter": "torch.utils.flop_counter.FlopCounterMode (grid_sample/interp not counted)",
        "timing": "no-grad batch-1 forwards, interleaved round-robin over the networks",
        "memory": "peak RSS of one forward above the RSS before it, fresh process per network",
        "time_ratios": ratios(rows),
        "memory_ratios": memory_ratios(rows),
        "results": rows,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

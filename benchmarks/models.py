"""Parameters, FLOPs and CPU forward time per 256² tile for every network and variant.

Prints one JSON document (and writes it with ``--out``). FLOPs are measured with
``torch.utils.flop_counter.FlopCounterMode`` (it counts conv / matmul / attention ops, not
grid_sample, interpolation, norms or activations) and compared with the analytic estimates of
ARCHITECTURE.md §5.1 (which count ~4-8 MACs per bilinear/trilinear sample). Timings are the
median of ``--repeats`` batch-1 forwards after warm-up, with ``torch.set_num_threads(2)``.

    python benchmarks/models.py --out benchmarks/results/models.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

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
    ("comix-lite", "comix-lite", {"hsi": 144, "lidar": 1}, 15, {}, (8.3, 7.3)),
    ("comix-b", "comix-b", {"hsi": 144, "lidar": 1}, 15, {}, (40.8, 38.2)),
]


def measure(
    name: str,
    chans: dict[str, int],
    k: int,
    cfg: dict[str, Any],
    size: int,
    repeats: int,
    warmup: int,
) -> dict[str, Any]:
    """Params, FLOPs and median CPU forward ms for one network at size×size, batch 1."""
    torch.manual_seed(0)
    model = create_model(name, chans, k, **cfg).eval()
    xs = [torch.randn(1, chans[m], size, size) for m in model.modalities]
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model(*xs)
        flops = counter.get_total_flops()
        for _ in range(warmup):
            model(*xs)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(*xs)
            times.append((time.perf_counter() - t0) * 1000.0)
    return {
        "params": count_parameters(model),
        "gflops": round(flops / 1e9, 3),
        "forward_ms": round(statistics.median(times), 1),
        "forward_ms_all": [round(t, 1) for t in times],
        "tile": size,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="labels (prefix match) to run")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for label, name, chans, k, cfg, est in CASES:
        if args.only and not any(label.startswith(o) for o in args.only):
            continue
        print(f"benchmark: {label} ...", file=sys.stderr, flush=True)
        r = measure(name, chans, k, cfg, args.size, args.repeats, args.warmup)
        row: dict[str, Any] = {"label": label, "arch": name, "in_channels": chans, "classes": k}
        row |= {"config": cfg, **r}
        if est is not None:
            row["brief_params_m"], row["brief_gflops"] = est
            row["params_ratio"] = round(r["params"] / 1e6 / est[0], 3)
            row["gflops_ratio"] = round(r["gflops"] / est[1], 3)
        rows.append(row)
    doc = {
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": list(os.getloadavg()),
        "flop_counter": "torch.utils.flop_counter.FlopCounterMode (grid_sample/interp not counted)",
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

"""ONNX Runtime on CPU: tiles per session run against peak RSS and CPU-seconds per tile.

Why ``OnnxPredictor`` runs one tile at a time on CPU (``CPU_RUN_TILES``): the session's arena
holds the activations of its largest run. Each setting runs in a fresh process (its own peak
RSS): a session as ``OnnxPredictor`` makes it (memory-pattern planner off, no spinning, 2
intra-op threads unless ``--threads``), one warm-up run, then ``--tiles`` tiles.

    python benchmarks/onnx_tiles_per_run.py --onnx model.onnx            # from `mfaf export`
    python benchmarks/onnx_tiles_per_run.py --onnx model.onnx --repeats 2

The last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _rss_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


def one(onnx: str, per_run: int, tiles: int, threads: int, tile: int) -> dict[str, float]:
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_mem_pattern = False
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(onnx, sess_options=opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.random((per_run, i.shape[1], tile, tile), dtype=np.float32)
             for i in s.get_inputs()}  # fmt: skip
    s.run(None, feeds)
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(max(1, tiles // per_run)):
        s.run(None, feeds)
    done = max(1, tiles // per_run) * per_run
    return {"tiles_per_run": per_run, "peak_rss_mb": round(_rss_mb("VmHWM"), 1),
            "cpu_s_per_tile": round((time.process_time() - c0) / done, 3),
            "wall_s_per_tile": round((time.perf_counter() - t0) / done, 3)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--sizes", default="4,2,1", help="tiles per run to compare")
    ap.add_argument("--tiles", type=int, default=8)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.onnx, args.one, args.tiles, args.threads, args.tile)))
        return
    rows = []
    for _ in range(args.repeats):
        for n in (int(v) for v in args.sizes.split(",")):
            cmd = [sys.executable, __file__, "--onnx", args.onnx, "--one", str(n),
                   "--tiles", str(args.tiles), "--threads", str(args.threads),
                   "--tile", str(args.tile)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps({"benchmark": "onnx_tiles_per_run", "onnx": os.path.basename(args.onnx),
                      "load_average": [round(x, 2) for x in os.getloadavg()],
                      "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()

"""ONNX Runtime on CPU: one-thread streams side by side against an intra-op pool per tile.

Why ``OnnxPredictor`` runs a batch's tiles on one single-threaded stream per core
(``mfaf_cli/engine/streams.py``, issue 19). Each way runs batches of ``--batch`` tiles of the
exported model through ``OnnxPredictor`` (one tile a session run, as on CPU), in a fresh
process (its own peak RSS), after one warm-up batch:

- ``streams``: ``OnnxPredictor(threads=N)``, what ``mfaf predict`` runs;
- ``pool``: one session with an N-thread intra-op pool that does not spin (mfaf before);
- ``pool-spin``: ONNX Runtime's defaults (every core, spinning), as a user would run it;
- ``one-thread``: one stream, one thread.

    python benchmarks/onnx_streams.py --onnx model.onnx --repeats 3   # from `mfaf export`

The last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WAYS = ("streams", "pool", "pool-spin", "one-thread")


def predictor(way: str, onnx: str, threads: int):  # type: ignore[no-untyped-def]
    from mfaf_cli.engine.onnx_predictor import OnnxPredictor, import_onnxruntime
    from mfaf_cli.engine.streams import Streams

    if way == "streams":
        return OnnxPredictor(onnx, device="cpu", threads=threads)
    if way == "pool-spin":
        return OnnxPredictor(onnx, device="cpu", threads=None)
    if way == "one-thread":
        return OnnxPredictor(onnx, device="cpu", threads=1)
    pred = OnnxPredictor(onnx, device="cpu", threads=1)
    pred.streams = Streams(1)  # a pool of ``threads`` inside every run instead
    pred.session = OnnxPredictor._open(
        import_onnxruntime(), onnx, ["CPUExecutionProvider"], threads
    )
    return pred


def one(way: str, onnx: str, batches: int, batch: int, threads: int) -> dict:
    import numpy as np
    from predict_bench import peak_rss_bytes  # this folder is on sys.path: run as a script

    pred = predictor(way, onnx, threads)
    h, w = pred.input_hw or (256, 256)
    rng = np.random.default_rng(0)
    feeds = {m.name: rng.random((batch, m.n_bands, h, w), dtype=np.float32)
             for m in pred.meta.modalities}  # fmt: skip
    pred(feeds)
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(batches):
        pred(feeds)
    done = batches * batch
    return {"way": way, "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
            "wall_ms_per_tile": round((time.perf_counter() - t0) / done * 1e3, 1),
            "cpu_ms_per_tile": round((time.process_time() - c0) / done * 1e3, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--ways", default=",".join(WAYS))
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repeats of every way")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.onnx, args.batches, args.batch, args.threads)))
        return
    rows = []
    for _ in range(args.repeats):
        for way in args.ways.split(","):
            cmd = [sys.executable, __file__, "--onnx", args.onnx, "--one", way,
                   "--batches", str(args.batches), "--batch", str(args.batch),
                   "--threads", str(args.threads)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    summary = {
        way: {
            k: [r[k] for r in rows if r["way"] == way] for k in ("wall_ms_per_tile", "peak_rss_mb")
        }
        for way in args.ways.split(",")
    }
    print(json.dumps({"benchmark": "onnx_streams", "onnx": os.path.basename(args.onnx),
                      "threads": args.threads, "batch": args.batch,
                      "load_average": [round(x, 2) for x in os.getloadavg()],
                      "by_way": summary, "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()

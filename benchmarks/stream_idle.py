"""Where the ONNX engine's streams wait during ``mfaf predict`` (issue 19).

Wall time alone cannot tell a slow network from streams that sit idle between tiles: this
script runs one predict in-process (the shipped MFAFNet-S exported to ONNX, the generated
optical + SAR scene of ``predict_bench.py``, 256² tiles, overlap 0.25, batch 4, gaussian) and
logs every ``session.run`` a stream makes. It prints one JSON object: the streams' busy share
of the wall time (``stream_util``: 1.0 = every stream ran a tile all the time), the CPU-time
cost of a tile, the gaps between one stream's runs (total, the largest and when they came)
and the run's ``cpu_seconds`` by stage. The figures are ratios within one run, so they hold on
a loaded machine too, where the wall time does not.

    python benchmarks/stream_idle.py --size 4096 --workdir DIR
    PYTHONPATH=/path/to/other/checkout python benchmarks/stream_idle.py --size 4096 --workdir DIR
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODEL = "mfafnet-s-ombria-water"


def logged_runs() -> list[tuple[int, float, float]]:
    """Patch the ONNX engine so that each run appends ``(thread, start, end)`` to the list."""
    from mfaf_cli.engine import onnx_predictor

    log: list[tuple[int, float, float]] = []
    run = onnx_predictor.OnnxPredictor._run

    def timed(self: Any, feeds: Any) -> Any:
        t0 = time.perf_counter()
        out = run(self, feeds)
        log.append((threading.get_ident(), t0, time.perf_counter()))
        return out

    onnx_predictor.OnnxPredictor._run = timed  # type: ignore[method-assign]
    return log


def gaps(log: list[tuple[int, float, float]], t0: float) -> list[tuple[float, float]]:
    """``(seconds idle, seconds into the run)`` between consecutive runs of each stream."""
    out = []
    for thread in {t for t, _, _ in log}:
        runs = sorted((a, b) for t, a, b in log if t == thread)
        out += [(a1 - b0, b0 - t0) for (_, b0), (a1, _) in itertools.pairwise(runs)]
    return sorted(out, reverse=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--workdir", default=None, help="keep generated data here (default: temp)")
    args = ap.parse_args(argv)
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="mfaf-idle-")
    folder = Path(args.workdir or tmp.name)  # type: ignore[union-attr]
    folder.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    from predict_bench import generate_pair

    opt, sar = generate_pair(folder, args.size)
    onnx = folder / "model.onnx"
    if not onnx.exists():
        subprocess.run([sys.executable, "-m", "mfaf_cli", "export", "--model", MODEL,
                        "-o", str(onnx)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    log = logged_runs()
    from mfaf_cli.pipeline.predict import predict

    t0 = time.perf_counter()
    res = predict({"optical": opt, "sar": sar}, folder / "idle_labels.tif", model=str(onnx),
                  tile=256, overlap=0.25, batch_size=4, blend="gaussian", overwrite=True,
                  bands={"optical": [1, 2, 3], "sar": [1]}, progress=False)  # fmt: skip
    wall = time.perf_counter() - t0
    streams = len({t for t, _, _ in log})
    busy = sum(b - a for _, a, b in log)
    idle = gaps(log, t0)
    print(json.dumps({
        "size": args.size, "wall_s": round(wall, 2), "runs": len(log), "streams": streams,
        "stream_util": round(busy / (streams * wall), 3),
        "ms_per_run": round(1000 * busy / max(len(log), 1), 1),
        "before_first_run_s": round(min(a for _, a, _ in log) - t0, 2),
        "gaps_s": round(sum(g for g, _ in idle), 2),
        "gaps_over_50ms": sum(1 for g, _ in idle if g > 0.05),
        "largest_gaps_s_at_s": [(round(g, 3), round(at, 1)) for g, at in idle[:8]],
        "cpu_seconds": res.cpu_seconds, "model_seconds": res.model_seconds,
    }))  # fmt: skip
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The scene-percentile pre-pass alone: whole-block sample vs the old decimated read (issue 19).

Opens the generated pairs of ``predict_bench.py`` (``optical_N.tif`` / ``sar_N.tif`` in
``--workdir``; run it once with ``--workdir`` to make them) inside the run's bounded GDAL
block cache, times ``AlignedScene.percentiles`` (``blocks``), the decimated read it replaced
(``decimated``) and, with ``full``, the exact full-scene figures (the whole scene in memory:
small sizes only). Prints one JSON object per line: seconds, CPU seconds, the sampling record
and each band's 2nd/98th percentiles.

    python benchmarks/stats_prepass.py --workdir DIR --sizes 4096,16384 --methods blocks,decimated
    python benchmarks/stats_prepass.py --workdir DIR --sizes 4096 --methods full
"""

from __future__ import annotations

import argparse
import json
import time


def run(folder: str, size: int, method: str) -> dict:
    from mfaf_cli.coreg import AlignedScene, grid_from_reference
    from mfaf_cli.normalize import band_percentiles
    from mfaf_cli.pipeline import core
    from mfaf_cli.pipeline.predict import _bounded_gdal_cache
    from mfaf_cli.tiling.windows import Window

    opt, sar = f"{folder}/optical_{size}.tif", f"{folder}/sar_{size}.tif"
    grid = grid_from_reference(opt)
    bands = {"optical": [1, 2, 3], "sar": [1]}
    with AlignedScene({"optical": opt, "sar": sar}, grid, bands=bands) as scene, \
            _bounded_gdal_cache(scene, 256, core.PANEL_WIDTH + 512):  # fmt: skip
        t0, c0 = time.perf_counter(), time.process_time()
        record: dict = {"method": method}
        if method == "blocks":
            pct = scene.percentiles()
            record = scene.stats_sampling
        else:
            if method == "decimated":
                arrays, valid, _ = scene.read_decimated()
            else:
                arrays, valid = scene.read(Window(0, 0, grid.height, grid.width))
            pct = {k: band_percentiles(a, valid, 2.0, 98.0) for k, a in arrays.items()}
        return {
            "size": size, "method": method, "seconds": round(time.perf_counter() - t0, 2),
            "cpu_seconds": round(time.process_time() - c0, 2), "sampling": record,
            "p2_p98": {k: [[float(x) for x in lo], [float(x) for x in hi]]
                       for k, (lo, hi) in pct.items()},
        }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--sizes", default="4096,16384")
    ap.add_argument("--methods", default="blocks,decimated", help="blocks, decimated, full")
    args = ap.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        for method in args.methods.split(","):
            print(json.dumps(run(args.workdir, size, method)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

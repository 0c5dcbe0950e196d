"""Benchmark ``mfaf vectorize`` on a synthetic label map with many irregular regions.

The label map is a jittered-grid Voronoi tessellation (one seed per CELL x CELL block, random
class per seed), so region count grows with area: 8192² with the default cell of 40 px has
~42 000 seeds and tens of thousands of regions after same-class neighbours merge. It is
written to a GeoTIFF (UTM, 10 m) and vectorised in a *child process*, so the peak RSS reported
is that of vectorisation alone (not of generating the map).

Usage:
    python benchmarks/vectorize_bench.py --size 8192 [--cell 40] [--classes 8] [--ext .gpkg]
        [--simplify 0] [--out results.json]

Prints one JSON line: size, polygons, seconds, peak_rss_mb (child), label_array_mb, ...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def voronoi_labels(size: int, cell: int, n_classes: int, seed: int) -> np.ndarray:
    """Jittered-grid Voronoi labels, built strip by strip (3 x 3 candidate seeds per pixel)."""
    rng = np.random.default_rng(seed)
    n = -(-size // cell)
    off = rng.uniform(0, cell, size=(n + 2, n + 2, 2)).astype(np.float32)
    cls = rng.integers(0, n_classes, size=(n + 2, n + 2), dtype=np.uint8)
    out = np.empty((size, size), np.uint8)
    cols = np.arange(size, dtype=np.float32)
    gx = np.arange(size) // cell
    for r0 in range(0, size, cell):
        r1 = min(r0 + cell, size)
        rows = np.arange(r0, r1, dtype=np.float32)[:, None]
        gy = r0 // cell
        best = np.full((r1 - r0, size), np.inf, np.float32)
        lab = np.zeros((r1 - r0, size), np.uint8)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                cy, cx = gy + dy + 1, gx + dx + 1
                sy = (gy + dy) * cell + off[cy, cx, 0]
                sx = (gx + dx) * cell + off[cy, cx, 1]
                d = (rows - sy[None, :]) ** 2 + (cols - sx)[None, :] ** 2
                closer = d < best
                best[closer] = d[closer]
                lab[closer] = np.broadcast_to(cls[cy, cx][None, :], lab.shape)[closer]
        out[r0:r1] = lab
    return out


def write_labels(path: Path, labels: np.ndarray, nodata_frac: float, seed: int) -> None:
    import rasterio
    from rasterio.transform import from_origin

    if nodata_frac > 0:  # a nodata band along the left edge, as a real scene's border
        labels[:, : int(labels.shape[1] * nodata_frac)] = 255
    profile = {
        "driver": "GTiff",
        "width": labels.shape[1],
        "height": labels.shape[0],
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32630",
        "transform": from_origin(500_000.0, 4_600_000.0, 10.0, 10.0),
        "nodata": 255,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(labels, 1)


def rss_mb(field: str = "VmHWM") -> float:
    """This process's own peak (VmHWM) or current (VmRSS) resident set in MB.

    Not ``ru_maxrss``: a child started by ``subprocess`` inherits its parent's high-water mark
    there, and the parent has just built the whole label array.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(labels: str, out: str, simplify: float) -> None:
    """Vectorise and print this process's figures (run in a fresh interpreter)."""
    import geopandas  # noqa: F401  (imported up front: the baseline then includes libraries)
    import pyogrio  # noqa: F401

    from mfaf_cli.vectorize import vectorize_raster

    base_rss = rss_mb("VmRSS")
    t0 = time.perf_counter()
    res = vectorize_raster(labels, out, simplify=simplify, overwrite=True)
    wall = time.perf_counter() - t0
    peak = rss_mb("VmHWM")
    print(
        json.dumps(
            {
                "polygons": res.n_polygons,
                "seconds": round(wall, 3),
                "peak_rss_mb": round(peak, 1),
                "rss_before_mb": round(base_rss, 1),
                "output_mb": round(os.path.getsize(out) / 2**20, 2),
                "per_class": res.per_class,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--cell", type=int, default=40)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nodata-frac", type=float, default=0.02)
    ap.add_argument("--simplify", type=float, default=0.0, help="map units (10 m pixels)")
    ap.add_argument("--ext", default=".gpkg", choices=[".gpkg", ".geojson", ".parquet", ".shp"])
    ap.add_argument("--out", type=Path, help="also write the JSON result here")
    ap.add_argument("--child", nargs=2, metavar=("LABELS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.simplify)
        return

    with tempfile.TemporaryDirectory(prefix="mfaf-vbench-") as tmp:
        lab_path = Path(tmp) / "labels.tif"
        t0 = time.perf_counter()
        labels = voronoi_labels(args.size, args.cell, args.classes, args.seed)
        write_labels(lab_path, labels, args.nodata_frac, args.seed)
        gen_s = time.perf_counter() - t0
        del labels
        out = Path(tmp) / f"polygons{args.ext}"
        cmd = [sys.executable, __file__, "--child", str(lab_path), str(out)]
        cmd += ["--simplify", str(args.simplify)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            sys.exit(proc.returncode)
        res = json.loads(proc.stdout.strip().splitlines()[-1])

    import geopandas
    import rasterio
    import shapely

    record = {
        "benchmark": "vectorize",
        "size": [args.size, args.size],
        "cell_px": args.cell,
        "classes": args.classes,
        "seed": args.seed,
        "nodata_frac": args.nodata_frac,
        "simplify": args.simplify,
        "format": args.ext,
        "label_array_mb": round(args.size * args.size / 2**20, 1),
        "generate_seconds": round(gen_s, 2),
        **res,
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "rasterio": rasterio.__version__,
            "gdal": rasterio.__gdal_version__,
            "shapely": shapely.__version__,
            "geos": shapely.geos_version_string,
            "geopandas": geopandas.__version__,
        },
    }
    line = json.dumps(record)
    print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""What the exclusion check costs a default predict: wall and CPU seconds with and without it.

The check (mfaf_cli/pipeline/exclusion.py) reads the raw inputs a second time on the output
grid. This runs the CLI, each run a fresh subprocess (CPU seconds = its user + system time),
on the examples/ Sentinel chip and on a generated 2048² optical + SAR pair
(benchmarks/predict_bench.py's generator), with the shipped default model (its record carries
a training range and the snow rule) and with the same weights whose record carries neither
(so no Excluder is built: everything else, engine and ONNX cache included, is the same).
Runs are interleaved (with, without, with, ...) after one warm-up each on the chip (the ONNX
export, per model and tile, which the generated scene then finds in the cache).

    python benchmarks/exclusion_cost.py [--repeats 3] [--size 2048] [--large-repeats N]

Prints one JSON object: per scene the runs, medians, the check's share of the run (difference
of medians), and one more run with the Excluder's own calls timed inside it.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from predict_bench import generate_pair  # noqa: E402

CHIP = ROOT / "examples" / "sen1floods11"
MODEL = "mfafnet-s-ombria-water"


def strip_checks(dst: Path) -> Path:
    """The shipped default's weights with a record that has no range and no rules."""
    from mfaf_cli.io.weights import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(ROOT / "mfaf_cli" / "weights" / f"{MODEL}.safetensors")
    mods = tuple(dataclasses.replace(s, range_low=None, range_high=None, range_open=(),
                                     range_floor=()) for s in meta.modalities)  # fmt: skip
    save_checkpoint(model, dataclasses.replace(meta, modalities=mods, rules=()), dst)
    return dst


def timed(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one CLI run in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mfaf_cli", "predict", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def inside(args: list[str]) -> dict[str, float]:
    """One CLI run in this process with the Excluder's calls timed (wall, and CPU of the thread
    that calls it): the check's own cost, free of the run-to-run noise of a shared machine."""
    from mfaf_cli.cli.main import main as cli_main
    from mfaf_cli.pipeline.exclusion import Excluder

    spent = {"wall_s": 0.0, "cpu_s": 0.0}
    call = Excluder.__call__

    def timed_call(self: Excluder, row0: int, col0: int, valid: np.ndarray) -> np.ndarray:
        w, c = time.perf_counter(), time.thread_time()
        try:
            return call(self, row0, col0, valid)
        finally:
            spent["wall_s"] += time.perf_counter() - w
            spent["cpu_s"] += time.thread_time() - c

    Excluder.__call__ = timed_call  # type: ignore[method-assign]
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    try:
        cli_main(["predict", *args])
    except SystemExit as e:
        if e.code:
            raise
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"run_wall_s": round(time.perf_counter() - t0, 3), "run_cpu_s": round(cpu, 3),
            "excluder_wall_s": round(spent["wall_s"], 3),
            "excluder_cpu_s": round(spent["cpu_s"], 3)}  # fmt: skip


def profiled(args: list[str], env: dict[str, str]) -> dict[str, float]:
    """:func:`inside` in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--inside", json.dumps(args)], check=True,
                         env=env, capture_output=True, text=True).stdout  # fmt: skip
    rec: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    rec["excluder_share_of_wall"] = round(rec["excluder_wall_s"] / rec["run_wall_s"], 4)
    rec["excluder_share_of_cpu"] = round(rec["excluder_cpu_s"] / rec["run_cpu_s"], 4)
    return rec


def compare(
    base: list[str], stripped: Path, repeats: int, env: dict[str, str], warm_up: bool = True
) -> dict[str, Any]:
    configs = {"with_check": ["--model", MODEL], "without_check": ["--model", str(stripped)]}
    runs: dict[str, dict[str, list[float]]] = {k: {"wall_s": [], "cpu_s": []} for k in configs}
    for extra in configs.values() if warm_up else ():
        timed(base + extra, env)  # warm-up: ONNX export (per model and tile) into the cache
    for _ in range(repeats):
        for name, extra in configs.items():
            wall, cpu = timed(base + extra, env)
            runs[name]["wall_s"].append(round(wall, 3))
            runs[name]["cpu_s"].append(round(cpu, 3))
    excluder_timed = profiled(base + configs["with_check"], env)
    med = {k: {m: round(float(np.median(v)), 3) for m, v in r.items()} for k, r in runs.items()}
    w, wo = med["with_check"], med["without_check"]
    return {
        "runs": runs, "median": med,
        "check_share_of_wall": round((w["wall_s"] - wo["wall_s"]) / w["wall_s"], 4),
        "check_share_of_cpu": round((w["cpu_s"] - wo["cpu_s"]) / w["cpu_s"], 4),
        "excluder_timed_inside_one_run": excluder_timed,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--large-repeats", type=int, default=None, help="for the generated scene")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--inside", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inside is not None:
        print(json.dumps(inside(json.loads(a.inside))))
        return
    with tempfile.TemporaryDirectory(prefix="mfaf-exclcost-") as tmp:
        t = Path(tmp)
        path = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
        env = dict(os.environ, MFAF_CACHE_DIR=str(t / "cache"), PYTHONPATH=path)
        stripped = strip_checks(t / "no-checks.safetensors")
        common = ["-q", "--overwrite", "-o", str(t / "map.tif")]
        common += ["--threads", str(a.threads)] if a.threads else []
        chip = ["--optical", str(CHIP / "S2.tif"), "--sar", str(CHIP / "S1.tif"),
                "--optical-bands", "13,8,4", "--sar-bands", "1", *common]  # fmt: skip
        opt, sar = generate_pair(t, a.size)
        scene = ["--optical", str(opt), "--sar", str(sar), "--optical-bands", "3,2,1",
                 "--sar-bands", "1", *common]  # fmt: skip
        out = {"model": MODEL, "repeats": a.repeats, "threads": a.threads,
               "chip": compare(chip, stripped, a.repeats, env),
               f"generated_{a.size}": compare(scene, stripped, a.large_repeats or a.repeats,
                                              env, warm_up=False)}  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()

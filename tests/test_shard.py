"""Scale-out: a batch split between processes (--shard, torchrun, Slurm arrays) writes exactly
the files and pixels of a single-process batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from scenes import scene_pair

from mfaf_cli.errors import UsageError
from mfaf_cli.pipeline import batch as B
from mfaf_cli.pipeline.shard import Shard, parse_shard, resolve_shard, shard_from_env

ROOT = Path(__file__).resolve().parents[1]


def test_parse_and_take() -> None:
    assert parse_shard("1/3") == Shard(1, 3)
    assert Shard(1, 3).take(list(range(8))) == [1, 4, 7]
    shares = [Shard(i, 3).take(list(range(8))) for i in range(3)]
    assert sorted(x for s in shares for x in s) == list(range(8))
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(UsageError, match="--shard"):
            parse_shard(bad)


def test_launcher_environments() -> None:
    assert shard_from_env({}) is None
    assert shard_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None
    tr = shard_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                         "SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "9"})  # fmt: skip
    assert tr == Shard(1, 4, "torchrun", 1)  # torchrun wins inside a Slurm allocation
    sl = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "10"}
    assert shard_from_env(sl) == Shard(2, 3, "slurm-array")
    with pytest.raises(UsageError, match="SLURM_ARRAY_TASK_ID=14"):
        shard_from_env({**sl, "SLURM_ARRAY_TASK_ID": "14"})
    with pytest.raises(UsageError, match="RANK=4"):
        shard_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    assert resolve_shard("0/2", {"RANK": "1", "WORLD_SIZE": "2"}) == Shard(0, 2)  # flag wins
    assert resolve_shard(None, {}) == Shard(0, 1, "single")


def _batch(folder: Path, n: int = 5) -> Path:
    lines = ["scene,optical,sar,output"]
    for i in range(n):
        opt, sar = scene_pair(folder / "in", f"s{i}", size=40, seed=i)
        lines.append(f"s{i},{opt},{sar},out/s{i}.tif")
    (folder / "out").mkdir(parents=True)
    (folder / "scenes.csv").write_text("\n".join(lines) + "\n")
    return folder / "scenes.csv"


def _tifs(folder: Path) -> dict[str, np.ndarray | str]:
    """Pixels of every output raster, text of every class-name sidecar (.aux.xml)."""
    out: dict[str, np.ndarray | str] = {}
    for p in sorted((folder / "out").iterdir()):
        if p.name.endswith(".aux.xml"):
            out[p.name] = p.read_text()
            continue
        with rasterio.open(p) as ds:
            out[p.name] = ds.read()
    return out


def test_two_sharded_processes_equal_one(ckpt: Path, tmp_path: Path) -> None:
    single = _batch(tmp_path / "single")
    recs = B.predict_batch(single, str(ckpt), tile=32, progress=False, shard=Shard(0, 1))
    assert [r["status"] for r in recs] == ["ok"] * 5
    split = _batch(tmp_path / "split")
    env = dict(os.environ, PYTHONPATH=str(ROOT), WORLD_SIZE="2")
    cmd = [sys.executable, "-m", "mfaf_cli", "predict", "--batch", str(split), "--model",
           str(ckpt), "--tile", "32", "--threads", "1", "-q", "--json"]  # fmt: skip
    procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r)), stdout=subprocess.PIPE, text=True)
             for r in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert [line.count('"status": "ok"') for line in outs] == [3, 2]  # scenes 0,2,4 and 1,3
    a, b = _tifs(tmp_path / "single"), _tifs(tmp_path / "split")
    assert list(a) == list(b) == sorted(f"s{i}.tif{x}" for i in range(5) for x in ("", ".aux.xml"))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_shard_needs_batch(runner, tmp_path: Path) -> None:
    code, _, err = runner("predict", "--optical", tmp_path / "a.tif", "-o", tmp_path / "m.tif",
                          "--shard", "0/2")  # fmt: skip
    assert code == 2 and "--batch" in err


def test_only_torchrun_rank_zero_draws_bars() -> None:
    """torchrun's ranks share a terminal: bars from every rank would interleave."""
    assert Shard(0, 4, "torchrun").shows_progress
    assert not Shard(3, 4, "torchrun").shows_progress
    assert Shard(3, 4, "slurm-array").shows_progress and Shard(1, 2).shows_progress

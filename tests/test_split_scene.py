"""One scene split across processes (--split-scene): row strips with their blending halo, written
as part files and assembled into the outputs of a single-process run, pixel for pixel."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import write_geotiff
from rasterio.transform import Affine

from mfaf_cli.errors import UsageError
from mfaf_cli.pipeline.predict import predict
from mfaf_cli.pipeline.split import predict_split, strip_rows
from mfaf_cli.tiling.plan import plan_windows

ROOT = Path(__file__).resolve().parents[1]
H, W = 150, 200  # tile 64, stride 48: window rows at 0, 48, 86
OPTS = {"tile": 64, "engine": "torch", "device": "cpu", "threads": 1}
FLAGS = ["--tile", "64", "--engine", "torch", "--device", "cpu", "--threads", "1"]


def _scene(folder: Path) -> dict[str, Path]:
    """Optical on a 10 m grid; SAR on its own 20 m grid, offset, so it is warped."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    opt = rng.integers(0, 3000, (4, H, W)).astype("int16")
    opt[-1] += (900 * np.sin(np.arange(W) / 4.0)).astype("int16")[None, :]
    sar = rng.normal(-12.0, 3.0, (1, H // 2 + 2, W // 2 + 2)).astype("float32")
    sar_t = Affine(20.0, 0.0, 500_000.0 - 15.0, 0.0, -20.0, 4_500_000.0 + 15.0)
    return {
        "optical": write_geotiff(folder / "s2.tif", opt),
        "sar": write_geotiff(folder / "s1.tif", sar, transform=sar_t),
    }


def _outputs(folder: Path, name: str) -> dict[str, Path]:
    return {k: folder / f"{name}{s}.tif" for k, s in (("label", ""), ("probabilities", ".p"),
                                                      ("confidence", ".c"))}  # fmt: skip


def _read(paths: dict[str, Path]) -> dict[str, object]:
    """Pixels, profile (nodata as text: NaN), tags, colour table and class sidecar of each."""
    out: dict[str, object] = {}
    for key, p in paths.items():
        with rasterio.open(p) as ds:
            prof = {k: str(v) for k, v in ds.profile.items()}
            cmap = ds.colormap(1) if key == "label" else None
            tags = ds.tags()
            if "MFAF_PROVENANCE" in tags:  # how it was made, less when: equal to a single run's
                record = json.loads(tags["MFAF_PROVENANCE"])
                record.pop("time")
                tags["MFAF_PROVENANCE"] = json.dumps(record, sort_keys=True)
            out[key] = (ds.read(), prof, tags, ds.tags(1), ds.descriptions, cmap)
    out["aux"] = Path(str(paths["label"]) + ".aux.xml").read_text()
    return out


def _assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key == "aux":
            assert a[key] == b[key]
            continue
        (pa, *meta_a), (pb, *meta_b) = a[key], b[key]  # type: ignore[misc]
        np.testing.assert_array_equal(pa, pb)  # NaN nodata compares equal here
        assert meta_a == meta_b, key


@pytest.fixture(scope="module")
def centred(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A narrow random U-Net whose head bias is centred on this scene, so both classes occur
    and labels flip wherever blending or context differ (an all-one-class map hides that)."""
    from mfaf_cli import registry
    from mfaf_cli.io.weights import save_checkpoint

    folder = tmp_path_factory.mktemp("centred")
    meta = replace(registry.default_meta("unet", None, 2, base_width=4), trained=True,
                   tile_size=64)  # fmt: skip
    torch.manual_seed(3)
    net = registry.create_model("unet", meta.in_channels, 2, **meta.config)
    first = save_checkpoint(net, meta, folder / "raw.safetensors")
    probs = folder / "p.tif"
    predict(_scene(folder), None, str(first), probabilities=probs, probabilities_dtype="float32",
            progress=False, **OPTS)  # fmt: skip
    with rasterio.open(probs) as ds:
        p = ds.read()
    with torch.no_grad():
        net.outc.bias[1] -= float(np.median(np.log(p[1]) - np.log(p[0])))
    return save_checkpoint(net, meta, folder / "centred.safetensors")


@pytest.fixture(scope="module")
def single(centred: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """The scene's inputs and the outputs of one process over the whole scene."""
    folder = tmp_path_factory.mktemp("split")
    inputs = _scene(folder / "in")
    outs = _outputs(folder, "single")
    predict(inputs, outs["label"], str(centred), probabilities=outs["probabilities"],
            confidence=outs["confidence"], probabilities_dtype="float32", progress=False,
            **OPTS)  # fmt: skip
    read = _read(outs)
    labels = read["label"][0]  # type: ignore[index]
    assert (labels != 255).all() and 0.2 < (labels == 1).mean() < 0.8  # both classes
    return inputs, read


def test_strips_cut_at_window_rows() -> None:
    plan = plan_windows(H, W, 64, 0.25)
    assert strip_rows(plan, 1) == [(0, H)]
    assert strip_rows(plan, 2) == [(0, 48), (48, H)]
    assert strip_rows(plan, 3) == [(0, 48), (48, 86), (86, H)]
    with pytest.raises(UsageError, match="at most 3 processes"):
        strip_rows(plan, 4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_gloo_ranks_equal_one_process(centred: Path, single, tmp_path: Path) -> None:
    inputs, ref = single
    outs = _outputs(tmp_path, "split")
    cmd = [sys.executable, "-m", "mfaf_cli", "predict", "--optical", str(inputs["optical"]),
           "--sar", str(inputs["sar"]), "--model", str(centred), "-o", str(outs["label"]),
           "--probabilities", str(outs["probabilities"]), "--confidence",
           str(outs["confidence"]), "--probabilities-dtype", "float32", *FLAGS,
           "--split-scene", "--json", "-q"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()))  # fmt: skip
    procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]  # fmt: skip
    done = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in done]
    recs = [json.loads(o) for o, _ in done]
    assert [r["assembled"] for r in recs] == [True, False]  # rank 0 assembles
    assert [r["rows"] for r in recs] == [[0, 48], [48, H]]
    assert recs[1]["windows"] == 12  # its window rows and the halo row above them
    _assert_same(_read(outs), ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [p.name for p in outs.values()] + [outs["label"].name + ".aux.xml"]
    )  # parts, their sidecars and the lock are gone


def test_shard_processes_last_one_assembles(centred: Path, single, tmp_path: Path, runner) -> None:
    """Without a process group (--shard, Slurm): parts of another run are refused, the last
    process to finish assembles, and --assemble redoes it after a killed assembler."""
    inputs, ref = single
    outs = _outputs(tmp_path, "split")
    kw = dict(probabilities=outs["probabilities"], confidence=outs["confidence"],
              probabilities_dtype="float32", progress=False, **OPTS)  # fmt: skip
    first = predict_split(inputs, outs["label"], str(centred), shard="0/2", **kw)
    assert not first.assembled and Path(first.part_files["label"]).exists()
    other = predict_split(inputs, outs["label"], str(centred), shard="1/2",
                          **{**kw, "overlap": 0.5})  # fmt: skip
    assert not other.assembled  # to this run, part 0 is another run's (overlap 0.25)
    args = ["predict", "--optical", inputs["optical"], "--sar", inputs["sar"], "--model", centred,
            "-o", outs["label"], "--probabilities", outs["probabilities"], "--confidence",
            outs["confidence"], "--probabilities-dtype", "float32", *FLAGS, "--assemble",
            "--shard", "0/2", "-q"]  # fmt: skip
    code, _, err = runner(*args)
    assert code == 1 and "part-0001-of-0002.tif is not from this run" in err
    assert len(err.strip().splitlines()) == 1 and not outs["label"].exists()

    lock = tmp_path / f".{outs['label'].name}.mfaf-assemble.lock"
    lock.write_text("12345\n")  # an assembler that was killed
    again = predict_split(inputs, outs["label"], str(centred), shard="1/2", **kw)
    assert not again.assembled and not outs["label"].exists()
    code, _, err = runner(*args[:-3], "--json")  # N found from the part files
    assert code == 0, err
    _assert_same(_read(outs), ref)
    assert not lock.exists() and not list(tmp_path.glob("*.part-*"))


@pytest.mark.parametrize(
    "grid",
    [
        {"bounds": (500_130.0, 4_498_610.0, 501_870.0, 4_499_880.0)},  # a crop, on the lattice
        {"resolution": 12.5},  # a resampled grid: it anchors its own windows
    ],
    ids=["crop", "resampled"],
)
def test_three_strips_on_other_grids(centred: Path, single, tmp_path: Path, grid: dict) -> None:
    inputs, _ = single
    kw = {**OPTS, **grid, "probabilities_dtype": "float32", "progress": False}
    one, three = _outputs(tmp_path, "one"), _outputs(tmp_path, "three")
    predict(inputs, one["label"], str(centred), probabilities=one["probabilities"],
            confidence=one["confidence"], **kw)  # fmt: skip
    recs = [predict_split(inputs, three["label"], str(centred), shard=f"{i}/3",
                          probabilities=three["probabilities"], confidence=three["confidence"],
                          **kw) for i in (2, 0, 1)]  # fmt: skip
    assert [r.assembled for r in recs] == [False, False, True]
    assert recs[1].rows[0] == 0 and recs[0].rows[1] == _read(one)["label"][0].shape[1]  # type: ignore[index]
    _assert_same(_read(three), _read(one))


def test_split_scene_usage_errors(runner, tmp_path: Path) -> None:
    base = ["predict", "--optical", tmp_path / "a.tif", "-o", tmp_path / "m.tif", "--split-scene"]
    (tmp_path / "s.csv").write_text("scene,optical,output\n")
    code, _, err = runner("predict", "--batch", tmp_path / "s.csv", "--split-scene")
    assert code == 2 and "--batch cannot be used with --split-scene" in err
    (tmp_path / "m.gpkg").write_text("")
    code, _, err = runner(*base, "--vector", tmp_path / "m.gpkg")
    assert code == 2 and "exists" in err  # checked before any work, as predict does
    code, _, err = runner("predict", "--optical", tmp_path / "a.tif", "-o", tmp_path / "m.tif",
                          "--shard", "0/2")  # fmt: skip
    assert code == 2 and "--split-scene" in err


def test_assembler_polygonises_and_previews_the_assembled_map(
    centred: Path, single, tmp_path: Path, runner
) -> None:
    """--vector / --preview with --split-scene: the process that assembles writes them, from
    the assembled map, equal to what one process writes; the others write neither."""
    import geopandas as gpd

    inputs, _ = single
    one, split = tmp_path / "one", tmp_path / "split"
    one.mkdir()
    split.mkdir()
    args = ["predict", "--optical", inputs["optical"], "--sar", inputs["sar"], "--model", centred,
            *FLAGS, "-q"]  # fmt: skip
    code, _, err = runner(*args, "-o", one / "m.tif", "--vector", one / "m.gpkg")
    assert code == 0, err
    outs = ["-o", split / "m.tif", "--vector", split / "m.gpkg", "--preview", split / "m.png"]
    code, _, err = runner(*args, *outs, "--split-scene", "--shard", "1/2", "--json")
    assert code == 0, err
    assert not (split / "m.gpkg").exists() and not (split / "m.png").exists()
    code, out, err = runner(*args, *outs, "--split-scene", "--shard", "0/2", "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert rec["assembled"] and set(rec["outputs"]) == {"label", "vector", "preview"}
    assert rec["model"] == Path(centred).stem
    assert (split / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    a, b = gpd.read_file(one / "m.gpkg"), gpd.read_file(split / "m.gpkg")
    assert len(a) == len(b) > 1
    assert a.geometry.union_all().symmetric_difference(b.geometry.union_all()).area == 0

"""mfaf as a batch tool: ``predict --batch`` (one model load), ``--skip-existing``, ``--vector``
atomic with the raster, and parallel ``mfaf predict`` processes writing into one folder."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from scenes import scene_pair

from mfaf_cli.errors import MfafError, UsageError
from mfaf_cli.pipeline import batch as B
from mfaf_cli.pipeline.predict import predict


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def read_labels(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 32630 and ds.nodata == 255
        return ds.read(1)


# ---- CSV parsing --------------------------------------------------------------------------------
def test_read_scenes_resolves_paths_bands_and_names(tmp_path: Path) -> None:
    (tmp_path / "csvdir").mkdir()
    csv = tmp_path / "csvdir" / "scenes.csv"
    csv.write_text(
        "# scene list\n"
        "scene, optical, sar, optical_bands, output, vector\n"
        "\n"
        'a, in/a2.tif, /data/a1.tif, "4,3,2,8", out/a.tif, out/a.gpkg\n'
        "b, in/b2.tif, in/b1.tif, , out/b.tif,\n"
    )
    a, b = B.read_scenes(csv, default_bands={"optical": [1, 2, 3, 4], "sar": ["VV"]})
    base = tmp_path / "csvdir"
    assert (a.line, a.name) == (4, "a") and b.line == 5
    assert a.inputs == {"optical": str(base / "in/a2.tif"), "sar": "/data/a1.tif"}
    assert a.bands == {"optical": [4, 3, 2, 8], "sar": ["VV"]}  # the cell wins over the default
    assert b.bands == {"optical": [1, 2, 3, 4], "sar": ["VV"]}
    assert a.outputs == {"label": str(base / "out/a.tif"), "vector": str(base / "out/a.gpkg")}
    assert b.vector is None and b.outputs == {"label": str(base / "out/b.tif")}
    assert B.parse_bands("VV; VH", "x") == ["VV", "VH"]
    assert B.resolve_path("/vsis3/bucket/a.tif", base) == "/vsis3/bucket/a.tif"


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("optical,sar,output\n", "no scenes"),
        ("# only a comment\n\n", "is empty"),
        ("optical,output,output\nx,y,z\n", "'output' appears twice"),
        ("output,probabilities\na.tif,p.tif\n", "no input column"),
        ("optical,sar,sar_bands,output\na,,1,o.tif\n", "sar_bands is given but the sar cell"),
        ("optical,output\na,\n", "empty 'output' cell"),
        ("optical,output,probabilities\na,o.tif,o2.tif\nb,o2.tif,\n", "also written by line 2"),
        ("optical,output\na,o.tif\nb,sub/../o.tif\n", "also written by line 2"),
    ],
)
def test_malformed_csv_is_a_usage_error(tmp_path: Path, text: str, phrase: str) -> None:
    csv = tmp_path / "s.csv"
    csv.write_text(text)
    with pytest.raises(UsageError, match=phrase.replace("(", r"\(")) as exc:
        B.read_scenes(csv)
    assert exc.value.exit_code == 2


# ---- the batch run -----------------------------------------------------------------------------
def _batch_folder(tmp_path: Path) -> Path:
    """Three scenes (the second with a missing SAR file), relative paths, one vector column."""
    root = tmp_path / "job"
    for i, name in enumerate("abc"):
        scene_pair(root / "in", name, size=40 + 8 * i, seed=i)
    (root / "in" / "b_s1.tif").unlink()  # maps/ does not exist: the batch creates it
    (root / "scenes.csv").write_text(
        "scene,optical,sar,output,vector,confidence\n"
        "a,in/a_s2.tif,in/a_s1.tif,maps/a.tif,maps/a.gpkg,\n"
        "b,in/b_s2.tif,in/b_s1.tif,maps/b.tif,,\n"
        "c,in/c_s2.tif,in/c_s1.tif,maps/c.tif,,maps/c_conf.tif\n"
    )
    return root


def test_cli_batch_reports_each_scene_and_fails_with_1(ckpt: Path, tmp_path: Path, runner,
                                                       monkeypatch) -> None:  # fmt: skip
    import mfaf_cli.engine as engine

    loads: list[Any] = []
    real = engine.create_predictor

    def counting(*a: Any, **kw: Any) -> Any:
        loads.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(engine, "create_predictor", counting)
    root = _batch_folder(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the CSV, not the cwd
    code, out, err = runner("predict", "--batch", root / "scenes.csv", "--model", ckpt,
                            "--tile", "32", "--json", "-q")  # fmt: skip
    assert code == 1, err
    assert len(loads) == 1  # one model load for all scenes
    recs = [json.loads(line) for line in out.strip().splitlines()]
    assert [(r["scene"], r["line"], r["status"]) for r in recs] == [
        ("a", 2, "ok"), ("b", 3, "error"), ("c", 4, "ok"),
    ]  # fmt: skip
    assert "b_s1.tif does not exist" in recs[1]["error"] and "\n" not in recs[1]["error"]
    maps = root / "maps"
    assert recs[0]["outputs"] == {"label": str(maps / "a.tif"), "vector": str(maps / "a.gpkg")}
    assert recs[2]["outputs"]["confidence"] == str(maps / "c_conf.tif")
    assert recs[2]["grid"]["width"] == 56 and recs[2]["model"] == "unet"
    assert sorted(p.name for p in maps.iterdir()) == [
        "a.gpkg",
        "a.tif",
        "a.tif.aux.xml",
        "c.tif",
        "c.tif.aux.xml",
        "c_conf.tif",
    ]
    assert hidden(root) == []
    assert read_labels(maps / "c.tif").shape == (56, 56)

    # again with --skip-existing: done scenes are skipped, the broken one still fails
    before = (maps / "a.tif").stat().st_mtime_ns
    code, out, err = runner("predict", "--batch", root / "scenes.csv", "--model", ckpt,
                            "--tile", "32", "--skip-existing")  # fmt: skip
    assert code == 1
    lines = out.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["status"] == "error"  # errors always on stdout
    assert "skipped (outputs exist)" in err and "1 failed of 3 scenes" in err
    assert (maps / "a.tif").stat().st_mtime_ns == before

    # once the missing file is there, the batch completes and exits 0
    scene_pair(root / "in", "b", size=48, seed=1)
    code, out, err = runner("predict", "--batch", root / "scenes.csv", "--model", ckpt,
                            "--tile", "32", "--skip-existing", "--json", "-q")  # fmt: skip
    assert code == 0, err
    assert [json.loads(x)["status"] for x in out.strip().splitlines()] == [
        "skipped",
        "ok",
        "skipped",
    ]
    assert read_labels(maps / "b.tif").shape == (48, 48)
    assert hidden(root) == []


def test_existing_outputs_fail_per_scene_without_overwrite(ckpt: Path, tmp_path: Path) -> None:
    root = tmp_path / "j"
    opt, sar = scene_pair(root, "a")
    (root / "a.tif").write_bytes(b"old")
    csv = root / "s.csv"
    csv.write_text(f"optical,sar,output\n{opt},{sar},a.tif\n{opt},{sar},b.tif\n")
    recs = B.predict_batch(csv, ckpt, tile=32, progress=False)
    assert [r["status"] for r in recs] == ["error", "ok"]
    assert "exists; pass --overwrite" in recs[0]["error"] and recs[0]["scene"] == "a.tif"
    assert (root / "a.tif").read_bytes() == b"old"
    recs = B.predict_batch(csv, ckpt, tile=32, progress=False, overwrite=True)
    assert [r["status"] for r in recs] == ["ok", "ok"]
    np.testing.assert_array_equal(read_labels(root / "a.tif"), read_labels(root / "b.tif"))


def test_band_columns_and_model_problems_before_any_scene(ckpt: Path, tmp_path: Path) -> None:
    root = tmp_path / "j"
    opt5, sar = scene_pair(root, "five", bands=5)
    csv = root / "s.csv"
    csv.write_text(f'optical,sar,optical_bands,output\n{opt5},{sar},"2,3,4,5",m.tif\n')
    seen: list[dict[str, Any]] = []
    recs = B.predict_batch(csv, ckpt, tile=32, progress=False, on_result=seen.append)
    assert recs == seen and recs[0]["status"] == "ok"
    # the model is checked against the CSV's modalities before any scene runs
    csv.write_text(f"optical,output\n{opt5},x.tif\n")
    with pytest.raises(MfafError, match="takes optical \\+ sar"):
        B.predict_batch(csv, ckpt, tile=32, progress=False)
    csv.write_text(f"optical,sar,output\n{opt5},{sar},x.tif\n")
    with pytest.raises(UsageError, match="not a multiple of 16"):
        B.predict_batch(csv, ckpt, tile=40, progress=False)
    assert not (root / "x.tif").exists()


# ---- --vector ------------------------------------------------------------------------------------
def test_predict_vector_end_to_end(ckpt: Path, tmp_path: Path, runner) -> None:
    opt, sar = scene_pair(tmp_path, "s", size=48)
    out, vec = tmp_path / "m.tif", tmp_path / "m.gpkg"
    args = ["--optical", opt, "--sar", sar, "--model", ckpt, "--tile", "32", "--json", "-q"]
    code, stdout, err = runner("predict", *args, "-o", out, "--vector", vec)
    assert code == 0, err
    assert json.loads(stdout)["outputs"]["vector"] == str(vec)
    labels = read_labels(out)
    from mfaf_cli.io.weights import file_sha256

    with rasterio.open(out) as ds:  # the map names the weights that made it
        assert ds.tags()["WEIGHTS"] == ckpt.stem and ds.tags()["MODEL_WEIGHTS"] == "TRAINED"
        assert ds.tags()["WEIGHTS_SHA256"] == file_sha256(ckpt) and "TRAINED" not in ds.tags()
    gdf = gpd.read_file(vec)
    assert gdf.crs.to_epsg() == 32630
    assert set(gdf["class_name"]) <= {"not-water", "water"}
    # every labelled pixel is in exactly one polygon of its class: areas add up (10 m pixels)
    for cid in np.unique(labels):
        got = gdf.loc[gdf["class_id"] == cid, "area_m2"].sum()
        assert got == pytest.approx((labels == cid).sum() * 100.0)
    assert hidden(tmp_path) == []


def test_vector_failure_keeps_the_rasters(ckpt: Path, tmp_path: Path, monkeypatch, runner) -> None:
    """The polygons are made from the committed map; if that fails, the rasters stay and one
    clean line says how to redo only the polygons (exit 1)."""
    import mfaf_cli.vectorize.polygons as poly
    from mfaf_cli.errors import VectorOutputError

    opt, sar = scene_pair(tmp_path / "in", "s")
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def broken(*a: Any, **kw: Any) -> Any:
        raise ImportError("Missing optional dependency 'x'.\n  'Use pip'")

    monkeypatch.setattr(poly, "vectorize_raster", broken)
    with pytest.raises(VectorOutputError) as info:
        predict({"optical": opt, "sar": sar}, out_dir / "m.tif", ckpt, tile=32, progress=False,
                vector=out_dir / "m.gpkg", probabilities=out_dir / "p.tif")  # fmt: skip
    assert sorted(p.name for p in out_dir.iterdir()) == ["m.tif", "m.tif.aux.xml", "p.tif"]
    msg = str(info.value)
    assert "\n" not in msg and "rasters were kept" in msg and "Use pip" not in msg
    assert f"mfaf vectorize {out_dir / 'm.tif'} -o {out_dir / 'm.gpkg'}" in msg
    (out_dir / "p.tif").unlink()
    code, out, err = runner("predict", "--optical", opt, "--sar", sar, "--model", ckpt, "--tile",
                            "32", "-o", out_dir / "m.tif", "--vector", out_dir / "m.gpkg",
                            "--overwrite", "-q")  # fmt: skip
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("Error: --vector") and (out_dir / "m.tif").exists()


def test_parquet_without_pyarrow_fails_before_inference(
    ckpt: Path, tmp_path: Path, monkeypatch
) -> None:
    import builtins

    P = importlib.import_module("mfaf_cli.pipeline.predict")

    real_import = builtins.__import__

    def no_pyarrow(name: str, *a: Any, **kw: Any) -> Any:
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    monkeypatch.setattr(P, "load_predictor", lambda *a, **k: pytest.fail("model was loaded"))
    opt, sar = scene_pair(tmp_path, "s")
    with pytest.raises(UsageError, match=r"needs pyarrow.*mfaf\[parquet\]"):
        predict({"optical": opt, "sar": sar}, tmp_path / "m.tif", ckpt, progress=False,
                vector=tmp_path / "m.parquet")  # fmt: skip
    assert not (tmp_path / "m.tif").exists()


@pytest.mark.parametrize(
    ("co", "phrase"),
    [
        ({"COMPRESS": "FOO"}, "'FOO' is an unexpected value for COMPRESS"),
        ({"FOOBAR": "1"}, "does not support creation option FOOBAR"),
        ({"BLOCKXSIZE": "7"}, "multiples of 16"),
    ],
)
def test_bad_creation_options_fail_before_inference(
    ckpt: Path, tmp_path: Path, monkeypatch, co: dict[str, str], phrase: str
) -> None:
    P = importlib.import_module("mfaf_cli.pipeline.predict")

    monkeypatch.setattr(P, "load_predictor", lambda *a, **k: pytest.fail("model was loaded"))
    opt, sar = scene_pair(tmp_path, "s")
    with pytest.raises(UsageError, match=phrase):
        predict({"optical": opt, "sar": sar}, tmp_path / "m.tif", ckpt, progress=False,
                creation_options=co)  # fmt: skip
    assert list(tmp_path.glob("m*")) == []


def test_single_scene_skip_existing(ckpt: Path, tmp_path: Path, runner) -> None:
    opt, sar = scene_pair(tmp_path, "s")
    out = tmp_path / "m.tif"
    out.write_bytes(b"done before")
    code, stdout, err = runner("predict", "--optical", opt, "--sar", sar, "--model", ckpt,
                               "-o", out, "--skip-existing", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout) == {"status": "skipped", "outputs": {"output": str(out)}}
    assert out.read_bytes() == b"done before"


# ---- xargs -P: parallel processes into one folder ---------------------------------------------
def test_parallel_processes_share_an_output_folder(ckpt: Path, tmp_path: Path) -> None:
    inputs = [scene_pair(tmp_path / "in", f"s{i}", size=40, seed=i) for i in range(3)]
    out = tmp_path / "maps"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mfaf_cli",
                "predict",
                "--optical",
                str(o),
                "--sar",
                str(s),
                "--model",
                str(ckpt),
                "--tile",
                "32",
                "-o",
                str(out / f"s{i}.tif"),
                "--probabilities",
                str(out / f"s{i}_p.tif"),
                "--vector",
                str(out / f"s{i}.gpkg"),
                "--device",
                "cpu",
                "--json",
                "-q",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for i, (o, s) in enumerate(inputs)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (stdout, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err.decode()
        assert json.loads(stdout)["windows"] == 4
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        f"s{i}{ext}" for i in range(3) for ext in (".tif", ".tif.aux.xml", "_p.tif", ".gpkg")
    )
    for i in range(3):
        labels = read_labels(out / f"s{i}.tif")
        assert labels.shape == (40, 40) and set(np.unique(labels)) <= {0, 1}
        with rasterio.open(out / f"s{i}_p.tif") as ds:
            assert ds.count == 2
        assert len(gpd.read_file(out / f"s{i}.gpkg")) >= 1
    # each process predicted its own scene: same model, different inputs, different outputs
    probs = [rasterio.open(out / f"s{i}_p.tif").read() for i in range(3)]
    assert not np.array_equal(probs[0], probs[1]) and not np.array_equal(probs[1], probs[2])

"""Labels as users have them (class tables, codes, ignore values), sampling, class weights and
fine-tuning (issue 18, items 3-5), on generated optical + SAR scenes whose WorldCover labels
lie in another CRS."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from dataset_builders import LANDCOVER_CODES, make_landcover

from mfaf_cli.classes import PRESETS, codes_to_ids, load_class_table
from mfaf_cli.errors import LabelError, UsageError
from mfaf_cli.io.weights import read_meta
from mfaf_cli.training.sampling import (
    DrawnSampler,
    balanced_window_weights,
    median_frequency_weights,
)

TINY = ["--model-opt", "base_width=4", "--tile", "32", "--batch-size", "2", "-q"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_landcover(tmp_path_factory.mktemp("landcover"))


def _train(scenes: Path, out: Path, *extra: object) -> list[object]:
    return ["train", "--dataset", "folder", "--data-root", scenes, "--model", "unet",
            "-o", out, *TINY, *extra]  # fmt: skip


def _clean_failure(code: int, err: str, out: Path, pattern: str) -> None:
    lines = [x for x in err.strip().splitlines() if x]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), err
    assert pattern in lines[0], lines[0]
    assert not out.exists()


# ---- class tables -----------------------------------------------------------------------------
def test_presets_have_the_products_class_counts_and_codes() -> None:
    sizes = {name: len(t) for name, t in PRESETS.items()}
    assert sizes == {"worldcover": 11, "dynamic-world": 9, "corine-l1": 5, "whu-opt-sar": 8,
                     "water": 2}  # fmt: skip
    wc = PRESETS["worldcover"]
    assert [c.code for c in wc] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100]
    assert [c.id for c in wc] == list(range(11))
    assert [c.code for c in PRESETS["whu-opt-sar"]] == [0, 10, 20, 30, 40, 50, 60, 70]


def test_class_files_map_non_contiguous_codes_to_ids(tmp_path: Path) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text("code,name,colour\n100,moss,#fae6a0\n10,trees,#006400\n55,other,\n")
    table = load_class_table(str(csv))
    assert [(c.id, c.code, c.name) for c in table] == [(0, 100, "moss"), (1, 10, "trees"),
                                                       (2, 55, "other")]  # fmt: skip
    assert table[1].color == (0, 100, 0)
    js = tmp_path / "c.json"
    rows = [{"code": 3, "name": "a", "color": [1, 2, 3]}, {"code": 1, "name": "b"}]
    js.write_text(json.dumps(rows))
    first = load_class_table(str(js))[0]
    assert (first.id, first.code, first.color) == (0, 3, (1, 2, 3))
    raw = np.array([[100, 10, 55], [0, 10, 100]])
    keep = raw != 0
    assert codes_to_ids(raw, table, keep, 255).tolist() == [[0, 1, 2], [255, 1, 0]]
    with pytest.raises(LabelError, match=r"codes 7, 9 are not in the class table \(100, 10, 55\)"):
        codes_to_ids(np.array([7, 10, 9, 7]), table, np.ones(4, bool), 255)


@pytest.mark.parametrize(
    "text, message",
    [
        ("code,name\n1,a\n1,b\n", "code 1 is listed twice"),
        ("code,name,colour\n1,a,#12345\n", "colour '#12345' of code 1 is not #rrggbb"),
        ("code,name,colour\n1,,#123456\n", "class 1 (code 1) has no name"),
        ("code,name\nx,a\n", "class 1 has no integer code"),
        ("code,name\n", "lists no classes"),
    ],
)
def test_bad_class_files_are_usage_errors(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_class_table(str(f))


# ---- sampling and weights: exact maths --------------------------------------------------------
def test_median_frequency_weights_and_balanced_window_weights() -> None:
    # 3 windows x 3 classes; class 2 only in window 2
    hist = np.array([[90, 10, 0], [50, 50, 0], [0, 80, 20]])
    # freq: c0 140/200, c1 140/300, c2 20/100 -> median 140/300
    freq = np.array([140 / 200, 140 / 300, 20 / 100])
    np.testing.assert_allclose(median_frequency_weights(hist), (140 / 300) / freq)
    w = balanced_window_weights(hist)
    np.testing.assert_allclose(w, [90 / 140 + 10 / 140, 50 / 140 + 50 / 140, 80 / 140 + 1.0])
    assert w[2] == max(w)  # the window holding the rare class
    empty = balanced_window_weights(np.array([[5, 0], [0, 0]]))
    drawn = DrawnSampler(2, "balanced", seed=0, epoch=0, weights=empty).order
    assert drawn == [0, 0]  # a window without labels is never drawn
    assert list(DrawnSampler(5, "grid", 0, 0)) == [0, 1, 2, 3, 4]
    a, b = DrawnSampler(6, "balanced", 3, 1, w), DrawnSampler(6, "balanced", 3, 1, w)
    assert a.order == b.order  # seeded by (seed, epoch)


# ---- the user's path ----------------------------------------------------------------------------
def test_worldcover_labels_in_another_crs_train_predict_evaluate(
    scenes: Path, tmp_path: Path, runner
) -> None:
    """Optical + SAR (UTM 32N, 10/20 m) with WorldCover codes on an EPSG:3035 grid: the model
    learns the four classes present, records codes, sampling and weights, and its maps name
    the product's codes."""
    run = tmp_path / "run"
    code, _, err = runner(*_train(scenes, run, "--classes", "worldcover", "--epochs", "6",
                                  "--lr", "0.01", "--sampling", "balanced", "--class-weights",
                                  "auto"))  # fmt: skip
    assert code == 0, err
    meta = read_meta(run / "last.safetensors")
    assert [c.code for c in meta.classes] == [c.code for c in PRESETS["worldcover"]]
    t = meta.training
    assert t["sampling"] == "balanced" and t["class_weights"]["mode"] == "auto"
    weights = t["class_weights"]["weights"]
    assert weights["shrubland"] == 1.0 and weights["tree-cover"] != 1.0  # absent vs present
    assert 'class_weights = "auto"' in (run / "config.toml").read_text()
    folder = scenes.parent
    out = tmp_path / "map.tif"
    code, _, err = runner("predict", "-m", run / "last.safetensors", "-q", "--optical",
                          folder / "s2_1.tif", "--sar", folder / "s1_1.tif", "-o", out)  # fmt: skip
    assert code == 0, err
    assert "tree-cover (code 10)" in Path(str(out) + ".aux.xml").read_text()
    code, stdout, err = runner("evaluate", "--model", run / "last.safetensors", "--dataset",
                               "folder", "--data-root", scenes, "--split", "val", "--json",
                               "-q")  # fmt: skip
    assert code == 0, err
    scores = json.loads(stdout.strip().splitlines()[-1])["metrics"]
    # four separable signatures, a tiny net, a few dozen steps: well above chance (kappa 0)
    assert scores["kappa"] > 0.25, scores
    with rasterio.open(out) as ds:
        assert set(np.unique(ds.read(1))) <= {0, 3, 4, 7, 255}  # ids of codes 10, 40, 50, 80
    assert set(LANDCOVER_CODES) == {10, 40, 50, 80}


def test_ignore_value_and_codes_outside_the_table(scenes: Path, tmp_path: Path, runner) -> None:
    out = tmp_path / "run"
    code, _, err = runner(*_train(scenes, out, "--classes", "dynamic-world", "--epochs", "1"))
    _clean_failure(code, err, out, "label codes 10, 40, 50, 80 are not in the class table")
    table = tmp_path / "three.csv"
    table.write_text("code,name,colour\n10,trees,#006400\n40,crops,#f096ff\n50,built,#fa0000\n")
    code, _, err = runner(*_train(scenes, out, "--classes", table, "--epochs", "1"))
    _clean_failure(code, err, out, "label codes 80 are not in the class table")
    code, _, err = runner(*_train(scenes, out, "--classes", table, "--ignore-value", "80",
                                  "--epochs", "1", "--max-batches", "1"))  # fmt: skip
    assert code == 0, err
    meta = read_meta(out / "last.safetensors")
    assert meta.class_names == ["trees", "crops", "built"]
    assert "permanent" not in json.dumps(meta.training["splits"])


def test_bad_label_inputs_leave_nothing(scenes: Path, tmp_path: Path, runner) -> None:
    bad = tmp_path / "dup.csv"
    bad.write_text("code,name\n10,a\n10,b\n")
    out = tmp_path / "run"
    code, _, err = runner(*_train(scenes, out, "--classes", bad))
    _clean_failure(code, err, out, "code 10 is listed twice")
    code, _, err = runner(*_train(scenes, out, "--classes", "nope"))
    _clean_failure(code, err, out, "neither a preset (worldcover, dynamic-world")
    # a scene whose label raster holds no labelled pixel at all
    empty = tmp_path / "empty"
    shutil.copytree(scenes.parent, empty)
    with rasterio.open(empty / "worldcover_1.tif", "r+") as ds:
        ds.write(np.zeros((1, ds.height, ds.width), dtype=np.uint8))
    code, _, err = runner(*_train(empty / "scenes.csv", out, "--classes", "worldcover"))
    _clean_failure(code, err, out, "scene s1: ")
    assert "holds no labelled pixel" in err
    code, _, err = runner("train", "--dataset", "ombria", "--data-root", tmp_path, "--model",
                          "unet", "-o", out, "--classes", "worldcover")  # fmt: skip
    _clean_failure(code, err, out, "--classes: only for --dataset folder")


def test_resume_with_a_changed_class_table_is_refused(scenes: Path, tmp_path: Path, runner) -> None:
    run = tmp_path / "run"
    code, _, err = runner(*_train(scenes, run, "--classes", "worldcover", "--epochs", "2",
                                  "--stop-after", "1", "--max-batches", "1"))  # fmt: skip
    assert code == 0, err
    renamed = tmp_path / "wc.json"
    rows = [{"code": c.code, "name": f"x{c.code}"} for c in PRESETS["worldcover"]]
    renamed.write_text(json.dumps(rows))
    before = sorted(p.name for p in run.iterdir())
    code, _, err = runner(*_train(scenes, run, "--resume", run, "--classes", renamed,
                                  "--epochs", "2"))  # fmt: skip
    assert code != 0 and "cannot resume" in err and "x10=10" in err, err
    assert sorted(p.name for p in run.iterdir()) == before


# ---- fine-tuning --------------------------------------------------------------------------------
def test_finetune_the_shipped_water_model_to_three_classes(
    scenes: Path, tmp_path: Path, runner
) -> None:
    """``--init unet-ombria-water``: every tensor but the 2-class head loads; the head is new;
    the parent's name and sha256 are recorded and shown by ``mfaf info``."""
    from safetensors.torch import load_file

    from mfaf_cli.io.weights import entry_path, file_sha256, manifest_entry

    table = tmp_path / "three.csv"
    table.write_text("code,name\n10,trees\n40,crops\n50,built\n")
    run = tmp_path / "ft"
    args = ["train", "--dataset", "folder", "--data-root", scenes, "--model", "unet", "-o", run,
            "--tile", "32", "--batch-size", "2", "-q", "--classes", table, "--ignore-value", "80",
            "--init", "unet-ombria-water", "--freeze-encoder", "1", "--epochs", "1",
            "--max-batches", "2", "--max-val-batches", "1"]  # fmt: skip
    code, _, err = runner(*args)
    assert code == 0, err
    parent = entry_path(manifest_entry("unet-ombria-water"))  # type: ignore[arg-type]
    init = read_meta(run / "last.safetensors").training["init"]
    assert init["name"] == "unet-ombria-water" and init["sha256"] == file_sha256(parent)
    assert init["head_reinitialised"] and init["reinitialised"] == ["outc"]
    before, after = load_file(str(parent)), load_file(str(run / "last.safetensors"))
    assert after["outc.weight"].shape[0] == 3
    # encoder frozen for the one epoch: bit-identical to the parent
    assert all((after[k] == before[k]).all() for k in before if k.startswith("downs.") and
               k.endswith("weight"))  # fmt: skip
    assert any(not (after[k] == before[k]).all() for k in before if k.startswith("ups."))
    code, stdout, _ = runner("info", run / "last.safetensors")
    assert f"fine-tuned from unet-ombria-water (sha256 {init['sha256']})" in stdout


def test_init_refuses_other_architectures_and_non_checkpoints(
    scenes: Path, tmp_path: Path, runner
) -> None:
    out = tmp_path / "run"
    code, _, err = runner(*_train(scenes, out, "--classes", "worldcover", "--init",
                                  "mfafnet-s-ombria-water"))  # fmt: skip
    _clean_failure(code, err, out, "is a checkpoint of mfafnet-s")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    code, _, err = runner(*_train(scenes, out, "--classes", "worldcover", "--init", junk))
    _clean_failure(code, err, out, str(junk))
    code, _, err = runner(*_train(scenes, out, "--init", tmp_path / "missing.safetensors"))
    _clean_failure(code, err, out, "no such checkpoint file or shipped model name")


def test_a_full_disk_while_saving_keeps_the_last_good_checkpoint(
    scenes: Path, tmp_path: Path, runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    run = tmp_path / "run"
    base = _train(scenes, run, "--classes", "worldcover", "--max-batches", "1",
                  "--max-val-batches", "1")  # fmt: skip
    assert runner(*base, "--epochs", "2", "--stop-after", "1")[0] == 0
    good = (run / "last.safetensors").read_bytes()
    real = safetensors.torch.save_file

    def full(*a: object, **k: object) -> None:
        real(*a, **k)  # type: ignore[arg-type]
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: "
                              "StorageFull, message: \"No space left on device\" })")  # fmt: skip

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    code, _, err = runner(*base, "--epochs", "2", "--resume", run)
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last == (f"Error: could not write {run / 'last.safetensors'}: no space left on "
                    "device; free some space (the last good checkpoint is kept)")  # fmt: skip
    assert (run / "last.safetensors").read_bytes() == good
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_a_scene_lists_own_ignore_value_column(scenes: Path, tmp_path: Path) -> None:
    """``ignore_value`` as a scene-list column: that scene's code 80 is unlabelled, and the
    per-window histograms balanced sampling reads see no such class."""
    from mfaf_cli.data.folder import FolderDataset
    from mfaf_cli.training.sampling import window_histograms

    folder = tmp_path / "lc"
    shutil.copytree(scenes.parent, folder)
    rows = (folder / "scenes.csv").read_text().splitlines()
    text = rows[0] + ",ignore_value\n" + "".join(r + ",80\n" for r in rows[1:])
    (folder / "scenes.csv").write_text(text)
    table = folder / "three.json"
    table.write_text(json.dumps([{"code": c, "name": f"c{c}"} for c in (10, 40, 50)]))
    ds = FolderDataset(folder / "scenes.csv", "train", modalities=("optical", "sar"),
                       classes=str(table), tile=32)  # fmt: skip
    ds.check_labels()
    hist = window_histograms(ds, 3, ds.ignore_index)
    with rasterio.open(folder / "worldcover_0.tif") as src:
        lab = src.read(1)
    for (_, r, c), row in zip(ds.windows, hist, strict=True):  # windows may overlap
        win = lab[r : r + 32, c : c + 32]
        assert row.tolist() == [int((win == code).sum()) for code in (10, 40, 50)]
    assert (hist.sum(axis=0) > 0).all()


def test_evaluate_honours_a_scene_lists_own_ignore_value(
    scenes: Path, tmp_path: Path, runner
) -> None:
    """``ignore_value`` as a scene-list column (code 80 unlabelled, not in the table): train
    reads it, and so does ``evaluate`` per scene (it used to stop at 'label codes 80 are not
    in the class table')."""
    folder = tmp_path / "lc"
    shutil.copytree(scenes.parent, folder)
    rows = (folder / "scenes.csv").read_text().splitlines()
    (folder / "scenes.csv").write_text(
        rows[0] + ",ignore_value\n" + "".join(r + ",80\n" for r in rows[1:])
    )
    table = tmp_path / "three.csv"
    table.write_text("code,name\n10,trees\n40,crops\n50,built\n")
    run = tmp_path / "run"
    code, _, err = runner(*_train(folder / "scenes.csv", run, "--classes", table, "--epochs",
                                  "1", "--max-batches", "1"))  # fmt: skip
    assert code == 0, err
    code, out, err = runner("evaluate", "--model", run / "last.safetensors", "--dataset",
                            "folder", "--data-root", folder / "scenes.csv", "--split", "val",
                            "--json", "-q")  # fmt: skip
    assert code == 0, err
    scored = json.loads(out.strip().splitlines()[-1])["metrics"]["n_pixels"]
    with rasterio.open(folder / "worldcover_1.tif") as src:
        lab = src.read(1)
    labelled = int(np.isin(lab, (10, 40, 50)).sum())  # not 80 (ignored), not 0 (nodata)
    assert abs(scored - labelled) <= 0.01 * labelled, (scored, labelled)


def test_resume_with_other_bands_is_refused(scenes: Path, tmp_path: Path, runner) -> None:
    run = tmp_path / "run"
    code, _, err = runner(*_train(scenes, run, "--classes", "worldcover", "--epochs", "2",
                                  "--stop-after", "1", "--max-batches", "1", "--bands",
                                  "optical=3,2,1"))  # fmt: skip
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, _, err = runner("train", "--resume", run, "--bands", "optical=1,2,3", "-q")
    lines = [x for x in err.strip().splitlines() if x]
    assert code != 0 and len(lines) == 1, err
    assert "cannot resume" in lines[0] and "optical bands b3,b2,b1" in lines[0], lines[0]
    assert "now gives b1,b2,b3" in lines[0], lines[0]
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_band_errors_from_a_config_file_name_its_key(scenes: Path, tmp_path: Path, runner) -> None:
    """A bad band in a config file's ``[bands]`` names that file and key, not ``--bands``;
    ``--bands`` on the command line replaces the table and names itself."""
    from mfaf_cli.training.config import TrainConfig, config_to_toml

    cfg = tmp_path / "train.toml"
    cfg.write_text(f'dataset = "folder"\ndata_root = "{scenes}"\nmodel = "unet"\n'
                   'classes = "worldcover"\n[bands]\noptical = "B12,B8,B4"\n')  # fmt: skip
    out = tmp_path / "run"
    base = ["train", "--config", cfg, "-o", out, *TINY]
    code, _, err = runner(*base)
    _clean_failure(code, err, out, f"config file {cfg} [bands] optical 'B12': no band of s2_0")
    code, _, err = runner(*base, "--bands", "optical=9")
    _clean_failure(code, err, out, "--bands optical=9 9 is out of range")
    assert "band_origin" not in config_to_toml(TrainConfig(band_origin={"optical": "x"}))

"""Training runs on tiny datasets: outputs, exact resume, DDP (2 CPU processes), bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from dataset_builders import make_folder, make_ombria
from safetensors.torch import load_file

from mfaf_cli.io.weights import read_meta
from mfaf_cli.registry import get_entry, model_divisor
from mfaf_cli.training.distributed import _Dist
from mfaf_cli.training.trainer import (
    TrainConfig,
    Trainer,
    config_to_toml,
    load_config_file,
    lr_factor,
    train,
)

TINY = ["--model-opt", "base_width=4"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def ombria(tmp_path: Path) -> Path:
    return make_ombria(tmp_path / "ombria", n_train=6, n_test=2, size=32)


def _args(root: Path, out: Path, *extra: str, model: str = "unet") -> list[str]:
    return [
        "train",
        "--dataset",
        "ombria",
        "--data-root",
        str(root),
        "--model",
        model,
        "-o",
        str(out),
        "--tile",
        "32",
        "--batch-size",
        "2",
        "--val-fraction",
        "0.34",
        "--lr",
        "0.01",
        "-q",
        *(TINY if model == "unet" else []),
        *extra,
    ]


def test_lr_schedules() -> None:
    assert lr_factor(0, 100, "poly") == 1.0
    assert lr_factor(50, 100, "poly") == pytest.approx(0.5**0.9)
    assert lr_factor(100, 100, "poly") == 0.0
    assert lr_factor(50, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(0, 100, "cosine", warmup=0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, "cosine", warmup=0.1) == pytest.approx(1.0)


def test_train_writes_checkpoints_metrics_and_curves(ombria: Path, tmp_path: Path, runner) -> None:
    out = tmp_path / "run"
    code, stdout, err = runner(*_args(ombria, out, "--epochs", "2", "--json"))
    assert code == 0, err
    res = json.loads(stdout.strip().splitlines()[-1])
    assert res["epochs"] == 2 and 1 <= res["best_epoch"] <= 2
    for name in (
        "last.safetensors",
        "best.safetensors",
        "last_state.pt",
        "metrics.csv",
        "curves.png",
        "config.toml",
    ):
        assert (out / name).is_file(), name
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["step"] == 2 and rows[1]["step"] == 4  # 4 train ids / batch 2
    assert all(0 <= r["val_miou"] <= 1 and r["train_loss"] > 0 for r in rows)
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,step,lr,train_loss") and len(csv_lines) == 3
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"

    meta = read_meta(out / "best.safetensors")
    assert meta.trained and meta.arch == "unet" and meta.class_names == ["not-water", "water"]
    assert meta.modality("optical").bands == ("swir", "nir", "red")
    assert meta.modality("sar").units == "db"
    norm = meta.modality("optical").normalisation
    # fixed (the default): clip + moments in Sentinel units (swir: PNG 0..255 → 91..4952)
    assert norm.mode == "fixed" and norm.clip_low is not None and norm.clip_high is not None
    assert 91 <= norm.clip_low[0] < norm.mean[0] < norm.clip_high[0] <= 4952 and norm.std[0] > 50
    assert isinstance(meta.training["command"], str)  # in-process runs have no argv to record
    assert meta.training["dataset"] == "ombria" and meta.training["split"]["train"] == 4
    assert meta.metrics["val"]["epoch"] == res["best_epoch"]
    assert meta.metrics["val"]["miou"] == pytest.approx(rows[res["best_epoch"] - 1]["val_miou"])
    # the temperature was fitted on the validation split after training (issue 21) and it
    # lowered the validation NLL; the last checkpoint is left uncalibrated
    cal = meta.metrics["calibration"]
    assert meta.temperature == cal["temperature"] and meta.temperature != 1.0
    assert cal["after"]["nll"] <= cal["before"]["nll"] and cal["pixels"] > 0
    assert read_meta(out / "last.safetensors").temperature == 1.0
    # the state file holds only plain tensors/containers: loads with weights_only=True
    state = torch.load(out / "last_state.pt", weights_only=True)
    assert state["epoch"] == 2 and state["arch"] == "unet"
    # the saved config reproduces the run settings
    cfg = load_config_file(out / "config.toml")
    assert cfg["epochs"] == 2 and cfg["model_config"] == {"base_width": 4}


def test_trainer_steps_one_epoch_and_validates(ombria: Path, tmp_path: Path) -> None:
    """The Trainer's parts on their own: set-up writes only config.toml, one train_epoch takes
    every batch of the split, validate scores every labelled val pixel once."""
    cfg = TrainConfig(
        dataset="ombria",
        data_root=str(ombria),
        model="unet",
        out=str(tmp_path / "run"),
        tile=32,
        batch_size=2,
        val_fraction=0.34,
        progress=False,
        model_config={"base_width": 4},
    )
    divisor = model_divisor(cfg.model, cfg.model_config)
    t = Trainer(cfg, _Dist(), get_entry(cfg.model), divisor, Path(cfg.out), time.time())
    t.setup()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.toml"]
    before = [p.detach().clone() for p in t.model.parameters()]
    sums = t.train_epoch(0)
    assert t.steps_per_epoch == 2 and t.global_step == 2 and int(sums[3]) == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, t.model.parameters(), strict=True))
    cm, val_loss = t.validate()
    assert cm.shape == (2, 2) and int(cm.sum()) == t.splits["val"]["labelled_pixels"]
    assert np.isfinite(val_loss) and val_loss > 0


def _tiny_unet_settings(ombria: Path) -> dict[str, Any]:
    """TrainConfig settings of a seconds-long U-Net run on the tiny OMBRIA layout."""
    return dict(
        dataset="ombria",
        data_root=str(ombria),
        model="unet",
        tile=32,
        batch_size=2,
        val_fraction=0.34,
        lr=0.01,
        progress=False,
        model_config={"base_width": 4},
    )


def test_resume_is_exact(ombria: Path, tmp_path: Path) -> None:
    base = _tiny_unet_settings(ombria)
    train(TrainConfig(out=str(tmp_path / "straight"), epochs=2, **base))
    train(TrainConfig(out=str(tmp_path / "split"), epochs=2, stop_after=1, **base))  # interrupted
    assert len((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) == 1
    after_epoch1 = load_file(str(tmp_path / "split" / "last.safetensors"))
    train(
        TrainConfig(out=str(tmp_path / "split"), epochs=2, resume=str(tmp_path / "split"), **base)
    )
    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(tmp_path / "split" / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in ra] == [r["train_loss"] for r in rb]
    assert [r["val_miou"] for r in ra] == [r["val_miou"] for r in rb]
    # and the resumed epoch really changed the weights (the comparison is not vacuous)
    assert read_meta(tmp_path / "split" / "last.safetensors").training["epochs"] == 2
    assert any(not torch.equal(a[k], after_epoch1[k]) for k in a)


def _lrs(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["lr"]) for r in rows]


@pytest.mark.parametrize("schedule", ["poly", "cosine"])
def test_resume_follows_the_new_epoch_count_and_schedule(
    ombria: Path, tmp_path: Path, schedule: str
) -> None:
    """Regression: LambdaLR's state dict carried the old total, so epochs 2.. trained at LR 0."""
    base = _tiny_unet_settings(ombria)
    run = tmp_path / "run"
    train(TrainConfig(out=str(run), epochs=1, schedule="poly", **base))
    train(TrainConfig(out=str(run), epochs=4, schedule=schedule, resume=str(run), **base))
    lrs = _lrs(run)
    assert [s for s, _ in lrs] == [2, 4, 6, 8]  # 2 steps per epoch, 8 in all
    assert lrs[0][1] == pytest.approx(0.01 * lr_factor(2, 2, "poly")) and lrs[0][1] == 0.0
    for step, lr in lrs[1:]:
        assert lr == pytest.approx(0.01 * lr_factor(step, 8, schedule))
    assert lrs[1][1] > 0.001 and lrs[2][1] > 0.0  # not the old schedule's 0
    if schedule == "poly":  # same settings as an uninterrupted 4-epoch run from step 2 on
        straight = tmp_path / "straight"
        train(TrainConfig(out=str(straight), epochs=4, **base))
        assert _lrs(straight)[1:] == lrs[1:]


def test_config_errors_say_what_is_wrong_and_bugs_are_not_hidden(
    tmp_path: Path, monkeypatch
) -> None:
    """Regression: a missing YAML module was reported as "could not be parsed"; any other
    exception was turned into a usage error too."""
    import tomllib

    from mfaf_cli.errors import UsageError

    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3\n")
    with pytest.raises(UsageError, match=r"bad.toml could not be parsed \(Invalid"):
        load_config_file(bad)
    yml = tmp_path / "train.yaml"
    yml.write_text("epochs: 3\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # PyYAML not installed
    with pytest.raises(UsageError, match=r"train.yaml is YAML, which needs PyYAML \(pip install"):
        load_config_file(yml)
    good = tmp_path / "good.toml"
    good.write_text("epochs = 3\n")

    def bug(text: str) -> dict:
        raise KeyError("an mfaf bug")

    monkeypatch.setattr(tomllib, "loads", bug)
    with pytest.raises(KeyError):  # surfaces as an internal error, not "could not be parsed"
        load_config_file(good)


@pytest.mark.parametrize("kind", ["rbf", "paired"])
def test_mfafnet_trains_with_mmd_and_logs_the_alignment_monitors(
    ombria: Path, tmp_path: Path, runner, kind: str
) -> None:
    out = tmp_path / "mfaf"
    extra = () if kind == "rbf" else ("--mmd", kind)  # rbf is the default
    code, _, err = runner(
        *_args(ombria, out, "--epochs", "1", "--mmd-warmup", "0", *extra, model="mfafnet-s")
    )
    assert code == 0, err
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["train_mmd"] > 0  # the alignment loss was computed and added
    assert -1.0 <= row["embed_cosine"] < 0.99  # logged, and not collapsed after one epoch
    assert row["headfree_mmd"] > 0
    if kind == "rbf":  # the loss is the head-free MMD itself
        assert row["headfree_mmd"] == pytest.approx(row["train_mmd"])
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"embed_cosine", "headfree_mmd"} <= set(header)
    meta = read_meta(out / "last.safetensors")
    assert meta.training["mmd"] == {"kind": kind, "lambda": 0.1, "warmup": 0.0}
    assert set(meta.metrics["val"]["alignment"]) == {"embed_cosine", "headfree_mmd"}


def test_config_file_equivalent_to_flags(ombria: Path, tmp_path: Path, runner) -> None:
    cfg = TrainConfig(
        dataset="ombria",
        data_root=str(ombria),
        model="unet",
        out=str(tmp_path / "cfgrun"),
        epochs=1,
        batch_size=4,
        tile=32,
        val_fraction=0.34,
        model_config={"base_width": 4},
        schedule="cosine",
    )
    (tmp_path / "train.toml").write_text(config_to_toml(cfg))
    (tmp_path / "train.yaml").write_text(
        "dataset: ombria\ndata-root: " + str(ombria) + "\nmodel: unet\nepochs: 1\ntile: 32\n"
        "val_fraction: 0.34\nmodel_config: {base_width: 4}\n"
    )
    code, _, err = runner("train", "--config", tmp_path / "train.toml", "--batch-size", "2", "-q")
    assert code == 0, err
    saved = load_config_file(tmp_path / "cfgrun" / "config.toml")
    assert saved["schedule"] == "cosine" and saved["batch_size"] == 2  # flag overrides file
    assert load_config_file(tmp_path / "train.yaml")["data_root"] == str(ombria)
    (tmp_path / "bad.toml").write_text("epoch = 3\n")
    code, _, err = runner("train", "--config", tmp_path / "bad.toml")
    assert code == 2 and "unknown setting(s) epoch" in err


def test_folder_dataset_trains_hsi_lidar_unet(tmp_path: Path, runner) -> None:
    scenes = make_folder(tmp_path / "scenes")
    out = tmp_path / "hl"
    code, _, err = runner(
        "train", "--dataset", "folder", "--data-root", scenes, "--model", "unet-hsi-lidar",
        "-o", out, "--tile", "32", "--batch-size", "2", "--epochs", "1", "-q", *TINY,
    )  # fmt: skip
    assert code == 0, err
    meta = read_meta(out / "last.safetensors")
    assert meta.in_channels == {"hsi": 5, "lidar": 1} and meta.num_classes == 3
    assert err == "", err  # -q: nothing on stderr (the calibration line was printed)


def test_ddp_two_cpu_processes(ombria: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "mfaf_cli", *_args(ombria, out, "--epochs", "1", "--device", "cpu", "--json"),
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1  # rank 0 only
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1
    row = json.loads(rows[0])
    assert row["step"] == 1  # 4 samples / (2 processes x batch 2)
    meta = read_meta(out / "last.safetensors")
    assert meta.training["world_size"] == 2
    assert "torchrun" in meta.training["command"]


# ---- bad inputs: one line, exit != 0, nothing written ---------------------------------------
def _assert_clean_failure(code: int, err: str, out: Path, pattern: str) -> None:
    assert code != 0
    lines = [x for x in err.strip().splitlines() if x]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert pattern in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_bad_inputs(ombria: Path, tmp_path: Path, runner) -> None:
    out = tmp_path / "bad"
    code, _, err = runner(*_args(ombria, out)[:2], "nope", *_args(ombria, out)[3:])
    _assert_clean_failure(code, err, out, "unknown dataset 'nope'; valid datasets: ombria")
    code, _, err = runner(*_args(tmp_path / "missing", out))
    _assert_clean_failure(code, err, out, "does not exist")
    (tmp_path / "wrong" / "OmbriaS2" / "train" / "AFTER").mkdir(parents=True)
    code, _, err = runner(*_args(tmp_path / "wrong", out))
    _assert_clean_failure(
        code, err, out, "expected " + str(tmp_path / "wrong" / "OmbriaS1/train/AFTER")
    )
    code, _, err = runner(*_args(ombria, out, model="comix-s"))
    _assert_clean_failure(code, err, out, "provides optical+sar, but the model takes hsi+lidar")
    small = make_ombria(tmp_path / "small", n_train=1)
    code, _, err = runner(*_args(small, out))
    _assert_clean_failure(code, err, out, "split of ombria")
    bad = make_ombria(tmp_path / "badlabels")
    from PIL import Image

    m = np.zeros((32, 32), np.uint8)
    m[3, 3] = 7
    Image.fromarray(m).save(bad / "OmbriaS2" / "train" / "MASK" / "S2_mask_0002.png")
    code, _, err = runner(*_args(bad, out))
    _assert_clean_failure(code, err, out, "mask values [7] are not 0 or 255")
    code, _, err = runner(*_args(ombria, out, "--tile", "40"))
    _assert_clean_failure(code, err, out, "not a multiple of 16")


def test_resume_from_another_models_checkpoint(ombria: Path, tmp_path: Path, runner) -> None:
    first = tmp_path / "unet"
    assert runner(*_args(ombria, first, "--epochs", "1"))[0] == 0
    before = sorted(p.name for p in first.iterdir())
    out = tmp_path / "other"
    code, _, err = runner(*_args(ombria, out, "--resume", first, model="mfafnet-s"))
    _assert_clean_failure(code, err, out, "is a checkpoint of model 'unet', not 'mfafnet-s'")
    assert sorted(p.name for p in first.iterdir()) == before
    code, _, err = runner(*_args(ombria, first, "--epochs", "1"))
    assert code == 2 and "already holds a training run; use --resume" in err


def test_comix_trains_on_folder_scenes_and_predicts_hsi_lidar(tmp_path: Path, runner) -> None:
    """CoMiX's whole path on generated HSI + LiDAR scenes: folder dataset (co-registered on
    the fly), training, checkpoint, then `mfaf predict --hsi --lidar` with that checkpoint."""
    import rasterio

    scenes = make_folder(tmp_path / "scenes")
    out = tmp_path / "cx"
    small = [
        "--model-opt", "stem_stride=2", "--model-opt", "x_widths=[8,8,8,8]",
        "--model-opt", "h_widths=[4,4,4,4]", "--model-opt", "decoder_dim=16",
        "--model-opt", "band_proj=16", "--model-opt", "ffm_heads=[1,1,1,1]",
        "--model-opt", "group_channels_2d=4", "--model-opt", "group_channels_3d=4",
    ]  # fmt: skip
    code, _, err = runner(
        "train", "--dataset", "folder", "--data-root", scenes, "--model", "comix-lite",
        "-o", out, "--tile", "32", "--batch-size", "2", "--epochs", "1", "-q", *small,
    )  # fmt: skip
    assert code == 0, err
    meta = read_meta(out / "last.safetensors")
    assert meta.arch == "comix-lite" and meta.in_channels == {"hsi": 5, "lidar": 1}
    assert meta.divisor == 16 and meta.trained

    label = tmp_path / "map.tif"
    code, _, err = runner(
        "predict", "--hsi", scenes.parent / "hsi0.tif", "--lidar", scenes.parent / "dsm0.tif",
        "--model", out / "last.safetensors", "-o", label, "--tile", "32", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    with rasterio.open(label) as ds, rasterio.open(scenes.parent / "hsi0.tif") as ref:
        assert (ds.crs, ds.transform, ds.shape) == (ref.crs, ref.transform, ref.shape)
        labels = ds.read(1)
    assert set(np.unique(labels)) <= {0, 1, 2}  # every pixel classified (inputs fully valid)


def test_resume_run_dir_alone_uses_its_saved_config(ombria: Path, tmp_path: Path, runner) -> None:
    out = tmp_path / "run"
    code, _, err = runner(*_args(ombria, out, "--epochs", "1"))
    assert code == 0, err
    code, stdout, err = runner("train", "--resume", out, "--epochs", "2", "--json", "-q")
    assert code == 0, err
    res = json.loads(stdout)
    assert res["epochs"] == 2 and Path(res["run_dir"]) == out
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]  # epoch 1 was not trained again
    assert read_meta(out / "last.safetensors").arch == "unet"
    code, _, err = runner("train", "--resume", tmp_path / "nothing-here")
    assert code == 2 and "required" in err


def test_training_reports_and_records_the_splits(ombria: Path, tmp_path: Path, runner) -> None:
    import numpy as np
    from PIL import Image

    out = tmp_path / "run"
    args = [a for a in _args(ombria, out, "--epochs", "1", "--json") if a != "-q"]
    code, stdout, err = runner(*args)
    assert code == 0, err
    splits = json.loads(stdout)["splits"]
    assert set(splits) == {"train", "val", "test"}
    masks = {
        folder: [np.asarray(Image.open(p)) for p in sorted(
            (ombria / "OmbriaS2" / folder / "MASK").glob("*.png"))]
        for folder in ("train", "test")
    }  # fmt: skip
    test = splits["test"]
    water = sum(int((m == 255).sum()) for m in masks["test"])
    assert test["patches"] == 2 and test["windows"] == 2
    assert test["labelled_pixels"] == 2 * 32 * 32 and test["class_pixels"]["water"] == water
    assert test["class_fraction"]["water"] == round(water / (2 * 32 * 32), 4)
    assert splits["train"]["patches"] + splits["val"]["patches"] == 6
    assert "seeded holdout (seed 0, fraction 0.34)" in splits["val"]["source"]
    assert "data val: 2 patches, 2 windows" in err and "split from OMBRIA" in err
    assert read_meta(out / "last.safetensors").training["splits"] == splits


def test_whu_split_source_names_the_division_file(tmp_path: Path) -> None:
    import rasterio
    from dataset_builders import make_whu_sheets

    from mfaf_cli.data.datasets import open_dataset, whu_map_label

    root = make_whu_sheets(tmp_path / "whu")
    seeded = open_dataset("whu", root, "train", tile=32).summary()
    assert seeded["source"].startswith("seeded sheet split, no division file found (seed 0")
    (root / "division.txt").write_text("train: NH1 NH2\ntest: NH3\n")
    s = open_dataset("whu", root, "test", tile=32).summary()
    assert s["source"].startswith(f"official division file {root / 'division.txt'}; val = ")
    with rasterio.open(root / "Lbl" / "NH3.tif") as ds:
        ids = whu_map_label(ds.read(1), 255)
    assert s["sheets"] == 1 and s["windows"] == 6  # 60 x 80 px sheet, 32 px tiles
    assert s["labelled_pixels"] == int((ids != 255).sum())  # full-resolution count

"""What a new user meets first: usage errors for streams, defaults that match the model cards."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "--optical", "a.tif", "--sar", "b.tif", "-o", "-"],
        ["predict", "--optical", "a.tif", "--sar", "b.tif", "-o", "m.tif", "--vector", "-"],
        ["vectorize", "map.tif", "-o", "-"],
        ["coregister", "--optical", "a.tif", "-o", "-"],
        ["export", "--model", "unet", "-o", "-"],
    ],
)
def test_dash_output_is_a_one_line_usage_error(runner, tmp_path: Path, monkeypatch, args) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = runner(*args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "'-' (standard output) is not supported" in err
    assert not (tmp_path / "-").exists()


def test_training_photometric_default_is_the_model_cards_value() -> None:
    from mfaf_cli.training.trainer import TrainConfig

    assert TrainConfig.__dataclass_fields__["photometric"].default == 0.15


@pytest.fixture(scope="module")
def own_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A user's own checkpoint (trained, with training record and metrics) and its ONNX."""
    from dataclasses import replace

    from mfaf_cli import registry
    from mfaf_cli.io.weights import save_checkpoint
    from mfaf_cli.models import export

    meta = registry.default_meta("unet", None, 2, base_width=4)
    meta = replace(
        meta,
        trained=True,
        training={"dataset": "ombria", "epochs": 3, "split": {"train": 5, "val": 1}},
        metrics={"val": {"miou": 0.5, "per_class_iou": {"not-water": 0.6, "water": 0.4}}},
    )
    model = registry.create_model("unet", meta.in_channels, 2, **meta.config)
    folder = tmp_path_factory.mktemp("run")
    ckpt = save_checkpoint(model, meta, folder / "best.safetensors")
    onnx = export.export_onnx(model, meta, folder / "best.onnx")
    return ckpt, onnx


@pytest.mark.parametrize("command", ["info", "models"])
@pytest.mark.parametrize("which", [0, 1])
def test_info_and_models_print_a_model_files_record(runner, own_model, command, which) -> None:
    import json

    from mfaf_cli.io.weights import file_sha256

    path = own_model[which]
    code, out, err = runner(command, path)
    assert code == 0, err
    assert f"{path}: {'onnx' if which else 'checkpoint'} of unet, TRAINED" in out
    assert "optical: bands " in out and "sar: bands " in out and "normalisation" in out
    assert "classes: 0 not-water, 1 water" in out
    assert "training: dataset ombria" in out and "split: train 5, val 1" in out
    assert "val: miou 0.500; IoU not-water 0.600, water 0.400" in out
    code, out, err = runner(command, path, "--json")
    rec = json.loads(out)
    assert rec["sha256"] == file_sha256(path) and rec["meta"]["arch"] == "unet"


def test_info_model_file_errors_are_one_line(runner, tmp_path: Path) -> None:
    code, _, err = runner("info", tmp_path / "missing.safetensors")
    assert code == 1 and "does not exist" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    code, _, err = runner("models", tmp_path / "junk.onnx")
    assert code != 0 and len(err.strip().splitlines()) == 1


# ---- predict --preview ----------------------------------------------------------------------
def test_preview_maths() -> None:
    import numpy as np

    from mfaf_cli.io import preview as pv

    assert pv.decimated_shape(3000, 2000, 1024) == (1024, 683)
    assert pv.decimated_shape(100, 50, 1024) == (100, 50)  # never upsampled when read
    assert (pv.display_zoom(48, 40), pv.display_zoom(120, 120), pv.display_zoom(600, 90)) == (
        10, 4, 1)  # but a small map is shown magnified by a whole factor  # fmt: skip
    bands = np.array([[[0.0, 50.0], [100.0, np.nan]]])
    g = pv.stretch_grey(bands, np.isfinite(bands[0]))
    lo, hi = np.percentile([0.0, 50.0, 100.0], [2, 98])
    assert g[0, 1] == pytest.approx((50 - lo) / (hi - lo)) and g[0, 0] == 0.0 and g[1, 0] == 1.0
    lut = np.zeros((256, 3))
    lut[1] = (0, 0, 255)
    rgb = pv.blend(np.full((1, 2), 0.4), np.array([[1, 255]], np.uint8), lut)
    a = pv.ALPHA
    np.testing.assert_allclose(rgb[0, 0], [(1 - a) * 0.4, (1 - a) * 0.4, (1 - a) * 0.4 + a])
    np.testing.assert_allclose(rgb[0, 1], [0.4, 0.4, 0.4])  # nodata: grey only


def test_predict_preview_png(runner, tmp_path: Path, own_model) -> None:
    import numpy as np
    from conftest import write_geotiff
    from PIL import Image

    rng = np.random.default_rng(0)
    opt = write_geotiff(tmp_path / "s2.tif", rng.integers(0, 3000, (4, 48, 40)).astype("int16"))
    sar = write_geotiff(tmp_path / "s1.tif", rng.normal(-12, 3, (1, 48, 40)).astype("float32"))
    args = ["predict", "--optical", opt, "--sar", sar, "--model", own_model[0], "--tile", "32"]
    code, _, err = runner(*args, "-o", tmp_path / "m.tif", "--preview", tmp_path / "m.jpg")
    assert code == 2 and "give a .png file name" in err and not (tmp_path / "m.tif").exists()
    code, out, err = runner(*args, "-o", tmp_path / "m.tif", "--preview", tmp_path / "m.png",
                            "--json", "-q")  # fmt: skip
    assert code == 0, err
    assert json_line(out)["outputs"]["preview"] == str(tmp_path / "m.png")
    img = np.asarray(Image.open(tmp_path / "m.png").convert("RGB"))
    assert img.shape[0] == 480 and img.shape[1] == 400 + 220  # map ×10 + legend column
    assert img[:480, :400].std() > 5  # the map is drawn, not a blank figure
    block = img[:480, :400].reshape(48, 10, 40, 10, 3)  # each map pixel a 10×10 block
    assert (block == block[:, :1, :, :1]).mean() > 0.95
    code, _, err = runner(*args, "-o", tmp_path / "n.tif", "--preview", tmp_path / "m.png")
    assert code == 2 and "already exists" in err and not (tmp_path / "n.tif").exists()


def json_line(out: str) -> dict:
    import json

    lines = out.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])

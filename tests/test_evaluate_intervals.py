"""evaluate's per-scene scores, intervals, calibration, --batch and --compare (issue 21)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import write_geotiff
from dataset_builders import make_sen1floods11
from rasterio.transform import from_origin

from mfaf_cli.metadata import WATER_CLASSES, ModelMeta
from mfaf_cli.pipeline.spec import InferenceSpec
from mfaf_cli.scores.metrics import confusion_matrix
from mfaf_cli.training.evaluate import evaluate_batch, evaluate_model, evaluate_rasters

T = from_origin(500_000.0, 4_500_000.0, 10.0, 10.0)


def _map(path: Path, pred: np.ndarray) -> Path:
    write_geotiff(path, pred.astype(np.uint8), transform=T, nodata=255)
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(CLASS_NAMES=json.dumps(["not-water", "water"]), CLASS_IDS="[0, 1]")
    return path


def _pair(tmp: Path, name: str, rng: np.random.Generator, err: float, h: int = 40, w: int = 50):
    truth = rng.integers(0, 2, size=(h, w)).astype(np.int16)
    pred = np.where(rng.random((h, w)) < 1 - err, truth, 1 - truth)
    return _map(tmp / f"{name}.tif", pred), write_geotiff(tmp / f"{name}_t.tif", truth, transform=T)


def test_raster_blocks_sum_to_the_overall_matrix(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    p, t = _pair(tmp_path, "a", rng, 0.2)
    res = evaluate_rasters(p, t, block=16)
    assert res.units is not None and res.units.kind == "block"
    assert len(res.units.names) == 3 * 4  # 40×50 px in 16 px blocks
    np.testing.assert_array_equal(res.units.confusion.sum(0), res.confusion)
    lo, hi = res.report["intervals"]["oa"]
    assert lo <= res.metrics["oa"] <= hi and hi - lo > 0
    assert res.report["interval_method"]["over"] == "blocks"


def test_batch_reports_every_scene_and_their_sum(tmp_path: Path, runner) -> None:
    rng = np.random.default_rng(1)
    rows = ["prediction,truth,scene"]
    pairs = []
    for i, err in enumerate((0.05, 0.2, 0.4)):
        p, t = _pair(tmp_path, f"s{i}", rng, err)
        pairs.append((p, t))
        rows.append(f"{p.name},{t.name},scene-{i}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    res = evaluate_batch(tmp_path / "pairs.csv")
    total = np.zeros((2, 2), np.int64)
    for row, (p, t) in zip(res.report["per_scene"], pairs, strict=True):
        with rasterio.open(p) as a, rasterio.open(t) as b:
            cm = confusion_matrix(a.read(1), b.read(1), 2)
        total += cm
        assert row["n_pixels"] == cm.sum()
        assert row["oa"] == pytest.approx(np.trace(cm) / cm.sum())
    np.testing.assert_array_equal(res.confusion, total)
    assert [r["name"] for r in res.report["per_scene"]] == ["scene-0", "scene-1", "scene-2"]
    code, out, err = runner("evaluate", "--batch", tmp_path / "pairs.csv", "--json",
                            "--plot", tmp_path / "b.png")  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["per_scene"]) == 3 and doc["interval_method"]["units"] == 3
    assert doc["intervals"]["miou"][0] <= doc["metrics"]["miou"] <= doc["intervals"]["miou"][1]
    assert "scene-2" in err and "95 % intervals" in err
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "bad.csv").write_text("prediction\nx.tif\n")
    code, _, err = runner("evaluate", "--batch", tmp_path / "bad.csv")
    assert code == 2 and "truth" in err and "Traceback" not in err


def test_compare_two_maps_on_one_truth(tmp_path: Path, runner) -> None:
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 2, size=(64, 64)).astype(np.int16)
    t = write_geotiff(tmp_path / "t.tif", truth, transform=T)
    good = _map(tmp_path / "good.tif", np.where(rng.random(truth.shape) < 0.95, truth, 1 - truth))
    bad = _map(tmp_path / "bad.tif", np.where(rng.random(truth.shape) < 0.6, truth, 1 - truth))
    code, out, err = runner("evaluate", "--compare", good, bad, "--truth", t, "--block-size",
                            "16", "--json")  # fmt: skip
    assert code == 0, err
    d = json.loads(out)["difference"]["oa"]
    assert d["difference"] == pytest.approx(d["a"] - d["b"]) and d["difference"] > 0.25
    assert d["low"] > 0 and d["significant"] is True
    code, out, _ = runner("evaluate", "--compare", good, good, "--truth", t)
    assert code == 0 and "not significant" in out
    code, _, err = runner("evaluate", "--compare", good, bad, "--truth", t, "--plot", "x.png")
    assert code == 2 and "--plot" in err


def _checkpoint(tmp_path: Path, ds, temperature: float = 1.0) -> Path:
    from mfaf_cli.io.weights import save_checkpoint
    from mfaf_cli.registry import create_model

    torch.manual_seed(0)
    model = create_model("unet", ds.in_channels, 2, base_width=4)
    ds.set_normalisation(ds.compute_normalisation())
    meta = ModelMeta(arch="unet", modalities=ds.modality_specs(), classes=WATER_CLASSES,
                     config={"base_width": 4}, tile_size=32, divisor=16, trained=True,
                     temperature=temperature)  # fmt: skip
    return save_checkpoint(model, meta, tmp_path / f"m{temperature}.safetensors")


def test_dataset_scenes_calibration_and_temperature(tmp_path: Path) -> None:
    """Per-scene matrices sum to the overall one; calibration counts cover every scored
    pixel; a temperature changes ECE / Brier and never the confusion matrix."""
    from mfaf_cli.data.datasets import open_dataset

    root = make_sen1floods11(tmp_path / "s1f", size=48)
    ds = open_dataset("sen1floods11", root, "all")
    runs = []
    for temp in (1.0, 3.0):
        ckpt = _checkpoint(tmp_path, ds, temp)
        spec = InferenceSpec(tile=32, device="cpu", engine="torch")
        runs.append(evaluate_model(ckpt, "sen1floods11", root, "all", spec=spec,
                                   progress=False))  # fmt: skip
    r1, r3 = runs
    assert r1.units is not None and r1.units.kind == "scene" and len(r1.units.names) == 3
    np.testing.assert_array_equal(r1.units.confusion.sum(0), r1.confusion)
    cal = r1.report["calibration"]
    assert cal["pixels"] == r1.metrics["n_pixels"]
    np.testing.assert_array_equal(r1.confusion, r3.confusion)  # labels unchanged
    assert r3.report["calibration"]["ece"] != pytest.approx(cal["ece"])
    assert r3.report["calibration"]["mean_confidence"] < cal["mean_confidence"]
    assert {"ece", "brier", "nll"} <= set(r1.report["intervals"])


def test_one_scene_dataset_is_cut_into_blocks(tmp_path: Path) -> None:
    from mfaf_cli.data.datasets import open_dataset

    root = make_sen1floods11(tmp_path / "s1f", ids=("Spain_1",), size=48)
    ds = open_dataset("sen1floods11", root, "all")
    res = evaluate_model(_checkpoint(tmp_path, ds), "sen1floods11", root, "all",
                         spec=InferenceSpec(tile=32, device="cpu"), progress=False,
                         block=16)  # fmt: skip
    assert res.units is not None and res.units.kind == "block" and len(res.units.names) == 9
    np.testing.assert_array_equal(res.units.confusion.sum(0), res.confusion)
    assert res.units.calibration is not None
    assert res.units.calibration[:, :15].sum() == res.metrics["n_pixels"]

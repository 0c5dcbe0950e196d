"""Evaluation: rasters against truth (co-registration, nodata, mapping) and models on datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import write_geotiff
from dataset_builders import make_ombria, make_sen1floods11
from rasterio.transform import from_origin

from mfaf_cli.errors import BandMismatchError, LabelError
from mfaf_cli.metadata import WATER_CLASSES, ModelMeta
from mfaf_cli.pipeline.spec import InferenceSpec
from mfaf_cli.scores.metrics import confusion_matrix
from mfaf_cli.training.evaluate import evaluate_model, evaluate_rasters, predict_arrays


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


T = from_origin(500_000.0, 4_500_000.0, 10.0, 10.0)


def _pred_tif(path: Path, pred: np.ndarray, names=("not-water", "water")) -> Path:
    write_geotiff(path, pred.astype(np.uint8), transform=T, nodata=255)
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(
            CLASS_NAMES=json.dumps(list(names)), CLASS_IDS=json.dumps(list(range(len(names))))
        )
    return path


def _scene(rng: np.random.Generator, h: int = 20, w: int = 24) -> tuple[np.ndarray, np.ndarray]:
    truth = rng.integers(0, 2, size=(h, w)).astype(np.int16)
    pred = np.where(rng.random((h, w)) < 0.8, truth, 1 - truth).astype(np.uint8)
    return pred, truth


def _expected(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    cm = np.zeros((2, 2), np.int64)
    for p, t in zip(pred.ravel(), truth.ravel(), strict=True):
        if p != 255 and t not in (-1, 255, -9999):
            cm[t, p] += 1
    return cm


def test_same_grid_with_nodata(tmp_path: Path, rng: np.random.Generator) -> None:
    pred, truth = _scene(rng)
    pred[0, :6] = 255  # prediction nodata
    truth[1, :5] = -1  # Sen1Floods11-style nodata
    truth[2, :4] = -9999  # the truth raster's own nodata value
    p = _pred_tif(tmp_path / "pred.tif", pred)
    t = write_geotiff(tmp_path / "truth.tif", truth, transform=T, nodata=-9999)
    res = evaluate_rasters(p, t)
    np.testing.assert_array_equal(res.confusion, _expected(pred, truth))
    assert res.class_names == ["not-water", "water"]
    assert res.metrics["n_pixels"] == 20 * 24 - 6 - 5 - 4


def test_truth_on_another_grid_is_resampled_nearest(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    pred, truth = _scene(rng)
    p = _pred_tif(tmp_path / "pred.tif", pred)
    # truth at 5 m (each 10 m pixel = a 2x2 block), covering only the left 16 columns
    fine = np.repeat(np.repeat(truth[:, :16], 2, 0), 2, 1)
    t = write_geotiff(
        tmp_path / "fine.tif", fine, transform=from_origin(500_000.0, 4_500_000.0, 5.0, 5.0)
    )
    res = evaluate_rasters(p, t)
    np.testing.assert_array_equal(res.confusion, _expected(pred[:, :16], truth[:, :16]))
    # and in another CRS (UTM 30N → Web Mercator) the bulk of the pixels still match
    with rasterio.open(t) as src:
        from rasterio.warp import calculate_default_transform, reproject

        dt, w, h = calculate_default_transform(
            src.crs, "EPSG:3857", src.width, src.height, *src.bounds
        )
        dst = np.full((h, w), -1, np.int16)
        reproject(
            fine,
            dst,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=dt,
            dst_crs="EPSG:3857",
        )
    t2 = write_geotiff(tmp_path / "merc.tif", dst, crs="EPSG:3857", transform=dt, nodata=-1)
    res2 = evaluate_rasters(p, t2)
    exp = _expected(pred[:, :16], truth[:, :16])
    assert abs(res2.metrics["n_pixels"] - exp.sum()) <= 0.1 * exp.sum()
    assert abs(res2.metrics["oa"] - np.trace(exp) / exp.sum()) < 0.05


def test_mapping_and_unknown_classes(tmp_path: Path, rng: np.random.Generator, runner) -> None:
    pred, truth = _scene(rng)
    p = _pred_tif(tmp_path / "pred.tif", pred)
    coded = np.where(truth == 1, 40, 10).astype(np.uint8)
    coded[0, 0] = 0
    t = write_geotiff(tmp_path / "coded.tif", coded, transform=T)
    res = evaluate_rasters(p, t, mapping="10:0,40:1,0:255")
    exp = _expected(pred, truth)
    exp[truth[0, 0], pred[0, 0]] -= 1
    np.testing.assert_array_equal(res.confusion, exp)
    with pytest.raises(LabelError, match=r"coded.tif: holds values \[10, 40\].*does not know"):
        evaluate_rasters(p, t, mapping="0:255")
    code, out, err = runner("evaluate", p, "--truth", t, "--map", "0:255")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1


def test_cli_json_table_and_plot(tmp_path: Path, rng: np.random.Generator, runner) -> None:
    pred, truth = _scene(rng)
    p = _pred_tif(tmp_path / "pred.tif", pred)
    t = write_geotiff(tmp_path / "truth.tif", truth, transform=T)
    code, out, err = runner("evaluate", p, "--truth", t, "--json", "--plot", tmp_path / "cm.png")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    exp = _expected(pred, truth)
    assert doc["metrics"]["confusion_matrix"] == exp.tolist()
    assert doc["metrics"]["oa"] == pytest.approx(np.trace(exp) / exp.sum())
    assert "water" in err and "mIoU" in err  # table on stderr
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = runner("evaluate", p)
    assert code == 2 and "give --truth" in err
    code, out, err = runner("evaluate", p, "--truth", t)  # `> metrics.txt` keeps the table
    assert code == 0 and "mIoU" in out and "water" in out and "mIoU" not in err


def _one_error_line(runner, *args: object) -> str:
    code, out, err = runner("evaluate", *args)
    lines = err.strip().splitlines()
    assert code == 1 and out == "" and len(lines) == 1, (code, out, err)
    assert lines[0].startswith("Error: ") and "Traceback" not in err
    return lines[0]


def test_disjoint_rasters_are_an_error(tmp_path: Path, rng: np.random.Generator, runner) -> None:
    """Regression: disjoint rasters printed a table of dashes with 0 pixels and exited 0."""
    pred, truth = _scene(rng)
    p = _pred_tif(tmp_path / "pred.tif", pred)
    far = write_geotiff(tmp_path / "far.tif", truth, transform=from_origin(600_000, 4e6, 10, 10))
    geo = write_geotiff(  # the same far-away place, in another CRS: compared after reprojection
        tmp_path / "far_geo.tif",
        truth,
        crs="EPSG:4326",
        transform=from_origin(-2.0, 36.2, 1e-4, 1e-4),
    )
    for t in (far, geo):
        line = _one_error_line(runner, p, "--truth", t)
        assert "do not overlap" in line and t.name in line
    # overlapping but every truth pixel is nodata: also nothing to score, also an error
    empty = write_geotiff(
        tmp_path / "empty.tif", np.full_like(truth, -9999), transform=T, nodata=-9999
    )
    assert "no pixel" in _one_error_line(runner, p, "--truth", empty)


def test_a_non_label_prediction_is_refused(
    tmp_path: Path, rng: np.random.Generator, runner
) -> None:
    """Regression: a 4-band uint16 optical file was scored as ~2 250 classes."""
    _, truth = _scene(rng)
    t = write_geotiff(tmp_path / "truth.tif", truth, transform=T)
    optical = rng.integers(0, 2250, size=(4, *truth.shape)).astype(np.uint16)
    opt4 = write_geotiff(tmp_path / "optical.tif", optical, transform=T)
    line = _one_error_line(runner, opt4, "--truth", t)
    assert "optical.tif is not a class map" in line and "4 bands" in line and "uint16" in line
    band = write_geotiff(tmp_path / "band.tif", optical[0], transform=T)  # one band, no classes
    line = _one_error_line(runner, band, "--truth", t)
    assert "band.tif is not a class map" in line and f"up to {optical[0].max()}" in line
    tagged = _pred_tif(tmp_path / "tagged.tif", np.zeros_like(truth, dtype=np.uint8))
    with rasterio.open(tagged, "r+") as ds:  # a 2-class table, but values 0..7
        ds.write((np.arange(truth.size).reshape(truth.shape) % 8).astype(np.uint8), 1)
    line = _one_error_line(runner, tagged, "--truth", t)
    assert "not a class map of these 2 classes" in line and "[2, 3, 4, 5, 6, 7]" in line
    frac = write_geotiff(tmp_path / "frac.tif", rng.random(truth.shape).astype("f4"), transform=T)
    assert "fractional values" in _one_error_line(runner, frac, "--truth", t, "--num-classes", "2")
    # a float map of whole class ids with NaN nodata is still a class map
    whole = np.where(truth == 1, 1.0, 0.0).astype("f4")
    whole[0, :3] = np.nan
    wf = write_geotiff(tmp_path / "whole.tif", whole, transform=T, nodata=float("nan"))
    res = evaluate_rasters(wf, t, num_classes=2)
    assert res.metrics["n_pixels"] == truth.size - 3 and res.metrics["oa"] == 1.0


# ---- a model on a dataset --------------------------------------------------------------------
def _checkpoint(tmp_path: Path, ds, in_channels=None) -> Path:
    from mfaf_cli.io.weights import save_checkpoint
    from mfaf_cli.registry import create_model

    torch.manual_seed(0)
    model = create_model("unet", in_channels or ds.in_channels, 2, base_width=4)
    ds.set_normalisation(ds.compute_normalisation())
    meta = ModelMeta(
        arch="unet",
        modalities=ds.modality_specs(),
        classes=WATER_CLASSES,
        config={"base_width": 4},
        tile_size=32,
        divisor=16,
        trained=True,
    )
    return save_checkpoint(model, meta, tmp_path / "m.safetensors")


def test_evaluate_model_on_patches_matches_direct_prediction(tmp_path: Path) -> None:
    from mfaf_cli.data.datasets import open_dataset
    from mfaf_cli.engine import create_predictor
    from mfaf_cli.normalize import apply_normalisation, band_percentiles

    root = make_ombria(tmp_path / "ombria", n_train=4, n_test=3)
    ckpt = _checkpoint(tmp_path, open_dataset("ombria", root, "train"))
    spec = InferenceSpec(tile=32, device="cpu")
    res = evaluate_model(ckpt, "ombria", root, "test", spec=spec, progress=False)
    # by hand: normalise each whole patch, one forward pass, argmax
    pr = create_predictor(str(ckpt), device="cpu")
    test = open_dataset("ombria", root, "test")
    cm = np.zeros((2, 2), np.int64)
    for i in range(len(test)):
        arrays, mask, _ = test.raw(i)
        batch = {}
        for spec in pr.meta.modalities:
            lo, hi = band_percentiles(arrays[spec.name], None, 2, 98)
            batch[spec.name] = apply_normalisation(arrays[spec.name], spec.normalisation, lo, hi)[
                None
            ]
        cm += confusion_matrix(pr(batch)[0].argmax(0), mask, 2)
    np.testing.assert_array_equal(res.confusion, cm)
    assert res.info["patches"] == 3 and res.info["split"] == "test"


def test_pipeline_and_in_memory_paths_agree(tmp_path: Path) -> None:
    """Sen1Floods11 chips go through the real predict pipeline; the result must equal the
    in-memory sliding-window path on the same arrays (same normalisation and blending)."""
    from mfaf_cli.data.datasets import open_dataset
    from mfaf_cli.engine import create_predictor

    root = make_sen1floods11(tmp_path / "s1f", size=48)
    ds = open_dataset("sen1floods11", root, "all")
    ckpt = _checkpoint(tmp_path, ds)
    spec = InferenceSpec(tile=32, overlap=0.5, device="cpu")
    res = evaluate_model(ckpt, "sen1floods11", root, "all", spec=spec, progress=False)
    assert res.info["scenes"] == 3
    pr = create_predictor(str(ckpt), device="cpu")
    cm = np.zeros((2, 2), np.int64)
    for i in range(len(ds)):
        arrays, mask, _ = ds.raw(i)
        valid = np.isfinite(arrays["optical"]).all(0) & np.isfinite(arrays["sar"]).all(0)
        pred, ok = predict_arrays(pr, arrays, valid, pr.meta, tile=32, overlap=0.5)
        p = pred.astype(np.int64)
        p[~ok] = 255
        cm += confusion_matrix(p, mask, 2)
    np.testing.assert_array_equal(res.confusion, cm)
    assert cm.sum() > 0


def test_evaluate_model_band_and_class_mismatch(tmp_path: Path, runner) -> None:
    from mfaf_cli.data.datasets import open_dataset

    root = make_sen1floods11(tmp_path / "s1f")
    ds = open_dataset("sen1floods11", root, "all", bands={"optical": [4, 3, 2, 8]})
    ckpt = _checkpoint(tmp_path, ds)  # a 4-band optical model (red, green, blue, nir)
    with pytest.raises(BandMismatchError, match="--bands"):
        evaluate_model(ckpt, "sen1floods11", root, "all", spec=InferenceSpec(device="cpu"),
                       progress=False, bands={"optical": [4, 3, 2]})  # fmt: skip
    scores = []
    for given in (["--bands", "optical=4,3,2,8"], ["--bands", "optical=B4,B3,B2,B8"], []):
        code, out, err = runner(
            "evaluate", "--model", ckpt, "--dataset", "sen1floods11", "--data-root", root,
            "--split", "all", "--tile", "32", "--json", "-q", *given,
        )  # fmt: skip
        assert code == 0, err
        scores.append(json.loads(out)["metrics"])
    # by number, by name, or (none given) the model's own bands by meaning: the same bands
    assert scores[0]["n_pixels"] > 0 and scores[0] == scores[1] == scores[2]


def test_confusion_sink_equals_scoring_a_written_map(tmp_path: Path) -> None:
    """evaluate through the core (ConfusionSink, no map) == predict a map, then score it."""
    from mfaf_cli.data.datasets import open_dataset
    from mfaf_cli.engine import create_predictor
    from mfaf_cli.pipeline.predict import predict
    from mfaf_cli.pipeline.spec import InferenceSpec
    from mfaf_cli.training.evaluate import raster_confusion, scene_confusion

    root = make_sen1floods11(tmp_path / "s1f", size=48)
    ds = open_dataset("sen1floods11", root, "all")
    pr = create_predictor(str(_checkpoint(tmp_path, ds)), device="cpu", engine="torch")
    spec = InferenceSpec(tile=32, overlap=0.5, threads=2)
    total = np.zeros((2, 2), np.int64)
    for sc in ds.scenes():
        cm = scene_confusion(pr, sc, ds, spec)
        out = tmp_path / "map.tif"
        predict(sc.inputs, out, predictor=pr, tile=32, overlap=0.5, overwrite=True,
                progress=False, bands=sc.bands or None)  # fmt: skip
        ref = raster_confusion(out, sc.label, 2, label_fn=ds.map_label,
                               ignore_index=ds.ignore_index)  # fmt: skip
        np.testing.assert_array_equal(cm, ref)
        total += cm
    assert total.sum() > 0 and total[0].sum() > 0 and total[1].sum() > 0


def test_truth_labels_never_hands_the_nodata_filler_to_a_dataset_mapping() -> None:
    """Regression: NaN (outside / nodata) reached a folder dataset's mapping as -1, which it
    rejected as 'outside the class table'."""
    from mfaf_cli.training.evaluate import truth_labels

    def strict(raw: np.ndarray) -> np.ndarray:
        assert (raw >= 0).all(), raw
        return raw + 10

    t = np.array([[0.0, np.nan], [2.0, 1.0]])
    assert truth_labels(t, strict, None, 255).tolist() == [[10, 255], [12, 11]]
    assert truth_labels(np.full((1, 2), np.nan), strict, None, 255).tolist() == [[255, 255]]

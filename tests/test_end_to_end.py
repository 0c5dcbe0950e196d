"""README's first command, as a test: the shipped default model on the shipped real sample scene.

examples/sen1floods11/ is a crop of a real Sentinel-2 L1C (13 bands, int16 reflectance) +
Sentinel-1 GRD (VV/VH dB) chip with a hand label; the default optical+SAR model was trained on
OMBRIA's 8-bit PNG patches only, so this checks the normalisation transfer end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from conftest import EXAMPLES

from mfaf_cli.io.weights import entry_path, read_manifest

SCENE = EXAMPLES / "sen1floods11"
#: water IoU the shipped default model must keep on the sample crop (measured value in
#: weights/README.md; the margin absorbs CPU-library numeric noise, not a regression)
MIN_WATER_IOU = 0.58


def _default_entry() -> dict:
    entries = [e for e in read_manifest() if e.get("default")]
    assert entries, "weights/manifest.json has no default model"
    return next(e for e in entries if set(e["modalities"]) == {"optical", "sar"})


def test_manifest_default_is_a_trained_optical_sar_model() -> None:
    e = _default_entry()
    assert e["trained"] and e["arch"] in {"mfafnet-s", "unet"}
    assert entry_path(e).stat().st_size < 20e6


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_readme_command_on_sample_scene(tmp_path: Path, runner, engine: str) -> None:
    out, vec = tmp_path / "water.tif", tmp_path / "water.gpkg"
    code, stdout, err = runner(
        "predict", "--optical", SCENE / "S2.tif", "--optical-bands", "B12,B8,B4",
        "--sar", SCENE / "S1.tif", "--sar-bands", "VV", "-o", out, "--vector", vec,
        "--engine", engine, "--json", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["trained"] and summary["model"] == _default_entry()["name"]

    with rasterio.open(out) as ds, rasterio.open(SCENE / "S2.tif") as ref:
        assert (ds.crs, ds.transform, ds.shape) == (ref.crs, ref.transform, ref.shape)
        assert ds.dtypes[0] == "uint8" and ds.nodata == 255
        assert ds.colormap(1)[1][:3] == (30, 90, 200)  # water colour from the class table
        labels = ds.read(1)
    # nodata exactly where an input is nodata (S2 int16 0, S1 NaN), classes elsewhere
    with rasterio.open(SCENE / "S2.tif") as s2, rasterio.open(SCENE / "S1.tif") as s1:
        invalid = (s2.read([4, 8, 13]) == 0).any(0) | ~np.isfinite(s1.read(1))
    assert np.array_equal(labels == 255, invalid)

    code, stdout, err = runner("evaluate", out, "--truth", SCENE / "label.tif", "--json")
    assert code == 0, err
    metrics = json.loads(stdout)["metrics"]
    assert metrics["per_class"]["water"]["iou"] >= MIN_WATER_IOU, metrics["per_class"]

    gdf = gpd.read_file(vec)
    assert gdf.crs == rasterio.open(out).crs and set(gdf["class_name"]) <= {"water", "not-water"}
    water_px = int((labels == 1).sum())
    px_area = gdf[gdf["class_name"] == "water"]["area_m2"].sum() / water_px
    assert 50 < px_area < 150  # ~10 m pixels (geodesic areas on an EPSG:4326 grid)

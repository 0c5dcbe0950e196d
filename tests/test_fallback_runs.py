"""Fallback runs through the run objects and the CLI (issue 24): an S2 L2A product folder
brings its SCL band as the optical mask; ``--fallback`` names a fallback on the command line.
The models and helpers are test_fallback's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import write_geotiff
from test_fallback import CHIP, HOLE, _source, models  # noqa: F401 (models: the fixture)

from mfaf_cli.pipeline.predict import predict


def test_l2a_folder_input_masks_with_its_own_scl(
    models: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    """``--optical S2..._MSIL2A.SAFE``: the folder's SCL band (20 m, cloud class 9 over a
    block) makes those pixels SAR-only without any --optical-mask."""
    main, _ = models
    with rasterio.open(CHIP / "S2.tif") as ds:
        data, crs, transform = ds.read(), str(ds.crs), ds.transform
    img = tmp_path / "S2B_MSIL2A.SAFE" / "GRANULE" / "L2A_T30" / "IMG_DATA"
    (img / "R10m").mkdir(parents=True)
    (img / "R20m").mkdir(parents=True)
    for band, k in (("B04", 3), ("B03", 2), ("B02", 1), ("B08", 7)):
        write_geotiff(img / "R10m" / f"T30_20200101_{band}_10m.tif", data[k], crs=crs,
                      transform=transform, nodata=0)  # type: ignore[arg-type]  # fmt: skip
    scl = np.full((192, 192), 4, np.uint8)
    scl[100:150, 10:60] = 9
    write_geotiff(img / "R20m" / "T30_20200101_SCL_20m.tif", scl, crs=crs,
                  transform=transform @ rasterio.Affine.scale(2))  # type: ignore[arg-type]  # fmt: skip
    out = tmp_path / "l2a.tif"
    res = predict({"optical": tmp_path / "S2B_MSIL2A.SAFE", "sar": CHIP / "S1.tif"}, out, str(main),
                  bands={"optical": ["B4", "B3", "B2", "B8"], "sar": [1]}, engine="torch",
                  device="cpu", progress=False, source=tmp_path / "src.tif")  # fmt: skip
    src = _source(tmp_path / "src.tif")
    cloud = np.kron(scl == 9, np.ones((2, 2), bool))
    assert (src[cloud] == 2).all() and (src[~cloud] == 1).all()
    assert res.sources["sar-only"] == pytest.approx(cloud.mean(), abs=1e-6)


def test_cli_fallback_flag_names_the_fallback(
    runner,  # type: ignore[no-untyped-def]
    models: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    """``--fallback optical=MODEL`` on the command line; ``--no-fallback`` leaves the hole
    nodata; a malformed value is one line."""
    from dataclasses import replace

    from tiny_net import ContextNet as CtxNet

    from mfaf_cli.io import weights as W

    main, sar = models
    plain = replace(W.read_meta(main), fallbacks={})
    W.save_checkpoint(CtxNet(plain.in_channels, 2), plain, main)  # no fallback in the record
    with rasterio.open(CHIP / "S2.tif") as ds:
        data, profile, desc = ds.read(), ds.profile, ds.descriptions
    data[:, HOLE[0], HOLE[1]] = 0
    with rasterio.open(tmp_path / "hole.tif", "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = desc
    args = ["predict", "--optical", tmp_path / "hole.tif", "--sar", CHIP / "S1.tif",
            "--optical-bands", "4,3,2,8", "--sar-bands", "1", "--model", main,
            "--engine", "torch", "--device", "cpu", "-q"]  # fmt: skip
    code, out, err = runner(*args, "-o", tmp_path / "a.tif", "--fallback", f"optical={sar}",
                            "--source", tmp_path / "s.tif", "--json")  # fmt: skip
    assert code == 0, err
    src = _source(tmp_path / "s.tif")
    assert (src[HOLE] == 2).all()
    sources = json.loads(out.strip().splitlines()[-1])["sources"]
    assert sources["sar-only"] == pytest.approx(float((src == 2).mean()), abs=1e-6)
    code, _, err = runner(*args, "-o", tmp_path / "b.tif", "--no-fallback")
    with rasterio.open(tmp_path / "b.tif") as ds:
        assert code == 0 and (ds.read(1)[HOLE] == 255).all()
    code, _, err = runner(*args, "-o", tmp_path / "c.tif", "--fallback", "clouds=x")
    assert code == 2 and "MISSING=MODEL" in err and not (tmp_path / "c.tif").exists()

"""Several files per modality (Sentinel-2 band files at 10/20/60 m) stacked on the fly, and
Sentinel-2 folders whose bands are picked by name. Data: tests/data/bigearthnet_crop."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio

from mfaf_cli.coreg import stack as S
from mfaf_cli.errors import CRSError, InputError, UsageError

DATA = Path(__file__).parent / "data" / "bigearthnet_crop"
PATCH = "S2A_MSIL2A_20170613T101031_87_48"
VV = DATA / "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48_VV.tif"


def band(b: str) -> Path:
    return DATA / f"{PATCH}_{b}.tif"


def read(path: Path, k: int = 1) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(k).astype(np.float64)


# ---- pure helpers ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("T29SND_20200101T112431_B12_20m.jp2", ("B12", 20)),
        ("T29SND_20200101T112431_B08_10m", ("B8", 10)),
        (f"{PATCH}_B8A.tif", ("B8A", None)),
        (f"{PATCH}_B01.tif", ("B1", None)),
        ("MSIL2A_TCI_10m.jp2", None),
        ("B13.tif", None),
    ],
)
def test_s2_band_of_file_names(name: str, want) -> None:
    assert S.s2_band_of(name) == want


def test_canonical_band_and_names() -> None:
    assert [S.canonical_band(b) for b in ("B08", "b8", "nir", "swir", "B8A", "VV")] == [
        "B8", "B8", "B8", "B12", "B8A", "VV",
    ]  # fmt: skip
    assert S.band_names("x/T1_B04_10m.jp2", [None]) == ("B4",)
    assert S.band_names("s1_VV.tif", [None]) == ("VV",)
    assert S.band_names("rgb.tif", ["B04", None]) == ("B4", "rgb:2")


def _info(path: str, res: float, n: int, crs: str = "EPSG:32633") -> S.FileInfo:
    from rasterio.crs import CRS

    return S.FileInfo(
        path, CRS.from_string(crs).to_wkt(), (res, 0.0, 1000.0, 0.0, -res, 2000.0), n, n,
        ("uint16",), (None,), (Path(path).stem,),
    )  # fmt: skip


def test_grid_choice_and_vrt_rectangles() -> None:
    infos = [_info("B12.tif", 20.0, 30), _info("B04.tif", 10.0, 60), _info("B01.tif", 60.0, 10)]
    assert S.pick_grid(infos, None) == 1 and S.pick_grid(infos, "coarsest") == 2
    assert S.pick_grid(infos, "1") == 0 and S.pick_grid(infos, "B01.tif") == 2
    with pytest.raises(UsageError, match=r"finest, coarsest, 1\.\.3"):
        S.pick_grid(infos, "nope")
    xml = S.stack_vrt_xml(infos, 1)
    assert 'rasterXSize="60" rasterYSize="60"' in xml and xml.count("<VRTRasterBand") == 3
    # the 20 m file covers the whole 10 m grid: 60 x 60 destination pixels, bilinear
    assert '<DstRect xOff="0.0" yOff="0.0" xSize="60.0" ySize="60.0"/>' in xml
    assert xml.count('resampling="bilinear"') == 2 and xml.count('resampling="nearest"') == 1
    coarse = S.stack_vrt_xml(infos, 2)  # on the 60 m grid the finer files are averaged
    assert coarse.count('resampling="average"') == 2
    with pytest.raises(CRSError, match="share a CRS"):
        S.stack_vrt_xml([*infos, _info("x.tif", 10.0, 60, "EPSG:32629")], 0)


# ---- stacking real Sentinel-2 band files ----------------------------------------------------
def test_coregister_stacks_band_files_on_the_finest_grid(tmp_path: Path, runner) -> None:
    files = [band("B12"), band("B08"), band("B04")]
    args = [a for f in files for a in ("--optical", f)]
    code, _, err = runner("coregister", *args, "--sar", VV, "-o", tmp_path / "a", "-q")
    assert code == 0, err
    with rasterio.open(tmp_path / "a" / "optical.tif") as ds:
        assert ds.count == 3 and ds.res == (10.0, 10.0) and ds.descriptions == ("B12", "B8", "B4")
        stack = ds.read().astype(np.float64)
    np.testing.assert_array_equal(stack[1], read(band("B08")))  # same grid: values as they are
    np.testing.assert_array_equal(stack[2], read(band("B04")))
    # 20 m upsampled bilinearly: a 10 m pixel centre lies a quarter of a 20 m pixel from the
    # nearest 20 m centre, so (per axis) 0.75 of that pixel + 0.25 of its neighbour
    b12 = read(band("B12"))
    up = np.repeat(b12, 2, axis=0)
    nb = np.empty_like(up)
    nb[0::2], nb[1::2] = np.roll(b12, 1, axis=0), np.roll(b12, -1, axis=0)
    rows = 0.75 * up + 0.25 * nb
    up = np.repeat(rows, 2, axis=1)
    nb = np.empty_like(up)
    nb[:, 0::2], nb[:, 1::2] = np.roll(rows, 1, axis=1), np.roll(rows, -1, axis=1)
    want = 0.75 * up + 0.25 * nb
    np.testing.assert_allclose(stack[0][2:-2, 2:-2], want[2:-2, 2:-2], atol=0.5 + 1e-9)
    # the grid of the user's choice: the 20 m file's
    code, _, err = runner("coregister", *args, "-o", tmp_path / "b", "--stack-grid", "1", "-q")
    assert code == 0, err
    with rasterio.open(tmp_path / "b" / "optical.tif") as ds:
        assert ds.res == (20.0, 20.0) and ds.shape == (30, 30)
        np.testing.assert_array_equal(ds.read(1), b12)


def _l2a_folder(root: Path) -> Path:
    """An L2A-like SAFE: R10m/R20m/R60m JP2 files named like ESA's, plus a quality mask."""
    img = root / "S2A_MSIL2A_20170613T101031.SAFE" / "GRANULE" / "L2A_T33UUP" / "IMG_DATA"
    for res, names in ((10, ("B02", "B04", "B08")), (20, ("B04", "B11", "B12")), (60, ("B01",))):
        (img / f"R{res}m").mkdir(parents=True, exist_ok=True)
        for b in names:
            src = band(b) if (b != "B04" or res == 10) else band("B12")  # a decoy 20 m B04
            with rasterio.open(src) as ds:
                prof = ds.profile | {"driver": "JP2OpenJPEG", "QUALITY": 100, "REVERSIBLE": "YES"}
                for k in ("compress", "tiled", "interleave", "blockxsize", "blockysize"):
                    prof.pop(k, None)
                dst = img / f"R{res}m" / f"T33UUP_20170613T101031_{b}_{res}m.jp2"
                with rasterio.open(dst, "w", **prof) as out:
                    out.write(ds.read())
    qi = root / "S2A_MSIL2A_20170613T101031.SAFE" / "GRANULE" / "L2A_T33UUP" / "QI_DATA"
    qi.mkdir()
    shutil.copy(band("B04"), qi / "MSK_DETFOO_B04.tif")
    return root / "S2A_MSIL2A_20170613T101031.SAFE"


def test_s2_folder_bands_by_name_finest_first(tmp_path: Path) -> None:
    safe = _l2a_folder(tmp_path)
    found = S.find_s2_bands(safe)
    assert list(found) == ["B1", "B2", "B4", "B8", "B11", "B12"]
    assert found["B4"].name == "T33UUP_20170613T101031_B04_10m.jp2"  # not the 20 m one
    picked = S.pick_s2_files(safe, ["swir", "nir", "B04"], "optical")
    assert [p.name[-12:] for p in picked] == ["_B12_20m.jp2", "_B08_10m.jp2", "_B04_10m.jp2"]
    with pytest.raises(InputError, match="no band 'B5'"):
        S.pick_s2_files(safe, ["B5"], "optical")
    with pytest.raises(UsageError, match="picked by name"):
        S.pick_s2_files(safe, [4], "optical")
    with pytest.raises(InputError, match="holds no Sentinel-2 band files"):
        S.pick_s2_files(tmp_path / "S2A_MSIL2A_20170613T101031.SAFE" / "GRANULE" / "L2A_T33UUP"
                        / "QI_DATA", None, "optical")  # fmt: skip


@pytest.fixture(scope="module")
def swir_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained-flagged U-Net that takes optical (swir, nir, red) + sar (vv)."""
    from mfaf_cli import registry
    from mfaf_cli.io.weights import save_checkpoint

    meta = registry.default_meta("unet", {"optical": 3, "sar": 1}, 2, base_width=4)
    mods = (
        replace(meta.modalities[0], bands=("swir", "nir", "red"), meanings=("swir", "nir", "red")),
        replace(meta.modalities[1], bands=("vv",)),
    )
    meta = replace(meta, modalities=mods, trained=True, tile_size=32)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = registry.create_model("unet", meta.in_channels, 2, **meta.config)
    return save_checkpoint(model, meta, tmp_path_factory.mktemp("w") / "swir.safetensors")


def test_predict_from_band_files_folder_and_batch_cells_agree(
    tmp_path: Path, runner, swir_ckpt: Path
) -> None:
    common = ["--sar", VV, "--model", swir_ckpt, "--tile", "32", "-q"]
    files = [band("B12"), band("B08"), band("B04")]
    code, _, err = runner(
        "predict", *[a for f in files for a in ("--optical", f)], *common, "-o", tmp_path / "f.tif"
    )
    assert code == 0, err
    # the same bands as one pre-stacked file (what coregister writes)
    code, _, err = runner(
        "coregister", *[a for f in files for a in ("--optical", f)], "-o", tmp_path / "c", "-q"
    )
    assert code == 0, err
    code, _, err = runner(
        "predict", "--optical", tmp_path / "c" / "optical.tif", *common, "-o", tmp_path / "s.tif"
    )
    assert code == 0, err
    ref = read(tmp_path / "s.tif")
    np.testing.assert_array_equal(read(tmp_path / "f.tif"), ref)
    # a Sentinel-2 folder: the model's bands (swir, nir, red = B12, B8, B4) picked by name
    safe = _l2a_folder(tmp_path / "safe")
    code, _, err = runner("predict", "--optical", safe, *common, "-o", tmp_path / "d.tif")
    assert code == 0, err
    np.testing.assert_array_equal(read(tmp_path / "d.tif"), ref)
    # batch CSV cells a.tif;b.tif;c.tif
    (tmp_path / "scenes.csv").write_text(
        "optical,sar,output\n" + ";".join(map(str, files)) + f",{VV},out/b.tif\n"
    )
    code, _, err = runner(
        "predict", "--batch", tmp_path / "scenes.csv", "--model", swir_ckpt, "--tile", "32", "-q"
    )
    assert code == 0, err
    np.testing.assert_array_equal(read(tmp_path / "out" / "b.tif"), ref)


def test_stack_errors_are_one_line(tmp_path: Path, runner) -> None:
    code, _, err = runner("coregister", "--optical", band("B04"), "--optical", tmp_path / "x.tif",
                          "-o", tmp_path / "o")  # fmt: skip
    assert code == 1 and "does not exist" in err and len(err.strip().splitlines()) == 1
    code, _, err = runner("coregister", "--optical", tmp_path, "-o", tmp_path / "o")
    assert code == 1 and "holds no Sentinel-2 band files" in err

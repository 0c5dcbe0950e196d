"""Band identity from training to predict (issue 18 items 1, 2, 6; issue 20 item 4).

A run trained on B12, B8, B4 of 13-band Sentinel-2 files records those bands by name; predict
with the checkpoint on the 13-band file picks the same bands (the labels equal a run with
explicit ``--optical-bands B12,B8,B4``); one band grammar in ``--bands``, config files and scene
lists; a record without band names asks for explicit bands; SAR bands from file names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import TEST_DATA, write_geotiff
from rasterio.transform import from_origin

from mfaf_cli.bandspec import parse_band_list, parse_bands_table, parse_modality_bands
from mfaf_cli.coreg.stack import band_of_file_name
from mfaf_cli.data.bands import recorded_names
from mfaf_cli.io.weights import read_meta

S2 = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
TINY = ["--model-opt", "base_width=4", "--tile", "32", "--batch-size", "2", "--epochs", "1", "-q"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _scenes(root: Path, described: bool = True, shape: tuple[int, int] = (48, 64)) -> Path:
    """Two scenes: a 13-band S2 L1C stack (band descriptions B1..B12), a one-band SAR file
    named ``..._VV.tif`` (no description), water labels where B12 is low."""
    rng = np.random.default_rng(5)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["id,optical,sar,label,split"]
    for k in range(2):
        t = from_origin(600_000.0 + 5000 * k, 4_000_000.0, 10, 10)
        lab = (rng.random(shape) < 0.4).astype(np.uint8)
        opt = (rng.random((13, *shape)) * 800 + 500).astype(np.float32)
        dry = (1 - lab).astype(np.float32)
        opt[12] += dry * 1500  # B12: dry land bright
        opt[7] += dry * 900  # B8
        sar = (-18 + 8 * dry + rng.normal(0, 1, lab.shape)).astype(np.float32)  # water dark
        write_geotiff(
            root / f"s2_{k}.tif", opt, transform=t, descriptions=S2 if described else None
        )
        write_geotiff(root / f"s{k}_VV.tif", sar, transform=t)
        write_geotiff(root / f"gt{k}.tif", lab, transform=t)
        rows.append(f"s{k},s2_{k}.tif,s{k}_VV.tif,gt{k}.tif,{'train' if k == 0 else 'val'}")
    (root / "scenes.csv").write_text("\n".join(rows) + "\n")
    return root / "scenes.csv"


def _run(*args: object) -> tuple[int, str, str]:
    """``mfaf ARGS`` in-process, as the ``runner`` fixture (usable from a module fixture)."""
    from click.testing import CliRunner

    from mfaf_cli.cli.main import main

    with CliRunner().isolation() as streams:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, streams[0].getvalue().decode(), streams[1].getvalue().decode()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny U-Net trained with ``--bands optical=B12,B8,B4`` (no SAR band list)."""
    tmp = tmp_path_factory.mktemp("band-id")
    scenes = _scenes(tmp / "scenes")
    out = tmp / "run"
    args = ["train", "--dataset", "folder", "--data-root", scenes, "--model", "unet", "-o", out,
            "--bands", "optical=B12,B8,B4", *TINY]  # fmt: skip
    code, _, err = _run(*args)
    assert code == 0, err
    return out / "last.safetensors", scenes.parent


def test_record_names_the_trained_bands_and_info_shows_them(trained, runner) -> None:
    ckpt, _ = trained
    meta = read_meta(ckpt)
    opt, sar = meta.modality("optical"), meta.modality("sar")
    assert (opt.bands, opt.meanings) == (("B12", "B8", "B4"), ("swir", "nir", "red"))
    assert (sar.bands, sar.meanings) == (("VV",), ("vv",))  # from the file name ..._VV.tif
    code, out, err = runner("info", ckpt)
    assert code == 0, err
    assert "optical: bands B12 (swir), B8 (nir), B4 (red)" in out
    assert "sar: bands VV (vv)" in out


def test_predict_picks_the_recorded_bands_by_name(trained, tmp_path: Path, runner) -> None:
    ckpt, data = trained
    common = ["--optical", data / "s2_1.tif", "--sar", data / "s1_VV.tif", "-m", ckpt, "-q"]
    code, out, err = runner("predict", *common, "-o", tmp_path / "auto.tif", "--json")
    assert code == 0, err
    picked = json.loads(out)["bands"]["optical"]
    assert picked["indexes"] == [13, 8, 4] and picked["picked_by"] == "band descriptions"
    code, _, err = runner(
        "predict", *common, "-o", tmp_path / "explicit.tif", "--optical-bands", "B12,B8,B4"
    )
    assert code == 0, err
    with rasterio.open(tmp_path / "auto.tif") as a, rasterio.open(tmp_path / "explicit.tif") as b:
        auto, explicit = a.read(1), b.read(1)
    assert np.array_equal(auto, explicit)
    code, _, err = runner(
        "predict", *common, "-o", tmp_path / "rgb.tif", "--optical-bands", "4,3,2"
    )
    assert code == 0, err
    with rasterio.open(tmp_path / "rgb.tif") as c:
        assert c.read(1).shape == auto.shape  # the explicit override is taken as given


def test_recorded_bands_absent_from_the_input_fail_cleanly(trained, tmp_path: Path, runner) -> None:
    ckpt, data = trained
    with rasterio.open(data / "s2_1.tif") as ds:
        rgb = ds.read([4, 3, 2])
        t = ds.transform
    write_geotiff(tmp_path / "rgb.tif", rgb, transform=t, descriptions=["B4", "B3", "B2"])
    out = tmp_path / "m.tif"
    code, _, err = runner(
        "predict", "--optical", tmp_path / "rgb.tif", "--sar", data / "s1_VV.tif", "-m", ckpt,
        "-o", out,
    )  # fmt: skip
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert "(1=B4, 2=B3, 3=B2) name no swir (B12), nir (B8)" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "rgb.tif"]


def test_vh_file_for_a_vv_model_is_an_error_unless_numbered(
    trained, tmp_path: Path, runner
) -> None:
    ckpt, data = trained
    vh = tmp_path / "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48_VH.tif"
    shutil.copy(data / "s1_VV.tif", vh)
    base = ["predict", "--optical", data / "s2_1.tif", "--sar", vh, "-m", ckpt]
    code, _, err = runner(*base, "-o", tmp_path / "m.tif")
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert f"the band descriptions of {vh.name} (1=VH) name no vv (VV)" in err
    assert "takes 1 sar band: vv ≈ Sentinel-1 VV" in err and "--sar-bands with" in err
    assert not (tmp_path / "m.tif").exists()
    code, _, err = runner(*base, "-o", tmp_path / "m.tif", "--sar-bands", "VV")
    assert code != 0 and "no band of" in err and "1=VH" in err
    code, out, err = runner(*base, "-o", tmp_path / "m.tif", "--sar-bands", "1", "--json")
    assert code == 0, err
    (warning,) = json.loads(out)["bands"]["sar"]["warnings"]  # the override is warned about
    assert warning.endswith("the map may be meaningless")


def test_sar_bands_by_file_name_on_the_real_bigearthnet_crop(tmp_path: Path, runner) -> None:
    """The shipped VV model on the real BigEarthNet crop: ``--sar ..._VV.tif --sar-bands VV``
    (the README's pattern) works; the ``..._VH.tif`` file is refused in one line naming it and
    the band the model needs; a folder of VV/VH files is accepted like an S2 folder, and picks
    the same VV file."""
    crop = TEST_DATA / "bigearthnet_crop"
    vv, vh = (crop / f"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48_{p}.tif" for p in ("VV", "VH"))
    base = ["predict", "--optical", crop, "-q"]

    def labels(name: str, *args: object) -> np.ndarray:
        code, _, err = runner(*base, *args, "-o", tmp_path / name)
        assert code == 0, err
        with rasterio.open(tmp_path / name) as ds:
            return ds.read(1)

    named = labels("named.tif", "--sar", vv, "--sar-bands", "VV")
    assert np.array_equal(named, labels("vv.tif", "--sar", vv))
    assert np.array_equal(named, labels("folder.tif", "--sar", crop))  # picks VV of VV + VH
    code, _, err = runner(*base, "--sar", vh, "-o", tmp_path / "vh.tif")
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert f"the band descriptions of {vh.name} (1=VH) name no vv (VV)" in err
    assert not (tmp_path / "vh.tif").exists()
    code, _, err = runner(*base, "--sar", vh, "--sar-bands", "VV", "-o", tmp_path / "vh.tif")
    assert code != 0 and "'VV': no band of" in err and not (tmp_path / "vh.tif").exists()
    assert labels("override.tif", "--sar", vh, "--sar-bands", "1").shape == named.shape


def test_sentinel1_folders(tmp_path: Path) -> None:
    from mfaf_cli.coreg.stack import find_s1_bands, pick_s1_files
    from mfaf_cli.errors import InputError, UsageError

    safe = tmp_path / "S1A_IW_GRDH_1SDV_20170613T165043.SAFE" / "measurement"
    safe.mkdir(parents=True)
    src = TEST_DATA / "bigearthnet_crop" / "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48_VV.tif"
    for pol in ("vh", "vv"):
        shutil.copy(src, safe / f"s1a-iw-grd-{pol}-20170613t165043-20170613t165108-017042-001.tiff")
    assert list(find_s1_bands(safe.parent)) == ["VV", "VH"]
    assert [p.name[11:13] for p in pick_s1_files(safe.parent, ["vv"], "sar")] == ["vv"]
    with pytest.raises(UsageError, match="picked by name"):
        pick_s1_files(safe.parent, [1], "sar")
    with pytest.raises(InputError, match="has no HH file; it has VV, VH"):
        pick_s1_files(safe.parent, ["HH"], "sar")
    shutil.copy(src, safe / "vv.tif")
    with pytest.raises(InputError, match="two VV files"):
        find_s1_bands(safe.parent)


@pytest.mark.parametrize(
    ("name", "band"),
    [
        ("S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48_VV.tif", "VV"),
        ("S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48_VH.tif", "VH"),
        ("s1a-iw-grd-vh-20170613t165043-20170613t165108-017042-01c6b2-002.tiff", "VH"),
        ("s1a-iw-grd-vv-20170613t165043-20170613t165108-017042-01c6b2-001.tiff", "VV"),
        ("vv.tif", "VV"),
        ("VH.TIF", "VH"),
        ("T33UUP_20170613T101031_B08_10m.jp2", "B8"),
        ("S1_VV_VH.tif", None),  # two polarisations named: says nothing
        ("s1a-iw-grd-20170613.tif", None),
        ("savvy.tif", None),
    ],
)
def test_band_of_file_name(name: str, band: str | None) -> None:
    assert band_of_file_name(name) == band


def test_one_band_grammar() -> None:
    assert parse_band_list("B12,B8,B4", "--x") == ["B12", "B8", "B4"]
    assert parse_band_list(["B12", 8, "4"], "k") == ["B12", 8, 4]
    assert parse_band_list(13, "k") == [13]
    assert parse_modality_bands(["optical=13,8,4", "sar=VV"]) == {
        "optical": [13, 8, 4],
        "sar": ["VV"],
    }
    # a TOML string is a comma list, never read letter by letter
    assert parse_bands_table({"optical": "B12,B8,B4"}, "[bands]") == {
        "optical": ["B12", "B8", "B4"]
    }
    with pytest.raises(
        ValueError, match=r"^train\.toml \[bands\] optical: band numbers start at 1"
    ):
        parse_bands_table({"optical": [0, 1]}, "train.toml [bands]")
    with pytest.raises(ValueError, match=r"train\.toml \[bands\] radar: unknown modality"):
        parse_bands_table({"radar": "1"}, "train.toml [bands]")
    with pytest.raises(ValueError, match="empty item"):
        parse_band_list("B12,,B4", "--optical-bands")


def test_recorded_names() -> None:
    descr = ("B12", "B08", "")
    assert recorded_names("optical", (13, 8, 4), descr, ["swir", 8, 4]) == ("swir", "B8", "b4")
    assert recorded_names("optical", (3, 2, 1), ("", "", "Band 1"), None) == ("b3", "b2", "b1")
    assert recorded_names("sar", (1,), ("VV",), None) == ("VV",)
    assert recorded_names("lidar", (1,), ("elevation_m",), None) == ("dsm",)
    assert recorded_names("lidar", (2,), ("intensity",), None) == ("intensity",)


def test_a_record_without_names_needs_explicit_bands(tmp_path: Path, runner) -> None:
    """Trained on bands 3,2,1 of undescribed files: predict says which indexes to pass."""
    data = _scenes(tmp_path / "scenes", described=False).parent
    out = tmp_path / "run"
    code, _, err = runner(
        "train", "--dataset", "folder", "--data-root", data / "scenes.csv", "--model", "unet",
        "-o", out, "--bands", "optical=13,8,4", "--bands", "sar=1", *TINY,
    )  # fmt: skip
    assert code == 0, err
    spec = read_meta(out / "last.safetensors").modality("optical")
    assert spec.bands == ("b13", "b8", "b4") and spec.meanings == ("", "", "")
    common = ["predict", "--optical", data / "s2_1.tif", "--sar", data / "s1_VV.tif",
              "-m", out / "last.safetensors"]  # fmt: skip
    code, _, err = runner(*common, "-o", tmp_path / "m.tif")
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert "trained on optical bands 13,8,4 of its training files" in err
    assert "--optical-bands 13,8,4" in err and not (tmp_path / "m.tif").exists()
    code, _, err = runner(*common, "-o", tmp_path / "m.tif", "--optical-bands", "13,8,4")
    assert code == 0, err


def test_scene_list_toml_bands_string_and_bad_band_names(tmp_path: Path, runner) -> None:
    data = _scenes(tmp_path / "scenes").parent
    toml = data / "scenes.toml"
    toml.write_text(
        '[bands]\noptical = "13,8,4"\n'
        + "".join(
            f'[[scene]]\nid = "s{k}"\noptical = "s2_{k}.tif"\nsar = "s{k}_VV.tif"\n'
            f'label = "gt{k}.tif"\nsplit = "{"train" if k == 0 else "val"}"\n'
            for k in range(2)
        )
    )
    out = tmp_path / "run"
    code, _, err = runner("train", "--dataset", "folder", "--data-root", toml, "--model", "unet",
                          "-o", out, *TINY)  # fmt: skip
    assert code == 0, err
    assert read_meta(out / "last.safetensors").modality("optical").bands == ("B12", "B8", "B4")
    bad = tmp_path / "bad"
    code, _, err = runner("train", "--dataset", "folder", "--data-root", toml, "--model", "unet",
                          "-o", bad, "--bands", "optical=B12,B13,B4", *TINY)  # fmt: skip
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert "--bands optical=B12,B13,B4 'B13': no band of s2_0.tif" in err
    assert not bad.exists()
    toml.write_text(toml.read_text().replace('"13,8,4"', '"B12,B13"'))
    code, _, err = runner("train", "--dataset", "folder", "--data-root", toml, "--model", "unet",
                          "-o", bad, *TINY)  # fmt: skip
    assert code != 0 and f"{toml} [bands] optical 'B13'" in err, err
    assert not bad.exists()


# ---- runs that move (issue 18 item 6) ---------------------------------------------------------
def test_resume_from_another_folder_and_per_split_pixels(
    tmp_path: Path, runner, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Relative paths at train time, ``--resume /abs/run`` from elsewhere; a window-level split
    (2 scenes, no split column) reports each split's own labelled pixels; its warning once."""
    work = tmp_path / "work"
    data = _scenes(work / "scenes", shape=(64, 96))  # tile 32: windows do not overlap
    rows = data.read_text().splitlines()
    data.write_text("\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")  # no split column
    monkeypatch.chdir(work)
    tiny = [a if a != "1" else "2" for a in TINY]  # --epochs 2
    with caplog.at_level("WARNING", logger="mfaf.data"):
        code, out, err = runner("train", "--dataset", "folder", "--data-root", "scenes",
                                "--model", "unet", "-o", "run", "--stop-after", "1", "--json",
                                *tiny)  # fmt: skip
    assert code == 0, err
    splits = json.loads(out)["splits"]
    px = {k: v["labelled_pixels"] for k, v in splits.items()}
    assert sum(px.values()) == 2 * 64 * 96, px  # every labelled pixel in exactly one split
    assert min(px.values()) > 0 and px["train"] > px["val"]
    said = [r.getMessage() for r in caplog.records if "fewer than 3 scenes" in r.getMessage()]
    assert len(said) == 1, said
    saved = (work / "run" / "config.toml").read_text()
    assert f'data_root = "{work / "scenes"}"' in saved and f'out = "{work / "run"}"' in saved
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = runner("train", "--resume", work / "run", "--json", "-q")
    assert code == 0, err
    assert json.loads(out)["epochs"] == 2 and list(elsewhere.iterdir()) == []


def test_config_file_bands_use_the_same_grammar(tmp_path: Path) -> None:
    from mfaf_cli.errors import UsageError
    from mfaf_cli.training.config import load_config_file

    cfg = tmp_path / "train.toml"
    cfg.write_text('[bands]\noptical = "B12,B8,B4"\nsar = [1]\n')
    assert load_config_file(cfg)["bands"] == {"optical": ["B12", "B8", "B4"], "sar": [1]}
    cfg.write_text('[bands]\noptical = "B12,,B4"\n')
    with pytest.raises(UsageError, match=rf"^config file {cfg} \[bands\] optical: .*empty item"):
        load_config_file(cfg)


def test_ombria_bands_are_fixed(tmp_path: Path) -> None:
    from mfaf_cli.data.registry import open_dataset
    from mfaf_cli.errors import UsageError

    with pytest.raises(UsageError, match="ombria dataset's bands are fixed"):
        open_dataset("ombria", tmp_path, "train", bands={"optical": [1, 2, 3]})

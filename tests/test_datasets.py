"""Datasets built as tiny scenes in each supported layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_geotiff
from dataset_builders import make_folder, make_ombria, make_sen1floods11, make_whu_sheets
from PIL import Image
from rasterio.transform import from_origin

from mfaf_cli.data.datasets import (
    grid_offsets,
    open_dataset,
    parse_split_file,
    seeded_holdout,
)
from mfaf_cli.errors import DatasetError, LabelError, ModalityError
from mfaf_cli.normalize import apply_normalisation, band_percentiles, stretched_moments


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- builders (also used by test_train / test_evaluate) -----------------------------------


def test_seeded_holdout_and_grid_offsets() -> None:
    ids = [f"{i:03d}" for i in range(20)]
    kept, held = seeded_holdout(ids, 0.15, seed=7)
    assert len(held) == 3 and not set(kept) & set(held) and sorted(kept + held) == ids
    assert seeded_holdout(ids, 0.15, seed=7) == (kept, held)  # reproducible
    assert seeded_holdout(ids, 0.15, seed=8) != (kept, held)
    assert grid_offsets(80, 32) == [0, 32, 48]
    assert grid_offsets(64, 32) == [0, 32]
    assert grid_offsets(20, 32) == [0]


def test_parse_split_file_any_format() -> None:
    text = "Train set:\nNH1.tif NH2.tif\n\nTest set:\nNH3.tif\n"
    assert parse_split_file(text, ["NH1", "NH2", "NH3"]) == {
        "train": ["NH1", "NH2"],
        "val": [],
        "test": ["NH3"],
    }
    assert parse_split_file("train: nh2, NH1\ntest: NH3", ["NH1", "NH2", "NH3"])["train"] == [
        "NH2",
        "NH1",
    ]


# ---- OMBRIA ------------------------------------------------------------------------------------
def test_ombria_splits_samples_and_normalisation(tmp_path: Path) -> None:
    root = make_ombria(tmp_path / "ombria")
    train = open_dataset("ombria", root, "train", tile=16)
    val = open_dataset("ombria", root, "val")
    test = open_dataset("ombria", root, "test")
    assert (len(train), len(val), len(test)) == (7, 1, 3)
    assert not {i for _, i in train.items} & {i for _, i in val.items}
    assert train.in_channels == {"optical": 3, "sar": 1}
    assert train.band_names["optical"] == ("swir", "nir", "red")

    norms = train.compute_normalisation()
    # exactly normalize.stretched_moments over the training patches (per-patch percentiles)
    opt = [train.raw(i)[0]["optical"] for i in range(len(train))]
    mean, std = stretched_moments(opt, 2.0, 98.0)
    assert norms["optical"].mean == pytest.approx(tuple(mean))
    assert norms["optical"].std == pytest.approx(tuple(std))
    assert norms["optical"].mode == "scene-percentile"

    train.set_normalisation(norms)
    val.set_normalisation(norms)
    s = val[0]  # no augmentation: the full patch
    assert (
        s["inputs"]["optical"].shape == (3, 32, 32)
        and s["inputs"]["optical"].dtype == torch.float32
    )
    assert s["inputs"]["sar"].shape == (1, 32, 32)
    assert s["mask"].dtype == torch.int64 and set(s["mask"].unique().tolist()) <= {0, 1}
    # the normalised training split is standardised
    plain = open_dataset("ombria", root, "train", augment=False)
    plain.set_normalisation(norms)
    allx = torch.stack([plain[i]["inputs"]["optical"] for i in range(len(plain))])
    assert allx.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert allx.std(dim=(0, 2, 3)).sub(1).abs().max() < 0.02

    t = train[0]  # augmented training crop
    assert t["inputs"]["optical"].shape == (3, 16, 16) and t["mask"].shape == (16, 16)


def test_augmentation_is_joint(tmp_path: Path) -> None:
    root = make_ombria(tmp_path / "ombria")
    ds = open_dataset("ombria", root, "train", tile=32)
    ds.set_normalisation(ds.compute_normalisation())
    seen = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            # water is dark in every band: the mask must follow the image through rot/flip
            opt = s["inputs"]["optical"].mean(0)
            sar = s["inputs"]["sar"][0]
            m = s["mask"] == 1
            assert torch.equal(opt < (opt.max() + opt.min()) / 2, m)
            assert torch.equal(sar < (sar.max() + sar.min()) / 2, m)
            seen.add(tuple(s["mask"][0, :4].tolist()))
    ds.set_epoch(1)
    a, b = ds[2], ds[2]
    assert torch.equal(a["inputs"]["optical"], b["inputs"]["optical"])  # seeded per (epoch, idx)
    assert len(seen) > 1


def test_normalisation_removes_units(tmp_path: Path) -> None:
    """The same scene as 8-bit PNG values and as int16 reflectance normalises identically."""
    root = make_ombria(tmp_path / "ombria")
    ds = open_dataset("ombria", root, "test", augment=False)
    arrays, _, lohi = ds.raw(0)
    refl = arrays["optical"] * 37.0 + 250.0  # a different sensor scaling of the same scene
    norm = ds.compute_normalisation()["optical"]
    a = apply_normalisation(arrays["optical"], norm, *lohi["optical"])
    b = apply_normalisation(refl, norm, *band_percentiles(refl, None, 2, 98))
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_ombria_bad_layouts(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetError, match=r"unknown dataset 'ombrai'.*ombria, sen1floods11, whu, folder"
    ):
        open_dataset("ombrai", tmp_path, "train")
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset("ombria", tmp_path / "missing", "train")
    (tmp_path / "OmbriaS2" / "train" / "AFTER").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"expected .*OmbriaS1/train/AFTER"):
        open_dataset("ombria", tmp_path, "train")
    root = make_ombria(tmp_path / "o2", n_train=1)
    with pytest.raises(DatasetError, match=r"val split of ombria .* is empty"):
        open_dataset("ombria", root, "val")
    with pytest.raises(
        ModalityError, match="provides optical\\+sar, but the model takes hsi\\+lidar"
    ):
        open_dataset("ombria", root, "train", modalities=("hsi", "lidar"))


def test_ombria_missing_mask_is_counted_and_reported(tmp_path: Path, caplog) -> None:
    """Regression: a patch without a mask was skipped without a word."""
    root = make_ombria(tmp_path / "ombria", n_train=6, n_test=3)
    (root / "OmbriaS2" / "test" / "MASK" / "S2_mask_0101.png").unlink()
    (root / "OmbriaS1" / "test" / "AFTER" / "S1_after_0102.png").unlink()
    (root / "OmbriaS2" / "test" / "AFTER" / "notes.png").write_bytes(b"")
    with caplog.at_level("WARNING", logger="mfaf.data"):
        ds = open_dataset("ombria", root, "test")
    assert [i for _, i in ds.items] == ["0100"]
    mask_dir = root / "OmbriaS2" / "test" / "MASK"
    assert ds.skipped == {
        f"test ({root}): no mask S2_mask_<id>.png in {mask_dir}": 1,
        f"test ({root}): no S1_after_<id>.png in {root / 'OmbriaS1' / 'test' / 'AFTER'}": 1,
        f"test ({root}): PNG files in {root / 'OmbriaS2' / 'test' / 'AFTER'} not named "
        "S2_after_<digits>.png": 1,
    }
    text = caplog.text
    assert f"ombria test ({root}): 1 skipped, no mask S2_mask_<id>.png in {mask_dir} (0101)" in text
    assert "(0102)" in text and "(notes.png)" in text
    # a wrong layout names the file pattern it looks for
    (tmp_path / "bad" / "OmbriaS2" / "train" / "AFTER").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"OmbriaS1/train/AFTER holding S1_after_<digits>\.png"):
        open_dataset("ombria", tmp_path / "bad", "train")


def test_every_dataset_reports_what_it_skips(tmp_path: Path, caplog) -> None:
    s1f = make_sen1floods11(tmp_path / "s1f", ids=("Spain_1", "Spain_2", "Bolivia_3", "Peru_4"))
    (s1f / "LabelHand" / "Peru_4_LabelHand.tif").unlink()
    (s1f / "flood_test_data.csv").write_text("Spain_1_S1Hand.tif\nGhana_9_S1Hand.tif\n")
    whu = make_whu_sheets(tmp_path / "whu", sheets=("NH1", "NH2", "NH3", "NH4"))
    (whu / "SAR" / "NH4.tif").unlink()
    with caplog.at_level("WARNING", logger="mfaf.data"):
        ds = open_dataset("sen1floods11", s1f, "test")
        w = open_dataset("whu", whu, "all", tile=32)
    assert ds.ids == ["Spain_1"] and sorted(ds.skipped.values()) == [1, 1]
    assert "1 skipped, no <id>_LabelHand.tif (Peru_4)" in caplog.text
    assert "1 skipped, listed in flood_test_data.csv but not found (Ghana_9)" in caplog.text
    assert w.ids == ["NH1", "NH2", "NH3"]
    assert w.skipped == {f"{whu}: no <id>.tif in {whu / 'SAR'}": 1}
    assert f"whu {whu}: 1 skipped, no <id>.tif in {whu / 'SAR'} (NH4)" in caplog.text


def test_ombria_label_outside_table(tmp_path: Path) -> None:
    root = make_ombria(tmp_path / "ombria")
    bad = np.zeros((32, 32), dtype=np.uint8)
    bad[0, 0] = 128
    Image.fromarray(bad).save(root / "OmbriaS2" / "test" / "MASK" / "S2_mask_0101.png")
    with pytest.raises(LabelError, match=r"S2_mask_0101.png: mask values \[128\]"):
        open_dataset("ombria", root, "test").check_labels()


# ---- Sen1Floods11 ---------------------------------------------------------------------------
@pytest.mark.parametrize("flat", [False, True])
def test_sen1floods11_bands_nodata_and_labels(tmp_path: Path, flat: bool) -> None:
    root = make_sen1floods11(tmp_path / "s1f", flat=flat)
    ds = open_dataset("sen1floods11", root, "all")
    assert len(ds) == 3 and ds.band_names == {"optical": ("red", "green", "blue"), "sar": ("vv",)}
    i = ds.ids.index("Spain_1")
    arrays, mask, _ = ds.raw(i)
    import rasterio

    with rasterio.open(ds.files["Spain_1"]["optical"]) as src:
        b4 = src.read(4).astype(np.float32)
    np.testing.assert_array_equal(arrays["optical"][0, 5:], b4[5:])  # band 4 first = red
    assert np.isnan(arrays["optical"][:, 0, 0]).all()  # S2 nodata 0 → NaN
    assert np.isnan(arrays["sar"][0, 1, 1])
    assert mask[0, 0] == 255 and mask[1, 1] == 255  # invalid inputs ignored
    assert (mask[-1] == 255).all()  # label -1 ignored
    assert set(np.unique(mask).tolist()) == {0, 1, 255}
    nir = open_dataset("sen1floods11", root, "all", bands={"optical": [4, 3, 2, 8]})
    assert nir.band_names["optical"] == ("red", "green", "blue", "nir")
    scenes = ds.scenes()
    assert scenes[0].bands == {"optical": [4, 3, 2], "sar": [1]}


def test_sen1floods11_split_csv(tmp_path: Path) -> None:
    root = make_sen1floods11(tmp_path / "s1f")
    (root / "splits").mkdir()
    (root / "splits" / "flood_train_data.csv").write_text(
        "Spain_1_S1Hand.tif,Spain_1_LabelHand.tif\nBolivia_3_S1Hand.tif,Bolivia_3_LabelHand.tif\n"
    )
    (root / "splits" / "flood_valid_data.csv").write_text(
        "Spain_2_S1Hand.tif,Spain_2_LabelHand.tif\n"
    )
    (root / "splits" / "flood_test_data.csv").write_text("")
    assert open_dataset("sen1floods11", root, "train").ids == ["Bolivia_3", "Spain_1"]
    assert open_dataset("sen1floods11", root, "val").ids == ["Spain_2"]
    with pytest.raises(DatasetError, match=r"test split of sen1floods11 .* is empty"):
        open_dataset("sen1floods11", root, "test")


def test_sen1floods11_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(DatasetError, match=r"expected .*/S1Hand, .*/S2Hand and .*/LabelHand"):
        open_dataset("sen1floods11", tmp_path / "x", "train")


# ---- WHU-OPT-SAR ---------------------------------------------------------------------------
def test_whu_sheets_split_file_tiles_and_labels(tmp_path: Path) -> None:
    root = make_whu_sheets(tmp_path / "whu")
    (root / "The division of the dataset.txt").write_text(
        "train:\nNH1.tif\nNH2.tif\ntest:\nNH3.tif\n"
    )
    tr = open_dataset("whu", root, "train", tile=32)
    te = open_dataset("whu", root, "test", tile=32)
    va = open_dataset("whu", root, "val", tile=32)
    assert te.ids == ["NH3"] and sorted(tr.ids + va.ids) == ["NH1", "NH2"] and len(va.ids) == 1
    assert len(te) == 2 * 3  # rows [0, 28] x cols [0, 32, 48]
    assert te.in_channels == {"optical": 4, "sar": 1} and te.num_classes == 8
    arrays, mask, lohi = te.raw(5)  # sheet NH3, window (28, 48)
    import rasterio

    with rasterio.open(root / "Optical" / "NH3.tif") as src:
        full = src.read().astype(np.float32)
        np.testing.assert_array_equal(arrays["optical"], full[:, 28:60, 48:80])
        lo, _ = band_percentiles(full, None, 2, 98)  # per-sheet percentiles
    np.testing.assert_allclose(lohi["optical"][0], lo)
    with rasterio.open(root / "Lbl" / "NH3.tif") as src:
        raw = src.read(1)[28:60, 48:80]
    assert (mask[raw == 0] == 255).all()
    np.testing.assert_array_equal(mask[raw > 0], raw[raw > 0] // 10)
    te.check_labels()
    te.set_normalisation(tr.compute_normalisation())
    s = te[0]
    assert s["inputs"]["optical"].shape == (4, 32, 32)


def test_whu_seeded_split_and_bad_labels(tmp_path: Path) -> None:
    root = make_whu_sheets(
        tmp_path / "whu", names=("opt", "sar", "label"), sheets=("A", "B", "C", "D", "E")
    )
    parts = {s: open_dataset("whu", root, s, tile=32).ids for s in ("train", "val", "test")}
    assert sorted(i for v in parts.values() for i in v) == ["A", "B", "C", "D", "E"]
    assert all(parts.values())
    write_geotiff(
        root / "label" / "C.tif", np.full((60, 80), 85, np.uint8), transform=from_origin(0, 0, 5, 5)
    )
    ds = open_dataset("whu", root, "all", tile=32)
    with pytest.raises(LabelError, match=r"C.tif: label values \[85\]"):
        ds.check_labels()


def test_whu_wrong_layout_names_expected_folders(tmp_path: Path) -> None:
    (tmp_path / "w" / "optical").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"expected .*/sar, .*/lbl \(or label\)"):
        open_dataset("whu", tmp_path / "w", "train")


def test_whu_precut_layout(tmp_path: Path) -> None:
    root = tmp_path / "precut"
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2), ("test", 1)):
        for sub in ("opt", "sar", "lbl"):
            (root / split / sub).mkdir(parents=True)
        for i in range(n):
            name = f"NH1_{split}{i}.tif"
            write_geotiff(
                root / split / "opt" / name, rng.integers(0, 255, (4, 32, 32)).astype(np.uint8)
            )
            write_geotiff(
                root / split / "sar" / name, rng.integers(0, 255, (1, 32, 32)).astype(np.uint8)
            )
            write_geotiff(
                root / split / "lbl" / name, (rng.integers(1, 8, (32, 32)) * 10).astype(np.uint8)
            )
    lens = {s: len(open_dataset("whu", root, s, tile=32)) for s in ("train", "val", "test")}
    assert lens == {"train": 4, "val": 2, "test": 1}
    ds = open_dataset("whu", root, "train", tile=32)
    ds.set_normalisation(ds.compute_normalisation())
    assert ds[0]["mask"].max() <= 7 and ds[0]["mask"].min() >= 1


# ---- folder (scene list, co-registered on the fly) -----------------------------------------


def test_folder_csv_coregistered(tmp_path: Path) -> None:
    csv_path = make_folder(tmp_path / "scenes")
    tr = open_dataset("folder", csv_path, "train", tile=32, modalities=("hsi", "lidar"))
    va = open_dataset("folder", tmp_path / "scenes", "val", tile=32)
    assert tr.num_classes == 3 and tr.in_channels == {"hsi": 5, "lidar": 1}
    assert len(tr) == 2 * 2 and len(va) == 4
    tr.set_normalisation(tr.compute_normalisation())
    arrays, mask, _ = tr.raw(0)
    assert arrays["hsi"].shape == (5, 32, 32) and arrays["lidar"].shape == (1, 32, 32)
    assert (mask[0] == 255).all()  # label nodata row
    # LiDAR (5 m) was resampled onto the 10 m label grid: it still follows the label (×4)
    lid = arrays["lidar"][0]
    assert lid[mask == 2].mean() > lid[mask == 0].mean() + 4
    s = tr[1]
    assert s["inputs"]["hsi"].shape == (5, 32, 32)


def test_folder_toml_and_bad_labels(tmp_path: Path) -> None:
    make_folder(tmp_path / "s", split_column=False)
    toml = tmp_path / "s" / "scenes.toml"
    toml.write_text(
        'classes = ["grass", "road"]\n'
        '[[scene]]\nid = "a"\nhsi = "hsi0.tif"\nlidar = "dsm0.tif"\n'
        'label = "gt0.tif"\nsplit = "train"\n'
    )
    ds = open_dataset("folder", toml, "train", tile=32)
    assert [c.name for c in ds.classes] == ["grass", "road"]
    with pytest.raises(LabelError, match=r"label values \[2\] are outside the class table 0..1"):
        ds.check_labels()
    with pytest.raises(DatasetError, match=r"scenes\.toml: scene 1 has no 'label'"):
        toml.write_text('[[scene]]\nhsi = "hsi0.tif"\n')
        open_dataset("folder", toml, "train")


# ---- photometric jitter ------------------------------------------------------------------------
def test_photometric_jitter_is_identity_at_zero_and_bounded_otherwise() -> None:
    from mfaf_cli.data.datasets import photometric_jitter

    rng = np.random.default_rng(0)
    a = rng.uniform(100, 3000, (3, 16, 16)).astype(np.float32)
    a[0, 0, 0] = np.nan
    lohi = {"optical": (np.full(3, 200.0), np.full(3, 2800.0))}
    same_a, same_l = photometric_jitter({"optical": a}, lohi, rng, 0.0)
    assert same_a["optical"] is a and same_l is lohi

    out_a, out_l = photometric_jitter({"optical": a}, lohi, np.random.default_rng(1), 0.2)
    j = out_a["optical"]
    assert np.isnan(j[0, 0, 0]) and np.isfinite(j[:, 1:, 1:]).all()
    # gamma acts inside the stretch: values stay within the original bounds, order is kept
    assert np.nanmin(j) >= 200.0 - 1e-3 and np.nanmax(j) <= 2800.0 + 1e-3
    flat_a, flat_j = a[1].ravel(), j[1].ravel()
    inside = (flat_a > 200) & (flat_a < 2800)
    order = np.argsort(flat_a[inside])
    assert np.all(np.diff(flat_j[inside][order]) >= -1e-3)
    assert not np.allclose(j[:, 1:, 1:], a[:, 1:, 1:])
    lo, hi = out_l["optical"]
    assert np.all(np.abs(lo - 200.0) <= 0.2 * 2600 + 1e-6) and np.all(hi > lo)


def test_photometric_option_changes_training_samples_only(tmp_path: Path) -> None:
    root = make_ombria(tmp_path / "ombria")
    plain = open_dataset("ombria", root, "train", tile=32, seed=3)
    jit = open_dataset("ombria", root, "train", tile=32, seed=3, photometric=0.2)
    a, b = plain[0], jit[0]
    assert torch.equal(a["mask"], b["mask"])  # geometry untouched: same crop, flips, rotation
    assert not torch.allclose(a["inputs"]["optical"], b["inputs"]["optical"])
    again = open_dataset("ombria", root, "train", tile=32, seed=3, photometric=0.2)[0]
    assert torch.equal(again["inputs"]["sar"], b["inputs"]["sar"])  # seeded
    val_plain = open_dataset("ombria", root, "val")[0]
    val_jit = open_dataset("ombria", root, "val", photometric=0.2)[0]
    assert torch.equal(val_plain["inputs"]["optical"], val_jit["inputs"]["optical"])


# ---- the data/ rooms: shared transforms, class-level metadata, import graph ---------------------
def test_jitter_window_stays_inside_and_within_half_a_tile() -> None:
    from mfaf_cli.data.transforms import jitter_window

    assert jitter_window(32, 64, 100, 120, 32, None) == (32, 64)
    assert jitter_window(0, 0, 20, 20, 32, np.random.default_rng(0)) == (0, 0)  # sheet < tile
    rng = np.random.default_rng(3)
    moved = [jitter_window(32, 64, 100, 120, 32, rng) for _ in range(200)]
    rows, cols = np.array(moved).T
    assert rows.min() >= 16 and rows.max() <= 48 and cols.min() >= 48 and cols.max() <= 80
    assert len(set(moved)) > 20  # it does move
    edge = [jitter_window(68, 88, 100, 120, 32, rng) for _ in range(50)]
    assert max(r for r, _ in edge) == 68 and max(c for _, c in edge) == 88  # clipped at h-t, w-t


def test_random_crop_cuts_arrays_and_mask_at_the_same_place() -> None:
    from mfaf_cli.data.transforms import random_crop

    h, w = 40, 50
    pos = np.arange(h * w, dtype=np.float32).reshape(1, h, w)
    mask = np.arange(h * w, dtype=np.int64).reshape(h, w)
    out, m = random_crop({"a": pos}, mask, 16, 255, np.random.default_rng(1))
    assert out["a"].shape == (1, 16, 16) and m.shape == (16, 16)
    np.testing.assert_array_equal(out["a"][0].astype(np.int64), m)
    small, sm = random_crop({"a": pos[:, :8, :8]}, mask[:8, :8], 16, 255, np.random.default_rng(1))
    assert small["a"].shape == (1, 16, 16) and (sm[8:] == 255).all() and (sm[:, 8:] == 255).all()


def test_class_metadata_describes_what_an_opened_dataset_holds(tmp_path: Path) -> None:
    from mfaf_cli.data.folder import FolderDataset
    from mfaf_cli.data.ombria import OmbriaDataset
    from mfaf_cli.data.sen1floods11 import Sen1Floods11Dataset
    from mfaf_cli.data.whu import WhuPrecutDataset, WhuSheetDataset
    from mfaf_cli.metadata import WATER_CLASSES, WHU_CLASSES

    for cls in (OmbriaDataset, Sen1Floods11Dataset, WhuSheetDataset, WhuPrecutDataset):
        assert cls.all_modalities == ("optical", "sar") and cls.layout
        assert set(cls.all_bands) == set(cls.all_modalities)
    assert FolderDataset.all_modalities == ("optical", "sar", "hsi", "lidar")
    assert FolderDataset.class_table == ()  # from the user's scene list
    om = open_dataset("ombria", make_ombria(tmp_path / "om"), "all")
    assert om.band_names == OmbriaDataset.all_bands and om.classes == WATER_CLASSES
    assert om.units == OmbriaDataset.sensor_units == {"sar": "db"}
    s1f = open_dataset("sen1floods11", make_sen1floods11(tmp_path / "s1f"), "all")
    meanings = Sen1Floods11Dataset.all_bands["optical"]
    defaults = Sen1Floods11Dataset.default_bands["optical"]
    assert s1f.band_names["optical"] == tuple(meanings[b - 1] for b in defaults)
    whu = open_dataset("whu", make_whu_sheets(tmp_path / "whu"), "all", tile=32)
    assert isinstance(whu, WhuSheetDataset) and whu.classes == WHU_CLASSES
    assert whu.band_names["optical"] == WhuSheetDataset.all_bands["optical"]
    assert whu.summary()["sheets"] == 3 and om.summary()["patches"] == len(om)


def test_data_modules_import_no_circle() -> None:
    """The data/ rooms import downward only: their import graph has no cycle."""
    import ast

    import mfaf_cli.data

    folder = Path(mfaf_cli.data.__file__).parent
    graph: dict[str, set[str]] = {}
    for p in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "mfaf_cli.data."
            ):
                deps.add(node.module.rsplit(".", 1)[1])
        graph[p.stem] = deps
    assert graph["datasets"] and not graph["transforms"] and not graph["splits"]
    state: dict[str, int] = {}

    def visit(n: str, path: tuple[str, ...]) -> None:
        assert state.get(n) != 1, f"import circle {' -> '.join((*path, n))}"
        if state.get(n) == 2:
            return
        state[n] = 1
        for d in graph.get(n, ()):
            visit(d, (*path, n))
        state[n] = 2

    for n in graph:
        visit(n, ())

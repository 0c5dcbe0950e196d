"""Applicability rules with alternatives: a rule may read optical bands the model does not take
(by meaning, e.g. ``swir1`` = Sentinel-2 B11) when the user's input holds them and says so; the
first alternative whose bands the input holds runs, the last one reads the model's own bands."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import EXAMPLES
from tiny_net import TinyFusion, tiny_meta, use_tiny_builder

from mfaf_cli.applicability import Checks, rule_groups
from mfaf_cli.errors import UsageError
from mfaf_cli.io import weights as W
from mfaf_cli.metadata import ModelMeta
from mfaf_cli.pipeline.predict import predict

CHIP = EXAMPLES / "sen1floods11"
NDSI = "(green - swir1) / (green + swir1) >= 0.4 and nir > 1100"
FALLBACK = "red > 1500 and nir > 1500"
RULES = (("snow", NDSI), ("snow", FALLBACK), ("wet", "vv < -30"))


@pytest.fixture
def alt_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny model (optical red, green, blue, nir + VV) whose snow rule has two alternatives."""
    use_tiny_builder(monkeypatch)
    meta = tiny_meta(rules=RULES)
    torch.manual_seed(0)
    return W.save_checkpoint(TinyFusion(meta.in_channels, 2), meta, tmp_path / "m.safetensors")


def _chip_bands(*idx: int) -> np.ndarray:
    with rasterio.open(CHIP / "S2.tif") as ds:
        return ds.read(list(idx)).astype(np.float64)


def _codes(optical: object, out: Path, model: Path, **kw: object) -> tuple[np.ndarray, object]:
    r = predict({"optical": optical, "sar": CHIP / "S1.tif"}, out, str(model),
                exclusion=out.with_suffix(".ex.tif"), engine="torch", device="cpu",
                progress=False, overwrite=True, **kw)  # fmt: skip
    with rasterio.open(out.with_suffix(".ex.tif")) as ds:
        return ds.read(1), r


def _expected(red: np.ndarray, green: np.ndarray, nir: np.ndarray, swir1: np.ndarray | None,
              vv: np.ndarray) -> np.ndarray:  # fmt: skip
    out = np.zeros(red.shape, np.uint8)
    out[vv < -30] = 3
    with np.errstate(divide="ignore", invalid="ignore"):
        snow = ((red > 1500) & (nir > 1500) if swir1 is None
                else ((green - swir1) / (green + swir1) >= 0.4) & (nir > 1100))  # fmt: skip
    out[snow] = 2
    return out


def _vv() -> np.ndarray:
    with rasterio.open(CHIP / "S1.tif") as ds:
        return ds.read(1).astype(np.float64)


def test_the_first_alternative_whose_bands_the_input_holds_runs(
    alt_model: Path, tmp_path: Path
) -> None:
    """The 13-band chip describes its bands (B1..B12): B11 is found, the NDSI test runs."""
    codes, r = _codes(CHIP / "S2.tif", tmp_path / "a.tif", alt_model,
                      bands={"optical": [4, 3, 2, 8], "sar": [1]})  # fmt: skip
    red, green, nir, swir1 = _chip_bands(4, 3, 8, 12)
    valid = codes != 255
    want = _expected(red, green, nir, swir1, _vv())
    np.testing.assert_array_equal(codes[valid], want[valid])
    assert (want[valid] == 2).sum() != (_expected(red, green, nir, None, _vv())[valid] == 2).sum()
    rules = r.exclusion["rules"]  # type: ignore[attr-defined]
    assert rules["snow"] == {"expr": NDSI, "alternative": 1, "of": 2}
    assert rules["wet"]["alternative"] == 1 and rules["wet"]["of"] == 1


def test_an_input_with_only_the_models_bands_falls_back(alt_model: Path, tmp_path: Path) -> None:
    four = tmp_path / "four.tif"
    with rasterio.open(CHIP / "S2.tif") as ds:
        profile = ds.profile | {"count": 4}
        data = ds.read([4, 3, 2, 8])
    with rasterio.open(four, "w", **profile) as out:
        out.write(data)
        for k, name in enumerate(("B4", "B3", "B2", "B8"), 1):
            out.set_band_description(k, name)
    codes, r = _codes(four, tmp_path / "b.tif", alt_model)
    red, green, nir = (data[i].astype(np.float64) for i in (0, 1, 3))
    valid = codes != 255
    np.testing.assert_array_equal(codes[valid], _expected(red, green, nir, None, _vv())[valid])
    assert r.exclusion["rules"]["snow"]["alternative"] == 2  # type: ignore[attr-defined]


def test_a_sentinel2_folder_stacks_the_rules_extra_band(alt_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "S2_folder"
    folder.mkdir()
    with rasterio.open(CHIP / "S2.tif") as ds:
        profile = ds.profile | {"count": 1}
        for idx, name in ((4, "B04"), (3, "B03"), (2, "B02"), (8, "B08"), (12, "B11")):
            with rasterio.open(folder / f"T30TXM_20190101_{name}.tif", "w", **profile) as out:
                out.write(ds.read(idx), 1)
    codes, r = _codes(str(folder), tmp_path / "c.tif", alt_model)
    red, green, nir, swir1 = _chip_bands(4, 3, 8, 12)
    valid = codes != 255
    np.testing.assert_array_equal(codes[valid], _expected(red, green, nir, swir1, _vv())[valid])
    assert r.exclusion["rules"]["snow"]["alternative"] == 1  # type: ignore[attr-defined]


def test_a_rule_no_alternative_of_which_reads_only_the_models_bands_is_refused() -> None:
    meta = tiny_meta()
    for rules, words in (
        ((("snow", NDSI),), "reads swir1, which model tiny does not take"),
        ((("snow", FALLBACK), ("snow", NDSI)), "reads swir1, which model tiny does not take"),
        ((("hill", "dsm > 100"), ("hill", FALLBACK)), "of a modality model tiny does not take"),
        ((("snow", NDSI), ("snow", FALLBACK), ("wet", "vv < 0"), ("snow", FALLBACK)),
         "given twice"),
    ):  # fmt: skip
        with pytest.raises(UsageError, match=words):
            Checks.of(replace(meta, rules=rules))


def test_record_with_alternatives_round_trips_and_groups() -> None:
    meta = tiny_meta(rules=RULES)
    back = ModelMeta.from_json(meta.to_json())
    assert back == meta and back.rules == RULES
    groups = rule_groups(back.rules, back.modalities, back.arch)
    assert [[r.expr for r in g] for g in groups] == [[NDSI, FALLBACK], ["vv < -30"]]
    checks = Checks.of(back)
    assert checks.reasons == ["ok", "outside-training-range", "snow", "wet"]
    assert checks.extra_bands == ["swir1"] and [r.expr for r in checks.rules] == [FALLBACK,
                                                                                  "vv < -30"]


def test_info_shows_the_alternatives(alt_model: Path, runner) -> None:  # type: ignore[no-untyped-def]
    code, out, err = runner("info", alt_model)
    assert code == 0, err
    assert (f"rules:\n  snow: {NDSI}\n    else (if the input lacks those bands): {FALLBACK}\n"
            "  wet: vv < -30") in out  # fmt: skip


def test_shipped_snow_rule_reads_b3_b11_when_the_input_has_them() -> None:
    from mfaf_cli.io.weights import read_manifest

    entry = next(e for e in read_manifest() if e["default"])
    checks = Checks.of(W.read_meta(W.weights_dir() / entry["file"]))
    assert checks.extra_bands == ["green", "swir1"]
    assert checks.rules[0].bands == ("red", "swir", "nir")
    opt, (green, swir1) = _chip_bands(13, 8, 4), _chip_bands(3, 12)
    valid = (opt != 0).all(axis=0)
    raw = {"optical": opt, "optical+": np.stack([green, swir1]), "sar": _vv()[None]}
    full = checks.with_bands({"green": ("optical+", 0), "swir1": ("optical+", 1)})
    assert full.alternatives()["snow"]["alternative"] == 1
    snow = full.codes(raw, valid) == 2
    with np.errstate(divide="ignore", invalid="ignore"):
        want = ((green - swir1) / (green + swir1) >= 0.4) & (opt[1] > 1500) & valid
    np.testing.assert_array_equal(snow, want)
    assert 0 < want.sum() < (checks.codes(raw, valid) == 2).sum()  # fewer than the fallback

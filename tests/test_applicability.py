"""Issue 20: training range and applicability rules in the model record, the exclusion mask
(reason codes), --mask-excluded, and their bad inputs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import EXAMPLES
from tiny_net import TinyFusion, tiny_meta, use_tiny_builder

from mfaf_cli.applicability import (
    RANGE_MARGIN,
    Checks,
    Rule,
    checked_rules,
    evaluate,
    noise_floors,
    outside_range,
    training_range,
    with_noise_floor,
)
from mfaf_cli.errors import UsageError
from mfaf_cli.io import weights as W
from mfaf_cli.metadata import ModelMeta
from mfaf_cli.pipeline.predict import predict
from mfaf_cli.pipeline.spec import InferenceSpec

CHIP = EXAMPLES / "sen1floods11"
BANDS = {"optical": [4, 3, 2, 8], "sar": [1]}
SNOW = "(red − swir) / (red + swir) > 0.4 and red > 1500"


# ---- the expression language ------------------------------------------------------------------
def test_snow_rule_evaluates_exactly() -> None:
    rule = Rule.parse(f"snow={SNOW}")
    assert rule.name == "snow" and rule.bands == ("red", "swir")
    red = np.array([2000.0, 2000.0, 1400.0, 3000.0, np.nan])
    swir = np.array([100.0, 1000.0, 0.0, 1500.0, 10.0])  # 0.905, 0.333, 1.0 (dark), 0.333
    got = evaluate(rule.tree, {"red": red, "swir": swir})
    np.testing.assert_array_equal(got, [True, False, False, False, False])


class _CountingBands(dict):  # type: ignore[type-arg]
    """Band arrays that count how often each is looked up."""

    def __init__(self, **bands: np.ndarray) -> None:
        super().__init__(bands)
        self.reads: dict[str, int] = {}

    def __getitem__(self, key: str) -> np.ndarray:
        self.reads[key] = self.reads.get(key, 0) + 1
        return super().__getitem__(key)


def test_evaluate_reads_each_band_once_and_equals_float64_arithmetic() -> None:
    """Issue 19: the readers evaluate the rules block by block, so each band is converted to
    float64 once per call however often the rule names it, with the float64 results."""
    rng = np.random.default_rng(3)
    n = 4000
    red, swir, nir = (rng.uniform(0, 3000, n).astype(np.float32) for _ in range(3))
    red[:40], swir[:20], swir[20:40] = 0, 0, np.nan  # 0/0, x/0 and NaN
    red[40:60], nir[60:80] = np.inf, -np.inf
    text = f"snow={SNOW} and nir > 1500 or not (-red < -2500.5 and nir != 7)"
    bands = _CountingBands(red=red, swir=swir, nir=nir)
    got = evaluate(Rule.parse(text).tree, bands)
    assert bands.reads == {"red": 1, "swir": 1, "nir": 1}
    r, s, i = (b.astype(np.float64) for b in (red, swir, nir))
    with np.errstate(divide="ignore", invalid="ignore"):
        snow = ((r - s) / (r + s) > 0.4) & (r > 1500) & (i > 1500)
    want = snow | ~((-r < -2500.5) & (i != 7))
    assert got.dtype == bool and 0 < want.sum() < n
    np.testing.assert_array_equal(got, want)


RULE_TEXTS = [
    f"snow={SNOW} and nir > 1500",
    "a=red / swir >= 0.5 or not (nir - red * 2 < -swir)",
    "b=-(red + swir) / 0 < 1 and (red == swir or nir != 0)",
    "c=(red - swir) / (red + swir) > nir / (swir - red) + (nir - swir) * red and swir < red",
]


@pytest.mark.parametrize("text", RULE_TEXTS)
def test_rule_mask_reuses_its_arrays_and_equals_evaluate(text: str) -> None:
    """Issue 19: :func:`rule_mask` writes every operation into reused arrays (no fresh pages
    per block under the CLI's malloc tuning) and gives :func:`evaluate`'s booleans, block
    after block, whatever the block's shape, in any thread."""
    import threading

    from mfaf_cli.applicability import _POOLS, rule_mask

    rng = np.random.default_rng(7)
    tree = Rule.parse(text).tree

    def block(rows: int) -> dict[str, np.ndarray]:
        bands = {
            k: rng.uniform(-10, 3000, (rows, 64)).astype(np.float32) for k in ("red", "swir", "nir")
        }
        flat = [b.reshape(-1) for b in bands.values()]
        for b in flat:  # NaN, infinities and zeros (0/0, x/0) somewhere in every band
            b[rng.integers(0, b.size, 20)] = rng.choice([np.nan, np.inf, -np.inf, 0.0], 20)
        return bands

    def check(shapes: list[int], failures: list[str]) -> None:
        for rows in shapes:
            bands = block(rows)
            got = rule_mask(tree, bands)
            if not np.array_equal(got, evaluate(tree, bands)) or got.dtype != bool:
                failures.append(f"{rows} rows")

    failures: list[str] = []
    check([12, 12, 5, 12], failures)
    owned = len(_POOLS.pool._owned)
    check([12, 5, 12], failures)
    assert len(_POOLS.pool._owned) == owned  # the same arrays served the later blocks
    other = threading.Thread(target=check, args=([12, 7, 12], failures))
    other.start()
    other.join()
    assert failures == []


def test_range_thresholds_are_computed_once_and_open_sides_skip_no_value() -> None:
    from mfaf_cli.applicability import _band_bounds

    vv = np.array([[-np.inf, -30.0, -25.0, 0.0, np.inf, np.nan]], np.float32)[:, None, :]
    args = ([-21.96], [-5.26], ("high",), [-22.0])
    first = outside_range(vv, *args)
    misses = _band_bounds.cache_info().misses
    np.testing.assert_array_equal(outside_range(vv, *args), first)
    assert _band_bounds.cache_info().misses == misses  # the second block: no new thresholds
    # the high side is open and the floor lifts everything below -22: nothing leaves the range
    np.testing.assert_array_equal(first[0], [False] * 6)
    low_open = outside_range(vv, [-21.96], [-5.26], ("low",))[0]
    np.testing.assert_array_equal(low_open, [False, False, False, True, True, False])


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("snow=red", "must be a test"),
        ("x=red >", "ends too early"),
        ("x=foo > 1", "'foo' is not a band meaning"),
        ("x=(red > 1", "ends too early"),
        ("x=red > 1 and 3", "need tests on both sides"),
        ("x=__import__('os') > 1", "cannot read"),
        ("snow", "write NAME=EXPR"),
        ("ok=red > 1", "rule name 'ok'"),
        ("Bad Name=red > 1", "rule name"),
    ],
)
def test_malformed_rules_are_one_line_usage_errors(text: str, words: str) -> None:
    with pytest.raises(UsageError, match=words.replace("(", r"\(")) as err:
        Rule.parse(text)
    assert "\n" not in str(err.value)


def test_rule_reading_a_band_the_model_lacks_names_it() -> None:
    meta = tiny_meta()  # optical red, green, blue, nir + sar vv: no swir
    with pytest.raises(UsageError, match=r"'snow' reads swir, which model tiny does not take"):
        checked_rules([f"snow={SNOW}"], meta.modalities, meta.arch)
    with pytest.raises(UsageError, match="given twice"):
        checked_rules(["a=red > 1", "a=nir > 1"], meta.modalities, meta.arch)


# ---- training range and reason codes ------------------------------------------------------------
def test_training_range_is_the_pooled_quantiles() -> None:
    a = np.arange(1001, dtype=np.float32).reshape(1, 1, 1001)
    b = np.full((1, 1, 5), np.nan, np.float32)
    lo, hi, open_ = training_range([a, b])
    assert lo == pytest.approx((1.0,)) and hi == pytest.approx((999.0,)) and open_ == ("",)


def test_a_saturated_side_of_the_training_data_is_open() -> None:
    png = np.concatenate([np.zeros(20), np.arange(1, 980), np.full(1, 255.0)])  # 2 % at 0
    lo, hi, open_ = training_range([png.reshape(1, 1, -1)])
    assert lo == (0.0,) and open_ == ("low",)
    arr = np.array([[[-1e6, hi[0] + 1e6]]])
    np.testing.assert_array_equal(outside_range(arr, lo, hi, open_)[0], [False, True])


def test_outside_range_has_a_margin_of_the_span() -> None:
    m = RANGE_MARGIN * 100.0
    arr = np.array([[[-m - 0.01, -m, 50.0, 100 + m, 100 + m + 0.01, np.nan]]])
    np.testing.assert_array_equal(outside_range(arr, [0.0], [100.0])[0],
                                  [True, False, False, False, True, False])  # fmt: skip


def test_sar_noise_floor_by_meaning_and_units() -> None:
    assert noise_floors(("vv", "vh", ""), "db") == (-22.0, -22.0, None)
    assert noise_floors(("vv",), "linear")[0] == pytest.approx(10**-2.2)
    assert noise_floors(("red", "nir"), "") == () and noise_floors(("vv",), "dn") == ()
    sar = replace(tiny_meta().modality("sar"), range_low=(-20.0,), range_high=(-5.0,))
    assert with_noise_floor(sar).range_floor == (-22.0,)  # SAR units default to dB
    assert with_noise_floor(tiny_meta().modality("sar")).range_floor == ()  # no range: no floor


def test_below_the_noise_floor_reads_as_the_floor_but_the_range_still_fires() -> None:
    t, f = True, False
    vv = np.array([[[-35.0, -24.0, -21.0, -5.0, 0.0, np.nan]]])
    # the shipped VV range (OMBRIA reached -22 dB): darker is noise over calm water, not new
    lo, hi = [-21.96], [-5.26]
    np.testing.assert_array_equal(outside_range(vv, lo, hi)[0], [t, t, f, f, t, f])
    np.testing.assert_array_equal(outside_range(vv, lo, hi, (), [-22.0])[0], [f, f, f, f, t, f])
    # a model whose training data stop well above the floor (dry land down to -15 dB) still
    # flags dark water, below the floor too; a band without a floor is untouched
    np.testing.assert_array_equal(outside_range(vv, [-15.0], [-5.0], (), [-22.0])[0],
                                  [t, t, t, f, t, f])  # fmt: skip
    two = np.concatenate([vv, vv])  # band 0 without a floor, band 1 with one
    np.testing.assert_array_equal(outside_range(two, lo * 2, hi * 2, (), [None, -22.0])[0],
                                  [t, t, f, f, t, f])  # fmt: skip


def test_shipped_record_on_the_chip_snow_needs_nir_and_dark_vv_is_not_out_of_range() -> None:
    from mfaf_cli.io.weights import read_manifest

    entry = next(e for e in read_manifest() if e["default"])
    meta = W.read_meta(W.weights_dir() / entry["file"])
    assert dict(meta.rules)["snow"].endswith("and nir > 1500")
    assert meta.modality("sar").range_floor == (-22.0,)
    with rasterio.open(CHIP / "S2.tif") as a, rasterio.open(CHIP / "S1.tif") as b:
        opt, vv = a.read([13, 8, 4]).astype(np.float64), b.read([1]).astype(np.float64)
    valid = (opt != 0).all(axis=0) & np.isfinite(vv[0])
    codes = Checks.of(meta).codes({"optical": opt, "sar": vv}, valid)
    dark = valid & (vv[0] < -23.6)  # below the old bound: calm flood water
    assert dark.sum() > 1000 and not (codes[dark] == 1).any()
    red, swir, nir = opt[2][valid], opt[0][valid], opt[1][valid]
    old = ((red - swir) / (red + swir) > 0.4) & (red > 1500)
    snow = codes[valid] == 2
    assert snow.sum() == (old & (nir > 1500)).sum() and snow.sum() < old.sum()


def test_codes_rules_win_over_the_range_and_nodata_is_255() -> None:
    meta = replace(tiny_meta(), rules=(("bright", "red > 1000"), ("wet", "vv < -20")))
    specs = tuple(replace(s, range_low=(0.0,) * s.n_bands, range_high=(1000.0,) * s.n_bands)
                  if s.name == "optical" else s for s in meta.modalities)  # fmt: skip
    checks = Checks.of(replace(meta, modalities=specs))
    assert checks.reasons == ["ok", "outside-training-range", "bright", "wet"]
    opt = np.zeros((4, 1, 5), np.float32)
    opt[3, 0, 1] = 5000  # nir far outside the range
    opt[0, 0, 2] = 5000  # red: outside the range too, but the rule "bright" says why
    opt[0, 0, 3] = 1050  # red: inside the margin, bright
    sar = np.array([[[-10, -10, -25, -25, -25]]], np.float32)
    valid = np.array([[True, True, True, True, False]])
    codes = checks.codes({"optical": opt, "sar": sar}, valid)
    np.testing.assert_array_equal(codes[0], [0, 1, 2, 2, 255])


def test_record_round_trips_ranges_and_rules() -> None:
    meta = replace(tiny_meta(), rules=(("snow", "red > 1500"), ("a", "nir < 0")))
    mods = (replace(meta.modalities[0], range_low=(1.0, 2.0, 3.0, 4.0),
                    range_high=(5.0, 6.0, 7.0, 8.0)), meta.modalities[1])  # fmt: skip
    meta = replace(meta, modalities=mods)
    back = ModelMeta.from_json(meta.to_json())
    assert back == meta and back.rules[0] == ("snow", "red > 1500")
    assert ModelMeta.from_json(tiny_meta().to_json()).modalities[0].range_low is None


# ---- predict ------------------------------------------------------------------------------------
@pytest.fixture
def checked_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny checkpoint with a rule and an optical training range narrower than the chip."""
    use_tiny_builder(monkeypatch)
    meta = tiny_meta(rules=(("bright", "red > 1500 and nir > 1500"),))
    opt = replace(meta.modalities[0], range_low=(0.0,) * 4, range_high=(3000.0,) * 4)
    meta = replace(meta, modalities=(opt, meta.modalities[1]))
    torch.manual_seed(0)
    return W.save_checkpoint(TinyFusion(meta.in_channels, 2), meta, tmp_path / "m.safetensors")


def _predict(model: Path, out: Path, **kw: object) -> object:
    return predict({"optical": CHIP / "S2.tif", "sar": CHIP / "S1.tif"}, out, str(model),
                   bands=BANDS, engine="torch", device="cpu", progress=False, **kw)  # fmt: skip


def _expected_codes() -> np.ndarray:
    """The reason codes computed independently from the chip's bands."""
    with rasterio.open(CHIP / "S2.tif") as ds:
        b = ds.read([4, 3, 2, 8]).astype(np.float64)
    red, nir = b[0], b[3]
    out = np.zeros(red.shape, np.uint8)
    out[((b < -300) | (b > 3300)).any(axis=0)] = 1
    out[(red > 1500) & (nir > 1500)] = 2
    return out


def test_exclusion_mask_codes_tags_and_masking(checked_model: Path, tmp_path: Path) -> None:
    plain, masked = tmp_path / "plain.tif", tmp_path / "masked.tif"
    r = _predict(checked_model, plain, exclusion=tmp_path / "ex.tif")
    with rasterio.open(tmp_path / "ex.tif") as ds, rasterio.open(plain) as lab:
        codes, labels = ds.read(1), lab.read(1)
        assert ds.profile["blockxsize"] == lab.profile["blockxsize"] and ds.nodata == 255
        assert json.loads(ds.tags()["REASONS"]) == ["ok", "outside-training-range", "bright"]
        tags = lab.tags()
    valid = labels != 255
    np.testing.assert_array_equal(codes == 255, ~valid)
    np.testing.assert_array_equal(codes[valid], _expected_codes()[valid])
    share = {k: float((codes[valid] == c).mean()) for c, k in
             ((1, "outside-training-range"), (2, "bright"))}  # fmt: skip
    assert all(v > 0.001 for v in share.values())  # both reasons occur on the chip
    assert r.exclusion["reasons"] == pytest.approx(share, abs=1e-6)  # type: ignore[attr-defined]
    assert float(tags["EXCLUDED_BRIGHT"]) == pytest.approx(share["bright"], abs=1e-6)
    assert "<Category>bright</Category>" in Path(str(tmp_path / "ex.tif") + ".aux.xml").read_text()

    _predict(checked_model, masked, mask_excluded=True, confidence=tmp_path / "c.tif")
    with rasterio.open(masked) as ds, rasterio.open(tmp_path / "c.tif") as conf:
        m, c = ds.read(1), conf.read(1)
    keep = valid & (codes == 0)
    np.testing.assert_array_equal(m[keep], labels[keep])  # labels never change, only go
    assert (m[~keep] == 255).all() and (c[~keep] == 255).all() and (c[keep] != 255).all()


def test_exclusion_mask_does_not_depend_on_the_extent(checked_model: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole.tif"
    _predict(checked_model, whole, exclusion=tmp_path / "whole_ex.tif")
    with rasterio.open(CHIP / "S2.tif") as ds:
        t, h, w = ds.transform, ds.height, ds.width
    mosaic = np.full((h, w), 7, np.uint8)
    for r0, r1 in ((0, h // 2), (h // 2, h)):
        for c0, c1 in ((0, w // 2), (w // 2, w)):
            (left, top), (right, bottom) = t @ (c0, r0), t @ (c1, r1)
            out = tmp_path / f"q{r0}_{c0}.tif"
            _predict(checked_model, out, exclusion=tmp_path / f"e{r0}_{c0}.tif",
                     bounds=(left, bottom, right, top))  # fmt: skip
            with rasterio.open(tmp_path / f"e{r0}_{c0}.tif") as q:
                mosaic[r0:r1, c0:c1] = q.read(1)
    with rasterio.open(tmp_path / "whole_ex.tif") as ds:
        np.testing.assert_array_equal(mosaic, ds.read(1))


def test_cli_reports_and_warns(checked_model: Path, tmp_path: Path, runner, caplog) -> None:  # type: ignore[no-untyped-def]
    args = ("predict", "--optical", CHIP / "S2.tif", "--sar", CHIP / "S1.tif",
            "--optical-bands", "4,3,2,8", "--sar-bands", "1", "--model", checked_model,
            "--engine", "torch")  # fmt: skip
    code, out, err = runner(*args, "-o", tmp_path / "a.tif", "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert rec["exclusion"]["excluded"] > 0.05
    assert "% of valid pixels excluded (outside-training-range" in caplog.text
    code, _, err = runner(*args, "-o", tmp_path / "b.tif")
    assert code == 0 and "% of valid pixels excluded (outside-training-range" in err


def test_bad_exclusion_requests_write_nothing(
    checked_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner
) -> None:  # type: ignore[no-untyped-def]
    args = ("predict", "--optical", CHIP / "S2.tif", "--sar", CHIP / "S1.tif", "--optical-bands",
            "4,3,2,8", "--sar-bands", "1", "--engine", "torch", "-q")  # fmt: skip
    out = tmp_path / "a.tif"
    code, _, err = runner(*args, "--model", checked_model, "-o", out, "--exclusion", out)
    assert code == 2 and "--exclusion" in err and "also the -o/--output path" in err
    bare = tiny_meta()  # no range, no rules
    torch.manual_seed(0)
    plain = W.save_checkpoint(TinyFusion(bare.in_channels, 2), bare, tmp_path / "p.safetensors")
    code, _, err = runner(*args, "--model", plain, "-o", out, "--mask-excluded")
    assert code == 2 and "nothing to exclude" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "p.safetensors"]


# ---- mfaf info ----------------------------------------------------------------------------------
def test_info_shows_range_and_rules(checked_model: Path, runner) -> None:  # type: ignore[no-untyped-def]
    code, out, err = runner("info", checked_model)
    assert code == 0, err
    assert "optical: red 0..3000, green 0..3000, blue 0..3000, nir 0..3000" in out
    assert "rules:\n  bright: red > 1500 and nir > 1500" in out
    assert "sar" not in out.split("training range")[1].split("rules:")[0]  # no range: no line


def test_info_describes_a_shipped_model_by_name(runner) -> None:  # type: ignore[no-untyped-def]
    from mfaf_cli.io.weights import read_manifest

    name = read_manifest()[0]["name"]
    code, out, err = runner("info", name)
    assert code == 0, err
    assert out.startswith(str(Path("mfaf_cli") / "weights")) or "weights" in out.splitlines()[0]
    assert "classes: 0 not-water, 1 water" in out and "training range" in out


# ---- evaluate with and without excluded pixels -------------------------------------------------
def test_evaluate_map_without_excluded_equals_the_masked_map(
    checked_model: Path, tmp_path: Path, runner
) -> None:  # type: ignore[no-untyped-def]
    from mfaf_cli.training.evaluate import evaluate_rasters

    plain, masked, ex = tmp_path / "plain.tif", tmp_path / "masked.tif", tmp_path / "ex.tif"
    _predict(checked_model, plain, exclusion=ex)
    _predict(checked_model, masked, mask_excluded=True)
    truth, mapping = CHIP / "label.tif", "-1:255,0:0,1:1"
    res = evaluate_rasters(plain, truth, mapping=mapping, exclusion=ex)
    kept = res.info["without_excluded"]
    ref = evaluate_rasters(masked, truth, mapping=mapping)
    assert kept["metrics"]["confusion_matrix"] == ref.metrics["confusion_matrix"]
    assert res.metrics == evaluate_rasters(plain, truth, mapping=mapping).metrics  # unchanged
    n_all, n_kept = res.metrics["n_pixels"], ref.metrics["n_pixels"]
    assert kept["excluded_of_scored"] == pytest.approx(1 - n_kept / n_all, abs=1e-6)
    assert kept["excluded_of_scored"] > 0.01
    code, out, err = runner("evaluate", plain, "--truth", truth, "--map", mapping,
                            "--exclusion", ex)  # fmt: skip
    assert code == 0 and "without excluded pixels (" in out, err
    with rasterio.open(ex) as ds:
        profile = ds.profile | {"width": 10, "height": 10, "tiled": False}
        profile.pop("blockxsize"), profile.pop("blockysize")
    with rasterio.open(tmp_path / "small.tif", "w", **profile) as ds:
        ds.write(np.zeros((1, 10, 10), np.uint8))
    small = tmp_path / "small.tif"
    code, _, err = runner("evaluate", plain, "--truth", truth, "--exclusion", small)
    assert code == 1 and "not on the grid" in err


def test_evaluate_dataset_scores_with_and_without_excluded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataset_builders import make_sen1floods11

    from mfaf_cli.data.datasets import open_dataset
    from mfaf_cli.engine import create_predictor
    from mfaf_cli.scores.metrics import confusion_matrix
    from mfaf_cli.training.evaluate import evaluate_model, predict_arrays

    use_tiny_builder(monkeypatch)
    root = make_sen1floods11(tmp_path / "s1f", size=48)
    ds = open_dataset("sen1floods11", root, "all", bands={"optical": [4, 3, 2, 8]},
                      normalisation="fixed")  # fmt: skip
    arrays0, _, _ = ds.raw(0)
    cut = float(np.nanmedian(arrays0["optical"][0]))  # a rule true on about half the pixels
    meta = replace(tiny_meta(), rules=(("bright", f"red > {cut}"),))
    torch.manual_seed(0)
    ckpt = W.save_checkpoint(TinyFusion(meta.in_channels, 2), meta, tmp_path / "m.safetensors")
    spec = InferenceSpec(tile=32, device="cpu", engine="torch")
    res = evaluate_model(
        ckpt, "sen1floods11", root, "all", spec=spec,
        bands={"optical": [4, 3, 2, 8]}, progress=False, mask_excluded=True,
    )  # fmt: skip
    pr = create_predictor(str(ckpt), device="cpu", engine="torch")
    checks = Checks.of(meta)
    cm = np.zeros((2, 2, 2), np.int64)
    for i in range(len(ds)):
        arrays, mask, _ = ds.raw(i)
        valid = np.isfinite(arrays["optical"]).all(0) & np.isfinite(arrays["sar"]).all(0)
        pred, ok = predict_arrays(pr, arrays, valid, pr.meta, tile=32)
        p = pred.astype(np.int64)
        p[~ok] = 255
        cm[0] += confusion_matrix(p, mask, 2)
        p[checks.codes(arrays, ok) != 0] = 255
        cm[1] += confusion_matrix(p, mask, 2)
    np.testing.assert_array_equal(res.confusion, cm[0])
    kept = np.asarray(res.info["without_excluded"]["metrics"]["confusion_matrix"])
    np.testing.assert_array_equal(kept, cm[1])
    assert 0 < kept.sum() < cm[0].sum()


def test_a_record_whose_length_starts_like_a_pickle_loads(tmp_path: Path) -> None:
    """A safetensors header of 0x0280..0x05ff bytes begins with 0x80 0x02..0x05, a pickle's
    magic; it is still a checkpoint (found when a rule made a record that long)."""
    meta = tiny_meta()
    for pad in range(0, 1400, 7):
        m = replace(meta, training={"note": "x" * pad})
        p = W.save_checkpoint(TinyFusion(m.in_channels, 2), m, tmp_path / "m.safetensors")
        head = p.read_bytes()[:2]
        if head[0] == 0x80 and head[1] in (2, 3, 4, 5):
            assert W.read_meta(p) == m
            return
    raise AssertionError("no record length hit the pickle magic")


# ---- batch and --split-scene carry it -----------------------------------------------------------
def test_split_scene_writes_the_single_runs_mask_and_masked_map(
    checked_model: Path, tmp_path: Path
) -> None:
    from mfaf_cli.pipeline.split import predict_split

    one = _predict(checked_model, tmp_path / "one.tif", exclusion=tmp_path / "one_ex.tif",
                   mask_excluded=True)  # fmt: skip
    inputs = {"optical": CHIP / "S2.tif", "sar": CHIP / "S1.tif"}
    kw = {"bands": BANDS, "engine": "torch", "device": "cpu", "progress": False, "tile": 64,
          "exclusion": tmp_path / "two_ex.tif", "mask_excluded": True}  # fmt: skip
    first = predict_split(inputs, tmp_path / "two.tif", str(checked_model), shard="0/2", **kw)
    last = predict_split(inputs, tmp_path / "two.tif", str(checked_model), shard="1/2", **kw)
    assert not first.assembled and last.assembled
    single = _predict(checked_model, tmp_path / "ref.tif", exclusion=tmp_path / "ref_ex.tif",
                      mask_excluded=True, tile=64)  # fmt: skip
    for a, b in (("two", "ref"), ("two_ex", "ref_ex")):
        with rasterio.open(tmp_path / f"{a}.tif") as x, rasterio.open(tmp_path / f"{b}.tif") as y:
            np.testing.assert_array_equal(x.read(), y.read())
            assert x.tags()["EXCLUDED_FRACTION"] == y.tags()["EXCLUDED_FRACTION"]
    assert last.exclusion == single.exclusion == one.exclusion  # type: ignore[attr-defined]


def test_batch_rows_carry_the_exclusion(checked_model: Path, tmp_path: Path) -> None:
    from mfaf_cli.pipeline.batch import predict_batch

    csv = tmp_path / "scenes.csv"
    csv.write_text(f"scene,optical,sar,output,exclusion\na,{CHIP / 'S2.tif'},{CHIP / 'S1.tif'},"
                   "out/a.tif,out/a_ex.tif\n")  # fmt: skip
    recs = predict_batch(csv, str(checked_model), bands=BANDS, engine="torch", device="cpu",
                         progress=False, mask_excluded=True)  # fmt: skip
    assert recs[0]["status"] == "ok", recs
    assert recs[0]["exclusion"]["excluded"] > 0.05
    assert recs[0]["outputs"]["exclusion"] == str(tmp_path / "out" / "a_ex.tif")
    with rasterio.open(tmp_path / "out" / "a.tif") as lab, rasterio.open(
        tmp_path / "out" / "a_ex.tif"
    ) as ex:  # fmt: skip
        assert ((lab.read(1) == 255) == (ex.read(1) != 0)).all()  # masked exactly there


# ---- train records the range and --rule ---------------------------------------------------------
def test_train_records_range_and_rules_and_refuses_bad_rules(  # type: ignore[no-untyped-def]
    tmp_path: Path, runner
) -> None:
    from dataset_builders import make_ombria

    from mfaf_cli.data.ombria import to_sentinel_units

    root = make_ombria(tmp_path / "ombria", n_train=6, n_test=2, size=32)
    base = ["train", "--dataset", "ombria", "--data-root", root, "--model", "unet",
            "--tile", "32", "--batch-size", "2", "--val-fraction", "0.34", "--epochs", "1",
            "-q", "--model-opt", "base_width=4", "--max-batches", "1",
            "--max-val-batches", "1"]  # fmt: skip
    bad = tmp_path / "bad"
    code, _, err = runner(*base, "-o", bad, "--rule", "cloud=blue > 2000")
    assert code == 2 and "'cloud' reads blue, which model unet does not take" in err
    assert not bad.exists()  # nothing written
    code, _, err = runner(*base, "-o", bad, "--rule", "snow=red >")
    assert code == 2 and "ends too early" in err and not bad.exists()
    out = tmp_path / "run"
    code, _, err = runner(*base, "-o", out, "--rule", f"snow={SNOW}", "--rule", "wet=vv < -20")
    assert code == 0, err
    meta = W.read_meta(out / "best.safetensors")
    assert meta.rules == (("snow", SNOW), ("wet", "vv < -20"))
    from mfaf_cli.data.registry import open_dataset

    ds = open_dataset("ombria", root, "train", seed=0, val_fraction=0.34, normalisation="fixed")
    png = [ds.raw(i)[0]["sar"] for i in range(len(ds))]  # already in Sentinel units
    assert meta.modality("sar").range_low == training_range(png)[0]
    png_zero = float(to_sentinel_units("sar", np.zeros((1, 1, 1)))[0, 0, 0])
    assert png_zero <= meta.modality("sar").range_low[0]  # type: ignore[index]
    assert meta.modality("sar").range_floor == (-22.0,) and not meta.modality("optical").range_floor


def test_scene_list_and_config_file_rules_are_recorded(tmp_path: Path, runner) -> None:  # type: ignore[no-untyped-def]
    from test_band_identity import TINY, _scenes

    data = _scenes(tmp_path / "scenes").parent
    scenes = "".join(
        f'[[scene]]\nid = "s{k}"\noptical = "s2_{k}.tif"\nsar = "s{k}_VV.tif"\n'
        f'label = "gt{k}.tif"\nsplit = "{"train" if k == 0 else "val"}"\n'
        for k in range(2)
    )
    toml = data / "scenes.toml"
    toml.write_text('[bands]\noptical = "13,8,4"\n[rules]\nsnow = "red > 1500 and nir > 1500"\n'
                    f'wet = "vv < -20"\n{scenes}')  # fmt: skip
    base = ["train", "--dataset", "folder", "--data-root", toml, "--model", "unet", *TINY]
    out = tmp_path / "run"
    code, _, err = runner(*base, "-o", out, "--rule", "wet=vv < -25")  # a flag replaces "wet"
    assert code == 0, err
    meta = W.read_meta(out / "last.safetensors")
    assert meta.rules == (("snow", "red > 1500 and nir > 1500"), ("wet", "vv < -25"))
    cfg = tmp_path / "train.toml"
    cfg.write_text('[rules]\nbright = "red > 3000"\n')
    out2 = tmp_path / "run2"
    code, _, err = runner(*base, "--config", cfg, "-o", out2)
    assert code == 0, err
    assert [n for n, _ in W.read_meta(out2 / "last.safetensors").rules] == ["snow", "wet", "bright"]
    bad = tmp_path / "bad"
    for text, words in (("rules = 3\n", "give a table"),
                        ('[rules]\ncloud = "blue > 2000"\n', "'cloud' reads blue")):  # fmt: skip
        toml.write_text(text + '[bands]\noptical = "13,8,4"\n' + scenes)
        code, _, err = runner(*base, "-o", bad)
        assert code != 0 and words in err and len(err.strip().splitlines()) == 1, err
        assert not bad.exists()


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_device_merger_masks_like_the_host_merger(
    checked_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str
) -> None:
    """The finished-rows path (a GPU's, forced on the CPU here) masks the same pixels."""
    from mfaf_cli.io.raster import OutputSet

    got = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("MFAF_DEVICE_MERGER", flag)
        if flag == "1":  # only finished rows may arrive
            monkeypatch.setattr(OutputSet, "__call__", lambda *a, **k: 1 / 0)
        out = tmp_path / f"m{flag}.tif"
        r = _predict(checked_model, out, mask_excluded=True,
                     probabilities=tmp_path / f"p{flag}.tif", confidence=tmp_path / f"c{flag}.tif",
                     exclusion=tmp_path / f"e{flag}.tif", probabilities_dtype=dtype)  # fmt: skip
        got[flag] = [rasterio.open(tmp_path / f"{k}{flag}.tif").read() for k in "mpce"]
        got[flag].append(r.exclusion)  # type: ignore[attr-defined]
    for a, b in zip(got["0"][:4], got["1"][:4], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)  # NaN nodata compares equal
    assert got["0"][4] == got["1"][4]
    excluded = (got["1"][3][0] != 0) & (got["1"][3][0] != 255)
    assert excluded.any() and (got["1"][0][0][excluded] == 255).all()


@pytest.mark.parametrize(
    "expr",
    [
        "(red - swir) / (red + swir) > 0.4 and red > 1500 and nir > 1500",
        "not (red > 2 * 750) or -nir < -1500",
        "red / (nir - nir) > 1",  # division by zero: inf and NaN, as evaluate gives
        "(2 + 3) * red >= nir * 1 or red != red",
    ],
)
def test_compiled_rules_give_evaluate_s_masks(expr):
    """Readers run a rule as a compiled list of pooled operations: the masks of
    :func:`evaluate` (and of the tree walk it replaces), block after block."""
    from mfaf_cli.applicability import Rule, _Pool, _pooled, _program, evaluate, rule_mask

    rng = np.random.default_rng(7)
    node = Rule.checked("r", expr).tree
    assert _program(node) is not None
    for shape in ((11, 40), (5, 40), (11, 40)):
        bands = {k: rng.uniform(0, 4000, shape).astype(np.float32) for k in ("red", "nir", "swir")}
        bands["red"][0, :3] = np.nan
        want = evaluate(node, bands)
        f64 = {k: v.astype(np.float64) for k, v in bands.items()}
        with np.errstate(divide="ignore", invalid="ignore"):
            walked = _pooled(node, f64, _Pool())
        got = rule_mask(node, bands)
        assert got.dtype == bool and np.array_equal(got, want) and np.array_equal(walked, want)


@pytest.mark.parametrize("op", ["<", "<=", ">", ">=", "==", "!="])
def test_float32_band_tests_equal_float64_tests(op: str) -> None:
    """A float32 band tested against a constant in float32 (no float64 copy of the band)
    gives evaluate's float64 answer for every value next to the threshold, either side of
    the test, constants float32 cannot hold (0.1, 2**24 + 1, beyond its range) included."""
    from mfaf_cli.applicability import _program, rule_mask

    for c in (1500.0, 1500.3, 0.1, -0.0, float(2**24 + 1), 1e39, -1e39, 3.4028234663852886e38):
        with np.errstate(over="ignore"):
            f = np.float32(c)
        near = [f, np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(-np.inf))]
        values = np.array([*near, np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0], dtype=np.float32)
        bands = {"red": values.reshape(3, 3), "nir": values[::-1].reshape(3, 3).copy()}
        test = (op, ("band", "red"), ("num", c))
        both = ("and", test, ("<", ("band", "nir"), ("num", 5.0)))
        for node in (test, (op, ("num", c), ("band", "red")), both):
            steps = _program(node, ("nir", "red"))
            assert steps is not None and all(k != "band" for s in steps for k, _ in s.args)
            got = rule_mask(node, bands)
            with np.errstate(invalid="ignore"):
                want = evaluate(node, bands)
            assert got.dtype == bool and np.array_equal(got, want), (node, values, got, want)

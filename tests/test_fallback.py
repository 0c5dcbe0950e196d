"""Per-pixel fallback and optical masks (issue 24) on the committed Sen1Floods11 crop.

Two small context networks (5x5 convs: a pixel sees 9x9 px, so window placement matters):
the main model takes optical + SAR, its record names a SAR-only fallback with its own SAR
normalisation. Pixels without usable optical must be the fallback's, exactly as a SAR-only
run maps them; every other pixel exactly the main model's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import EXAMPLES, write_geotiff
from tiny_net import ContextNet, tiny_meta

from mfaf_cli.coreg.cloudmask import OpticalMask, find_scl, optical_mask
from mfaf_cli.errors import InputError, UsageError
from mfaf_cli.io import weights as W
from mfaf_cli.metadata import ModalitySpec, Normalisation
from mfaf_cli.pipeline.fallback import SOURCE_NAMES, source_names
from mfaf_cli.pipeline.predict import predict

CHIP = EXAMPLES / "sen1floods11"
BANDS = {"optical": [4, 3, 2, 8], "sar": [1]}
HOLE = (slice(100, 300), slice(100, 300))  # the acceptance's 200 x 200 px square


OPTICAL = ModalitySpec(
    "optical", ("red", "green", "blue", "nir"), Normalisation("fixed", (1500.0,) * 4, (1000.0,) * 4)
)
SAR = ModalitySpec("sar", ("vv",), Normalisation("fixed", (-15.0,), (5.0,)), units="db")
SAR_OWN = replace(SAR, normalisation=Normalisation("fixed", (-12.0,), (4.0,)))  # its own stats


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(main checkpoint naming the SAR-only fallback, the fallback checkpoint)."""
    monkeypatch.setattr(W, "build_model", lambda m: ContextNet(m.in_channels, m.num_classes))
    torch.manual_seed(0)
    sar_meta = replace(tiny_meta(tile=64), modalities=(SAR_OWN,))
    sar_net = ContextNet(sar_meta.in_channels, 2)
    sar = W.save_checkpoint(sar_net, sar_meta, tmp_path / "sar.safetensors")
    meta = replace(tiny_meta(tile=64), modalities=(OPTICAL, SAR), fallbacks={"optical": str(sar)})
    main = W.save_checkpoint(ContextNet(meta.in_channels, 2), meta, tmp_path / "main.safetensors")
    return main, sar


@pytest.fixture
def holed(tmp_path: Path) -> Path:
    """The chip's optical with a 200 x 200 px nodata square."""
    with rasterio.open(CHIP / "S2.tif") as ds:
        data, profile, desc = ds.read(), ds.profile, ds.descriptions
    data[:, HOLE[0], HOLE[1]] = 0  # the file's nodata
    with rasterio.open(tmp_path / "S2hole.tif", "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = desc
    return tmp_path / "S2hole.tif"


def _run(
    model: Path, optical: Path, out: Path, **kw: object
) -> tuple[np.ndarray, np.ndarray, object]:
    kw.setdefault("bands", BANDS)
    inputs = {"optical": optical, "sar": CHIP / "S1.tif"}
    if kw.pop("sar_only", False):
        inputs, kw["bands"] = {"sar": CHIP / "S1.tif"}, {"sar": [1]}
    res = predict(inputs, out, str(model), engine="torch", device="cpu", progress=False,
                  probabilities=out.with_suffix(".p.tif"), probabilities_dtype="float32",
                  **kw)  # type: ignore[arg-type]  # fmt: skip
    with rasterio.open(out) as a, rasterio.open(out.with_suffix(".p.tif")) as p:
        return a.read(1), p.read(), res


def _source(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        assert ds.tags()["SOURCES"] == '["none", "fusion", "sar-only", "optical-only"]'
        return ds.read(1)


def test_hole_is_mapped_by_the_fallback_and_the_rest_is_unchanged(
    models: tuple[Path, Path], holed: Path, tmp_path: Path
) -> None:
    main, sar = models
    plain, plain_p, _ = _run(main, holed, tmp_path / "plain.tif", fallbacks={})
    lab, prob, res = _run(main, holed, tmp_path / "fb.tif", source=tmp_path / "src.tif")
    _, sar_p, _ = _run(sar, holed, tmp_path / "sar.tif", sar_only=True)
    hole = np.zeros(plain.shape, bool)
    hole[HOLE] = True
    assert (plain[hole] == 255).all() and (plain[~hole] != 255).all()  # without: a hole
    assert (lab != 255).all()  # with: mapped everywhere
    np.testing.assert_array_equal(lab[~hole], plain[~hole])
    np.testing.assert_array_equal(prob[:, ~hole], plain_p[:, ~hole])
    np.testing.assert_allclose(prob[:, hole], sar_p[:, hole], atol=1e-6)  # the SAR-only map
    src = _source(tmp_path / "src.tif")
    assert (src[hole] == 2).all() and (src[~hole] == 1).all()
    assert res.sources["sar-only"] == pytest.approx(hole.mean(), abs=1e-6)  # type: ignore[attr-defined]
    assert res.sources["fusion"] == pytest.approx(1 - hole.mean(), abs=1e-6)  # type: ignore[attr-defined]
    assert 0 < res.fallback_windows["optical"] < res.windows  # type: ignore[attr-defined]


def test_quadrants_with_fallback_equal_the_whole_run(
    models: tuple[Path, Path], holed: Path, tmp_path: Path
) -> None:
    main, _ = models
    ref, ref_p, _ = _run(main, holed, tmp_path / "whole.tif", source=tmp_path / "whole_src.tif")
    ref_s = _source(tmp_path / "whole_src.tif")
    with rasterio.open(CHIP / "S2.tif") as ds:
        t, h, w = ds.transform, ds.height, ds.width
    labels, probs = np.zeros_like(ref), np.zeros_like(ref_p)
    srcs = np.zeros_like(ref_s)
    for r0, r1 in ((0, h // 2), (h // 2, h)):
        for c0, c1 in ((0, w // 2), (w // 2, w)):
            (left, top), (right, bottom) = t @ (c0, r0), t @ (c1, r1)
            out = tmp_path / f"q{r0}_{c0}.tif"
            lab, prob, _ = _run(main, holed, out, bounds=(left, bottom, right, top),
                                source=out.with_suffix(".s.tif"))  # fmt: skip
            labels[r0:r1, c0:c1], probs[:, r0:r1, c0:c1] = lab, prob
            srcs[r0:r1, c0:c1] = _source(out.with_suffix(".s.tif"))
    np.testing.assert_array_equal(labels, ref)
    np.testing.assert_array_equal(probs, ref_p)
    np.testing.assert_array_equal(srcs, ref_s)


def _mask_grid(shape: tuple[int, int], factor: int = 2) -> tuple[str, object]:
    """A mask lattice ``factor`` times coarser than the chip's (another grid: co-registered)."""
    with rasterio.open(CHIP / "S2.tif") as ds:
        return str(ds.crs), ds.transform @ rasterio.Affine.scale(factor)


@pytest.mark.parametrize("kind", ["binary", "scl", "probability"])
def test_optical_mask_makes_pixels_sar_only(
    models: tuple[Path, Path], tmp_path: Path, kind: str
) -> None:
    """A mask on a 2x coarser grid over valid optical: those pixels (nearest) are SAR-only,
    mapped as the SAR-only model maps them, and the run equals one whose optical is nodata
    there (masked pixels count as missing, for the fusion model's context too)."""
    main, sar = models
    coarse = np.zeros((192, 192), np.uint8)
    coarse[20:60, 100:170] = 1
    crs, transform = _mask_grid((192, 192))
    values = {"binary": coarse, "scl": np.where(coarse == 1, 9, 4).astype(np.uint8),
              "probability": np.where(coarse == 1, 80, 30).astype(np.uint8)}[kind]  # fmt: skip
    name = "T30_20200101_SCL_20m.tif" if kind == "scl" else f"{kind}.tif"
    mask = write_geotiff(tmp_path / name, values, crs=crs, transform=transform)  # type: ignore[arg-type]
    thr = 50.0 if kind == "probability" else None
    masked = np.kron(coarse, np.ones((2, 2), np.uint8)).astype(bool)
    with rasterio.open(CHIP / "S2.tif") as ds:
        data, profile, desc = ds.read(), ds.profile, ds.descriptions
    data[:, masked] = 0  # nodata
    with rasterio.open(tmp_path / "blank.tif", "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = desc
    blank, blank_p, _ = _run(main, tmp_path / "blank.tif", tmp_path / "blank_out.tif")
    lab, prob, res = _run(main, CHIP / "S2.tif", tmp_path / "m.tif", optical_mask=mask,
                          cloud_threshold=thr, source=tmp_path / "src.tif")  # fmt: skip
    _, sar_p, _ = _run(sar, CHIP / "S2.tif", tmp_path / "sar.tif", sar_only=True)
    src = _source(tmp_path / "src.tif")
    assert (src[masked] == 2).all() and (src[~masked] == 1).all()
    np.testing.assert_allclose(prob[:, masked], sar_p[:, masked], atol=1e-6)
    np.testing.assert_array_equal(lab, blank)
    np.testing.assert_array_equal(prob, blank_p)
    assert res.sources["sar-only"] == pytest.approx(masked.mean(), abs=1e-6)  # type: ignore[attr-defined]


def test_mask_without_fallback_makes_masked_pixels_nodata(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    main, _ = models
    m = np.zeros((384, 384), np.uint8)
    m[:50] = 1
    crs, transform = _mask_grid((384, 384), 1)
    mask = write_geotiff(tmp_path / "m.tif", m, crs=crs, transform=transform)  # type: ignore[arg-type]
    lab, _, res = _run(main, CHIP / "S2.tif", tmp_path / "o.tif", optical_mask=mask, fallbacks={})
    assert (lab[:50] == 255).all() and (lab[50:] != 255).all()
    got = res.sources  # type: ignore[attr-defined]
    assert got["none"] == pytest.approx(50 / 384, abs=1e-6)
    assert got["fusion"] == pytest.approx(334 / 384, abs=1e-6)
    assert got["sar-only"] == got["optical-only"] == 0.0


def test_mask_kinds_and_values() -> None:
    v = np.array([[[0, 1, 3, 4, 8, 9, 10, 11, np.nan]]], np.float32)
    scl = OpticalMask("x_SCL_20m.tif", "scl").masked(v)
    assert scl.tolist() == [[True, True, True, False, True, True, True, True, False]]
    with pytest.raises(InputError, match="SCL classes are 0-11"):
        OpticalMask("x_SCL.tif", "scl").masked(np.array([[[4, 12]]], np.float32))
    with pytest.raises(InputError, match="--cloud-threshold"):
        OpticalMask("m.tif", "binary").masked(np.array([[[0, 37]]], np.float32))
    prob = OpticalMask("p.tif", "probability", 40).masked(np.array([[[39, 40, 41]]], np.float32))
    assert prob.tolist() == [[False, False, True]]
    for bad in (-1, 100.5):
        with pytest.raises(UsageError, match="0-100"):
            optical_mask("p.tif", bad)
    assert source_names(tiny_meta()) == list(SOURCE_NAMES)


def test_l2a_folder_brings_its_scl(tmp_path: Path) -> None:
    granule = tmp_path / "S2B_MSIL2A.SAFE" / "GRANULE" / "L2A_T30" / "IMG_DATA"
    for res in ("R20m", "R60m"):
        (granule / res).mkdir(parents=True)
        write_geotiff(granule / res / f"T30_20200101_SCL_{res[1:]}.tif", np.zeros((4, 4), np.uint8))
        write_geotiff(
            granule / res / f"T30_20200101_B04_{res[1:]}.tif", np.zeros((4, 4), np.uint16)
        )
    scl = find_scl(tmp_path / "S2B_MSIL2A.SAFE")
    assert scl is not None and scl.name == "T30_20200101_SCL_20m.tif"
    assert optical_mask(tmp_path / "S2B_MSIL2A.SAFE").kind == "scl"


def _cli_bad(runner, models: tuple[Path, Path], tmp_path: Path, *extra: object) -> str:  # type: ignore[no-untyped-def]
    main, _ = models
    out = tmp_path / "bad.tif"
    code, _, err = runner("predict", "--optical", CHIP / "S2.tif", "--sar", CHIP / "S1.tif",
                          "--optical-bands", "4,3,2,8", "--sar-bands", "1", "--model", main,
                          "-o", out, "--source", tmp_path / "bad_src.tif", "--engine", "torch",
                          "--device", "cpu", *extra)  # fmt: skip
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("Error")]
    assert code != 0 and len(lines) == 1 and "Traceback" not in err, err
    assert not out.exists() and not (tmp_path / "bad_src.tif").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")]
    return lines[0]


def test_bad_masks_and_fallbacks_are_one_line(
    runner, models: tuple[Path, Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    far = write_geotiff(tmp_path / "far.tif", np.ones((10, 10), np.uint8))  # UTM 30N, elsewhere
    assert "overlap" in _cli_bad(runner, models, tmp_path, "--optical-mask", far)
    crs, transform = _mask_grid((384, 384), 1)
    scl = write_geotiff(tmp_path / "x_SCL_20m.tif", np.full((384, 384), 12, np.uint8), crs=crs,
                        transform=transform)  # type: ignore[arg-type]  # fmt: skip
    assert "SCL classes are 0-11" in _cli_bad(runner, models, tmp_path, "--optical-mask", scl)
    assert "0-100" in _cli_bad(runner, models, tmp_path, "--optical-mask", scl,
                               "--cloud-threshold", "101")  # fmt: skip
    # a fallback whose classes differ from the main model's
    sar = models[1]
    water = tiny_meta().classes
    three = replace(W.read_meta(sar), classes=(*water, replace(water[0], id=2, name="cloud")))
    W.save_checkpoint(ContextNet(three.in_channels, 3), three, sar)
    assert "classes" in _cli_bad(runner, models, tmp_path)


def test_fallbacks_travel_in_the_record_and_the_manifest(
    models: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint's record names its fallbacks (JSON round trip); a shipped model's manifest
    entry may name them instead (weights/set_fallback.py), filled in when it is resolved."""
    from mfaf_cli.metadata import ModelMeta
    from mfaf_cli.models.resolve import resolve_model

    main, sar = models
    meta = W.read_meta(main)
    assert meta.fallbacks == {"optical": str(sar)}
    assert ModelMeta.from_json(meta.to_json()).fallbacks == meta.fallbacks
    assert "fallbacks" not in replace(meta, fallbacks={}).to_dict()  # old records unchanged
    plain = replace(meta, fallbacks={})
    W.save_checkpoint(ContextNet(plain.in_channels, 2), plain, tmp_path / "plain.safetensors")
    root = tmp_path / "weights"
    monkeypatch.setenv("MFAF_WEIGHTS_DIR", str(root))
    W.register_weights(tmp_path / "plain.safetensors", "plain-water", root=root)
    assert resolve_model("plain-water").meta.fallbacks == {}
    doc = (
        (root / "manifest.json")
        .read_text()
        .replace('"name": "plain-water",', '"name": "plain-water", "fallbacks": {"optical": "x"},')
    )
    (root / "manifest.json").write_text(doc)
    assert resolve_model("plain-water").meta.fallbacks == {"optical": "x"}


def test_fallback_runs_on_the_main_models_windows(
    models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fallback whose record says another tile (e.g. its training crops) is loaded for the
    main model's tile: an ONNX fallback exported for its own tile would refuse the windows."""
    import importlib

    from mfaf_cli.pipeline.spec import InferenceSpec

    P = importlib.import_module("mfaf_cli.pipeline.predict")  # the module, not the function

    main, sar = models
    W.save_checkpoint(ContextNet({"sar": 1}, 2), replace(W.read_meta(sar), tile_size=32), sar)
    seen: list[int | None] = []
    real = P.load_predictor

    def spy(model, modalities, *, in_channels, spec):  # type: ignore[no-untyped-def]
        seen.append(spec.tile)
        return real(model, modalities, in_channels=in_channels, spec=spec)

    monkeypatch.setattr(P, "load_predictor", spy)
    pred, source = real(str(main), ("optical", "sar"), in_channels=None,
                        spec=InferenceSpec(engine="torch", device="cpu"))  # fmt: skip
    wrapped = P.with_fallbacks(pred, source, InferenceSpec(engine="torch", device="cpu"))
    assert seen == [64] and wrapped.fallbacks["optical"].meta.tile_size == 32


def test_self_fallback_lets_the_fusion_model_map_without_optical(
    models: tuple[Path, Path], holed: Path, tmp_path: Path
) -> None:
    """``self`` (for models trained with --modality-dropout): the hole is mapped by the fusion
    model itself, its optical fed as missing; every other pixel as without fallbacks."""
    main, _ = models
    plain, plain_p, _ = _run(main, holed, tmp_path / "plain.tif", fallbacks={})
    lab, prob, res = _run(main, holed, tmp_path / "self.tif", fallbacks={"optical": "self"})
    hole = np.zeros(plain.shape, bool)
    hole[HOLE] = True
    assert (lab != 255).all() and (plain[hole] == 255).all()
    np.testing.assert_array_equal(prob[:, ~hole], plain_p[:, ~hole])
    assert res.sources["sar-only"] == pytest.approx(hole.mean(), abs=1e-6)  # type: ignore[attr-defined]
    assert res.fallback_windows == {"optical": 0}  # type: ignore[attr-defined]

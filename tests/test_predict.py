"""The predict spine end to end: co-registration, streamed blending, outputs, bad inputs, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

from mfaf_cli.coreg import AlignedScene, grid_from_reference
from mfaf_cli.errors import EngineError
from mfaf_cli.metadata import ModalitySpec, ModelMeta, Normalisation, default_classes
from mfaf_cli.normalize import apply_normalisation, band_percentiles
from mfaf_cli.pipeline.predict import predict
from mfaf_cli.tiling.windows import Window

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "sen1floods11"
UTM = from_origin(500_000.0, 4_500_000.0, 10.0, 10.0)


# ---- a fixed per-pixel "network" (a 1x1 conv + softmax, in numpy) ----------------------------
def pixel_meta(num_classes: int = 3, tile: int = 32, divisor: int = 16) -> ModelMeta:
    return ModelMeta(
        arch="pixel-test",
        modalities=(
            ModalitySpec("optical", ("red", "green", "blue", "nir"), Normalisation.identity(4)),
            ModalitySpec("sar", ("vv",), Normalisation.identity(1), "db"),
        ),
        classes=default_classes(num_classes),
        tile_size=tile,
        divisor=divisor,
    )


class PixelPredictor:
    """Predictor whose output at a pixel depends only on that pixel: softmax(W·x + b)."""

    engine = "numpy"
    device = "cpu"
    precision = "fp32"

    def __init__(self, meta: ModelMeta, seed: int = 0, weights: np.ndarray | None = None):
        self.meta = meta
        rng = np.random.default_rng(seed)
        c = sum(m.n_bands for m in meta.modalities)
        self.w = rng.normal(0, 1.5, (meta.num_classes, c)) if weights is None else weights
        self.b = np.zeros(meta.num_classes) if weights is None else np.zeros(len(weights))
        self.calls = 0
        self.windows_seen = 0

    def apply(self, x: np.ndarray) -> np.ndarray:
        """x (N, C, h, w) -> probabilities (N, K, h, w) float32."""
        logits = np.einsum("kc,nchw->nkhw", self.w, x.astype(np.float64))
        logits += self.b[None, :, None, None]
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def __call__(self, batch):
        self.calls += 1
        x = np.concatenate([batch[m] for m in self.meta.modality_names], axis=1)
        self.windows_seen += x.shape[0]
        return self.apply(x)


def normalised_scene(scene: AlignedScene, meta: ModelMeta):
    """Whole-scene arrays normalised with percentiles computed here from the full read."""
    g = scene.grid
    arrays, valid = scene.read(Window(0, 0, g.height, g.width))
    out = []
    for spec in meta.modalities:
        lo, hi = band_percentiles(arrays[spec.name], valid, spec.normalisation.p_low,
                                  spec.normalisation.p_high)  # fmt: skip
        out.append(apply_normalisation(arrays[spec.name], spec.normalisation, lo, hi))
    return np.concatenate(out)[None], valid


def make_pair(make_geotiff, rng, h: int, w: int, name: str = ""):
    opt = rng.gamma(3.0, 400.0, (4, h, w)).astype("float32")
    sar = rng.normal(-12.0, 3.0, (1, h, w)).astype("float32")
    # Spatial structure, so blending errors would show up.
    yy, xx = np.mgrid[0:h, 0:w]
    opt[3] += 800 * np.sin(xx / 7.0) * np.cos(yy / 5.0)
    return (
        make_geotiff(f"opt{name}.tif", opt, transform=UTM),
        make_geotiff(f"sar{name}.tif", sar, transform=UTM),
    )


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.profile, ds


# ---- stitching equivalence ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("h", "w", "blend"),
    [(70, 93, "gaussian"), (70, 93, "constant"), (20, 27, "cosine"), (40, 17, "gaussian")],
)
def test_per_pixel_model_stitched_equals_whole_image(make_geotiff, rng, tmp_path, h, w, blend):
    """Sizes not a multiple of the stride (24) and rasters smaller than the tile (32)."""
    opt, sar = make_pair(make_geotiff, rng, h, w)
    meta = pixel_meta()
    pp = PixelPredictor(meta)
    out, probs = tmp_path / "label.tif", tmp_path / "probs.tif"
    res = predict({"optical": opt, "sar": sar}, out, predictor=pp, tile=32, overlap=0.25,
                  batch_size=3, blend=blend, probabilities=probs, probabilities_dtype="float32",
                  progress=False)  # fmt: skip
    with AlignedScene({"optical": opt, "sar": sar}, grid_from_reference(opt)) as scene:
        x, valid = normalised_scene(scene, meta)
    assert valid.all()
    expect = pp.apply(x)[0]
    got, _, _ = read(probs)
    assert got.shape == expect.shape == (3, h, w)
    np.testing.assert_allclose(got, expect, atol=2e-6)
    labels, _, _ = read(out)
    top2 = np.sort(expect, axis=0)
    clear = (top2[-1] - top2[-2]) > 1e-4
    np.testing.assert_array_equal(labels[0][clear], expect.argmax(0)[clear])
    assert res.windows == pp.windows_seen and res.skipped_windows == 0


class LazyPredictor(PixelPredictor):
    """An asynchronous predictor (``submit``) that reads its batch only when its result is
    asked for, as the ONNX engine's streams may: the core must leave a submitted batch's
    inputs alone until then, while it fills the next batch."""

    asynchronous = True

    def __init__(self, meta: ModelMeta, fail_at: int | None = None) -> None:
        super().__init__(meta)
        self.events: list[str] = []
        self.fail_at = fail_at  # this batch's result raises, as a failed stream's tile would

    def submit(self, batch):
        k = self.calls
        self.calls += 1
        self.events.append(f"submit {k}")
        outer = self

        class Handle:
            finished_at = 0.0

            def result(self):
                outer.events.append(f"result {k}")
                if k == outer.fail_at:
                    raise EngineError("tile failed")
                x = np.concatenate([batch[m] for m in outer.meta.modality_names], axis=1)
                return outer.apply(x)

        return Handle()


def test_an_asynchronous_predictor_gets_the_next_batch_before_its_results_are_taken(
    make_geotiff, rng, tmp_path
):
    """The core submits batch k + 1 before it takes batch k's results (so the engine's
    streams never wait for the next batch), and the results are those of a synchronous run:
    batch k's inputs are not overwritten by batch k + 1's while k is in flight."""
    opt, sar = make_pair(make_geotiff, rng, 70, 93)
    meta = pixel_meta()
    outs = {}
    for name, pp in (("sync", PixelPredictor(meta)), ("async", LazyPredictor(meta))):
        outs[name] = tmp_path / f"probs_{name}.tif"
        predict({"optical": opt, "sar": sar}, tmp_path / f"{name}.tif", predictor=pp, tile=32,
                overlap=0.25, batch_size=3, probabilities=outs[name],
                probabilities_dtype="float32", progress=False)  # fmt: skip
    assert pp.calls > 3
    assert pp.events[:4] == ["submit 0", "submit 1", "result 0", "submit 2"]
    assert pp.events[-1] == f"result {pp.calls - 1}"
    np.testing.assert_array_equal(read(outs["async"])[0], read(outs["sync"])[0])


def test_an_asynchronous_batch_that_fails_leaves_no_output(make_geotiff, rng, tmp_path):
    """An error raised when a background batch's results are taken (a stream's tile failed)
    ends the run like a synchronous one: raised, and nothing left on disk."""
    opt, sar = make_pair(make_geotiff, rng, 80, 80)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(EngineError, match="tile failed"):
        predict({"optical": opt, "sar": sar}, out_dir / "m.tif",
                predictor=LazyPredictor(pixel_meta(), fail_at=2), tile=32, batch_size=1,
                probabilities=out_dir / "p.tif", progress=False)  # fmt: skip
    assert list(out_dir.iterdir()) == []


def _reference_blend(model_fn, x_full, tile, overlap, weight_fn_for):
    """In-memory blend: full K×H×W accumulator over tile×tile windows with reflect padding."""
    _, _, h, w = x_full[0].shape
    stride = tile - round(tile * overlap)

    def offsets(n):
        if n <= tile:
            return [0]
        o = list(range(0, n - tile, stride))
        return [*o, n - tile]

    acc = None
    wsum = np.zeros((h, w))
    for r in offsets(h):
        for c in offsets(w):
            crops = []
            for a in x_full:
                crop = a[:, :, r : r + tile, c : c + tile]
                ph, pw = tile - crop.shape[2], tile - crop.shape[3]
                crops.append(np.pad(crop, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect"))
            p = model_fn(crops)[0]
            hh, ww = min(tile, h - r), min(tile, w - c)
            wt = weight_fn_for(Window(r, c, tile, tile))[:hh, :ww]
            if acc is None:
                acc = np.zeros((p.shape[0], h, w))
            acc[:, r : r + hh, c : c + ww] += p[:, :hh, :ww] * wt
            wsum[r : r + hh, c : c + ww] += wt
    return (acc / wsum).astype(np.float32)


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_real_network_streamed_equals_in_memory_blend(make_geotiff, rng, tmp_path, blend):
    torch = pytest.importorskip("torch")
    from mfaf_cli.engine.torch_predictor import TorchPredictor
    from mfaf_cli.registry import create_model, default_meta
    from mfaf_cli.stitch import make_weight_fn
    from mfaf_cli.tiling.windows import tile_windows

    h, w, tile, overlap = 110, 100, 64, 0.25
    opt, sar = make_pair(make_geotiff, rng, h, w)
    meta = default_meta("unet", num_classes=3)
    torch.manual_seed(0)
    model = create_model("unet", meta.in_channels, num_classes=3)
    pred = TorchPredictor(model, meta, device="cpu", precision="fp32")
    probs = tmp_path / "p.tif"
    predict({"optical": opt, "sar": sar}, tmp_path / "l.tif", predictor=pred, tile=tile,
            overlap=overlap, blend=blend, batch_size=2, probabilities=probs,
            probabilities_dtype="float32", progress=False)  # fmt: skip
    got, _, _ = read(probs)

    with AlignedScene({"optical": opt, "sar": sar}, grid_from_reference(opt)) as scene:
        x, _ = normalised_scene(scene, meta)
    x_mods = [x[:, :4], x[:, 4:]]
    if blend == "constant":
        weight_fn = lambda win: np.ones((tile, tile))  # noqa: E731
    else:
        weight_fn = make_weight_fn(tile_windows(h, w, tile, overlap), blend)

    def model_fn(crops):
        with torch.inference_mode():
            logits = model(*[torch.from_numpy(np.ascontiguousarray(c)) for c in crops])
        return torch.softmax(logits, 1).numpy()

    expect = _reference_blend(model_fn, x_mods, tile, overlap, weight_fn)
    np.testing.assert_allclose(got, expect, atol=1e-5)
    # Not trivially equal to a single full-image pass (windows really differ at the seams).
    assert np.abs(model_fn([np.pad(m, ((0, 0), (0, 0), (0, 2), (0, 12)), mode="reflect")
                            for m in x_mods])[0][:, :h, :w] - expect).max() > 1e-4  # fmt: skip


# ---- co-registration through predict ----------------------------------------------------------
def test_utm_optical_wgs84_sar_output_grid_and_nodata(make_geotiff, rng, tmp_path):
    h, w = 96, 140
    opt = make_geotiff("opt.tif", rng.integers(1, 4000, (4, h, w)).astype("uint16"), transform=UTM)
    left, bottom, right, top = transform_bounds("EPSG:32630", "EPSG:4326", 500_000.0,
                                                4_500_000.0 - 10 * h, 500_000.0 + 10 * w,
                                                4_500_000.0)  # fmt: skip
    dx, dy = 0.00024, 0.00018  # ~20 m
    s_right = left + 0.45 * (right - left)  # SAR covers the west 45 %
    s_left, s_top = left - 4 * dx, top + 4 * dy
    sw, sh = int((s_right - s_left) / dx), int((s_top - bottom) / dy) + 4
    sar = make_geotiff("sar.tif", rng.normal(-11, 2, (1, sh, sw)).astype("float32"),
                       crs="EPSG:4326", transform=from_origin(s_left, s_top, dx, dy))  # fmt: skip
    pp = PixelPredictor(pixel_meta())
    out = tmp_path / "map.tif"
    res = predict({"optical": opt, "sar": sar}, out, predictor=pp, tile=32, overlap=0.25,
                  progress=False)  # fmt: skip
    labels, prof, _ = read(out)
    with rasterio.open(opt) as ref:
        assert prof["crs"] == ref.crs and prof["transform"] == ref.transform
        assert (prof["width"], prof["height"]) == (ref.width, ref.height)
    # SAR footprint computed independently: optical pixel centres inside the SAR rectangle.
    rows, cols = np.mgrid[0:h, 0:w]
    lon, lat = Transformer.from_crs("EPSG:32630", "EPSG:4326", always_xy=True).transform(
        500_000.0 + 10 * (cols + 0.5), 4_500_000.0 - 10 * (rows + 0.5)
    )
    inside = (lon > s_left) & (lon < s_left + sw * dx) & (lat > s_top - sh * dy) & (lat < s_top)
    assert 0.3 < inside.mean() < 0.6
    np.testing.assert_array_equal(labels[0] == 255, ~inside)
    assert set(np.unique(labels[0][inside])) <= {0, 1, 2}
    # Windows entirely outside the SAR footprint never reached the model.
    assert res.skipped_windows > 0
    assert pp.windows_seen == res.windows - res.skipped_windows
    assert res.valid_fraction == pytest.approx(inside.mean(), abs=1e-6)


def test_label_output_opens_georeferenced_coloured_and_labelled(make_geotiff, rng, tmp_path):
    opt, sar = make_pair(make_geotiff, rng, 50, 60)
    meta = pixel_meta(num_classes=2)
    out = tmp_path / "water.tif"
    predict({"optical": opt, "sar": sar}, out, predictor=PixelPredictor(meta), tile=32,
            confidence=tmp_path / "conf.tif", progress=False)  # fmt: skip
    with rasterio.open(out) as ds, rasterio.open(opt) as ref:
        assert ds.crs == ref.crs and ds.transform == ref.transform
        assert ds.dtypes == ("uint8",) and ds.nodata == 255 and ds.count == 1
        assert ds.profile["tiled"] and ds.block_shapes[0] == (512, 512)
        assert ds.compression is not None
        cmap = ds.colormap(1)
        assert cmap[0] == (225, 220, 200, 255) and cmap[1] == (30, 90, 200, 255)
        assert json.loads(ds.tags()["CLASS_NAMES"]) == ["not-water", "water"]
        assert ds.descriptions == ("class",)
    with rasterio.open(tmp_path / "conf.tif") as ds:
        conf = ds.read(1)
        assert ds.dtypes == ("uint8",) and conf.min() >= 127  # max prob of 2 classes >= 0.5


def test_confidence_kind_entropy_is_the_normalised_entropy(make_geotiff, rng, tmp_path):
    """--confidence-kind entropy writes -sum p log p / log K of the written probabilities."""
    from mfaf_cli.scores.calibration import normalised_entropy

    opt, sar = make_pair(make_geotiff, rng, 40, 50)
    meta = pixel_meta(num_classes=3)
    predict({"optical": opt, "sar": sar}, tmp_path / "m.tif", predictor=PixelPredictor(meta),
            tile=32, probabilities=tmp_path / "p.tif", probabilities_dtype="float32",
            confidence=tmp_path / "h.tif", confidence_kind="entropy", progress=False)  # fmt: skip
    with rasterio.open(tmp_path / "p.tif") as p, rasterio.open(tmp_path / "h.tif") as h:
        probs, ent = p.read(), h.read(1)
        assert h.descriptions == ("normalised entropy",)
    ok = np.isfinite(ent)
    assert ok.mean() > 0.9 and ent[ok].max() <= 1.0 and ent[ok].std() > 0.01
    np.testing.assert_allclose(ent[ok], normalised_entropy(probs)[ok], atol=1e-6)


def test_failure_midway_leaves_no_output(make_geotiff, rng, tmp_path):
    opt, sar = make_pair(make_geotiff, rng, 80, 80)

    class Exploding(PixelPredictor):
        def __call__(self, batch):
            if self.calls == 2:
                raise KeyboardInterrupt
            return super().__call__(batch)

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(KeyboardInterrupt):
        predict({"optical": opt, "sar": sar}, out_dir / "m.tif", predictor=Exploding(pixel_meta()),
                tile=32, batch_size=1, probabilities=out_dir / "p.tif", progress=False)  # fmt: skip
    assert list(out_dir.iterdir()) == []


def test_predictor_reused_across_scenes_and_json_summary(make_geotiff, rng, tmp_path):
    pp = PixelPredictor(pixel_meta())
    a = make_pair(make_geotiff, rng, 40, 50, "a")
    b = make_pair(make_geotiff, rng, 33, 70, "b")
    r1 = predict({"optical": a[0], "sar": a[1]}, tmp_path / "a.tif", predictor=pp, tile=32,
                 progress=False)  # fmt: skip
    r2 = predict({"optical": b[0], "sar": b[1]}, tmp_path / "b.tif", predictor=pp, tile=32,
                 progress=False, read_threads=0)  # fmt: skip
    d = json.loads(r2.to_json())
    assert d["grid"]["width"] == 70 and d["grid"]["height"] == 33
    assert d["outputs"]["label"] == str((tmp_path / "b.tif").absolute())
    assert d["windows"] == 6 and d["megapixels_per_second"] > 0
    assert r1.grid["crs"] == "EPSG:32630" and pp.windows_seen == r1.windows + r2.windows


# ---- the CLI and every bad input of the issue ------------------------------------------------
@pytest.fixture
def cli_pair(make_geotiff, rng):
    return make_pair(make_geotiff, rng, 48, 48)


def _one_error_line(err: str) -> str:
    errors = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    return errors[0]


def test_cli_predict_json_with_untrained_registry_model(cli_pair, tmp_path, runner):
    opt, sar = cli_pair
    out = tmp_path / "map.tif"
    code, stdout, err = runner("predict", "--optical", opt, "--sar", sar, "-o", out, "--model",
                               "unet", "--tile", "32", "--json", "--quiet")  # fmt: skip
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert len(lines) == 1
    d = json.loads(lines[0])
    assert d["model"] == "unet" and d["trained"] is False and d["windows"] == 4
    assert d["outputs"]["label"] == str(out.absolute())
    with rasterio.open(out) as ds:
        assert ds.read(1).max() < 2


def test_cli_full_disk_is_one_line_naming_the_file(cli_pair, tmp_path, runner, monkeypatch):
    """Regression: a full disk ended as "Error: internal error: RasterioIOError: Write failed"."""
    import errno

    from rasterio.errors import RasterioIOError

    from mfaf_cli.io import raster as R

    def full(self):
        raise RasterioIOError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(R.GeoTiffWriter, "_flush", full)
    opt, sar = cli_pair
    out = tmp_path / "map.tif"
    code, stdout, err = runner("predict", "--optical", opt, "--sar", sar, "-o", out, "--model",
                               "unet", "--tile", "32", "--quiet")  # fmt: skip
    line = _one_error_line(err)
    assert code == 1 and stdout == ""
    assert line == (
        f"Error: could not write {out}: no space left on device; free some space or write "
        "to another disk (nothing was written)"
    )
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_untranslated_os_errors(cli_pair, tmp_path, runner, monkeypatch):
    """The CLI's last resort: ENOSPC from any layer says the disk is full; other OS errors
    stay internal errors (an mfaf bug), one line each."""
    import errno
    import sys

    pipeline = sys.modules["mfaf_cli.pipeline.predict"]
    opt, sar = cli_pair
    for err, want in (
        (OSError(errno.ENOSPC, "No space left on device", "/runs/x/last.safetensors"),
         "Error: could not write /runs/x/last.safetensors: no space left on device; "
         "free some space"),
        (OSError(errno.EIO, "Input/output error"),
         "Error: internal error: OSError: [Errno 5] Input/output error (rerun with --debug)"),
    ):  # fmt: skip

        def boom(*a, _err=err, **kw):
            raise _err

        monkeypatch.setattr(pipeline, "grid_from_reference", boom)
        code, _, stderr = runner("predict", "--optical", opt, "--sar", sar, "-o",
                                 tmp_path / "m.tif", "--model", "unet", "--quiet")  # fmt: skip
        assert code == 1 and _one_error_line(stderr) == want


def _bad_inputs(tmp_path: Path, make_geotiff, cli_pair):
    opt, sar = cli_pair
    text = tmp_path / "notes.tif"
    text.write_text("not a raster\n" * 50)
    nocrs = make_geotiff("nocrs.tif", np.ones((1, 48, 48), "float32"), crs=None)
    far = make_geotiff("far.tif", np.ones((1, 48, 48), "float32"),
                       transform=from_origin(700_000.0, 4_500_000.0, 10, 10))  # fmt: skip
    s2 = make_geotiff("s2.tif", np.ones((13, 48, 48), "int16"), transform=UTM)
    lidar = make_geotiff("dsm.tif", np.ones((1, 48, 48), "float32"), transform=UTM)
    existing = tmp_path / "exists.tif"
    existing.write_bytes(b"keep me")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    base = ["predict", "--model", "mfafnet-s", "--tile", "32"]
    ok = ["--optical", opt, "--sar", sar]
    return (
        [
            # (args, expected exit code, message fragment, output that must not exist)
            ([*base, "--optical", tmp_path / "nope.tif", "--sar", sar], 1, "does not exist"),
            ([*base, "--optical", opt, "--sar", text], 1, "is not a readable raster"),
            (
                [*base, "--optical", opt, "--sar", nocrs],
                1,
                "has no CRS; assign one with gdal_edit.py",
            ),
            ([*base, "--optical", opt, "--sar", far], 1, "does not overlap"),
            ([*base, "--optical", s2, "--sar", sar], 1, "(4,3,2,8 if it is a 13-band Sentinel-2"),
            ([*base, *ok, "--lidar", lidar], 2, "takes optical + sar"),
            ([*base, *ok, "--overlap", "1.0"], 2, "overlap must be in [0, 1)"),
            ([*base, *ok, "--overlap", "-0.2"], 2, "overlap must be in [0, 1)"),
            (["predict", "--model", "mfafnet-s", "--tile", "40", *ok], 2, "not a multiple of 16"),
            ([*base, *ok, "--optical-bands", "1,2,9,3"], 1, "out of range"),
        ],
        existing,
        a_file,
    )


def test_every_bad_input_is_one_line_nonzero_and_leaves_nothing(
    make_geotiff, cli_pair, tmp_path, runner
):
    cases, existing, a_file = _bad_inputs(tmp_path, make_geotiff, cli_pair)
    for args, want_code, fragment in cases:
        out = tmp_path / "out.tif"
        code, _, err = runner(*args, "-o", out)
        line = _one_error_line(err)
        assert code == want_code, (args, err)
        assert fragment in line, (fragment, line)
        assert not out.exists()
    opt, sar = cli_pair
    base = ["predict", "--model", "mfafnet-s", "--tile", "32", "--optical", opt, "--sar", sar]
    more = [
        (tmp_path / "missing-dir" / "m.tif", "does not exist; create it"),
        (a_file / "m.tif", "not a folder"),
        (existing, "exists; pass --overwrite"),
    ]
    for out, fragment in more:
        code, _, err = runner(*base, "-o", out)
        assert code == 2 and fragment in _one_error_line(err)
    assert existing.read_bytes() == b"keep me"
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        code, _, err = runner(*base, "-o", ro / "m.tif")
        assert code == 2 and "not writable" in _one_error_line(err)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_cli_coregister_writes_aligned_inputs(make_geotiff, rng, tmp_path, runner):
    h, w = 40, 50
    opt = make_geotiff("opt.tif", rng.integers(1, 4000, (4, h, w)).astype("uint16"), transform=UTM)
    sar = make_geotiff("sar.tif", rng.normal(-11, 2, (1, 30, 40)).astype("float32"),
                       transform=from_origin(500_100.0, 4_500_000.0, 20, 20))  # fmt: skip
    lab = make_geotiff("lab.tif", rng.integers(0, 3, (1, h, w)).astype("uint8"), transform=UTM)
    out = tmp_path / "aligned"
    code, stdout, err = runner("coregister", "--optical", opt, "--sar", sar, "--label", lab,
                               "-o", out, "--json", "--quiet")  # fmt: skip
    assert code == 0, err
    d = json.loads(stdout)
    assert set(d["outputs"]) == {"optical", "sar", "label"}
    with rasterio.open(out / "sar.tif") as s, rasterio.open(opt) as ref:
        assert s.transform == ref.transform and s.crs == ref.crs and s.shape == ref.shape
        a = s.read(1)
        assert np.isnan(a[:, :10]).all() and np.isfinite(a[:, 10:]).all()  # SAR starts at x=100 m
        assert s.tags()["SAR_UNITS"] == "db"
    with rasterio.open(out / "label.tif") as s:
        np.testing.assert_array_equal(s.read(1), rasterio.open(lab).read(1))
    code, _, err = runner("coregister", "--optical", opt, "--sar", sar, "-o", out)
    assert code == 2 and "--overwrite" in _one_error_line(err)


# ---- the real Sen1Floods11 crop ----------------------------------------------------------------
@pytest.mark.skipif(not (EXAMPLES / "S2.tif").exists(), reason="examples/ crop not present")
def test_sen1floods11_crop_band_selection_and_nodata(tmp_path):
    """A fixed per-pixel water rule (green - nir, after the model's normalisation) through the
    whole pipeline on real S2 (13 bands, int16) + S1 (dB) finds the hand-labelled water."""
    meta = ModelMeta(
        arch="ndwi-test",
        modalities=(
            ModalitySpec("optical", ("green", "nir"), Normalisation.identity(2)),
            ModalitySpec("sar", ("vv",), Normalisation.identity(1), "db"),
        ),
        classes=default_classes(2),
        tile_size=64,
        divisor=16,
    )
    # class 1 (water) logit = 8*(green - nir) - 2*vv ; class 0 logit = 0
    weights = np.array([[0.0, 0.0, 0.0], [8.0, -8.0, -2.0]])
    pp = PixelPredictor(meta, weights=weights)
    out = tmp_path / "water.tif"
    predict({"optical": EXAMPLES / "S2.tif", "sar": EXAMPLES / "S1.tif"}, out, predictor=pp,
            bands={"optical": ["B3", 8], "sar": ["vv"]}, tile=64, progress=False)  # fmt: skip
    with rasterio.open(out) as ds, rasterio.open(EXAMPLES / "S2.tif") as s2:
        pred = ds.read(1)
        assert ds.transform == s2.transform and ds.crs == s2.crs
        s2_bad = (s2.read([3, 8]) == 0).any(axis=0)
    with rasterio.open(EXAMPLES / "S1.tif") as s1:
        s1_bad = ~np.isfinite(s1.read(1))
    truth = rasterio.open(EXAMPLES / "label.tif").read(1)
    np.testing.assert_array_equal(pred == 255, s2_bad | s1_bad)
    m = (truth >= 0) & (pred != 255)
    inter = ((pred == 1) & (truth == 1) & m).sum()
    union = (((pred == 1) | (truth == 1)) & m).sum()
    assert inter / union > 0.5


def test_cli_option_parsers():
    from mfaf_cli.cli.options import (
        parse_band_list,
        parse_bounds,
        parse_key_values,
        parse_resolution,
    )

    assert parse_band_list("4,3,2,8") == [4, 3, 2, 8]
    assert parse_band_list(" VV , 2") == ["VV", 2]
    for bad in ("", "4,,3", "0,1"):
        with pytest.raises(ValueError):
            parse_band_list(bad)
    assert parse_key_values(["compress=zstd", "ZSTD_LEVEL=9"]) == {
        "COMPRESS": "zstd",
        "ZSTD_LEVEL": "9",
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_key_values(["COMPRESS"])
    assert parse_bounds("1,2,3,4") == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(ValueError, match="empty"):
        parse_bounds("3,2,1,4")
    assert parse_resolution("10") == 10.0 and parse_resolution("10,20") == (10.0, 20.0)
    with pytest.raises(ValueError):
        parse_resolution("-5")


def test_cli_bad_flag_values_are_usage_errors(cli_pair, tmp_path, runner):
    opt, sar = cli_pair
    base = ["predict", "--optical", opt, "--sar", sar, "-o", tmp_path / "m.tif"]
    for extra, fragment in [
        (["--co", "COMPRESS"], "KEY=VALUE"),
        (["--optical-bands", "0"], "start at 1"),
        (["--bounds", "1,2,3"], "left,bottom,right,top"),
        (["--hsi-bands", "1"], "no --hsi input"),
    ]:
        code, _, err = runner(*base, *extra)
        assert code == 2, (extra, err)
        assert fragment in err
        assert not (tmp_path / "m.tif").exists()


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("optical", "is not MODALITY=LIST"),
        ("optical=", "empty item"),
        ("optical=0,1", "start at 1"),
        ("optical=-1", "start at 1"),
        ("radar=1", "unknown modality"),
    ],
)
def test_dataset_band_lists_are_1_based(bad: str, why: str) -> None:
    from mfaf_cli.cli.options import parse_modality_bands

    assert parse_modality_bands(["optical=4,3,2", "sar=1"]) == {"optical": [4, 3, 2], "sar": [1]}
    assert parse_modality_bands(["optical=B12,B8,B4", "sar=VV"]) == {
        "optical": ["B12", "B8", "B4"],
        "sar": ["VV"],
    }
    with pytest.raises(ValueError, match=why):
        parse_modality_bands([bad])

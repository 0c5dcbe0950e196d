"""The device row-band merger equals the numpy path: same labels, same stored probabilities.

On CPU (forced with ``MFAF_DEVICE_MERGER=1`` / ``device="cpu"``) the arithmetic is the same
float32 operations in the same order, so outputs are bit-identical; on CUDA (when present)
probabilities may differ by rounding (≤ 1e-6).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import write_geotiff as write_tif

from mfaf_cli.errors import EngineError
from mfaf_cli.io.raster import argmax_max, scale_probs
from mfaf_cli.stitch import StreamingMerger, make_weight_fn
from mfaf_cli.stitch.rows import FinishedRows, RowNeeds
from mfaf_cli.stitch.torch_merger import DeviceMerger
from mfaf_cli.tiling import Window, batched, tile_windows

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def _check_close(got: np.ndarray, want: np.ndarray, device: str) -> None:
    """Bit-identical on CPU; float32 within 1e-6 (NaN where NaN) elsewhere."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if device == "cpu" or got.dtype == np.uint8:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


# ---- the mergers alone, on synthetic probabilities ------------------------------------------
class NumpyRows:
    """Numpy merger sink turning raw rows into what the device merger emits."""

    def __init__(self, needs: RowNeeds) -> None:
        self.needs, self.rows = needs, []

    def __call__(self, row0: int, probs: np.ndarray, valid: np.ndarray) -> None:
        idx, best = argmax_max(probs)
        idx[~valid] = 255
        n = self.needs
        p = None if n.probabilities is None else scale_probs(probs, valid, n.probabilities)
        c = None if n.confidence is None else scale_probs(best[None], valid, n.confidence)
        self.rows.append(FinishedRows(row0, idx, p, c))


def _stack(rows: list[FinishedRows], field: str) -> np.ndarray:
    return np.concatenate([getattr(r, field) for r in rows], axis=-2)


def _run(merger: object, wins: list[Window], probs: dict, valid: dict, to: object) -> None:
    for group in batched(wins, 3):
        for w in group:
            if valid[w] is None:
                merger.add_skipped(w)  # type: ignore[attr-defined]
            else:
                merger.add(w, to(probs[w]), valid[w])  # type: ignore[attr-defined]
    merger.finish()  # type: ignore[attr-defined]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_device_merger_equals_streaming_merger(device: str, dtype: str, blend: str) -> None:
    rng = np.random.default_rng(7)
    h, w, k, tile = 77, 53, 3, 24
    wins = tile_windows(h, w, tile, 0.3)
    # rows 70.. are touched by no window: they must come out as nodata rows
    wins = [x for x in wins if x.row_off < 40] + [x for x in wins if x.row_off >= 40][:2]
    probs, valid = {}, {}
    for i, win in enumerate(wins):
        p = rng.dirichlet(np.ones(k), size=(tile, tile)).astype(np.float32).transpose(2, 0, 1)
        p[:, :4] = np.array([0.45, 0.45, 0.1], np.float32)[:, None, None]  # tie: first wins
        v = rng.random((tile, tile)) > 0.1
        p[:, ~v] = np.nan  # invalid pixels may hold anything
        probs[win], valid[win] = np.ascontiguousarray(p), (None if i == 4 else v)
    needs = RowNeeds(probabilities=dtype, confidence=dtype)  # type: ignore[arg-type]
    ref = NumpyRows(needs)
    numpy_merger = StreamingMerger(h, w, k, wins, make_weight_fn(wins, blend), ref)
    _run(numpy_merger, wins, probs, valid, lambda a: a)
    got: list[FinishedRows] = []
    dev = DeviceMerger(h, w, k, wins, make_weight_fn(wins, blend), got.append,
                       device=device, needs=needs)  # fmt: skip
    _run(dev, wins, probs, valid, lambda a: torch.from_numpy(a).to(device))
    assert [r.row0 for r in got] == [r.row0 for r in ref.rows]  # same emission order
    assert got[-1].row0 + got[-1].rows == h
    index = _stack(got, "index")
    _check_close(index, _stack(ref.rows, "index"), device)
    assert (index == 255).any() and (index != 255).sum() > 0.5 * index.size
    assert (index[:4] == 0).mean() > 0.8  # the tied rows
    _check_close(_stack(got, "probabilities"), _stack(ref.rows, "probabilities"), device)
    _check_close(_stack(got, "confidence"), _stack(ref.rows, "confidence"), device)


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_model_output_is_an_engine_error(device: str) -> None:
    wins = tile_windows(16, 16, 8, 0.0)
    m = DeviceMerger(
        16,
        16,
        2,
        wins,
        None,
        lambda rows: None,
        device=device,
        nonfinite=lambda: EngineError("the model produced non-finite values"),
    )
    bad = torch.full((2, 8, 8), 0.5, device=device)
    bad[0, 3, 3] = float("nan")
    with pytest.raises(EngineError, match="non-finite"):
        for w in wins:
            m.add(w, bad if w == wins[0] else torch.full((2, 8, 8), 0.5, device=device))
        m.finish()


def test_device_merger_band_stays_bounded() -> None:
    h, w, tile = 400, 40, 32
    wins = tile_windows(h, w, tile, 0.25)
    m = DeviceMerger(h, w, 2, wins, make_weight_fn(wins), lambda rows: None)
    for win in wins:
        m.add(win, torch.full((2, tile, tile), 0.5))
    m.finish()
    assert m.done and m.capacity <= tile + 24


# ---- the whole core, on a real network and scene ------------------------------------------
def _scene(folder: Path) -> dict[str, Path]:
    """Optical + SAR, 70×90, with a nodata block big enough to skip whole windows."""
    rng = np.random.default_rng(3)
    opt = rng.integers(1, 3000, (4, 70, 90)).astype("int16")
    opt[-1] += (900 * np.sin(np.arange(90) / 5.0)).astype("int16")[None, :]
    opt[:, :36, :36] = 0
    opt[:, 50:53, 60:80] = 0
    sar = rng.normal(-12.0, 3.0, (1, 70, 90)).astype("float32")
    return {
        "optical": write_tif(folder / "s2.tif", opt, nodata=0),
        "sar": write_tif(folder / "s1.tif", sar),
    }


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def _predict(inputs: dict, out: Path, predictor: object, dtype: str) -> dict[str, np.ndarray]:
    from mfaf_cli.pipeline.predict import predict

    paths = {"label": out / "map.tif", "probs": out / "p.tif", "conf": out / "c.tif"}
    out.mkdir()
    predict(inputs, paths["label"], predictor=predictor, tile=32, overlap=0.25, batch_size=5,
            probabilities=paths["probs"], probabilities_dtype=dtype, confidence=paths["conf"],
            progress=False, read_threads=1)  # fmt: skip
    return {k: _read(p) for k, p in paths.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_predict_through_the_device_merger_writes_the_same_files(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str, dtype: str
) -> None:
    from mfaf_cli.engine import create_predictor
    from mfaf_cli.engine.torch_predictor import TorchPredictor
    from mfaf_cli.pipeline.core import scene_plan

    inputs = _scene(tmp_path)
    plan = scene_plan(str(inputs["optical"]), _grid(inputs), 32, 0.25)
    assert len(plan.windows) % 5, "the last batch should be partial"
    pr = create_predictor(str(ckpt), engine="torch", device=device, precision="fp32")
    monkeypatch.setenv("MFAF_DEVICE_MERGER", "0")
    ref = _predict(inputs, tmp_path / "numpy", pr, dtype)
    monkeypatch.setenv("MFAF_DEVICE_MERGER", "1")
    monkeypatch.setattr(TorchPredictor, "__call__", _no_host_copies)
    got = _predict(inputs, tmp_path / "device", pr, dtype)
    label = got["label"]
    assert (label == 255).sum() >= 36 * 36 and set(np.unique(label)) - {255} <= {0, 1}
    np.testing.assert_array_equal(label, ref["label"])
    for key in ("probs", "conf"):
        _check_close(got[key], ref[key], device)


def _no_host_copies(self: object, batch: object) -> None:
    raise AssertionError("the device merger path must not ask for host probabilities")


def _grid(inputs: dict):
    from mfaf_cli.coreg import grid_from_reference

    return grid_from_reference(str(inputs["optical"]))


@pytest.mark.parametrize("device", DEVICES)
def test_confusion_and_null_sinks_through_the_device_merger(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    from mfaf_cli.engine import create_predictor
    from mfaf_cli.pipeline.predict import run_on_scene
    from mfaf_cli.pipeline.sinks import ConfusionSink, NullSink
    from mfaf_cli.pipeline.spec import InferenceSpec

    inputs = _scene(tmp_path)
    truth = (np.arange(90)[None, :] % 7 < 3).repeat(70, 0).astype("uint8")
    truth[60:, :10] = 255
    truth_path = write_tif(tmp_path / "truth.tif", truth, nodata=255)
    pr = create_predictor(str(ckpt), engine="torch", device=device, precision="fp32")
    spec = InferenceSpec(tile=32, overlap=0.25, batch_size=5, threads=1)
    finished: list[bool] = []
    for cls in (ConfusionSink, NullSink):
        original = cls.write_finished
        monkeypatch.setattr(
            cls,
            "write_finished",
            lambda self, rows, f=original: finished.append(True) or f(self, rows),
        )
    makers = {"confusion": lambda g: ConfusionSink(truth_path, g, 2), "null": lambda g: NullSink()}
    out = {}
    for on in ("0", "1"):
        monkeypatch.setenv("MFAF_DEVICE_MERGER", on)
        finished.clear()
        for name, make in makers.items():
            _, _, sink = run_on_scene(inputs, pr.meta, pr, make, spec, read_threads=0)
            out[on, name] = (sink.confusion if name == "confusion" else
                             (sink.pixels, sink.valid_pixels))  # fmt: skip
        assert bool(finished) == (on == "1")
    np.testing.assert_array_equal(out["1", "confusion"], out["0", "confusion"])
    assert out["1", "confusion"].sum() > 0
    assert out["1", "null"] == out["0", "null"]
    assert out["1", "null"][0] == 70 * 90 > out["1", "null"][1] > 0


@pytest.mark.parametrize("device", DEVICES)
def test_predict_tensor_equals_the_host_output(ckpt: Path, device: str) -> None:
    """Chunked by the predictor's batch size (the last chunk partial), left on the device."""
    from mfaf_cli.engine import create_predictor

    pr = create_predictor(str(ckpt), engine="torch", device=device, precision="fp32",
                          batch_size=2)  # fmt: skip
    rng = np.random.default_rng(0)
    batch = {m.name: rng.normal(size=(5, m.n_bands, 32, 32)).astype(np.float32)
             for m in pr.meta.modalities}  # fmt: skip
    t = pr.predict_tensor(batch)
    assert t.device.type == device and t.dtype == torch.float32 and t.shape == (5, 2, 32, 32)
    _check_close(t.cpu().numpy(), pr(batch), device)


def test_finished_index_with_nodata_maps_to_class_ids() -> None:
    """A finished-rows index holds 255 where invalid; mapping plane -> class id must not
    index the class table with it."""
    from mfaf_cli.io.raster import ids_to_labels

    rows = FinishedRows(0, np.array([[0, 1, 255]], np.uint8))
    got = ids_to_labels(rows.index, rows.valid, np.array([3, 7]))
    np.testing.assert_array_equal(got, [[3, 7, 255]])

"""Window anchoring (issue 8.3): a --bounds crop computes exactly the windows of the whole run,
reading real pixels past the crop, so four quadrant runs mosaic to the whole-scene map."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import EXAMPLES
from tiny_net import ContextNet, tiny_meta

from mfaf_cli.io import weights as W
from mfaf_cli.metadata import ModalitySpec, Normalisation
from mfaf_cli.pipeline import core
from mfaf_cli.pipeline.predict import predict
from mfaf_cli.pipeline.read_spec import ReadSpec
from mfaf_cli.tiling.plan import plan_windows
from mfaf_cli.tiling.windows import tile_windows

CHIP = EXAMPLES / "sen1floods11"
BANDS = {"optical": [4, 3, 2, 8], "sar": [1]}


@pytest.fixture
def context_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkpoint with extent-independent ("fixed") normalisation."""
    monkeypatch.setattr(W, "build_model", lambda meta: ContextNet(meta.in_channels, 2))
    fixed = (
        ModalitySpec("optical", ("red", "green", "blue", "nir"),
                     Normalisation("fixed", (1500.0,) * 4, (1000.0,) * 4)),
        ModalitySpec("sar", ("vv",), Normalisation("fixed", (-15.0,), (5.0,)), units="db"),
    )  # fmt: skip
    meta = replace(tiny_meta(tile=64), modalities=fixed)
    torch.manual_seed(0)
    return W.save_checkpoint(ContextNet(meta.in_channels, 2), meta, tmp_path / "ctx.safetensors")


def _run(model: Path, out: Path, bounds: tuple[float, ...] | None = None) -> None:
    predict({"optical": CHIP / "S2.tif", "sar": CHIP / "S1.tif"}, out, str(model),
            bounds=bounds, bands=BANDS, engine="torch", device="cpu", progress=False,
            probabilities=out.with_suffix(".p.tif"), probabilities_dtype="float32")  # fmt: skip


def _quadrant_mosaic(model: Path, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(CHIP / "S2.tif") as ds:
        t, h, w = ds.transform, ds.height, ds.width
    labels = np.full((h, w), 255, np.uint8)
    probs = np.full((2, h, w), np.nan, np.float32)
    for r0, r1 in ((0, h // 2), (h // 2, h)):
        for c0, c1 in ((0, w // 2), (w // 2, w)):
            (left, top), (right, bottom) = t @ (c0, r0), t @ (c1, r1)
            out = tmp / f"q{r0}_{c0}.tif"
            _run(model, out, (left, bottom, right, top))
            with rasterio.open(out) as q:
                assert q.shape == (r1 - r0, c1 - c0)
                labels[r0:r1, c0:c1] = q.read(1)
            with rasterio.open(out.with_suffix(".p.tif")) as q:
                probs[:, r0:r1, c0:c1] = q.read()
    return labels, probs


def test_anchored_plan_of_whole_raster_is_the_plain_plan() -> None:
    assert plan_windows(384, 384, 64, 0.25).windows == tile_windows(384, 384, 64, 0.25)
    crop = plan_windows(100, 90, 64, 0.25, anchor=(192, 200, 384, 384))
    full = {(w.row_off, w.col_off) for w in tile_windows(384, 384, 64, 0.25)}
    shifted = {(w.row_off + 192, w.col_off + 200) for w in crop.windows}
    touching = {(r, c) for r, c in full if r < 292 and r + 64 > 192 and c < 290 and c + 64 > 200}
    assert shifted == touching
    assert crop.read_offset[0] <= 0 and crop.read_offset[1] <= 0


@pytest.mark.parametrize("panel", [None, 70])
def test_quadrant_runs_equal_the_whole_run(
    context_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, panel: int | None
) -> None:
    """Four ``--bounds`` quadrants mosaic to the whole run; also when the quadrants (anchored
    crops, windows reaching past them) run as column panels."""
    whole = tmp_path / "whole.tif"
    _run(context_model, whole)
    if panel is not None:
        monkeypatch.setattr(core, "PANEL_WIDTH", panel)
    with rasterio.open(whole) as ds:
        ref = ds.read(1)
    with rasterio.open(whole.with_suffix(".p.tif")) as ds:
        ref_p = ds.read()
    labels, probs = _quadrant_mosaic(context_model, tmp_path)
    valid = ref != 255
    assert valid.mean() > 0.5 and 0 < (ref[valid] == 1).mean() < 1  # both classes occur
    np.testing.assert_array_equal(labels, ref)  # same pixels, same nodata
    np.testing.assert_array_equal(probs[:, valid], ref_p[:, valid])


def test_unanchored_quadrants_differ(
    context_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: windows placed relative to the crop (the old behaviour) change pixels."""
    whole = tmp_path / "whole.tif"
    _run(context_model, whole)
    with rasterio.open(whole.with_suffix(".p.tif")) as ds:
        ref_p = ds.read()
    monkeypatch.setattr(core, "reference_anchor", lambda path, grid: None)
    _, probs = _quadrant_mosaic(context_model, tmp_path)
    valid = np.isfinite(ref_p[0])
    assert np.abs(probs[:, valid] - ref_p[:, valid]).max() > 1e-3


def _read_outputs(out: Path) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(out) as ds, rasterio.open(out.with_suffix(".p.tif")) as p:
        return ds.read(1), p.read()


@pytest.mark.parametrize("device_merger", ["0", "1"])
def test_column_panels_equal_the_whole_width_run(
    context_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device_merger: str
) -> None:
    """A scene run as column panels (memory bounded by the panel, not the width) writes the
    pixels of the whole-width run: same windows, same weights, same order per pixel; with the
    numpy row band and with the device one (forced here on the CPU)."""
    monkeypatch.setenv(core.DEVICE_MERGER_ENV, device_merger)
    _run(context_model, tmp_path / "whole.tif")
    ref, ref_p = _read_outputs(tmp_path / "whole.tif")
    monkeypatch.setattr(core, "PANEL_WIDTH", 100)  # 384 px: panels of 100, 100, 100, 84
    _run(context_model, tmp_path / "panels.tif")
    labels, probs = _read_outputs(tmp_path / "panels.tif")
    valid = ref != 255
    assert valid.mean() > 0.5 and 0 < (ref[valid] == 1).mean() < 1
    np.testing.assert_array_equal(labels, ref)
    np.testing.assert_array_equal(probs[:, valid], ref_p[:, valid])


def test_confusion_sink_scores_panels_like_the_whole_width(
    context_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mfaf_cli.engine import create_predictor
    from mfaf_cli.pipeline.predict import run_on_scene
    from mfaf_cli.pipeline.sinks import ConfusionSink
    from mfaf_cli.pipeline.spec import InferenceSpec

    predictor = create_predictor(str(context_model), engine="torch", device="cpu")
    inputs = {"optical": CHIP / "S2.tif", "sar": CHIP / "S1.tif"}

    def confusion() -> np.ndarray:
        def make_sink(grid):  # type: ignore[no-untyped-def]
            return ConfusionSink(CHIP / "label.tif", grid, 2, ignore_index=255)

        _, stats, sink = run_on_scene(inputs, predictor.meta, predictor, make_sink,
                                      InferenceSpec(tile=64), ReadSpec(bands=BANDS))  # fmt: skip
        assert stats.windows == len(tile_windows(384, 384, 64, 0.25))
        return sink.confusion

    whole = confusion()
    monkeypatch.setattr(core, "PANEL_WIDTH", 128)
    assert whole.sum() > 100_000 and np.array_equal(confusion(), whole)


def test_panel_plans_cover_the_plan_with_its_tapers() -> None:
    plan = plan_windows(300, 300, 64, 0.25)
    seen = set()
    for c0, c1 in core.column_panels(300, 128):
        sub = plan.columns(c0, c1)
        assert sub.width == c1 - c0
        for w in sub.windows:
            full = next(
                v for v in plan.windows if (v.row_off, v.col_off) == (w.row_off, w.col_off + c0)
            )
            assert sub.tapers[w] == plan.tapers[full]
            assert sub.read_window(w).col_off == plan.read_window(full).col_off
            seen.add(full)
    assert seen == set(plan.windows)
    assert core.column_panels(300, 128) == [(0, 128), (128, 256), (256, 300)]


def test_panels_run_each_window_once(context_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows straddling a panel edge are carried to the next panel, not predicted again."""
    from mfaf_cli.engine import create_predictor
    from mfaf_cli.pipeline.predict import run_on_scene
    from mfaf_cli.pipeline.sinks import NullSink
    from mfaf_cli.pipeline.spec import InferenceSpec

    monkeypatch.setenv(core.DEVICE_MERGER_ENV, "0")
    inner = create_predictor(str(context_model), engine="torch", device="cpu")
    counted: list[int] = []

    class Counting:
        meta, device, engine, precision = inner.meta, "cpu", "torch", "fp32"

        def __call__(self, batch: dict) -> np.ndarray:
            counted.append(len(next(iter(batch.values()))))
            return inner(batch)

    def windows_run() -> int:
        counted.clear()
        run_on_scene({"optical": CHIP / "S2.tif", "sar": CHIP / "S1.tif"}, inner.meta,
                     Counting(), lambda grid: NullSink(), InferenceSpec(tile=64),
                     ReadSpec(bands=BANDS))  # fmt: skip
        return sum(counted)

    whole = windows_run()
    monkeypatch.setattr(core, "PANEL_WIDTH", 100)
    assert whole == len(tile_windows(384, 384, 64, 0.25)) and windows_run() == whole


def test_the_next_panel_is_read_while_this_one_finishes(
    context_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Column panels share the run's reader threads: each panel's reader starts (queues its
    first chunks) before the panel before it has finished, and the threads are gone after."""
    import threading

    from mfaf_cli.pipeline import strips

    events: list[tuple[str, int]] = []
    made: list[object] = []  # keeps every reader alive: ids stay unique
    run_panel, start = core._run_panel, strips.StripReader.start

    def panel(reader: object, *a: object, **k: object) -> object:
        events.append(("begin", id(reader)))
        try:
            return run_panel(reader, *a, **k)  # type: ignore[arg-type]
        finally:
            events.append(("end", id(reader)))

    def started(self: strips.StripReader) -> None:
        made.append(self)
        events.append(("start", id(self)))
        start(self)

    monkeypatch.setattr(core, "_run_panel", panel)
    monkeypatch.setattr(strips.StripReader, "start", started)
    monkeypatch.setattr(core, "PANEL_WIDTH", 100)  # 384 px: four panels
    _run(context_model, tmp_path / "panels.tif")
    begins = [r for e, r in events if e == "begin"]
    assert len(begins) == 4
    for before, after in itertools.pairwise(begins):
        assert events.index(("start", after)) < events.index(("end", before))
    assert not [t for t in threading.enumerate() if t.name.startswith("mfaf-strip")]


def test_a_failing_panel_stops_the_next_panels_reader_and_writes_nothing(
    context_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that fails after the next panel's reader has started closes that reader and the
    run's reader threads, and leaves no output."""
    import threading

    run_panel = core._run_panel
    calls = {"n": 0}

    def panel(*a: object, read_all: object = None, **k: object) -> object:
        calls["n"] += 1

        def boom() -> None:
            read_all()  # type: ignore[operator]  # the next panel's reader starts...
            raise RuntimeError("boom")  # ...and this panel fails

        return run_panel(*a, read_all=boom if calls["n"] == 2 else read_all, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(core, "_run_panel", panel)
    monkeypatch.setattr(core, "PANEL_WIDTH", 100)
    out = tmp_path / "panels.tif"
    with pytest.raises(RuntimeError, match="boom"):
        _run(context_model, out)
    assert calls["n"] == 2 and not out.exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("mfaf-strip")]

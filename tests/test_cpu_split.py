"""Where a run's CPU goes (issue 19): ``--json`` reports engine vs reader vs merge seconds,
and a reader-bound predictor gets the cores moved to its readers."""

from __future__ import annotations

import time

import numpy as np
from rasterio.transform import from_origin

from mfaf_cli.metadata import ModalitySpec, ModelMeta, Normalisation, default_classes
from mfaf_cli.pipeline.cputime import CpuClock, charge
from mfaf_cli.pipeline.predict import predict
from mfaf_cli.pipeline.spec import InferenceSpec

UTM = from_origin(500_000.0, 4_500_000.0, 10.0, 10.0)


def _meta() -> ModelMeta:
    return ModelMeta(
        arch="pixel-test",
        modalities=(
            ModalitySpec("optical", ("red", "green", "blue", "nir"), Normalisation.identity(4)),
            ModalitySpec("sar", ("vv",), Normalisation.identity(1), "db"),
        ),
        classes=default_classes(2),
        tile_size=32,
        divisor=16,
    )


class BusyPredictor:
    """Spends a known amount of CPU per batch in the calling thread (the engine's share)."""

    engine, precision, device = "busy", "fp32", "cpu"

    def __init__(self, burn_s: float, reader_bound: bool = False) -> None:
        self.meta = _meta()
        self.burn_s, self.calls, self.reader_bound = burn_s, 0, reader_bound

    def __call__(self, batch: dict) -> np.ndarray:
        self.calls += 1
        t0 = time.thread_time()
        while time.thread_time() - t0 < self.burn_s:
            pass
        n = len(batch["optical"])
        return np.full((n, 2, 32, 32), 0.5, np.float32)


def _pair(make_geotiff, rng, h: int = 96, w: int = 96):
    opt = rng.gamma(3.0, 400.0, (4, h, w)).astype("float32")
    sar = rng.normal(-12.0, 3.0, (1, h, w)).astype("float32")
    return make_geotiff("o.tif", opt, transform=UTM), make_geotiff("s.tif", sar, transform=UTM)


def test_json_reports_engine_and_reader_cpu_seconds(make_geotiff, rng, tmp_path) -> None:
    opt, sar = _pair(make_geotiff, rng)
    pred = BusyPredictor(0.02)
    res = predict({"optical": opt, "sar": sar}, tmp_path / "m.tif", predictor=pred, tile=32,
                  batch_size=4, progress=False, threads=2)  # fmt: skip
    cpu = res.to_dict()["cpu_seconds"]
    assert set(cpu) == {"engine", "read", "merge", "total"}
    # the engine's share holds at least what the predictor burned; readers did read
    assert cpu["engine"] >= pred.calls * 0.02 * 0.95
    assert cpu["read"] > 0 and cpu["merge"] > 0
    assert abs(cpu["engine"] + cpu["read"] + cpu["merge"] - cpu["total"]) < 0.01
    assert res.threads == {"engine": 0, "readers": 1}  # the busy predictor has no pool


def test_reader_bound_predictor_gets_readers(make_geotiff, rng, tmp_path) -> None:
    opt, sar = _pair(make_geotiff, rng)
    res = predict({"optical": opt, "sar": sar}, tmp_path / "m.tif",
                  predictor=BusyPredictor(0.0, reader_bound=True), tile=32, progress=False,
                  threads=4)  # fmt: skip
    assert res.threads["readers"] == InferenceSpec(threads=4).thread_split(reader_bound=True)[1]
    assert res.threads["readers"] == 3


def test_charge_counts_only_its_thread_and_stage() -> None:
    clock = CpuClock()
    with charge("read"):
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.05:
            pass
    split = clock.split()
    assert 0.05 <= split.read < 0.2 and split.merge == 0.0
    assert split.total >= split.read


def test_json_records_how_scene_statistics_were_sampled(make_geotiff, rng, tmp_path) -> None:
    """A scene-percentile record (``_meta`` uses one) reports its pre-pass in --json."""
    opt, sar = _pair(make_geotiff, rng)
    pred = BusyPredictor(0.0)
    res = predict({"optical": opt, "sar": sar}, tmp_path / "m.tif", predictor=pred, tile=32,
                  progress=False)  # fmt: skip
    st = res.to_dict()["statistics"]
    assert st["method"] == "blocks" and st["fraction_read"] == 1.0  # a small scene: all of it
    assert st["pixels_read"] == 96 * 96 and st["seconds"] >= 0

"""Predictors: PyTorch and ONNX Runtime engines behind create_predictor (mfaf_cli/engine/)."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_net import TinyFusion, tiny_meta, use_tiny_builder
from torch import nn

from mfaf_cli import registry
from mfaf_cli.engine import Predictor, create_predictor
from mfaf_cli.engine.onnx_predictor import (
    OnnxPredictor,
    choose_providers,
    runtime_errors,
    softmax,
)
from mfaf_cli.engine.streams import Streams, stream_layout
from mfaf_cli.engine.torch_predictor import TorchPredictor, resolve_device, resolve_precision
from mfaf_cli.errors import (
    BandMismatchError,
    EngineError,
    ModalityError,
    UsageError,
    WeightsError,
)
from mfaf_cli.io import weights as W
from mfaf_cli.metadata import ModelMeta
from mfaf_cli.models.export import export_onnx


@pytest.fixture
def tiny() -> tuple[TinyFusion, ModelMeta]:
    torch.manual_seed(0)
    meta = tiny_meta()
    model = TinyFusion(meta.in_channels, meta.num_classes).eval()
    with torch.no_grad():
        model.head.weight.mul_(4)  # confident, uneven probabilities
    return model, meta


@pytest.fixture
def tiny_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    use_tiny_builder(monkeypatch)


def make_batch(
    meta: ModelMeta, n: int = 3, h: int = 32, w: int = 32, seed: int = 1
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        m.name: rng.normal(size=(n, m.n_bands, h, w)).astype(np.float32) for m in meta.modalities
    }


def reference(model: nn.Module, meta: ModelMeta, batch: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        x = [torch.from_numpy(batch[m]) for m in meta.modality_names]
        return torch.softmax(model(*x), dim=1).numpy()


# ---- torch engine -----------------------------------------------------------------------------
def test_torch_predictor_probabilities(tiny: tuple[TinyFusion, ModelMeta]) -> None:
    model, meta = tiny
    pred = TorchPredictor(model, meta, device="cpu")
    assert isinstance(pred, Predictor)
    assert (pred.device, pred.precision) == ("cpu", "fp32")
    batch = make_batch(meta)
    out = pred(batch)
    assert out.dtype == np.float32 and out.shape == (3, 2, 32, 32)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out, reference(model, meta, batch), atol=1e-6)
    assert out.min() < 0.2 and out.max() > 0.8  # not a constant 0.5 map


def test_torch_predictor_pads_to_divisor_and_crops(tiny: tuple[TinyFusion, ModelMeta]) -> None:
    model, meta = tiny
    batch = make_batch(meta, n=2, h=20, w=37)  # not multiples of 16
    out = TorchPredictor(model, meta, device="cpu")(batch)
    assert out.shape == (2, 2, 20, 37)
    np.testing.assert_allclose(out, reference(model, meta, batch), atol=1e-6)  # per-pixel model


def test_torch_predictor_batch_size_chunks(tiny: tuple[TinyFusion, ModelMeta]) -> None:
    model, meta = tiny
    batch = make_batch(meta, n=5)
    full = TorchPredictor(model, meta, device="cpu")(batch)
    chunked = TorchPredictor(model, meta, device="cpu", batch_size=2)(batch)
    np.testing.assert_allclose(chunked, full, atol=1e-6)


def test_batch_validation(tiny: tuple[TinyFusion, ModelMeta]) -> None:
    model, meta = tiny
    pred = TorchPredictor(model, meta, device="cpu")
    batch = make_batch(meta)
    with pytest.raises(ModalityError, match="missing sar"):
        pred({"optical": batch["optical"]})
    with pytest.raises(ModalityError, match="not lidar"):
        pred(batch | {"lidar": batch["sar"]})
    with pytest.raises(BandMismatchError, match=r"optical has 3 band.*takes 4"):
        pred(batch | {"optical": batch["optical"][:, :3]})
    with pytest.raises(UsageError, match="disagree"):
        pred(batch | {"sar": batch["sar"][:, :, :16]})
    with pytest.raises(UsageError, match=r"\(N, C, h, w\)"):
        pred(batch | {"sar": batch["sar"][0]})


def test_wrong_class_count_is_an_engine_error(tiny: tuple[TinyFusion, ModelMeta]) -> None:
    model, meta = tiny
    three = replace(meta, classes=(*meta.classes, replace(meta.classes[0], id=2, name="x")))
    with pytest.raises(EngineError, match="returned 2 classes"):
        TorchPredictor(model, three, device="cpu")(make_batch(meta))


def test_device_and_precision_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(UsageError, match="fp16 needs a CUDA"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(UsageError, match="invalid device"):
        resolve_device("tpu")
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
        with pytest.raises(EngineError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(EngineError, match=r"no CUDA device.*--device cpu"):
            resolve_device("cuda")
        with pytest.raises(EngineError):
            resolve_device("cuda:1")


def test_bf16_autocast_on_cpu_is_close(tiny: tuple[TinyFusion, ModelMeta]) -> None:
    model, meta = tiny
    batch = make_batch(meta)
    out = TorchPredictor(model, meta, device="cpu", precision="bf16")(batch)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference(model, meta, batch), atol=0.05)


def test_create_predictor_from_checkpoint(
    tmp_path: Path, tiny: tuple[TinyFusion, ModelMeta], tiny_registry: None
) -> None:
    model, meta = tiny
    path = W.save_checkpoint(model, meta, tmp_path / "tiny.safetensors")
    pred = create_predictor(str(path), engine="torch", device="cpu", modalities=("optical", "sar"))
    batch = make_batch(meta)
    assert pred.meta == meta
    np.testing.assert_array_equal(pred(batch), TorchPredictor(model, meta, "cpu")(batch))
    with pytest.raises(ModalityError, match="takes optical \\+ sar"):
        create_predictor(str(path), modalities=("hsi", "lidar"))
    with pytest.raises(UsageError, match="unknown engine"):
        create_predictor(str(path), engine="tensorrt")
    with pytest.raises(UsageError, match="batch size"):
        create_predictor(str(path), batch_size=0)


def test_untrained_registry_model_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MFAF_WEIGHTS_DIR", str(tmp_path / "none"))
    pred = create_predictor("unet-sar", device="cpu", modalities=("sar",))
    out = pred({"sar": np.random.default_rng(0).normal(size=(2, 1, 32, 32)).astype(np.float32)})
    assert out.shape == (2, 2, 32, 32)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


# ---- onnx engine ------------------------------------------------------------------------------
@pytest.fixture
def tiny_onnx(tmp_path: Path, tiny: tuple[TinyFusion, ModelMeta]) -> Path:
    model, meta = tiny
    return export_onnx(model, meta, tmp_path / "tiny.onnx")


def test_onnx_predictor_matches_torch(tiny: tuple[TinyFusion, ModelMeta], tiny_onnx: Path) -> None:
    model, meta = tiny
    pred = OnnxPredictor(tiny_onnx, device="cpu")
    assert pred.meta == meta and pred.device == "cpu" and pred.input_hw == (32, 32)
    batch = make_batch(meta, n=5)  # batch axis is dynamic (exported with 2)
    out = pred(batch)
    assert out.dtype == np.float32 and out.shape == (5, 2, 32, 32)
    assert np.abs(out - reference(model, meta, batch)).max() <= 1e-5
    np.testing.assert_allclose(
        OnnxPredictor(tiny_onnx, device="cpu", batch_size=2)(batch), out, atol=1e-6
    )


class _CountingSession:
    """An ONNX Runtime session that records the batch size of every run."""

    def __init__(self, session: Any) -> None:
        self.session, self.sizes = session, []

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
        self.sizes.append(len(next(iter(feeds.values()))))
        return self.session.run(names, feeds)


def test_onnx_cpu_runs_a_batch_tile_by_tile(
    tiny: tuple[TinyFusion, ModelMeta], tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CPU the session runs CPU_RUN_TILES tiles at a time (its arena holds the largest
    run's activations; the seconds per tile do not change): the same probabilities."""
    from mfaf_cli.engine import onnx_predictor

    model, meta = tiny
    batch = make_batch(meta, n=5)
    whole = OnnxPredictor(tiny_onnx, device="cpu")
    monkeypatch.setattr(onnx_predictor, "CPU_RUN_TILES", 5)
    out5 = whole(batch)
    monkeypatch.setattr(onnx_predictor, "CPU_RUN_TILES", 2)
    counting = _CountingSession(whole.session)
    whole.session = counting
    out2 = whole(batch)
    sizes = counting.sizes
    assert sizes == [2, 2, 1]
    np.testing.assert_allclose(out2, out5, atol=1e-6)
    assert np.abs(out2 - reference(model, meta, batch)).max() <= 1e-5
    assert onnx_predictor.CPU_RUN_TILES == 2 and not whole.fixed_batch


class _MeetingSession:
    """A session whose first two runs wait for each other: they only meet when two
    streams run tiles side by side (serial runs break the barrier after its timeout)."""

    def __init__(self, session: Any) -> None:
        self.session, self.calls = session, 0
        self.lock, self.barrier = threading.Lock(), threading.Barrier(2, timeout=5)
        self.threads: set[int] = set()

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
        with self.lock:
            self.calls += 1
            first_two = self.calls <= 2
            self.threads.add(threading.get_ident())
        if first_two:
            self.barrier.wait()
        return self.session.run(names, feeds)


def test_onnx_cpu_threads_run_tiles_on_one_thread_streams(
    tiny: tuple[TinyFusion, ModelMeta], tiny_onnx: Path
) -> None:
    """With N CPU threads a batch's tiles run on N one-thread streams of one session
    (issue 19: a 2-thread pool per tile idled the cores at its barriers): the tiles run
    side by side and the probabilities equal a one-thread run's, bit for bit."""
    model, meta = tiny
    batch = make_batch(meta, n=5)
    one = OnnxPredictor(tiny_onnx, device="cpu", threads=1)
    two = OnnxPredictor(tiny_onnx, device="cpu", threads=2)
    assert (one.streams.n, two.streams.n) == (1, 2)
    assert two.session.get_session_options().intra_op_num_threads == 1
    meeting = _MeetingSession(two.session)
    two.session = meeting
    out = two(batch)
    assert meeting.calls == 5 and len(meeting.threads) == 2
    np.testing.assert_array_equal(out, one(batch))
    assert np.abs(out - reference(model, meta, batch)).max() <= 1e-5


def test_onnx_engine_streams_by_device_threads_and_batch() -> None:
    """One stream per core up to a batch's tiles; spare cores join the shared pool."""
    layout = [stream_layout(t, "cpu", 4) for t in (None, 1, 2, 4, 16)]
    assert layout == [(1, None), (1, 1), (2, 1), (4, 1), (4, 13)]
    assert stream_layout(16, "cpu", None) == (16, 1) and stream_layout(8, "cpu", 1) == (1, 8)
    assert stream_layout(8, "cuda:0", 4) == (1, 8)


def test_streams_run_every_job_once_and_raise_the_first_error() -> None:
    done: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        if i == 3:
            raise ValueError("job 3")
        with lock:
            done.append(i)

    streams = Streams(3)
    streams.submit(list(range(3)), work).wait()
    assert sorted(done) == [0, 1, 2]
    done.clear()
    with pytest.raises(ValueError, match="job 3"):
        streams.submit(list(range(10)), work).wait()
    assert len(done) == len(set(done)) and 3 not in done  # no job twice


def test_streams_submit_returns_before_the_jobs_ran_and_keep_order_across_batches() -> None:
    """``submit`` queues and returns (the core fills the next batch meanwhile); the streams
    take the next batch's jobs as they free up, so none waits for the others at a batch's
    end; ``wait`` raises a batch's error and drops its remaining jobs, not the next batch's."""
    gate, ran, lock = threading.Event(), [], threading.Lock()

    def work(job: tuple[str, int]) -> None:
        if job == ("a", 0):
            assert gate.wait(5)
        if job == ("b", 1):
            raise ValueError("b1")
        with lock:
            ran.append(job)

    streams = Streams(2)
    first = streams.submit([("a", i) for i in range(3)], work)
    assert not ran or ("a", 0) not in ran  # submit did not wait for job a0
    failing = streams.submit([("b", i) for i in range(2)], work)
    # one stream is held by a0: the other runs a1, a2 and b0 meanwhile, across the batches
    deadline = time.monotonic() + 5
    while len(ran) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(ran) == [("a", 1), ("a", 2), ("b", 0)]
    gate.set()
    first.wait()
    with pytest.raises(ValueError, match="b1"):
        failing.wait()
    streams.submit([("c", 0), ("c", 1)], work).wait()
    assert sorted(ran) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("c", 0), ("c", 1)]


def test_onnx_predictor_pads_small_tiles_and_rejects_large(
    tiny: tuple[TinyFusion, ModelMeta], tiny_onnx: Path
) -> None:
    model, meta = tiny
    pred = OnnxPredictor(tiny_onnx, device="cpu")
    small = make_batch(meta, n=2, h=20, w=9)
    out = pred(small)
    assert out.shape == (2, 2, 20, 9)
    assert np.abs(out - reference(model, meta, small)).max() <= 1e-5
    with pytest.raises(UsageError, match=r"exported for 32×32 tiles.*--tile 32"):
        pred(make_batch(meta, n=1, h=64, w=64))


def test_onnx_model_path_selects_onnx_engine(
    tiny_onnx: Path, tiny: tuple[TinyFusion, ModelMeta]
) -> None:
    model, meta = tiny
    pred = create_predictor(
        str(tiny_onnx), engine="torch", device="cpu", modalities=["optical", "sar"]
    )
    assert isinstance(pred, OnnxPredictor)
    batch = make_batch(meta, n=2)
    assert np.abs(pred(batch) - reference(model, meta, batch)).max() <= 1e-5


def test_onnx_engine_exports_checkpoint_on_the_fly(
    tmp_path: Path, tiny: tuple[TinyFusion, ModelMeta], tiny_registry: None
) -> None:
    model, meta = tiny
    path = W.save_checkpoint(model, meta, tmp_path / "tiny.safetensors")
    pred = create_predictor(
        str(path), engine="onnx", device="cpu", tile=48, modalities=["sar", "optical"]
    )
    assert isinstance(pred, OnnxPredictor) and pred.input_hw == (48, 48)
    batch = make_batch(meta, n=2, h=48, w=48)
    assert np.abs(pred(batch) - reference(model, meta, batch)).max() <= 1e-5


def foreign_onnx(
    model: nn.Module,
    meta: ModelMeta,
    path: Path,
    input_names: list[str],
    output_names: list[str] | None = None,
    *,
    metadata: bool = True,
) -> Path:
    """An ONNX file as another tool would write it (plain torch.onnx.export, our names not
    enforced), with mfaf's metadata record added unless ``metadata`` is False."""
    import onnx

    from mfaf_cli.models.export import _set_metadata

    x = tuple(torch.zeros(1, m.n_bands, 32, 32) for m in meta.modalities)
    torch.onnx.export(
        model,
        x,
        str(path),
        input_names=input_names,
        output_names=output_names,
        dynamo=False,
        opset_version=17,
    )
    if metadata:
        proto = onnx.load(str(path))
        _set_metadata(proto, meta, "test")
        onnx.save(proto, str(path))
    return path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_logits_output_is_softmaxed(
    tmp_path: Path, tiny: tuple[TinyFusion, ModelMeta]
) -> None:
    """A foreign graph returning logits (not named "probabilities") still yields probabilities."""
    model, meta = tiny
    path = foreign_onnx(model, meta, tmp_path / "logits.onnx", ["optical", "sar"], ["logits"])
    pred = OnnxPredictor(path, device="cpu")
    assert pred.apply_softmax
    batch = make_batch(meta, n=1)
    assert np.abs(pred(batch) - reference(model, meta, batch)).max() <= 1e-5


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_inputs_must_match_metadata(
    tmp_path: Path, tiny: tuple[TinyFusion, ModelMeta]
) -> None:
    model, meta = tiny
    path = foreign_onnx(model, meta, tmp_path / "renamed.onnx", ["a", "b"])
    with pytest.raises(EngineError, match=r"ONNX inputs \(a, b\) do not match.*\(optical, sar\)"):
        OnnxPredictor(path, device="cpu")
    bare = foreign_onnx(model, meta, tmp_path / "bare.onnx", ["optical", "sar"], metadata=False)
    with pytest.raises(WeightsError, match="no mfaf metadata record"):
        OnnxPredictor(bare, device="cpu")


def test_onnx_provider_choice() -> None:
    assert choose_providers("auto", ["CPUExecutionProvider"]) == (["CPUExecutionProvider"], "cpu")
    provs, dev = choose_providers("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert provs[0] == ("CUDAExecutionProvider", {"device_id": 1}) and dev == "cuda:1"
    provs, dev = choose_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert provs[0][0] == "CUDAExecutionProvider" and dev == "cuda:0"
    assert choose_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"])[1] == "cpu"
    with pytest.raises(EngineError, match=r"no CUDA provider.*mfaf\[gpu\]"):
        choose_providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(UsageError):
        choose_providers("gpu0", ["CPUExecutionProvider"])


def test_onnx_cuda_request_without_provider(tiny_onnx: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime has CUDA here")
    with pytest.raises(EngineError, match="no CUDA provider"):
        OnnxPredictor(tiny_onnx, device="cuda")


def test_onnx_runtime_failures_are_engine_errors_others_propagate(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime's own failures become one EngineError line; a bug (here an AttributeError
    raised inside the session) is not disguised as an engine failure."""
    import onnxruntime as ort

    caught = runtime_errors(ort)
    assert Exception not in caught and AttributeError not in caught
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(EngineError, match="onnxruntime could not load"):
        OnnxPredictor(bad, meta=tiny_meta(), device="cpu")
    pred = OnnxPredictor(tiny_onnx, device="cpu")
    x = {"optical": np.zeros((1, 4, 32, 32), np.float32)}
    x["sar"] = np.zeros((1, 1, 32, 32), np.float32)
    with pytest.raises(EngineError, match="onnxruntime failed"):
        pred._run({"optical": x["optical"].astype(np.float64), "sar": x["sar"]})

    def broken(*a: object) -> None:
        raise AttributeError("a bug")

    monkeypatch.setattr(pred.session, "run", broken)
    with pytest.raises(AttributeError, match="a bug"):
        pred(x)


def test_missing_onnxruntime_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(EngineError, match=r"pip install mfaf\[onnx\]"):
        create_predictor(str(tiny_onnx), engine="onnx", device="cpu")


def test_softmax_is_stable() -> None:
    x = np.array([[[[1000.0]], [[1001.0]]]], dtype=np.float32)
    p = softmax(x, axis=1)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p[0, :, 0, 0], [1 / (1 + np.e), np.e / (1 + np.e)], rtol=1e-6)


def test_real_network_torch_vs_onnx_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same untrained registry network through both engines gives the same probabilities."""
    monkeypatch.setenv("MFAF_WEIGHTS_DIR", str(tmp_path / "none"))
    torch.manual_seed(0)
    model = registry.create_model("unet", num_classes=3).eval()
    meta = replace(registry.default_meta("unet", num_classes=3), tile_size=32, trained=True)
    ckpt = W.save_checkpoint(model, meta, tmp_path / "unet.safetensors")
    batch = make_batch(meta, n=2)
    a = create_predictor(str(ckpt), engine="torch", device="cpu")(batch)
    b = create_predictor(str(ckpt), engine="onnx", device="cpu")(batch)
    assert a.shape == (2, 3, 32, 32)
    assert np.abs(a - b).max() <= 1e-4

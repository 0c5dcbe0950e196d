"""ONNX Runtime engine: CUDA execution provider when present and allowed, else CPU.

Exported mfaf models take one input per modality (named by modality) with a dynamic batch axis
and H/W fixed at export time, and return softmax ``probabilities``. Foreign ONNX files that
return logits are softmaxed here.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mfaf_cli.engine.base import check_batch
from mfaf_cli.engine.streams import Pending, Streams, stream_layout
from mfaf_cli.errors import EngineError, UsageError
from mfaf_cli.metadata import ModelMeta
from mfaf_cli.tiling.pad import bottom_right_pad

if TYPE_CHECKING:
    from mfaf_cli.models.resolve import ModelSource

log = logging.getLogger("mfaf")

OUTPUT_NAME = "probabilities"


def import_onnxruntime() -> Any:
    """Import onnxruntime or say how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise EngineError(
            "the ONNX engine needs onnxruntime: pip install mfaf[onnx] "
            "(or mfaf[gpu] for onnxruntime-gpu)"
        ) from None
    return onnxruntime


def runtime_errors(ort: Any) -> tuple[type[BaseException], ...]:
    """What ONNX Runtime raises for a bad model, feed or provider: its own exception classes
    (``Fail``, ``InvalidArgument``, ``InvalidProtobuf``, ``NoSuchFile``... which derive from
    ``Exception`` directly), and the ``RuntimeError``/``ValueError``/``TypeError`` its Python
    wrapper raises for feeds it cannot convert. Programming errors elsewhere still propagate."""
    state = getattr(getattr(ort, "capi", None), "onnxruntime_pybind11_state", None)
    own = (
        tuple(
            v
            for v in vars(state).values()
            if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == state.__name__
        )
        if state is not None
        else ()
    )
    return (*own, RuntimeError, ValueError, TypeError, OSError)


def choose_providers(device: str, available: list[str]) -> tuple[list[Any], str]:
    """Execution providers for ``device`` (auto|cpu|cuda[:N]) and the device they imply."""
    d = device.strip().lower()
    has_cuda = "CUDAExecutionProvider" in available
    if d == "cpu" or (d == "auto" and not has_cuda):
        return ["CPUExecutionProvider"], "cpu"
    if d == "auto":
        return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"], "cuda:0"
    if d == "cuda" or d.startswith("cuda:"):
        try:
            idx = int(d.split(":", 1)[1]) if ":" in d else 0
        except ValueError:
            raise UsageError(f"invalid device {device!r}; use auto, cpu, cuda or cuda:N") from None
        if not has_cuda:
            raise EngineError(
                f"--device {device} was requested but onnxruntime has no CUDA provider "
                f"(available: {', '.join(available)}); pip install mfaf[gpu] or use --device cpu"
            )
        return [
            ("CUDAExecutionProvider", {"device_id": idx}),
            "CPUExecutionProvider",
        ], f"cuda:{idx}"
    raise UsageError(f"invalid device {device!r}; use auto, cpu, cuda or cuda:N")


def softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax (max-shifted)."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _pad_hw(x: np.ndarray, th: int, tw: int) -> np.ndarray:
    """Pad (N,C,h,w) at the bottom/right to (th, tw): reflect where it fits, else edge."""
    h, w = x.shape[-2:]
    ph, pw, mode = bottom_right_pad(h, w, th, tw)
    if not ph and not pw:
        return x
    return np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)


def configure_threads(opts: Any, threads: int | None) -> None:
    """Pin ONNX Runtime's intra-op pool to ``threads`` and stop its workers spinning.

    Why: by default ORT starts one spinning worker per core; next to mfaf's reader threads
    (and on a shared machine) the spinners steal the cores the readers need.
    """
    if not threads:
        return
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")


#: Tiles per session run on CPU. ONNX Runtime's arena holds the activations of the largest
#: run, so it grows with the batch, while a CPU core's seconds per tile do not: measured on
#: the shipped MFAFNet-S at 256² (2 intra-op threads), peak RSS 234 / 175 / 147 MB at 4 / 2 /
#: 1 tiles a run, 0.44 CPU-s per tile at each (benchmarks/onnx_tiles_per_run.py).
CPU_RUN_TILES = 1


class OnnxPredictor:
    """Run an exported mfaf ONNX model with ONNX Runtime."""

    engine = "onnx"

    def __init__(
        self,
        path: str | os.PathLike[str],
        meta: ModelMeta | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        threads: int | None = None,
    ) -> None:
        ort = import_onnxruntime()
        from mfaf_cli.io.weights import read_meta

        path = Path(path)
        self.meta = meta if meta is not None else read_meta(path)
        self.batch_size = batch_size
        self.threads = threads  # CPU cores: one-thread streams (None: ORT's default pool)
        providers, self.device = choose_providers(str(device), ort.get_available_providers())
        streams, intra = stream_layout(threads, self.device, batch_size)
        self.streams = Streams(streams)
        self.session = self._open(ort, path, providers, intra)
        if self.device != "cpu" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            if str(device).lower() != "auto":
                raise EngineError(
                    f"onnxruntime could not start its CUDA provider for --device {device} "
                    "(CUDA/cuDNN libraries missing?); use --device cpu"
                )
            log.warning("onnxruntime CUDA provider failed to start; running on CPU")
            self.device = "cpu"
        self._errors = runtime_errors(ort)
        self._check_io(path)
        if self.fixed_batch and self.streams.n > 1:  # one run per batch: threads inside it
            self.streams = Streams(1)
            self.session = self._open(ort, path, providers, threads)

    @property
    def asynchronous(self) -> bool:
        """Whether :meth:`submit` returns before the tiles ran (more than one stream)."""
        return self.streams.n > 1

    @staticmethod
    def _open(ort: Any, path: Path, providers: list[Any], threads: int | None) -> Any:
        """An inference session on ``providers`` with ``threads`` intra-op threads."""
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        configure_threads(opts, threads)
        # The memory-pattern planner keeps one arena block per input shape it has seen (the
        # full batches and the last, partial one): measured on the shipped MFAFNet-S, batch
        # 4 at 256², peak RSS 349 MB with it and 231 MB without, at the same speed.
        opts.enable_mem_pattern = False
        try:
            return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except runtime_errors(ort) as err:
            first = (str(err).strip().splitlines() or [""])[0][:300]
            raise EngineError(f"onnxruntime could not load {path}: {first}") from None

    def _check_io(self, path: Path) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        want = self.meta.modality_names
        if set(inputs) != set(want):
            raise EngineError(
                f"{path.name}: ONNX inputs ({', '.join(inputs)}) do not match the modalities in "
                f"its metadata ({', '.join(want)}); re-export it with `mfaf export`"
            )
        self.input_hw: tuple[int, int] | None = None
        self.fixed_batch = False  # a graph exported for one batch size is run at that size
        for spec in self.meta.modalities:
            shape = inputs[spec.name].shape
            self.fixed_batch |= len(shape) == 4 and isinstance(shape[0], int)
            if len(shape) != 4:
                raise EngineError(f"{path.name}: input {spec.name!r} is not 4-D ({shape})")
            if isinstance(shape[1], int) and shape[1] != spec.n_bands:
                raise EngineError(
                    f"{path.name}: input {spec.name!r} takes {shape[1]} bands but its metadata "
                    f"lists {spec.n_bands}"
                )
            if isinstance(shape[2], int) and isinstance(shape[3], int):
                self.input_hw = (shape[2], shape[3])
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = OUTPUT_NAME if OUTPUT_NAME in outputs else outputs[0]
        self.apply_softmax = self.output_name != OUTPUT_NAME

    @classmethod
    def from_source(
        cls,
        source: ModelSource,
        device: str = "auto",
        batch_size: int | None = None,
        tile: int | None = None,
        threads: int | None = None,
        cache: bool = False,
    ) -> OnnxPredictor:
        """Export a checkpoint/untrained model to ONNX and load it.

        ``cache``: reuse (or create) the export in the user cache (see
        :mod:`mfaf_cli.engine.cache`); otherwise export to a temporary file.
        """
        kw: dict[str, Any] = {"device": device, "batch_size": batch_size, "threads": threads}
        if source.kind == "onnx":
            assert source.path is not None
            return cls(source.path, source.meta, **kw)
        import_onnxruntime()
        tile = int(tile or source.meta.tile_size)
        if cache and source.kind == "checkpoint":
            from mfaf_cli.engine.cache import cached_onnx

            path = cached_onnx(source, tile)
            return cls(path, replace(source.meta, tile_size=tile), **kw)
        from mfaf_cli.models.export import export_onnx
        from mfaf_cli.models.resolve import load_model  # torch: only when exporting

        model, meta = load_model(source, device="cpu")
        meta = replace(meta, tile_size=tile)
        with tempfile.TemporaryDirectory(prefix="mfaf-onnx-") as tmp:
            path = export_onnx(model, meta, Path(tmp) / "model.onnx")
            return cls(path, meta, **kw)

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        try:
            (out,) = self.session.run([self.output_name], feeds)
        except self._errors as err:
            first = (str(err).strip().splitlines() or [""])[0][:300]
            raise EngineError(f"onnxruntime failed: {first}") from None
        out = np.asarray(out, dtype=np.float32)
        if self.apply_softmax:  # a foreign graph's logits: the record's temperature here
            return softmax(out / float(self.meta.temperature), axis=1)
        return out  # our exports divide by the temperature inside the graph

    def __call__(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.submit(batch).result()

    def submit(self, batch: Mapping[str, np.ndarray]) -> PendingProbs:
        """Queue a batch's tiles on the streams and return at once (see
        :mod:`mfaf_cli.engine.streams`); ``batch`` must stay unchanged until ``result()``."""
        n, h, w = check_batch(batch, self.meta)
        th, tw = self.input_hw or (h, w)
        if h > th or w > tw:
            raise UsageError(
                f"this ONNX model was exported for {th}×{tw} tiles, got {h}×{w}; "
                f"use --tile {th} or re-export with `mfaf export --tile {max(h, w)}`"
            )
        k = self.meta.num_classes
        step = self.batch_size or n or 1
        if self.device == "cpu" and not self.fixed_batch:
            step = min(step, CPU_RUN_TILES)
        out = np.empty((n, k, h, w), dtype=np.float32)

        def run(i: int) -> None:
            feeds = {
                m: _pad_hw(np.ascontiguousarray(batch[m][i : i + step], dtype=np.float32), th, tw)
                for m in self.meta.modality_names
            }
            probs = self._run(feeds)
            if probs.ndim != 4 or probs.shape[1] != k:
                raise EngineError(
                    f"ONNX output has shape {probs.shape}, expected (N, {k}, H, W) "
                    "from the metadata's class table"
                )
            out[i : i + step] = probs[:, :, :h, :w]

        return PendingProbs(self.streams.submit(range(0, n, step), run), out)


class PendingProbs:
    """A submitted batch's probabilities, once its tiles have run."""

    def __init__(self, pending: Pending, out: np.ndarray) -> None:
        self.pending, self._out = pending, out

    @property
    def finished_at(self) -> float:
        """When the last tile ended (``time.perf_counter()``), once :meth:`result` returned."""
        return self.pending.finished_at

    def result(self) -> np.ndarray:
        """The probabilities (N, K, H, W): waits for the tiles, raises their first error."""
        self.pending.wait()
        if not np.isfinite(self._out).all():
            raise EngineError("the ONNX model produced non-finite probabilities")
        return self._out

"""The engine factory: a ``--model`` spec (or a resolved source) → a ready predictor on
PyTorch or ONNX Runtime. Above :mod:`.base` and both predictors, which never import it."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mfaf_cli.engine import base
from mfaf_cli.engine.base import Predictor
from mfaf_cli.errors import UsageError
from mfaf_cli.types import ENGINES, PRECISIONS, Engine, Precision

if TYPE_CHECKING:
    from mfaf_cli.models.resolve import ModelSource

log = logging.getLogger("mfaf")


def resolve_source(
    spec: str | os.PathLike[str] | ModelSource | None,
    modalities: Iterable[str] | None,
    in_channels: dict[str, int] | None = None,
) -> ModelSource:
    from mfaf_cli.models.resolve import ModelSource, resolve_model

    if isinstance(spec, ModelSource):
        return spec
    return resolve_model(spec, modalities, in_channels=in_channels)


def choose_engine(
    engine: Engine, source: ModelSource, device: str, precision: Precision = "auto"
) -> str:
    """Resolve ``auto``: ONNX Runtime (cached export) for fp32 checkpoints on CPU when
    installed; PyTorch on CUDA, for reduced precision, for untrained builds, and when
    onnxruntime is missing."""
    if source.kind == "onnx":
        if engine == "torch":
            log.info("%s is an ONNX model: running it with ONNX Runtime", source.path)
        return "onnx"
    if engine != "auto":
        return engine
    cpu_fp32 = precision in ("auto", "fp32") and not base.cuda_requested(device)
    if source.kind == "checkpoint" and cpu_fp32 and base.onnxruntime_available():
        return "onnx"
    return "torch"


def create_predictor(
    spec: str | os.PathLike[str] | ModelSource | None = None,
    engine: Engine = "auto",
    device: str = "auto",
    precision: Precision = "auto",
    modalities: Iterable[str] | None = None,
    batch_size: int | None = None,
    *,
    tile: int | None = None,
    in_channels: dict[str, int] | None = None,
    threads: int | None = None,
) -> Predictor:
    """Build a predictor for ``spec`` (see :func:`mfaf_cli.models.resolve.resolve_model`).

    An ``.onnx`` model always runs on ONNX Runtime (whatever ``engine`` says, with a note in
    the log). ``engine="onnx"`` with a checkpoint exports it to ONNX first, with H/W fixed to
    ``tile`` (default: the model's tile size). ``batch_size`` caps how many tiles go through
    the network at once. ``engine="auto"`` (see :func:`choose_engine`) caches the export per
    checkpoint and tile. ``threads``: CPU intra-op threads of the engine (None: its default).
    """
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    source = resolve_source(spec, modalities, in_channels)
    chosen = choose_engine(engine, source, device, precision)
    if chosen == "onnx":
        from mfaf_cli.engine.onnx_predictor import OnnxPredictor

        if source.kind == "onnx":
            assert source.path is not None
            return OnnxPredictor(source.path, device=device, batch_size=batch_size, threads=threads)
        return OnnxPredictor.from_source(
            source, device=device, batch_size=batch_size, tile=tile, threads=threads,
            cache=engine in ("auto", "onnx"),
        )  # fmt: skip
    from mfaf_cli.engine.torch_predictor import TorchPredictor

    return TorchPredictor.from_source(
        source, device=device, precision=precision, batch_size=batch_size, threads=threads
    )

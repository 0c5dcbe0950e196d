"""The Predictor interface and the factory that picks an engine for a model spec.

A predictor takes a dict of *already normalised* float32 arrays, one (N, C, h, w) per modality,
and returns softmax probabilities (N, K, h, w) float32. Windows, blending and georeferencing are
the pipeline's business; a predictor only turns tiles into probabilities.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from mfaf_cli.errors import BandMismatchError, ModalityError, UsageError
from mfaf_cli.metadata import ModelMeta
from mfaf_cli.types import ENGINES as ENGINES  # re-exported; defined in mfaf_cli.types
from mfaf_cli.types import PRECISIONS as PRECISIONS
from mfaf_cli.types import Engine, Precision

if TYPE_CHECKING:
    from mfaf_cli.models.resolve import ModelSource

log = logging.getLogger("mfaf")


@runtime_checkable
class Predictor(Protocol):
    """Tiles in, probabilities out."""

    meta: ModelMeta
    device: str

    def __call__(self, batch: Mapping[str, np.ndarray]) -> np.ndarray: ...


def check_batch(batch: Mapping[str, np.ndarray], meta: ModelMeta) -> tuple[int, int, int]:
    """Validate a batch against the model's modalities and band counts; return (N, h, w).

    Errors name the modality and what the model expects, because the usual cause is a wrong
    input file or band selection, not a bug.
    """
    want = meta.modality_names
    missing = [m for m in want if m not in batch]
    extra = [m for m in batch if m not in want]
    if missing or extra:
        raise ModalityError(
            f"model {meta.arch!r} takes {' + '.join(want)}; "
            + (f"missing {', '.join(missing)}" if missing else f"not {', '.join(extra)}")
        )
    shape: tuple[int, int, int] | None = None
    for spec in meta.modalities:
        arr = batch[spec.name]
        if arr.ndim != 4:
            raise UsageError(f"{spec.name} batch must be (N, C, h, w), got shape {arr.shape}")
        n, c, h, w = arr.shape
        if c != spec.n_bands:
            raise BandMismatchError(
                f"{spec.name} has {c} band(s) but the model takes {spec.n_bands} "
                f"({', '.join(spec.bands)})"
            )
        if shape is None:
            shape = (n, h, w)
        elif shape != (n, h, w):
            raise UsageError(
                f"modalities disagree on batch/tile size: {spec.name} is {(n, h, w)}, "
                f"{want[0]} is {shape}"
            )
    assert shape is not None
    return shape


def resolve_source(
    spec: str | os.PathLike[str] | ModelSource | None,
    modalities: Iterable[str] | None,
    in_channels: dict[str, int] | None = None,
) -> ModelSource:
    from mfaf_cli.models.resolve import ModelSource, resolve_model

    if isinstance(spec, ModelSource):
        return spec
    return resolve_model(spec, modalities, in_channels=in_channels)


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime and the onnx exporter can be imported (without importing them)."""
    from importlib.util import find_spec

    return find_spec("onnxruntime") is not None and find_spec("onnx") is not None


def cuda_requested(device: str) -> bool:
    """``device`` names a GPU, or is ``auto`` and PyTorch sees one."""
    d = str(device).strip().lower()
    if d.startswith("cuda"):
        return True
    if d != "auto":
        return False
    if "torch" not in sys.modules and _no_nvidia_device():
        return False  # skip importing torch (seconds) just to learn there is no GPU
    import torch

    return bool(torch.cuda.is_available())


def _no_nvidia_device() -> bool:
    """True when this is Linux and no NVIDIA device node exists (so CUDA cannot work)."""
    from pathlib import Path

    return sys.platform.startswith("linux") and not any(Path("/dev").glob("nvidia[0-9]*"))


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
    cpu_fp32 = precision in ("auto", "fp32") and not cuda_requested(device)
    if source.kind == "checkpoint" and cpu_fp32 and onnxruntime_available():
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

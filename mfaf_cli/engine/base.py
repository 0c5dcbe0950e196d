"""The Predictor interface, the batch check every engine runs, and the environment probes
(is ONNX Runtime installed, is a GPU asked for) the engine choice uses. The factory that
picks and builds an engine is :mod:`mfaf_cli.engine.factory` (so this module imports no
predictor, and the predictors can import it).

A predictor takes a dict of *already normalised* float32 arrays, one (N, C, h, w) per modality,
and returns softmax probabilities (N, K, h, w) float32. Windows, blending and georeferencing are
the pipeline's business; a predictor only turns tiles into probabilities.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from mfaf_cli.errors import BandMismatchError, ModalityError, UsageError
from mfaf_cli.metadata import ModelMeta
from mfaf_cli.types import ENGINES as ENGINES  # re-exported; defined in mfaf_cli.types
from mfaf_cli.types import PRECISIONS as PRECISIONS

log = logging.getLogger("mfaf")


@runtime_checkable
class Predictor(Protocol):
    """Tiles in, probabilities out.

    Optionally asynchronous: ``asynchronous`` True and ``submit(batch)`` returning at once
    with ``result()`` (the probabilities) and ``finished_at`` (``time.perf_counter()`` of its
    end), the batch left unchanged until then (see ``pipeline.core._submit_batch``)."""

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


#: where :func:`_no_nvidia_device` looks for GPU device nodes
DEV_DIR = Path("/dev")


def _no_nvidia_device() -> bool:
    """True when this is Linux and no GPU device node exists, so CUDA cannot work: neither
    NVIDIA's ``/dev/nvidiaN`` nor WSL2's ``/dev/dxg`` (WSL2 exposes its GPUs only there)."""
    if not sys.platform.startswith("linux"):
        return False
    return not (any(DEV_DIR.glob("nvidia[0-9]*")) or (DEV_DIR / "dxg").exists())

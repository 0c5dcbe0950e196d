"""The inference spec: every knob of a sliding-window run, validated in one place.

predict, batch mode and evaluate all take their tiling/engine options as one
:class:`InferenceSpec`, so a value is parsed and checked once and means the same everywhere.
"""

from __future__ import annotations

import numbers
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace

from mfaf_cli.errors import UsageError
from mfaf_cli.tiling.windows import validate_tiling
from mfaf_cli.types import Blend, Engine, Precision


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under Slurm or taskset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def split_threads(
    threads: int, on_gpu: bool = False, reader_bound: bool = False
) -> tuple[int, int]:
    """``(engine threads, reader threads)`` for a budget of ``threads`` cores.

    On CPU the network gets every core of the budget and ``threads // 4`` readers (at least
    one) run beside it: a compute-bound run's readers are idle most of the time, so cutting
    the engine to make room for them idled half of a 2-core machine (issue 19: 0.67× MONAI's
    speed). Sharing cores is safe because the engines do not spin-wait (ONNX Runtime runs one
    single-threaded stream per core, :mod:`mfaf_cli.engine.streams`, and its pools, where it
    has any, do not spin) and readers run at a lower priority (:func:`lower_reader_priority`).
    On a GPU, or when reading is the bottleneck (``reader_bound``: the null engine, a network
    cheaper than decoding), the engine gets one thread and the rest read. With one thread,
    reading happens in the caller.
    """
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    if on_gpu or reader_bound:
        return 1, max(threads - 1, 1)
    if threads == 1:
        return 1, 0
    return threads, max(1, threads // 4)


#: How much nicer than the engine reader threads run (Linux; elsewhere a no-op).
READER_NICENESS = 5


def lower_reader_priority() -> None:
    """Make the calling thread (a reader) yield to the engine's threads on a shared core.

    Linux applies ``setpriority`` per thread id; raising the niceness needs no privilege.
    A reader that is needed runs anyway (the engine then waits on it and sleeps)."""
    get_id = getattr(threading, "get_native_id", None)
    if get_id is None or not hasattr(os, "setpriority") or sys.platform != "linux":
        return
    try:
        tid = get_id()
        now = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, now + READER_NICENESS))
    except OSError:  # e.g. a sandbox that forbids it: readers then share cores as equals
        return


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


@dataclass(frozen=True)
class InferenceSpec:
    """How windows are cut, run and blended. ``tile=None``: the model's tile size;
    ``threads=None``: all usable cores."""

    tile: int | None = None
    overlap: float = 0.25
    batch_size: int = 4
    blend: Blend = "gaussian"
    device: str = "auto"
    engine: Engine = "auto"
    precision: Precision = "auto"
    threads: int | None = None
    #: per-pixel fallbacks, missing modality -> model (issue 24, pipeline/fallback.py); None:
    #: those the model's record names; ``{}``: none (pixels missing a modality are nodata)
    fallbacks: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        from mfaf_cli.engine.base import ENGINES, PRECISIONS
        from mfaf_cli.tiling.blend import BLEND_MODES

        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise UsageError(f"--batch-size must be a positive integer, got {self.batch_size!r}")
        validate_tiling(256 if self.tile is None else self.tile, self.overlap)
        if self.blend not in BLEND_MODES:
            raise UsageError(
                f"unknown blend mode {self.blend!r}; use one of {', '.join(BLEND_MODES)}"
            )
        if self.engine not in ENGINES:
            raise UsageError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.precision not in PRECISIONS:
            raise UsageError(
                f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            raise UsageError(f"--threads must be a positive integer, got {self.threads!r}")

    @property
    def total_threads(self) -> int:
        return self.threads if self.threads is not None else usable_cores()

    def thread_split(self, on_gpu: bool = False, reader_bound: bool = False) -> tuple[int, int]:
        """(engine threads, reader threads), see :func:`split_threads`."""
        return split_threads(self.total_threads, on_gpu, reader_bound)

    def with_tile(self, tile: int) -> InferenceSpec:
        return replace(self, tile=int(tile))

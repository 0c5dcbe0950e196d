"""CPU seconds per stage of a run (readers, merge worker, engine), for ``--json``.

Wall time alone cannot show a thread cut (issue 19: the engine ran on one of two cores and
nothing said so). Reader threads and the merge worker charge their own thread CPU time here;
the engine's share is what the process spent besides them (the predictor's calls, its
intra-op pool, and slicing batches in the calling thread).
"""

from __future__ import annotations

import contextlib
import resource
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

_lock = threading.Lock()
_charged: dict[str, float] = {"read": 0.0, "merge": 0.0}


@contextlib.contextmanager
def charge(stage: str) -> Iterator[None]:
    """Add the calling thread's CPU time inside the block to ``stage`` (read or merge)."""
    t0 = time.thread_time()
    try:
        yield
    finally:
        spent = time.thread_time() - t0
        with _lock:
            _charged[stage] = _charged.get(stage, 0.0) + spent


def process_seconds() -> float:
    """User + system CPU time of this process so far (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass(frozen=True)
class CpuSplit:
    """CPU seconds of one run, by stage (``engine`` = process total − readers − merge)."""

    engine: float
    read: float
    merge: float
    total: float

    def to_dict(self) -> dict[str, float]:
        return {
            "engine": round(self.engine, 3), "read": round(self.read, 3),
            "merge": round(self.merge, 3), "total": round(self.total, 3),
        }  # fmt: skip


class CpuClock:
    """Started before a run, ``split()`` after it: the CPU seconds each stage spent."""

    def __init__(self) -> None:
        self._p0 = process_seconds()
        with _lock:
            self._c0 = dict(_charged)

    def split(self) -> CpuSplit:
        total = process_seconds() - self._p0
        with _lock:
            read = _charged.get("read", 0.0) - self._c0.get("read", 0.0)
            merge = _charged.get("merge", 0.0) - self._c0.get("merge", 0.0)
        return CpuSplit(max(total - read - merge, 0.0), read, merge, total)

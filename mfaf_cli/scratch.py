"""Work arrays that a thread reuses call after call, instead of fresh ones each time.

Why: the CLI fixes glibc's mmap threshold at 256 KB (:mod:`mfaf_cli.malloc`), so every larger
temporary is fresh pages from the kernel, zeroed page by page on first touch and unmapped on
free. Profiled on the null engine at 4096² (per-thread minor faults), the readers' warp and
normalisation temporaries and the merge thread's row buffers took ~250 000 page faults per run,
about a quarter of the run's CPU; the same arithmetic on reused arrays takes none.

A scratch array belongs to the calling thread and to one ``name``: it is valid until that
thread asks for the same name again, so it must never be returned to a caller that keeps it.
Each name holds the largest size its thread asked for (a chunk or a band of rows: a few MB),
released when the thread ends.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

_local = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """An uninitialised array of ``shape`` and ``dtype``, this thread's ``name`` buffer."""
    dt = np.dtype(dtype)
    size = math.prod(shape) * dt.itemsize
    bufs: dict[str, np.ndarray] | None = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    buf = bufs.get(name)
    if buf is None or buf.size < size:
        buf = bufs[name] = np.empty(size, dtype=np.uint8)
    return buf[:size].view(dt).reshape(shape)


def held_bytes() -> int:
    """Bytes this thread's scratch buffers hold (for tests)."""
    return sum(b.size for b in getattr(_local, "bufs", {}).values())

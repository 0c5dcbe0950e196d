"""Process-wide glibc heap tuning, owned by the CLI entry point (never by a library call)."""

from __future__ import annotations

import os
import sys

_MALLOC_TUNED = False


def limit_malloc_growth() -> None:
    """Stop glibc from letting the heap grow with the scene (Linux, once per process).

    Process-wide, so the library never calls it: the ``mfaf`` CLI entry point does, and an
    application embedding :func:`predict` may opt in by calling it itself.

    Window arrays are allocated in reader threads and freed in the main thread. glibc raises
    its mmap threshold after each large free, so later ~1 MB arrays come from per-thread heap
    arenas that fragment and are never returned: peak RSS then creeps up with the number of
    windows (measured +100 MB on a 4096² scene). A fixed threshold (as if the user had set
    ``MALLOC_MMAP_THRESHOLD_``) keeps large arrays in mmap, returned on free.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or not sys.platform.startswith("linux"):
        return
    _MALLOC_TUNED = True
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3
        libc.mallopt(m_mmap_threshold, 256 * 1024)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        pass

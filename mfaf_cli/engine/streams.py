"""Tiles of a batch run side by side on single-threaded engine streams (CPU).

Why: ONNX Runtime spreads one tile over its intra-op pool, and a small network's operators
are too short for that to pay: measured on the shipped MFAFNet-S at 256² on 2 cores, one
tile a run takes 57–61 ms with a 2-thread pool that does not spin (the pool must not spin
beside mfaf's readers) and 80 ms on one thread, while two one-thread runs side by side take
43–56 ms a tile (``benchmarks/onnx_streams.py``). The streams share one session (its weights
and its arena); ORT's ``run`` is thread-safe and releases the GIL.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def stream_layout(threads: int | None, device: str, tiles: int | None) -> tuple[int, int | None]:
    """``(streams, intra-op threads of the session)`` for ``threads`` CPU cores and batches of
    ``tiles`` tiles (None: unknown).

    One stream per core up to the tiles of a batch (a stream takes whole tiles); cores left
    over join the session's intra-op pool, which the streams share (each ``run`` uses the
    pool's threads besides its caller), so streams + pool threads = cores. On a GPU, or when
    the engine keeps its own default (``threads`` None), one stream and the given threads.
    """
    if device != "cpu" or not threads or threads < 2:
        return 1, threads
    streams = max(1, min(int(threads), int(tiles or threads)))
    if streams == 1:
        return 1, threads
    return streams, int(threads) - streams + 1


class Streams:
    """Run jobs on ``n`` threads: the caller's and ``n - 1`` pool threads, each taking the
    next job as it finishes one (tiles can differ in cost, e.g. a short last batch)."""

    def __init__(self, n: int) -> None:
        self.n = max(int(n), 1)
        self._pool: ThreadPoolExecutor | None = None

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.n - 1, thread_name_prefix="mfaf-engine")
            weakref.finalize(self, self._pool.shutdown, wait=False)
        return self._pool

    def run(self, jobs: Sequence[T], work: Callable[[T], None]) -> None:
        """Call ``work(job)`` for every job, on up to ``n`` threads; the first error raised
        by any of them is raised here once all have stopped."""
        helpers = min(self.n, len(jobs)) - 1
        if helpers < 1:
            for job in jobs:
                work(job)
            return
        taken = iter(range(len(jobs)))
        lock = threading.Lock()
        failed = threading.Event()

        def drain() -> None:
            while not failed.is_set():
                with lock:
                    i = next(taken, -1)
                if i < 0:
                    return
                try:
                    work(jobs[i])
                except BaseException:
                    failed.set()
                    raise

        pool = self._executor()
        futures: list[Future[None]] = [pool.submit(drain) for _ in range(helpers)]
        try:
            drain()
        finally:
            errors = [f.exception() for f in futures]  # waits for every helper
        for err in errors:
            if err is not None:
                raise err

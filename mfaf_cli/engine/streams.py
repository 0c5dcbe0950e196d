"""Tiles run side by side on single-threaded engine streams (CPU), batch after batch.

Why: ONNX Runtime spreads one tile over its intra-op pool, and a small network's operators
are too short for that to pay: measured on the shipped MFAFNet-S at 256² on 2 cores, one
tile a run takes 57–61 ms with a 2-thread pool that does not spin (the pool must not spin
beside mfaf's readers) and 80 ms on one thread, while two one-thread runs side by side take
43–56 ms a tile (``benchmarks/onnx_streams.py``). The streams share one session (its weights
and its arena); ORT's ``run`` is thread-safe and releases the GIL.

The streams are long-lived threads fed from one queue, and :meth:`Streams.submit` does not
wait: the pipeline queues the next batch's tiles while this batch's run, so no stream waits
at the end of a batch for the others (a barrier per batch idled ~13 % of the cores at 4096²,
issue 19) or while the caller slices the next batch.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

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


class Pending:
    """The jobs of one :meth:`Streams.submit`: :meth:`wait` returns once all have run (or
    were dropped after one of them failed) and raises the first error."""

    def __init__(self, jobs: int) -> None:
        self._left = jobs
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.error: BaseException | None = None
        #: ``time.perf_counter()`` when the last job ended (the model clock's interval end)
        self.finished_at = time.perf_counter()
        if jobs <= 0:
            self._done.set()

    def ended(self, error: BaseException | None = None) -> None:
        """One job ended (``error``: it raised)."""
        with self._lock:
            self.error = self.error or error
            self._left -= 1
            if self._left == 0:
                self.finished_at = time.perf_counter()
                self._done.set()

    def wait(self) -> None:
        self._done.wait()
        if self.error is not None:
            raise self.error


def _run_job(job: Any, work: Callable[[Any], None], pending: Pending) -> None:
    """Run one job of ``pending``, or drop it if another of its jobs failed (so no job runs
    after its batch's first error); its error is handed to the submitter's ``wait()``."""
    if pending.error is not None:
        pending.ended()
        return
    try:
        work(job)
    except BaseException as err:
        pending.ended(err)
    else:
        pending.ended()


def _serve(jobs: queue.SimpleQueue[Any]) -> None:
    """A stream: run queued jobs until told to stop (None)."""
    while True:
        item = jobs.get()
        if item is None:
            return
        _run_job(*item)


def _stop(jobs: queue.SimpleQueue[Any], n: int) -> None:
    for _ in range(n):
        jobs.put(None)


class Streams:
    """``n`` long-lived threads that each take the next queued job as they finish one
    (tiles can differ in cost, e.g. a short last batch); ``n == 1`` runs jobs inline."""

    def __init__(self, n: int) -> None:
        self.n = max(int(n), 1)
        self._jobs: queue.SimpleQueue[Any] | None = None

    def _queue(self) -> queue.SimpleQueue[Any]:
        if self._jobs is None:
            self._jobs = queue.SimpleQueue()
            for i in range(self.n):
                name = f"mfaf-engine-{i}"
                threading.Thread(target=_serve, args=(self._jobs,), name=name, daemon=True).start()
            weakref.finalize(self, _stop, self._jobs, self.n)
        return self._jobs

    def submit(self, jobs: Sequence[T], work: Callable[[T], None]) -> Pending:
        """Queue ``work(job)`` for every job and return at once (inline with one stream)."""
        pending = Pending(len(jobs))
        if self.n == 1:
            for job in jobs:
                _run_job(job, work, pending)
            return pending
        q = self._queue()
        for job in jobs:
            q.put((job, work, pending))
        return pending

"""The model's seconds over a run, including device work that finishes after the call.

A torch predictor on CUDA feeding the device merger hands out probabilities still being
computed (``predict_tensor`` never waits), so the host time of the call is the time to queue
the work, not to do it; the GPU time would land in the merge thread's wait. Such a predictor
offers ``device_event()``: an event recorded now on the stream its work goes to, with
``torch.cuda.Event``'s interface (``query``, ``synchronize``, ``elapsed_time`` in ms). The
clock brackets each call with two events and adds up the intervals once they have passed,
so timing adds no wait to the loop. A predictor without events (CPU, ONNX Runtime: the call
returns finished results) is timed on the host.

The events measure the stream between them: kernels another thread queued on the same
stream meanwhile (the device merger's blends of the previous batch) count as model time.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol


class DeviceEvent(Protocol):
    """What the clock needs of a ``torch.cuda.Event`` (``enable_timing=True``)."""

    def query(self) -> bool: ...

    def synchronize(self) -> None: ...

    def elapsed_time(self, end: Any) -> float: ...


class ModelClock:
    """Adds up the model's seconds over the calls :meth:`time` makes."""

    def __init__(self, predictor: Any) -> None:
        self._event: Callable[[], DeviceEvent | None] | None = getattr(
            predictor, "device_event", None
        )
        self._seconds = 0.0
        self._last_end = float("-inf")
        self._pending: deque[tuple[DeviceEvent, DeviceEvent]] = deque()

    def time(self, predict: Callable[[Any], Any], arrays: Any) -> Any:
        """``predict(arrays)``, timed."""
        start = self._event() if self._event is not None else None
        t0 = time.perf_counter()
        out = predict(arrays)
        end = self._event() if start is not None and self._event is not None else None
        if start is None or end is None:
            self._seconds += time.perf_counter() - t0
        else:
            self._pending.append((start, end))
            self._collect(wait=False)
        return out

    def add(self, start: float, end: float) -> None:
        """Add a background call's interval (``time.perf_counter()`` at its submission and at
        its last tile's end): only the part after the last interval added, since the next
        batch is submitted while this one runs (intervals come in submission order)."""
        self._seconds += max(end - max(start, self._last_end), 0.0)
        self._last_end = max(self._last_end, end)

    def _collect(self, wait: bool) -> None:
        """Add the intervals whose end has passed (all of them, waiting, if ``wait``)."""
        while self._pending:
            start, end = self._pending[0]
            if wait:
                end.synchronize()
            elif not end.query():
                return
            self._seconds += start.elapsed_time(end) / 1000.0
            self._pending.popleft()

    def seconds(self) -> float:
        """The total so far, once the device has finished the work timed."""
        self._collect(wait=True)
        return self._seconds

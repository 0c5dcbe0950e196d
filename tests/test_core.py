"""The inference core's merge worker: errors surface in the caller, nothing hangs."""

from __future__ import annotations

import numpy as np
import pytest

from mfaf_cli.pipeline.core import MergeWorker
from mfaf_cli.tiling.windows import Window


class FakeMerger:
    def __init__(self, fail_at: int | None = None) -> None:
        self.added: list[Window] = []
        self.skipped: list[Window] = []
        self.fail_at = fail_at

    def add(self, w: Window, probs: np.ndarray, valid: np.ndarray) -> None:
        if self.fail_at is not None and len(self.added) == self.fail_at:
            raise OSError("disk full")
        self.added.append(w)

    def add_skipped(self, w: Window) -> None:
        self.skipped.append(w)


def _batches(n: int) -> list[tuple[list[Window], list, np.ndarray]]:
    out = []
    for b in range(n):
        ws = [Window(b, k, 2, 2) for k in range(2)]
        probs = [np.zeros((1, 2, 2), np.float32), None]  # second window skipped
        out.append((ws, probs, np.ones((2, 2, 2), bool)))
    return out


@pytest.mark.parametrize("threaded", [True, False])
def test_merges_in_order(threaded: bool) -> None:
    m = FakeMerger()
    worker = MergeWorker(m, threaded=threaded)
    for item in _batches(5):
        worker.submit(*item)
    worker.close()
    assert m.added == [Window(b, 0, 2, 2) for b in range(5)]
    assert m.skipped == [Window(b, 1, 2, 2) for b in range(5)]


def test_worker_error_is_raised_in_the_caller() -> None:
    m = FakeMerger(fail_at=2)
    worker = MergeWorker(m)
    with pytest.raises(OSError, match="disk full"):
        for item in _batches(50):
            worker.submit(*item)
        worker.close()
    worker.close(ok=False)  # idempotent after the failure, does not hang
    assert len(m.added) == 2

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


def test_masks_go_back_to_the_slots_even_when_merging_fails() -> None:
    """The core waits for a free mask set before each batch: a failed merge must still hand
    its masks back, or the next batch would wait forever instead of raising."""
    import threading

    from mfaf_cli.metadata import ModalitySpec, ModelMeta, Normalisation, default_classes
    from mfaf_cli.pipeline.core import BatchSlots

    meta = ModelMeta("x", (ModalitySpec("optical", ("a",), Normalisation.identity(1)),),
                     default_classes(2))  # fmt: skip
    slots = BatchSlots(meta, 2, (2, 2), masks=2)
    worker = MergeWorker(FakeMerger(fail_at=1), done=slots.release)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            for b in range(20):
                _, valid = slots.take(2, (2, 2))
                valid[...] = True
                ws = [Window(b, k, 2, 2) for k in range(2)]
                worker.submit(ws, [np.zeros((1, 2, 2), np.float32)] * 2, valid)
            worker.close()
        except OSError as err:
            raised.append(err)
            worker.close(ok=False)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "a batch waited forever for a mask set"
    assert raised and "disk full" in str(raised[0])


def test_batch_slots_are_reused_and_checked() -> None:
    from mfaf_cli.metadata import ModalitySpec, ModelMeta, Normalisation, default_classes
    from mfaf_cli.pipeline.core import BatchSlots

    meta = ModelMeta("x", (ModalitySpec("optical", ("a", "b"), Normalisation.identity(2)),),
                     default_classes(2))  # fmt: skip
    slots = BatchSlots(meta, 4, (8, 8), masks=1)
    arrays, valid = slots.take(3, (8, 8))
    assert arrays["optical"].shape == (3, 2, 8, 8) and valid.shape == (3, 8, 8)
    slots.release(valid)
    again, valid2 = slots.take(4, (8, 8))
    assert np.shares_memory(again["optical"], arrays["optical"])
    assert np.shares_memory(valid, valid2)
    with pytest.raises(ValueError, match="do not fit"):
        slots.take(5, (8, 8))
    with pytest.raises(ValueError, match="do not fit"):
        slots.take(1, (4, 8))


def test_outputs_that_alias_the_inputs_are_copied() -> None:
    """Input slots are refilled by the next batch while the merge worker may still hold this
    batch's probabilities: a predictor returning a view of its inputs must not see them
    change under it."""
    from mfaf_cli.pipeline.core import EdgeCarry, PreparedBatch, _finish_batch, _submit_batch

    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    windows = [Window(0, 0, 4, 4), Window(0, 4, 4, 4)]
    pb = PreparedBatch(windows, [0, 1], {"optical": x}, np.ones((2, 4, 4), bool))
    carry = EdgeCarry()
    probs = _finish_batch(_submit_batch(pb, windows, lambda a: a["optical"][:, :2], carry), carry)
    before = [p.copy() for p in probs]
    x[...] = -1.0  # the next batch
    for p, b in zip(probs, before, strict=True):
        assert not np.shares_memory(p, x)
        np.testing.assert_array_equal(p, b)


def test_model_clock_adds_overlapping_background_intervals_once() -> None:
    """Batches run in the background overlap (the next is submitted while one runs): the
    model's seconds are the union of their intervals, not the sum."""
    from mfaf_cli.pipeline.clock import ModelClock

    clock = ModelClock(None)
    for start, end in [(0.0, 2.0), (1.0, 3.0), (2.5, 3.5), (5.0, 6.0)]:
        clock.add(start, end)
    assert clock.seconds() == 4.5

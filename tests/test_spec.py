"""The inference spec: validated once; the thread budget never oversubscribes the cores."""

from __future__ import annotations

import pytest

from mfaf_cli.errors import UsageError
from mfaf_cli.pipeline.spec import (
    READER_NICENESS,
    InferenceSpec,
    lower_reader_priority,
    split_threads,
    usable_cores,
)


@pytest.mark.parametrize(
    ("threads", "gpu", "want"),
    [(1, False, (1, 0)), (2, False, (2, 1)), (3, False, (3, 1)), (8, False, (8, 2)),
     (16, False, (16, 4)), (1, True, (1, 1)), (4, True, (1, 3))],
)  # fmt: skip
def test_split_threads(threads: int, gpu: bool, want: tuple[int, int]) -> None:
    """On CPU the engine gets every core of the budget (issue 19), readers run beside it."""
    assert split_threads(threads, gpu) == want
    if not gpu:
        assert want[0] == threads


@pytest.mark.parametrize(("threads", "want"), [(1, (1, 1)), (2, (1, 1)), (8, (1, 7))])
def test_reader_bound_run_gives_cores_to_readers(threads: int, want: tuple[int, int]) -> None:
    assert split_threads(threads, reader_bound=True) == want


def test_spec_defaults_use_all_cores() -> None:
    spec = InferenceSpec()
    assert spec.total_threads == usable_cores()
    assert spec.thread_split()[0] == usable_cores()
    assert InferenceSpec(threads=2).thread_split() == (2, 1)
    assert InferenceSpec(threads=2).thread_split(reader_bound=True) == (1, 1)


def test_reader_priority_is_lowered_in_its_own_thread_only() -> None:
    import os
    import sys
    import threading

    if sys.platform != "linux":
        pytest.skip("per-thread niceness is Linux's")
    seen: dict[str, int] = {}

    def reader() -> None:
        before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        lower_reader_priority()
        seen["delta"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) - before

    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=reader)
    t.start()
    t.join()
    assert seen["delta"] == min(READER_NICENESS, 19 - main_before)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before


@pytest.mark.parametrize(
    ("kw", "msg"),
    [({"batch_size": 0}, "--batch-size"), ({"overlap": 1.0}, "overlap"), ({"tile": -3}, "tile"),
     ({"blend": "max"}, "blend"), ({"engine": "trt"}, "engine"),
     ({"precision": "int8"}, "precision"),
     ({"threads": 0}, "--threads"), ({"threads": True}, "--threads")],
)  # fmt: skip
def test_spec_rejects_bad_values(kw: dict, msg: str) -> None:
    with pytest.raises(UsageError, match=msg):
        InferenceSpec(**kw)

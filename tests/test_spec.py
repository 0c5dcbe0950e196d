"""The inference spec: validated once; the thread budget never oversubscribes the cores."""

from __future__ import annotations

import pytest

from mfaf_cli.errors import UsageError
from mfaf_cli.pipeline.spec import InferenceSpec, split_threads, usable_cores


@pytest.mark.parametrize(
    ("threads", "gpu", "want"),
    [(1, False, (1, 0)), (2, False, (1, 1)), (3, False, (2, 1)), (8, False, (6, 2)),
     (16, False, (12, 4)), (1, True, (1, 1)), (4, True, (1, 3))],
)  # fmt: skip
def test_split_threads(threads: int, gpu: bool, want: tuple[int, int]) -> None:
    assert split_threads(threads, gpu) == want
    engine, readers = want
    if not gpu:
        assert engine + readers <= threads and engine >= 1


def test_spec_defaults_use_all_cores() -> None:
    spec = InferenceSpec()
    assert spec.total_threads == usable_cores()
    assert sum(spec.thread_split()) <= usable_cores()
    assert InferenceSpec(threads=2).thread_split() == (1, 1)


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

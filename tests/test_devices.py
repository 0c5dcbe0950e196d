"""The one device resolver: the same answers for the engines and the trainer."""

from __future__ import annotations

import pytest
import torch

from mfaf_cli.devices import resolve_device
from mfaf_cli.errors import EngineError, UsageError
from mfaf_cli.training.distributed import _Dist, _resolve_device


@pytest.fixture()
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend PyTorch sees cuda:0 and cuda:1, current device 1 (resolution only, no CUDA)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)


def test_cpu_and_bad_names() -> None:
    assert resolve_device("cpu") == resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("tpu", "gpu0", "mps"):
        with pytest.raises(UsageError, match="invalid device"):
            resolve_device(bad)


def test_with_gpus(two_gpus: None) -> None:
    assert resolve_device("auto") == torch.device("cuda", 1)  # the current device
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("CUDA:1") == torch.device("cuda", 1)
    with pytest.raises(EngineError, match=r"only 2 CUDA device\(s\)"):
        resolve_device("cuda:2")
    with pytest.raises(UsageError, match="invalid device"):
        resolve_device("cuda:x")
    # a torchrun process: auto and cuda mean its local rank's GPU, cuda:N stays N
    assert resolve_device("auto", local_rank=0) == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    with pytest.raises(EngineError, match="only 2"):
        resolve_device("cuda", local_rank=3)


def test_without_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device("auto", local_rank=2) == torch.device("cpu")
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(EngineError, match=r"no CUDA device.*--device cpu"):
            resolve_device(spec)


def test_training_uses_the_same_resolver(two_gpus: None) -> None:
    for spec in ("cpu", "auto", "cuda", "cuda:0", "cuda:1"):
        assert _resolve_device(spec, _Dist(local_rank=1)) == resolve_device(spec, local_rank=1)
    with pytest.raises(UsageError):
        _resolve_device("tpu", _Dist())


def test_the_engine_uses_the_same_resolver() -> None:
    from mfaf_cli.engine import torch_predictor

    assert torch_predictor.resolve_device is resolve_device

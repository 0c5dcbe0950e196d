"""The training loader (mfaf_cli/training/loading.py): persistent workers change nothing in
what is read, only how fast (issue 23)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from dataset_builders import make_landcover

from mfaf_cli.data.folder import FolderDataset
from mfaf_cli.errors import UsageError
from mfaf_cli.training.config import TrainConfig, validate_config
from mfaf_cli.training.distributed import _Dist
from mfaf_cli.training.loading import TrainLoader, resolve_workers
from mfaf_cli.training.trainer import _train_loader


def _dataset(root: Path, mode: str = "fixed") -> FolderDataset:
    ds = FolderDataset(root, "train", tile=16, seed=3, classes="worldcover", augment=True,
                       photometric=0.15, normalisation=mode)  # fmt: skip
    ds.set_normalisation(ds.compute_normalisation())
    return ds


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_landcover(tmp_path_factory.mktemp("lc") / "lc", size=64)


def _cfg(workers: int | str, sampling: str = "random") -> TrainConfig:
    return TrainConfig(batch_size=4, seed=7, tile=16, num_workers=workers, sampling=sampling)


def _batches(it: Any) -> list[dict[str, Any]]:
    return list(it)


def _assert_same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b) and a
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["index"], y["index"])
        assert torch.equal(x["mask"], y["mask"])
        for m in x["inputs"]:
            assert torch.equal(x["inputs"][m], y["inputs"][m]), m


@pytest.mark.parametrize("mode", ["fixed", "scene-percentile"])
def test_loader_yields_the_samples_of_the_per_epoch_loader(
    scenes: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same arrays, labels and order as the loader built afresh per epoch (before issue
    23), which read every scene's percentiles whatever the normalisation."""
    new, ref = _dataset(scenes, mode), _dataset(scenes, mode)
    monkeypatch.setattr(ref, "_uses_percentiles", lambda: True)
    loader = TrainLoader(new, _cfg(0), _Dist())
    for epoch in (0, 1):
        before = _batches(_train_loader(ref, _cfg(0), epoch, _Dist()))
        _assert_same(_batches(loader.epoch(epoch)), before)
    assert new._uses_percentiles() == (mode != "fixed")
    # the epochs differ (jitter and augmentation follow the epoch), so the check can fail
    e0, e1 = _batches(loader.epoch(0)), _batches(loader.epoch(1))
    assert not all(torch.equal(a["mask"], b["mask"]) for a, b in zip(e0, e1, strict=True))


@pytest.mark.parametrize("sampling", ["random", "balanced"])
def test_workers_give_the_samples_of_no_workers(scenes: Path, sampling: str) -> None:
    """Two persistent workers over two epochs: the same batches as none (hence the same
    multiset); the epoch reaches the workers' copies of the dataset."""
    import numpy as np

    ds = _dataset(scenes)
    weights = np.linspace(1.0, 2.0, len(ds)) if sampling == "balanced" else None
    serial = TrainLoader(ds, _cfg(0, sampling), _Dist(), weights)
    parallel = TrainLoader(_dataset(scenes), _cfg(2, sampling), _Dist(), weights)
    assert parallel.loader.persistent_workers and not parallel.loader.pin_memory
    for epoch in (0, 1):
        _assert_same(_batches(parallel.epoch(epoch)), _batches(serial.epoch(epoch)))


def test_interrupted_epoch_then_next_epoch(scenes: Path) -> None:
    """A capped epoch (--max-batches) leaves batches in flight; the next epoch is still whole
    and exactly the unworkered one."""
    from itertools import islice

    ds = _dataset(scenes)
    parallel = TrainLoader(ds, _cfg(1), _Dist())
    assert len(list(islice(parallel.epoch(0), 1))) == 1
    serial = TrainLoader(_dataset(scenes), _cfg(0), _Dist())
    _assert_same(_batches(parallel.epoch(1)), _batches(serial.epoch(1)))


def test_auto_workers_are_usable_cores_minus_one() -> None:
    assert resolve_workers("auto") == max(0, len(os.sched_getaffinity(0)) - 1)
    assert resolve_workers(3) == 3 and resolve_workers(0) == 0


@pytest.mark.parametrize("bad", [-1, "many", True])
def test_bad_worker_counts_are_usage_errors(bad: Any) -> None:
    cfg = TrainConfig(dataset="folder", data_root="x", model="unet", out="o", num_workers=bad)
    with pytest.raises(UsageError, match="num workers"):
        validate_config(cfg)


def test_cli_rejects_a_bad_worker_count(runner: Any) -> None:
    code, out, err = runner("train", "--num-workers", "lots")
    assert code == 2 and "lots" in err and "Traceback" not in out + err

"""The training loader: one DataLoader for the whole run, its workers kept between epochs.

A fresh DataLoader per epoch started fresh workers every epoch: each re-opened every raster
(GDAL handles, block cache) and re-read each scene's statistics before its first sample, so
one worker was slower than none (benchmarks/train_bench.py). Here the workers persist and
prefetch, and the epoch travels with each index (``(epoch, index)`` keys) instead of living
in the dataset object each worker copied once: augmentation and window jitter still derive
from ``(seed, epoch, index)``, so the samples do not depend on the number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from mfaf_cli.training.config import TrainConfig
from mfaf_cli.training.distributed import _Dist

#: batches each worker keeps ready ahead of the training step
PREFETCH = 4


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def resolve_workers(spec: int | str) -> int:
    """Loader worker processes for ``--num-workers``: ``auto`` is the usable cores minus one
    for the main (training) process, at least 0."""
    if spec == "auto":
        return max(0, usable_cores() - 1)
    return int(spec)


def close_loader(loader: DataLoader[Any]) -> None:
    """Stop a DataLoader's persistent workers now, not whenever the loader is collected (a
    process that trains several times in a row would otherwise keep idle workers around)."""
    it = getattr(loader, "_iterator", None)
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    loader._iterator = None


def collate(batch: list[Any]) -> Any:
    """``default_collate``, but tensors stacked by numpy in the main process.

    Why: with 0 workers the batch is stacked in the training process, whose torch thread
    pool (sized for the model) spun on every ``torch.stack`` of a shared machine: 30× the CPU
    of a one-thread copy. In a worker (torch has one thread there) ``default_collate`` stacks
    straight into shared memory, the cheapest way out of the worker.
    """
    if get_worker_info() is not None:
        return default_collate(batch)
    first = batch[0]
    if isinstance(first, dict):
        return {k: collate([b[k] for b in batch]) for k in first}
    if isinstance(first, torch.Tensor):
        return torch.from_numpy(np.stack([t.numpy() for t in batch]))
    return default_collate(batch)


class EpochItems(Dataset[dict[str, Any]]):
    """``ds`` indexed by ``(epoch, index)``: sets the epoch of this process's copy, then reads."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        if self.ds.epoch != epoch:
            self.ds.set_epoch(epoch)
        return self.ds[index]  # type: ignore[no-any-return]


class EpochSampler(Sampler[tuple[int, int]]):
    """The indexes ``order(epoch)`` gives for the current epoch, as ``(epoch, index)`` keys."""

    def __init__(self, order: Callable[[int], Any]) -> None:
        self.order, self.epoch = order, 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        e = self.epoch
        return ((e, int(i)) for i in self.order(e))

    def __len__(self) -> int:
        return len(self.order(self.epoch))


class TrainLoader:
    """The training batches of every epoch from one DataLoader (``epoch(e)`` iterates one)."""

    def __init__(
        self,
        ds: Any,
        cfg: TrainConfig,
        d: _Dist,
        window_weights: np.ndarray | None = None,
        torch_device: str | torch.device = "cpu",
    ) -> None:
        self.ds, self.cfg, self.d, self.window_weights = ds, cfg, d, window_weights
        self.workers = resolve_workers(cfg.num_workers)
        self.sampler = EpochSampler(self.order)
        per_rank = len(ds) // d.world if d.enabled else len(ds)
        self.loader = DataLoader(
            EpochItems(ds),
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=self.workers,
            collate_fn=collate,
            drop_last=per_rank > cfg.batch_size,
            pin_memory=torch.device(torch_device).type == "cuda",
            persistent_workers=self.workers > 0,
            prefetch_factor=PREFETCH if self.workers > 0 else None,
        )

    def order(self, epoch: int) -> Any:
        """The sampler of ``epoch`` (the same draws the per-epoch loader made)."""
        from torch.utils.data import DistributedSampler, RandomSampler

        from mfaf_cli.training.sampling import DrawnSampler

        cfg, d = self.cfg, self.d
        if cfg.sampling != "random":  # grid order, or balanced draws (training/sampling.py)
            return DrawnSampler(
                len(self.ds), cfg.sampling, cfg.seed, epoch, self.window_weights, d.rank, d.world
            )
        if d.enabled:
            s: DistributedSampler[Any] = DistributedSampler(
                self.ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed,
                drop_last=True,
            )  # fmt: skip
            s.set_epoch(epoch)
            return s
        g = torch.Generator()
        g.manual_seed(cfg.seed * 100_003 + epoch)
        return RandomSampler(self.ds, generator=g)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        """An iterator over the batches of ``epoch``."""
        self.ds.set_epoch(epoch)  # this process's copy (0 workers; summaries)
        self.sampler.epoch = epoch
        return iter(self.loader)

    def close(self) -> None:
        close_loader(self.loader)


# ---- the run's datasets and its plain loaders -----------------------------------------------
def open_splits(
    cfg: TrainConfig, modalities: tuple[str, ...], d: _Dist, *, show: bool
) -> tuple[Any, Any, dict[str, dict[str, Any]]]:
    """The train and val datasets of a run (labels checked) and the per-split summaries."""
    from mfaf_cli.data.datasets import open_dataset
    from mfaf_cli.errors import DatasetError
    from mfaf_cli.training.labels import folder_label_options
    from mfaf_cli.training.records import split_summaries

    common: dict[str, Any] = dict(
        modalities=modalities,
        tile=cfg.tile,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        bands=cfg.bands or None,
        band_flags=cfg.band_origin or None,
        normalisation=cfg.normalisation,
    )
    if cfg.dataset == "folder" and cfg.num_classes:
        common["num_classes"] = cfg.num_classes
    common |= folder_label_options(cfg)
    train_ds = open_dataset(
        cfg.dataset, cfg.data_root, "train", photometric=cfg.photometric, **common
    )
    val_ds = open_dataset(cfg.dataset, cfg.data_root, "val", augment=False, **common)
    if train_ds.num_classes != val_ds.num_classes:
        raise DatasetError("train and val splits disagree on the class table")
    train_ds.check_labels()
    val_ds.check_labels()
    splits = split_summaries(cfg, train_ds, val_ds, common, show=show)
    if len(train_ds) < d.world:
        raise DatasetError(
            f"the train split has {len(train_ds)} samples, fewer than {d.world} processes"
        )
    return train_ds, val_ds, splits


def _train_loader(
    ds: Any, cfg: TrainConfig, epoch: int, d: _Dist, window_weights: np.ndarray | None = None
) -> torch.utils.data.DataLoader:
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, default_collate

    from mfaf_cli.training.sampling import DrawnSampler

    ds.set_epoch(epoch)
    if cfg.sampling != "random":  # grid order, or balanced draws (training/sampling.py)
        sampler: Any = DrawnSampler(
            len(ds), cfg.sampling, cfg.seed, epoch, window_weights, d.rank, d.world
        )
    elif d.enabled:
        sampler = DistributedSampler(
            ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        sampler.set_epoch(epoch)
    else:
        g = torch.Generator()
        g.manual_seed(cfg.seed * 100_003 + epoch)
        sampler = RandomSampler(ds, generator=g)
    per_rank = len(ds) // d.world if d.enabled else len(ds)
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=resolve_workers(cfg.num_workers),
        collate_fn=default_collate,
        drop_last=per_rank > cfg.batch_size,
        pin_memory=False,
    )


def _val_loader(
    ds: Any, cfg: TrainConfig, d: _Dist, persist: bool = False
) -> torch.utils.data.DataLoader:
    from torch.utils.data import DataLoader, Subset, default_collate

    sub = Subset(ds, list(range(d.rank, len(ds), d.world))) if d.enabled else ds
    workers = resolve_workers(cfg.num_workers)
    return DataLoader(
        sub,
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=default_collate,
        persistent_workers=persist and workers > 0,  # built once per run in fit()
    )

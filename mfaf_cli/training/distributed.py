"""Process-group plumbing for ``torchrun`` runs (a no-op in a single process), and the
training device for this process."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from mfaf_cli.devices import resolve_device


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def _init_distributed(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    here = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device != "cpu"
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        here = True
    return _Dist(rank, world, local, here)


def _all_reduce(t: torch.Tensor, d: _Dist) -> torch.Tensor:
    if d.enabled:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def nonfinite_ranks(value: torch.Tensor, d: _Dist) -> list[int]:
    """The ranks whose ``value`` (this step's loss) is not finite, the same list on every rank.

    One all-reduce of a flag per rank, so that all ranks stop together: a rank that raised
    alone would leave the others waiting in the gradient all-reduce (with NCCL, until its
    timeout). In a single process, just this process's answer.
    """
    flags = torch.zeros(max(d.world, 1), device=value.device)
    flags[d.rank] = (~torch.isfinite(value.detach())).any().float()
    return [rank for rank, bad in enumerate(_all_reduce(flags, d).tolist()) if bad]


def _barrier(d: _Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        dist.barrier()


def _resolve_device(spec: str, d: _Dist) -> torch.device:
    """This process's training device (:func:`mfaf_cli.devices.resolve_device`; under
    ``torchrun``, ``auto``/``cuda`` mean the local rank's GPU)."""
    return resolve_device(spec, local_rank=d.local_rank)


def _shutdown(d: _Dist) -> None:
    """Tear down the process group if this process created it."""
    if d.initialised_here:
        import torch.distributed as dist

        with contextlib.suppress(Exception):
            dist.destroy_process_group()

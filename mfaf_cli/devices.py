"""The one device resolver (``auto | cpu | cuda | cuda:N``) for inference and training.

A low room: it imports only :mod:`mfaf_cli.errors` (and torch when called), so the engines
and the trainer can both use it without importing each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mfaf_cli.errors import EngineError, UsageError

if TYPE_CHECKING:
    import torch

_VALID = "use auto, cpu, cuda or cuda:N"


def resolve_device(
    device: str | torch.device = "auto", local_rank: int | None = None
) -> torch.device:
    """``auto`` → a CUDA GPU if PyTorch sees one, else CPU; ``cuda[:N]`` must exist.

    ``local_rank`` (a ``torchrun`` process) makes ``auto`` and ``cuda`` mean that process's
    GPU; without it they mean the current CUDA device (``auto``) or ``cuda:0``.
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    d = device.strip().lower()
    if d == "cpu" or (d == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if d == "auto":
        index = torch.cuda.current_device() if local_rank is None else local_rank
        return torch.device("cuda", index)
    if d == "cuda" or d.startswith("cuda:"):
        return torch.device("cuda", _cuda_index(device, d, local_rank))
    raise UsageError(f"invalid device {device!r}; {_VALID}")


def _cuda_index(device: str, d: str, local_rank: int | None) -> int:
    """The index of an existing CUDA device named by ``cuda`` / ``cuda:N``."""
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only PyTorch build" if torch.version.cuda is None else "no visible GPU"
        raise EngineError(
            f"--device {device} was requested but PyTorch has no CUDA device ({build}); "
            "use --device cpu (or auto)"
        )
    if d == "cuda":
        idx = 0 if local_rank is None else local_rank
    else:
        try:
            idx = int(d.split(":", 1)[1])
        except ValueError:
            raise UsageError(f"invalid device {device!r}; {_VALID}") from None
    count = torch.cuda.device_count()
    if not 0 <= idx < count:
        raise EngineError(f"--device {device}: only {count} CUDA device(s) (cuda:0..)")
    return idx

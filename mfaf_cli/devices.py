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


def cuda_autocast_dtype(device: torch.device) -> tuple[torch.dtype, str]:
    """``(bf16 or fp16, why)``: the autocast dtype for CUDA ``device`` and the reason.

    bf16 only where the GPU computes it natively (compute capability 8.0 on, ROCm); elsewhere
    (T4, V100) bf16 is emulated and slow, so fp16, which training pairs with a GradScaler.
    ``torch.cuda.is_bf16_supported()`` says True wherever a bf16 tensor can be made (emulation
    included), asks the current device rather than ``device``, and makes a test tensor there,
    which creates a CUDA context on GPU 0 in every torchrun rank; reading the target device's
    properties does none of that.
    """
    import torch

    if torch.version.hip:
        return torch.bfloat16, "bf16: ROCm (native on AMD GPUs)"
    index = torch.cuda.current_device() if device.index is None else device.index
    props = torch.cuda.get_device_properties(index)
    gpu = f"cuda:{index} ({props.name}, compute capability {props.major}.{props.minor})"
    if props.major >= 8:
        return torch.bfloat16, f"bf16: {gpu} computes it natively"
    return torch.float16, f"fp16: {gpu} has no native bf16 (only emulated, slow)"

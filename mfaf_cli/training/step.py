"""One batch's loss: padding to the network's divisor, the forward pass under autocast,
cross-entropy (class-weighted in training) plus the ramped alignment term."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mfaf_cli.training.alignment import _alignment
from mfaf_cli.training.config import TrainConfig


def pad_batch(
    inputs: list[torch.Tensor], mask: torch.Tensor, divisor: int, ignore_index: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Pad H/W at bottom/right to a multiple of ``divisor`` (inputs reflect, mask ignore)."""
    h, w = mask.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if not (ph or pw):
        return inputs, mask
    mode = "reflect" if ph < h and pw < w else "replicate"
    inputs = [F.pad(x, (0, pw, 0, ph), mode=mode) for x in inputs]
    mask = F.pad(mask, (0, pw, 0, ph), value=ignore_index)
    return inputs, mask


# (loss, ce, mmd, logits, mask, alignment monitors or None)
_LossOut = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[float, float] | None
]


def _forward_loss(
    model: nn.Module,
    batch: dict[str, Any],
    modalities: tuple[str, ...],
    device: torch.device,
    cfg: TrainConfig,
    mmd_weight: float,
    divisor: int,
    ignore_index: int,
    autocast: tuple[bool, torch.dtype],
    want_aux: bool = True,
    class_weight: torch.Tensor | None = None,
) -> _LossOut:
    """(loss, ce, mmd, logits, mask, alignment monitors or None) for one batch.

    The alignment branch runs whenever MMD is on, even while its ramped weight is still 0,
    so DDP sees the same parameters used at every step.
    """
    xs = [batch["inputs"][m].to(device, non_blocking=True) for m in modalities]
    mask = batch["mask"].to(device, non_blocking=True)
    xs, mask = pad_batch(xs, mask, divisor, ignore_index)
    use_aux = want_aux and cfg.mmd != "none"
    monitors = None
    with torch.autocast(device.type, dtype=autocast[1], enabled=autocast[0]):
        out = model(*xs, return_aux=True) if use_aux else model(*xs)
        logits, aux = out if isinstance(out, tuple) else (out, {})
        logits = logits.float()
        if (mask != ignore_index).any():
            ce = F.cross_entropy(logits, mask, weight=class_weight, ignore_index=ignore_index)
        else:
            ce = logits.sum() * 0.0
        mmd = torch.zeros((), device=device)
    if use_aux and "deep" in aux:
        # in float32: autocast would run the class means' matmul in half precision
        with torch.autocast(device.type, enabled=False):
            mmd, monitors = _alignment(aux, cfg, mask, ignore_index)
    return ce + mmd_weight * mmd, ce, mmd, logits, mask, monitors

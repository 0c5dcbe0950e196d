"""The optimiser and its learning-rate schedule: AdamW over every step of the run, a linear
warm-up then poly or cosine decay, AMP on CUDA, and the schedule a resumed run continues."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mfaf_cli.training.config import TrainConfig

log = logging.getLogger(__name__)


def lr_factor(
    step: int, total: int, schedule: str, warmup: float = 0.0, power: float = 0.9
) -> float:
    """Multiplier of the base LR at ``step`` of ``total`` (linear warm-up, then poly/cosine)."""
    total = max(1, total)
    w = round(warmup * total)
    if w > 0 and step < w:
        return (step + 1) / w
    t = min(1.0, (step - w) / max(1, total - w))
    if schedule == "poly":
        return (1.0 - t) ** power
    return 0.5 * (1.0 + math.cos(math.pi * t))


class _LRLambda:
    """The schedule as a callable object (LambdaLR saves its ``__dict__`` in the state dict,
    so a resume must not load it back: see :func:`_load_scheduler`)."""

    def __init__(self, total: int, schedule: str, warmup: float) -> None:
        self.total, self.schedule, self.warmup = total, schedule, warmup

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total, self.schedule, self.warmup)


def _load_scheduler(
    sched: torch.optim.lr_scheduler.LambdaLR, saved: dict[str, Any], base_lr: float
) -> None:
    """Restore the step count of a saved scheduler but keep *this* run's schedule.

    ``LambdaLR.load_state_dict`` would copy the saved lambda's ``__dict__`` (old total steps,
    old schedule) over the new one, so a resume with more epochs trained at LR 0. The
    optimizer's current LR is recomputed from the new schedule at the saved step, which is
    what an uninterrupted run with the new settings would use.
    """
    sched.load_state_dict({**saved, "lr_lambdas": [None] * len(sched.lr_lambdas)})
    sched.base_lrs = [base_lr] * len(sched.optimizer.param_groups)
    steps = sched.last_epoch
    lrs = [b * fn(steps) for b, fn in zip(sched.base_lrs, sched.lr_lambdas, strict=True)]
    for group, lr in zip(sched.optimizer.param_groups, lrs, strict=True):
        group["initial_lr"], group["lr"] = base_lr, lr
    sched._last_lr = lrs


@dataclass
class Optimiser:
    """What one run steps: the optimiser, its schedule, the AMP gradient scaler and the
    autocast setting ``(enabled, dtype)``."""

    opt: torch.optim.AdamW
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    autocast: tuple[bool, torch.dtype]


def build_optimiser(
    model: nn.Module, cfg: TrainConfig, total_steps: int, device: torch.device
) -> Optimiser:
    """AdamW, the LR schedule over ``total_steps``, and AMP (CUDA only: bf16 where native,
    fp16 with the GradScaler elsewhere)."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _LRLambda(total_steps, cfg.schedule, cfg.warmup))
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.float16
    if use_amp:
        from mfaf_cli.devices import cuda_autocast_dtype

        amp_dtype, why = cuda_autocast_dtype(device)
        log.info("AMP %s", why)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    return Optimiser(opt, sched, scaler, (use_amp, amp_dtype))


def optimiser_state(o: Optimiser) -> dict[str, Any]:
    """The optimiser's part of the resume state."""
    out: dict[str, Any] = {"optimizer": o.opt.state_dict(), "scheduler": o.sched.state_dict()}
    if o.scaler.is_enabled():
        out["scaler"] = o.scaler.state_dict()
    return out


def restore_optimiser(o: Optimiser, state: dict[str, Any], base_lr: float) -> None:
    """Optimiser, scaler and the step count of the schedule (this run's schedule)."""
    o.opt.load_state_dict(state["optimizer"])
    _load_scheduler(o.sched, state["scheduler"], base_lr)
    if "scaler" in state and o.scaler.is_enabled():
        o.scaler.load_state_dict(state["scaler"])

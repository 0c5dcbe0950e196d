"""The alignment (MMD) monitors of fusion networks: the alignment loss a batch adds, and the
per-epoch monitors beside it (the embedding's mean pixel-pair cosine, the head-free MMD² of
the deep features), with a warning when the embedding has collapsed."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from mfaf_cli.training.config import TrainConfig

log = logging.getLogger(__name__)

#: slots of the per-epoch sums a training step fills (loss, ce, mmd, batches, then the monitors)
SUM_SLOTS = 7


def _monitor_columns(sums: torch.Tensor) -> dict[str, float]:
    """Epoch means of the alignment monitors (NaN when no batch computed them)."""
    n = float(sums[6])
    if n == 0:
        return {"embed_cosine": float("nan"), "headfree_mmd": float("nan")}
    return {"embed_cosine": float(sums[4]) / n, "headfree_mmd": float(sums[5]) / n}


def _warn_if_collapsed(row: dict[str, Any], epoch: int) -> None:
    from mfaf_cli.models.losses import COLLAPSE_COSINE

    cos = row["embed_cosine"]
    if math.isfinite(cos) and cos > COLLAPSE_COSINE:
        log.warning(
            "epoch %d: the alignment embedding has collapsed (mean pixel-pair cosine %.4f > %.2f);"
            " the MMD term no longer aligns the modalities (try --mmd rbf)",
            epoch,
            cos,
            COLLAPSE_COSINE,
        )


def _alignment(
    aux: dict[str, Any], cfg: TrainConfig, mask: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, tuple[float, float]]:
    """(alignment loss, (embedding cosine, head-free MMD²)) from a model's aux outputs.

    The head-free MMD² (:func:`feature_mmd` on the deep features) and the mean pixel-pair
    cosine of the embedding the loss sees are monitors logged every epoch: a cosine near 1
    means the embedding collapsed and the loss no longer aligns anything.
    """
    from mfaf_cli.models.losses import (
        FEATURE_KINDS,
        embedding_cosine,
        feature_mmd,
        layer_normalised,
        mmd_loss,
        valid_samples,
    )

    f_a, f_b = aux["deep"]
    valid = valid_samples(mask, tuple(f_a.shape[-2:]), ignore_index)
    if cfg.mmd in FEATURE_KINDS:
        loss = feature_mmd(f_a, f_b, valid)
        return loss, (embedding_cosine(layer_normalised(f_a)), float(loss.detach()))
    z_a, z_b, hinge = aux["align"]
    loss = mmd_loss(z_a.float(), z_b.float(), kind=cfg.mmd, labels=mask, ignore_index=ignore_index)
    loss = loss + hinge
    with torch.no_grad():
        head_free = float(feature_mmd(f_a, f_b, valid))
    return loss, (embedding_cosine(z_a), head_free)

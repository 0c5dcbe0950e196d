"""Modality dropout (``--modality-dropout P``): train one fusion network to degrade gracefully
when a modality is missing, the alternative to separate fallback models (pipeline/fallback.py).

At predict time a missing pixel of a modality reaches the network as 0 after normalisation
(NaN -> 0, :func:`mfaf_cli.normalize.apply_normalisation`). With probability ``P`` per sample,
one modality (chosen at random, never all of them) is made missing the same way: half of the
time wholly, half of the time under a cloud-shaped region (a smooth random field at 1/16 of
the tile, upsampled and thresholded to cover 15-70 % of the tile). Labels are kept: the
network learns to map those pixels from what is left. Seeded by the run's seed and step, so
a resumed or repeated run drops the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

#: Share of dropped samples that lose their modality wholly (the rest: cloud-shaped).
WHOLE = 0.5
#: Coverage of a cloud-shaped region, as a fraction of the tile: uniform in this range.
COVER = (0.15, 0.7)


def cloud_masks(n: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """(n, h, w) bool: smooth blob-shaped regions, each covering 15-70 % of its tile."""
    gh, gw = max(2, h // 16), max(2, w // 16)
    field = torch.rand((n, 1, gh, gw), generator=generator)
    smooth = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=False)[:, 0]
    cover = COVER[0] + (COVER[1] - COVER[0]) * torch.rand((n,), generator=generator)
    flat = smooth.reshape(n, -1)
    k = ((1 - cover) * (h * w - 1)).long().clamp(0, h * w - 1)  # each sample's quantile
    thresh = flat.sort(dim=1).values[torch.arange(n), k]
    return smooth > thresh.view(n, 1, 1)


def drop_modalities(
    inputs: dict[str, torch.Tensor],
    modalities: Sequence[str],
    p: float,
    generator: torch.Generator,
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """``inputs`` (normalised, (N, C, H, W) per modality) with modalities dropped as the
    module doc says, and the counts ``{"whole": k, "cloud": k}`` of dropped samples. Tensors
    that lose nothing are returned as given; the others are copies."""
    counts = {"whole": 0, "cloud": 0}
    if p <= 0 or len(modalities) < 2:
        return inputs, counts
    first = inputs[modalities[0]]
    n, h, w = first.shape[0], first.shape[-2], first.shape[-1]
    drop = torch.rand((n,), generator=generator) < p
    which = torch.randint(len(modalities), (n,), generator=generator)
    whole = torch.rand((n,), generator=generator) < WHOLE
    clouds = cloud_masks(n, h, w, generator)
    out = dict(inputs)
    for k, m in enumerate(modalities):
        hit = drop & (which == k)
        if not bool(hit.any()):
            continue
        keep = torch.ones((n, h, w), dtype=torch.bool)
        keep[hit & whole] = False
        partial = hit & ~whole
        keep[partial] = ~clouds[partial]
        x = inputs[m]
        out[m] = x * keep.unsqueeze(1).to(device=x.device, dtype=x.dtype)
        counts["whole"] += int((hit & whole).sum())
        counts["cloud"] += int(partial.sum())
    return out, counts


def dropout_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one training step (CPU; the masks are moved to the batch's device)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))


def apply_to_batch(batch: dict[str, Any], modalities: Sequence[str], p: float, seed: int,
                   step: int) -> dict[str, Any]:  # fmt: skip
    """A training batch (``{"inputs": {...}, "mask": ...}``) with its inputs dropped."""
    if p <= 0:
        return batch
    inputs, _ = drop_modalities(batch["inputs"], modalities, p, dropout_generator(seed, step))
    return {**batch, "inputs": inputs}

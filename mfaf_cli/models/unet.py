"""U-Net baselines (ARCHITECTURE.md §3): early fusion by stacking channels, and single-modality.

The early-fusion U-Net is the MFAF paper's baseline: modalities are concatenated along
channels before the first conv. ``base_width=64`` with bilinear upsampling is the paper's
17.3 M-parameter model; the default 32 (4.3 M) is small enough to train on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _double_conv(c_in: int, c_out: int, c_mid: int | None = None) -> nn.Sequential:
    c_mid = c_mid or c_out
    return nn.Sequential(
        nn.Conv2d(c_in, c_mid, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_mid),
        nn.ReLU(),
        nn.Conv2d(c_mid, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class _Up(nn.Module):
    """Upsample ×2, concat the skip, DoubleConv."""

    def __init__(self, c_in: int, c_skip: int, c_out: int, bilinear: bool) -> None:
        super().__init__()
        self.bilinear = bilinear
        if bilinear:
            self.up: nn.Module = nn.Identity()
            self.conv = _double_conv(c_in + c_skip, c_out, (c_in + c_skip) // 2)
        else:
            self.up = nn.ConvTranspose2d(c_in, c_in // 2, 2, stride=2)
            self.conv = _double_conv(c_in // 2 + c_skip, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.bilinear:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        else:
            x = self.up(x)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """Early-fusion U-Net over ``modalities`` (one modality = a single-modality U-Net).

    Args:
        modalities: input order, e.g. ("optical", "sar").
        in_channels: bands per modality.
        num_classes: K.
        base_width: width of the first level (64 = paper, 32 = CPU default).
        bilinear: bilinear upsampling (17.3 M at width 64) or transposed conv (31.0 M).
    """

    divisor: int = 16

    def __init__(
        self,
        modalities: Sequence[str],
        in_channels: dict[str, int],
        num_classes: int = 2,
        base_width: int = 32,
        bilinear: bool = True,
    ) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.in_channels = {m: int(in_channels[m]) for m in self.modalities}
        self.num_classes = num_classes
        w = [base_width * 2**i for i in range(5)]
        factor = 2 if bilinear else 1
        self.inc = _double_conv(sum(self.in_channels.values()), w[0])
        self.downs = nn.ModuleList(
            nn.Sequential(
                nn.MaxPool2d(2), _double_conv(w[i], w[i + 1] // (factor if i == 3 else 1))
            )
            for i in range(4)
        )
        # decoder widths: (16w→8w), (8w→4w), (4w→2w), (2w→w) with bilinear halving the inputs
        ups = []
        c = w[4] // factor
        for i in (3, 2, 1, 0):
            c_out = w[i] // factor if (bilinear and i > 0) else w[i]
            ups.append(_Up(c, w[i], c_out, bilinear))
            c = c_out
        self.ups = nn.ModuleList(ups)
        self.outc = nn.Conv2d(w[0], num_classes, 1)

    def forward(
        self, *inputs: torch.Tensor, return_aux: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        if len(inputs) != len(self.modalities):
            raise ValueError(f"expected {len(self.modalities)} inputs {self.modalities}")
        x = torch.cat(inputs, dim=1) if len(inputs) > 1 else inputs[0]
        feats = [self.inc(x)]
        for down in self.downs:
            feats.append(down(feats[-1]))
        y = feats[-1]
        for up, skip in zip(self.ups, reversed(feats[:-1]), strict=True):
            y = up(y, skip)
        logits = self.outc(y)
        return (logits, {}) if return_aux else logits

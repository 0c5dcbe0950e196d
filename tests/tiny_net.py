"""A tiny stand-in fusion network that follows the model contract (shared by the engine and
export tests): a 1×1 conv over the concatenated modalities, so PyTorch and ONNX results can
be compared exactly and quickly."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from mfaf_cli.io import weights as W
from mfaf_cli.metadata import WATER_CLASSES, ModalitySpec, ModelMeta, Normalisation


class TinyFusion(nn.Module):
    """Per-pixel stand-in network: a 1×1 conv over the concatenated modalities."""

    divisor = 16

    def __init__(self, in_channels: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.modalities = tuple(in_channels)
        self.head = nn.Conv2d(sum(in_channels.values()), num_classes, 1)

    def forward(self, *inputs: torch.Tensor, return_aux: bool = False):  # type: ignore[no-untyped-def]
        logits = self.head(torch.cat(inputs, dim=1))
        return (logits, {}) if return_aux else logits


def tiny_meta(tile: int = 32, **kw: object) -> ModelMeta:
    """Trained-looking metadata of arch "tiny": optical (4 bands) + SAR (1, dB), water classes."""
    mods = (
        ModalitySpec("optical", ("red", "green", "blue", "nir"), Normalisation.identity(4)),
        ModalitySpec("sar", ("vv",), Normalisation.identity(1), units="db"),
    )
    meta = ModelMeta(
        arch="tiny", modalities=mods, classes=WATER_CLASSES, tile_size=tile, trained=True
    )
    return replace(meta, **kw)  # type: ignore[arg-type]


def use_tiny_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let checkpoints of arch "tiny" load (as :class:`TinyFusion`); real registry otherwise."""
    real = W.build_model
    monkeypatch.setattr(
        W,
        "build_model",
        lambda meta: (
            TinyFusion(meta.in_channels, meta.num_classes) if meta.arch == "tiny" else real(meta)
        ),
    )


class ContextNet(nn.Module):
    """Two zero-padded 5×5 convs: each output pixel sees 9×9 px, so window placement and the
    context at a window's border change the result (a 1×1 net would hide both)."""

    divisor = 16

    def __init__(self, in_channels: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.modalities = tuple(in_channels)
        self.a = nn.Conv2d(sum(in_channels.values()), 8, 5, padding=2)
        self.b = nn.Conv2d(8, num_classes, 5, padding=2)

    def forward(self, *inputs: torch.Tensor, return_aux: bool = False):  # type: ignore[no-untyped-def]
        logits = self.b(torch.tanh(self.a(torch.cat(inputs, dim=1))))
        return (logits, {}) if return_aux else logits

"""Fixed Haar wavelet transform and the HWD (Haar wavelet downsampling) block.

HWD (ARCHITECTURE.md §1.2, MFAF Eq. 1) replaces strided conv / pooling with a lossless,
orthonormal one-level Haar DWT followed by a learned 1×1 conv, so no information is thrown
away when the resolution halves. The transform is written as strided slices plus adds, which
export to ONNX at any opset and carry no parameters or buffers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def haar_dwt(x: torch.Tensor) -> torch.Tensor:
    """One-level orthonormal 2-D Haar DWT.

    Args:
        x: (B, C, h, w) with h and w even.

    Returns:
        (B, 4C, h/2, w/2), band-major ``[LL(C), D1(C), D2(C), D3(C)]`` where for each 2×2
        block ``[[a, b], [c, d]]``: LL=(a+b+c+d)/2, D1=(a+b-c-d)/2, D2=(a-b+c-d)/2,
        D3=(a-b-c+d)/2.
    """
    a = x[..., 0::2, 0::2]
    b = x[..., 0::2, 1::2]
    c = x[..., 1::2, 0::2]
    d = x[..., 1::2, 1::2]
    s_ab, d_ab = a + b, a - b
    s_cd, d_cd = c + d, c - d
    ll = (s_ab + s_cd) * 0.5
    d1 = (s_ab - s_cd) * 0.5
    d2 = (d_ab + d_cd) * 0.5
    d3 = (d_ab - d_cd) * 0.5
    return torch.cat([ll, d1, d2, d3], dim=1)


class HWD(nn.Module):
    """Haar wavelet downsampling: DWT → Conv1×1(4·C_in→C_out, no bias) → BN → ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4 * in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 2 or w % 2:  # odd sizes: reflect-pad one row/col (static given the input shape)
            x = F.pad(x, (0, w % 2, 0, h % 2), mode="reflect")
        return self.act(self.bn(self.conv(haar_dwt(x))))

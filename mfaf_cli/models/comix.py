"""CoMiX: cross-modal fusion with deformable convolutions for HSI + X segmentation.

A reconstruction (ARCHITECTURE.md §2; the paper's code is unreleased): a CMX-style asymmetric
dual encoder of 4 stages where the HSI stream is a 3-D (spectral × spatial) backbone of
deformable 3-D conv blocks and the X stream (LiDAR DSM / SAR, 1–4 bands) a 2-D backbone of
DCNv3-style blocks; CMFeX exchanges information between the streams in every stage, FFM fuses
them into the decoder skip, and an ALL-MLP decoder produces the logits.

Deformable sampling is pure torch (``F.grid_sample``, 4-D for DCN2D, 5-D/trilinear for DCN3D).
Offsets and masks are zero-initialised, so every deformable block starts as a regular conv
whose taps are averaged uniformly. 5-D GridSample needs ONNX opset ≥ 20.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from mfaf_cli.models.deform import (
    accumulate_taps,
    deform_sample,
    empty_sampling_source,
    inference_only,
    kernel_taps_2d,
    kernel_taps_3d,
    offsets_fp32,
    per_tap_from_features,
    resolve_mode,
    slab_bounds,
    write_sampling_source,
)
from mfaf_cli.models.mfafnet import LayerNorm2d

__all__ = ["CoMiX", "deform_sample", "kernel_taps_2d", "kernel_taps_3d"]

VARIANTS: dict[str, dict[str, Any]] = {
    "s": {
        "x_widths": (32, 64, 160, 256),
        "x_depths": (2, 2, 2, 2),
        "h_widths": (16, 32, 64, 128),
        "h_depths": (1, 1, 2, 1),
        "k3": 27,
        "decoder_dim": 256,
        "drop_path": 0.1,
    },
    "b": {
        "x_widths": (64, 128, 320, 512),
        "x_depths": (2, 2, 6, 2),
        "h_widths": (32, 64, 128, 256),
        "h_depths": (2, 2, 4, 2),
        "k3": 27,
        "decoder_dim": 512,
        "drop_path": 0.2,
    },
}
VARIANTS["lite"] = {**VARIANTS["s"], "k3": 7}
#: FFM cross-attention normalisation of kᵀv over the N pixels of a tile
FFM_NORMS = ("mean", "sum")


# ---- deformable sampling lives in mfaf_cli.models.deform (re-exported here) ------------------


def banded_weights(bands: int, pseudo: int) -> torch.Tensor:
    """(pseudo, bands) hat weights: pseudo-band j averages the contiguous input bands around
    centre c_j = (j + ½)·bands/pseudo − ½, within radius max(1, bands/pseudo), rows sum to 1.

    With fewer bands than pseudo-bands this is linear interpolation along the spectrum; with
    more it is a triangular smoothing over ~2·bands/pseudo neighbours (windows overlap by half).
    Either way the support of row j is one interval that moves monotonically with j, so the
    pseudo-band axis keeps the wavelength order.
    """
    ratio = bands / pseudo
    radius = max(1.0, ratio)
    centre = (torch.arange(pseudo, dtype=torch.float64) + 0.5) * ratio - 0.5
    dist = (torch.arange(bands, dtype=torch.float64)[None, :] - centre[:, None]).abs()
    w = (1.0 - dist / radius).clamp(min=0.0)
    return (w / w.sum(1, keepdim=True)).to(torch.float32)  # every row has a band within r


class BandedProjection(nn.Module):
    """Order-preserving spectral reduction: a learnable 1×1 map restricted to a band.

    The weight has the dense projection's shape (pseudo, bands, 1, 1) but is multiplied by a
    fixed support mask, so pseudo-band j only ever mixes the contiguous input bands around
    its centre (init: the hat weights of :func:`banded_weights`). Then the 3-D stem's spectral
    kernel and the 3-D DCN's spectral offsets act along wavelength, not along an arbitrary
    learned order.
    """

    support: torch.Tensor  # buffer

    def __init__(self, bands: int, pseudo: int) -> None:
        super().__init__()
        init = banded_weights(bands, pseudo)
        self.weight = nn.Parameter(init.reshape(pseudo, bands, 1, 1).clone())
        self.bias = nn.Parameter(torch.zeros(pseudo))
        self.register_buffer("support", (init > 0).to(torch.float32)[..., None, None], False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.support, self.bias)


#: spectral reductions of the HSI stem (``band_reduction``)
BAND_REDUCTIONS = ("dense", "banded")


def depth_slabs(down: nn.Sequential, h3: torch.Tensor) -> torch.Tensor:
    """``down`` = (Conv3d, pointwise norm) applied to h3 a few output depths at a time.

    PyTorch's CPU Conv3d unfolds its input into a buffer 27× its output (13 MiB at CoMiX's
    first downsampling of a 256² tile); per slab of output depths it is that much smaller.
    The input depths a slab reads (with the conv's zero padding at the ends) are cut out and
    padded by hand, so the result equals ``down(h3)``.
    """
    conv = cast(nn.Conv3d, down[0])
    k, (sd, sh, sw) = conv.kernel_size[0], conv.stride
    p, ph, pw = cast(tuple[int, int, int], conv.padding)
    depth = h3.shape[2]
    d_out = (depth + 2 * p - k) // sd + 1
    # the unfolded input of one output depth: C_in·k³ values per output pixel
    per_depth = conv.in_channels * k**3 * -(-h3.shape[3] // sh) * -(-h3.shape[4] // sw)
    out: torch.Tensor | None = None
    for o0, o1 in slab_bounds(d_out, per_depth, device=h3.device):
        lo, hi = o0 * sd - p, (o1 - 1) * sd - p + k  # input depths read, padding included
        part = F.pad(
            h3[:, :, max(lo, 0) : min(hi, depth)], (0, 0, 0, 0, max(-lo, 0), max(hi - depth, 0))
        )
        y = F.conv3d(part, conv.weight, conv.bias, conv.stride, (0, ph, pw))
        y = down[1](y)
        if out is None:
            out = y.new_empty(y.shape[0], y.shape[1], d_out, *y.shape[3:])
        out[:, :, o0:o1] = y
    assert out is not None
    return out


class DropPath(nn.Module):
    """Stochastic depth (identity at eval, so nothing random reaches an exported graph)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * torch.bernoulli(torch.full(shape, keep, device=x.device, dtype=x.dtype)) / keep


class DCN(nn.Module):
    """DCNv3-style deformable operator on 2-D (B,C,h,w) or 3-D (B,C,D,h,w) features.

    v = Linear(x); q = GELU(LN(DWConv(x))); Δ = Linear(q) (zero init), m = softmax_K(Linear(q))
    (zero init → uniform); out = Linear(Σ_k m_k · v(p + p_k + Δ_k)).
    """

    taps: torch.Tensor  # buffer

    def __init__(
        self, c: int, group_channels: int, ndim: int = 2, k3: int = 27, sampling: str = "auto"
    ) -> None:
        super().__init__()
        resolve_mode(sampling)  # validate early
        self.sampling = sampling
        if c % group_channels:
            raise ValueError(f"{c} channels not divisible by group size {group_channels}")
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        taps = kernel_taps_2d() if ndim == 2 else kernel_taps_3d(k3)
        self.register_buffer("taps", torch.tensor(taps, dtype=torch.float32), persistent=False)
        self.ndim, self.groups, self.k = ndim, c // group_channels, len(taps)
        self.input_proj = conv(c, c, 1)
        self.dw = conv(c, c, 3, padding=1, groups=c)
        self.dw_norm = LayerNorm2d(c)
        self.offset = conv(c, self.groups * self.k * ndim, 1)
        self.mask = conv(c, self.groups * self.k, 1)
        self.output_proj = conv(c, c, 1)
        for layer in (self.offset, self.mask):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.input_proj(x)
        q = F.gelu(self.dw_norm(self.dw(x)))
        if resolve_mode(self.sampling, v, q) == "per_tap":
            out = per_tap_from_features(v, q, self.offset, self.mask, self.taps, self.groups)
            return self.output_proj(out)
        offset = offsets_fp32(self.offset, q)
        logits = self.mask(q)
        b = logits.shape[0]
        mask = torch.softmax(logits.reshape(b, self.groups, self.k, *logits.shape[2:]), dim=2)
        mask = mask.reshape(logits.shape)
        return self.output_proj(
            deform_sample(v, offset, mask, self.taps, self.groups, self.sampling)
        )

    def lean_source(self, x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """v = input_proj(norm(x)) in the per-tap sampler's layout, built slab by slab, so
        neither norm(x) nor a second copy of v is ever whole (inference only)."""
        b, c, n = x.shape[:3]
        g, rest = self.groups, tuple(x.shape[3:])
        src = empty_sampling_source((b * g, c // g, n, *rest), self.ndim == 3, x)
        for r0, r1 in slab_bounds(n, x[0, :, 0].numel(), device=x.device):
            v = self.input_proj(norm(x[:, :, r0:r1]))
            write_sampling_source(src, v.reshape(b * g, c // g, r1 - r0, *rest), r0, self.ndim == 3)
        return src

    def lean_slab(
        self, x: torch.Tensor, norm: nn.Module, src: torch.Tensor, r0: int, r1: int
    ) -> torch.Tensor:
        """self(norm(x)) at positions r0:r1 of the first spatial axis, sampling the whole map's
        source; the depthwise 3×3 conv reads one position of halo on each side."""
        b, c, n = x.shape[:3]
        lo, hi = max(r0 - 1, 0), min(r1 + 1, n)
        q = self.dw(norm(x[:, :, lo:hi]))[:, :, r0 - lo : r1 - lo]
        q = F.gelu(self.dw_norm(q))
        out = src.new_zeros(b * self.groups, c // self.groups, *q.shape[2:])
        accumulate_taps(
            out,
            src,
            q,
            self.offset,
            self.mask,
            self.taps,
            self.groups,
            x.shape[2:],
            r0,
            self.ndim == 3,
        )
        return self.output_proj(out.reshape(q.shape).to(q.dtype))


class DCNBlock(nn.Module):
    """x + DropPath(DCN(LN(x))); x + DropPath(MLP(LN(x))) on 2-D or 3-D features."""

    def __init__(
        self,
        c: int,
        ndim: int,
        group_channels: int,
        mlp_ratio: int,
        k3: int = 27,
        drop_path: float = 0.0,
        sampling: str = "auto",
    ) -> None:
        super().__init__()
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        self.norm1 = LayerNorm2d(c)
        self.dcn = DCN(c, group_channels, ndim, k3, sampling)
        self.norm2 = LayerNorm2d(c)
        self.mlp = nn.Sequential(conv(c, c * mlp_ratio, 1), nn.GELU(), conv(c * mlp_ratio, c, 1))
        self.drop = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if inference_only(self, self.dcn.sampling, x):
            return self.forward_lean(x)
        x = x + self.drop(self.dcn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))

    def forward_lean(self, x: torch.Tensor) -> torch.Tensor:
        """The same block slab by slab along the first spatial axis (inference only): only x,
        v and the result are whole maps; LN(x), q, offsets, mask, taps and the MLP's 4× hidden
        features exist for one slab at a time."""
        src = self.dcn.lean_source(x, self.norm1)
        y = torch.empty_like(x)
        for r0, r1 in slab_bounds(x.shape[2], x[0, :, 0].numel(), device=x.device):
            a = self.dcn.lean_slab(x, self.norm1, src, r0, r1)
            a += x[:, :, r0:r1]
            a += self.mlp(self.norm2(a))
            y[:, :, r0:r1] = a
        return y


class CMFeX(nn.Module):
    """Cross-Modality Feature enhancement and eXchange (§2.4; generalises CMX's FRM).

    Flags expose the sub-parts for ablation: channel / spatial weights, the 3-D back-projection
    of the HSI update, and a spectral attention over D computed from X.
    """

    def __init__(
        self,
        c: int,
        c3: int,
        depth: int,
        channel: bool = True,
        spatial: bool = True,
        backproject: bool = True,
        spectral_attention: bool = False,
    ) -> None:
        super().__init__()
        self.c, self.c3, self.depth = c, c3, depth
        self.use_channel, self.use_spatial = channel, spatial
        self.channel_mlp = nn.Sequential(
            nn.Linear(4 * c, 4 * c), nn.ReLU(), nn.Linear(4 * c, 2 * c), nn.Sigmoid()
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(2 * c, c, 1), nn.ReLU(), nn.Conv2d(c, 2, 1), nn.Sigmoid()
        )
        self.alpha = nn.Parameter(torch.full((2,), 0.5))  # (channel, spatial) gates into X
        self.beta = nn.Parameter(torch.full((2,), 0.5))  # (channel, spatial) gates into Ĥ
        self.back = nn.Conv2d(c, c3 * depth, 1) if backproject else None
        self.gamma = nn.Parameter(torch.zeros(1)) if backproject else None
        self.spec = (
            nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, depth), nn.Sigmoid())
            if spectral_attention
            else None
        )

    def forward(
        self, h3: torch.Tensor, h: torch.Tensor, x: torch.Tensor, inplace: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h3: (B,C3,D,h,w); h = P(h3): (B,C,h,w); x: (B,C,h,w) → (H3', Ĥ', X').

        Ĥ' (the enhanced 2-D HSI feature) goes to the FFM as CMX passes FRM's rectified
        features on; projecting H3' again would run P, and its BatchNorm statistics update,
        twice per stage. ``inplace`` (inference only) builds H3' in the back-projection's
        buffer, which is as large as h3, instead of in two more such tensors; same values.
        """
        b = x.shape[0]
        x_new, h_new = x, h
        if self.use_channel:
            pooled = torch.cat(
                [h.mean((2, 3)), x.mean((2, 3)), h.amax((2, 3)), x.amax((2, 3))], dim=1
            )
            wc_h, wc_x = self.channel_mlp(pooled).reshape(b, 2, self.c, 1, 1).unbind(1)
            x_new = x_new + self.alpha[0] * wc_h * h
            h_new = h_new + self.beta[0] * wc_x * x
        if self.use_spatial:
            ws_h, ws_x = self.spatial(torch.cat([h, x], dim=1)).chunk(2, dim=1)
            x_new = x_new + self.alpha[1] * ws_h * h
            h_new = h_new + self.beta[1] * ws_x * x
        if self.back is not None:
            dh = self.back(h_new - h).reshape(b, self.c3, self.depth, *h.shape[-2:])
            h3 = dh.mul_(self.gamma).add_(h3) if inplace else h3 + self.gamma * dh
        if self.spec is not None:
            att = self.spec(x.mean((2, 3))).reshape(b, 1, self.depth, 1, 1)
            h3 = h3 * att
        return h3, h_new, x_new


class CrossPath(nn.Module):
    """CMX CrossPath, channels-first: efficient cross-attention via (C/h × C/h) contexts."""

    def __init__(self, c: int, heads: int, norm: str = "mean") -> None:
        super().__init__()
        if norm not in FFM_NORMS:
            raise ValueError(f"ffm_norm must be one of {FFM_NORMS}, not {norm!r}")
        self.heads, self.norm_kind = heads, norm
        self.scale = (c // heads) ** -0.5
        self.channel_proj = nn.ModuleList(nn.Conv2d(c, 2 * c, 1) for _ in range(2))
        self.kv = nn.ModuleList(nn.Conv2d(c, 2 * c, 1, bias=False) for _ in range(2))
        self.end_proj = nn.ModuleList(nn.Conv2d(2 * c, c, 1) for _ in range(2))
        self.norm = nn.ModuleList(LayerNorm2d(c) for _ in range(2))

    def context(self, u: torch.Tensor, m: int) -> torch.Tensor:
        """Attention weights (B, heads, d, d) of modality m: softmax over keys of kᵀv·scale.

        CMX sums kᵀv over the N pixels, so scores grow with the tile area (stage-1 maxima 44,
        175, 706 at 128², 256², 512²) and the softmax saturates differently at training and
        prediction tile sizes. ``norm="mean"`` averages instead; k and v are each scaled by
        N^-1/2 before the product so that no fp16 partial sum exceeds the mean's magnitude.
        """
        b, c, h, w = u.shape
        k, v = self.kv[m](u).reshape(b, 2, self.heads, c // self.heads, h * w).unbind(1)
        if self.norm_kind == "mean":
            r = float(h * w) ** -0.5
            k, v = k * r, v * r
        # token-layout kᵀv is (d×d) = k_cf @ v_cfᵀ; softmax over the key channel axis
        return torch.softmax((k @ v.transpose(-2, -1)) * self.scale, dim=-2)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x1.shape
        y1, u1 = F.relu(self.channel_proj[0](x1)).chunk(2, dim=1)
        y2, u2 = F.relu(self.channel_proj[1](x2)).chunk(2, dim=1)
        ctx1, ctx2 = self.context(u1, 0), self.context(u2, 1)
        q1 = u1.reshape(b, self.heads, c // self.heads, h * w)
        q2 = u2.reshape(b, self.heads, c // self.heads, h * w)
        # token-layout q @ ctx is ctxᵀ @ q_cf in channels-first layout
        v1 = (ctx2.transpose(-2, -1) @ q1).reshape(b, c, h, w)
        v2 = (ctx1.transpose(-2, -1) @ q2).reshape(b, c, h, w)
        o1 = self.norm[0](x1 + self.end_proj[0](torch.cat([y1, v1], dim=1)))
        o2 = self.norm[1](x2 + self.end_proj[1](torch.cat([y2, v2], dim=1)))
        return o1, o2


class FFM(nn.Module):
    """CMX Feature Fusion Module: CrossPath then ChannelEmbed → (B, C, h, w)."""

    def __init__(self, c: int, heads: int, norm: str = "mean") -> None:
        super().__init__()
        self.cross = CrossPath(c, heads, norm)
        self.residual = nn.Conv2d(2 * c, c, 1, bias=False)
        self.embed = nn.Sequential(
            nn.Conv2d(2 * c, c, 1),
            nn.Conv2d(c, c, 3, padding=1, groups=c),
            nn.ReLU(),
            nn.Conv2d(c, c, 1),
            nn.BatchNorm2d(c),
        )
        self.norm = nn.BatchNorm2d(c)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cross(h, x)
        merged = torch.cat([a, b], dim=1)
        return self.norm(self.residual(merged) + self.embed(merged))


def check_options(variant: str, stem_stride: int, band_reduction: str, band_proj: int) -> None:
    """Reject CoMiX options that no variant supports, before anything is built."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, not {variant!r}")
    if stem_stride not in (2, 4):
        raise ValueError(f"stem_stride must be 2 or 4, not {stem_stride}")
    if band_reduction not in BAND_REDUCTIONS:
        raise ValueError(f"band_reduction must be one of {BAND_REDUCTIONS}, not {band_reduction!r}")
    if band_proj % 16:
        raise ValueError(f"band_proj must be a multiple of 16, not {band_proj}")


@dataclass(frozen=True)
class Plan:
    """A variant's stage widths and depths with the keyword overrides applied."""

    x_widths: tuple[int, ...]
    x_depths: tuple[int, ...]
    h_widths: tuple[int, ...]
    h_depths: tuple[int, ...]
    k3: int
    decoder_dim: int
    drop_path: float

    @classmethod
    def resolve(
        cls,
        v: dict[str, Any],
        k3: int | None,
        x_widths: Sequence[int] | None,
        x_depths: Sequence[int] | None,
        h_widths: Sequence[int] | None,
        h_depths: Sequence[int] | None,
        decoder_dim: int | None,
        drop_path: float | None,
    ) -> Plan:
        return cls(
            tuple(x_widths or v["x_widths"]),
            tuple(x_depths or v["x_depths"]),
            tuple(h_widths or v["h_widths"]),
            tuple(h_depths or v["h_depths"]),
            int(k3 or v["k3"]),
            int(decoder_dim or v["decoder_dim"]),
            float(v["drop_path"] if drop_path is None else drop_path),
        )

    def stage_rates(self, i: int) -> tuple[list[float], list[float]]:
        """Stochastic-depth rates of stage i's HSI and X blocks: linear in the block's index
        over each whole stream, 0 … drop_path."""

        def rates(depths: tuple[int, ...]) -> list[float]:
            n, first = sum(depths), sum(depths[:i])
            return [self.drop_path * j / max(n - 1, 1) for j in range(first, first + depths[i])]

        return rates(self.h_depths), rates(self.x_depths)


class CoMiX(nn.Module):
    """CoMiX for (HSI, X) → K-class logits at full resolution.

    Args:
        in_channels: ``{"hsi": 50..250, "lidar": 1..4}`` (X may be LiDAR/DSM or SAR bands).
        num_classes: K.
        variant: "s", "b" or "lite" (S with axial K=7 3-D taps); keywords below override it.
        stem_stride: 4 (strides 4/8/16/32, divisor 32) or 2 (2/4/8/16, divisor 16, for small
            HSI scenes).
        band_proj: pseudo-bands after the learned 1×1 spectral projection (D_1 = band_proj/4).
        band_reduction: "dense" (every pseudo-band mixes all bands; the spectral axis has no
            order) or "banded" (:class:`BandedProjection`: contiguous wavelengths →
            pseudo-bands, so the 3-D kernels work along the spectrum; HSI bands must then be
            in wavelength order).
        k3: 3-D taps, 27 or 7.
        cmfex_channel, cmfex_spatial, cmfex_backproject, cmfex_spectral_attention: CMFeX parts.
        ffm_heads, decoder_dim, drop_path, x_widths/x_depths/h_widths/h_depths.
        ffm_norm: "mean" (kᵀv averaged over pixels: attention independent of the tile size) or
            "sum" (CMX as published).
        dcn_sampling: "auto" (per-tap accumulation when no graph is recorded, one batched
            grid_sample while training), or force "batched" / "per_tap"; the results agree.
    """

    modalities: tuple[str, ...] = ("hsi", "lidar")
    #: 5-D (trilinear) GridSample exists in ONNX from opset 20 on.
    onnx_min_opset: int = 20

    dcn_sampling: str

    def __init__(
        self,
        in_channels: dict[str, int] | None = None,
        num_classes: int = 2,
        variant: str = "s",
        stem_stride: int = 4,
        band_proj: int = 64,
        band_reduction: str = "dense",
        k3: int | None = None,
        x_widths: Sequence[int] | None = None,
        x_depths: Sequence[int] | None = None,
        h_widths: Sequence[int] | None = None,
        h_depths: Sequence[int] | None = None,
        ffm_heads: Sequence[int] = (1, 2, 5, 8),
        decoder_dim: int | None = None,
        drop_path: float | None = None,
        group_channels_2d: int = 16,
        group_channels_3d: int = 8,
        cmfex_channel: bool = True,
        cmfex_spatial: bool = True,
        cmfex_backproject: bool = True,
        cmfex_spectral_attention: bool = False,
        dcn_sampling: str = "auto",
        ffm_norm: str = "mean",
    ) -> None:
        super().__init__()
        check_options(variant, stem_stride, band_reduction, band_proj)
        ch = {"hsi": 144, "lidar": 1, **(in_channels or {})}
        self.in_channels = {m: int(ch[m]) for m in self.modalities}
        self.dcn_sampling = dcn_sampling
        self.num_classes = num_classes
        self.stem_stride = stem_stride
        self.divisor = 8 * stem_stride
        plan = Plan.resolve(
            VARIANTS[variant], k3, x_widths, x_depths, h_widths, h_depths, decoder_dim, drop_path
        )
        d1 = band_proj // 4
        self.depths_d = (d1, d1 // 2, d1 // 4, d1 // 4)  # spectral depth per stage
        self._build_stems(plan, band_proj, band_reduction)
        self.h_down, self.x_down = nn.ModuleList(), nn.ModuleList()
        self.h_blocks, self.x_blocks = nn.ModuleList(), nn.ModuleList()
        self.proj, self.cmfex, self.ffm = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        cmfex_parts = (cmfex_channel, cmfex_spatial, cmfex_backproject, cmfex_spectral_attention)
        groups = (group_channels_3d, group_channels_2d)
        for i in range(4):
            self._build_stage(i, plan, groups, cmfex_parts, ffm_heads[i], ffm_norm)
        self._build_decoder(plan, num_classes)

    def _build_stems(self, plan: Plan, band_proj: int, band_reduction: str) -> None:
        """Band projection, the 3-D HSI stem (kernel = stride = (4, s, s)) and the X stem."""
        s, hw, xw = self.stem_stride, plan.h_widths, plan.x_widths
        n_hsi = self.in_channels["hsi"]
        self.band_proj = nn.Sequential(
            nn.Conv2d(n_hsi, band_proj, 1)
            if band_reduction == "dense"
            else BandedProjection(n_hsi, band_proj),
            nn.BatchNorm2d(band_proj),
            nn.GELU(),
        )
        self.h_stem = nn.Conv3d(1, hw[0], (4, s, s), stride=(4, s, s))
        self.h_stem_norm = LayerNorm2d(hw[0])
        self.x_stem = nn.Sequential(
            nn.Conv2d(self.in_channels["lidar"], xw[0] // 2, 3, stride=2, padding=1),
            LayerNorm2d(xw[0] // 2),
            nn.GELU(),
            nn.Conv2d(xw[0] // 2, xw[0], 3, stride=s // 2, padding=1),
            LayerNorm2d(xw[0]),
        )

    def _build_stage(
        self,
        i: int,
        plan: Plan,
        groups: tuple[int, int],
        cmfex_parts: tuple[bool, bool, bool, bool],
        heads: int,
        ffm_norm: str,
    ) -> None:
        """Append stage i's downsamplings, blocks, P, CMFeX and FFM, in this order (the order
        parameters are created and initialised in, and state_dict keys listed in)."""
        hw, xw = plan.h_widths, plan.x_widths
        if i > 0:
            sd = 2 if i < 3 else 1
            self.h_down.append(
                nn.Sequential(
                    nn.Conv3d(hw[i - 1], hw[i], 3, stride=(sd, 2, 2), padding=1),
                    LayerNorm2d(hw[i]),
                )
            )
            self.x_down.append(
                nn.Sequential(
                    nn.Conv2d(xw[i - 1], xw[i], 3, stride=2, padding=1), LayerNorm2d(xw[i])
                )
            )
        rates_h, rates_x = plan.stage_rates(i)
        self.h_blocks.append(
            nn.Sequential(
                *(DCNBlock(hw[i], 3, groups[0], 2, plan.k3, r, self.dcn_sampling) for r in rates_h)
            )
        )
        self.x_blocks.append(
            nn.Sequential(
                *(DCNBlock(xw[i], 2, groups[1], 4, 9, r, self.dcn_sampling) for r in rates_x)
            )
        )
        c3d = hw[i] * self.depths_d[i]
        self.proj.append(nn.Sequential(nn.Conv2d(c3d, xw[i], 1, bias=False), nn.BatchNorm2d(xw[i])))
        self.cmfex.append(CMFeX(xw[i], hw[i], self.depths_d[i], *cmfex_parts))
        self.ffm.append(FFM(xw[i], heads, ffm_norm))

    def _build_decoder(self, plan: Plan, num_classes: int) -> None:
        """ALL-MLP decoder: per-stage 1×1 projections to E, fuse 4E → E, classifier."""
        e = plan.decoder_dim
        self.dec_proj = nn.ModuleList(nn.Conv2d(plan.x_widths[i], e, 1) for i in range(4))
        self.dec_fuse = nn.Sequential(
            nn.Conv2d(4 * e, e, 1, bias=False), nn.BatchNorm2d(e), nn.ReLU(), nn.Dropout2d(0.1)
        )
        self.classifier = nn.Conv2d(e, num_classes, 1)

    def _p(self, i: int, h3: torch.Tensor) -> torch.Tensor:
        b, c3, d, h, w = h3.shape
        return self.proj[i](h3.reshape(b, c3 * d, h, w))

    def forward(
        self, hsi: torch.Tensor, x: torch.Tensor, return_aux: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        lean = inference_only(self, self.dcn_sampling, hsi)
        h3 = self.hsi_stem_lean(hsi) if lean else self.h_stem_norm(self.hsi_stem(hsi))
        xs = self.x_stem(x)
        fused = []
        for i in range(4):
            if i > 0:
                down = cast(nn.Sequential, self.h_down[i - 1])
                h3 = depth_slabs(down, h3) if lean else down(h3)
                xs = self.x_down[i - 1](xs)
            h3 = self.h_blocks[i](h3)
            xs = self.x_blocks[i](xs)
            h3, h2, xs = self.cmfex[i](h3, self._p(i, h3), xs, inplace=lean)
            fused.append(self.ffm[i](h2, xs))
        logits = self.decode_lean(fused) if lean else self.decode(fused)
        logits = F.interpolate(
            logits, scale_factor=float(self.stem_stride), mode="bilinear", align_corners=False
        )
        return (logits, {}) if return_aux else logits

    def hsi_stem(self, hsi: torch.Tensor) -> torch.Tensor:
        """Band projection then the (4, s, s)/(4, s, s) 3-D stem: (B, bands, H, W) → h3."""
        return self.h_stem(self.band_proj(hsi).unsqueeze(1))

    def hsi_stem_lean(self, hsi: torch.Tensor) -> torch.Tensor:
        """h_stem_norm(hsi_stem(hsi)) in slabs of image rows (inference only).

        The full-resolution band projection (64 × H × W) was the largest tensor of the
        forward; the stem's kernel equals its stride, so slabs of a multiple of s rows are
        independent and only one slab of pseudo-bands exists at a time.
        """
        s = self.stem_stride
        rows = hsi.shape[2] // s * s
        per_row = cast(nn.BatchNorm2d, self.band_proj[1]).num_features * hsi.shape[3]
        out: torch.Tensor | None = None
        for r0, r1 in slab_bounds(rows, per_row, s, hsi.device):
            y = self.h_stem_norm(self.hsi_stem(hsi[:, :, r0:r1]))
            if out is None:
                out = y.new_empty(*y.shape[:3], rows // s, y.shape[4])
            out[:, :, :, r0 // s : r1 // s] = y
        assert out is not None  # rows ≥ s: the model checks divisibility by 8·s
        return out

    def decode(self, fused: list[torch.Tensor]) -> torch.Tensor:
        """ALL-MLP decoder: project, upsample to stage 1, concatenate, fuse, classify."""
        outs = []
        for i, f in enumerate(fused):
            y = self.dec_proj[i](f)
            if i > 0:
                y = F.interpolate(y, scale_factor=float(2**i), mode="bilinear", align_corners=False)
            outs.append(y)
        return self.classifier(self.dec_fuse(torch.cat(outs, dim=1)))

    def decode_lean(self, fused: list[torch.Tensor]) -> torch.Tensor:
        """:meth:`decode` without the 4·E-channel concatenation (eval only).

        The fuse conv is linear and bias-free and bilinear upsampling is linear per channel,
        so W·cat(up(y_i)) = Σ_i up(W_i·y_i): each stage's share is mixed at its own
        resolution and accumulated; equal up to float rounding.
        """
        weight = cast(nn.Conv2d, self.dec_fuse[0]).weight
        e = weight.shape[0]
        acc: torch.Tensor | None = None
        for i, f in enumerate(fused):
            z = F.conv2d(self.dec_proj[i](f), weight[:, i * e : (i + 1) * e])
            if i > 0:
                z = F.interpolate(z, scale_factor=float(2**i), mode="bilinear", align_corners=False)
            acc = z if acc is None else acc.add_(z)
        assert acc is not None
        y = F.relu_(self.dec_fuse[1](acc))  # BatchNorm (eval), ReLU; Dropout2d is identity
        return self.classifier(y)

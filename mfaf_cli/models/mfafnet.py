"""MFAFNet: Multimodal Feature Alignment and Fusion U-Net (optical + SAR).

Faithful to ARCHITECTURE.md §1: per-modality encoders of 4 levels, each an HWD (lossless Haar
downsampling) followed by an FDM (channel split into a low-frequency transformer branch with
channel attention and a high-frequency INN branch), a CFFB per level (joint query, per-modality
keys/values) whose output is the decoder skip, a U-Net decoder and a full-resolution stem in
the head. The ambiguity register (§1.8, A1–A11) choices are constructor keywords with the
recommended defaults; A5, A10 and A11 are text errata with nothing to configure (LT is the
low-frequency branch, each modality uses its own input).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from mfaf_cli.models.haar import HWD

VARIANTS: dict[str, dict[str, Any]] = {
    "s": {"widths": (32, 64, 128, 256), "depths": (1, 1, 2, 1), "ffn_expansion": 1},
    "b": {"widths": (64, 128, 256, 512), "depths": (1, 2, 3, 2), "ffn_expansion": 2},
}


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of a (B, C, *spatial) tensor, with bias (Restormer 'WithBias').

    Written with mean/var so it needs no permutes (cheaper on CPU) and exports at any opset.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In fp32 even under autocast: x² overflows fp16 once |x| > 256.
        dtype = x.dtype
        x = x.float()
        mu = x.mean(1, keepdim=True)
        xc = x - mu
        var = (xc * xc).mean(1, keepdim=True)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = xc * torch.rsqrt(var + self.eps) * self.weight.float().view(shape)
        return (y + self.bias.float().view(shape)).to(dtype)


def channel_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, temperature: torch.Tensor
) -> torch.Tensor:
    """Transposed (channel) attention: a (C/h × C/h) map per head, cost linear in h·w.

    q, k, v: (B, C, h, w); temperature: (heads, 1, 1). Returns (B, C, h, w).
    """
    b, c, h, w = q.shape
    q = F.normalize(q.reshape(b, heads, c // heads, h * w), dim=-1)
    k = F.normalize(k.reshape(b, heads, c // heads, h * w), dim=-1)
    v = v.reshape(b, heads, c // heads, h * w)
    attn = torch.softmax((q @ k.transpose(-2, -1)) * temperature, dim=-1)
    return (attn @ v).reshape(b, c, h, w)


class GatedFFN(nn.Module):
    """Gated-dconv FFN (Restormer/CDDFuse): 1×1 → grouped 3×3 → GELU(a)·b → 1×1."""

    def __init__(self, c: int, expansion: float = 1.0) -> None:
        super().__init__()
        hidden = int(c * expansion)
        self.project_in = nn.Conv2d(c, 2 * hidden, 1, bias=False)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=hidden, bias=False)
        self.project_out = nn.Conv2d(hidden, c, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(a) * b)


class LTBlock(nn.Module):
    """Low-frequency transformer block (CDDFuse BaseFeatureExtraction): channel attention + FFN.

    ``qkv_conv`` (A3): "depthwise" (Restormer MDTA, default) or "dense" (CDDFuse, ~4× params).
    """

    def __init__(
        self, c: int, heads: int, ffn_expansion: float = 1.0, qkv_conv: str = "depthwise"
    ) -> None:
        super().__init__()
        if c % heads:
            raise ValueError(f"LT channels {c} not divisible by heads {heads}")
        if qkv_conv not in ("depthwise", "dense"):
            raise ValueError(f"qkv_conv must be 'depthwise' or 'dense', not {qkv_conv!r}")
        self.heads = heads
        self.norm1 = LayerNorm2d(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1, bias=False)
        groups = 3 * c if qkv_conv == "depthwise" else 1
        self.qkv_dw = nn.Conv2d(3 * c, 3 * c, 3, padding=1, groups=groups, bias=False)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Conv2d(c, c, 1, bias=False)
        self.norm2 = LayerNorm2d(c)
        self.ffn = GatedFFN(c, ffn_expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_dw(self.qkv(self.norm1(x))).chunk(3, dim=1)
        x = x + self.proj(channel_attention(q, k, v, self.heads, self.temperature))
        return x + self.ffn(self.norm2(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck, no BN (CDDFuse φ/ρ/η): 1×1, ReLU6, reflect-dw3×3, ReLU6, 1×1."""

    def __init__(self, c: int, expand: int = 2, zero_init: bool = False) -> None:
        super().__init__()
        hid = c * expand
        self.body = nn.Sequential(
            nn.Conv2d(c, hid, 1, bias=False),
            nn.ReLU6(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(hid, hid, 3, groups=hid, bias=False),
            nn.ReLU6(),
            nn.Conv2d(hid, c, 1, bias=False),
        )
        if zero_init:  # node starts as identity plus an additive term (A4)
            nn.init.zeros_(cast(nn.Conv2d, self.body[-1]).weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def bounded_exp(s: torch.Tensor, mode: str, bound: float) -> torch.Tensor:
    """exp of a bounded log-scale so the affine coupling cannot overflow (A4, fp16-safe).

    ``soft``: exp(b·tanh(s/b)); ``hard``: exp(clamp(s, -b, b)); ``none``: plain exp (CDDFuse).
    """
    if mode == "soft":
        return torch.exp(bound * torch.tanh(s / bound))
    if mode == "hard":
        return torch.exp(torch.clamp(s, -bound, bound))
    return torch.exp(s)


class INNNode(nn.Module):
    """High-frequency node (CDDFuse DetailNode, MFAF Eq. 4): mix, additive + affine coupling."""

    def __init__(self, c: int, clamp: str = "soft", clamp_value: float | None = None) -> None:
        super().__init__()
        if c % 2:
            raise ValueError(f"INN channels must be even, got {c}")
        if clamp not in ("soft", "hard", "none"):
            raise ValueError(f"inn_clamp must be 'soft', 'hard' or 'none', not {clamp!r}")
        half = c // 2
        self.clamp = clamp
        self.bound = clamp_value if clamp_value is not None else (2.0 if clamp == "soft" else 5.0)
        self.shuffle = nn.Conv2d(c, c, 1, bias=True)
        self.phi = InvertedResidual(half)
        self.rho = InvertedResidual(half, zero_init=True)
        self.eta = InvertedResidual(half, zero_init=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.shuffle(x).chunk(2, dim=1)
        z2 = z2 + self.phi(z1)
        z1 = z1 * bounded_exp(self.rho(z2), self.clamp, self.bound) + self.eta(z2)
        return torch.cat([z1, z2], dim=1)


class FDMBlock(nn.Module):
    """Feature Decomposition block: split channels → LT ∥ INN^m → 1×1 merge, residual."""

    def __init__(
        self,
        c: int,
        low_ratio: float,
        heads: int,
        inn_nodes: int = 2,
        ffn_expansion: float = 1.0,
        qkv_conv: str = "depthwise",
        inn_clamp: str = "soft",
        inn_clamp_value: float | None = None,
    ) -> None:
        super().__init__()
        self.c_low, self.c_high = split_channels(c, low_ratio, heads)
        self.lt = LTBlock(self.c_low, heads, ffn_expansion, qkv_conv) if self.c_low else None
        self.inn = (
            nn.Sequential(
                *(INNNode(self.c_high, inn_clamp, inn_clamp_value) for _ in range(inn_nodes))
            )
            if self.c_high
            else None
        )
        self.merge = nn.Conv2d(c, c, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.c_low:
            parts.append(self.lt(y[:, : self.c_low]))  # type: ignore[misc]
        if self.c_high:
            parts.append(self.inn(y[:, self.c_low :]))  # type: ignore[misc]
        return y + self.merge(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])


def split_channels(c: int, low_ratio: float, heads: int) -> tuple[int, int]:
    """Channel split (A2): C_low a multiple of ``heads`` near r·C, C_high even."""
    c_low = round(low_ratio * c / heads) * heads
    c_low = max(0, min(c, c_low))
    if (c - c_low) % 2:
        c_low = c_low + heads if c_low + heads <= c else c_low - heads
    if c_low < 0 or (c - c_low) % 2:
        raise ValueError(f"cannot split {c} channels with ratio {low_ratio} and {heads} heads")
    return c_low, c - c_low


class ModalityEncoderLevel(nn.Module):
    """One encoder level for one modality: HWD then FDM blocks."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, **fdm: Any) -> None:
        super().__init__()
        self.hwd = HWD(c_in, c_out)
        self.fdm = nn.Sequential(*(FDMBlock(c_out, **fdm) for _ in range(n_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fdm(self.hwd(x))


class CFFB(nn.Module):
    """Cross Feature Fusion Block (Eq. 5): joint query, per-modality keys/values.

    ``attention`` (A6): "channel" (transposed attention, default) or "spatial"
    (SegFormer-style spatial-reduction attention, K/V downsampled by ``sr``).
    ``rectify`` (A7): if > 0, also return ``Φ_m + rectify·(R_m − Φ_m)`` for the streams (CMX
    pattern); 0 (default) keeps F as a decoder skip only.
    """

    def __init__(self, c: int, heads: int, attention: str = "channel", sr: int = 1) -> None:
        super().__init__()
        if attention not in ("channel", "spatial"):
            raise ValueError(f"cffb_attention must be 'channel' or 'spatial', not {attention!r}")
        self.heads, self.attention = heads, attention
        self.q = nn.Sequential(
            nn.Conv2d(2 * c, c, 1, bias=False),
            nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
        )
        self.norm = nn.ModuleList([LayerNorm2d(c), LayerNorm2d(c)])
        self.kv = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(c, 2 * c, 1, bias=False),
                    nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c, bias=False),
                )
                for _ in range(2)
            ]
        )
        self.temperature = nn.Parameter(torch.ones(2, heads, 1, 1))
        self.proj = nn.ModuleList([nn.Conv2d(c, c, 1, bias=False) for _ in range(2)])
        self.sr = (
            nn.ModuleList([nn.Conv2d(c, c, sr, stride=sr) for _ in range(2)])
            if attention == "spatial" and sr > 1
            else None
        )
        self.fuse = nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c))

    def _spatial(self, q: torch.Tensor, m: int, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = q.shape
        xn = self.norm[m](x)
        if self.sr is not None:
            xn = self.sr[m](xn)
        k, v = self.kv[m](xn).chunk(2, dim=1)
        d = c // self.heads
        qh = q.reshape(b, self.heads, d, h * w).transpose(-2, -1)
        kh = k.reshape(b, self.heads, d, -1)
        vh = v.reshape(b, self.heads, d, -1).transpose(-2, -1)
        attn = torch.softmax((qh @ kh) * (self.temperature[m] / math.sqrt(d)), dim=-1)
        return (attn @ vh).transpose(-2, -1).reshape(b, c, h, w)

    def forward(
        self, x_o: torch.Tensor, x_s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (F, R_O, R_S)."""
        q = self.q(torch.cat([x_o, x_s], dim=1))
        rec = []
        for m, x in enumerate((x_o, x_s)):
            if self.attention == "channel":
                k, v = self.kv[m](self.norm[m](x)).chunk(2, dim=1)
                out = channel_attention(q, k, v, self.heads, self.temperature[m])
            else:
                out = self._spatial(q, m, x)
            rec.append(x + self.proj[m](out))
        return self.fuse(torch.cat(rec, dim=1)), rec[0], rec[1]


def conv_bn_relu(c_in: int, c_out: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(c_in, c_out), conv_bn_relu(c_out, c_out))


class DecoderBlock(nn.Module):
    """Decoder block (A8): UNet double conv, or 1×1 reduce + LT block."""

    def __init__(self, c_in: int, c_out: int, kind: str, heads: int, ffn_expansion: float) -> None:
        super().__init__()
        if kind == "double_conv":
            self.body: nn.Module = double_conv(c_in, c_out)
        elif kind == "lt":
            self.body = nn.Sequential(
                conv_bn_relu(c_in, c_out, 1), LTBlock(c_out, heads, ffn_expansion)
            )
        else:
            raise ValueError(f"decoder_block must be 'double_conv' or 'lt', not {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MFAFNet(nn.Module):
    """MFAFNet for (optical, SAR) → K-class logits at full resolution.

    Args:
        in_channels: bands per modality, e.g. ``{"optical": 4, "sar": 1}``.
        num_classes: K.
        variant: "s" or "b" (ARCHITECTURE.md §1.7); the keywords below override it.
        widths, depths, ffn_expansion: per-level widths, FDM blocks per level, LT FFN expansion.
        split_ratios (A2): low-frequency (LT) channel ratio per level.
        heads: LT/CFFB heads per level.
        qkv_conv (A3): "depthwise" | "dense".
        inn_nodes, inn_clamp, inn_clamp_value (A4): INN nodes per FDM block and exp bounding.
        head_stem (A1): full-resolution stem concatenated in the head.
        cffb_attention, cffb_sr (A6): "channel" | "spatial" (with K/V reduction per level).
        cffb_rectify (A7): 0 = CFFB output is a decoder skip only; α > 0 also feeds α·(R_m−Φ_m)
            back into each modality stream.
        decoder_block (A8): "double_conv" | "lt".
        decoder_streams: also concatenate x^O_i and x^S_i into the decoder (seed text reading).
        share_deep_fdm: share level-3/4 encoder weights between modalities (§1.7 option).
        proj_dim (A9): width of the shared MMD projection head.
    """

    modalities: tuple[str, ...] = ("optical", "sar")
    divisor: int = 16

    def __init__(
        self,
        in_channels: dict[str, int] | None = None,
        num_classes: int = 2,
        variant: str = "s",
        widths: Sequence[int] | None = None,
        depths: Sequence[int] | None = None,
        ffn_expansion: float | None = None,
        split_ratios: Sequence[float] = (0.25, 0.5, 0.75, 0.75),
        heads: Sequence[int] = (1, 2, 4, 8),
        qkv_conv: str = "depthwise",
        inn_nodes: int = 2,
        inn_clamp: str = "soft",
        inn_clamp_value: float | None = None,
        head_stem: bool = True,
        stem_channels: int = 16,
        head_channels: int = 32,
        cffb_attention: str = "channel",
        cffb_sr: Sequence[int] = (8, 4, 2, 1),
        cffb_rectify: float = 0.0,
        decoder_block: str = "double_conv",
        decoder_streams: bool = False,
        share_deep_fdm: bool = False,
        proj_dim: int = 128,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, not {variant!r}")
        v = VARIANTS[variant]
        ch = {"optical": 4, "sar": 1, **(in_channels or {})}
        widths = tuple(widths or v["widths"])
        depths = tuple(depths or v["depths"])
        ffn = float(ffn_expansion if ffn_expansion is not None else v["ffn_expansion"])
        if not (len(widths) == len(depths) == len(split_ratios) == len(heads) == 4):
            raise ValueError("widths, depths, split_ratios and heads need 4 entries (4 levels)")
        self.in_channels = {m: int(ch[m]) for m in self.modalities}
        self.num_classes = num_classes
        self.widths = widths
        self.cffb_rectify = float(cffb_rectify)
        self.decoder_streams = decoder_streams

        fdm_kw = {
            "inn_nodes": inn_nodes,
            "ffn_expansion": ffn,
            "qkv_conv": qkv_conv,
            "inn_clamp": inn_clamp,
            "inn_clamp_value": inn_clamp_value,
        }
        # module creation order (encoders, CFFBs, decoder, stem, head, projection) fixes the
        # seeded initialisation; keep it
        self.encoders = self._encoders(depths, split_ratios, heads, share_deep_fdm, fdm_kw)
        self.cffb = nn.ModuleList(
            CFFB(widths[i], heads[i], cffb_attention, cffb_sr[i]) for i in range(4)
        )
        self._build_decoder(heads, ffn, decoder_block, head_stem, stem_channels, head_channels)
        # Shared projection into the common latent space for the MMD alignment loss (A9).
        self.align_proj = nn.Sequential(
            nn.Conv2d(widths[3], proj_dim, 1), nn.GELU(), nn.Conv2d(proj_dim, proj_dim, 1)
        )

    def _encoders(
        self,
        depths: Sequence[int],
        split_ratios: Sequence[float],
        heads: Sequence[int],
        share_deep_fdm: bool,
        fdm_kw: dict[str, Any],
    ) -> nn.ModuleDict:
        """Four FDM levels per modality (levels 3-4 shared with the first modality's when
        ``share_deep_fdm``)."""
        widths, encoders = self.widths, nn.ModuleDict()
        for m in self.modalities:
            c_prev = self.in_channels[m]
            levels = []
            for i in range(4):
                if share_deep_fdm and i >= 2 and m != self.modalities[0]:
                    levels.append(cast(nn.ModuleList, encoders[self.modalities[0]])[i])
                else:
                    kw = {"low_ratio": split_ratios[i], "heads": heads[i], **fdm_kw}
                    levels.append(ModalityEncoderLevel(c_prev, widths[i], depths[i], **kw))
                c_prev = widths[i]
            encoders[m] = nn.ModuleList(levels)
        return encoders

    def _build_decoder(
        self,
        heads: Sequence[int],
        ffn: float,
        decoder_block: str,
        head_stem: bool,
        stem_channels: int,
        head_channels: int,
    ) -> None:
        """Bottleneck, the three up/decoder levels, the optional full-resolution stem, head."""
        widths = self.widths
        skip_mult = 3 if self.decoder_streams else 1
        self.bottleneck = DecoderBlock(
            widths[3] * skip_mult, widths[3], decoder_block, heads[3], ffn
        )
        self.up = nn.ModuleList(nn.Conv2d(widths[i + 1], widths[i], 1) for i in range(3))
        self.dec = nn.ModuleList(
            DecoderBlock(widths[i] * (1 + skip_mult), widths[i], decoder_block, heads[i], ffn)
            for i in range(3)
        )
        self.stem = (
            conv_bn_relu(sum(self.in_channels.values()), stem_channels) if head_stem else None
        )
        self.head = nn.Sequential(
            conv_bn_relu(widths[0] + (stem_channels if head_stem else 0), head_channels),
            nn.Conv2d(head_channels, self.num_classes, 1),
        )

    def _skip(self, f: torch.Tensor, x_o: torch.Tensor, x_s: torch.Tensor) -> torch.Tensor:
        return torch.cat([f, x_o, x_s], dim=1) if self.decoder_streams else f

    def forward(
        self, optical: torch.Tensor, sar: torch.Tensor, return_aux: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        x = {"optical": optical, "sar": sar}
        skips = []
        for i in range(4):
            for m in self.modalities:
                x[m] = cast(nn.ModuleList, self.encoders[m])[i](x[m])
            deep = (x["optical"], x["sar"])  # x^m_4 before the CFFB (for MMD) at i == 3
            f, r_o, r_s = self.cffb[i](x["optical"], x["sar"])
            skips.append(self._skip(f, x["optical"], x["sar"]))
            if self.cffb_rectify and i < 3:
                a = self.cffb_rectify
                x = {"optical": deep[0] + a * (r_o - deep[0]), "sar": deep[1] + a * (r_s - deep[1])}
        d = self.bottleneck(skips[3])
        for i in (2, 1, 0):
            # 1×1 conv before the ×2 bilinear upsample: both are linear and bilinear weights
            # sum to 1, so this equals Conv1×1(Up2(D)) exactly at a quarter of the cost.
            u = F.interpolate(self.up[i](d), scale_factor=2.0, mode="bilinear", align_corners=False)
            d = self.dec[i](torch.cat([u, skips[i]], dim=1))
        d = F.interpolate(d, scale_factor=2.0, mode="bilinear", align_corners=False)
        if self.stem is not None:
            d = torch.cat([d, self.stem(torch.cat([optical, sar], dim=1))], dim=1)
        logits = self.head(d)
        if not return_aux:
            return logits
        return logits, {"deep": deep, "align": self.aligned_embeddings(*deep)}

    def aligned_embeddings(
        self, f_o: torch.Tensor, f_s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shared-projection embeddings for the projected MMD kinds, and their collapse guard.

        L2 normalisation rules out g ≡ 0 but not g ≡ constant, which satisfies any paired loss;
        the returned variance hinge (:func:`~mfaf_cli.models.losses.variance_hinge` over both
        modalities' pixels) costs a constant projection 1 and a spread one nothing.
        """
        from mfaf_cli.models.losses import variance_hinge

        p_o, p_s = self.align_proj(f_o), self.align_proj(f_s)
        hinge = variance_hinge(torch.cat([p_o, p_s], dim=0))
        return F.normalize(p_o, dim=1), F.normalize(p_s, dim=1), hinge

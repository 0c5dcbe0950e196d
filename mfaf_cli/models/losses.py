"""MMD semantic-distribution alignment loss (MFAF Eq. 6, ARCHITECTURE.md §1.6) and its λ ramp.

The default (:func:`feature_mmd`, kind "rbf") is a multi-kernel RBF MMD² on the raw deepest
per-modality encoder features after a parameter-free LayerNorm: no head of its own to train,
so it cannot be satisfied by collapsing an embedding. The other kinds take the projected,
L2-normalised embeddings ẑ_O, ẑ_S of shape (B, d, h, w) (or (N, d)); every pixel is a sample,
and pixels are co-registered, so sample p of one modality is paired with sample p of the other.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F

from mfaf_cli.types import ALIGNMENT_KINDS

MMD_KINDS = ALIGNMENT_KINDS
#: Kinds computed on the head-free deep features; the others use the shared projection.
FEATURE_KINDS = ("rbf",)
#: Mean pixel-pair cosine above which an embedding counts as collapsed.
COLLAPSE_COSINE = 0.99
#: Bandwidth multipliers of the multi-kernel RBF MMD (× the median squared distance).
RBF_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
_EPS = 1e-12


def _as_samples(z: torch.Tensor) -> torch.Tensor:
    """(B, d, h, w) → (B·h·w, d); (N, d) unchanged."""
    if z.dim() == 4:
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    if z.dim() == 2:
        return z
    raise ValueError(f"features must be (B, d, h, w) or (N, d), got shape {tuple(z.shape)}")


def paired_mmd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Jensen upper bound of MMD for paired samples: mean_p ‖a_p − b_p‖₂ (0 iff a == b)."""
    d2 = ((a - b) ** 2).sum(dim=1)
    # sqrt(d2 + eps) − sqrt(eps): exactly 0 at d2 = 0 with a finite (zero) gradient there.
    return (torch.sqrt(d2 + _EPS) - math.sqrt(_EPS)).mean()


def linear_mmd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Linear-kernel MMD²: ‖mean a − mean b‖₂² (first-moment matching)."""
    return ((a.mean(0) - b.mean(0)) ** 2).sum()


def rbf_mmd(
    a: torch.Tensor,
    b: torch.Tensor,
    max_samples: int = 1024,
    scales: tuple[float, ...] = RBF_SCALES,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Multi-kernel RBF MMD² (biased, DAN style) on ≤ ``max_samples`` paired pixels.

    The same pixel subset is taken from both sides (the pixels are co-registered), so identical
    features give exactly 0. Bandwidths: σ² = median pairwise squared distance × ``scales``.
    """
    n = a.shape[0]
    if n > max_samples:
        idx = torch.randperm(n, generator=generator, device=a.device)[:max_samples]
        a, b = a[idx], b[idx]
    x = torch.cat([a, b], dim=0)
    d2 = torch.cdist(x, x).pow(2)
    med = d2.detach()[d2.detach() > 0]
    sigma2 = med.median() if med.numel() else d2.new_tensor(1.0)
    k = cast(torch.Tensor, sum(torch.exp(-d2 / (sigma2 * s)) for s in scales))
    m = a.shape[0]
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    return (kxx.mean() + kyy.mean() - 2 * kxy.mean()).clamp_min(0.0)


def layer_normalised(f: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) → (B·h·w, C) samples, each LayerNorm-ed over channels without affine."""
    x = _as_samples(f.float())
    return F.layer_norm(x, (x.shape[1],))


def valid_samples(mask: torch.Tensor | None, size: tuple[int, int], ignore_index: int) -> Any:
    """(B·h·w,) bool: pixels whose nearest-downsampled label is not ``ignore_index``."""
    if mask is None:
        return None
    m = F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0]
    return (m != ignore_index).reshape(-1)


def feature_mmd(
    f_a: torch.Tensor,
    f_b: torch.Tensor,
    valid: torch.Tensor | None = None,
    max_samples: int = 1024,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Head-free alignment: multi-kernel RBF MMD² between LayerNorm-ed deep features.

    ``f_a``/``f_b`` are the (B, C, h, w) deepest encoder features of two modalities, ``valid``
    an optional (B·h·w,) mask of pixels to use. On ≤ ``max_samples`` random valid pixels,
    bandwidths from the median pairwise distance × ¼…4 (no gradient through them). Zero for
    identical features, growing with a shift between the two distributions; gradients reach
    both encoders.
    """
    a, b = layer_normalised(f_a), layer_normalised(f_b)
    if valid is not None and bool(valid.any()):
        a, b = a[valid], b[valid]
    return rbf_mmd(a, b, max_samples=max_samples, generator=generator)


def variance_hinge(z: torch.Tensor, target: float = 1.0) -> torch.Tensor:
    """Mean over channels of relu(target − std over samples) (VICReg's variance term).

    The guard of a learned projection against collapse: 0 when every channel varies by at
    least ``target`` across pixels, ``target`` for a constant embedding.
    """
    x = _as_samples(z.float())
    std = torch.sqrt(x.var(dim=0, unbiased=False) + 1e-4)
    return F.relu(target - std).mean()


def embedding_cosine(z: torch.Tensor, pairs: int = 4096) -> float:
    """Mean cosine between random pixel pairs of an embedding (1.0 = collapsed to a constant)."""
    x = _as_samples(z.detach().float())
    if x.shape[0] < 2:
        return float("nan")
    g = torch.Generator(device="cpu").manual_seed(0)
    i = torch.randint(0, x.shape[0], (pairs,), generator=g).to(x.device)
    j = torch.randint(0, x.shape[0], (pairs,), generator=g).to(x.device)
    return float(F.cosine_similarity(x[i], x[j], dim=1).mean())


def class_mmd(
    a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255
) -> torch.Tensor:
    """Class-conditional linear MMD²: mean over present classes of ‖μ_c(a) − μ_c(b)‖₂².

    ``labels`` is (N,) aligned with the samples; ``ignore_index`` pixels are skipped.
    """
    valid = labels != ignore_index
    if not bool(valid.any()):
        return (a.sum() + b.sum()) * 0.0
    lab = labels[valid].long()
    a, b = a[valid], b[valid]
    n_cls = int(lab.max()) + 1
    onehot = F.one_hot(lab, n_cls).to(a.dtype)  # (N, K)
    counts = onehot.sum(0)
    present = counts > 0
    mu_a = (onehot.t() @ a)[present] / counts[present, None]
    mu_b = (onehot.t() @ b)[present] / counts[present, None]
    return ((mu_a - mu_b) ** 2).sum(1).mean()


def mmd_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    kind: str = "paired",
    labels: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Alignment loss between two modalities' projected features.

    Args:
        z_a, z_b: (B, d, h, w) or (N, d) features of the same pixels.
        kind: "paired" (upper bound), "linear", "rbf" or "class" (the default alignment,
            on deep features, is :func:`feature_mmd`; "rbf" here is the same kernel on ``z``).
        labels: for "class": (B, H, W) label map at input resolution (nearest-downsampled to
            h×w here) or already (B, h, w) / (N,).
        ignore_index: label value excluded from the class-conditional means.
    """
    if z_a.shape != z_b.shape:
        raise ValueError(f"feature shapes differ: {tuple(z_a.shape)} vs {tuple(z_b.shape)}")
    a, b = _as_samples(z_a), _as_samples(z_b)
    if kind == "paired":
        return paired_mmd(a, b)
    if kind == "linear":
        return linear_mmd(a, b)
    if kind == "rbf":
        return rbf_mmd(a, b)
    if kind == "class":
        if labels is None:
            raise ValueError("kind='class' needs labels")
        if z_a.dim() == 4 and labels.dim() == 3:
            h, w = z_a.shape[-2:]
            if labels.shape[-2:] != (h, w):
                labels = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0]
            labels = labels.reshape(-1)
        return class_mmd(a, b, labels.reshape(-1).to(a.device), ignore_index)
    raise ValueError(f"unknown MMD kind {kind!r}; use one of {', '.join(MMD_KINDS)}")


def ramp_weight(step: int, total_steps: int, lam: float = 0.1, warmup: float = 0.05) -> float:
    """λ ramped linearly from 0 to ``lam`` over the first ``warmup`` fraction of training."""
    ramp_steps = warmup * total_steps
    if ramp_steps <= 0:
        return float(lam)
    return float(lam) * min(1.0, max(0.0, step / ramp_steps))

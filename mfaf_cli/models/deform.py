"""Pure-torch modulated deformable sampling Σ_k m_k · v(p + p_k + Δ_k), in two forms.

* **batched** (training): one ``grid_sample`` over all K taps folded into the last spatial axis.
  It materialises a tensor K× the feature map, but its backward is one kernel call, which is
  faster for fwd+bwd than K small calls.
* **per-tap** (inference): K ``grid_sample`` calls, each accumulated into the output with
  ``addcmul_``; peak memory is one feature map instead of K, and the K× multiply-sum is gone.

``mode="auto"`` picks per-tap whenever no autograd graph is being recorded (``no_grad`` /
``inference_mode``, or no input requires grad) and outside ONNX export (a single GridSample
node keeps the exported graph small). Both forms share a cached, already normalised base grid
(p0 + p_k mapped to [-1, 1]), so only ``base + Δ·(2/extent)`` (one ``addcmul``) is computed per
call.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import cast

import torch
import torch.nn.functional as F

MODES = ("auto", "batched", "per_tap")


def kernel_taps_2d() -> list[tuple[int, int]]:
    """3×3 taps as (dx, dy), row-major (matches a conv weight's flattened (ky, kx) order)."""
    return [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def kernel_taps_3d(k: int) -> list[tuple[int, int, int]]:
    """3-D taps as (dx, dy, dd): K=27 full 3×3×3 (row-major over d, y, x) or K=7 axial."""
    if k == 27:
        return [(dx, dy, dd) for dd in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    if k == 7:
        return [(0, 0, 0), (0, 0, -1), (0, 0, 1), (0, -1, 0), (0, 1, 0), (-1, 0, 0), (1, 0, 0)]
    raise ValueError(f"k3 must be 27 (full) or 7 (axial), not {k}")


def normalised_base_grid(
    sizes: Sequence[int], taps: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(K, *sizes, n) normalised positions of p0 + p_k, (x, y[, d]) last, align_corners=False.

    A pixel coordinate p on an axis of n samples maps to (2p + 1)/n − 1. Cached per shape,
    taps, dtype, device and inference mode (an inference-mode tensor must not leak into a
    training graph).
    """
    key = tuple(tuple(int(t) for t in row) for row in taps.tolist())
    return _cached_grid(
        tuple(int(s) for s in sizes), key, dtype, device, torch.is_inference_mode_enabled(), True
    )


def pixel_base_grid(
    sizes: Sequence[int], taps: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(K, *sizes, n) pixel positions p0 + p_k, (x, y[, d]) last; cached like the above."""
    key = tuple(tuple(int(t) for t in row) for row in taps.tolist())
    return _cached_grid(
        tuple(int(s) for s in sizes), key, dtype, device, torch.is_inference_mode_enabled(), False
    )


@lru_cache(maxsize=64)
def _cached_grid(
    sizes: tuple[int, ...],
    taps: tuple[tuple[int, ...], ...],
    dtype: torch.dtype,
    device: torch.device,
    inference: bool,
    normalised: bool,
) -> torch.Tensor:
    del inference  # part of the cache key only
    axes = [torch.arange(n, dtype=torch.float64) for n in sizes]
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)  # (*S, n) x, y[, d]
    t = torch.tensor(taps, dtype=torch.float64).reshape(len(taps), *(1,) * len(sizes), -1)
    extent = torch.tensor(sizes[::-1], dtype=torch.float64)
    grid = (2.0 * (pos + t) + 1.0) / extent - 1.0 if normalised else pos + t
    return grid.to(dtype=dtype, device=device)


def offset_scale(sizes: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """(n,) factors 2/extent that turn pixel offsets into normalised-grid offsets."""
    extent = torch.tensor([float(s) for s in sizes[::-1]], dtype=like.dtype, device=like.device)
    return 2.0 / extent


def resolve_mode(mode: str, *tensors: torch.Tensor) -> str:
    """'batched' while autograd records (or during ONNX export), else 'per_tap'; explicit wins."""
    if mode not in MODES:
        raise ValueError(f"deformable sampling mode must be one of {MODES}, not {mode!r}")
    if mode != "auto":
        return mode
    if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
        return "batched"
    recording = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return "batched" if recording else "per_tap"


def deform_sample(
    v: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    taps: torch.Tensor,
    groups: int,
    mode: str = "auto",
) -> torch.Tensor:
    """Modulated deformable aggregation Σ_k m_k · v(p + p_k + Δ_k), per channel group.

    Args:
        v: (B, C, *S) values, S = (h, w) or (D, h, w).
        offset: (B, G·K·n, *S) offsets in pixels, ordered (group, tap, axis x/y[/d]).
        mask: (B, G·K, *S) modulation (e.g. softmax over K).
        taps: (K, n) integer tap positions in (x, y[, d]) order.
        groups: G; channels in a group share offsets and mask.
        mode: "auto" (see :func:`resolve_mode`), "batched" or "per_tap"; equal up to rounding.

    Returns:
        (B, C, *S). Sampling is bilinear/trilinear with zeros outside, align_corners=False.
    """
    fn = _batched if resolve_mode(mode, v, offset, mask) == "batched" else _per_tap
    return fn(v, offset, mask, taps, groups)


def _batched(
    v: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, taps: torch.Tensor, groups: int
) -> torch.Tensor:
    """All taps in one grid_sample: (B·G, C/G, *S[:-1], S[-1]·K)."""
    b, c = v.shape[:2]
    sizes = tuple(v.shape[2:])
    nd, k, bg = len(sizes), taps.shape[0], b * groups
    base = normalised_base_grid(sizes, taps, v.dtype, v.device)  # (K, *S, n)
    base = base.permute(*range(1, 1 + nd), 0, nd + 1)  # (*S, K, n)
    # (B·G, K, n, *S) → (B·G, *S, K, n)
    off = offset.reshape(bg, k, nd, *sizes).permute(0, *range(3, 3 + nd), 1, 2)
    grid = torch.addcmul(base, off, offset_scale(sizes, v))
    grid = grid.reshape(bg, *sizes[:-1], sizes[-1] * k, nd)
    sampled = F.grid_sample(
        v.reshape(bg, c // groups, *sizes),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    ).reshape(bg, c // groups, *sizes, k)
    m = mask.reshape(bg, k, *sizes).permute(0, *range(2, 2 + nd), 1).unsqueeze(1)
    return (sampled * m).sum(-1).reshape(b, c, *sizes)


def _per_tap(
    v: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, taps: torch.Tensor, groups: int
) -> torch.Tensor:
    """One grid_sample per tap, accumulated in place: memory of one feature map, not K."""
    b, c = v.shape[:2]
    sizes = tuple(v.shape[2:])
    nd, k, bg = len(sizes), taps.shape[0], b * groups
    base = normalised_base_grid(sizes, taps, v.dtype, v.device)  # (K, *S, n)
    scale = offset_scale(sizes, v)
    off = offset.reshape(bg, k, nd, *sizes)
    m = mask.reshape(bg, k, 1, *sizes)
    vg = v.reshape(bg, c // groups, *sizes)
    out = torch.zeros_like(vg)
    to_last = (0, *range(2, 2 + nd), 1)  # (B·G, n, *S) → (B·G, *S, n)
    for t in range(k):
        grid = torch.addcmul(base[t], off[:, t].permute(*to_last), scale)
        s = F.grid_sample(vg, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out.addcmul_(s, m[:, t])
    return out.reshape(b, c, *sizes)


def per_tap_from_features(
    v: torch.Tensor,
    q: torch.Tensor,
    offset_layer: torch.nn.Module,
    mask_layer: torch.nn.Module,
    taps: torch.Tensor,
    groups: int,
    chunk: int | None = None,
    sliced_3d: bool = True,
) -> torch.Tensor:
    """Inference-only DCN aggregation that never holds all K taps' offsets at once.

    Equal to ``deform_sample(v, offset_layer(q), softmax_K(mask_layer(q)), taps, groups)`` for
    1×1 offset/mask projections. The offsets (at CoMiX-S stage 1, 10× the feature map) are
    projected from q for ``chunk`` taps at a time (default: as many as fit in one feature
    map's memory), the mask's softmax is taken in place. 3-D sampling goes through
    :func:`accumulate_trilinear` unless ``sliced_3d`` is False.
    """
    b, c = v.shape[:2]
    sizes = tuple(v.shape[2:])
    nd, k, g = len(sizes), taps.shape[0], groups
    step = chunk or max(1, c // (g * nd))
    q_flat = q.reshape(b, q.shape[1], -1)  # (B, C, N)
    w_off = cast(torch.Tensor, offset_layer.weight).reshape(g, k, nd, -1)
    b_off = cast(torch.Tensor, offset_layer.bias).reshape(g, k, nd, 1)
    logits = mask_layer(q).reshape(b * g, k, 1, *sizes)
    m = logits.sub_(logits.amax(1, keepdim=True)).exp_()
    m = m.div_(m.sum(1, keepdim=True))  # softmax over K, in place
    sliced = nd == 3 and sliced_3d
    grid_fn = pixel_base_grid if sliced else normalised_base_grid
    base = grid_fn(sizes, taps, v.dtype, v.device)  # (K, *S, n)
    scale = offset_scale(sizes, v)
    vg = v.reshape(b * g, c // g, *sizes)
    wide = slices_side_by_side(vg) if sliced else vg
    out = torch.zeros_like(vg)
    to_last = (0, *range(2, 2 + nd), 1)  # (B·G, n, *S) → (B·G, *S, n)
    for t0 in range(0, k, step):
        t1 = min(k, t0 + step)
        w = w_off[:, t0:t1].reshape(-1, w_off.shape[-1])
        off = torch.baddbmm(b_off[:, t0:t1].reshape(1, -1, 1), w.expand(b, -1, -1), q_flat)
        off = off.reshape(b * g, t1 - t0, nd, *sizes)
        for j, t in enumerate(range(t0, t1)):
            if sliced:
                accumulate_trilinear(out, wide, off[:, j].permute(*to_last) + base[t], m[:, t])
                continue
            grid = torch.addcmul(base[t], off[:, j].permute(*to_last), scale)
            s = F.grid_sample(vg, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            out.addcmul_(s, m[:, t])
    return out.reshape(b, c, *sizes)


def slices_side_by_side(vg: torch.Tensor) -> torch.Tensor:
    """(N, C, D, h, w) → (N, C, h, (D+2)·(w+2)): the D slices in a row, each with a zero
    column on both sides, plus an all-zero slice at each end."""
    p = F.pad(vg, (1, 1, 0, 0, 1, 1))
    return p.permute(0, 1, 3, 2, 4).reshape(vg.shape[0], vg.shape[1], vg.shape[3], -1)


def accumulate_trilinear(
    out: torch.Tensor, wide: torch.Tensor, pix: torch.Tensor, m: torch.Tensor
) -> None:
    """out += m · trilinear(v at pixel positions pix), with two *2-D* samples per point.

    PyTorch's 5-D CPU grid_sample is a scalar loop while the 4-D one is vectorised, so the
    depth interpolation is done by hand: (1 − f)·bilinear(slice ⌊d⌋) + f·bilinear(slice ⌊d⌋+1)
    on :func:`slices_side_by_side`'s image. Clamping x to [−1, w] and d to [−1, D] lands
    outside points on the zero borders, which reproduces zeros padding exactly; the only
    difference from the 5-D sampler is float32 rounding of the long normalised x axis
    (~1e-4 px at CoMiX-S stage 1).

    Args:
        out: (N, C, D, h, w) accumulator; wide: the side-by-side slices of v;
        pix: (N, D, h, w, 3) positions (x, y, d) in pixels; m: (N, 1, D, h, w) weights.
    """
    n, c, d, h, w = out.shape
    wt = float(wide.shape[-1])
    px = pix[..., 0].clamp(-1.0, float(w))
    pd = pix[..., 2].clamp(-1.0, float(d))
    d0 = pd.floor().clamp_(max=d - 1)
    fd = (pd - d0).unsqueeze(1)
    gx = (px + (d0 + 1.0) * (w + 2) + 1.0) * (2.0 / wt) + (1.0 / wt - 1.0)
    gy = pix[..., 1] * (2.0 / h) + (1.0 / h - 1.0)
    shift = 2.0 * (w + 2) / wt  # one slice further along the row
    grid = torch.stack([torch.cat([gx, gx + shift], 1), torch.cat([gy, gy], 1)], dim=-1)
    s = F.grid_sample(
        wide, grid.reshape(n, 2 * d * h, w, 2), "bilinear", "zeros", align_corners=False
    ).reshape(n, c, 2, d, h, w)
    w1 = m * fd
    out.addcmul_(s[:, :, 0], m - w1)
    out.addcmul_(s[:, :, 1], w1)

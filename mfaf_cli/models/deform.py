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

At inference CoMiX goes further (:func:`inference_only`): whole-map tensors are built slab by
slab along the first spatial axis (:func:`slab_bounds`, :func:`accumulate_taps`), so only v
and the result are whole. fp16 / bf16 features are sampled in float32 (:func:`sampling_dtype`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, cast

import torch
import torch.nn.functional as F

MODES = ("auto", "batched", "per_tap")
#: elements (per batch item) of one slab of a whole-map tensor in the lean inference forms
LEAN_SLAB_ELEMENTS = 1 << 17
#: the same off the CPU, where every slab costs kernel launches and memory is less scarce
LEAN_SLAB_ELEMENTS_ACCEL = 1 << 23


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


def sampling_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype deformable sampling runs in: float32 for fp16/bf16 features.

    PyTorch's CPU grid_sample is wrong for half (errors of ~5 on unit-variance values at a
    256² map, sometimes a crash; pytorch#127224), which made CoMiX's fp16 forward non-finite
    at 1024²; and a half normalised coordinate resolves only 2⁻¹¹ of its axis, more than a
    pixel on the sliced 3-D sampler's (D+2)·(w+2)-wide image.
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def autocast_off(x: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    """Autocast disabled on x's device type, where it is on (else a no-op, so export and
    plain fp32 runs see no autocast context at all)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def offsets_fp32(offset_layer: torch.nn.Module, q: torch.Tensor) -> torch.Tensor:
    """Δ = offset_layer(q), in float32 under autocast: offsets of several pixels rounded to
    half precision (bf16: 2⁻⁸ relative, 0.04 px at 10 px) would carry that error into the
    float32 sampling grids (:func:`sampling_dtype`)."""
    if not torch.is_autocast_enabled(q.device.type):
        return cast(torch.Tensor, offset_layer(q))
    with autocast_off(q):
        return cast(torch.Tensor, offset_layer(q.float()))


def inference_only(module: torch.nn.Module, mode: str, x: torch.Tensor) -> bool:
    """Whether the memory-lean forms (slab by slab, in place) may run: eval mode, sampling
    resolved to per-tap, and autograd recording nothing, neither for x nor for a parameter."""
    if module.training or resolve_mode(mode, x) != "per_tap":
        return False
    if not torch.is_grad_enabled():
        return True
    return not (x.requires_grad or any(p.requires_grad for p in module.parameters()))


def slab_bounds(
    length: int,
    per_position: int,
    multiple: int = 1,
    device: torch.device | None = None,
    budget: int | None = None,
) -> list[tuple[int, int]]:
    """[start, stop) slabs of a first axis of ``length`` positions, each a multiple of
    ``multiple`` positions long and about ``budget`` elements (``per_position`` per position;
    default: the CPU or the accelerator budget above, by ``device``)."""
    if budget is not None:
        cap = budget
    elif device is None or device.type == "cpu":
        cap = LEAN_SLAB_ELEMENTS
    else:
        cap = LEAN_SLAB_ELEMENTS_ACCEL
    step = max(1, cap // max(1, per_position * multiple)) * multiple
    return [(a, min(length, a + step)) for a in range(0, length, step)]


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
    work = sampling_dtype(v.dtype)
    if work == v.dtype:
        return fn(v, offset, mask, taps, groups)
    return fn(v.to(work), offset.to(work), mask.to(work), taps, groups).to(v.dtype)


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
    1×1 offset/mask projections; :func:`accumulate_taps` over the whole map, in
    :func:`sampling_dtype`.
    """
    b, c = v.shape[:2]
    sizes = tuple(v.shape[2:])
    sliced = len(sizes) == 3 and sliced_3d
    vg = v.reshape(b * groups, c // groups, *sizes).to(sampling_dtype(v.dtype))
    src = sampling_source(vg, sliced)
    out = torch.zeros_like(vg)
    accumulate_taps(out, src, q, offset_layer, mask_layer, taps, groups, sizes, 0, sliced, chunk)
    return out.reshape(b, c, *sizes).to(v.dtype)


def sampling_source(vg: torch.Tensor, sliced: bool) -> torch.Tensor:
    """What the per-tap sampler reads: vg itself, or for the sliced 3-D path the side-by-side
    slices of :func:`slices_side_by_side`."""
    return slices_side_by_side(vg) if sliced else vg


def empty_sampling_source(
    vg_shape: Sequence[int], sliced: bool, like: torch.Tensor
) -> torch.Tensor:
    """A zero source, in :func:`sampling_dtype`, of the layout :func:`sampling_source` gives
    for values of ``vg_shape``, to be filled slab by slab with :func:`write_sampling_source`."""
    dtype = sampling_dtype(like.dtype)
    if not sliced:
        return like.new_zeros(*vg_shape, dtype=dtype)
    n, c, d, h, w = vg_shape
    return like.new_zeros(n, c, h, (d + 2) * (w + 2), dtype=dtype)


def write_sampling_source(src: torch.Tensor, vg: torch.Tensor, start: int, sliced: bool) -> None:
    """Put the grouped values vg of first-axis positions start… into ``src``."""
    stop = start + vg.shape[2]
    if not sliced:
        src[:, :, start:stop] = vg
        return
    n, c, _, h, w = vg.shape
    slots = src.view(n, c, h, -1, w + 2)  # (N, C, h, D + 2, w + 2)
    slots[:, :, :, 1 + start : 1 + stop, 1 : w + 1] = vg.transpose(2, 3)


def accumulate_taps(
    out: torch.Tensor,
    src: torch.Tensor,
    q: torch.Tensor,
    offset_layer: torch.nn.Module,
    mask_layer: torch.nn.Module,
    taps: torch.Tensor,
    groups: int,
    sizes: Sequence[int],
    start: int = 0,
    sliced: bool = False,
    chunk: int | None = None,
) -> None:
    """out += Σ_k m_k · v(p + p_k + Δ_k) for the output positions of one slab.

    The slab is positions start… of the first spatial axis of a map of ``sizes``; out
    (B·G, C/G, slab…) and q (B, C, slab…) cover only it, while ``src`` (from
    :func:`sampling_source`) holds all of v, since offsets may point anywhere. The offsets
    (at CoMiX-S stage 1, 10× the features) are projected from q for ``chunk`` taps at a time
    (default: as many as fit in the slab's feature memory), the mask's softmax is in place.
    Offsets, grids and sums are in out's dtype (:func:`sampling_dtype`), whatever q's, also
    under autocast.
    """
    b = q.shape[0]
    slab = tuple(q.shape[2:])
    nd, k, g = len(sizes), taps.shape[0], groups
    stop = start + slab[0]
    step = chunk or max(1, q.shape[1] // (g * nd))
    work = out.dtype
    q_flat = q.reshape(b, q.shape[1], -1).to(work)  # (B, C, N)
    w_off = cast(torch.Tensor, offset_layer.weight).to(work).reshape(g, k, nd, -1)
    b_off = cast(torch.Tensor, offset_layer.bias).to(work).reshape(g, k, nd, 1)
    logits = mask_layer(q).to(work).reshape(b * g, k, 1, *slab)
    m = logits.sub_(logits.amax(1, keepdim=True)).exp_()
    m = m.div_(m.sum(1, keepdim=True))  # softmax over K, in place
    grid_fn = pixel_base_grid if sliced else normalised_base_grid
    base = grid_fn(sizes, taps, work, q.device)[:, start:stop]  # (K, slab…, n)
    scale = offset_scale(sizes, out)
    to_last = (0, *range(2, 2 + nd), 1)  # (B·G, n, *S) → (B·G, *S, n)
    for t0 in range(0, k, step):
        t1 = min(k, t0 + step)
        w = w_off[:, t0:t1].reshape(-1, w_off.shape[-1])
        with autocast_off(q):  # else autocast casts the offsets down to half
            off = torch.baddbmm(b_off[:, t0:t1].reshape(1, -1, 1), w.expand(b, -1, -1), q_flat)
        off = off.reshape(b * g, t1 - t0, nd, *slab)
        for j, t in enumerate(range(t0, t1)):
            if sliced:
                accumulate_trilinear(out, src, off[:, j].permute(*to_last) + base[t], m[:, t])
                continue
            grid = torch.addcmul(base[t], off[:, j].permute(*to_last), scale)
            s = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            out.addcmul_(s, m[:, t])


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
        out: (N, C, D', h, w) accumulator, for D' ≤ D output depths (a slab of the map);
        wide: the side-by-side slices of v (N, C, D, h, w);
        pix: (N, D', h, w, 3) positions (x, y, d) in pixels; m: (N, 1, D', h, w) weights.
    """
    n, c, dc, h, w = out.shape
    d = wide.shape[-1] // (w + 2) - 2  # the source's depth
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
        wide, grid.reshape(n, 2 * dc * h, w, 2), "bilinear", "zeros", align_corners=False
    ).reshape(n, c, 2, dc, h, w)
    w1 = m * fd
    out.addcmul_(s[:, :, 0], m - w1)
    out.addcmul_(s[:, :, 1], w1)

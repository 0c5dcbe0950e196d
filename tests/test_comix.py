"""CoMiX internals: both deformable-sampling forms against the original sampler, FFM scale."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mfaf_cli.errors import ModelError
from mfaf_cli.models import count_parameters, create_model, deform
from mfaf_cli.models.comix import DCN, FFM, CoMiX, banded_weights, depth_slabs
from mfaf_cli.models.deform import (
    accumulate_trilinear,
    deform_sample,
    inference_only,
    kernel_taps_2d,
    kernel_taps_3d,
    normalised_base_grid,
    resolve_mode,
    slab_bounds,
    slices_side_by_side,
)

torch.set_num_threads(2)


def reference_sample(
    v: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, taps: torch.Tensor, groups: int
) -> torch.Tensor:
    """The sampler as first written (pixel grid, normalised per call, all K taps at once)."""
    b, c = v.shape[:2]
    sizes = tuple(v.shape[2:])
    nd, k = len(sizes), taps.shape[0]
    axes = [torch.arange(n, dtype=v.dtype) for n in sizes]
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1).unsqueeze(-2) + taps
    off = offset.reshape(b * groups, k, nd, *sizes).permute(0, *range(3, 3 + nd), 1, 2)
    extent = torch.tensor(sizes[::-1], dtype=v.dtype)
    grid = (2.0 * (pos + off) + 1.0) / extent - 1.0
    grid = grid.reshape(b * groups, *sizes[:-1], sizes[-1] * k, nd)
    sampled = F.grid_sample(
        v.reshape(b * groups, c // groups, *sizes),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    ).reshape(b * groups, c // groups, *sizes, k)
    m = mask.reshape(b * groups, k, *sizes).permute(0, *range(2, 2 + nd), 1).unsqueeze(1)
    return (sampled * m).sum(-1).reshape(b, c, *sizes)


def _problem(ndim: int, k: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Random values, offsets up to ±3 px (many taps fall outside) and a softmax mask."""
    g = torch.Generator().manual_seed(seed)
    b, c, groups = 2, 8, 2
    sizes = (7, 9) if ndim == 2 else (5, 6, 7)
    v = torch.randn(b, c, *sizes, generator=g)
    offset = 3.0 * torch.randn(b, groups * k * ndim, *sizes, generator=g)
    logits = torch.randn(b, groups, k, *sizes, generator=g)
    mask = torch.softmax(logits, dim=2).reshape(b, groups * k, *sizes)
    taps = kernel_taps_2d() if ndim == 2 else kernel_taps_3d(k)
    return v, offset, mask, torch.tensor(taps, dtype=torch.float32)


CASES = [(2, 9), (3, 27), (3, 7)]


@pytest.mark.parametrize(("ndim", "k"), CASES)
@pytest.mark.parametrize("mode", ["per_tap", "batched"])
def test_both_sampling_forms_match_the_original_sampler(ndim: int, k: int, mode: str) -> None:
    v, offset, mask, taps = _problem(ndim, k, seed=ndim * 100 + k)
    want = reference_sample(v, offset, mask, taps, 2)
    got = deform_sample(v, offset, mask, taps, 2, mode=mode)
    assert torch.allclose(got, want, atol=2e-5, rtol=0)
    assert got.abs().max() > 0.1  # not vacuously zero


@pytest.mark.parametrize(("ndim", "k"), CASES)
def test_training_form_gradients_match_the_original_sampler(ndim: int, k: int) -> None:
    base = _problem(ndim, k, seed=7 + k)
    grads = []
    for fn in (reference_sample, deform_sample):
        v, offset, mask, taps = (t.clone().requires_grad_(i < 3) for i, t in enumerate(base))
        assert resolve_mode("auto", v, offset, mask) == "batched"
        out = fn(v, offset, mask, taps, 2)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads.append([v.grad, offset.grad, mask.grad])
    for ref, got in zip(*grads, strict=True):
        assert ref is not None and got is not None
        assert torch.allclose(got, ref, atol=5e-5, rtol=1e-4)
        assert ref.abs().max() > 1e-3


def test_per_tap_form_also_backpropagates_like_the_original() -> None:
    base = _problem(3, 7, seed=11)
    grads = []
    for mode in ("batched", "per_tap"):
        v, offset, mask, taps = (t.clone().requires_grad_(i < 3) for i, t in enumerate(base))
        deform_sample(v, offset, mask, taps, 2, mode=mode).square().sum().backward()
        grads.append([v.grad, offset.grad, mask.grad])
    for a, b in zip(*grads, strict=True):
        assert a is not None and b is not None
        assert torch.allclose(a, b, atol=5e-5, rtol=1e-4)


def test_mode_is_chosen_by_whether_autograd_records() -> None:
    v = torch.zeros(1, 2, 3, 3, requires_grad=True)
    assert resolve_mode("auto", v) == "batched"
    with torch.no_grad():
        assert resolve_mode("auto", v) == "per_tap"
    assert resolve_mode("auto", v.detach()) == "per_tap"
    assert resolve_mode("per_tap", v) == "per_tap"
    with pytest.raises(ValueError, match="mode"):
        resolve_mode("fast", v)


def test_normalised_base_grid_values_and_cache() -> None:
    taps = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    grid = normalised_base_grid((2, 4), taps, torch.float32, torch.device("cpu"))
    assert grid.shape == (2, 2, 4, 2)
    # x = 0 on a 4-wide axis → (2·0 + 1)/4 − 1; tap (+1, −1) at (y=1, x=3) → x 4, y 0
    assert grid[0, 0, 0].tolist() == [-0.75, -0.5]
    assert grid[1, 1, 3].tolist() == [1.25, -0.5]
    again = normalised_base_grid((2, 4), taps, torch.float32, torch.device("cpu"))
    assert again is grid
    with torch.inference_mode():
        inf = normalised_base_grid((2, 4), taps, torch.float32, torch.device("cpu"))
    assert inf is not grid and torch.equal(inf, grid)


def test_comix_eval_output_is_the_same_with_either_sampler() -> None:
    torch.manual_seed(0)
    model = create_model("comix-lite", {"hsi": 20, "lidar": 1}, 4, stem_stride=2).eval()
    for mod in model.modules():  # non-zero offsets, so the sampling really is deformable
        if hasattr(mod, "offset") and isinstance(mod.offset, torch.nn.Module):
            torch.nn.init.normal_(mod.offset.weight, std=0.5)
    xs = (torch.randn(1, 20, 32, 32), torch.randn(1, 1, 32, 32))
    with torch.no_grad():
        fast = model(*xs)
        for mod in model.modules():
            if hasattr(mod, "sampling"):
                mod.sampling = "batched"
        slow = model(*xs)
    assert torch.allclose(fast, slow, atol=1e-4, rtol=1e-4)


def _deformable(model: torch.nn.Module) -> None:
    """Non-zero offsets and BatchNorm statistics, so that every lean form has work to do."""
    g = torch.Generator().manual_seed(9)
    for mod in model.modules():
        if isinstance(mod, DCN):
            mod.offset.weight.data.normal_(0.0, 0.5, generator=g)
        if isinstance(mod, torch.nn.BatchNorm2d):
            assert mod.running_mean is not None and mod.running_var is not None
            mod.running_mean.normal_(0.0, 0.5, generator=g)
            mod.running_var.uniform_(0.5, 2.0, generator=g)


@pytest.mark.parametrize("budget", [None, 600, 1])
@pytest.mark.parametrize(
    ("name", "size", "opts"), [("comix-lite", 64, {"stem_stride": 2}), ("comix-s", 64, {})]
)
def test_lean_inference_forward_equals_the_training_path(
    name: str, size: int, opts: dict[str, int], budget: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No-grad eval forward (slabs of rows / depths, in-place residuals, decoder without the
    concatenation) against the same eval model while autograd records (the unchanged
    path), with the slab budget down to one position per slab."""
    torch.manual_seed(0)
    model = create_model(name, {"hsi": 20, "lidar": 1}, 4, **opts).eval()
    _deformable(model)
    xs = (torch.randn(1, 20, size, size), torch.randn(1, 1, size, size))
    want = model(*xs)
    assert want.requires_grad
    if budget is not None:
        monkeypatch.setattr(deform, "LEAN_SLAB_ELEMENTS", budget)
    calls: list[str] = []
    monkeypatch.setattr(CoMiX, "decode", lambda *a: calls.append("full") or None)
    with torch.no_grad():
        got = model(*xs)
    assert calls == []  # the lean decoder ran
    assert torch.allclose(got, want.detach(), atol=2e-5, rtol=1e-4)


def test_lean_parts_equal_their_full_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    model = create_model("comix-lite", {"hsi": 12, "lidar": 1}, 3).eval()
    _deformable(model)
    monkeypatch.setattr(deform, "LEAN_SLAB_ELEMENTS", 700)
    hsi = torch.randn(2, 12, 64, 96)
    h3 = torch.randn(2, 16, 16, 16, 24)
    with torch.no_grad():
        stem = model.hsi_stem_lean(hsi)
        assert torch.allclose(stem, model.h_stem_norm(model.hsi_stem(hsi)), atol=1e-5)
        for down, x in ((model.h_down[0], h3), (model.h_down[2], torch.randn(1, 64, 4, 6, 5))):
            assert torch.allclose(depth_slabs(down, x), down(x), atol=1e-5)
        fused = [torch.randn(2, c, 16 >> i, 24 >> i) for i, c in enumerate((32, 64, 160, 256))]
        assert torch.allclose(model.decode_lean(fused), model.decode(fused), atol=1e-5)


def test_slab_bounds_cover_the_axis_in_budgeted_multiples() -> None:
    assert slab_bounds(10, 3, budget=7) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert slab_bounds(16, 10, multiple=4, budget=50) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert slab_bounds(5, 10**9) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]  # ≥ 1 position
    cpu = slab_bounds(16, 65536)  # CoMiX-lite stage 1 at 256²: 2 of 16 depths per slab on CPU
    assert len(cpu) == 8 and cpu[-1] == (14, 16)
    assert slab_bounds(16, 65536, device=torch.device("meta")) == [(0, 16)]


def test_lean_forms_only_run_when_nothing_is_recorded() -> None:
    model = create_model("comix-lite", {"hsi": 8, "lidar": 1}, 2)
    x = torch.zeros(1, 8, 4, 4)
    assert not inference_only(model, "auto", x)  # training mode
    model.eval()
    assert not inference_only(model, "auto", x)  # parameters require grad
    with torch.no_grad():
        assert inference_only(model, "auto", x)
        assert not inference_only(model, "batched", x)
    model.requires_grad_(False)
    assert inference_only(model, "auto", x)
    assert not inference_only(model, "auto", x.requires_grad_())


@pytest.mark.parametrize(("ndim", "k3"), [(2, 27), (3, 27), (3, 7)])
def test_dcn_inference_path_projects_taps_lazily_but_equals_training_path(
    ndim: int, k3: int
) -> None:
    torch.manual_seed(3)
    dcn = DCN(16, 8, ndim=ndim, k3=k3)
    torch.nn.init.normal_(dcn.offset.weight, std=0.7)
    torch.nn.init.normal_(dcn.offset.bias, std=0.7)
    torch.nn.init.normal_(dcn.mask.weight, std=2.0)
    torch.nn.init.normal_(dcn.mask.bias, std=2.0)
    x = torch.randn(2, 16, *((5,) if ndim == 3 else ()), 6, 7)
    want = dcn(x)  # grad enabled + parameters → batched training form
    with torch.no_grad():
        got = dcn(x)  # per-tap form, offsets and mask projected one tap at a time
    assert torch.allclose(got, want.detach(), atol=2e-5, rtol=1e-4)


# ---- FFM: attention independent of the tile size ---------------------------------------------
def _stage1_contexts(cross: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    _, u = F.relu(cross.channel_proj[0](x)).chunk(2, dim=1)
    return cross.context(u, 0)


@pytest.mark.parametrize("norm", ["mean", "sum"])
def test_ffm_attention_for_the_same_content_agrees_across_tile_sizes(norm: str) -> None:
    """A 32² stage-1 pattern (a 128² tile) repeated to 64² and 128² (256², 512² tiles): with
    the mean over pixels the attention weights agree to 1e-5; CMX's sum does not."""
    torch.manual_seed(0)
    ffm = FFM(32, 1, norm=norm).eval()
    pattern = torch.randn(1, 32, 32, 32)
    with torch.no_grad():
        ctx = [_stage1_contexts(ffm.cross, pattern.repeat(1, 1, r, r)) for r in (1, 2, 4)]
    gaps = [(c - ctx[0]).abs().max().item() for c in ctx[1:]]
    if norm == "mean":
        assert max(gaps) < 1e-5
    else:
        assert min(gaps) > 0.05


def test_ffm_norm_flag_is_validated() -> None:
    with pytest.raises(ModelError, match="ffm_norm"):
        create_model("comix-lite", ffm_norm="max")


@pytest.mark.slow
def test_fp16_forward_at_1024_stays_finite() -> None:
    """CPU fp16 at 1024²: was NaN (or a crash) because CPU grid_sample is wrong for half;
    the sampling now runs in float32 (``sampling_dtype``)."""
    torch.manual_seed(0)
    model = create_model("comix-lite", {"hsi": 16, "lidar": 1}, 4).eval().half()
    xs = (torch.randn(1, 16, 1024, 1024).half(), torch.randn(1, 1, 1024, 1024).half())
    with torch.no_grad():
        out = model(*xs)
    assert out.dtype == torch.float16 and out.shape == (1, 4, 1024, 1024)
    assert torch.isfinite(out).all()


def test_half_grid_sample_on_cpu_is_what_broke_the_fp16_forward() -> None:
    """The mechanism at a small size: CPU grid_sample in half is off by O(0.1-1) on unit
    values (pytorch#127224). If torch fixes it, this test says so and can go."""
    g = torch.Generator().manual_seed(1)
    v = torch.randn(1, 16, 128, 128, generator=g)
    grid = (torch.rand(1, 128, 128, 2, generator=g) * 2 - 1).half()
    want = F.grid_sample(v, grid.float(), "bilinear", "zeros", align_corners=False)
    half = F.grid_sample(v.half(), grid, "bilinear", "zeros", align_corners=False)
    assert (half.float() - want).abs().max() > 0.05


@pytest.mark.parametrize(
    ("ndim", "k", "mode"),
    [(2, 9, "batched"), (2, 9, "per_tap"), (3, 27, "per_tap"), (3, 7, "batched")],
)
def test_half_deformable_sampling_runs_in_float32_and_matches(ndim: int, k: int, mode: str) -> None:
    """Half in, half out, but as exact as float32 up to the final rounding (≤ 2⁻¹¹ relative):
    the half CPU sampler would be off by ~0.1 here."""
    g = torch.Generator().manual_seed(2)
    sizes = (96, 96) if ndim == 2 else (8, 32, 32)
    v = torch.randn(1, 8, *sizes, generator=g)
    offset = 3.0 * torch.randn(1, 2 * k * ndim, *sizes, generator=g)
    mask = torch.softmax(torch.randn(1, 2, k, *sizes, generator=g), 2).reshape(1, 2 * k, *sizes)
    taps = torch.tensor(kernel_taps_2d() if ndim == 2 else kernel_taps_3d(k), dtype=torch.float32)
    halves = [t.half() for t in (v, offset, mask)]
    want = deform_sample(*(t.float() for t in halves), taps, 2, mode=mode)
    got = deform_sample(*halves, taps, 2, mode=mode)
    assert got.dtype == torch.float16
    assert (got.float() - want).abs().max() <= 2e-3 * max(1.0, want.abs().max().item())


def test_half_comix_forward_follows_the_float_one() -> None:
    """The whole lean fp16 forward at a small size: close to float32 (fp16 convolutions and
    norms), finite, in half."""
    torch.manual_seed(0)
    model = create_model("comix-lite", {"hsi": 16, "lidar": 1}, 4, stem_stride=2).eval()
    _deformable(model)
    xs = (torch.randn(1, 16, 64, 64), torch.randn(1, 1, 64, 64))
    with torch.no_grad():
        want = model(*xs)
        got = model.half()(*(x.half() for x in xs))
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    assert (got.float() - want).abs().max() < 2e-2 * want.abs().max()


# ---- order-preserving band reduction -------------------------------------------------------
@pytest.mark.parametrize(("bands", "pseudo"), [(5, 64), (48, 64), (144, 64), (244, 64)])
def test_banded_weights_are_contiguous_monotone_and_normalised(bands: int, pseudo: int) -> None:
    w = banded_weights(bands, pseudo)
    assert w.shape == (pseudo, bands)
    assert torch.allclose(w.sum(1), torch.ones(pseudo))
    first, last = [], []
    for row in w:
        idx = torch.nonzero(row > 0).flatten()
        assert idx.numel() >= 1 and idx[-1] - idx[0] + 1 == idx.numel()  # one interval
        first.append(int(idx[0]))
        last.append(int(idx[-1]))
    assert first == sorted(first) and last == sorted(last)  # supports move with j
    assert first[0] == 0 and last[-1] == bands - 1  # every band reaches some pseudo-band


def test_banded_weights_interpolate_linearly_with_few_bands() -> None:
    w = banded_weights(2, 4)  # centres at −0.25, 0.25, 0.75, 1.25 band units
    want = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    assert torch.allclose(w, want)


def _band_response(model: torch.nn.Module, bands: int, band: int) -> torch.Tensor:
    """Which pseudo-bands change when only input band ``band`` changes."""
    proj = model.band_proj[0]
    x = torch.zeros(1, bands, 1, 1)
    with torch.no_grad():
        base = proj(x)
        x[0, band] = 1.0
        return (proj(x) - base).abs().flatten() > 0


def test_banded_reduction_keeps_a_narrow_spectral_feature_local_even_after_training() -> None:
    torch.manual_seed(0)
    banded = create_model("comix-lite", {"hsi": 144}, 3, band_reduction="banded")
    dense = create_model("comix-lite", {"hsi": 144}, 3)
    assert _band_response(dense, 144, 100).sum() == 64  # dense: every pseudo-band moves
    hit = torch.nonzero(_band_response(banded, 144, 100)).flatten().tolist()
    assert hit and max(hit) - min(hit) <= 2 and min(hit) <= 100 * 64 / 144 <= max(hit) + 1
    # one optimiser step on a random target: the support (and so the order) survives
    proj = banded.band_proj[0]
    opt = torch.optim.SGD(proj.parameters(), lr=1.0)
    proj(torch.randn(2, 144, 4, 4)).square().sum().backward()
    assert proj.weight.grad is not None
    assert (proj.weight.grad.squeeze() * (1 - proj.support.squeeze())).abs().max() == 0
    opt.step()
    assert torch.nonzero(_band_response(banded, 144, 100)).flatten().tolist() == hit


def test_band_reduction_flag_is_validated_and_dense_keeps_the_parameter_count() -> None:
    with pytest.raises(ModelError, match="band_reduction"):
        create_model("comix-lite", band_reduction="pca")
    a = create_model("comix-s", num_classes=15)
    b = create_model("comix-s", num_classes=15, band_reduction="banded")
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    assert set(a.state_dict()) == set(b.state_dict())


def test_trilinear_from_two_2d_samples_equals_5d_grid_sample() -> None:
    """Stated tolerance 5e-4 (max seen 2.5e-4) for unit-variance values: float32 rounding of
    the long x axis of the side-by-side slices (width (D+2)(w+2) = 612 here); points far
    outside, on the borders and exactly on integer positions are included."""
    g = torch.Generator().manual_seed(5)
    n, c, d, h, w = 2, 3, 16, 8, 32
    vg = torch.randn(n, c, d, h, w, generator=g)
    pix = torch.rand(n, d, h, w, 3, generator=g) * torch.tensor([w + 6.0, h + 6.0, d + 6.0]) - 3
    pix[0, 0, 0, :4] = torch.tensor([[-1.0, 0, 0], [w, 3, 2], [2.0, 2, -1], [3.0, 4, d - 1]])
    m = torch.rand(n, 1, d, h, w, generator=g)
    got = torch.zeros_like(vg)
    accumulate_trilinear(got, slices_side_by_side(vg), pix, m)
    grid = (2 * pix + 1) / torch.tensor([w, h, d], dtype=torch.float32) - 1
    want = m * F.grid_sample(vg, grid, "bilinear", "zeros", align_corners=False)
    assert torch.allclose(got, want, atol=5e-4, rtol=0)
    assert want.abs().max() > 0.5


# ---- CoMiX.__init__ split into builders: same modules, same order, same initial values -------
#: (name, options) → parameters, state_dict entries, sha256[:16] of its "key:shape" lines in
#: order, and with torch.manual_seed(0) Σ|θ| (or None); recorded before the split (f73d144)
STATE_DICT_BEFORE = [
    ("comix-s", {}, 8533523, 519, "9cd3e21e6c68f8ea", 203271.50630288039),
    ("comix-lite", {"band_reduction": "banded"}, 8271923, 519, "33123a7621aa3223", None),
    ("comix-b", {}, 40832603, 699, "b6b0619d7817a85b", None),
    (
        "comix-s",
        {"stem_stride": 2, "cmfex_backproject": False, "cmfex_spectral_attention": True},
        8434351,
        523,
        "ab6350e15622c129",
        None,
    ),
    ("comix-lite", {}, 8271923, 519, "33123a7621aa3223", 203313.30249039637),
]


@pytest.mark.parametrize(("name", "opts", "params", "entries", "digest", "init"), STATE_DICT_BEFORE)
def test_state_dict_and_initialisation_are_those_from_before_the_split(
    name: str, opts: dict[str, Any], params: int, entries: int, digest: str, init: float | None
) -> None:
    """A state_dict saved before loads strictly (same keys, shapes and order) and a seeded
    model starts from the same weights (modules are still created in the same order)."""
    torch.manual_seed(0)
    model = create_model(name, {"hsi": 144, "lidar": 1}, 15, **opts)
    sd = model.state_dict()
    lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items())
    assert (count_parameters(model), len(sd)) == (params, entries)
    assert hashlib.sha256(lines.encode()).hexdigest()[:16] == digest
    if init is not None:
        with torch.no_grad():
            total = float(sum(p.double().abs().sum() for p in model.parameters()))
        assert total == pytest.approx(init, rel=1e-12)

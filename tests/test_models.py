"""Networks, losses and registry: shapes, gradients, exact identities of the building blocks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mfaf_cli.errors import ModelError
from mfaf_cli.models import count_parameters, create_model, default_meta, list_models
from mfaf_cli.models.comix import DCN, deform_sample, kernel_taps_2d, kernel_taps_3d
from mfaf_cli.models.haar import HWD, haar_dwt
from mfaf_cli.models.losses import mmd_loss, ramp_weight
from mfaf_cli.models.mfafnet import INNNode, bounded_exp, split_channels

torch.set_num_threads(2)


def _inputs(model: torch.nn.Module, batch: int, size: int) -> list[torch.Tensor]:
    return [torch.randn(batch, model.in_channels[m], size, size) for m in model.modalities]


# ---- shapes -------------------------------------------------------------------------------
SHAPE_CASES = [
    ("mfafnet-s", {"optical": 4, "sar": 1}, 8, 32, {}),
    ("mfafnet-s", {"optical": 13, "sar": 2}, 7, 32, {}),
    ("mfafnet-s", {"optical": 3, "sar": 1}, 2, 48, {}),  # OMBRIA RGB + SAR, 48 = 3x16
    ("mfafnet-b", {"optical": 4, "sar": 1}, 8, 32, {}),
    ("unet", {"optical": 4, "sar": 1}, 8, 32, {}),
    ("unet", {"optical": 13, "sar": 2}, 8, 32, {"bilinear": False, "base_width": 8}),
    ("unet-optical", {"optical": 4}, 3, 32, {}),
    ("unet-sar", {"sar": 1}, 3, 32, {}),
    ("unet-hsi-lidar", {"hsi": 144, "lidar": 1}, 15, 32, {}),
    ("comix-s", {"hsi": 144, "lidar": 1}, 15, 64, {}),
    ("comix-lite", {"hsi": 63, "lidar": 2}, 6, 32, {"stem_stride": 2}),
    ("comix-b", {"hsi": 180, "lidar": 4}, 8, 32, {}),
]


@pytest.mark.parametrize(("name", "chans", "k", "size", "cfg"), SHAPE_CASES)
def test_output_shape(name: str, chans: dict[str, int], k: int, size: int, cfg: dict) -> None:
    torch.manual_seed(0)
    model = create_model(name, chans, k, **cfg).eval()
    assert size % model.divisor == 0
    assert model.in_channels == chans
    xs = _inputs(model, 2, size)
    with torch.no_grad():
        out = model(*xs)
    assert out.shape == (2, k, size, size)
    assert torch.isfinite(out).all()


def test_mfafnet_aux_align_features_are_unit_vectors() -> None:
    model = create_model("mfafnet-s", {"optical": 4, "sar": 1}, 8).eval()
    with torch.no_grad():
        logits, aux = model(*_inputs(model, 2, 32), return_aux=True)
    z_o, z_s, hinge = aux["align"]
    assert float(hinge) >= 0
    assert [tuple(f.shape) for f in aux["deep"]] == [(2, 256, 2, 2)] * 2
    assert logits.shape == (2, 8, 32, 32)
    assert z_o.shape == z_s.shape == (2, 128, 2, 2)
    assert torch.allclose(z_o.norm(dim=1), torch.ones(2, 2, 2), atol=1e-5)
    assert not torch.allclose(z_o, z_s)  # separate encoders → different features


@pytest.mark.parametrize(
    "cfg",
    [
        {"cffb_attention": "spatial"},
        {"decoder_block": "lt", "decoder_streams": True},
        {"cffb_rectify": 0.5, "qkv_conv": "dense", "inn_clamp": "hard", "head_stem": False},
        {"share_deep_fdm": True, "inn_nodes": 3},
    ],
)
def test_mfafnet_ambiguity_flags_build_and_run(cfg: dict) -> None:
    model = create_model("mfafnet-s", {"optical": 4, "sar": 1}, 5, **cfg).eval()
    with torch.no_grad():
        assert model(*_inputs(model, 1, 32)).shape == (1, 5, 32, 32)


def test_mfafnet_split_channels_follow_ratios() -> None:
    # S widths (32, 64, 128, 256), r = (0.25, 0.5, 0.75, 0.75), heads (1, 2, 4, 8)
    got = [
        split_channels(c, r, h)
        for c, r, h in zip((32, 64, 128, 256), (0.25, 0.5, 0.75, 0.75), (1, 2, 4, 8), strict=True)
    ]
    assert got == [(8, 24), (32, 32), (96, 32), (192, 64)]
    assert split_channels(10, 0.5, 1) == (6, 4)  # 5/5 would leave C_high odd


def test_parameter_counts_match_the_brief() -> None:
    # ARCHITECTURE.md §5.1: MFAFNet-S 4.3 M, UNet bilinear (width 64) 17.3 M, transposed 31.0 M
    assert round(count_parameters(create_model("mfafnet-s", num_classes=8)) / 1e6, 1) == 4.3
    assert (
        round(count_parameters(create_model("unet", num_classes=8, base_width=64)) / 1e6, 1) == 17.3
    )
    big = create_model("unet", num_classes=8, base_width=64, bilinear=False)
    assert round(count_parameters(big) / 1e6, 1) == 31.0
    assert round(count_parameters(create_model("comix-s", num_classes=15)) / 1e6, 1) == 8.5


# ---- gradients ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "size", "cfg"),
    [("mfafnet-s", 32, {}), ("unet", 32, {}), ("comix-lite", 32, {"stem_stride": 2})],
)
def test_gradients_reach_both_modalities(name: str, size: int, cfg: dict) -> None:
    torch.manual_seed(0)
    model = create_model(name, None if name != "comix-lite" else {"hsi": 63}, 3, **cfg).train()
    xs = [x.requires_grad_(True) for x in _inputs(model, 2, size)]
    target = torch.randint(0, 3, (2, size, size))
    F.cross_entropy(model(*xs), target).backward()
    for m, x in zip(model.modalities, xs, strict=True):
        assert x.grad is not None and x.grad.abs().sum() > 0, m
    if name == "mfafnet-s":
        for m in model.modalities:
            g = model.encoders[m][0].hwd.conv.weight.grad
            assert g is not None and g.abs().sum() > 0, m


def test_mfafnet_mmd_gradient_flows_through_aux() -> None:
    model = create_model("mfafnet-s", None, 2).train()
    _, aux = model(*_inputs(model, 2, 32), return_aux=True)
    z_o, z_s, hinge = aux["align"]
    (mmd_loss(z_o, z_s) + hinge).backward()
    assert model.align_proj[0].weight.grad.abs().sum() > 0
    for m in model.modalities:
        assert model.encoders[m][3].hwd.conv.weight.grad.abs().sum() > 0


# ---- Haar -----------------------------------------------------------------------------------
def haar_idwt(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`haar_dwt`, written out independently to check it is exact."""
    ll, d1, d2, d3 = torch.chunk(y, 4, dim=1)
    a = (ll + d1 + d2 + d3) * 0.5
    b = (ll + d1 - d2 - d3) * 0.5
    c = (ll - d1 + d2 - d3) * 0.5
    d = (ll - d1 - d2 + d3) * 0.5
    n, ch, h, w = ll.shape
    top = torch.stack([a, b], dim=-1).reshape(n, ch, h, 2 * w)
    bottom = torch.stack([c, d], dim=-1).reshape(n, ch, h, 2 * w)
    return torch.stack([top, bottom], dim=-2).reshape(n, ch, 2 * h, 2 * w)


def test_haar_known_block_and_exact_inverse() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # a=1 b=2 c=3 d=4
    y = haar_dwt(x).flatten().tolist()
    assert y == [5.0, -2.0, -1.0, 0.0]  # LL, (a+b-c-d)/2, (a-b+c-d)/2, (a-b-c+d)/2
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 6, generator=g, dtype=torch.float64)
    y = haar_dwt(x)
    assert y.shape == (2, 12, 4, 3)
    assert torch.allclose(haar_idwt(y), x, atol=1e-12, rtol=0)
    assert torch.allclose((y**2).sum(), (x**2).sum(), rtol=1e-12)  # energy preserved


def test_haar_matrix_is_orthonormal() -> None:
    basis = torch.eye(4, dtype=torch.float64).reshape(4, 1, 1, 2, 2)
    mat = torch.stack([haar_dwt(b).flatten() for b in basis], dim=1)  # (4 bands, 4 pixels)
    assert torch.allclose(mat @ mat.T, torch.eye(4, dtype=torch.float64), atol=1e-15)


def test_hwd_halves_resolution_and_pads_odd_sizes() -> None:
    hwd = HWD(3, 16).eval()
    assert hwd(torch.randn(1, 3, 32, 32)).shape == (1, 16, 16, 16)
    assert hwd(torch.randn(1, 3, 33, 31)).shape == (1, 16, 17, 16)


# ---- deformable convolutions ----------------------------------------------------------------
def test_dcn2d_zero_offsets_equal_grouped_conv() -> None:
    g = torch.Generator().manual_seed(0)
    b, c, groups, h, w = 2, 8, 2, 9, 11
    v = torch.randn(b, c, h, w, generator=g)
    taps = torch.tensor(kernel_taps_2d(), dtype=torch.float32)
    per_group = torch.rand(groups, 9, generator=g)  # spatially constant, non-uniform mask
    mask = per_group.reshape(1, groups * 9, 1, 1).expand(b, -1, h, w)
    offset = torch.zeros(b, groups * 9 * 2, h, w)
    got = deform_sample(v, offset, mask, taps, groups)
    weight = per_group.repeat_interleave(c // groups, dim=0).reshape(c, 1, 3, 3)
    want = F.conv2d(v, weight, padding=1, groups=c)
    assert torch.allclose(got, want, atol=1e-5)


def test_dcn2d_module_at_init_is_uniform_grouped_conv() -> None:
    torch.manual_seed(0)
    dcn = DCN(32, 16, ndim=2).eval()  # offsets/mask zero-initialised → uniform 1/9 taps
    x = torch.randn(1, 32, 12, 10)
    with torch.no_grad():
        v = dcn.input_proj(x)
        want = dcn.output_proj(F.conv2d(v, torch.full((32, 1, 3, 3), 1 / 9), padding=1, groups=32))
        assert torch.allclose(dcn(x), want, atol=1e-5)


def test_dcn2d_integer_offset_shifts_sampling() -> None:
    g = torch.Generator().manual_seed(1)
    v = torch.randn(1, 4, 8, 8, generator=g)
    taps = torch.tensor(kernel_taps_2d(), dtype=torch.float32)
    mask = torch.zeros(1, 9, 8, 8)
    mask[:, 4] = 1.0  # centre tap only
    offset = torch.zeros(1, 9, 2, 8, 8)
    offset[:, :, 0] = 1.0  # +1 pixel in x
    offset[:, :, 1] = -2.0  # -2 pixels in y
    got = deform_sample(v, offset.reshape(1, 18, 8, 8), mask, taps, 1)
    want = torch.zeros_like(v)
    want[..., 2:, :7] = v[..., :6, 1:]  # out(y, x) = v(y - 2, x + 1), zeros outside
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("k3", [27, 7])
def test_dcn3d_zero_offsets_equal_conv3d(k3: int) -> None:
    g = torch.Generator().manual_seed(2)
    b, c, groups, d, h, w = 1, 8, 2, 5, 6, 7
    v = torch.randn(b, c, d, h, w, generator=g)
    taps = kernel_taps_3d(k3)
    per_group = torch.rand(groups, k3, generator=g)
    mask = per_group.reshape(1, groups * k3, 1, 1, 1).expand(b, -1, d, h, w)
    offset = torch.zeros(b, groups * k3 * 3, d, h, w)
    got = deform_sample(v, offset, mask, torch.tensor(taps, dtype=torch.float32), groups)
    kernel = torch.zeros(groups, 3, 3, 3)
    for k, (dx, dy, dd) in enumerate(taps):
        kernel[:, dd + 1, dy + 1, dx + 1] = per_group[:, k]
    weight = kernel.repeat_interleave(c // groups, dim=0).unsqueeze(1)
    want = F.conv3d(v, weight, padding=1, groups=c)
    assert torch.allclose(got, want, atol=1e-5)


# ---- INN ------------------------------------------------------------------------------------
def test_bounded_exp_limits() -> None:
    s = torch.tensor([-1e4, 0.0, 1e4])
    assert torch.allclose(bounded_exp(s, "soft", 2.0), torch.tensor([math.exp(-2), 1, math.exp(2)]))
    assert torch.allclose(bounded_exp(s, "hard", 5.0), torch.tensor([math.exp(-5), 1, math.exp(5)]))


def test_inn_node_starts_as_identity_plus_additive_and_stays_finite() -> None:
    torch.manual_seed(0)
    nodes = torch.nn.Sequential(INNNode(16), INNNode(16))
    x = torch.randn(4, 16, 16, 16)
    # ρ and η are zero-initialised: z1 passes the affine coupling unchanged at init
    node = nodes[0]
    z1, z2 = node.shuffle(x).chunk(2, dim=1)
    z2 = z2 + node.phi(z1)
    assert torch.allclose(node(x), torch.cat([z1, z2], 1), atol=1e-6)
    target = 50.0 * torch.randn(4, 16, 16, 16)  # large targets push the log-scales up
    opt = torch.optim.Adam(nodes.parameters(), lr=1e-3)
    for _ in range(100):
        opt.zero_grad()
        loss = F.mse_loss(nodes(x), target)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in nodes.parameters())


# ---- MMD ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["paired", "linear", "rbf", "class"])
def test_mmd_zero_for_identical_positive_otherwise(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(2, 16, 24, 24, generator=g), dim=1)  # 1152 px > 1024 subsample
    labels = torch.randint(0, 3, (2, 384, 384), generator=g)
    labels[:, :16] = 255
    same = mmd_loss(z, z.clone(), kind=kind, labels=labels)
    assert same.item() == 0.0
    other = F.normalize(torch.randn(2, 16, 24, 24, generator=g) + 0.5, dim=1)
    diff = mmd_loss(z, other, kind=kind, labels=labels)
    assert diff.item() > 1e-4


def test_mmd_values_and_gradients() -> None:
    a = torch.tensor([[0.0, 0.0], [2.0, 0.0]], requires_grad=True)
    b = torch.tensor([[0.0, 3.0], [2.0, 4.0]])
    assert mmd_loss(a, b, "paired").item() == pytest.approx(3.5)  # mean(3, 4)
    assert mmd_loss(a, b, "linear").item() == pytest.approx(3.5**2)
    labels = torch.tensor([0, 255])
    assert mmd_loss(a, b, "class", labels=labels).item() == pytest.approx(9.0)
    z = torch.randn(5, 3, requires_grad=True)
    mmd_loss(z, z.detach().clone(), "paired").backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="unknown MMD kind"):
        mmd_loss(a, b, "cosine")


def test_ramp_weight() -> None:
    assert ramp_weight(0, 1000) == 0.0
    assert ramp_weight(25, 1000) == pytest.approx(0.05)
    assert ramp_weight(50, 1000) == pytest.approx(0.1)
    assert ramp_weight(900, 1000) == pytest.approx(0.1)
    assert ramp_weight(10, 100, lam=0.5, warmup=0.2) == pytest.approx(0.25)
    assert ramp_weight(0, 100, lam=0.3, warmup=0.0) == pytest.approx(0.3)


# ---- registry -------------------------------------------------------------------------------
def test_registry_names_and_unknown_name_lists_them() -> None:
    names = [e.name for e in list_models()]
    for n in (
        "mfafnet-s",
        "mfafnet-b",
        "comix-s",
        "comix-b",
        "comix-lite",
        "unet",
        "unet-optical",
        "unet-sar",
    ):
        assert n in names
    with pytest.raises(ModelError) as err:
        create_model("mfafnet-xl")
    for n in names:
        assert n in str(err.value)
    assert err.value.exit_code == 2


def test_registry_rejects_bad_modalities_and_config() -> None:
    with pytest.raises(ModelError, match="hsi"):
        create_model("mfafnet-s", {"hsi": 144})
    with pytest.raises(ModelError, match="invalid configuration"):
        create_model("unet", no_such_option=1)
    with pytest.raises(ModelError, match="invalid configuration"):
        create_model("comix-s", stem_stride=3)


def test_default_meta_and_divisors() -> None:
    meta = default_meta("mfafnet-s", {"optical": 3, "sar": 1}, num_classes=2)
    assert meta.modality_names == ("optical", "sar")
    assert meta.in_channels == {"optical": 3, "sar": 1}
    # untrained, 3 optical bands: positional (b1..b3 in file order), never assumed RGB (#18)
    assert meta.modality("optical").bands == ("b1", "b2", "b3")
    assert meta.num_classes == 2 and meta.divisor == 16 and not meta.trained
    m = default_meta("comix-s", {"hsi": 63}, num_classes=6, stem_stride=2)
    assert m.divisor == 16 and m.config == {"stem_stride": 2}
    assert m.modality("hsi").n_bands == 63 and m.modality("lidar").n_bands == 1
    assert default_meta("comix-b").divisor == 32
    assert create_model("comix-lite", stem_stride=2).divisor == 16
    assert create_model("unet-sar").modalities == ("sar",)


def test_default_classes_follow_the_entrys_own_task() -> None:
    """An untrained HSI+LiDAR model is not named after the optical+SAR water/WHU tasks."""
    from mfaf_cli.metadata import HOUSTON2013_CLASSES, WATER_CLASSES, WHU_CLASSES

    assert default_meta("mfafnet-s").classes == WATER_CLASSES
    assert default_meta("unet-sar", num_classes=8).classes == WHU_CLASSES
    n = len(HOUSTON2013_CLASSES)
    for name in ("comix-s", "unet-hsi-lidar"):
        assert default_meta(name).class_names == ["class-0", "class-1"]
        assert default_meta(name, num_classes=8).class_names == [f"class-{i}" for i in range(8)]
        assert default_meta(name, num_classes=n).classes == HOUSTON2013_CLASSES
    assert default_meta("unet", num_classes=n).class_names[0] == "class-0"

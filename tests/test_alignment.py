"""The MFAFNet alignment losses cannot be cheated, and the numerics survive mixed precision."""

from __future__ import annotations

import pytest
import torch

from mfaf_cli.models.losses import (
    embedding_cosine,
    feature_mmd,
    layer_normalised,
    mmd_loss,
    valid_samples,
    variance_hinge,
)
from mfaf_cli.models.mfafnet import LayerNorm2d
from mfaf_cli.registry import create_model


def _features(seed: int, shift: float = 0.0, shape=(2, 32, 8, 8)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(shape, generator=g)
    f[:, : shape[1] // 2] += shift  # a shift of half the channels survives LayerNorm
    return f


def test_feature_mmd_is_zero_for_identical_features_and_grows_with_a_shift() -> None:
    a = _features(0)
    assert float(feature_mmd(a, a.clone())) == 0.0
    values = [float(feature_mmd(a, _features(1, shift))) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values)
    assert values[0] < 0.1 < values[-1]


def test_a_constant_feature_map_cannot_reach_a_low_feature_mmd() -> None:
    a, b = _features(0), _features(1)
    const = torch.ones_like(a) * torch.linspace(-1, 1, a.shape[1]).view(1, -1, 1, 1)
    assert float(feature_mmd(const, b)) > 5 * float(feature_mmd(a, b))


def test_variance_hinge_costs_a_constant_embedding_one_and_a_spread_one_nothing() -> None:
    const = torch.ones(4, 16, 4, 4)
    assert float(variance_hinge(const)) == pytest.approx(1.0, abs=0.02)
    assert float(variance_hinge(3 * _features(0, shape=(4, 16, 4, 4)))) == 0.0


def test_the_collapsed_projection_of_the_old_paired_loss_is_now_expensive() -> None:
    # paired MMD alone scores a constant embedding 0; with the hinge its total is ≥ 1
    z = torch.nn.functional.normalize(torch.ones(2, 8, 4, 4), dim=1)
    assert float(mmd_loss(z, z, kind="paired")) == 0.0
    assert float(mmd_loss(z, z, kind="paired") + variance_hinge(torch.ones(2, 8, 4, 4))) > 0.9


def test_embedding_cosine_is_one_for_a_constant_embedding_and_small_for_noise() -> None:
    assert embedding_cosine(torch.ones(2, 8, 4, 4)) == pytest.approx(1.0)
    assert abs(embedding_cosine(_features(0))) < 0.1


def test_layer_normalised_samples_have_zero_mean_and_unit_variance() -> None:
    x = layer_normalised(_features(3) * 7 + 2)
    assert x.shape == (2 * 8 * 8, 32)
    assert torch.allclose(x.mean(1), torch.zeros(128), atol=1e-5)
    assert torch.allclose(x.var(1, unbiased=False), torch.ones(128), atol=1e-3)


def test_valid_samples_follows_the_nearest_downsampled_mask() -> None:
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    mask[0, :2] = 255
    assert valid_samples(mask, (2, 2), 255).tolist() == [False, False, True, True]


def test_feature_mmd_gradients_reach_both_encoders() -> None:
    model = create_model("mfafnet-s", {"optical": 3, "sar": 1}, 2).train()
    g = torch.Generator().manual_seed(0)
    opt, sar = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 1, 32, 32, generator=g)
    _, aux = model(opt, sar, return_aux=True)
    feature_mmd(*aux["deep"]).backward()
    for m in model.modalities:
        grad = model.encoders[m][3].hwd.conv.weight.grad
        assert grad is not None and grad.abs().sum() > 0, m
    assert model.align_proj[0].weight.grad is None  # head-free: the projection is not involved


def test_layernorm2d_stays_finite_in_fp16_beyond_256() -> None:
    ln = LayerNorm2d(8)
    x = torch.linspace(-3000, 3000, 8 * 16).view(1, 8, 4, 4)
    ref = ln(x)
    out = ln(x.half())
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    assert torch.allclose(out.float(), ref, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mfafnet_forward_under_cpu_autocast_is_finite(dtype: torch.dtype) -> None:
    model = create_model("mfafnet-s", {"optical": 3, "sar": 1}, 2).eval()
    g = torch.Generator().manual_seed(0)
    opt, sar = 400 * torch.randn(1, 3, 32, 32, generator=g), torch.randn(1, 1, 32, 32, generator=g)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            out = model(opt, sar)
    except RuntimeError as err:  # an op without a CPU kernel for this dtype
        pytest.skip(f"torch CPU autocast lacks {dtype}: {err}")
    assert torch.isfinite(out.float()).all()

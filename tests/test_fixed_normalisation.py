"""Fixed normalisation: exact maths, extent independence, the OMBRIA calibration, the jitter."""

from __future__ import annotations

import numpy as np
import pytest

from mfaf_cli.data.datasets import OMBRIA_TO_SENTINEL, to_sentinel_units
from mfaf_cli.metadata import Normalisation
from mfaf_cli.normalize import apply_normalisation, calibration_jitter, fixed_moments

NORM = Normalisation(
    "fixed", mean=(10.0, -12.0), std=(2.0, 4.0), clip_low=(0.0, -20.0), clip_high=(20.0, -4.0)
)


def test_fixed_mode_clips_then_standardises_exactly() -> None:
    x = np.array([[[-5.0, 0.0, 14.0, 99.0]], [[-30.0, -20.0, -8.0, 0.0]]], dtype=np.float32)
    out = apply_normalisation(x, NORM)
    assert out.tolist() == [[[-5.0, -5.0, 2.0, 5.0]], [[-2.0, -2.0, 1.0, 2.0]]]


def test_fixed_mode_of_a_crop_equals_the_crop_of_the_whole() -> None:
    rng = np.random.default_rng(0)
    scene = np.stack([rng.uniform(-5, 25, (64, 64)), rng.normal(-12, 5, (64, 64))]).astype("f4")
    whole = apply_normalisation(scene, NORM)
    assert np.array_equal(apply_normalisation(scene[:, 10:30, 40:], NORM), whole[:, 10:30, 40:])


def test_nan_becomes_zero_and_old_records_without_clip_still_load() -> None:
    old = Normalisation.from_dict({"mode": "fixed", "mean": [1.0], "std": [2.0]})
    assert old.clip_low is None
    x = np.array([[[np.nan, 5.0]]], dtype=np.float32)
    assert apply_normalisation(x, old).tolist() == [[[0.0, 2.0]]]
    assert Normalisation.from_dict(NORM.to_dict()) == NORM


def test_fixed_moments_clip_to_pooled_quantiles_before_the_moments() -> None:
    a = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    b = np.full((1, 10, 10), np.nan, dtype=np.float32)
    lo, hi, mean, std = fixed_moments([a, b], q_low=10, q_high=90)
    assert lo == [pytest.approx(9.9)] and hi == [pytest.approx(89.1)]
    ref = np.clip(np.arange(100.0), 9.9, 89.1)
    assert mean == [pytest.approx(ref.mean())] and std == [pytest.approx(ref.std())]


def test_ombria_pngs_map_to_sentinel_units_with_the_fitted_affine() -> None:
    png = np.array([[[0.0, 255.0]]] * 3, dtype=np.float32)
    out = to_sentinel_units("optical", png)
    for band, (scale, offset) in enumerate(OMBRIA_TO_SENTINEL["optical"]):
        assert out[band, 0].tolist() == pytest.approx([offset, 255 * scale + offset], rel=1e-6)
    # water-relevant ends stay physical: swir/nir of black water ≪ bright land
    assert out[1, 0, 0] < 500 < out[1, 0, 1]
    sar = to_sentinel_units("sar", np.array([[[0.0, 255.0]]], dtype=np.float32))
    assert -25 < sar[0, 0, 0] < -18 and -8 < sar[0, 0, 1] < 0  # dB


def test_calibration_jitter_is_identity_at_zero_and_keeps_nan_and_order() -> None:
    rng = np.random.default_rng(0)
    a = {"optical": np.linspace(0, 100, 50, dtype=np.float32).reshape(1, 5, 10)}
    a["optical"][0, 0, 0] = np.nan
    bounds = {"optical": (np.array([0.0]), np.array([100.0]))}
    assert calibration_jitter(a, bounds, rng, 0.0) is a
    out = calibration_jitter(a, bounds, rng, 0.25)["optical"]
    assert np.isnan(out[0, 0, 0]) and np.isfinite(out.reshape(-1)[1:]).all()
    flat = out.reshape(-1)[1:]
    assert (np.diff(flat) >= 0).all()  # monotone: a calibration change, not noise
    assert not np.allclose(flat, a["optical"].reshape(-1)[1:])

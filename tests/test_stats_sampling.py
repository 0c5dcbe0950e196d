"""Scene statistics from whole blocks spread over the scene (issue 19, item 5): a fixed cost
whatever the scene's size, and figures that match the full scene's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from mfaf_cli.coreg.align import AlignedScene
from mfaf_cli.coreg.grid import grid_from_reference
from mfaf_cli.coreg.sampling import SCENE_FRACTION, STATS_DECODE_PIXELS, sample_windows
from mfaf_cli.normalize import band_percentiles


def test_sample_cost_grows_at_most_linearly() -> None:
    s4, s8, s16 = (sample_windows(n, n) for n in (4096, 8192, 16384))
    assert s4.pixels_read == s8.pixels_read <= STATS_DECODE_PIXELS
    assert s16.pixels_read <= 16384**2 * SCENE_FRACTION
    assert s16.pixels_read / s4.pixels_read <= 16
    for r0, c0, h, w in s16.windows:  # whole 512² blocks, each decoded once
        assert r0 % 512 == 0 and c0 % 512 == 0 and (h, w) == (512, 512)
    rows = sorted({r for r, _, _, _ in s16.windows})
    cols = sorted({c for _, c, _, _ in s16.windows})
    # spread over the whole scene, not one corner
    assert rows[0] < 16384 / 4 and rows[-1] > 3 * 16384 / 4
    assert cols[0] < 16384 / 4 and cols[-1] > 3 * 16384 / 4
    assert s16.stride * s16.stride * 1_000_000 >= s16.pixels_read


def test_small_scene_is_read_whole_and_phase_is_kept() -> None:
    s = sample_windows(700, 1000, (128, 128, 100))
    assert s.pixels_read == 700 * 1000 and s.stride == 1
    assert s.to_dict()["fraction_read"] == 1.0
    assert sorted({c for _, c, _, _ in s.windows})[:2] == [0, 100]  # cut at block edges


def test_striped_files_take_whole_stripes() -> None:
    s = sample_windows(4096, 4096, (1, 4096, 0))
    assert all(w == 4096 and c == 0 for _, c, _, w in s.windows)
    assert s.pixels_read <= STATS_DECODE_PIXELS


def test_draws_are_the_seeded_generators_and_a_whole_sample_draws_nothing() -> None:
    """The lazily made generator gives what numpy's seeded one gives for the same ranges
    (one-value ranges draw nothing there either), so samples are as before; a sample of
    every unit (a small file's SAR units sample) never imports numpy.random (~10 ms)."""
    from mfaf_cli.coreg.sampling import SEED, _Draws

    ranges = [(0, 1), (3, 9), (5, 6), (0, 40), (7, 8), (2, 5)]
    ours, theirs = _Draws(), np.random.default_rng(SEED)
    assert [ours.integers(a, b) for a, b in ranges] == [
        int(theirs.integers(a, b)) for a, b in ranges
    ]
    code = (
        "import sys; from mfaf_cli.coreg.sampling import sample_windows; "
        "s = sample_windows(1024, 1024, (512, 512, 0), 4 * 512 * 512); "
        "assert s.pixels_read == 1024 * 1024, s; assert 'numpy.random' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _tiled(path: Path, data: np.ndarray, res: float) -> Path:
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1],
               "count": data.shape[0], "dtype": data.dtype.name, "crs": "EPSG:32630",
               "transform": from_origin(500_000.0, 4_500_000.0, res, res), "tiled": True,
               "blockxsize": 128, "blockysize": 128}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_percentiles_match_the_full_scene(tmp_path: Path, monkeypatch, seed: int) -> None:
    """A scene with structure (fields, a gradient across it) sampled as a run samples it,
    ~32 units (here a third of the scene): each band's 2/98 percentiles within 2 % of its
    full-scene stretch (a sample from one side would miss by ~10 %: the gradient).

    Not covered, and measured instead (README): a bright feature of a few % of the scene
    that holds the 98th percentile (towns over 3 %: up to 13 % off at 30 units)."""
    rng = np.random.default_rng(seed)
    n = 2560
    yy, xx = np.mgrid[0:n, 0:n]
    field = 1500 + 900 * np.sin(xx / 37.0) * np.cos(yy / 53.0) + 0.3 * xx
    opt = field[None] + rng.gamma(2.0, 150.0, (4, n, n))
    opt = np.clip(opt, 1, 65535).astype("uint16")
    sar = (-12 + 4 * np.sin(np.mgrid[0:n // 2, 0:n // 2][1] / 19.0)
           + rng.normal(0, 2.0, (n // 2, n // 2)))[None].astype("float32")  # fmt: skip
    o, s = _tiled(tmp_path / "o.tif", opt, 10.0), _tiled(tmp_path / "s.tif", sar, 20.0)
    monkeypatch.setattr("mfaf_cli.coreg.sampling.STATS_DECODE_PIXELS", 32 * 256 * 256)
    with AlignedScene({"optical": o, "sar": s}, grid_from_reference(o)) as scene:
        pct = scene.percentiles()
        record = scene.stats_sampling
        full_sar, _ = scene.read(rasterio.windows.Window(0, 0, n, n))
    assert record["windows"] == 30 and record["fraction_read"] == pytest.approx(0.3)
    for name, full in (("optical", opt.astype("float32")), ("sar", full_sar["sar"])):
        lo, hi = band_percentiles(full, None, 2.0, 98.0)
        tol = 0.02 * (hi - lo)
        assert np.all(np.abs(pct[name][0] - lo) <= tol), (name, pct[name][0], lo)
        assert np.all(np.abs(pct[name][1] - hi) <= tol), (name, pct[name][1], hi)

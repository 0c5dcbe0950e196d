"""Untagged fill values and impossible values are nodata, never a class; --nodata MOD=VALUE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import EXAMPLES, write_geotiff

from mfaf_cli.coreg.validity import SAR_DB_RANGE, Limits, parse_nodata
from mfaf_cli.errors import UsageError

CHIP = EXAMPLES / "sen1floods11"
N, STRIP = 128, 16  # a 128 × 128 crop of the real chip; 16 fill columns per input


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """S2 with its first 16 columns 0 and S1 with its last 16 columns -9999, neither tagged."""
    folder = tmp_path_factory.mktemp("fill")
    out = []
    for name, value, cols in (("S2", 0, slice(0, STRIP)), ("S1", -9999, slice(N - STRIP, N))):
        with rasterio.open(CHIP / f"{name}.tif") as ds:
            arr = ds.read(window=((0, N), (0, N)))
            t, desc = ds.transform, [d or "" for d in ds.descriptions]
        assert np.isfinite(arr).all() and (arr != 0).any(axis=0).all()  # no fill of its own
        arr[:, :, cols] = value
        out.append(write_geotiff(folder / f"{name}.tif", arr, "EPSG:4326", t, None, desc))
    return out[0], out[1]


@pytest.mark.parametrize("flags", [(), ("--nodata", "optical=0", "--nodata", "sar=-9999")])
def test_untagged_fill_strips_are_nodata_not_water(filled, runner, tmp_path, caplog, flags) -> None:
    s2, s1 = filled
    out = tmp_path / "map.tif"
    code, _, err = runner("predict", "--optical", s2, "--sar", s1, "-o", out, "--engine", "torch",
                          "--quiet", "--no-fallback", *flags)  # fmt: skip
    assert code == 0, err
    with rasterio.open(out) as ds:
        labels = ds.read(1)
    assert (labels[:, :STRIP] == 255).all() and (labels[:, N - STRIP :] == 255).all()
    assert (labels[:, STRIP : N - STRIP] != 255).all()
    warnings = [r.getMessage() for r in caplog.records if "treated as nodata" in r.getMessage()]
    if flags:  # the user said what the fill is: nothing impossible is left to report
        assert warnings == []
    else:  # one line per input, each fill pixel counted once
        assert len(warnings) == 2
        assert (
            f"optical S2.tif: {N * STRIP:,} pixels" in warnings[0] and "Sentinel-2" in warnings[0]
        )
        assert f"sar S1.tif: {N * STRIP:,} pixels" in warnings[1] and "-60..40" in warnings[1]


def test_optical_fill_is_mapped_by_the_default_models_fallback(filled, runner, tmp_path) -> None:
    """The shipped default falls back for missing optical (manifest ``fallbacks``): the optical
    fill strip is mapped from the SAR and marked SAR-only; the SAR fill strip, seen by no
    model that maps it, stays nodata."""
    s2, s1 = filled
    out, src = tmp_path / "map.tif", tmp_path / "source.tif"
    code, _, err = runner("predict", "--optical", s2, "--sar", s1, "-o", out, "--engine", "torch",
                          "--quiet", "--source", src)  # fmt: skip
    assert code == 0, err
    with rasterio.open(out) as ds, rasterio.open(src) as ss:
        labels, source = ds.read(1), ss.read(1)
    assert (labels[:, :STRIP] != 255).all() and (source[:, :STRIP] == 2).all()  # SAR-only
    assert (labels[:, N - STRIP :] == 255).all() and (source[:, N - STRIP :] == 0).all()
    assert (source[:, STRIP : N - STRIP] == 1).all()  # fused


def test_limits_count_each_source_pixel_once() -> None:
    lim = Limits(*SAR_DB_RANGE, "dB", shape=(10, 20))
    raw = np.full((1, 4, 6), -10.0, dtype=np.float32)
    raw[0, 1, 2:5] = -9999.0  # 3 impossible pixels
    raw[0, 3, 0] = 55.0  # 1 more
    for place in ((0, 0), (0, 0), (2, 7)):  # the same block read twice, then elsewhere
        bad = lim.invalid(raw, place)
    assert bad.sum() == 4 and lim.count == 8
    valid = np.ones((4, 6), dtype=bool)
    valid[1, 2:5] = False  # already nodata (e.g. --nodata): dropped, not counted again
    lim.invalid(raw, (5, 12), valid)
    assert lim.count == 9
    assert "9 pixels" in (lim.warning("sar", "s1.tif") or "")


def test_parse_nodata() -> None:
    assert parse_nodata(["sar=-9999", "Optical = 0"]) == {"sar": -9999.0, "optical": 0.0}
    assert np.isnan(parse_nodata(["sar=nan"])["sar"])
    for bad in ("sar", "=3", "sar=minus one"):
        with pytest.raises(UsageError, match="give MODALITY=VALUE"):
            parse_nodata([bad])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ("--nodata", "lidar=3"),
            "--nodata lidar=...: no lidar input is given (inputs: optical, sar)",
        ),
        (("--nodata", "sar"), "give MODALITY=VALUE"),
    ],
)
def test_bad_nodata_is_one_line_and_writes_nothing(filled, runner, tmp_path, flags, message):
    s2, s1 = filled
    out = tmp_path / "map.tif"
    code, _, err = runner("predict", "--optical", s2, "--sar", s1, "-o", out, *flags)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_coregister_nodata_override(filled, runner, tmp_path) -> None:
    s2, s1 = filled
    code, _, err = runner("coregister", "--optical", s2, "--sar", s1, "-o", tmp_path / "co",
                          "--nodata", "sar=-9999", "--quiet")  # fmt: skip
    assert code == 0, err
    with rasterio.open(tmp_path / "co" / "sar.tif") as ds:
        sar = ds.read(1, masked=True)
    assert sar.mask[:, N - STRIP :].all() and not sar.mask[:, : N - STRIP].any()

"""Opening a user's raster (mfaf_cli/io/inputs.py): one wording for every command."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from mfaf_cli.errors import CRSError, InputError
from mfaf_cli.io.inputs import open_raster


@pytest.fixture
def bad(tmp_path: Path, make_geotiff) -> dict[str, Path]:
    """Good, CRS-less and broken files (each broken in one way)."""
    rng = np.random.default_rng(0)
    good = make_geotiff("good.tif", rng.integers(0, 3000, (4, 200, 200)).astype("int16"))
    p = {"good": good, "dir": tmp_path / "folder", "missing": tmp_path / "missing.tif"}
    p["dir"].mkdir()
    p["nocrs"] = make_geotiff("nocrs.tif", np.ones((8, 8), "uint8"), crs=None)
    p["empty"] = tmp_path / "empty.tif"
    p["empty"].write_bytes(b"")
    p["garbage"] = tmp_path / "notes.tif"
    p["garbage"].write_text("not a GeoTIFF\n" * 20)
    p["truncated"] = tmp_path / "truncated.tif"
    p["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return p


@pytest.mark.parametrize(
    ("case", "error", "text"),
    [
        ("missing", InputError, "sar file {path} does not exist; check the path"),
        ("dir", InputError, "sar {path} is a directory; pass a raster file"),
        ("empty", InputError, "sar {path} is an empty (zero-byte) file, not a readable raster"),
        ("garbage", InputError, "sar {path} is not a readable raster ("),
        ("truncated", InputError, "{path} is truncated or corrupt (reading its pixels failed"),
        ("nocrs", CRSError, "sar {path} has no CRS; assign one with gdal_edit.py -a_srs"),
    ],
)
def test_each_problem_names_the_file_and_the_fix(bad, case, error, text) -> None:
    with pytest.raises(error) as info:
        open_raster(bad[case], "sar")
    msg = str(info.value)
    assert text.format(path=bad[case]) in msg and "\n" not in msg
    if case != "nocrs":
        assert type(info.value) is InputError  # not a CRSError for a file that is merely broken


def test_crs_optional_for_callers_that_describe_it(bad, tmp_path: Path) -> None:
    with open_raster(bad["nocrs"], require_crs=False) as ds:
        assert ds.crs is None and ds.count == 1
    # a plain image (no CRS, no geotransform): rasterio would warn; the caller reports it
    plain = tmp_path / "plain.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            plain, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8"
        ) as d:
            d.write(np.ones((1, 8, 8), "uint8"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_raster(plain, require_crs=False) as ds:
            assert ds.crs is None and ds.transform.is_identity
    with pytest.warns(NotGeoreferencedWarning), pytest.raises(CRSError) as info:
        open_raster(plain)  # require_crs (default): the warning is not hidden, then the error
    assert f"input {plain} has no CRS; assign one" in str(info.value)
    with pytest.raises(InputError, match="truncated or corrupt"):  # still probed
        open_raster(bad["truncated"], require_crs=False)
    with open_raster(bad["good"], "optical") as ds:
        assert ds.crs.to_epsg() == 32630 and ds.shape == (200, 200)


@pytest.mark.parametrize("case", ["empty", "truncated", "missing"])
def test_every_command_words_a_broken_input_the_same(bad, tmp_path: Path, runner, case) -> None:
    """info, vectorize, evaluate and predict all report through io.inputs (exit code 1)."""
    path = bad[case]
    out = tmp_path / "out"
    out.mkdir()
    runs = {
        "input": ["info", path],
        "label raster": ["vectorize", path, "-o", out / "v.gpkg"],
        "truth": ["evaluate", bad["good"], "--truth", path],
        "sar": [
            *("predict", "--model", "mfafnet-s", "--optical", bad["good"], "--sar", path),
            *("-o", out / "p.tif", "-q"),
        ],
    }
    want = {
        "empty": "{what} {path} is an empty (zero-byte) file, not a readable raster",
        "truncated": "{path} is truncated or corrupt (reading its pixels failed",
        "missing": "{what} file {path} does not exist; check the path",
    }[case]
    for what, args in runs.items():
        code, stdout, err = runner(*args)
        assert code == 1 and stdout == "", (args, err)
        assert want.format(what=what, path=path) in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("Error: ")
    assert not list(out.iterdir())

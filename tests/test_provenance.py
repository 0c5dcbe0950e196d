"""Every map says how it was made (tags and --json); --stac-item describes it for catalogues."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import rasterio
from conftest import EXAMPLES

from mfaf_cli import __version__
from mfaf_cli.pipeline.provenance import TAG, acquisition_date
from mfaf_cli.pipeline.stac import CLASSIFICATION

CHIP = EXAMPLES / "sen1floods11"


def test_acquisition_date_from_tags_and_names() -> None:
    assert acquisition_date("x.tif", {"TIFFTAG_DATETIME": "2023:04:15 10:30:21"}) == {
        "date": "2023-04-15T10:30:21Z", "from": "tag TIFFTAG_DATETIME",
    }  # fmt: skip
    name = "S2A_MSIL2A_20230415T103021_N0509_R108_T30SWJ.tif"
    assert acquisition_date(name, {}) == {"date": "2023-04-15T10:30:21Z", "from": "file name"}
    assert acquisition_date("s1_2023-04-16.tif", {})["date"] == "2023-04-16"  # type: ignore[index]
    assert acquisition_date("scene_7370579.tif", {}) is None  # an id, not a date
    assert acquisition_date("S2.tif", {"DATETIME": "not a date"}) is None


@pytest.fixture(scope="module")
def dated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The chip with a Sentinel-2 style dated name, and its S1 with a TIFF date tag."""
    folder = tmp_path_factory.mktemp("dated")
    s2 = shutil.copy(CHIP / "S2.tif", folder / "S2A_MSIL1C_20190615T105031_chip.tif")
    s1 = Path(shutil.copy(CHIP / "S1.tif", folder / "s1.tif"))
    with rasterio.open(s1, "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="2019:06:17 06:12:00")
    return Path(s2), s1


def test_provenance_in_tags_json_and_stac_item(dated, runner, tmp_path) -> None:
    s2, s1 = dated
    out = tmp_path / "map.tif"
    flags = ("--json", "--quiet", "--engine", "torch", "--tile", 128, "--stac-item",
             "--confidence", tmp_path / "conf.tif")  # fmt: skip
    code, stdout, err = runner("predict", "--optical", s2, "--sar", s1, "-o", out, *flags)
    assert code == 0, err
    result = json.loads(stdout)
    with rasterio.open(out) as ds:
        tags = ds.tags()
    record = json.loads(tags[TAG])
    assert record == result["provenance"]
    with rasterio.open(tmp_path / "conf.tif") as ds:  # every raster output carries it
        assert json.loads(ds.tags()[TAG]) == record
    assert record["mfaf_version"] == __version__ and record["time"].endswith("Z")
    assert record["model"]["sha256"] == tags["WEIGHTS_SHA256"] and record["model"]["trained"]
    assert record["inference"]["tile"] == 128 and record["inference"]["engine"] == "torch"
    opt, sar = record["inputs"]["optical"], record["inputs"]["sar"]
    assert opt["path"] == str(s2) and opt["bands"]["indexes"] == [13, 8, 4]
    assert opt["acquired"] == {"date": "2019-06-15T10:50:31Z", "from": "file name"}
    assert sar["acquired"] == {"date": "2019-06-17T06:12:00Z", "from": "tag TIFFTAG_DATETIME"}

    item_path = tmp_path / "map.stac-item.json"
    assert result["outputs"]["stac_item"] == str(item_path)
    item = json.loads(item_path.read_text())
    assert CLASSIFICATION in item["stac_extensions"] and item["id"] == "map"
    props = item["properties"]
    assert props["datetime"] is None and props["start_datetime"] == "2019-06-15T10:50:31Z"
    assert props["end_datetime"] == "2019-06-17T06:12:00Z" and props["proj:epsg"] == 4326
    assert props["mfaf:provenance"] == record
    label = item["assets"]["label"]
    assert label["href"] == "./map.tif" and item["assets"]["confidence"]["href"] == "./conf.tif"
    assert label["classification:classes"] == [
        {"value": 0, "name": "not-water", "color_hint": "E1DCC8"},
        {"value": 1, "name": "water", "color_hint": "1E5AC8"},
    ]
    with rasterio.open(CHIP / "S2.tif") as ds:
        b = ds.bounds
    assert item["bbox"] == pytest.approx([b.left, b.bottom, b.right, b.top])


def test_stac_item_needs_the_label_map(runner, tmp_path) -> None:
    code, _, err = runner("predict", "--optical", CHIP / "S2.tif", "--sar", CHIP / "S1.tif",
                          "--confidence", tmp_path / "c.tif", "--stac-item")  # fmt: skip
    assert code == 2 and "--stac-item describes the label map" in err
    assert list(tmp_path.iterdir()) == []

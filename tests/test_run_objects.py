"""The run's three objects (what to read, how to infer, what to write): checked once where
built, with the same one-line errors as the keywords gave; frozen; and the keyword form of
predict is the same run as the objects."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import write_geotiff
from test_predict import UTM, PixelPredictor, make_pair, pixel_meta

from mfaf_cli.errors import MfafError, UsageError
from mfaf_cli.pipeline.predict import coregister, predict, run_objects
from mfaf_cli.pipeline.read_spec import ReadSpec
from mfaf_cli.pipeline.spec import InferenceSpec
from mfaf_cli.pipeline.write_spec import WriteSpec

INPUTS = {"optical": "s2.tif", "sar": "s1.tif"}


@pytest.mark.parametrize(
    ("kw", "msg"),
    [({"inputs": {"optical": "a.tif"}, "bands": {"sar": [1]}},
      "--sar-bands is given but there is no --sar input"),
     ({"aoi": "field.geojson", "bounds": (0, 0, 10, 10)}, "--aoi and --bounds both"),
     ({"sar_units": "dbz"}, "SAR units must be auto, db or linear"),
     ({"resolution": -10.0}, "--resolution must be positive"),
     ({"resolution": (10.0, float("nan"))}, "--resolution must be positive"),
     ({"bounds": (10, 0, 0, 10)}, "--bounds .* is empty"),
     ({"crs": "EPSG:99999999"}, "--crs 'EPSG:99999999' is not a valid CRS"),
     ({"inputs": {"optical": "a.tif"}, "nodata": {"sar": 0}}, "--nodata sar=...: no sar input")],
)  # fmt: skip
def test_read_spec_rejects_bad_values(kw: dict, msg: str) -> None:
    with pytest.raises(UsageError, match=msg) as err:
        ReadSpec(**kw)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [({}, "nothing to write: give -o/--output"),
     ({"probabilities": None, "vector": "map.gpkg", "confidence": "c.tif"},
      "--vector polygonises the label map: give -o/--output too"),
     ({"label": "a.tif", "probabilities": "a.tif"},
      "--probabilities a.tif is also the -o/--output path"),
     ({"label": "a.tif", "exclusion": "a.tif"}, "--exclusion a.tif is also the -o/--output"),
     ({"exclusion": "x.tif"}, "nothing to write"),
     ({"confidence": "c.tif", "preview": "p.png"},
      "--preview shows the label map: give -o/--output too"),
     ({"label": "a.tif", "probabilities_dtype": "float16"},
      "probability dtype must be uint8 or float32, got 'float16'"),
     ({"label": "a.tif", "confidence_kind": "margin"},
      "confidence kind must be top or entropy, got 'margin'"),
     ({"label": "a.tif", "creation_options": {"COMPRESS": "NOPE"}}, "COMPRESS")],
)  # fmt: skip
def test_write_spec_rejects_bad_values(kw: dict, msg: str) -> None:
    with pytest.raises(UsageError, match=msg) as err:
        WriteSpec(**kw)
    assert "\n" not in str(err.value)


def test_templates_need_no_paths_and_fill_them_in() -> None:
    """Batch mode's template: the options without paths; a scene's copy is checked again."""
    template = WriteSpec(cog=True, overwrite=True, template=True)
    scene = template.for_paths(label="a.tif", vector="a.gpkg")
    assert scene.cog and scene.overwrite and scene.label == "a.tif"
    with pytest.raises(UsageError, match="also the -o/--output path"):
        template.for_paths(label="a.tif", confidence="a.tif")
    read = ReadSpec(bands={"optical": ["B12", "B8", "B4"], "sar": ["VV"]}, sar_units="db")
    row = read.with_inputs({"optical": "r.tif"}, {"optical": [4, 3, 2]})
    assert dict(row.bands) == {"optical": (4, 3, 2)} and row.sar_units == "db"


@pytest.mark.parametrize(
    ("obj", "name"),
    [(ReadSpec(inputs=INPUTS), "inputs"), (ReadSpec(), "crs"), (InferenceSpec(), "tile"),
     (WriteSpec(label="a.tif"), "overwrite")],
)  # fmt: skip
def test_objects_are_frozen(obj: object, name: str) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, name, None)


def test_mappings_inside_are_read_only_copies() -> None:
    inputs = {"optical": ["b4.tif", "b8.tif"], "sar": "s1.tif"}
    bands = {"optical": [4, 8]}
    co = {"COMPRESS": "ZSTD"}
    read = ReadSpec(inputs=inputs, bands=bands)
    write = WriteSpec(label="a.tif", creation_options=co)
    inputs["hsi"] = "h.tif"
    bands["optical"].append(2)
    co["COMPRESS"] = "LZW"
    assert set(read.inputs) == {"optical", "sar"} and read.inputs["optical"] == ("b4.tif", "b8.tif")
    assert read.bands["optical"] == (4, 8)
    assert write.creation_options == {"COMPRESS": "ZSTD"}
    with pytest.raises(TypeError):
        read.inputs["lidar"] = "l.tif"  # type: ignore[index]
    with pytest.raises(TypeError):
        write.creation_options["ZSTD_LEVEL"] = "9"  # type: ignore[index]


def test_keywords_go_to_the_object_with_that_field() -> None:
    read, write, spec = run_objects(
        INPUTS, "map.tif", None,
        {"bands": {"sar": ["VV"]}, "tile": 64, "overwrite": True, "probabilities": "p.tif"},
    )  # fmt: skip
    assert read == ReadSpec(inputs=INPUTS, bands={"sar": ["VV"]})
    assert write == WriteSpec(label="map.tif", probabilities="p.tif", overwrite=True)
    assert spec == InferenceSpec(tile=64)
    given = InferenceSpec(tile=32, overlap=0.5)
    assert run_objects(read, write, given, {"blend": "cosine"})[2] == InferenceSpec(
        tile=32, overlap=0.5, blend="cosine"
    )
    with pytest.raises(TypeError, match="tiles"):
        run_objects(INPUTS, "map.tif", None, {"tiles": 64})
    with pytest.raises(UsageError, match="--batch-size"):
        run_objects(INPUTS, "map.tif", None, {"batch_size": 0})
    with pytest.raises(TypeError, match="coregister runs no model"):
        coregister(INPUTS, "aligned", tile=64)


def test_keyword_and_object_forms_are_one_run(make_geotiff, rng, tmp_path: Path) -> None:
    """README's keyword call and the three objects write the same map."""
    opt, sar = make_pair(make_geotiff, rng, 40, 50)
    pp = PixelPredictor(pixel_meta())
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    ra = predict({"optical": opt, "sar": sar}, a, predictor=pp, tile=32, overlap=0.5,
                 confidence=tmp_path / "ca.tif", progress=False)  # fmt: skip
    rb = predict(
        ReadSpec(inputs={"optical": opt, "sar": sar}),
        WriteSpec(label=b, confidence=tmp_path / "cb.tif"),
        spec=InferenceSpec(tile=32, overlap=0.5),
        predictor=pp,
        progress=False,
    )
    for x, y in ((a, b), (tmp_path / "ca.tif", tmp_path / "cb.tif")):
        with rasterio.open(x) as p, rasterio.open(y) as q:
            np.testing.assert_array_equal(p.read(), q.read())
    assert (ra.windows, ra.tile, ra.overlap) == (rb.windows, rb.tile, rb.overlap) == (
        ra.windows, 32, 0.5)  # fmt: skip


def test_cli_errors_stay_one_line(runner, tmp_path: Path) -> None:
    """A bad value of each object through the CLI: one ``Error:`` line, exit 2, no file."""
    opt = write_geotiff(tmp_path / "o.tif", np.ones((4, 8, 8), "float32"), transform=UTM)
    sar = write_geotiff(tmp_path / "s.tif", np.ones((1, 8, 8), "float32"), transform=UTM)
    out = tmp_path / "m.tif"
    base = ("predict", "--optical", opt, "--sar", sar, "-o", out)
    for extra, msg in (
        (("--probabilities", out), "is also the -o/--output path"),
        (("--overlap", "1.5"), "overlap"),
        (("--co", "COMPRESS=NOPE"), "COMPRESS"),
        (("--aoi", tmp_path / "f.geojson", "--bounds", "0,0,1,1"), "--aoi and --bounds"),
    ):
        code, _, err = runner(*base, *extra)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2, err
        assert len(lines) == 1 and lines[0].startswith("Error:") and msg in lines[0], err
        assert not out.exists()


def test_errors_are_mfaf_errors() -> None:
    for make in (lambda: ReadSpec(sar_units="x"), lambda: WriteSpec(),
                 lambda: InferenceSpec(threads=0)):  # fmt: skip
        with pytest.raises(MfafError):
            make()

"""Cloud-native inputs (issue 27): COGs over HTTP, STAC items, mosaics and areas of interest.

Everything is offline: ``cloud_server.serve`` serves COGs made from the examples/ crop
(Sen1Floods11, Spain) on 127.0.0.1 and honours Range requests; STAC items point at it. A
small numpy predictor with spatial context (a 3×3 mean of a band mix) stands in for the
model, so runs take a fraction of a second and window effects still show.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from cloud_server import serve
from rasterio.windows import Window

from mfaf_cli.errors import InputError, MfafError
from mfaf_cli.metadata import WATER_CLASSES, ModalitySpec, ModelMeta, Normalisation
from mfaf_cli.pipeline.predict import predict

EX = Path(__file__).resolve().parents[1] / "examples" / "sen1floods11"
OPTICAL = {"B04": 4, "B08": 8, "B12": 13}  # band → 1-based band of examples' S2.tif
BANDS = {"optical": ["B12", "B8", "B4"], "sar": ["VV"]}
TILE = 32


class BoxPredictor:
    """Water where a 3×3 mean of (NIR - SWIR)/1000 + (VV + 15)/5 is below 0: per-window
    context, so a window cut differently would change pixels at its edges."""

    device = "cpu"
    engine = "numpy"
    precision = "fp32"

    def __init__(self) -> None:
        fixed = Normalisation.identity
        self.meta = ModelMeta(
            arch="box", classes=WATER_CLASSES, tile_size=TILE, trained=True,
            modalities=(ModalitySpec("optical", ("swir", "nir", "red"), fixed(3, "fixed")),
                        ModalitySpec("sar", ("vv",), fixed(1, "fixed"), units="db")),
        )  # fmt: skip

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        opt, sar = np.nan_to_num(batch["optical"]), np.nan_to_num(batch["sar"])
        score = (opt[:, 1] - opt[:, 0]) / 1000 + (sar[:, 0] + 15) / 5
        pad = np.pad(score, ((0, 0), (1, 1), (1, 1)), mode="edge")
        box = sum(pad[:, i : i + score.shape[1], j : j + score.shape[2]]
                  for i in range(3) for j in range(3)) / 9  # fmt: skip
        p = 1 / (1 + np.exp(-box))
        return np.stack([p, 1 - p], axis=1).astype(np.float32)


# ---- data: COGs, items, the server ---------------------------------------------------------
def _cog(dst: Path, src: Path, bands: list[int], cols: tuple[int, int] = (0, 384),
         spoil: tuple[int, int] | None = None) -> None:  # fmt: skip
    """A COG of ``bands`` of ``src``, columns ``cols``; ``spoil`` columns get wrong values."""
    with rasterio.open(src) as ds:
        win = Window(cols[0], 0, cols[1] - cols[0], ds.height)
        data = ds.read(bands, window=win)
        if spoil is not None:
            data[:, :, spoil[0] - cols[0] : spoil[1] - cols[0]] = 77
        prof = {"driver": "COG", "width": data.shape[2], "height": data.shape[1],
                "count": len(bands), "dtype": data.dtype.name, "crs": ds.crs,
                "transform": ds.window_transform(win), "nodata": ds.nodata, "blocksize": 32,
                "compress": "deflate", "overviews": "NONE"}  # fmt: skip
        descriptions = [ds.descriptions[b - 1] for b in bands]
    with rasterio.open(dst, "w", **prof) as out:
        out.write(data)
        for k, d in enumerate(descriptions, start=1):
            out.set_band_description(k, d or "")


def _item(iid: str, when: str, assets: dict[str, tuple[str, str | None]]) -> dict[str, Any]:
    """A STAC item; ``assets``: key → (href, eo:bands common name or None for SAR)."""
    out = {}
    for key, (href, common) in assets.items():
        a: dict[str, Any] = {"href": href, "type": "image/tiff; application=geotiff",
                             "roles": ["data"]}  # fmt: skip
        if common:
            name = key.upper() if key.startswith("B") else ""
            a["eo:bands"] = [{"name": name, "common_name": common}]
        out[key] = a
    out["thumbnail"] = {"href": "thumb.jpg", "type": "image/jpeg", "roles": ["thumbnail"]}
    return {"type": "Feature", "stac_version": "1.0.0", "id": iid, "geometry": None,
            "properties": {"datetime": when}, "assets": out}  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The served folder: whole-scene COGs, one COG per band, two overlapping halves (the
    older one spoiled where they overlap, so only "most recent wins" gives the scene)."""
    r = tmp_path_factory.mktemp("served")
    _cog(r / "S2.tif", EX / "S2.tif", list(range(1, 14)))
    _cog(r / "S1.tif", EX / "S1.tif", [1, 2])
    for name, b in OPTICAL.items():
        _cog(r / f"{name}.tif", EX / "S2.tif", [b])
        _cog(r / f"W_{name}.tif", EX / "S2.tif", [b], (0, 224), spoil=(160, 224))
        _cog(r / f"E_{name}.tif", EX / "S2.tif", [b], (160, 384))
    _cog(r / "VV.tif", EX / "S1.tif", [1])
    _cog(r / "W_VV.tif", EX / "S1.tif", [1], (0, 224), spoil=(160, 224))
    _cog(r / "E_VV.tif", EX / "S1.tif", [1], (160, 384))
    _mirrored_cog(r / "big_S2.tif", EX / "S2.tif", [4, 8, 13])
    _mirrored_cog(r / "big_S1.tif", EX / "S1.tif", [1])
    return r


def _mirrored_cog(dst: Path, src: Path, bands: list[int]) -> None:
    """A 768² COG: the crop and its mirror images, 2 × 2 (a scene whose sixteenth is larger
    than the read granularity of 32² tiles and 16 KiB HTTP chunks)."""
    with rasterio.open(src) as ds:
        a = ds.read(bands)
        prof = {"driver": "COG", "width": 2 * ds.width, "height": 2 * ds.height,
                "count": len(bands), "dtype": a.dtype.name, "crs": ds.crs,
                "transform": ds.transform, "nodata": ds.nodata, "blocksize": 32,
                "compress": "deflate", "overviews": "NONE"}  # fmt: skip
    top = np.concatenate([a, a[:, :, ::-1]], axis=2)
    with rasterio.open(dst, "w", **prof) as out:
        out.write(np.concatenate([top, top[:, ::-1]], axis=1))


@pytest.fixture(scope="module")
def server(root: Path) -> Any:
    with serve(root, stall_s=6.0) as s:
        yield s


@pytest.fixture(scope="module")
def predictor() -> BoxPredictor:
    return BoxPredictor()


def _run(inputs: dict[str, Any], out: Path, predictor: Any, **kw: Any) -> np.ndarray:
    opts = {"bands": BANDS} | kw
    predict(inputs, out, predictor=predictor, tile=TILE, progress=False, read_threads=1, **opts)
    with rasterio.open(out) as ds:
        return ds.read(1)


@pytest.fixture(scope="module")
def local_map(tmp_path_factory: pytest.TempPathFactory, predictor: BoxPredictor) -> np.ndarray:
    out = tmp_path_factory.mktemp("local") / "map.tif"
    return _run({"optical": EX / "S2.tif", "sar": EX / "S1.tif"}, out, predictor)


# ---- runs from URLs and items equal the local-file run ----------------------------------
def test_urls_give_the_local_run_pixel_for_pixel(
    server: Any, tmp_path: Path, predictor: Any, local_map: np.ndarray
) -> None:
    from rasterio.env import get_gdal_config

    url = f"{server.url}/urls"
    label = _run({"optical": f"{url}/S2.tif", "sar": f"{url}/S1.tif"}, tmp_path / "m.tif",
                 predictor)  # fmt: skip
    assert (label == local_map).all() and (local_map != 255).mean() > 0.9
    assert get_gdal_config("GDAL_HTTP_LOW_SPEED_TIME") is None, "HTTP settings outlived the run"


def test_items_give_the_local_run_and_say_which_asset_served_which_band(
    server: Any, root: Path, tmp_path: Path, predictor: Any, local_map: np.ndarray
) -> None:
    url = f"{server.url}/items"
    # Earth Search style (red/nir/swir22 + eo:bands), hrefs relative to the item's URL
    optical = _item("S2A_30SXH_20190919", "2019-09-19T11:00:00Z", {
        "red": ("B04.tif", "red"), "nir": ("B08.tif", "nir"), "swir22": ("B12.tif", "swir22"),
        "red-jp2": ("B04.jp2", "red")})  # fmt: skip
    (root / "optical-item.json").write_text(json.dumps(optical))
    sar = _item("S1B_IW_20190918", "2019-09-18T18:00:00Z", {"vv": (f"{url}/VV.tif", None)})
    (tmp_path / "sar.json").write_text(json.dumps(sar))  # a local item with URL hrefs
    res = predict({"optical": f"{url}/optical-item.json", "sar": str(tmp_path / "sar.json")},
                  tmp_path / "m.tif", predictor=predictor, tile=TILE, progress=False,
                  read_threads=1)  # fmt: skip
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert (ds.read(1) == local_map).all()
    assert res.inputs["optical"] == f"B12={url}/B12.tif;B8={url}/B08.tif;B4={url}/B04.tif"
    assert res.inputs["sar"] == f"VV={url}/VV.tif"
    assert res.bands["optical"]["descriptions"] == ["B12", "B8", "B4"]


def test_two_items_split_down_the_middle_mosaic_to_the_whole_scene(
    server: Any, tmp_path: Path, local_map: np.ndarray, runner: Any, box_model: None
) -> None:
    """--stac with a west and an east item per modality (Planetary Computer keys); the older
    west items are spoiled where they overlap the east ones, so the newer must win."""
    url = f"{server.url}/mosaic"

    def s2(side: str, when: str) -> dict[str, Any]:
        return _item(
            f"S2_{side}",
            when,
            {
                b: (f"{url}/{side}_{b}.tif", c)
                for b, c in (("B04", "red"), ("B08", "nir"), ("B12", "swir22"))
            },
        )

    def s1(side: str, when: str) -> dict[str, Any]:
        return _item(f"S1_{side}", when, {"vv": (f"{url}/{side}_VV.tif", None)})

    items = [s2("W", "2019-09-14T11:00:00Z"), s2("E", "2019-09-19T11:00:00Z"),
             s1("W", "2019-09-12T18:00:00Z"), s1("E", "2019-09-18T18:00:00Z")]  # fmt: skip
    stac = tmp_path / "items.json"
    stac.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    code, out, err = runner("predict", "--stac", stac, "-o", tmp_path / "m.tif", "--tile",
                            TILE, "-q", "--json")  # fmt: skip
    assert code == 0, err
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert ds.shape == local_map.shape
        assert (ds.read(1) == local_map).all()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["inputs"]["sar"] == f"VV={url}/E_VV.tif|{url}/W_VV.tif"


@pytest.fixture
def box_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI runs :class:`BoxPredictor` instead of loading a model."""
    import importlib

    module = importlib.import_module("mfaf_cli.pipeline.predict")
    monkeypatch.setattr(module, "_predictor_for", lambda *a, **k: (BoxPredictor(), "box", True))


# ---- an area of interest reads a fraction of the bytes ----------------------------------
def _aoi_file(path: Path) -> Path:
    """A polygon over rows/cols 288..480 of the 768² scene (a sixteenth) less a corner
    triangle, written in Web Mercator (not the scene's CRS)."""
    import geopandas as gpd
    from shapely.geometry import Polygon

    with rasterio.open(EX / "S2.tif") as ds:
        t = ds.transform
    corners = [(288, 288), (480, 288), (480, 400), (400, 480), (288, 480)]  # (col, row)
    poly = Polygon([t @ c for c in corners])
    gpd.GeoDataFrame(geometry=[poly], crs="EPSG:4326").to_crs("EPSG:3857").to_file(path)
    return path


def test_an_aoi_reads_a_quarter_of_the_bytes_and_masks_outside_the_polygon(
    server: Any, tmp_path: Path, predictor: Any
) -> None:
    """The run over a sixteenth fetches < 1/4 of the whole run's bytes (the server counts);
    inside the polygon its pixels are the whole run's, outside they are nodata."""
    from shapely.geometry import Point

    from mfaf_cli.io.aoi import read_aoi

    aoi = _aoi_file(tmp_path / "field.gpkg")
    bands = {"optical": [3, 2, 1], "sar": [1]}

    def run(prefix: str, out: Path, **kw: Any) -> tuple[np.ndarray, int]:
        server.reset()
        inputs = {
            m: f"{server.url}/{prefix}/big_{f}.tif" for m, f in (("optical", "S2"), ("sar", "S1"))
        }
        label = _run(inputs, out, predictor, bands=bands, sar_units="db", **kw)
        return label, server.bytes_sent

    whole, whole_bytes = run("whole", tmp_path / "whole.tif")
    label, aoi_bytes = run("aoi", tmp_path / "aoi.tif", aoi=str(aoi))
    assert aoi_bytes < whole_bytes / 4, (aoi_bytes, whole_bytes)

    geom = read_aoi(aoi).in_crs("EPSG:4326")
    with rasterio.open(tmp_path / "aoi.tif") as ds, rasterio.open(tmp_path / "whole.tif") as ref:
        col0, row0 = (round(v) for v in ~ref.transform @ (ds.transform.c, ds.transform.f))
        rows, cols = np.indices(label.shape)
        xs, ys = ds.transform @ (cols + 0.5, rows + 0.5)
    inside = np.array([[geom.contains(Point(x, y)) for x, y in zip(rx, ry, strict=True)]
                       for rx, ry in zip(xs, ys, strict=True)])  # fmt: skip
    same = whole[row0 : row0 + label.shape[0], col0 : col0 + label.shape[1]]
    assert 0.8 < inside.mean() < 1 and (label[~inside] == 255).all()
    assert (label[inside] == same[inside]).all() and (same[inside] != 255).all()


# ---- failures: one line naming the URL and what the server said, and no output -----------
@pytest.mark.parametrize(
    ("path", "said"),
    [("gone/S2_gone.tif", "HTTP 404 Not Found"),
     ("stall/S2.tif", "no answer within 1 s (timeout)"),
     ("html/S2.tif", "the server answered an HTML page (text/html; charset=utf-8), not a raster")],
)  # fmt: skip
def test_a_bad_url_is_one_line_and_leaves_no_output(
    server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner: Any, box_model: None,
    path: str, said: str,
) -> None:  # fmt: skip
    monkeypatch.setenv("MFAF_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("MFAF_HTTP_RETRIES", "0")
    out = tmp_path / "m.tif"
    code, _, err = runner("predict", "--optical", f"{server.url}/{path}", "--sar",
                          f"{server.url}/ok/S1.tif", "-o", out)  # fmt: skip
    assert code == 1
    lines = err.strip().splitlines()
    # the optical input is the reference grid, opened first under that role
    assert lines == [f"Error: reference {server.url}/{path} could not be opened: {said}"], lines
    assert list(tmp_path.iterdir()) == []


def test_a_missing_item_asset_names_the_band_and_the_assets(tmp_path: Path) -> None:
    item = _item("S2X", "2020-01-01T00:00:00Z", {"red": ("B04.tif", "red")})
    (tmp_path / "i.json").write_text(json.dumps(item))
    msg = r"item S2X has no asset for band swir, nir \(assets: red\)"
    with pytest.raises(InputError, match=msg):
        predict({"optical": str(tmp_path / "i.json"), "sar": str(EX / "S1.tif")},
                tmp_path / "m.tif", predictor=BoxPredictor(), bands={"sar": ["VV"]},
                progress=False)  # fmt: skip
    assert not (tmp_path / "m.tif").exists()


# ---- pure helpers ---------------------------------------------------------------------------
def test_asset_keys_of_the_main_catalogues_name_their_bands() -> None:
    from mfaf_cli.coreg.stac import band_of_key

    assert [band_of_key(k) for k in ("B04", "b8a", "B12_20m", "red", "nir", "swir22",
                                     "swir16", "nir08", "vv", "VH")] == \
        ["B4", "B8A", "B12", "B4", "B8", "B12", "B11", "B8A", "VV", "VH"]  # fmt: skip


def test_assets_are_picked_by_band_meaning_cogs_first() -> None:
    from mfaf_cli.coreg.stac import asset_for, by_recency, parse_item

    doc = _item("x", "2020-01-01T00:00:00Z", {"red-jp2": ("a/B04.jp2", "red"),
                                              "red": ("a/B04.tif", "red")})  # fmt: skip
    doc["assets"]["visual"] = {
        "href": "tci.tif",
        "type": "image/tiff",
        "eo:bands": [
            {"name": "B04", "common_name": "red"},
            {"name": "B03", "common_name": "green"},
        ],
    }
    item = parse_item(doc, "https://h/items/x.json")
    a, k = asset_for(item, "red")  # type: ignore[misc]
    assert (a.key, a.href, k) == ("red", "https://h/items/a/B04.tif", 1)
    a, k = asset_for(item, "green")  # type: ignore[misc]
    assert (a.key, k) == ("visual", 2)  # the second band of a multi-band asset
    assert asset_for(item, "nir") is None and item.modality == "optical"
    older = parse_item(_item("o", "2019-01-01", {}))
    newer = parse_item(_item("n", "2020-01-01", {}))
    assert [i.id for i in by_recency([older, newer])] == ["n", "o"]


def test_urls_map_to_gdal_virtual_paths_and_back() -> None:
    from mfaf_cli.io.remote import gdal_path, url_of

    for url, vsi in [("https://h/a.tif", "/vsicurl/https://h/a.tif"),
                     ("s3://bucket/k/a.tif", "/vsis3/bucket/k/a.tif"),
                     ("gs://bucket/a.tif", "/vsigs/bucket/a.tif"),
                     ("/vsizip/x.zip/a.tif", "/vsizip/x.zip/a.tif")]:  # fmt: skip
        assert gdal_path(url) == vsi and url_of(vsi) == url


def test_not_a_stac_document_is_one_error(tmp_path: Path) -> None:
    from mfaf_cli.coreg.stac import load_items

    (tmp_path / "x.json").write_text(json.dumps({"type": "Feature", "properties": {}}))
    with pytest.raises(MfafError, match="not a STAC item or item collection"):
        load_items(str(tmp_path / "x.json"), "optical STAC item")


# ---- mosaics of files, batch cells ---------------------------------------------------------
def test_files_given_with_mosaic_are_tiles_first_on_top(
    root: Path, tmp_path: Path, predictor: Any, local_map: np.ndarray
) -> None:
    """The east half first: it covers the west half's spoiled overlap."""
    sar = [str(root / "E_VV.tif"), str(root / "W_VV.tif")]
    label = _run({"optical": EX / "S2.tif", "sar": sar}, tmp_path / "m.tif", predictor,
                 mosaic=True)  # fmt: skip
    assert (label == local_map).all()
    spoiled = _run({"optical": EX / "S2.tif", "sar": sar[::-1]}, tmp_path / "s.tif", predictor,
                   mosaic=True)  # fmt: skip
    assert (spoiled != local_map).any()  # the other order shows the spoiled columns


def test_batch_cells_may_be_urls_and_items(
    server: Any, root: Path, tmp_path: Path, predictor: Any, local_map: np.ndarray
) -> None:
    from mfaf_cli.pipeline.batch import predict_batch

    url = f"{server.url}/batch"
    item = _item("S2", "2019-09-19T11:00:00Z", {b: (f"{url}/{b}.tif", c) for b, c in
                                                (("B04", "red"), ("B08", "nir"),
                                                 ("B12", "swir22"))})  # fmt: skip
    (tmp_path / "item.json").write_text(json.dumps(item))
    (tmp_path / "scenes.csv").write_text(
        f"scene,optical,sar,sar_bands,output\nA,item.json,{url}/S1.tif,VV,a.tif\n"
    )
    recs = predict_batch(tmp_path / "scenes.csv", predictor=predictor, tile=TILE,
                         progress=False)  # fmt: skip
    assert [r["status"] for r in recs] == ["ok"], recs
    assert recs[0]["inputs"]["sar"] == f"{url}/S1.tif"
    with rasterio.open(tmp_path / "a.tif") as ds:
        assert (ds.read(1) == local_map).all()


def test_a_mosaic_fills_a_tiles_nodata_from_the_tile_below(tmp_path: Path) -> None:
    """Two overlapping tiles (first on top): where the top tile is nodata the one below
    shows; where neither covers, the mosaic is nodata; the extent is their union."""
    from rasterio.transform import from_origin

    from mfaf_cli.coreg.mosaic import write_mosaic

    top = np.full((1, 4, 6), 7, np.uint16)
    top[0, :, :2] = 0  # a nodata wedge
    below = np.full((1, 4, 6), 3, np.uint16)
    prof = {"driver": "GTiff", "height": 4, "width": 6, "count": 1, "dtype": "uint16",
            "crs": "EPSG:32630", "nodata": 0}  # fmt: skip
    with rasterio.open(tmp_path / "top.tif", "w", transform=from_origin(40, 100, 10, 10),
                       **prof) as ds:  # fmt: skip
        ds.write(top)
    with rasterio.open(tmp_path / "below.tif", "w", transform=from_origin(0, 110, 10, 10),
                       **prof) as ds:  # fmt: skip
        ds.write(below)
    vrt = tmp_path / "m.vrt"
    write_mosaic([str(tmp_path / "top.tif"), str(tmp_path / "below.tif")], vrt, "optical")
    with rasterio.open(vrt) as ds:
        assert (ds.bounds.left, ds.bounds.top, ds.width, ds.height) == (0, 110, 10, 5)
        got = ds.read(1)
    want = np.zeros((5, 10), np.uint16)
    want[0:4, 0:6] = 3
    want[1:5, 4:10] = 7
    want[1:5, 4:6] = 0  # the top tile's nodata wedge ...
    want[1:4, 4:6] = 3  # ... shows the tile below where it covers
    assert (got == want).all(), got


def test_a_tile_in_another_crs_is_warped_onto_the_top_tiles_lattice(tmp_path: Path) -> None:
    """West half in WGS 84 on top, east half in Web Mercator below (a tile across a zone
    boundary): the mosaic is the WGS 84 scene, the east part resampled (bilinear twice)."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    from mfaf_cli.coreg.mosaic import write_mosaic

    _cog(tmp_path / "west.tif", EX / "S1.tif", [1], (0, 224))
    _cog(tmp_path / "east.tif", EX / "S1.tif", [1], (160, 384))
    with rasterio.open(tmp_path / "east.tif") as src:
        t, w, h = calculate_default_transform(src.crs, "EPSG:3857", src.width, src.height,
                                              *src.bounds)  # fmt: skip
        out = np.full((h, w), np.nan, np.float32)
        reproject(src.read(1), out, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=t, dst_crs="EPSG:3857", resampling=Resampling.bilinear,
                  src_nodata=np.nan, dst_nodata=np.nan)  # fmt: skip
    with rasterio.open(tmp_path / "east3857.tif", "w", driver="GTiff", width=w, height=h,
                       count=1, dtype="float32", crs="EPSG:3857", transform=t,
                       nodata=np.nan) as dst:  # fmt: skip
        dst.write(out, 1)
    vrt = tmp_path / "m.vrt"
    write_mosaic([str(tmp_path / "west.tif"), str(tmp_path / "east3857.tif")], vrt, "sar")
    with rasterio.open(vrt) as ds, rasterio.open(EX / "S1.tif") as ref:
        assert ds.crs == ref.crs and ds.res == pytest.approx(ref.res)
        assert ds.bounds.left == pytest.approx(ref.bounds.left)
        got = ds.read(1, window=Window(0, 0, 384, 384), boundless=True, fill_value=np.nan)
        want = ref.read(1)
    assert np.array_equal(got[:, :224], want[:, :224], equal_nan=True)  # the top tile as is
    east = got[2:-2, 224:382], want[2:-2, 224:382]
    assert np.isnan(east[0]).mean() < 0.01  # no gap at the seam
    # dB, bilinear twice: 0.46 measured; the same placed one pixel off: 0.94
    assert np.nanmedian(np.abs(east[0] - east[1])) < 0.6


def test_a_diagonal_aoi_reads_only_the_blocks_its_windows_need(
    server: Any, tmp_path: Path, predictor: Any
) -> None:
    """A strip along the diagonal: its bounds are the whole scene, but blocks no window
    touching it needs are not fetched (the whole bounding box was, before: 1.0 of the bytes;
    0.58 measured with 32² blocks and 16 KiB HTTP chunks)."""
    import geopandas as gpd
    from shapely.geometry import Polygon

    with rasterio.open(EX / "S2.tif") as ds:
        t = ds.transform
    strip = Polygon([t @ c for c in [(0, 0), (48, 0), (768, 720), (768, 768), (720, 768),
                                     (0, 48)]])  # fmt: skip
    gpd.GeoDataFrame(geometry=[strip], crs="EPSG:4326").to_file(tmp_path / "diag.geojson")
    bands = {"optical": [3, 2, 1], "sar": [1]}
    maps, sent = [], []
    for prefix, kw in (("whole2", {}), ("diag", {"aoi": str(tmp_path / "diag.geojson")})):
        server.reset()
        inputs = {"optical": f"{server.url}/{prefix}/big_S2.tif",
                  "sar": f"{server.url}/{prefix}/big_S1.tif"}  # fmt: skip
        maps.append(_run(inputs, tmp_path / f"{prefix}.tif", predictor, bands=bands,
                         sar_units="db", **kw))  # fmt: skip
        sent.append(server.bytes_sent)
    whole, diag = maps
    assert whole.shape == diag.shape and 0.1 < (diag != 255).mean() < 0.15
    assert ((diag == whole) | (diag == 255)).all()
    assert sent[1] < 0.7 * sent[0], sent


def test_coregister_writes_the_mosaic_of_two_items_as_the_scenes_bands(
    server: Any, tmp_path: Path, runner: Any
) -> None:
    url = f"{server.url}/coreg"
    items = [_item(f"S2_{side}", when, {b: (f"{url}/{side}_{b}.tif", c) for b, c in
                                        (("B04", "red"), ("B08", "nir"), ("B12", "swir22"))})
             for side, when in (("W", "2019-09-14"), ("E", "2019-09-19"))]  # fmt: skip
    (tmp_path / "items.json").write_text(json.dumps({"type": "FeatureCollection",
                                                      "features": items}))  # fmt: skip
    code, _, err = runner("coregister", "--stac", tmp_path / "items.json", "--optical-bands",
                          "swir22,nir,red", "-o", tmp_path / "out", "-q")  # fmt: skip
    assert code == 0, err
    out = tmp_path / "out" / "optical.tif"
    with rasterio.open(out) as got, rasterio.open(EX / "S2.tif") as ref:
        assert got.shape == ref.shape and got.crs == ref.crs
        assert np.array_equal(got.read(), ref.read([13, 8, 4]).astype(got.dtypes[0]))


def test_stac_api_item_urls_are_items_and_rasters_are_not() -> None:
    from mfaf_cli.coreg.stac import is_stac_path

    api = "https://earth-search.aws.element84.com/v1"
    assert is_stac_path(f"{api}/collections/sentinel-2-l2a/items/S2B_30SXH_20190919_0_L2A")
    assert is_stac_path(f"{api}/search?collections=sentinel-2-l2a&bbox=-1,38,-0.7,38.2")
    assert is_stac_path("item.json") and is_stac_path("https://h/x/item.JSON?sig=1")
    assert not is_stac_path("https://h/items/B04.tif") and not is_stac_path("S2.tif")


def test_an_aoi_file_without_polygons_or_outside_the_scene_is_one_error(
    tmp_path: Path, predictor: Any
) -> None:
    import geopandas as gpd
    from shapely.geometry import Point, box

    from mfaf_cli.errors import NoOverlapError, UsageError

    pts = tmp_path / "pts.geojson"
    gpd.GeoDataFrame(geometry=[Point(-0.76, 38.1)], crs="EPSG:4326").to_file(pts)
    far = tmp_path / "far.gpkg"
    gpd.GeoDataFrame(geometry=[box(10, 50, 11, 51)], crs="EPSG:4326").to_file(far)
    (tmp_path / "junk.geojson").write_text("not json")
    inputs = {"optical": EX / "S2.tif", "sar": EX / "S1.tif"}
    cases = [(pts, InputError, "holds no polygon"), (far, NoOverlapError, "does not overlap"),
             (tmp_path / "junk.geojson", InputError, "not a readable vector file")]  # fmt: skip
    for aoi, kind, words in cases:
        with pytest.raises(kind, match=words):
            _run(inputs, tmp_path / "m.tif", predictor, aoi=str(aoi))
    with pytest.raises(UsageError, match="--aoi and --bounds"):
        _run(inputs, tmp_path / "m.tif", predictor, aoi=str(far), bounds=(0, 0, 1, 1))
    assert not (tmp_path / "m.tif").exists()

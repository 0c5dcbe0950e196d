"""Issue 19 item 4: predict's exclusion check and source map come from the run's own reads.

The reader threads compute each pixel's reason code (and, with fallbacks, its source code)
from the raw values they read anyway (mfaf_cli/pipeline/planes.py); the second and third read
of the inputs on the merge thread is gone. Pinned here: the codes equal the old path's
(:class:`Excluder`, which still serves evaluate and split scenes; the source map as the old
mapper computed it, from its own read of the inputs and the mask), and every input pixel is
decoded once per run.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import EXAMPLES, write_geotiff
from tiny_net import TinyFusion, tiny_meta, use_tiny_builder

from mfaf_cli.coreg import align
from mfaf_cli.coreg.align import AlignedScene
from mfaf_cli.coreg.cloudmask import optical_mask
from mfaf_cli.coreg.grid import grid_from_reference
from mfaf_cli.io import weights as W
from mfaf_cli.metadata import Normalisation
from mfaf_cli.pipeline.fallback import NONE, SOURCE_KEY, Coverage, FallbackScene
from mfaf_cli.pipeline.planes import PlaneStore, PlaneTap
from mfaf_cli.pipeline.predict import predict
from mfaf_cli.tiling.windows import Window

CHIP = EXAMPLES / "sen1floods11"
BANDS = {"optical": [4, 3, 2, 8], "sar": [1]}
#: the module (``mfaf_cli.pipeline.predict`` the attribute is the function)
predict_mod = importlib.import_module("mfaf_cli.pipeline.predict")


# ---- the store ----------------------------------------------------------------------------------
def test_store_assembles_pieces_fills_invalid_and_drops_taken_rows() -> None:
    store = PlaneStore()
    store.offset = (-2, -1)  # the read grid starts 2 rows and 1 column before the output grid
    store.put(0, 0, np.full((4, 3), 1, np.uint8))  # read rows 0..4, columns 0..3
    store.put(0, 3, np.full((4, 3), 2, np.uint8))
    store.put(4, 0, np.full((4, 6), 3, np.uint8))
    valid = np.ones((2, 5), bool)
    valid[1, 4] = False
    got = store.take(0, 0, valid, 255)  # output rows 0..2 = read rows 2..4, columns 1..6
    np.testing.assert_array_equal(got, [[1, 1, 2, 2, 2], [1, 1, 2, 2, 255]])
    assert len(store) == 1  # both pieces ending at read row 4 were taken to their end
    np.testing.assert_array_equal(store.take(2, 0, np.ones((2, 5), bool), 255), np.full((2, 5), 3))


def test_store_refuses_a_valid_pixel_nobody_read() -> None:
    store = PlaneStore()
    store.put(0, 0, np.zeros((2, 2), np.uint8))
    assert store.take(0, 0, np.array([[True, True, False]]), 9).tolist() == [[0, 0, 9]]
    with pytest.raises(RuntimeError, match="no plane was read"):
        store.take(1, 0, np.ones((1, 3), bool), 9)


def test_tap_keeps_the_part_inside_the_grid_of_a_padded_read() -> None:
    class Scene:
        class grid:  # an attribute holder, as Grid
            height, width = 4, 4

        def read(self, window: Window, out: object = None) -> tuple[dict, np.ndarray]:
            vals = np.arange(window.height * window.width, dtype=np.float32)
            return {"x": vals.reshape(1, window.height, window.width)}, np.ones(window.shape, bool)

    store = PlaneStore()
    tap = PlaneTap(Scene(), lambda a: a["x"][0].astype(np.uint8), store)
    tap.read(Window(-1, 2, 3, 4))  # rows -1..2, columns 2..6: inside rows 0..2, columns 2..4
    got = store.take(0, 2, np.ones((2, 2), bool), 255)
    np.testing.assert_array_equal(got, [[4, 5], [8, 9]])
    assert tap.grid.height == 4  # everything else is the scene's


# ---- predict ------------------------------------------------------------------------------------
@pytest.fixture
def checked_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny checkpoint with a rule and an optical training range narrower than the chip
    (both reasons occur on it), fixed normalisation (no statistics pre-pass)."""
    use_tiny_builder(monkeypatch)
    meta = tiny_meta(rules=(("bright", "red > 1500 and nir > 1500"),))
    opt = replace(meta.modalities[0], range_low=(0.0,) * 4, range_high=(3000.0,) * 4,
                  normalisation=Normalisation("fixed", (1500.0,) * 4, (1000.0,) * 4))  # fmt: skip
    sar = replace(meta.modalities[1], range_low=(-20.0,), range_high=(0.0,),
                  normalisation=Normalisation("fixed", (-15.0,), (5.0,)))  # fmt: skip
    meta = replace(meta, modalities=(opt, sar))
    torch.manual_seed(0)
    return W.save_checkpoint(TinyFusion(meta.in_channels, 2), meta, tmp_path / "m.safetensors")


@pytest.fixture
def mask(tmp_path: Path) -> Path:
    """A 0/1 optical mask on the chip's grid over valid optical pixels."""
    with rasterio.open(CHIP / "S2.tif") as ds:
        crs, transform, shape = ds.crs, ds.transform, ds.shape
    m = np.zeros(shape, np.uint8)
    m[40:170, 200:330] = 1
    return write_geotiff(tmp_path / "mask.tif", m, crs=str(crs), transform=transform)  # type: ignore[arg-type]


def _run(model: Path, tmp_path: Path, name: str, optical: Path = CHIP / "S2.tif",
         sar: Path = CHIP / "S1.tif", **kw: object) -> object:  # fmt: skip
    return predict({"optical": optical, "sar": sar}, tmp_path / f"{name}.tif",
                   str(model), bands=BANDS, engine="torch", device="cpu", progress=False,
                   exclusion=tmp_path / f"{name}_ex.tif", tile=64, **kw)  # type: ignore[arg-type]  # fmt: skip


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _holed(tmp_path: Path) -> Path:
    """The chip's optical with a nodata square (the file's nodata, 0)."""
    with rasterio.open(CHIP / "S2.tif") as ds:
        data, profile, desc = ds.read(), ds.profile, ds.descriptions
    data[:, 150:250, 20:140] = 0
    with rasterio.open(tmp_path / "S2hole.tif", "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = desc
    return tmp_path / "S2hole.tif"


def _coarse_sar(tmp_path: Path) -> Path:
    """The chip's SAR on a 2x coarser grid (2 x 2 means), as Sentinel-1 at 20 m under
    Sentinel-2 at 10 m: the run resamples it (bilinear) onto the optical grid."""
    with rasterio.open(CHIP / "S1.tif") as ds:
        a, crs, t = ds.read(1).astype(np.float64), ds.crs, ds.transform
    coarse = a.reshape(192, 2, 192, 2).mean(axis=(1, 3)).astype(np.float32)
    out = tmp_path / "S1coarse.tif"
    return write_geotiff(out, coarse, crs=str(crs), transform=t @ rasterio.Affine.scale(2))


@pytest.mark.parametrize("case", ["mask", "crop", "hole", "warped"])
def test_stored_exclusion_equals_the_second_read(
    checked_model: Path, mask: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Same reason codes, labels and summary as :class:`Excluder` (the old path, forced) on
    the chip: with an optical mask and a fallback (the codes read the optical below the mask,
    as the excluder's own read did), the same as a crop (an anchored read grid), and an
    optical with a nodata hole and no fallback (nodata codes), and a crop with a SAR on a
    coarser grid (resampled by the readers in row chunks, by the excluder in row bands)."""
    kw: dict[str, object] = {"optical_mask": mask, "fallbacks": {"optical": "self"}}
    if case in ("crop", "warped"):
        with rasterio.open(CHIP / "S2.tif") as ds:
            (left, top), (right, bottom) = ds.transform @ (37, 101), ds.transform @ (300, 333)
        kw["bounds"] = (left, bottom, right, top)
    if case == "hole":
        kw = {"optical": _holed(tmp_path), "fallbacks": {}}
    if case == "warped":
        kw = {"sar": _coarse_sar(tmp_path), "bounds": kw["bounds"]}
    new = _run(checked_model, tmp_path, "new", **kw)
    monkeypatch.setattr(predict_mod, "_stored_excluder", lambda *a: None)
    old = _run(checked_model, tmp_path, "old", **kw)
    codes = _read(tmp_path / "new_ex.tif")
    np.testing.assert_array_equal(codes, _read(tmp_path / "old_ex.tif"))
    np.testing.assert_array_equal(_read(tmp_path / "new.tif"), _read(tmp_path / "old.tif"))
    assert new.exclusion == old.exclusion  # type: ignore[attr-defined]
    assert {0, 1, 2} <= set(np.unique(codes).tolist())
    assert (255 in codes) == (case == "hole")


def test_source_map_equals_the_fallback_scene_read_of_the_inputs(
    checked_model: Path, mask: Path, tmp_path: Path
) -> None:
    """The source map as the old mapper made it: a fallback scene over its own read of the
    inputs and the mask, on the output grid, nodata where the label is."""
    _run(checked_model, tmp_path, "s", optical_mask=mask, fallbacks={"optical": "self"},
         source=tmp_path / "src.tif")  # fmt: skip
    inputs = {"optical": CHIP / "S2.tif", "sar": CHIP / "S1.tif"}
    grid = grid_from_reference(CHIP / "S2.tif")
    coverage = Coverage(("optical", "sar"), ("optical",), optical_mask(mask))
    with AlignedScene(inputs, grid, bands=BANDS) as scene:
        fb = FallbackScene(scene, coverage)
        arrays, _ = fb.read(Window(0, 0, grid.height, grid.width))
        fb.close()
    want = arrays[SOURCE_KEY][0].astype(np.uint8)
    labels = _read(tmp_path / "s.tif")
    want[labels == 255] = NONE
    got = _read(tmp_path / "src.tif")
    np.testing.assert_array_equal(got, want)
    assert {1, 2} <= set(np.unique(got).tolist())


def test_each_input_pixel_is_decoded_once(
    checked_model: Path, mask: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the exclusion check, an optical mask, fallbacks and a source map, each input
    file's pixels are read once in the run (the old path read the inputs three times)."""
    read: dict[str, int] = {}
    inner = align._read_block

    def counting(ds, src, win, out_shape=None, out=None):  # type: ignore[no-untyped-def]
        read[Path(ds.name).name] = read.get(Path(ds.name).name, 0) + win.height * win.width
        return inner(ds, src, win, out_shape, out)

    monkeypatch.setattr(align, "_read_block", counting)
    _run(checked_model, tmp_path, "c", optical_mask=mask, fallbacks={"optical": "self"},
         source=tmp_path / "src.tif")  # fmt: skip
    area = 384 * 384
    assert read == {"S2.tif": area, "S1.tif": area, "mask.tif": area}


# ---- the fixed start-up: each input's pixel probe once ------------------------------------
def test_a_file_is_probed_once_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open_raster probes the first and last block of a file once while it is unchanged
    (a run opens each input several times); a file cut short in place is probed again and
    fails as truncated."""
    from mfaf_cli.errors import InputError
    from mfaf_cli.io import inputs

    data = np.random.default_rng(0).integers(0, 255, (1, 600, 600)).astype(np.uint8)
    path = write_geotiff(tmp_path / "a.tif", data, transform=rasterio.Affine(10, 0, 0, 0, -10, 0))
    probes: list[str] = []
    inner = inputs._read_probe
    monkeypatch.setattr(inputs, "_read_probe", lambda ds: (probes.append(ds.name), inner(ds)))
    for _ in range(3):
        inputs.open_raster(path).close()
    assert len(probes) == 1
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match="truncated"):
        inputs.open_raster(path).close()
    assert len(probes) == 2


# ---- the range check in float32 -----------------------------------------------------------------
def _outside_range_float64(arr, low, high, open_=(), floor=()):  # type: ignore[no-untyped-def]
    """The range check as it was written first (float64 throughout): the reference."""
    from mfaf_cli.applicability import RANGE_MARGIN

    c = arr.shape[0]
    floors = np.array([-np.inf if f is None else f for f in (list(floor) or [None] * c)])
    if np.isfinite(floors).any():
        arr = np.maximum(arr, floors.reshape(c, 1, 1))
    lo, hi = (np.asarray(v, dtype=np.float64).reshape(c, 1, 1) for v in (low, high))
    m = RANGE_MARGIN * np.maximum(hi - lo, 0.0)
    sides = list(open_) or [""] * c
    lo = np.where(np.array([s in ("low", "both") for s in sides]).reshape(c, 1, 1), -np.inf, lo - m)
    hi = np.where(np.array([s in ("high", "both") for s in sides]).reshape(c, 1, 1), np.inf, hi + m)
    with np.errstate(invalid="ignore"):
        return np.asarray(((arr < lo) | (arr > hi)).any(axis=0))


@pytest.mark.parametrize("seed", range(6))
def test_float32_range_check_equals_the_float64_one(seed: int) -> None:
    """Same flags as the float64 comparison, also for values on either side of each limit's
    float32 rounding, NaN, infinities, open sides and floors below, inside and above the
    range."""
    from mfaf_cli.applicability import outside_range

    rng = np.random.default_rng(seed)
    c = 3
    low = tuple(float(v) for v in rng.uniform(-50, 50, c) / 3)  # limits float32 cannot hold
    high = tuple(lo + float(v) for lo, v in zip(low, rng.uniform(0.1, 40, c) / 7, strict=True))
    open_ = tuple(rng.choice(["", "low", "high", "both"], c))
    arr = rng.uniform(-120, 120, (c, 40, 50)).astype(np.float32)
    for b in range(c):  # values straddling each limit (the margin applied) in float32
        span = 0.1 * (high[b] - low[b])
        for t in (low[b] - span, high[b] + span):
            f = np.float32(t)
            near = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
            arr[b, rng.integers(0, 40, 3), rng.integers(0, 50, 3)] = near
    arr.reshape(c, -1)[:, :30] = [[np.nan] * 10 + [np.inf] * 10 + [-np.inf] * 10] * c
    for floor in [(), (None,) * c, (low[0] - 100.0, None, high[2] + 100.0),
                  tuple(float(v) for v in np.array(low) + 0.01)]:  # fmt: skip
        want = _outside_range_float64(arr, low, high, open_, floor)
        np.testing.assert_array_equal(outside_range(arr, low, high, open_, floor), want)
        np.testing.assert_array_equal(
            outside_range(arr.astype(np.float64), low, high, open_, floor), want
        )

"""Output GeoTIFFs: georeferencing, dtype, nodata, colours, blocks, compression, COG, atomicity."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from mfaf_cli.coreg.grid import Grid
from mfaf_cli.errors import OutputExistsError, OutputPathError, UsageError
from mfaf_cli.io.raster import (
    OutputSet,
    argmax_max,
    atomic_outputs,
    category_sidecar_xml,
    cog_options,
    gtiff_options,
    ids_to_labels,
    scale_probs,
    weights_status,
    weights_tags,
)
from mfaf_cli.metadata import WATER_CLASSES, WHU_CLASSES, ClassInfo, ModelMeta

META = ModelMeta(arch="mfafnet-s", modalities=(), classes=WHU_CLASSES)
TRANSFORM = from_origin(440_000.0, 4_480_000.0, 10.0, 10.0)


def grid(width: int, height: int) -> Grid:
    return Grid(CRS.from_epsg(32630), TRANSFORM, width, height)


def random_probs(rng: np.random.Generator, k: int, h: int, w: int) -> np.ndarray:
    p = rng.random((k, h, w)).astype(np.float32) ** 3
    return p / p.sum(axis=0, keepdims=True)


def write_all(out: OutputSet, probs: np.ndarray, valid: np.ndarray, band: int) -> None:
    """Feed rows like the merger does: bands of ``band`` rows, in order."""
    h = probs.shape[1]
    for r0 in range(0, h, band):
        out(r0, probs[:, r0 : r0 + band], valid[r0 : r0 + band])


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# ---- pure conversions ---------------------------------------------------------------------
def test_labels_and_scaling():
    probs = np.array([[[0.7, 0.1, 0.5]], [[0.3, 0.9, 0.5]]], np.float32)
    valid = np.array([[True, True, False]])
    np.testing.assert_array_equal(ids_to_labels(argmax_max(probs)[0], valid), [[0, 1, 255]])
    ids = np.array([3, 7])
    np.testing.assert_array_equal(ids_to_labels(argmax_max(probs)[0], valid, ids), [[3, 7, 255]])
    np.testing.assert_array_equal(
        scale_probs(probs, valid, "uint8"), [[[178, 25, 255]], [[76, 229, 255]]]
    )
    f = scale_probs(probs, valid, "float32")
    assert np.isnan(f[:, 0, 2]).all() and f[1, 0, 1] == np.float32(0.9)
    assert scale_probs(np.ones((1, 1, 1)), np.ones((1, 1), bool), "uint8")[0, 0, 0] == 254


def test_argmax_max_matches_numpy_and_breaks_ties_like_it(rng):
    p = rng.random((5, 30, 40)).astype(np.float32)
    p[:, 0, :] = 0.2  # all tied: first class wins
    p[3, 1, :] = p[1, 1, :] = 2.0  # tie between classes 1 and 3
    idx, best = argmax_max(p)
    np.testing.assert_array_equal(idx, np.argmax(p, axis=0))
    np.testing.assert_array_equal(best, p.max(axis=0))
    assert (idx[0] == 0).all() and (idx[1] == 1).all()


def test_reused_argmax_and_labels_equal_fresh_ones(rng):
    """The merge thread's reused arrays give the values of fresh ones, and the fresh results
    are not the reused arrays (callers may keep them)."""
    probs = rng.random((3, 40, 50)).astype(np.float32)
    valid = rng.random((40, 50)) > 0.2
    idx, best = argmax_max(probs)
    ridx, rbest = argmax_max(probs, reuse=True)
    assert np.array_equal(idx, ridx) and best.tobytes() == rbest.tobytes()
    again, _ = argmax_max(probs[::-1].copy(), reuse=True)
    assert np.shares_memory(again, ridx) and not np.shares_memory(idx, ridx)
    out = np.empty((40, 50), np.uint8)
    assert ids_to_labels(idx, valid, out=out) is out
    np.testing.assert_array_equal(out, ids_to_labels(idx, valid))


def test_creation_options():
    opts = gtiff_options("zstd", {"blockxsize": 256, "ZSTD_LEVEL": "9"})
    assert opts["COMPRESS"] == "ZSTD" and opts["BLOCKXSIZE"] == "256"
    assert opts["BIGTIFF"] == "IF_SAFER" and opts["TILED"] == "YES"
    with pytest.raises(UsageError, match="deflate"):
        gtiff_options("jpeg2000")
    cog = cog_options(opts, "mode")
    assert cog["BLOCKSIZE"] == "256" and cog["LEVEL"] == "9"
    assert cog["OVERVIEW_RESAMPLING"] == "MODE"
    assert "TILED" not in cog and "BLOCKXSIZE" not in cog


# ---- outputs ------------------------------------------------------------------------------
def test_label_probability_confidence_outputs(tmp_path, rng):
    h, w = 530, 600  # larger than one 512 block in both directions
    g = grid(w, h)
    probs = random_probs(rng, 8, h, w)
    valid = np.ones((h, w), bool)
    valid[100:140, 50:90] = False
    paths = {name: tmp_path / f"{name}.tif" for name in ("label", "prob", "conf")}
    with OutputSet(g, META, paths["label"], paths["prob"], paths["conf"]) as out:
        write_all(out, probs, valid, band=37)  # bands not aligned with the 512-row blocks
    assert listing(tmp_path) == ["conf.tif", "label.tif", "label.tif.aux.xml", "prob.tif"]
    counts = out.label_counts
    assert counts is not None and counts[255] == (~valid).sum() and counts.sum() == h * w

    with rasterio.open(paths["label"]) as ds:
        assert ds.crs == CRS.from_epsg(32630)
        assert ds.transform == TRANSFORM
        assert (ds.width, ds.height, ds.count) == (w, h, 1)
        assert ds.dtypes == ("uint8",) and ds.nodata == 255
        assert ds.block_shapes == [(512, 512)]
        assert ds.compression.value == "DEFLATE"
        assert ds.descriptions == ("class",)
        cmap = ds.colormap(1)
        for c in WHU_CLASSES:
            assert cmap[c.id] == (*c.color, 255)
        assert cmap[255] == (0, 0, 0, 0)
        tags = ds.tags()
        assert json.loads(tags["CLASS_NAMES"]) == [c.name for c in WHU_CLASSES]
        assert tags["CLASS_4"] == "water" and tags["MODEL"] == "mfafnet-s"
        labels = ds.read(1)
    expected = np.argmax(probs, axis=0).astype(np.uint8)
    expected[~valid] = 255
    np.testing.assert_array_equal(labels, expected)
    assert np.bincount(labels.ravel(), minlength=256).tolist() == counts.tolist()

    with rasterio.open(paths["prob"]) as ds:
        assert ds.count == 8 and ds.dtypes == ("uint8",) * 8 and ds.nodata == 255
        assert ds.descriptions == tuple(c.name for c in WHU_CLASSES)
        assert ds.block_shapes[0] == (512, 512)
        np.testing.assert_allclose(ds.scales, 1 / 254)
        stored = ds.read()
    assert (stored[:, ~valid] == 255).all()
    # nearest of the 255 levels: within half a step of the true probability
    np.testing.assert_allclose(stored[:, valid] / 254, probs[:, valid], atol=0.5 / 254 + 1e-6)

    with rasterio.open(paths["conf"]) as ds:
        assert ds.count == 1 and ds.descriptions == ("confidence",) and ds.nodata == 255
        conf = ds.read(1)
    np.testing.assert_allclose(conf[valid] / 254, probs.max(axis=0)[valid], atol=0.5 / 254 + 1e-6)
    np.testing.assert_array_equal(conf[valid], stored[:, valid].max(axis=0))


def test_small_raster_float_probabilities_zstd(tmp_path, rng):
    # smaller than a block: GDAL keeps the 512 block (padded) for tiled GeoTIFFs
    h, w = 37, 23
    meta = ModelMeta(arch="unet", modalities=(), classes=WATER_CLASSES)
    probs = random_probs(rng, 2, h, w)
    valid = np.ones((h, w), bool)
    valid[0, :5] = False
    label, prob = tmp_path / "l.tif", tmp_path / "p.tif"
    with OutputSet(
        grid(w, h),
        meta,
        label,
        prob,
        compress="zstd",
        creation_options={"ZSTD_LEVEL": "5"},
        probability_dtype="float32",
    ) as out:
        write_all(out, probs, valid, band=h)
    with rasterio.open(label) as ds:
        assert ds.compression.value == "ZSTD"
        assert ds.block_shapes[0][0] in (512, h)
        assert ds.colormap(1)[1] == (30, 90, 200, 255)
    with rasterio.open(prob) as ds:
        assert ds.dtypes == ("float32", "float32") and np.isnan(ds.nodata)
        stored = ds.read()
    np.testing.assert_array_equal(stored[:, valid], probs[:, valid])
    assert np.isnan(stored[:, ~valid]).all()


def test_non_contiguous_class_ids_are_written_as_ids(tmp_path, rng):
    classes = (ClassInfo(2, "grass", (0, 200, 0)), ClassInfo(9, "roof", (200, 0, 0)))
    meta = ModelMeta(arch="unet", modalities=(), classes=classes)
    probs = random_probs(rng, 2, 10, 10)
    with OutputSet(grid(10, 10), meta, tmp_path / "l.tif") as out:
        out(0, probs, np.ones((10, 10), bool))
    with rasterio.open(tmp_path / "l.tif") as ds:
        labels = ds.read(1)
        assert ds.tags()["CLASS_9"] == "roof"
    np.testing.assert_array_equal(labels, np.where(probs[1] > probs[0], 9, 2))


def test_cog_has_overviews_by_mode(tmp_path):
    h = w = 1024
    # every 2×2 block: three pixels of class 3 and one of class 0, the odd one at a varying
    # position. Mode -> 3; average would give 2; nearest would give 0 in some blocks.
    labels = np.full((h, w), 3, np.uint8)
    for i, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        labels[dy::2, dx::2][(np.add.outer(np.arange(h // 2), np.arange(w // 2)) % 4) == i] = 0
    probs = np.zeros((8, h, w), np.float32)
    probs[labels.astype(np.intp), np.arange(h)[:, None], np.arange(w)[None, :]] = 1.0
    probs[1] += 0.25  # so probability bands are not all 0/1
    valid = np.ones((h, w), bool)
    label, prob = tmp_path / "l.tif", tmp_path / "p.tif"
    with OutputSet(grid(w, h), META, label, prob, cog=True) as out:
        write_all(out, probs, valid, band=300)
    assert listing(tmp_path) == ["l.tif", "l.tif.aux.xml", "p.tif"]
    with rasterio.open(label) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.overviews(1) == [2]
        assert ds.block_shapes == [(512, 512)]
        assert ds.crs == CRS.from_epsg(32630) and ds.transform == TRANSFORM
        assert ds.nodata == 255 and ds.colormap(1)[4] == (30, 90, 200, 255)
        assert ds.descriptions == ("class",)
        np.testing.assert_array_equal(ds.read(1), labels)
        ov = ds.read(1, out_shape=(h // 2, w // 2))
    assert (ov == 3).all()
    with rasterio.open(prob) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.overviews(1) == [2]
        ov = ds.read(4, out_shape=(h // 2, w // 2)).astype(float)
    # band 4 = class 3: 1.0 on three of four pixels -> average 0.75 (scaled 190.5)
    np.testing.assert_allclose(ov, 0.75 * 254, atol=1)


def test_rows_out_of_order_or_missing_leave_nothing(tmp_path, rng):
    probs = random_probs(rng, 8, 20, 10)
    valid = np.ones((20, 10), bool)
    with pytest.raises(ValueError, match="out of order"):
        with OutputSet(grid(10, 20), META, tmp_path / "l.tif") as out:
            out(0, probs[:, :5], valid[:5])
            out(10, probs[:, 10:], valid[10:])
    assert listing(tmp_path) == []
    with pytest.raises(RuntimeError, match="50 of 200 pixels"):
        with OutputSet(grid(10, 20), META, tmp_path / "l.tif") as out:
            out(0, probs[:, :5], valid[:5])
    assert listing(tmp_path) == []


# ---- atomicity and path checks ------------------------------------------------------------
@pytest.mark.parametrize("exc", [RuntimeError("model crashed"), KeyboardInterrupt()])
def test_failure_inside_leaves_no_output_and_no_temp(tmp_path, rng, exc):
    probs = random_probs(rng, 8, 600, 40)
    valid = np.ones((600, 40), bool)
    with pytest.raises(type(exc)):
        with OutputSet(
            grid(40, 600), META, tmp_path / "l.tif", tmp_path / "p.tif", cog=True
        ) as out:
            write_all(out, probs[:, :520], valid[:520], band=130)  # one stripe flushed
            temps = listing(tmp_path)
            assert len(temps) == 2 and all(t.startswith(".") for t in temps)
            raise exc
    assert listing(tmp_path) == []


def test_temp_files_are_hidden_unique_and_in_the_target_folder(tmp_path):
    target = tmp_path / "map.tif"
    pattern = rf"\.map\.tif\.mfaf-{os.getpid()}-[0-9a-f]{{8}}\.tmp"
    with pytest.raises(OutputExistsError):
        with atomic_outputs([target, None], overwrite=False) as (t1, none):
            with atomic_outputs([target], overwrite=False) as (t2,):  # e.g. a parallel run
                assert none is None
                assert t1 != t2 and t1.parent == t2.parent == tmp_path
                assert re.fullmatch(pattern, t1.name) and re.fullmatch(pattern, t2.name)
                t2.write_bytes(b"second")
            t1.write_bytes(b"first")
    # the inner run finished first; the outer one (no --overwrite) re-checked and backed off
    assert listing(tmp_path) == ["map.tif"] and target.read_bytes() == b"second"


def test_outer_refuses_output_created_meanwhile(tmp_path):
    target = tmp_path / "map.tif"
    with pytest.raises(OutputExistsError):
        with atomic_outputs([target]) as (tmp,):
            tmp.write_bytes(b"mine")
            target.write_bytes(b"theirs")
    assert listing(tmp_path) == ["map.tif"] and target.read_bytes() == b"theirs"


def test_existing_output_needs_overwrite(tmp_path, rng):
    target = tmp_path / "map.tif"
    target.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match=r"exists; pass --overwrite") as exc:
        OutputSet(grid(10, 10), META, target).__enter__()
    assert exc.value.exit_code == 2
    assert target.read_bytes() == b"keep me" and listing(tmp_path) == ["map.tif"]
    # a failing run with --overwrite keeps the old file
    with pytest.raises(RuntimeError):
        with OutputSet(grid(10, 10), META, target, overwrite=True):
            raise RuntimeError("boom")
    assert target.read_bytes() == b"keep me" and listing(tmp_path) == ["map.tif"]
    with OutputSet(grid(10, 10), META, target, overwrite=True) as out:
        out(0, random_probs(rng, 8, 10, 10), np.ones((10, 10), bool))
    with rasterio.open(target) as ds:
        assert ds.dtypes == ("uint8",)


def test_missing_folder_and_bad_paths(tmp_path):
    missing = tmp_path / "nope" / "map.tif"
    with pytest.raises(OutputPathError, match=re.escape(str(tmp_path / "nope"))) as exc:
        with atomic_outputs([missing]):
            pass
    assert "does not exist" in str(exc.value) and exc.value.exit_code == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="not a folder"):
        with atomic_outputs([tmp_path / "file" / "map.tif"]):
            pass
    with pytest.raises(OutputPathError, match="is a folder"):
        with atomic_outputs([tmp_path], overwrite=True):
            pass
    with pytest.raises(UsageError, match="twice"):
        with atomic_outputs([tmp_path / "a.tif", tmp_path / "a.tif"]):
            pass
    assert listing(tmp_path) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match="not writable"):
            with atomic_outputs([folder / "map.tif"]):
                pass
    finally:
        folder.chmod(0o755)


def test_unwritable_folder_is_reported_even_when_access_lies(tmp_path, monkeypatch):
    # As root, os.access says yes to a read-only folder; creating the temp file is the real
    # test. Simulate the kernel refusing it.
    real_open = os.open

    def refuse(path, flags, *args):
        if str(path).startswith(str(tmp_path)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(OutputPathError, match="not writable"):
        with atomic_outputs([tmp_path / "map.tif"]):
            pass
    monkeypatch.undo()
    assert listing(tmp_path) == []


def test_creation_options_gdal_rejects_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="--co"):
        with OutputSet(
            grid(20, 20), META, tmp_path / "l.tif", creation_options={"BLOCKXSIZE": 100}
        ):
            pass
    assert listing(tmp_path) == []


# ---- write failures (full disk) -----------------------------------------------------------
def _gdal_write_failed() -> Exception:
    """What rasterio raises when GDAL cannot write a block: no errno, the detail in a cause."""
    from rasterio.errors import RasterioIOError

    try:
        try:
            raise RuntimeError("TIFFAppendToStrip:Write error at scanline 128")
        except RuntimeError as cause:
            raise RasterioIOError("Write failed. See previous exception for details.") from cause
    except RasterioIOError as err:
        return err


@pytest.mark.parametrize("where", ["_flush", "close"])
@pytest.mark.parametrize("kind", ["enospc", "gdal-disk-full", "gdal-other"])
def test_write_failure_is_one_clear_error_and_leaves_nothing(
    tmp_path, rng, monkeypatch, where, kind
):
    """Regression: a full disk ended as "internal error: RasterioIOError: Write failed"."""
    import errno
    import shutil
    from collections import namedtuple

    from rasterio.errors import RasterioIOError

    from mfaf_cli.errors import OutputWriteError
    from mfaf_cli.io import raster as R

    err = RasterioIOError(errno.ENOSPC, "No space left on device")
    if kind != "enospc":
        err = _gdal_write_failed()
    usage = namedtuple("usage", "total used free")
    free = 0 if kind == "gdal-disk-full" else 10 << 30
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10 << 30, (10 << 30) - free, free))
    real = getattr(R.GeoTiffWriter, where)

    def failing(self):
        if self.path.name.startswith(".p.tif"):  # only the probability output fails
            raise err
        return real(self)

    monkeypatch.setattr(R.GeoTiffWriter, where, failing)
    probs = random_probs(rng, 8, 40, 30)
    valid = np.ones((40, 30), bool)
    (tmp_path / "p.tif").write_bytes(b"old")  # an existing output stays as it was
    with pytest.raises(OutputWriteError) as info:
        with OutputSet(
            grid(30, 40), META, tmp_path / "l.tif", tmp_path / "p.tif", overwrite=True
        ) as out:
            write_all(out, probs, valid, band=10)
    msg = str(info.value)
    assert msg.startswith(f"could not write {tmp_path / 'p.tif'}: ") and "\n" not in msg
    if kind == "gdal-other":
        assert "Write error at scanline 128" in msg and "no space" not in msg
    else:
        assert "no space left on device" in msg
    assert listing(tmp_path) == ["p.tif"] and (tmp_path / "p.tif").read_bytes() == b"old"


def test_full_tmpfs_is_reported_as_such(tmp_path, rng):
    """The real thing, where the test may mount a 64 KiB tmpfs (root on Linux); else skipped."""
    import subprocess

    from mfaf_cli.errors import OutputWriteError

    small = tmp_path / "small"
    small.mkdir()
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        probs = random_probs(rng, 8, 300, 300)
        with pytest.raises(OutputWriteError, match=r"small/[lp]\.tif: no space left on device"):
            with OutputSet(
                grid(300, 300), META, small / "l.tif", small / "p.tif",
                creation_options={"COMPRESS": "NONE"},
            ) as out:  # fmt: skip
                write_all(out, probs, np.ones((300, 300), bool), band=100)
        assert listing(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


# ---- class names for GIS, weights tags -------------------------------------------------------
def test_category_sidecar_is_indexed_by_pixel_value_with_gaps() -> None:
    meta = ModelMeta(
        arch="unet",
        modalities=(),
        classes=(ClassInfo(0, "bg", (1, 2, 3)), ClassInfo(2, "a<b", (4, 5, 6))),
    )
    xml = category_sidecar_xml(meta)
    assert "<CategoryNames><Category>bg</Category><Category></Category>" in xml
    assert "<Category>a&lt;b</Category></CategoryNames>" in xml
    assert '<Row index="1"><F>2</F><F>a&lt;b</F><F>4</F><F>5</F><F>6</F></Row>' in xml


def test_gdal_reads_category_names_rat_and_weights_tags(tmp_path, rng):
    """gdalinfo / QGIS see class names: GDAL itself (a VRT copy) carries them over."""
    from rasterio.shutil import copy as rio_copy

    probs = random_probs(rng, len(WHU_CLASSES), 20, 30)
    tags = weights_tags("w1", "ab" * 32)
    for overwrite in (False, True):
        out = OutputSet(grid(30, 20), META, tmp_path / "m.tif", overwrite=overwrite, tags=tags)
        with out:
            write_all(out, probs, np.ones((20, 30), bool), 7)
    assert listing(tmp_path) == ["m.tif", "m.tif.aux.xml"]
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert {k: ds.tags()[k] for k in tags} == tags and ds.tags()["MODEL"] == "mfafnet-s"
        assert "TRAINED" not in ds.tags()  # MODEL_WEIGHTS says it, once
        assert ds.tags()["MODEL_WEIGHTS"] == weights_status(META)
    rio_copy(str(tmp_path / "m.tif"), str(tmp_path / "m.vrt"), driver="VRT")
    vrt = (tmp_path / "m.vrt").read_text()
    cats = re.findall(r"<Category>([^<]*)</Category>", vrt)
    assert cats == [c.name for c in WHU_CLASSES]
    assert '<GDALRasterAttributeTable tableType="thematic">' in vrt
    names = re.findall(r"<Row index=\"\d+\">\s*<F>\d+</F>\s*<F>([^<]*)</F>", vrt)
    assert names == [c.name for c in WHU_CLASSES]
    # a probability-only run replacing the label elsewhere leaves no stale sidecar behind
    (tmp_path / "p.tif.aux.xml").write_text("<PAMDataset/>")
    out = OutputSet(grid(30, 20), META, None, tmp_path / "p.tif")
    with out:
        write_all(out, probs, np.ones((20, 30), bool), 7)
    assert not (tmp_path / "p.tif.aux.xml").exists()


def test_count_values_equals_bincount(rng):
    from mfaf_cli.io.raster import COUNT_BLOCK, count_values

    x = rng.integers(0, 7, (3, COUNT_BLOCK // 2 + 5)).astype(np.uint8)  # spans blocks
    where = rng.random(x.shape) > 0.4
    np.testing.assert_array_equal(count_values(x, 7, where), np.bincount(x[where], minlength=7))
    np.testing.assert_array_equal(count_values(x, 256), np.bincount(x.ravel(), minlength=256))
    # values past minlength lengthen the counts, as np.bincount's do
    np.testing.assert_array_equal(count_values(x, 3), np.bincount(x.ravel(), minlength=3))
    assert count_values(np.zeros((0, 4), np.uint8), 5).tolist() == [0] * 5


@pytest.mark.parametrize(
    "values",
    [
        [0, 1],
        [0, 1, 2, 3, 255],
        [7, 255],
        [0],
        [3],
        [0, 1, 200, 255],
        list(range(20)),
        [15, 16],
        [0, 1, 255, 255, 255, 255, 255, 255, 255, 255],
    ],  # mostly nodata: masked, only 0 and 1
)
def test_counting_few_values_equals_bincount(rng, values):
    """uint8 rows of a few values (indexes; labels or codes with nodata 255) are counted value
    by value, the rest by bincount: the same counts either way, with or without a mask."""
    from mfaf_cli.io.raster import count_values

    a = rng.choice(np.array(values, np.uint8), size=(37, 41))
    where = rng.random((37, 41)) > 0.3
    for mask in (None, where):
        picked = a.ravel() if mask is None else a[mask]
        for minlength in (2, 256):
            want = np.bincount(picked, minlength=minlength)
            got = count_values(a, minlength, where=mask)
            assert got.dtype == np.int64 and np.array_equal(got, want)


def test_counts_are_as_long_as_the_values_counted(rng):
    """A value outside the mask (a finished-rows index's nodata) does not lengthen the counts:
    the caller adds them to its K classes' totals."""
    from mfaf_cli.io.raster import count_values

    where = rng.random((30, 30)) > 0.5
    idx = (rng.random((30, 30)) > 0.5).astype(np.uint8)
    idx[~where] = 255
    got = count_values(idx, 2, where=where)
    assert np.array_equal(got, np.bincount(idx[where], minlength=2))

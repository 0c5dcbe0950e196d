"""Bad inputs across every command: one ``Error:`` line, the documented exit code, nothing left.

Table-driven: each case builds a command line from a shared set of (deliberately broken)
files, runs the real ``mfaf`` entry point and asserts that

* stderr holds exactly one non-empty line, starting with ``Error:`` and naming the problem,
* the exit code is 1 (data/runtime) or 2 (usage),
* the output folder holds nothing new: no output file, no hidden temp file.

Also here: inputs that look odd but are fine (int16 optical + float32 SAR, NaN/±inf pixels),
permission problems (simulated when running as root, which ignores file modes), and Ctrl-C /
SIGTERM during a real ``mfaf predict`` subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from conftest import write_geotiff as write_tif
from rasterio.transform import from_origin

from mfaf_cli import registry
from mfaf_cli.io.weights import save_checkpoint

SIZE = 48  # px; small enough that the cases that do run take a fraction of a second


# ---- fixtures: one set of good and broken files for the whole module -----------------------------
def tiny_checkpoint(path: Path, arch: str, in_channels: dict[str, int] | None = None,
                    num_classes: int = 2) -> Path:  # fmt: skip
    """A *trained-flagged* tiny network (base width 4): loads in milliseconds, no warnings."""
    meta = registry.default_meta(arch, in_channels, num_classes, base_width=4)
    meta = replace(meta, trained=True, tile_size=32)
    model = registry.create_model(arch, meta.in_channels, meta.num_classes, **meta.config)
    return save_checkpoint(model, meta, path)


@dataclass
class Files:
    root: Path
    opt: Path
    opt_f32: Path
    sar: Path
    paths: dict[str, Path]

    def __getitem__(self, key: str) -> Path:
        return self.paths[key]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(5)
    opt_vals = rng.integers(0, 3000, (4, SIZE, SIZE)).astype("int16")
    _yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    opt_vals[3] += (800 * np.sin(xx / 5.0)).astype("int16")  # structure, so classes vary
    sar_vals = rng.normal(-12.0, 3.0, (1, SIZE, SIZE)).astype("float32")
    p: dict[str, Path] = {}
    opt = write_tif(d / "opt.tif", opt_vals)
    opt_f32 = write_tif(d / "opt_f32.tif", opt_vals.astype("float32"))
    sar = write_tif(d / "sar.tif", sar_vals)
    ones = np.ones((1, SIZE, SIZE), "float32")
    p["nocrs"] = write_tif(d / "nocrs.tif", ones, crs=None)
    p["opt_nocrs"] = write_tif(d / "opt_nocrs.tif", opt_vals, crs=None)
    p["far"] = write_tif(d / "far.tif", ones, transform=from_origin(900_000.0, 4_500_000.0, 10, 10))
    # overlaps the optical grid by 5 m of a 10 m pixel along x
    p["sliver"] = write_tif(
        d / "sliver.tif",
        ones,
        transform=from_origin(500_000.0 + SIZE * 10 - 5, 4_500_000.0, 10, 10),
    )
    p["opt3"] = write_tif(d / "opt3.tif", opt_vals[:3])
    # band descriptions: the wrong sensor's bands, a meaning on two bands, a bare S2 stack
    p["s1_named"] = write_tif(d / "s1_named.tif", np.repeat(sar_vals, 2, axis=0),
                              descriptions=["VV", "VH"])  # fmt: skip
    p["opt_dup"] = write_tif(d / "opt_dup.tif", np.concatenate([opt_vals, opt_vals[3:]]),
                             descriptions=["B4", "B3", "B2", "B8", "B08_10m"])  # fmt: skip
    p["opt_named"] = write_tif(d / "opt_named.tif", opt_vals,
                               descriptions=["B4", "B3", "B2", "B8"])  # fmt: skip
    p["s2_bare"] = write_tif(d / "s2_bare.tif", np.repeat(opt_vals[:1], 13, axis=0))
    p["sar_vh"] = write_tif(d / "sar_vh.tif", sar_vals, descriptions=["VH"])
    p["opt_nodata"] = write_tif(
        d / "opt_nodata.tif", np.full((4, SIZE, SIZE), -9999, "int16"), nodata=-9999
    )
    big = write_tif(d / "big.tif", rng.integers(0, 3000, (4, 200, 200)).astype("int16"))
    p["truncated"] = d / "truncated.tif"
    p["truncated"].write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    p["garbage"] = d / "garbage.tif"
    p["garbage"].write_text("this is not a GeoTIFF\n" * 40)
    p["empty"] = d / "empty.tif"
    p["empty"].write_bytes(b"")
    p["folder"] = d / "folder.tif"
    p["folder"].mkdir()
    p["a_file"] = d / "a_file"
    p["a_file"].write_text("x")
    # label rasters
    labels = rng.integers(0, 2, (SIZE, SIZE)).astype("uint8")
    p["labels"] = write_tif(
        d / "labels.tif", labels, nodata=255, tags={"CLASS_NAMES": json.dumps(["land", "water"])}
    )
    p["labels_float"] = write_tif(d / "labels_float.tif", labels.astype("float32") + 0.5)
    p["labels_nodata"] = write_tif(d / "labels_nodata.tif", np.full((SIZE, SIZE), 255, "uint8"),
                                   nodata=255)  # fmt: skip
    p["labels_nocrs"] = write_tif(d / "labels_nocrs.tif", labels, crs=None)
    truth = labels.copy()
    truth[10:20, 10:20] = 5  # a class the 2-class prediction does not know
    p["truth_unknown"] = write_tif(d / "truth_unknown.tif", truth)
    # checkpoints
    ck = tiny_checkpoint(d / "unet.safetensors", "unet")
    p["ckpt"] = ck
    p["ckpt_optical"] = tiny_checkpoint(d / "unet_optical.safetensors", "unet-optical")
    p["ckpt_hsi_lidar"] = tiny_checkpoint(
        d / "unet_hsi_lidar.safetensors", "unet-hsi-lidar", {"hsi": 6, "lidar": 1}
    )
    raw = ck.read_bytes()
    p["ckpt_truncated"] = d / "truncated.safetensors"
    p["ckpt_truncated"].write_bytes(raw[: len(raw) * 2 // 3])
    altered = bytearray(raw)
    altered[-7] ^= 0x55  # one weight byte
    p["ckpt_altered"] = d / "altered.safetensors"
    p["ckpt_altered"].write_bytes(bytes(altered))
    p["ckpt_text"] = d / "notes.safetensors"
    p["ckpt_text"].write_text("these are not weights")

    # batch CSVs
    def csv(name: str, text: str) -> None:
        p[name] = d / f"{name}.csv"
        p[name].write_text(text)

    csv("b_no_output", f"optical,sar\n{opt},{sar}\n")
    csv("b_unknown", f"opticla,sar,output\n{opt},{sar},m.tif\n")
    csv("b_empty", "")
    csv("b_header_only", "optical,sar,output\n")
    csv("b_dup", f"optical,sar,output\n{opt},{sar},m.tif\n{opt},{sar},./m.tif\n")
    csv("b_no_inputs", f"optical,sar,output\n{opt},{sar},a.tif\n,,b.tif\n")
    csv("b_mixed", f"optical,sar,hsi,output\n{opt},{sar},,a.tif\n{opt},,{sar},b.tif\n")
    csv("b_bands", f'optical,sar,optical_bands,output\n{opt},{sar},"0,1,2,3",a.tif\n')
    csv("b_cells", f"optical,sar,output\n{opt},{sar},a.tif,extra\n")
    # a training scene list pointing at a missing raster
    (d / "train").mkdir()
    (d / "train" / "scenes.csv").write_text(
        f"id,optical,sar,label\ns0,{opt},missing.tif,{p['labels']}\n"
    )
    p["train_list"] = d / "train" / "scenes.csv"
    (d / "train" / "optical.csv").write_text(
        f"id,optical,label,split\ns0,{opt},{p['labels']},test\n"
    )
    p["optical_list"] = d / "train" / "optical.csv"
    return Files(d, opt, opt_f32, sar, p)


# ---- the table -------------------------------------------------------------------------------
Args = Callable[[Files, Path], list[Any]]


@dataclass(frozen=True)
class Case:
    id: str
    args: Args
    code: int
    phrase: str
    setup: Callable[[Path], None] | None = None  # prepares the output folder (pre-existing files)


def P(f: Files, *extra: Any, model: Any = None, out: Path | None = None, opt: Any = None,
      sar: Any = None) -> list[Any]:  # fmt: skip
    """``mfaf predict`` with the tiny checkpoint and good inputs unless replaced."""
    args: list[Any] = ["predict", "--model", f["ckpt"] if model is None else model, "-q"]
    args += ["--optical", f.opt if opt is None else opt, "--sar", f.sar if sar is None else sar]
    if out is not None:
        args += ["-o", out / "map.tif"]
    return [*args, *extra]


def _existing(name: str, content: bytes = b"keep me") -> Callable[[Path], None]:
    def setup(out: Path) -> None:
        (out / name).write_bytes(content)

    return setup


CASES: list[Case] = [
    # -- predict: inputs
    Case("predict-no-crs", lambda f, o: P(f, out=o, sar=f["nocrs"]), 1, "has no CRS; assign one"),
    Case("predict-reference-no-crs", lambda f, o: P(f, out=o, opt=f["opt_nocrs"]), 1, "has no CRS"),
    Case("predict-disjoint", lambda f, o: P(f, out=o, sar=f["far"]), 1, "does not overlap"),
    Case(
        "predict-overlap-sub-pixel",
        lambda f, o: P(f, out=o, sar=f["sliver"]),
        1,
        "by less than one target pixel",
    ),
    Case("predict-band-count", lambda f, o: P(f, out=o, opt=f["opt3"]), 1, "takes 4 optical bands"),
    Case("predict-band-name", lambda f, o: P(f, "--sar-bands", "HH", out=o), 1, "no band of"),
    Case(
        "predict-all-nodata", lambda f, o: P(f, out=o, opt=f["opt_nodata"]), 1, "nothing to predict"
    ),
    # -- predict: bands by meaning (the model takes red, green, blue, nir + vv)
    Case(
        "predict-bands-wrong-sensor",
        lambda f, o: P(f, out=o, opt=f["s1_named"]),
        1,
        "optical file s1_named.tif has Sentinel-1 SAR bands (1=VV, 2=VH)",
    ),
    Case(
        "predict-bands-wrong-sensor-sar",
        lambda f, o: P(f, out=o, sar=f["opt_named"]),
        1,
        "sar file opt_named.tif has Sentinel-2 optical bands",
    ),
    Case(
        "predict-bands-duplicate-descriptions",
        lambda f, o: P(f, out=o, opt=f["opt_dup"]),
        1,
        "bands 4 and 5 of opt_dup.tif are both described as nir",
    ),
    Case(
        "predict-bands-duplicate-name",
        lambda f, o: P(f, "--optical-bands", "B4,B3,B2,B8", out=o, opt=f["opt_dup"]),
        1,
        "bands 4 and 5 of opt_dup.tif are both described as B8",
    ),
    Case(
        "predict-bands-listed-twice",
        lambda f, o: P(f, "--optical-bands", "1,2,3,1", out=o),
        1,
        "selects band 1 of opt.tif twice",
    ),
    Case(
        "predict-bands-name-absent",
        lambda f, o: P(f, "--optical-bands", "B4,B3,B2,B12", out=o, opt=f["opt_named"]),
        1,
        "'B12': no band of opt_named.tif is described as that",
    ),
    Case(
        "predict-bands-undescribed-s2-stack",
        lambda f, o: P(f, out=o, opt=f["s2_bare"]),
        1,
        "13 bands and no band descriptions: pass --optical-bands with the 1-based indexes of "
        "those bands (4,3,2,8 if it is a 13-band Sentinel-2 L1C stack",
    ),
    # -- predict / evaluate: no shipped model for the inputs, and none named
    Case(
        "predict-no-shipped-model",
        lambda f, o: ["predict", "-q", "--optical", f.opt, "-o", o / "map.tif"],
        2,
        "no shipped model takes optical; shipped: ",
    ),
    Case(
        "evaluate-no-shipped-model",
        lambda f, o: ["evaluate", "--dataset", "folder", "--data-root", f["optical_list"], "-q"],
        2,
        "no shipped model takes optical; shipped: ",
    ),
    Case(
        "predict-truncated-tiff",
        lambda f, o: P(f, out=o, sar=f["truncated"]),
        1,
        "is truncated or corrupt",
    ),
    Case(
        "predict-not-a-tiff", lambda f, o: P(f, out=o, sar=f["garbage"]), 1, "not a readable raster"
    ),
    Case("predict-zero-byte", lambda f, o: P(f, out=o, opt=f["empty"]), 1, "empty (zero-byte)"),
    Case(
        "predict-directory-input",
        lambda f, o: P(f, out=o, sar=f["folder"]),
        1,
        "holds no Sentinel-1 polarisation files",
    ),
    Case(
        "predict-missing-input",
        lambda f, o: P(f, out=o, sar=o / "nope.tif"),
        1,
        "does not exist; check the path",
    ),
    # -- predict: outputs
    Case(
        "predict-output-parent-is-file",
        lambda f, o: [*P(f), "-o", f["a_file"] / "m.tif"],
        2,
        "is not a folder",
    ),
    Case(
        "predict-output-parent-missing",
        lambda f, o: [*P(f), "-o", o / "no" / "m.tif"],
        2,
        "does not exist; create it",
    ),
    Case(
        "predict-output-exists",
        lambda f, o: P(f, out=o),
        2,
        "exists; pass --overwrite",
        setup=_existing("map.tif"),
    ),
    Case(
        "predict-output-is-folder",
        lambda f, o: [*P(f), "-o", o / "sub"],
        2,
        "is a folder",
        setup=lambda o: (o / "sub").mkdir(),
    ),
    Case(
        "predict-vector-exists",
        lambda f, o: P(f, "--vector", o / "map.gpkg", out=o),
        2,
        "already exists; pass --overwrite",
        setup=_existing("map.gpkg"),
    ),
    Case(
        "predict-vector-extension",
        lambda f, o: P(f, "--vector", o / "map.kml", out=o),
        2,
        "unsupported vector output extension '.kml'",
    ),
    Case(
        "predict-same-output-twice",
        lambda f, o: P(f, "--probabilities", o / "map.tif", out=o),
        2,
        "same output path",
    ),
    # -- predict: models and checkpoints
    Case(
        "predict-checkpoint-truncated",
        lambda f, o: P(f, out=o, model=f["ckpt_truncated"]),
        1,
        "is truncated",
    ),
    Case(
        "predict-checkpoint-altered",
        lambda f, o: P(f, out=o, model=f["ckpt_altered"]),
        1,
        "checksum mismatch",
    ),
    Case(
        "predict-checkpoint-not-weights",
        lambda f, o: P(f, out=o, model=f["ckpt_text"]),
        1,
        "safetensors",
    ),
    Case(
        "predict-checkpoint-optical-only",
        lambda f, o: P(f, out=o, model=f["ckpt_optical"]),
        2,
        "takes optical, but optical + sar was given",
    ),
    Case(
        "predict-checkpoint-hsi-lidar",
        lambda f, o: P(f, out=o, model=f["ckpt_hsi_lidar"]),
        2,
        "takes hsi + lidar, but optical + sar was given",
    ),
    Case(
        "predict-unknown-model",
        lambda f, o: P(f, out=o, model="mfafnet-xl"),
        2,
        "unknown model 'mfafnet-xl'; valid names",
    ),
    # -- predict: tiling
    Case(
        "predict-tile-zero",
        lambda f, o: P(f, "--tile", "0", out=o),
        2,
        "tile must be a positive number",
    ),
    Case(
        "predict-tile-not-integer",
        lambda f, o: P(f, "--tile", "3x", out=o),
        2,
        "'3x' is not a valid integer",
    ),
    Case(
        "predict-tile-divisor", lambda f, o: P(f, "--tile", "40", out=o), 2, "not a multiple of 16"
    ),
    Case(
        "predict-overlap-one",
        lambda f, o: P(f, "--overlap", "1", out=o),
        2,
        "overlap must be in [0, 1)",
    ),
    Case(
        "predict-overlap-nan",
        lambda f, o: P(f, "--overlap", "nan", out=o),
        2,
        "overlap must be in [0, 1)",
    ),
    Case(
        "predict-overlap-no-stride",
        lambda f, o: P(f, "--tile", "32", "--overlap", "0.99", out=o),
        2,
        "leaves no stride",
    ),
    Case(
        "predict-batch-size-zero",
        lambda f, o: P(f, "--batch-size", "0", out=o),
        2,
        "--batch-size must be a positive integer",
    ),
    # -- predict --batch: malformed CSVs (all refused before any scene runs)
    Case(
        "batch-no-output-column",
        lambda f, o: ["predict", "--batch", f["b_no_output"]],
        2,
        "no 'output' column",
    ),
    Case(
        "batch-unknown-column",
        lambda f, o: ["predict", "--batch", f["b_unknown"]],
        2,
        "unknown column 'opticla'",
    ),
    Case("batch-empty-file", lambda f, o: ["predict", "--batch", f["b_empty"]], 2, "is empty"),
    Case(
        "batch-header-only", lambda f, o: ["predict", "--batch", f["b_header_only"]], 2, "no scenes"
    ),
    Case(
        "batch-duplicate-outputs",
        lambda f, o: ["predict", "--batch", f["b_dup"]],
        2,
        "is also written by line 2",
    ),
    Case(
        "batch-row-without-inputs",
        lambda f, o: ["predict", "--batch", f["b_no_inputs"]],
        2,
        "line 3: no input raster",
    ),
    Case(
        "batch-mixed-modalities",
        lambda f, o: ["predict", "--batch", f["b_mixed"]],
        2,
        "every row needs the same modalities",
    ),
    Case(
        "batch-bad-band-list",
        lambda f, o: ["predict", "--batch", f["b_bands"]],
        2,
        "band numbers start at 1",
    ),
    Case(
        "batch-extra-cells",
        lambda f, o: ["predict", "--batch", f["b_cells"]],
        2,
        "4 cells but the header has 3 columns",
    ),
    Case(
        "batch-missing-file",
        lambda f, o: ["predict", "--batch", o / "scenes.csv"],
        2,
        "does not exist",
    ),
    Case(
        "batch-with-output-option",
        lambda f, o: ["predict", "--batch", f["b_dup"], "-o", o / "m.tif"],
        2,
        "-o/--output cannot be used with --batch",
    ),
    Case(
        "batch-with-input-option",
        lambda f, o: ["predict", "--batch", f["b_dup"], "--sar", f.sar],
        2,
        "--sar cannot be used with --batch",
    ),
    # -- coregister
    Case(
        "coregister-no-crs",
        lambda f, o: ["coregister", "--optical", f.opt, "--sar", f["nocrs"], "-o", o / "al"],
        1,
        "has no CRS",
    ),
    Case(
        "coregister-disjoint",
        lambda f, o: ["coregister", "--optical", f.opt, "--sar", f["far"], "-o", o / "al"],
        1,
        "does not overlap",
    ),
    Case(
        "coregister-truncated",
        lambda f, o: ["coregister", "--optical", f.opt, "--sar", f["truncated"], "-o", o / "al"],
        1,
        "is truncated or corrupt",
    ),
    Case(
        "coregister-output-is-file",
        lambda f, o: ["coregister", "--optical", f.opt, "--sar", f.sar, "-o", o / "x"],
        2,
        "is a file",
        setup=_existing("x"),
    ),
    Case(
        "coregister-output-exists",
        lambda f, o: ["coregister", "--optical", f.opt, "--sar", f.sar, "-o", o, "-q"],
        2,
        "exists; pass --overwrite",
        setup=_existing("sar.tif"),
    ),
    # -- vectorize
    Case(
        "vectorize-float-labels",
        lambda f, o: ["vectorize", f["labels_float"], "-o", o / "v.gpkg"],
        1,
        "must hold integer class ids",
    ),
    Case(
        "vectorize-all-nodata",
        lambda f, o: ["vectorize", f["labels_nodata"], "-o", o / "v.gpkg"],
        1,
        "holds only nodata",
    ),
    Case(
        "vectorize-no-crs",
        lambda f, o: ["vectorize", f["labels_nocrs"], "-o", o / "v.gpkg"],
        1,
        "has no CRS",
    ),
    Case(
        "vectorize-truncated",
        lambda f, o: ["vectorize", f["truncated"], "-o", o / "v.shp"],
        1,
        "truncated or corrupt",
    ),
    Case(
        "vectorize-zero-byte",
        lambda f, o: ["vectorize", f["empty"], "-o", o / "v.gpkg"],
        1,
        "zero-byte",
    ),
    Case(
        "vectorize-directory",
        lambda f, o: ["vectorize", f["folder"], "-o", o / "v.gpkg"],
        1,
        "is a directory",
    ),
    # -- evaluate
    Case(
        "evaluate-unknown-classes",
        lambda f, o: [
            "evaluate",
            f["labels"],
            "--truth",
            f["truth_unknown"],
            "--plot",
            o / "cm.png",
        ],
        1,
        "does not know",
    ),
    Case(
        "evaluate-truncated-truth",
        lambda f, o: ["evaluate", f["labels"], "--truth", f["truncated"], "--plot", o / "cm.png"],
        1,
        "is truncated or corrupt",
    ),
    Case(
        "evaluate-truth-no-crs",
        lambda f, o: [
            "evaluate",
            f["labels"],
            "--truth",
            f["labels_nocrs"],
            "--plot",
            o / "cm.png",
        ],
        1,
        "has no CRS",
    ),
    # -- export
    Case(
        "export-truncated-checkpoint",
        lambda f, o: ["export", "--model", f["ckpt_truncated"], "-o", o / "m.onnx"],
        1,
        "is truncated",
    ),
    Case(
        "export-unknown-model",
        lambda f, o: ["export", "--model", "unet-xl", "-o", o / "m.onnx"],
        2,
        "unknown model 'unet-xl'",
    ),
    Case(
        "export-tile-divisor",
        lambda f, o: ["export", "--model", f["ckpt"], "--tile", "40", "-o", o / "m.onnx"],
        2,
        "multiple of 16",
    ),
    Case(
        "export-output-exists",
        lambda f, o: ["export", "--model", f["ckpt"], "-o", o / "m.onnx"],
        2,
        "exists; pass --overwrite",
        setup=_existing("m.onnx"),
    ),
    # -- train
    Case(
        "train-unknown-model",
        lambda f, o: [
            "train",
            "--dataset",
            "folder",
            "--data-root",
            f["train_list"],
            "--model",
            "unet-xl",
            "-o",
            o / "run",
            "-q",
        ],
        2,
        "unknown model 'unet-xl'",
    ),
    Case(
        "train-missing-data-root",
        lambda f, o: [
            "train",
            "--dataset",
            "folder",
            "--data-root",
            o / "nowhere",
            "--model",
            "unet",
            "-o",
            o / "run",
            "-q",
        ],
        1,
        "does not exist",
    ),
    Case(
        "train-scene-list-missing-raster",
        lambda f, o: [
            "train",
            "--dataset",
            "folder",
            "--data-root",
            f["train_list"],
            "--model",
            "unet",
            "-o",
            o / "run",
            "-q",
        ],
        1,
        "missing.tif does not exist",
    ),
]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry below ``folder`` (hidden ones too): files with their bytes, folders as None."""
    out: dict[str, bytes | None] = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = p.read_bytes() if p.is_file() else None
    return out


def assert_one_error_line(err: str, phrase: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith("Error: "), lines[0]
    assert phrase in lines[0], (phrase, lines[0])
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, files: Files, tmp_path: Path, runner) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if case.setup is not None:
        case.setup(out)
    before = snapshot(out)
    code, stdout, err = runner(*case.args(files, out))
    assert_one_error_line(err, case.phrase)
    assert code == case.code, (code, err)
    assert stdout == ""
    assert snapshot(out) == before  # no output, no temp file, pre-existing files untouched


def test_the_table_is_broad_enough() -> None:
    commands = {c.id.split("-")[0] for c in CASES}
    assert commands >= {
        "predict",
        "batch",
        "coregister",
        "vectorize",
        "evaluate",
        "export",
        "train",
    }
    assert len(CASES) >= 30
    assert {c.code for c in CASES} == {1, 2}


# ---- odd-looking inputs that are fine ------------------------------------------------------------
def _predict_ok(runner, files: Files, out: Path, *extra: Any) -> np.ndarray:
    code, stdout, err = runner(*P(files, "--tile", "32", "--json", *extra), "-o", out)
    assert code == 0, err
    assert json.loads(stdout)["outputs"]["label"] == str(out.absolute())
    with rasterio.open(out) as ds, rasterio.open(files.opt) as ref:
        assert (ds.crs, ds.transform, ds.shape) == (ref.crs, ref.transform, ref.shape)
        assert ds.dtypes == ("uint8",) and ds.nodata == 255
        return ds.read(1)


def test_int16_optical_with_float32_sar_is_normal(files: Files, tmp_path: Path, runner) -> None:
    """Integer reflectance + float dB is the usual Sentinel-2 + Sentinel-1 pair: it must work,
    and give exactly what the same optical values stored as float32 give."""
    with rasterio.open(files.opt) as a, rasterio.open(files.opt_f32) as b:
        assert a.dtypes[0] == "int16" and b.dtypes[0] == "float32"
    labels_int = _predict_ok(runner, files, tmp_path / "int.tif")
    both = P(files, "--tile", "32", opt=files.opt_f32)
    code, _, err = runner(*both, "-o", tmp_path / "float.tif")
    assert code == 0, err
    with rasterio.open(tmp_path / "float.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), labels_int)
    assert set(np.unique(labels_int)) <= {0, 1}  # every pixel valid, a class id
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bands_picked_by_description_and_contradictions_warn(
    files: Files, tmp_path: Path, runner, caplog: pytest.LogCaptureFixture
) -> None:
    """Described bands are picked by meaning and reported; VH given for vv is an error (issue
    20), and runs with a warning when the user picks it by number."""
    args = P(files, "--json", out=tmp_path, opt=files["opt_named"], sar=files["sar_vh"])
    code, _, err = runner(*args)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "the band descriptions of sar_vh.tif (1=VH) name no vv (VV)" in err
    with caplog.at_level(logging.WARNING, logger="mfaf"):
        code, stdout, err = runner(*args, "--sar-bands", "1")
    assert code == 0, err
    bands = json.loads(stdout)["bands"]
    assert bands["optical"]["indexes"] == [1, 2, 3, 4]
    assert bands["optical"]["picked_by"] == "band descriptions"
    assert bands["optical"]["descriptions"] == ["B4", "B3", "B2", "B8"]
    assert bands["sar"]["picked_by"] == "--sar-bands"
    warning = "sar band 1 of sar_vh.tif is described as VH (vh), but model unet takes vv"
    assert bands["sar"]["warnings"][0].startswith(warning)
    assert warning in caplog.text and "Error" not in err
    from mfaf_cli.cli.predict import _summary  # the stderr line of a run without --json

    line = _summary(json.loads(stdout))
    assert line.endswith(
        "; bands: optical B4,B3,B2,B8 (1,2,3,4, by band descriptions), sar VH (1, by --sar-bands)"
    )


def test_nan_and_inf_pixels_become_nodata(files: Files, tmp_path: Path, runner) -> None:
    with rasterio.open(files.sar) as ds:
        sar = ds.read()
    bad = np.zeros((SIZE, SIZE), bool)
    sar[0, 3, 4] = np.nan
    sar[0, 20, 30] = np.inf
    sar[0, 40, 7] = -np.inf
    sar[0, 30:34, 30:34] = np.nan
    for r, c in [(3, 4), (20, 30), (40, 7)]:
        bad[r, c] = True
    bad[30:34, 30:34] = True
    sar_path = write_tif(tmp_path / "sar_nan.tif", sar)
    out = tmp_path / "m.tif"
    code, stdout, err = runner(*P(files, "--tile", "32", "--json", sar=sar_path), "-o", out)
    assert code == 0, err
    labels = rasterio.open(out).read(1)
    np.testing.assert_array_equal(labels == 255, bad)
    d = json.loads(stdout)
    assert d["valid_fraction"] == pytest.approx(1 - bad.sum() / bad.size, abs=1e-6)


# ---- permissions (root ignores file modes: simulate what the OS would say) --------------------
def _deny(monkeypatch: pytest.MonkeyPatch, path: Path, mode: int) -> None:
    """Make ``path`` unreadable/unwritable: chmod for normal users; for root, whom the kernel
    lets through anyway, make ``os.access`` answer as it would for anyone else."""
    if os.geteuid() != 0:
        path.chmod(0o000 if path.is_file() else 0o500)
        return
    real = os.access

    def access(p: Any, m: int, *a: Any, **kw: Any) -> bool:
        if Path(p).absolute() == path.absolute() and m & mode:
            return False
        return real(p, m, *a, **kw)

    monkeypatch.setattr(os, "access", access)


def test_unreadable_input(files: Files, tmp_path: Path, runner, monkeypatch) -> None:
    sar = tmp_path / "locked.tif"
    sar.write_bytes(files.sar.read_bytes())
    _deny(monkeypatch, sar, os.R_OK)
    out = tmp_path / "out"
    out.mkdir()
    # predict checks readability itself (data error); vectorize's click argument does (usage)
    for args, want in (
        (P(files, out=out, sar=sar), 1),
        (["vectorize", sar, "-o", out / "v.gpkg"], 2),
    ):
        code, _, err = runner(*args)
        assert_one_error_line(err, "is not readable")
        assert code == want
        assert snapshot(out) == {}
    sar.chmod(0o644)


def test_read_only_output_folder(files: Files, tmp_path: Path, runner, monkeypatch) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    _deny(monkeypatch, ro, os.W_OK)
    for args in (
        P(files, out=ro),
        ["vectorize", files["labels"], "-o", ro / "v.gpkg"],
        ["coregister", "--optical", files.opt, "--sar", files.sar, "-o", ro],
    ):
        code, _, err = runner(*args)
        assert_one_error_line(err, "not writable")
        assert code == 2
        assert snapshot(ro) == {}
    ro.chmod(0o755)


# ---- Ctrl-C and SIGTERM during a real run ----------------------------------------------------
def _start_slow_predict(files: Files, folder: Path) -> subprocess.Popen[bytes]:
    """A run of several seconds: 1280² px, 32 px tiles at 50 % overlap, one window per call,
    the torch engine (the default ONNX path finished 640² before the signal arrived)."""
    rng = np.random.default_rng(0)
    n = 1280
    t = from_origin(500_000.0, 4_500_000.0, 10.0, 10.0)
    opt = write_tif(
        folder / "opt.tif", rng.integers(0, 3000, (4, n, n)).astype("int16"), transform=t
    )
    sar = write_tif(
        folder / "sar.tif", rng.normal(-12, 3, (1, n, n)).astype("float32"), transform=t
    )
    out = folder / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "mfaf_cli", "predict", "--model", str(files["ckpt"]),
           "--optical", str(opt), "--sar", str(sar), "-o", str(out / "map.tif"),
           "--probabilities", str(out / "probs.tif"), "--tile", "32", "--overlap", "0.5",
           "--batch-size", "1", "--device", "cpu", "--engine", "torch", "-q"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # A child inherits an ignored SIGINT across exec (and Python then never raises
    # KeyboardInterrupt); a handled one becomes the default, as from a user's shell.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    finally:
        signal.signal(signal.SIGINT, before)


def test_sigint_and_sigterm_leave_no_partial_output(files: Files, tmp_path: Path) -> None:
    runs = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        folder = tmp_path / sig.name
        folder.mkdir()
        runs[sig] = (folder / "out", _start_slow_predict(files, folder))
    sent: dict[signal.Signals, bool] = {}
    deadline = time.monotonic() + 60
    while len(sent) < len(runs) and time.monotonic() < deadline:
        for sig, (out, proc) in runs.items():
            if sig in sent:
                continue
            assert proc.poll() is None, f"run finished before {sig.name}: {proc.stderr.read()!r}"
            if any(p.name.endswith(".tmp") for p in out.iterdir()):
                time.sleep(0.3)  # well inside the window loop
                proc.send_signal(sig)
                sent[sig] = True
        time.sleep(0.05)
    assert len(sent) == len(runs), "no temp file appeared within 60 s"
    for sig, (out, proc) in runs.items():
        _, err = proc.communicate(timeout=60)
        want = 130 if sig == signal.SIGINT else 143
        assert proc.returncode == want, (sig.name, proc.returncode, err.decode())
        assert b"Traceback" not in err
        assert list(out.iterdir()) == [], (sig.name, sorted(p.name for p in out.iterdir()))


# ---- tracebacks only on request; exit codes documented ----------------------------------------
def test_tracebacks_only_with_debug(files: Files, tmp_path: Path, runner, monkeypatch) -> None:
    from mfaf_cli.errors import CRSError

    args = P(files, out=tmp_path, sar=files["nocrs"])
    code, _, err = runner(*args)
    assert code == 1 and "Traceback" not in err
    for flag in ("--debug", "-v", "-vv", "--verbose"):
        with pytest.raises(CRSError):
            runner(flag, *args)
    # an unexpected exception (an mfaf bug) is still one line, exit 1, with a hint
    pipeline = sys.modules["mfaf_cli.pipeline.predict"]  # the package re-exports predict()

    def boom(*a: Any, **kw: Any) -> Any:
        raise RuntimeError("grid exploded\nsecond line of detail")

    monkeypatch.setattr(pipeline, "grid_from_reference", boom)
    code, _, err = runner(*P(files, out=tmp_path))
    line = assert_one_error_line(err, "internal error: RuntimeError: grid exploded second line")
    assert code == 1 and line.endswith("(rerun with --debug)")
    assert list(tmp_path.iterdir()) == []


def test_exit_codes_are_documented(runner) -> None:
    code, out, _ = runner("--help")
    assert code == 0
    text = " ".join(out.split())
    for item in ("0 success", "1 data/runtime error", "2 usage error", "130", "143"):
        assert item in text
    code, out, _ = runner("predict", "--help")
    assert "--batch CSV" in out and "--skip-existing" in out

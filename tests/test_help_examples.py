"""Every example shown in every ``--help`` and in README.md's code blocks runs.

Each example is taken from the rendered help text (or README's fenced ``bash`` / ``python``
blocks) and run through bash in a scratch folder that holds files under the names the examples
use, made from the shipped sample scene (examples/sen1floods11) and generated data. The only
changes made to an example's text, so that it fits a CPU-only test machine:

- ``mfaf`` → ``python -m mfaf_cli`` (this checkout), ``--device cuda`` → ``--device cpu``;
- ``mfaf train`` runs get ``--epochs 1 --max-batches 1 --max-val-batches 1 --tile 32
  --batch-size 2`` appended (a resumed run ``--epochs 2``), the last value of a flag winning;
- ``mfaf predict`` gets ``--overwrite`` (several examples write the same ``map.tif``), and a
  trailing ``# comment`` is dropped before anything is appended;
- in README, ``pip install ...`` steps and the test-suite command itself are left out.

Examples that elide arguments (``...``) are skipped. Those that run a model are marked slow;
the fast subset (info, models, vectorize, evaluate on rasters, coregister, help) stays well
under a minute.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sen1floods11"
COMMANDS = ("predict", "coregister", "vectorize", "info", "models", "export", "train", "evaluate")
#: Commands whose examples write the maps later examples read (no pre-made maps in their folder).
MAKES_MAPS = {"predict", "mfaf", "README"}
SLOW = re.compile(r"mfaf (predict|train|export)\b|--dataset|^python3? -c|torchrun")


# ---- extraction -------------------------------------------------------------------------------
def help_text(command: str | None) -> str:
    from mfaf_cli.cli.main import cli

    args = [command, "--help"] if command else ["--help"]
    res = CliRunner().invoke(cli, args, prog_name="mfaf", terminal_width=100)
    assert res.exit_code == 0, res.output
    return res.output


def examples_in_help(text: str) -> list[str]:
    """Command lines of the help's "Examples:" section (continuations joined, comments out)."""
    out: list[str] = []
    in_examples, pending = False, ""
    for line in text.splitlines():
        line = line.replace("\b", "")  # click's no-rewrap marker, shown inside a paragraph
        stripped = line.strip()
        if stripped.lower().startswith("examples"):
            in_examples = True
            continue
        if not in_examples:
            continue
        indent = len(line) - len(line.lstrip())
        if stripped and indent <= 2 and not pending:  # the prose after the examples
            break
        if pending:
            pending += " " + stripped
        elif re.match(r"(mfaf|xargs|torchrun) ", stripped):
            pending = stripped
        if pending and not pending.endswith("\\"):
            out.append(pending)
            pending = ""
        elif pending:
            pending = pending[:-1].rstrip()
    return out


def examples_in_readme(text: str) -> list[tuple[str, str]]:
    """(language, command) of README's fenced bash / python blocks."""
    out: list[tuple[str, str]] = []
    for lang, body in re.findall(r"```(bash|python)\n(.*?)```", text, flags=re.S):
        if lang == "python":
            out.append(("python", body))
            continue
        for line in body.replace("\\\n", " ").splitlines():
            steps = [s.strip() for s in line.split("&&") if s.strip()]
            steps = [s for s in steps if not s.startswith("pip ") and "pytest" not in s]
            if steps:
                out.append(("bash", " && ".join(steps)))
    return out


def all_examples() -> list[tuple[str, str, str]]:
    """(source, language, command) for every help page and README.md."""
    out = [("mfaf", "bash", c) for c in examples_in_help(help_text(None))]
    for cmd in COMMANDS:
        out += [(cmd, "bash", c) for c in examples_in_help(help_text(cmd))]
    readme = (ROOT / "README.md").read_text()
    out += [("README", lang, c) for lang, c in examples_in_readme(readme)]
    return out


def test_extraction_finds_the_examples() -> None:
    found = all_examples()
    sources = {s for s, _, _ in found}
    assert sources == {"mfaf", "README", *COMMANDS}
    predict = [c for s, _, c in found if s == "predict"]
    assert any("--batch scenes.csv" in c and c.endswith("> results.jsonl") for c in predict)
    assert all(not c.endswith("\\") for _, _, c in found)
    assert len(found) >= 30


# ---- the scratch folder -----------------------------------------------------------------------
def _write(path: Path, data: np.ndarray, like: Path, **extra: object) -> None:
    with rasterio.open(like) as ref:
        prof = {
            "driver": "GTiff", "width": data.shape[-1], "height": data.shape[-2],
            "count": data.shape[0], "dtype": data.dtype, "crs": ref.crs,
            "transform": ref.transform @ rasterio.Affine.scale(
                ref.width / data.shape[-1], ref.height / data.shape[-2]),
        } | extra  # fmt: skip
    driver = "JP2OpenJPEG" if path.suffix == ".jp2" else "GTiff"
    prof["driver"] = driver
    if driver == "JP2OpenJPEG":
        prof |= {"QUALITY": 100, "REVERSIBLE": "YES"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(data)


def _maps(folder: Path) -> None:
    """water.tif (the sample's hand label as a 2-class map) and landuse.tif + whu_lbl.tif."""
    from mfaf_cli.metadata import WHU_CLASSES

    with rasterio.open(SAMPLE / "label.tif") as ds:
        lab = ds.read(1)
    water = np.where(lab < 0, 255, lab).astype(np.uint8)[None]
    _write(folder / "water.tif", water, SAMPLE / "label.tif", nodata=255)
    with rasterio.open(folder / "water.tif", "r+") as ds:
        ds.update_tags(CLASS_NAMES=json.dumps(["not-water", "water"]), CLASS_IDS="[0, 1]")
        ds.write_colormap(1, {0: (225, 220, 200, 255), 1: (30, 90, 200, 255)})
    rng = np.random.default_rng(0)
    # a second, noisier map and the pairs CSV of `evaluate --batch` / `--compare`
    flip = (rng.random(water.shape) < 0.1) & (water != 255)
    _write(folder / "water_b.tif", np.where(flip, 1 - water, water).astype(np.uint8),
           SAMPLE / "label.tif", nodata=255)  # fmt: skip
    with rasterio.open(folder / "water_b.tif", "r+") as ds:
        ds.update_tags(CLASS_NAMES=json.dumps(["not-water", "water"]), CLASS_IDS="[0, 1]")
    (folder / "pairs.csv").write_text(
        "scene,prediction,truth\na,water.tif,label.tif\nb,water_b.tif,label.tif\n"
    )
    classes = rng.integers(0, 8, (1, 64, 64)).astype(np.uint8)
    _write(folder / "landuse.tif", classes, SAMPLE / "label.tif", nodata=255)
    with rasterio.open(folder / "landuse.tif", "r+") as ds:
        ds.update_tags(
            CLASS_NAMES=json.dumps([c.name for c in WHU_CLASSES]),
            CLASS_IDS=json.dumps([c.id for c in WHU_CLASSES]),
        )
    truth = np.where(rng.random((1, 64, 64)) < 0.7, classes, 0) * 10
    _write(folder / "whu_lbl.tif", truth.astype(np.uint8), SAMPLE / "label.tif")
    why = np.zeros_like(water)  # an exclusion mask of water.tif (predict --exclusion)
    why[:, :40, :60] = 2
    _write(folder / "why.tif", np.where(water == 255, 255, why).astype(np.uint8),
           SAMPLE / "label.tif", nodata=255)  # fmt: skip


def _band_files(folder: Path) -> None:
    """Sentinel-2 one-band files (JP2 and GeoTIFF, B12 at half resolution) and an L2A SAFE."""
    with rasterio.open(SAMPLE / "S2.tif") as ds:
        b12, b8, b4 = ds.read(13), ds.read(8), ds.read(4)
    b12_20 = b12.reshape(192, 2, 192, 2).mean(axis=(1, 3)).astype(np.uint16)[None]
    like = SAMPLE / "S2.tif"
    img = folder / "S2B_MSIL2A.SAFE" / "GRANULE" / "L2A_T29SND" / "IMG_DATA"
    for name, data in (("B12_20m", b12_20), ("B08_10m", b8[None]), ("B04_10m", b4[None])):
        data = data.astype(np.uint16)
        _write(folder / f"T29SND_{name}.jp2", data, like)
        _write(img / f"R{name[-3:]}" / f"T29SND_20200101T112431_{name}.jp2", data, like)
        _write(folder / f"{name[:3]}.tif", data, like)


def _hsi_lidar(folder: Path) -> None:
    """hsi.tif / dsm.tif over the predict example's UTM 15N bounds, and a CoMiX checkpoint."""
    from rasterio.transform import from_origin

    from mfaf_cli import registry
    from mfaf_cli.io.weights import save_checkpoint

    rng = np.random.default_rng(1)
    t = from_origin(270_980.0, 3_289_150.0, 2.0, 2.0)
    for name, n in (("hsi.tif", 5), ("dsm.tif", 1)):
        with rasterio.open(folder / name, "w", driver="GTiff", width=90, height=90, count=n,
                           dtype="float32", crs="EPSG:32615", transform=t) as ds:  # fmt: skip
            ds.write(rng.normal(100, 10, (n, 90, 90)).astype("float32"))
    meta = registry.default_meta("comix-lite", {"hsi": 5, "lidar": 1}, 3)
    meta = replace(meta, trained=True, tile_size=64)
    model = registry.create_model("comix-lite", meta.in_channels, 3, **meta.config)
    save_checkpoint(model, meta, folder / "comix-s.safetensors")


def _datasets(folder: Path) -> None:
    from test_datasets import make_ombria, make_whu_sheets

    make_ombria(folder / "ombria", n_train=4, n_test=2, size=32)
    (folder / "data").mkdir()
    (folder / "data" / "ombria").symlink_to(folder / "ombria")
    make_whu_sheets(folder / "WHU-OPT-SAR")
    (folder / "train.toml").write_text(
        'dataset = "ombria"\ndata_root = "ombria"\nmodel = "unet"\nout = "runs/toml"\n'
        "[model_config]\nbase_width = 4\n"
    )


def _scratch(folder: Path, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("S2.tif", "S1.tif", "label.tif"):
        (folder / name).symlink_to(SAMPLE / name)
    (folder / "LabelHand.tif").symlink_to(SAMPLE / "label.tif")
    (folder / "examples").symlink_to(ROOT / "examples")
    (folder / "weights").symlink_to(ROOT / "weights")
    (folder / "mfaf_cli").mkdir()
    (folder / "mfaf_cli" / "weights").symlink_to(ROOT / "mfaf_cli" / "weights")
    (folder / "runs" / "x").mkdir(parents=True)
    (folder / "runs" / "x" / "best.safetensors").symlink_to(
        ROOT / "mfaf_cli" / "weights" / "unet-ombria-water.safetensors"
    )
    for sub in ("s2", "s1", "maps"):
        (folder / sub).mkdir()
    (folder / "s2" / "a.tif").symlink_to(SAMPLE / "S2.tif")
    (folder / "s1" / "a.tif").symlink_to(SAMPLE / "S1.tif")
    (folder / "scene-ids.txt").write_text("a\n")
    (folder / "scenes.csv").write_text("scene,optical,sar,output\na,S2.tif,S1.tif,out/a.tif\n")
    if source not in MAKES_MAPS:
        _maps(folder)
    if source in ("predict", "coregister"):
        _band_files(folder)
    if source == "predict":
        _hsi_lidar(folder)
    if source in ("train", "evaluate"):
        _datasets(folder)
    if source == "train":
        _landcover(folder)
    return folder


def _landcover(folder: Path) -> None:
    """landcover/: two optical + SAR scenes, WorldCover labels in EPSG:3035, a class file."""
    from dataset_builders import make_landcover

    make_landcover(folder / "landcover")
    (folder / "landcover" / "classes.csv").write_text(
        "code,name,colour\n10,trees,#006400\n40,crops,#f096ff\n50,built-up,#fa0000\n"
    )


# ---- running ----------------------------------------------------------------------------------
def adapt(command: str) -> str:
    """The documented changes for a CPU-only test machine (see the module docstring)."""
    cmd = re.sub(r"\s+#.*$", "", command)  # a trailing comment would swallow added flags
    cmd = cmd.replace("--device cuda", "--device cpu")
    if cmd.startswith("mfaf predict") and "--overwrite" not in cmd:
        cmd += " --overwrite"  # several examples write the same map.tif in one scratch folder
    if cmd.startswith("mfaf train"):
        if "--resume" in cmd:
            cmd = re.sub(r"--epochs \d+", "", cmd) + " --epochs 2 --max-batches 1"
        else:
            cmd += " --epochs 1 --max-batches 1 --tile 32 --batch-size 2"
        cmd += " --max-val-batches 1 -q"
    mfaf = f"{shlex.quote(sys.executable)} -m mfaf_cli"
    return re.sub(r"(?<![\w./-])mfaf(?= )", mfaf, cmd)


def run_example(lang: str, command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    if lang == "python":
        args = [sys.executable, "-c", command]
    else:
        args = ["bash", "-c", "set -eo pipefail; " + adapt(command)]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _params() -> list[object]:
    groups: dict[str, list[tuple[str, str]]] = {}
    for source, lang, cmd in all_examples():
        if "..." in cmd:
            continue  # an elided example (e.g. torchrun ... for multi-GPU)
        groups.setdefault(source, []).append((lang, cmd))
    out: list[object] = []
    for source, cmds in groups.items():
        fast = [c for c in cmds if not SLOW.search(c[1])]
        slow = [c for c in cmds if SLOW.search(c[1])]
        if fast and source not in MAKES_MAPS:
            out.append(pytest.param(source, fast, id=f"{source}-fast"))
            fast = []
        if fast or slow:  # in order: later examples may read what earlier ones wrote
            run = cmds if fast else slow
            out.append(pytest.param(source, run, id=source, marks=pytest.mark.slow))
    return out


@pytest.mark.parametrize(("source", "commands"), _params())
def test_examples_run(source: str, commands: list[tuple[str, str]], tmp_path: Path) -> None:
    folder = _scratch(tmp_path / source, source)
    for lang, cmd in commands:
        res = run_example(lang, cmd, folder)
        assert res.returncode == 0, f"{source} example failed:\n{cmd}\n{res.stderr[-3000:]}"
    shutil.rmtree(folder, ignore_errors=True)

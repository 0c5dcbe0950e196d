"""A regular install finds the shipped weights: build a wheel, install it into a clean folder
and run ``mfaf predict`` on the sample scene from outside the repository.

Why: the weights once lived beside the package, so ``pip install .`` or a wheel silently ran an
UNTRAINED model. They are package data now (``mfaf_cli/weights/``, whatever its manifest
lists); this is the check that they travel, that they are the ones used, and that the bands of
the sample Sentinel-2 file are picked from its band descriptions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import rasterio
from conftest import EXAMPLES

REPO = Path(__file__).resolve().parents[1]
SCENE = EXAMPLES / "sen1floods11"


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    return r


def _isolation_flag() -> list[str]:
    """Build offline with the installed setuptools when it is new enough (else let pip fetch it)."""
    try:
        import setuptools

        return ["--no-build-isolation"] if int(setuptools.__version__.split(".")[0]) >= 77 else []
    except ImportError:
        return []


def _build_wheel(tmp: Path) -> Path:
    """A wheel of a clean copy of the sources (a stale build/ folder cannot leak files in)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "mfaf_cli", src / "mfaf_cli",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))  # fmt: skip
    out = tmp / "wheel"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", *_isolation_flag(), str(src), "-w", str(out)])
    (wheel,) = out.glob("mfaf-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_install_predicts_with_shipped_trained_weights(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    manifest = json.loads((REPO / "mfaf_cli" / "weights" / "manifest.json").read_text())
    files = {f"mfaf_cli/weights/{e['file']}": e["size_bytes"] for e in manifest["models"]}
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert "mfaf_cli/weights/manifest.json" in names and set(files) <= names
    extra = sorted(n for n in names if n.startswith("mfaf_cli/weights/") and n not in files)
    assert extra == ["mfaf_cli/weights/manifest.json"]  # nothing unlisted ships
    assert wheel.stat().st_size < sum(files.values()) + 2e6  # the weights, plus ~1 MB of code

    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)])
    env = {k: v for k, v in os.environ.items() if k != "MFAF_WEIGHTS_DIR"}
    env["PYTHONPATH"] = str(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([sys.executable, "-c", "import mfaf_cli; print(mfaf_cli.__file__)"],
                 cwd=work, env=env)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(site)  # the wheel's copy, not the repo's

    out = work / "water.tif"
    r = _run([sys.executable, "-m", "mfaf_cli", "predict", "--optical", str(SCENE / "S2.tif"),
              "--sar", str(SCENE / "S1.tif"), "-o", str(out), "--json", "-q"],
             cwd=work, env=env)  # fmt: skip
    result = json.loads(r.stdout.strip().splitlines()[-1])
    default = next(e for e in manifest["models"] if e.get("default"))
    assert result["trained"] is True and result["model"] == default["name"]
    assert "UNTRAINED" not in r.stderr
    # no --optical-bands / --sar-bands: the sample's band descriptions say which bands to use
    assert result["bands"]["optical"]["descriptions"] == ["B12", "B8", "B4"]
    assert result["bands"]["optical"]["indexes"] == [13, 8, 4]
    assert result["bands"]["optical"]["picked_by"] == "band descriptions"
    assert result["bands"]["sar"]["descriptions"] == ["VV"]
    with rasterio.open(out) as ds:
        assert ds.tags()["MODEL_WEIGHTS"] == "TRAINED"
        assert ds.tags()["MODEL"] == default["arch"]

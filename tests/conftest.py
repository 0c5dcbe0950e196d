"""Shared fixtures: a GeoTIFF factory with real CRS/transform/nodata, and a CLI runner.

Area-specific helpers live in the test modules that use them; keep this file small.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine, from_origin

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _restore_sigterm() -> Iterator[None]:
    """The CLI installs its own SIGTERM handler; a test that runs it must not leave it behind
    (a later SIGTERM to pytest would become SystemExit(143) inside an unrelated test)."""
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGTERM, before[0])
    signal.signal(signal.SIGINT, before[1])


@pytest.fixture(autouse=True)
def _forget_reported_warnings() -> Iterator[None]:
    """Dataset warnings are given once per process; each test is a fresh user run."""
    from mfaf_cli.data import base

    base._REPORTED.clear()
    yield

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TEST_DATA = Path(__file__).resolve().parent / "data"


def write_geotiff(
    path: Path,
    data: np.ndarray,
    crs: str | None = "EPSG:32630",
    transform: Affine | None = None,
    nodata: float | None = None,
    descriptions: list[str] | None = None,
    tags: dict[str, str] | None = None,
) -> Path:
    """Write a (C, H, W) or (H, W) array as a GeoTIFF (crs=None writes no CRS)."""
    if data.ndim == 2:
        data = data[None]
    c, h, w = data.shape
    if transform is None:
        transform = from_origin(500_000.0, 4_500_000.0, 10.0, 10.0)
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": c,
        "dtype": data.dtype.name,
        "transform": transform,
    }
    if crs is not None:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            for i, d in enumerate(descriptions, start=1):
                dst.set_band_description(i, d)
        if tags:
            dst.update_tags(**tags)
    return path


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """ONNX exports cached by ``--engine auto`` go to a temp folder, never the user's cache."""
    os.environ["MFAF_CACHE_DIR"] = str(tmp_path_factory.mktemp("mfaf-cache"))


@pytest.fixture
def make_geotiff(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_geotiff("name.tif", array, crs=..., transform=..., nodata=...)``."""

    def _make(name: str, data: np.ndarray, **kw: object) -> Path:
        return write_geotiff(tmp_path / name, data, **kw)  # type: ignore[arg-type]

    return _make


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def runner():
    """Invoke the real ``mfaf`` entry point in-process; returns (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from mfaf_cli.cli.main import main

    def _run(*args: object) -> tuple[int, str, str]:
        r = CliRunner()
        with r.isolation() as streams:
            try:
                main([str(a) for a in args])
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return code, streams[0].getvalue().decode(), streams[1].getvalue().decode()

    return _run


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A narrow U-Net checkpoint tagged trained (batch and scale-out tests)."""
    from dataclasses import replace

    from mfaf_cli import registry
    from mfaf_cli.io.weights import save_checkpoint

    meta = registry.default_meta("unet", None, 2, base_width=4)
    meta = replace(meta, trained=True, tile_size=32)
    model = registry.create_model("unet", meta.in_channels, 2, **meta.config)
    return save_checkpoint(model, meta, tmp_path_factory.mktemp("w") / "unet.safetensors")

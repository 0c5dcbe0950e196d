"""The folder dataset reads with GDAL's block cache capped (data/folder.py): its set-up reads
whole files decimated and an epoch touches every block, so with GDAL's default cache (5 % of
RAM) a training process's memory grew with the scene."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dataset_builders import make_landcover
from rasterio.env import get_gdal_config

from mfaf_cli.coreg.align import AlignedScene
from mfaf_cli.data import folder
from mfaf_cli.data.folder import GDAL_CACHE_BYTES, FolderDataset


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_landcover(tmp_path_factory.mktemp("lc") / "lc", size=64)


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The GDAL_CACHEMAX in force at each window read and each decimated read."""
    seen: list[Any] = []
    read, decimated = AlignedScene.read, AlignedScene.read_decimated

    def spy_read(self: AlignedScene, *a: Any, **k: Any) -> Any:
        seen.append(get_gdal_config("GDAL_CACHEMAX"))
        return read(self, *a, **k)

    def spy_decimated(self: AlignedScene, *a: Any, **k: Any) -> Any:
        seen.append(get_gdal_config("GDAL_CACHEMAX"))
        return decimated(self, *a, **k)

    monkeypatch.setattr(AlignedScene, "read", spy_read)
    monkeypatch.setattr(AlignedScene, "read_decimated", spy_decimated)
    return seen


def test_set_up_and_samples_read_with_a_capped_block_cache(
    scenes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    before = get_gdal_config("GDAL_CACHEMAX")
    seen = _spy(monkeypatch)
    ds = FolderDataset(scenes, "train", tile=16, seed=3, classes="worldcover",
                       normalisation="fixed")  # fmt: skip
    ds.set_normalisation(ds.compute_normalisation())
    x = ds[0]
    assert len(seen) >= 2 and all(int(v) == GDAL_CACHE_BYTES for v in seen)
    assert get_gdal_config("GDAL_CACHEMAX") == before  # the process's own setting, after
    assert np.isfinite(x["inputs"]["optical"].numpy()).all()


def test_a_user_gdal_cachemax_is_left_alone(scenes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDAL_CACHEMAX", "512")
    seen = _spy(monkeypatch)
    ds = FolderDataset(scenes, "train", tile=16, seed=3, classes="worldcover",
                       normalisation="fixed")  # fmt: skip
    ds.set_normalisation(ds.compute_normalisation())
    ds[0]
    assert seen and all(v is None or int(v) != GDAL_CACHE_BYTES for v in seen)
    assert folder.bounded_gdal_cache().__class__.__name__ == "nullcontext"

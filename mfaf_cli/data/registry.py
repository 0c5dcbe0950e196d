"""Dataset names → readers: the one place a new dataset is registered."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from mfaf_cli.data.base import SPLITS, SegDataset
from mfaf_cli.data.folder import FolderDataset
from mfaf_cli.data.ombria import OmbriaDataset
from mfaf_cli.data.sen1floods11 import Sen1Floods11Dataset
from mfaf_cli.data.whu import open_whu
from mfaf_cli.errors import DatasetError, UsageError

DATASET_NAMES: tuple[str, ...] = ("ombria", "sen1floods11", "whu", "folder")
#: Datasets whose bands ``bands`` selects (OMBRIA's PNGs hold fixed bands).
BAND_SELECTABLE: tuple[str, ...] = ("sen1floods11", "whu", "folder")


_FACTORIES: dict[str, Callable[..., SegDataset]] = {
    "ombria": OmbriaDataset,
    "sen1floods11": Sen1Floods11Dataset,
    "whu": open_whu,
    "folder": FolderDataset,
}


def open_dataset(name: str, root: str | os.PathLike[str], split: str, **options: Any) -> SegDataset:
    """Open ``split`` of dataset ``name`` under ``root``.

    Options (all optional): ``modalities`` (those the model takes, in model order), ``tile``,
    ``augment`` (default: train split only), ``seed``, ``ignore_index``, ``p_low``/``p_high``,
    ``val_fraction``, ``bands`` ({modality: [1-based numbers or band names]}; not ombria),
    ``num_classes`` (folder). Raises :class:`DatasetError` for unknown names, a missing root,
    a wrong layout (naming the folder expected) or an empty split.
    """
    if name not in _FACTORIES:
        raise DatasetError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    options = {k: v for k, v in options.items() if v is not None}
    if name not in BAND_SELECTABLE and options.get("bands"):
        where = next(iter(dict(options.get("band_flags") or {}).values()), "--bands")
        raise UsageError(
            f"{where}: the ombria dataset's bands are fixed (its PNGs hold a B12/B8/B4 "
            "composite and VV); leave it out"
        )
    return _FACTORIES[name](root, split, **options)

"""Backward-compatible re-exports: the datasets now live in one module each.

Every dataset yields ``{"inputs": {modality: float32 (C,H,W)}, "mask": int64 (H,W), "index"}``
with inputs normalised by :mod:`mfaf_cli.normalize` exactly as the predict pipeline does (see
:class:`mfaf_cli.data.base.SegDataset`). New code imports from the rooms directly:
:mod:`~mfaf_cli.data.base`, :mod:`~mfaf_cli.data.transforms`, :mod:`~mfaf_cli.data.splits`,
:mod:`~mfaf_cli.data.ombria`, :mod:`~mfaf_cli.data.sen1floods11`, :mod:`~mfaf_cli.data.whu`,
:mod:`~mfaf_cli.data.folder` and :mod:`~mfaf_cli.data.registry` (``open_dataset``).
"""

from __future__ import annotations

from mfaf_cli.data.base import (
    DECIMATED_SIDE,
    MAX_STAT_ITEMS,
    NORMALISATION_MODES,
    SPLITS,
    Scene,
    SegDataset,
    find_dir,
)
from mfaf_cli.data.folder import MODALITY_COLUMNS, FolderDataset, read_scene_list
from mfaf_cli.data.ombria import (
    OMBRIA_OPTICAL_BANDS,
    OMBRIA_TO_SENTINEL,
    OmbriaDataset,
    to_sentinel_units,
)
from mfaf_cli.data.registry import DATASET_NAMES, open_dataset
from mfaf_cli.data.sen1floods11 import S2_BAND_NAMES, Sen1Floods11Dataset
from mfaf_cli.data.splits import grid_offsets, parse_split_file, seeded_holdout, seeded_split3
from mfaf_cli.data.transforms import augment, jitter_window, pad_to, photometric_jitter, random_crop
from mfaf_cli.data.whu import (
    LBL_NAMES,
    OPT_NAMES,
    SAR_NAMES,
    WhuPrecutDataset,
    WhuSheetDataset,
    open_whu,
    whu_map_label,
)

__all__ = [
    "DATASET_NAMES",
    "DECIMATED_SIDE",
    "LBL_NAMES",
    "MAX_STAT_ITEMS",
    "MODALITY_COLUMNS",
    "NORMALISATION_MODES",
    "OMBRIA_OPTICAL_BANDS",
    "OMBRIA_TO_SENTINEL",
    "OPT_NAMES",
    "S2_BAND_NAMES",
    "SAR_NAMES",
    "SPLITS",
    "FolderDataset",
    "OmbriaDataset",
    "Scene",
    "SegDataset",
    "Sen1Floods11Dataset",
    "WhuPrecutDataset",
    "WhuSheetDataset",
    "augment",
    "find_dir",
    "grid_offsets",
    "jitter_window",
    "open_dataset",
    "open_whu",
    "pad_to",
    "parse_split_file",
    "photometric_jitter",
    "random_crop",
    "read_scene_list",
    "seeded_holdout",
    "seeded_split3",
    "to_sentinel_units",
    "whu_map_label",
]

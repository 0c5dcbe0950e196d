"""OMBRIA flood patches (Sentinel-2 false-colour + Sentinel-1 VV PNGs, 0/255 water masks)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mfaf_cli.data.base import (
    SegDataset,
    _check_modalities,
    _check_root,
    _read_png,
    _require_dir,
)
from mfaf_cli.data.splits import seeded_holdout
from mfaf_cli.errors import DatasetError, LabelError
from mfaf_cli.metadata import (
    WATER_CLASSES,
)

#: Channel names of OMBRIA's optical PNG composite (see OmbriaDataset).
OMBRIA_OPTICAL_BANDS = ("swir", "nir", "red")
#: OMBRIA's 8-bit PNG products → Sentinel units (S2 reflectance × 1e4 for B12, B8, B4; S1 VV
#: dB), per band ``sentinel = scale · png + offset``. Fitted by weights/fit_ombria_calibration.py
#: on OMBRIA train patches and the BigEarthNet-MM examples (no test scene); output in
#: weights/logs/ombria_calibration.json. With it, models trained on OMBRIA take raw Sentinel
#: data with a fixed normalisation; the percentile stretch is invariant to it.
OMBRIA_TO_SENTINEL: dict[str, tuple[tuple[float, float], ...]] = {
    "optical": ((19.0612, 91.0), (65.3273, -28.9818), (25.8421, -42.2105)),
    "sar": ((0.068732, -22.7879),),
}


def to_sentinel_units(modality: str, png: np.ndarray) -> np.ndarray:
    """OMBRIA 8-bit values (C, H, W) → Sentinel units with :data:`OMBRIA_TO_SENTINEL`."""
    cal = np.asarray(OMBRIA_TO_SENTINEL[modality], dtype=np.float32)
    return png.astype(np.float32) * cal[:, 0, None, None] + cal[:, 1, None, None]


class OmbriaDataset(SegDataset):
    """OMBRIA flood patches: S2 RGB + S1 (VV) "after" PNGs, 0/255 masks → 0/1.

    Layout ``<root>/OmbriaS2/{train,test}/{AFTER,MASK}/S2_after_0001.png`` and
    ``<root>/OmbriaS1/{train,test}/AFTER/S1_after_0001.png``. ``val`` is a seeded holdout
    (``val_fraction``) of the train ids; ``train`` is the rest; ``test`` is the test folder.
    """

    name = "ombria"
    all_modalities = ("optical", "sar")
    all_bands: ClassVar[dict[str, tuple[str, ...]]] = {
        "optical": OMBRIA_OPTICAL_BANDS,
        "sar": ("vv",),
    }
    sensor_units: ClassVar[dict[str, str]] = {"sar": "db"}
    class_table = WATER_CLASSES
    layout = (
        "<root>/OmbriaS2/{train,test}/{AFTER,MASK}/S2_{after,mask}_<id>.png, "
        "<root>/OmbriaS1/{train,test}/AFTER/S1_after_<id>.png"
    )

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        modalities: Sequence[str] | None = None,
        val_fraction: float = 0.15,
        **kw: Any,
    ) -> None:
        super().__init__(split, **kw)
        root = _check_root(root)
        self.modalities = _check_modalities(self.name, self.all_modalities, modalities)
        # OMBRIA's S2 PNGs are 3-channel 8-bit composites. Their look (saturated green
        # vegetation, pink built-up, black water) is that of a SWIR / NIR / red false-colour
        # composite, not true colour; on raw Sentinel-2 pass bands B12,B8,B4 (weights/README.md).
        self.band_names = dict(self.all_bands)
        self.units = dict(self.sensor_units)
        self.classes = self.class_table
        folders = ["train", "test"] if split == "all" else ["test" if split == "test" else "train"]
        self.items: list[tuple[str, str]] = []  # (folder, id)
        for folder in folders:
            ids = self._folder_ids(root, folder)
            if folder == "train" and split in ("train", "val"):
                train_ids, val_ids = seeded_holdout(ids, val_fraction, self.seed)
                ids = train_ids if split == "train" else val_ids
                self.split_source = (
                    f"OMBRIA train/ folder, val = seeded holdout (seed {self.seed}, "
                    f"fraction {val_fraction})"
                )
            self.items += [(folder, i) for i in ids]
        self.root = root
        self.split_source = self.split_source or f"OMBRIA {split} folder(s)"
        if not self.items:
            raise DatasetError(
                f"the {split} split of ombria at {root} is empty (no S2_after_<digits>.png with "
                "matching S1_after_<digits>.png and S2_mask_<digits>.png)"
            )

    def _folder_ids(self, root: Path, folder: str) -> list[str]:
        """Patch ids of ``train``/``test`` with an S2 patch, an S1 patch and a mask; every
        id missing one of them is counted and reported."""
        dirs = {
            "S2_after": root / "OmbriaS2" / folder / "AFTER",
            "S1_after": root / "OmbriaS1" / folder / "AFTER",
            "S2_mask": root / "OmbriaS2" / folder / "MASK",
        }
        where = f"{folder} ({root})"
        found: dict[str, set[str]] = {}
        for stem, d in dirs.items():
            _require_dir(d, f" holding {stem}_<digits>.png patches (OMBRIA layout)")
            pat = re.compile(rf"{stem}_(\d+)\.png$", re.I)
            pngs = [p.name for p in d.iterdir() if p.suffix.lower() == ".png"]
            found[stem] = {m.group(1) for n in pngs if (m := pat.match(n))}
            odd = [n for n in pngs if not pat.match(n)]
            self.skip(where, f"PNG files in {d} not named {stem}_<digits>.png", odd)
        images = found["S2_after"] | found["S1_after"]
        for stem in ("S2_after", "S1_after"):
            self.skip(where, f"no {stem}_<id>.png in {dirs[stem]}", sorted(images - found[stem]))
        both = found["S2_after"] & found["S1_after"]
        self.skip(
            where, f"no mask S2_mask_<id>.png in {dirs['S2_mask']}", sorted(both - found["S2_mask"])
        )
        return sorted(both & found["S2_mask"])

    def __len__(self) -> int:
        return len(self.items)

    def _paths(self, index: int) -> dict[str, Path]:
        folder, i = self.items[index]
        r = self.root
        return {
            "optical": r / "OmbriaS2" / folder / "AFTER" / f"S2_after_{i}.png",
            "sar": r / "OmbriaS1" / folder / "AFTER" / f"S1_after_{i}.png",
            "mask": r / "OmbriaS2" / folder / "MASK" / f"S2_mask_{i}.png",
        }

    def map_label(self, raw: np.ndarray, nodata: float | None = None) -> np.ndarray:
        raw = np.asarray(raw)
        if raw.ndim == 3:
            raw = raw[..., 0]
        bad = (raw != 0) & (raw != 255)
        if bad.any():
            raise LabelError(
                f"mask values {np.unique(raw[bad])[:8].tolist()} are not 0 or 255 (OMBRIA masks)"
            )
        return (raw == 255).astype(np.int64)

    def label_arrays(self) -> list[tuple[str, np.ndarray]]:
        return [
            (str(self._paths(i)["mask"]), _read_png(self._paths(i)["mask"]))
            for i in range(len(self))
        ]

    def raw(self, index, rng=None):  # type: ignore[override]
        p = self._paths(index)
        arrays: dict[str, np.ndarray] = {}
        if "optical" in self.modalities:
            a = _read_png(p["optical"])
            a = a[..., :3] if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2)
            arrays["optical"] = np.transpose(a, (2, 0, 1)).astype(np.float32)
        if "sar" in self.modalities:
            a = _read_png(p["sar"])
            a = a[..., 0] if a.ndim == 3 else a
            arrays["sar"] = a[None].astype(np.float32)
        arrays = {m: to_sentinel_units(m, a) for m, a in arrays.items()}
        mask = self.map_label(_read_png(p["mask"]))
        return arrays, mask, self._percentiles(arrays)

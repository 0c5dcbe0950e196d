"""Sen1Floods11 hand-labelled chips (S2 L1C 13 bands, S1 VV/VH dB, water labels)."""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mfaf_cli.data.bands import layout_indexes
from mfaf_cli.data.base import (
    Scene,
    SegDataset,
    _as_float_with_nan,
    _check_modalities,
    _check_root,
    _file_scenes,
    find_dir,
)
from mfaf_cli.data.splits import group_split3, seeded_split3
from mfaf_cli.errors import DatasetError, LabelError, UsageError
from mfaf_cli.metadata import (
    SENTINEL2_L1C_MEANINGS,
    WATER_CLASSES,
)

#: Sen1Floods11 S2Hand is a 13-band L1C stack: band number -> meaning (13 = swir, 9 = nir2).
S2_BAND_NAMES = dict(enumerate(SENTINEL2_L1C_MEANINGS, start=1))


def _water_map(raw: np.ndarray, ignore_index: int, nodata: float | None = None) -> np.ndarray:
    """Sen1Floods11/OMBRIA-style water labels: -1 (and nodata) ignored, 0/1 kept."""
    raw = np.asarray(raw)
    out = np.full(raw.shape, ignore_index, dtype=np.int64)
    keep = raw != -1
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        keep &= raw != nodata
    vals = raw[keep]
    bad = (vals != 0) & (vals != 1)
    if bad.any():
        raise LabelError(
            f"label values {np.unique(vals[bad])[:8].tolist()} are outside the water class table "
            "(0 not-water, 1 water, -1 nodata)"
        )
    out[keep] = vals.astype(np.int64)
    return out


def _find_s1hand(root: Path) -> Path | None:
    """The S1Hand folder: directly under the root, else the first within 6 levels below it."""
    s1 = find_dir(root, ["S1Hand"])
    if s1 is not None:
        return s1
    for cand in sorted(root.rglob("*")):
        if (
            cand.is_dir()
            and cand.name.lower() == "s1hand"
            and len(cand.relative_to(root).parts) <= 6
        ):
            return cand
    return None


class Sen1Floods11Dataset(SegDataset):
    """Sen1Floods11 hand-labelled chips: S2Hand (13 bands), S1Hand (VV, VH dB), LabelHand.

    Label −1 is nodata (ignored).

    Layouts: folders ``S1Hand/``, ``S2Hand/``, ``LabelHand/`` (anywhere below the root, as in
    the release's ``v1.1/data/flood_events/HandLabeled/``) or a flat folder of
    ``<id>_S1Hand.tif`` / ``<id>_S2Hand.tif`` / ``<id>_LabelHand.tif``. Splits come from the
    release's ``flood_{train,valid,test}_data.csv`` when found below the root, else a seeded
    70/15/15 split by chip.
    """

    name = "sen1floods11"
    patch_based = True
    all_modalities = ("optical", "sar")
    all_bands: ClassVar[dict[str, tuple[str, ...]]] = {
        "optical": tuple(SENTINEL2_L1C_MEANINGS),
        "sar": ("vv", "vh"),
    }
    #: 1-based bands read unless ``bands`` says otherwise (B4, B3, B2; VV)
    default_bands: ClassVar[dict[str, tuple[int, ...]]] = {"optical": (4, 3, 2), "sar": (1,)}
    sensor_units: ClassVar[dict[str, str]] = {"sar": "db"}
    class_table = WATER_CLASSES
    layout = (
        "S1Hand/, S2Hand/, LabelHand/ folders (anywhere below the root) or a flat folder of "
        "<id>_{S1Hand,S2Hand,LabelHand}.tif; splits from flood_{train,valid,test}_data.csv"
    )

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        modalities: Sequence[str] | None = None,
        bands: Mapping[str, Sequence[int | str]] | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        **kw: Any,
    ) -> None:
        super().__init__(split, **kw)
        root = _check_root(root)
        self.root = root
        self.modalities = _check_modalities(self.name, self.all_modalities, modalities)
        bands = {
            m: layout_indexes(
                v, self.all_bands[m], modality=m, dataset=self.name, where=self.band_flags.get(m)
            )
            for m, v in (bands or {}).items()
            if m in self.all_bands
        }
        self.bands = {
            "optical": [int(b) for b in bands.get("optical", self.default_bands["optical"])],
            "sar": [int(b) for b in bands.get("sar", self.default_bands["sar"])],
        }
        self.band_names = {
            "optical": tuple(S2_BAND_NAMES.get(b, f"B{b}") for b in self.bands["optical"]),
            "sar": tuple({1: "vv", 2: "vh"}.get(b, f"b{b}") for b in self.bands["sar"]),
        }
        self.units = dict(self.sensor_units)
        self.classes = self.class_table
        found = self._discover(root)
        self.files = {k: v for k, v in found.items() if len(v) == 3}
        for kind, pattern in (("sar", "S1Hand"), ("optical", "S2Hand"), ("label", "LabelHand")):
            lacking = [k for k, v in found.items() if len(v) < 3 and kind not in v]
            self.skip(f"({root})", f"no <id>_{pattern}.tif", lacking)
        ids = sorted(self.files)
        if split != "all":
            ids = self._split_ids(root, ids, split, val_fraction, test_fraction)
        self.ids = ids
        if not self.ids:
            raise DatasetError(f"the {split} split of sen1floods11 at {root} is empty")

    @staticmethod
    def _discover(root: Path) -> dict[str, dict[str, Path]]:
        """Files by chip id and kind (sar / optical / label), complete or not."""
        kinds = {"S1Hand": "sar", "S2Hand": "optical", "LabelHand": "label"}
        found: dict[str, dict[str, Path]] = {}

        def scan(folder: Path) -> None:
            for p in folder.iterdir():
                m = re.match(r"(.+)_(S1Hand|S2Hand|LabelHand)\.tiff?$", p.name, re.I)
                if m and p.is_file():
                    kind = {k.lower(): v for k, v in kinds.items()}[m.group(2).lower()]
                    found.setdefault(m.group(1), {})[kind] = p

        s1 = _find_s1hand(root)
        if s1 is not None:
            parent = s1.parent
            for sub in ("S1Hand", "S2Hand", "LabelHand"):
                d = find_dir(parent, [sub])
                if d is None:
                    raise DatasetError(
                        f"expected {parent / sub} next to {s1}; the Sen1Floods11 layout has "
                        "S1Hand, S2Hand and LabelHand folders"
                    )
                scan(d)
        else:
            scan(root)
        if not any(len(v) == 3 for v in found.values()):
            raise DatasetError(
                f"expected {root}/S1Hand, {root}/S2Hand and {root}/LabelHand (or files "
                f"<id>_S1Hand.tif, <id>_S2Hand.tif, <id>_LabelHand.tif in {root})"
            )
        return found

    def _split_ids(
        self, root: Path, ids: list[str], split: str, val_fraction: float, test_fraction: float
    ) -> list[str]:
        key = {"train": "train", "val": "valid", "test": "test"}[split]
        csvs = [
            p
            for p in sorted(root.rglob("*.csv"))
            if re.search(rf"(^|_){key}(_|\.|$)", p.name.lower())
            and len(p.relative_to(root).parts) <= 6
        ]
        self.split_source = (
            f"official split file {csvs[0]}"
            if csvs
            else f"seeded split (seed {self.seed}, val {val_fraction}, test {test_fraction})"
        )
        if csvs:
            wanted: set[str] = set()
            with open(csvs[0], newline="") as f:
                for row in csv.reader(f):
                    for cell in row:
                        m = re.match(
                            r"(.+)_(S1Hand|S2Hand|LabelHand)", Path(cell.strip()).name, re.I
                        )
                        if m:
                            wanted.add(m.group(1))
            self.skip(
                f"{split} ({root})", f"listed in {csvs[0].name} but not found", wanted - set(ids)
            )
            return [i for i in ids if i in wanted]
        groups = [i.rsplit("_", 1)[0] for i in ids]  # Spain_7370579 → the flood event's country
        if len(set(groups)) >= 3:
            self.split_source = (f"group-held-out split by country (seed {self.seed}, val "
                                 f"{val_fraction}, test {test_fraction})")  # fmt: skip
            return group_split3(ids, groups, val_fraction, test_fraction, self.seed)[split]
        return seeded_split3(ids, val_fraction, test_fraction, self.seed)[split]

    def __len__(self) -> int:
        return len(self.ids)

    def map_label(self, raw: np.ndarray, nodata: float | None = None) -> np.ndarray:
        return _water_map(raw, self.ignore_index, nodata)

    def _read(self, path: Path, indexes: list[int] | None = None) -> tuple[np.ndarray, list]:
        import rasterio

        with rasterio.open(path) as ds:
            idx = indexes or [1]
            if max(idx) > ds.count:
                raise UsageError(f"{path.name} has {ds.count} bands; cannot select bands {idx}")
            return ds.read(idx), [ds.nodatavals[i - 1] for i in idx]

    def label_arrays(self) -> list[tuple[str, np.ndarray]]:
        out = []
        for i in self.ids:
            data, nd = self._read(self.files[i]["label"])
            lab = data[0]
            if nd[0] is not None:
                lab = np.where(lab == nd[0], -1, lab)
            out.append((str(self.files[i]["label"]), lab))
        return out

    def raw(self, index, rng=None):  # type: ignore[override]
        f = self.files[self.ids[index]]
        arrays = {}
        for m in self.modalities:
            data, nd = self._read(f[m], self.bands[m])
            if m == "optical":  # S2 reflectance 0 = nodata even without a tag
                nd = [0 if v is None else v for v in nd]
            arrays[m] = _as_float_with_nan(data, nd)
        lab, lnd = self._read(f["label"])
        mask = self.map_label(lab[0], lnd[0])
        mask = self._invalid_to_ignore(arrays, mask)
        return arrays, mask, self._percentiles(arrays)

    def scenes(self) -> list[Scene]:
        return _file_scenes(((i, self.files[i]) for i in self.ids), self.modalities, self.bands)

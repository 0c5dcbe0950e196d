"""The dataset base class and the helpers every dataset reader shares.

Every dataset yields ``{"inputs": {modality: float32 (C,H,W)}, "mask": int64 (H,W), "index"}``
with inputs normalised by :mod:`mfaf_cli.normalize` exactly as the predict pipeline does:
each band is stretched between the percentiles of its *scene* (each patch for patch datasets,
each sheet/scene for sheet datasets, from a decimated read), then standardised with statistics
measured on the training split (:meth:`SegDataset.compute_normalisation`, stored in the
checkpoint's :class:`~mfaf_cli.metadata.ModelMeta`). That is what lets a model trained on 8-bit
OMBRIA PNGs run on raw Sentinel-2 reflectance and Sentinel-1 dB.

Raw reads return float32 in sensor units with NaN where a modality has no data; labels are
int64 with ``ignore_index`` wherever the label is nodata or any modality is invalid.
Randomness (augmentation, window jitter) is derived from ``(seed, epoch, index)`` so runs are
reproducible whatever the number of loader workers, and ``--resume`` continues exactly.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from mfaf_cli.data.transforms import augment, photometric_jitter, random_crop
from mfaf_cli.errors import DatasetError, LabelError, ModalityError, UsageError
from mfaf_cli.metadata import (
    WATER_CLASSES,
    ClassInfo,
    ModalitySpec,
    Normalisation,
)
from mfaf_cli.normalize import (
    apply_normalisation,
    band_percentiles,
    calibration_jitter,
    fixed_moments,
    stretched_moments,
)

log = logging.getLogger("mfaf.data")
#: Skip warnings already given in this process (train and val readers scan the same folder).
_REPORTED: set[str] = set()

SPLITS: tuple[str, ...] = ("train", "val", "test", "all")
#: Long side of the decimated read used for per-sheet percentiles and label checks.
DECIMATED_SIDE = 1024
#: Cap on the number of scenes/patches read to estimate training-split statistics.
MAX_STAT_ITEMS = 256
NORMALISATION_MODES = ("fixed", "scene-percentile")


@dataclass(frozen=True)
class Scene:
    """A georeferenced scene for evaluation through the predict pipeline."""

    id: str
    inputs: dict[str, Path]
    label: Path
    bands: dict[str, list[int | str]] = field(default_factory=dict)  # numbers or names
    ignore: float | None = None  # the scene's own unlabelled value (a scene list's ignore_value)


def find_dir(parent: Path, names: Sequence[str]) -> Path | None:
    """The sub-folder of ``parent`` whose name matches one of ``names`` case-insensitively."""
    if not parent.is_dir():
        return None
    wanted = [n.lower() for n in names]
    subs = {p.name.lower(): p for p in parent.iterdir() if p.is_dir()}
    for n in wanted:
        if n in subs:
            return subs[n]
    return None


def _tifs(folder: Path) -> dict[str, Path]:
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in (".tif", ".tiff")
    }


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im)
    return a


def _file_scenes(
    named: Iterable[tuple[str, Mapping[str, Path]]],
    modalities: Sequence[str],
    bands: Mapping[str, list[int]],
) -> list[Scene]:
    """Scenes from ``(name, {modality..., "label": path})`` pairs with a dataset's bands."""
    return [
        Scene(
            name,
            {m: files[m] for m in modalities},
            files["label"],
            {m: list[int | str](bands[m]) for m in modalities},
        )
        for name, files in named
    ]


def _as_float_with_nan(data: np.ndarray, nodata: Sequence[float | None]) -> np.ndarray:
    x = data.astype(np.float32)
    for i, nd in enumerate(nodata):
        if nd is not None and not (isinstance(nd, float) and math.isnan(nd)):
            x[i][data[i] == nd] = np.nan
    return x


# ---- base class ----------------------------------------------------------------------------
class SegDataset(Dataset):
    """Base: normalisation, augmentation, stats, label checks; subclasses implement reading.

    Subclasses set ``modalities``, ``band_names``, ``units``, ``classes`` and implement
    ``__len__``, :meth:`raw` and :meth:`label_arrays`.
    """

    name = "base"
    patch_based = True
    # -- what the dataset is, readable without opening it (as TorchGeo datasets describe
    # themselves); instances narrow these to what was asked for and found on disk.
    #: modalities the dataset provides (a model may take a subset, in its own order)
    all_modalities: ClassVar[tuple[str, ...]] = ()
    #: band meanings per modality as the files hold them (empty: known only from the files)
    all_bands: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: sensor units per modality where they matter (SAR "db"/"linear")
    sensor_units: ClassVar[dict[str, str]] = {}
    #: the class table labels map to (empty: given by the user's scene list)
    class_table: ClassVar[tuple[ClassInfo, ...]] = ()
    #: the on-disk layout the reader expects
    layout: ClassVar[str] = ""
    #: what one label file is, in :meth:`summary`
    item_unit: ClassVar[str] = "patches"

    def __init__(
        self,
        split: str,
        *,
        tile: int = 256,
        augment: bool | None = None,
        seed: int = 0,
        ignore_index: int = 255,
        p_low: float = 2.0,
        p_high: float = 98.0,
        photometric: float = 0.0,
        normalisation: str = "scene-percentile",
        band_flags: Mapping[str, str] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise UsageError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        self.split = split
        self.tile = int(tile)
        self.augment = (split == "train") if augment is None else bool(augment)
        self.seed = int(seed)
        self.epoch = 0
        self.ignore_index = int(ignore_index)
        self.p_low = float(p_low)
        self.p_high = float(p_high)
        #: strength of :func:`photometric_jitter` in training (0 = off)
        self.photometric = float(photometric)
        if normalisation not in NORMALISATION_MODES:
            raise UsageError(
                f"unknown normalisation {normalisation!r}; use {' or '.join(NORMALISATION_MODES)}"
            )
        #: "fixed" (extent-independent, the training default) or "scene-percentile"
        self.norm_mode = normalisation
        self.modalities: tuple[str, ...] = ()
        #: modality -> the option or file key its band list came from (error messages)
        self.band_flags: dict[str, str] = dict(band_flags or {})
        self.band_names: dict[str, tuple[str, ...]] = {}
        self.units: dict[str, str] = {}
        self.classes: tuple[ClassInfo, ...] = WATER_CLASSES
        self.norms: dict[str, Normalisation] = {}
        #: modality -> training range (range_low, range_high) for the model record, set by
        #: :meth:`compute_normalisation` (see mfaf_cli/applicability.py)
        self.ranges: dict[str, tuple[tuple[float, ...], tuple[float, ...], tuple[str, ...]]] = {}
        #: What the reader left out, by reason ("no mask S2_mask_<id>.png": 2); see skip()
        self.skipped: dict[str, int] = {}
        #: where this split's membership came from (an official file, folders, a seed)
        self.split_source = ""

    # -- to implement --------------------------------------------------------------------
    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def raw(
        self, index: int, rng: np.random.Generator | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """(arrays in sensor units with NaN nodata, mask int64, per-modality (lo, hi))."""
        raise NotImplementedError

    def label_arrays(self) -> list[tuple[str, np.ndarray]]:
        """(name, raw label values) for every label file of the split (decimated for sheets)."""
        raise NotImplementedError

    def map_label(self, raw: np.ndarray, nodata: float | None = None) -> np.ndarray:
        """Raw label values → class ids with ``ignore_index``; unknown values → LabelError."""
        raise NotImplementedError

    def scenes(self) -> list[Scene] | None:
        """Georeferenced scenes of the split for the predict pipeline, or None (patches)."""
        return None

    # -- common --------------------------------------------------------------------------
    def skip(self, where: str, reason: str, ids: Iterable[str]) -> None:
        """Count items left out (``ids``) and warn once, naming a few: never skip silently."""
        ids = sorted(ids)
        if not ids:
            return
        key = f"{where}: {reason}"
        self.skipped[key] = self.skipped.get(key, 0) + len(ids)
        shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
        msg = f"{self.name} {where}: {len(ids)} skipped, {reason} ({shown})"
        if msg not in _REPORTED:
            _REPORTED.add(msg)
            log.warning("%s", msg)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> dict[str, int]:
        return {m: len(self.band_names[m]) for m in self.modalities}

    def set_epoch(self, epoch: int) -> None:
        """Epoch number that seeds augmentation and window jitter."""
        self.epoch = int(epoch)

    def set_normalisation(self, norms: dict[str, Normalisation]) -> None:
        missing = [m for m in self.modalities if m not in norms]
        if missing:
            raise ValueError(f"no normalisation for {missing}")
        self.norms = dict(norms)

    def item_rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def modality_specs(self) -> tuple[ModalitySpec, ...]:
        """ModalitySpec per modality (band names, normalisation, SAR units) for the ModelMeta."""
        return tuple(
            ModalitySpec(
                name=m,
                bands=self.band_names[m],
                normalisation=self.norms.get(m)
                or Normalisation(
                    "scene-percentile",
                    (0.5,) * len(self.band_names[m]),
                    (0.25,) * len(self.band_names[m]),
                    self.p_low,
                    self.p_high,
                ),
                units=self.units.get(m, ""),
                range_low=self.ranges[m][0] if m in self.ranges else None,
                range_high=self.ranges[m][1] if m in self.ranges else None,
                range_open=self.ranges[m][2] if m in self.ranges else (),
            )
            for m in self.modalities
        )

    def compute_normalisation(self, max_items: int = MAX_STAT_ITEMS) -> dict[str, Normalisation]:
        """Training-split normalisation per band, in this dataset's ``norm_mode``.

        ``fixed``: pooled clip quantiles and moments in sensor units
        (:func:`mfaf_cli.normalize.fixed_moments`). ``scene-percentile``: mean/std after the
        per-scene stretch (:func:`mfaf_cli.normalize.stretched_moments`; each patch or decimated
        sheet gets its own percentiles, as a scene does at predict time). At most ``max_items``
        items, chosen with the dataset seed. The same items give :attr:`ranges` (the input
        domain recorded for the exclusion check).
        """
        from mfaf_cli.applicability import training_range

        arrays = self.stat_arrays(max_items)
        out = {}
        for m in self.modalities:
            if not arrays[m]:
                raise DatasetError(f"the {self.split} split of {self.name} has no {m} data")
            if self.norm_mode == "fixed":  # sensor units; a scene stretch has none to check
                self.ranges[m] = training_range(arrays[m], seed=self.seed)
            if self.norm_mode == "fixed":
                lo, hi, mean, std = fixed_moments(arrays[m], seed=self.seed)
                out[m] = Normalisation(
                    "fixed", tuple(mean), tuple(std), clip_low=tuple(lo), clip_high=tuple(hi)
                )
                continue
            mean, std = stretched_moments(arrays[m], self.p_low, self.p_high)
            out[m] = Normalisation(
                "scene-percentile", tuple(mean), tuple(std), self.p_low, self.p_high
            )
        return out

    def stat_arrays(self, max_items: int) -> dict[str, list[np.ndarray]]:
        n = len(self)
        idx = np.arange(n)
        if n > max_items:
            idx = np.sort(np.random.default_rng(self.seed).choice(n, max_items, replace=False))
        out: dict[str, list[np.ndarray]] = {m: [] for m in self.modalities}
        for i in idx:
            arrays, _, _ = self.raw(int(i), None)
            for m in self.modalities:
                out[m].append(arrays[m])
        return out

    def _full_label_pixels(self) -> dict[str, int]:
        """Pixels of each label file at full resolution, where :meth:`label_arrays` decimates
        (sheet datasets); files not listed are counted as read."""
        return {}

    def summary(self) -> dict[str, Any]:
        """What this split holds, for the training log and the run's ``"splits"`` record:
        its source, label files (sheets/patches/scenes), windows, labelled pixels and class
        frequencies. Reads every label of the split once (decimated for sheets, scaled back)."""
        counts = np.zeros(self.num_classes, dtype=np.float64)
        full = self._full_label_pixels()
        files = 0
        for name, raw in self.label_arrays():
            files += 1
            ids = self.map_label(raw)
            ok = ids != self.ignore_index
            scale = full[name] / ids.size if name in full and ids.size else 1.0
            hist = np.bincount(ids[ok].ravel(), minlength=self.num_classes)
            counts += scale * hist[: self.num_classes]
        total = float(counts.sum())
        unit = self.item_unit
        return {
            "source": self.split_source or f"{self.name} {self.split} split (seed {self.seed})",
            unit: files,
            "windows": len(self),
            "labelled_pixels": round(total),
            "class_pixels": {
                c.name: round(float(v)) for c, v in zip(self.classes, counts, strict=True)
            },
            "class_fraction": {
                c.name: round(float(v) / total, 4) if total else 0.0
                for c, v in zip(self.classes, counts, strict=True)
            },
        }

    def check_labels(self) -> None:
        """Raise LabelError if any label of the split holds a value outside the class table."""
        for name, raw in self.label_arrays():
            try:
                self.map_label(raw)
            except LabelError as err:
                raise LabelError(f"{name}: {err}") from None

    def normalise(
        self, arrays: dict[str, np.ndarray], lohi: dict[str, tuple[np.ndarray, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        out = {}
        for m in self.modalities:
            norm = self.norms.get(m) or Normalisation.identity(arrays[m].shape[0])
            lo, hi = lohi.get(m, (None, None))  # none: a reader whose normalisation is fixed
            out[m] = apply_normalisation(arrays[m], norm, lo, hi)
        return out

    def crop(
        self, arrays: dict[str, np.ndarray], mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Training: a random tile × tile crop (padding first if the patch is smaller)."""
        return random_crop(arrays, mask, self.tile, self.ignore_index, rng)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = self.item_rng(index)
        arrays, mask, lohi = self.raw(index, rng if self.augment else None)
        if self.augment and self.photometric > 0:
            # own stream, so the geometric augmentation is the same with or without it
            prng = np.random.default_rng([self.seed, self.epoch, int(index), 1])
            if self.norm_mode == "fixed":
                arrays = calibration_jitter(arrays, self._clip_bounds(), prng, self.photometric)
            else:
                arrays, lohi = photometric_jitter(arrays, lohi, prng, self.photometric)
        x = self.normalise(arrays, lohi)
        if self.augment:
            if self.patch_based:
                x, mask = self.crop(x, mask, rng)
            x, mask = augment(x, mask, rng)
        return {
            "inputs": {m: torch.from_numpy(np.ascontiguousarray(x[m])) for m in self.modalities},
            "mask": torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64)),
            "index": int(index),
        }

    def _clip_bounds(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each modality's fixed clip range (the span the calibration jitter moves)."""
        out = {}
        for m in self.modalities:
            n = self.norms[m]
            if n.clip_low is None or n.clip_high is None:
                raise ValueError(f"fixed normalisation of {m} has no clip range")
            out[m] = (np.asarray(n.clip_low), np.asarray(n.clip_high))
        return out

    def _invalid_to_ignore(self, arrays: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        bad = np.zeros(mask.shape, dtype=bool)
        for a in arrays.values():
            bad |= ~np.isfinite(a).all(axis=0)
        if bad.any():
            mask = mask.copy()
            mask[bad] = self.ignore_index
        return mask

    def _percentiles(
        self, arrays: dict[str, np.ndarray]
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {m: band_percentiles(a, None, self.p_low, self.p_high) for m, a in arrays.items()}


def _check_modalities(
    dataset: str, available: Sequence[str], wanted: Sequence[str] | None
) -> tuple[str, ...]:
    if wanted is None:
        return tuple(available)
    missing = [m for m in wanted if m not in available]
    if missing:
        raise ModalityError(
            f"dataset {dataset} provides {'+'.join(available)}, but the model takes "
            f"{'+'.join(wanted)} ({', '.join(missing)} missing); choose a model for "
            f"{'+'.join(available)}"
        )
    return tuple(wanted)


def _require_dir(path: Path, what: str = "") -> Path:
    if not path.is_dir():
        raise DatasetError(f"expected {path}{what}; check --data-root and the dataset layout")
    return path


def _check_root(root: str | os.PathLike[str]) -> Path:
    p = Path(root)
    if not p.exists():
        raise DatasetError(f"data root {p} does not exist; check --data-root")
    return p

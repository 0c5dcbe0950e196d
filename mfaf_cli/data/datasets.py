"""Training/evaluation datasets: OMBRIA, Sen1Floods11, WHU-OPT-SAR and user scene lists.

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

import csv
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mfaf_cli.errors import DatasetError, LabelError, ModalityError, UsageError
from mfaf_cli.metadata import (
    SENTINEL2_L1C_MEANINGS,
    WATER_CLASSES,
    WHU_CLASSES,
    ClassInfo,
    ModalitySpec,
    ModelMeta,
    Normalisation,
    default_classes,
)
from mfaf_cli.normalize import (
    apply_normalisation,
    band_percentiles,
    calibration_jitter,
    fixed_moments,
    stretched_moments,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger("mfaf.data")
#: Skip warnings already given in this process (train and val readers scan the same folder).
_REPORTED: set[str] = set()

DATASET_NAMES: tuple[str, ...] = ("ombria", "sen1floods11", "whu", "folder")
SPLITS: tuple[str, ...] = ("train", "val", "test", "all")
#: Long side of the decimated read used for per-sheet percentiles and label checks.
DECIMATED_SIDE = 1024
#: Cap on the number of scenes/patches read to estimate training-split statistics.
MAX_STAT_ITEMS = 256

#: Sen1Floods11 S2Hand is a 13-band L1C stack: band number -> meaning (13 = swir, 9 = nir2).
S2_BAND_NAMES = dict(enumerate(SENTINEL2_L1C_MEANINGS, start=1))
#: Channel names of OMBRIA's optical PNG composite (see OmbriaDataset).
OMBRIA_OPTICAL_BANDS = ("swir", "nir", "red")
NORMALISATION_MODES = ("fixed", "scene-percentile")
#: OMBRIA's 8-bit PNG products → Sentinel units (S2 reflectance × 1e4 for B12, B8, B4; S1 VV
#: dB), per band ``sentinel = scale · png + offset``. Fitted by weights/fit_ombria_calibration.py
#: on OMBRIA train patches and the BigEarthNet-MM examples (no test scene); output in
#: weights/logs/ombria_calibration.json. With it, models trained on OMBRIA take raw Sentinel
#: data with a fixed normalisation; the percentile stretch is invariant to it.
OMBRIA_TO_SENTINEL: dict[str, tuple[tuple[float, float], ...]] = {
    "optical": ((19.0612, 91.0), (65.3273, -28.9818), (25.8421, -42.2105)),
    "sar": ((0.068732, -22.7879),),
}


@dataclass(frozen=True)
class Scene:
    """A georeferenced scene for evaluation through the predict pipeline."""

    id: str
    inputs: dict[str, Path]
    label: Path
    bands: dict[str, list[int]] = field(default_factory=dict)


# ---- small pure helpers --------------------------------------------------------------------
def seeded_holdout(ids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split sorted ids into (kept, held out) with a seeded permutation; ≥1 held out if ≥2 ids."""
    ids = sorted(ids)
    if len(ids) < 2 or fraction <= 0:
        return ids, []
    n = min(len(ids) - 1, max(1, round(len(ids) * fraction)))
    perm = np.random.default_rng(seed).permutation(len(ids))
    held = sorted(ids[i] for i in perm[:n])
    hs = set(held)
    return [i for i in ids if i not in hs], held


def seeded_split3(ids: Sequence[str], val: float, test: float, seed: int) -> dict[str, list[str]]:
    """A seeded train/val/test split of ids (each non-empty when there are ≥ 3 ids)."""
    rest, test_ids = seeded_holdout(ids, test, seed)
    train_ids, val_ids = seeded_holdout(rest, val / max(1e-9, 1 - test), seed + 1)
    return {"train": train_ids, "val": val_ids, "test": test_ids}


def grid_offsets(size: int, tile: int) -> list[int]:
    """Non-overlapping window origins along an axis, the last shifted back to end at the edge."""
    if size <= tile:
        return [0]
    offs = list(range(0, size - tile + 1, tile))
    if offs[-1] + tile < size:
        offs.append(size - tile)
    return offs


def pad_to(
    arrays: dict[str, np.ndarray], mask: np.ndarray, h: int, w: int, ignore_index: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pad (C,h0,w0) arrays (reflect/edge) and the mask (ignore) at bottom/right to h × w."""
    h0, w0 = mask.shape
    if h0 >= h and w0 >= w:
        return arrays, mask
    ph, pw = max(0, h - h0), max(0, w - w0)
    mode = "reflect" if (ph < h0 and pw < w0) else "edge"
    out = {k: np.pad(v, ((0, 0), (0, ph), (0, pw)), mode=mode) for k, v in arrays.items()}
    m = np.pad(mask, ((0, ph), (0, pw)), constant_values=ignore_index)
    return out, m


def photometric_jitter(
    arrays: dict[str, np.ndarray],
    lohi: dict[str, tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    strength: float,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Random per-band stretch bounds and gamma, so a model does not learn one sensor's look.

    Why: a model trained on one product (OMBRIA's 8-bit composites) meets others (raw
    Sentinel-2 reflectance, Sentinel-1 dB) whose per-scene stretch differs in shape. Each band's
    percentile bounds move by up to ``strength`` × (hi − lo) and its stretched values get a gamma
    in [1 / (1 + 2·strength), 1 + 2·strength]; ``strength=0`` returns the inputs unchanged.
    Values stay in sensor units (the gamma is applied inside the stretch), so the usual
    :func:`apply_normalisation` follows.
    """
    if strength <= 0:
        return arrays, lohi
    out_a: dict[str, np.ndarray] = {}
    out_l: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    g_max = 1.0 + 2.0 * strength
    for m, a in arrays.items():
        lo, hi = (np.asarray(v, dtype=np.float64) for v in lohi[m])
        span = hi - lo
        c = a.shape[0]
        gamma = np.exp(rng.uniform(-np.log(g_max), np.log(g_max), c)).reshape(c, 1, 1)
        lo_ = lo.reshape(c, 1, 1)
        span_ = span.reshape(c, 1, 1)
        x = np.clip((a.astype(np.float64) - lo_) / span_, 0.0, 1.0) ** gamma
        out_a[m] = (lo_ + x * span_).astype(np.float32)
        out_a[m][~np.isfinite(a)] = np.nan
        lo2 = lo + rng.uniform(-strength, strength, c) * span
        hi2 = hi + rng.uniform(-strength, strength, c) * span
        out_l[m] = (lo2, np.maximum(hi2, lo2 + 0.05 * span))
    return out_a, out_l


def augment(
    arrays: dict[str, np.ndarray], mask: np.ndarray, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The same random 90° rotation and horizontal flip for every modality and the mask."""
    k = int(rng.integers(4))
    flip = bool(rng.random() < 0.5)

    def tf(a: np.ndarray) -> np.ndarray:
        a = np.rot90(a, k, axes=(-2, -1))
        if flip:
            a = a[..., ::-1]
        return np.ascontiguousarray(a)

    return {m: tf(a) for m, a in arrays.items()}, tf(mask)


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
            {m: bands[m] for m in modalities},
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
        self.band_names: dict[str, tuple[str, ...]] = {}
        self.units: dict[str, str] = {}
        self.classes: tuple[ClassInfo, ...] = WATER_CLASSES
        self.norms: dict[str, Normalisation] = {}
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
            )
            for m in self.modalities
        )

    def compute_normalisation(self, max_items: int = MAX_STAT_ITEMS) -> dict[str, Normalisation]:
        """Training-split normalisation per band, in this dataset's ``norm_mode``.

        ``fixed``: pooled clip quantiles and moments in sensor units
        (:func:`mfaf_cli.normalize.fixed_moments`). ``scene-percentile``: mean/std after the
        per-scene stretch (:func:`mfaf_cli.normalize.stretched_moments`; each patch or decimated
        sheet gets its own percentiles, as a scene does at predict time). At most ``max_items``
        items, chosen with the dataset seed.
        """
        arrays = self.stat_arrays(max_items)
        out = {}
        for m in self.modalities:
            if not arrays[m]:
                raise DatasetError(f"the {self.split} split of {self.name} has no {m} data")
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
        unit = "patches" if self.patch_based else ("sheets" if self.name == "whu" else "scenes")
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
            lo, hi = lohi[m]
            out[m] = apply_normalisation(arrays[m], norm, lo, hi)
        return out

    def crop(
        self, arrays: dict[str, np.ndarray], mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Training: a random tile × tile crop (padding first if the patch is smaller)."""
        t = self.tile
        arrays, mask = pad_to(arrays, mask, t, t, self.ignore_index)
        h, w = mask.shape
        if h == t and w == t:
            return arrays, mask
        r = int(rng.integers(0, h - t + 1))
        c = int(rng.integers(0, w - t + 1))
        return {k: v[:, r : r + t, c : c + t] for k, v in arrays.items()}, mask[
            r : r + t, c : c + t
        ]

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


# ---- OMBRIA ---------------------------------------------------------------------------------
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
        self.modalities = _check_modalities(self.name, ("optical", "sar"), modalities)
        # OMBRIA's S2 PNGs are 3-channel 8-bit composites. Their look (saturated green
        # vegetation, pink built-up, black water) is that of a SWIR / NIR / red false-colour
        # composite, not true colour; on raw Sentinel-2 pass bands B12,B8,B4 (weights/README.md).
        self.band_names = {"optical": OMBRIA_OPTICAL_BANDS, "sar": ("vv",)}
        self.units = {"sar": "db"}
        self.classes = WATER_CLASSES
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


# ---- Sen1Floods11 ---------------------------------------------------------------------------
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

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        modalities: Sequence[str] | None = None,
        bands: dict[str, Sequence[int]] | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        **kw: Any,
    ) -> None:
        super().__init__(split, **kw)
        root = _check_root(root)
        self.root = root
        self.modalities = _check_modalities(self.name, ("optical", "sar"), modalities)
        bands = dict(bands or {})
        self.bands = {
            "optical": [int(b) for b in bands.get("optical", (4, 3, 2))],
            "sar": [int(b) for b in bands.get("sar", (1,))],
        }
        self.band_names = {
            "optical": tuple(S2_BAND_NAMES.get(b, f"B{b}") for b in self.bands["optical"]),
            "sar": tuple({1: "vv", 2: "vh"}.get(b, f"b{b}") for b in self.bands["sar"]),
        }
        self.units = {"sar": "db"}
        self.classes = WATER_CLASSES
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

        s1 = find_dir(root, ["S1Hand"])
        if s1 is None:
            for cand in sorted(root.rglob("*")):
                if (
                    cand.is_dir()
                    and cand.name.lower() == "s1hand"
                    and len(cand.relative_to(root).parts) <= 6
                ):
                    s1 = cand
                    break
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


# ---- WHU-OPT-SAR ----------------------------------------------------------------------------
OPT_NAMES = ("optical", "opt")
SAR_NAMES = ("sar",)
LBL_NAMES = ("lbl", "label", "labels")


def whu_map_label(raw: np.ndarray, ignore_index: int, nodata: float | None = None) -> np.ndarray:
    """WHU-OPT-SAR label values 0,10,…,70 → 0..7 with 0 (background) → ``ignore_index``."""
    raw = np.asarray(raw)
    ok = np.isin(raw, np.arange(0, 80, 10))
    if nodata is not None:
        ok |= raw == nodata
    if not ok.all():
        raise LabelError(
            f"label values {np.unique(raw[~ok])[:8].tolist()} are outside the WHU-OPT-SAR class "
            "table (0, 10, 20, …, 70)"
        )
    out = (raw // 10).astype(np.int64)
    out[raw == 0] = ignore_index
    if nodata is not None:
        out[raw == nodata] = ignore_index
    return out


def parse_split_file(text: str, known_ids: Sequence[str]) -> dict[str, list[str]]:
    """Sheet ids listed under train/val/test headings of a split text file (any format).

    A line mentioning ``train``/``val``/``test`` starts that section; every token on any line
    that names a known sheet (with or without ``.tif``) is assigned to the current section.
    """
    known = {k.lower(): k for k in known_ids}
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    section: str | None = None
    for line in text.splitlines():
        low = line.lower()
        for key, pat in (("train", r"train"), ("val", r"\bval|valid"), ("test", r"test")):
            if re.search(pat, low):
                section = key
        for tok in re.findall(r"[A-Za-z0-9_\-]+(?:\.tiff?)?", line):
            stem = re.sub(r"\.tiff?$", "", tok, flags=re.I).lower()
            if stem in known and section is not None and known[stem] not in out[section]:
                out[section].append(known[stem])
    return out


def _whu_bands(
    optical: Path, bands: dict[str, Sequence[int]] | None
) -> tuple[dict[str, list[int]], dict[str, tuple[str, ...]]]:
    """Selected bands and their names, for both WHU layouts: every band of the optical files
    (counted in ``optical``, one of them) unless ``bands`` says otherwise, SAR band 1."""
    import rasterio

    with rasterio.open(optical) as ds:
        n_opt = ds.count
    bands = dict(bands or {})
    sel = {
        "optical": [int(b) for b in bands.get("optical", range(1, n_opt + 1))],
        "sar": [int(b) for b in bands.get("sar", (1,))],
    }
    opt_names = ("red", "green", "blue", "nir")
    names = {
        "optical": tuple(opt_names[b - 1] if b <= 4 else f"b{b}" for b in sel["optical"]),
        "sar": ("vv",) if len(sel["sar"]) == 1 else tuple(f"b{b}" for b in sel["sar"]),
    }
    return sel, names


def _complete_ids(
    ds: SegDataset, files: Mapping[str, Mapping[str, Path]], folders: Mapping[str, Path], where: str
) -> list[str]:
    """Ids (file stems) present in every modality folder; the others are counted as skipped."""
    every = set().union(*(set(f) for f in files.values()))
    for key, f in files.items():
        ds.skip(where, f"no <id>.tif in {folders[key]}", sorted(every - set(f)))
    return sorted(set.intersection(*(set(f) for f in files.values())))


class WhuSheetDataset(SegDataset):
    """WHU-OPT-SAR full map sheets read as tile windows on the fly (no pre-cutting).

    Per-modality folders discovered case-insensitively (``optical``/``opt``, ``sar``,
    ``lbl``/``label``); official split file when present (``*division*.txt`` / ``*split*.txt``),
    else a seeded sheet-level split; ``val`` is a seeded holdout of the training sheets.
    Percentiles are per sheet (decimated read), as predict computes them per scene.
    """

    name = "whu"
    patch_based = False

    def __init__(
        self,
        root: Path,
        split: str,
        folders: dict[str, Path],
        *,
        modalities: Sequence[str] | None = None,
        bands: dict[str, Sequence[int]] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        **kw: Any,
    ) -> None:
        super().__init__(split, **kw)
        import rasterio

        self.root = root
        self.modalities = _check_modalities(self.name, ("optical", "sar"), modalities)
        self.classes = WHU_CLASSES
        self.units = {"sar": ""}
        files = {k: _tifs(v) for k, v in folders.items()}
        ids = _complete_ids(self, files, folders, str(root))
        if not ids:
            raise DatasetError(
                f"no sheet ids shared by {folders['optical']}, {folders['sar']} and "
                f"{folders['label']} (files must have the same names, e.g. NH49E001013.tif)"
            )
        self.files = {i: {k: files[k][i] for k in files} for i in ids}
        split_ids = self._splits(root, ids, val_fraction, test_fraction)
        self.ids = ids if split == "all" else split_ids[split]
        if not self.ids:
            raise DatasetError(f"the {split} split of whu at {root} is empty")
        self.bands, self.band_names = _whu_bands(self.files[ids[0]]["optical"], bands)
        self.windows: list[tuple[str, int, int]] = []
        self.sizes: dict[str, tuple[int, int]] = {}
        self.lohi: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        for i in self.ids:
            with rasterio.open(self.files[i]["label"]) as ds:
                h, w = ds.height, ds.width
            self.sizes[i] = (h, w)
            self.windows += [
                (i, r, c) for r in grid_offsets(h, self.tile) for c in grid_offsets(w, self.tile)
            ]
        self._handles: dict[str, Any] = {}
        self._pid = -1

    def _splits(
        self, root: Path, ids: list[str], val_fraction: float, test_fraction: float
    ) -> dict[str, list[str]]:
        cands = [
            p
            for p in sorted(root.rglob("*.txt"))
            if ("division" in p.name.lower() or "split" in p.name.lower())
            and len(p.relative_to(root).parts) <= 3
        ]
        for p in cands:
            parsed = parse_split_file(p.read_text(errors="replace"), ids)
            if parsed["train"] or parsed["test"]:
                log.info("whu: split from %s", p)
                train = parsed["train"]
                val = parsed["val"]
                self.split_source = f"official division file {p}"
                if not val:
                    train, val = seeded_holdout(train, val_fraction, self.seed)
                    self.split_source += (
                        f"; val = seeded holdout of its train sheets (seed {self.seed}, "
                        f"fraction {val_fraction})"
                    )
                return {"train": train, "val": val, "test": parsed["test"]}
        self.split_source = (
            f"seeded sheet split, no division file found (seed {self.seed}, val "
            f"{val_fraction}, test {test_fraction})"
        )
        return seeded_split3(ids, val_fraction, test_fraction, self.seed)

    def __len__(self) -> int:
        return len(self.windows)

    def _full_label_pixels(self) -> dict[str, int]:
        return {str(self.files[s]["label"]): h * w for s, (h, w) in self.sizes.items()}

    def _open(self, path: Path) -> Any:
        import rasterio

        if self._pid != os.getpid():  # file handles must not cross fork() into workers
            self._handles = {}
            self._pid = os.getpid()
        key = str(path)
        if key not in self._handles:
            self._handles[key] = rasterio.open(path)
        return self._handles[key]

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_handles"] = {}
        d["_pid"] = -1
        return d

    def map_label(self, raw: np.ndarray, nodata: float | None = None) -> np.ndarray:
        return whu_map_label(raw, self.ignore_index, nodata)

    def _decimated(
        self, path: Path, indexes: list[int], nearest: bool = False
    ) -> tuple[np.ndarray, list]:
        from rasterio.enums import Resampling

        ds = self._open(path)
        f = max(1.0, max(ds.height, ds.width) / DECIMATED_SIDE)
        shape = (len(indexes), max(1, round(ds.height / f)), max(1, round(ds.width / f)))
        data = ds.read(indexes, out_shape=shape, resampling=Resampling.nearest)
        return data, [ds.nodatavals[i - 1] for i in indexes]

    def sheet_percentiles(self, sheet: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-band percentiles of a whole sheet, from a decimated read (cached)."""
        if sheet not in self.lohi:
            arrays = self._decimated_arrays(sheet)
            self.lohi[sheet] = self._percentiles(arrays)
        return self.lohi[sheet]

    def _decimated_arrays(self, sheet: str) -> dict[str, np.ndarray]:
        arrays = {}
        for m in self.modalities:
            data, nd = self._decimated(self.files[sheet][m], self.bands[m])
            arrays[m] = _as_float_with_nan(data, nd)
        return arrays

    def stat_arrays(self, max_items: int) -> dict[str, list[np.ndarray]]:
        ids = self.ids
        if len(ids) > max_items:
            ids = sorted(np.random.default_rng(self.seed).choice(ids, max_items, replace=False))
        out: dict[str, list[np.ndarray]] = {m: [] for m in self.modalities}
        for s in ids:
            arrays = self._decimated_arrays(s)
            for m in self.modalities:
                out[m].append(arrays[m])
        return out

    def label_arrays(self) -> list[tuple[str, np.ndarray]]:
        out = []
        for s in self.ids:
            data, nd = self._decimated(self.files[s]["label"], [1], nearest=True)
            lab = data[0]
            if nd[0] is not None:
                lab = np.where(lab == nd[0], 0, lab)
            out.append((str(self.files[s]["label"]), lab))
        return out

    def window_for(self, index: int, rng: np.random.Generator | None) -> tuple[str, int, int]:
        """The index-th tile; in training jittered by up to half a tile (inside the sheet)."""
        s, r, c = self.windows[index]
        if rng is not None:
            h, w = self.sizes[s]
            t = self.tile
            r = int(np.clip(r + rng.integers(-t // 2, t // 2 + 1), 0, max(0, h - t)))
            c = int(np.clip(c + rng.integers(-t // 2, t // 2 + 1), 0, max(0, w - t)))
        return s, r, c

    def raw(self, index, rng=None):  # type: ignore[override]
        from rasterio.windows import Window as RioWindow

        s, r, c = self.window_for(index, rng)
        h, w = self.sizes[s]
        t = self.tile
        win = RioWindow(c, r, min(t, w - c), min(t, h - r))
        arrays = {}
        for m in self.modalities:
            ds = self._open(self.files[s][m])
            data = ds.read(self.bands[m], window=win)
            arrays[m] = _as_float_with_nan(data, [ds.nodatavals[i - 1] for i in self.bands[m]])
        ds = self._open(self.files[s]["label"])
        mask = self.map_label(ds.read(1, window=win), ds.nodata)
        mask = self._invalid_to_ignore(arrays, mask)
        arrays, mask = pad_to(arrays, mask, t, t, self.ignore_index)
        return arrays, mask, self.sheet_percentiles(s)

    def scenes(self) -> list[Scene]:
        return _file_scenes(((s, self.files[s]) for s in self.ids), self.modalities, self.bands)


class WhuPrecutDataset(SegDataset):
    """The common pre-cut WHU-OPT-SAR layout ``{train,val,test}/{opt,sar,lbl}/*.tif``.

    Percentiles are per tile (patch dataset). Without a ``val`` folder, ``val`` is a seeded
    holdout of the ``train`` tiles.
    """

    name = "whu"

    def __init__(
        self,
        root: Path,
        split: str,
        *,
        modalities: Sequence[str] | None = None,
        bands: dict[str, Sequence[int]] | None = None,
        val_fraction: float = 0.1,
        **kw: Any,
    ) -> None:
        super().__init__(split, **kw)
        self.root = root
        self.modalities = _check_modalities(self.name, ("optical", "sar"), modalities)
        self.classes = WHU_CLASSES
        self.units = {"sar": ""}
        has_val = find_dir(root, ["val", "valid", "validation"]) is not None
        if split == "all":
            plan = [("train", None), ("val", None), ("test", None)]
        elif split == "val" and not has_val:
            plan = [("train", "held")]
        elif split == "train" and not has_val:
            plan = [("train", "kept")]
        else:
            plan = [(split, None)]
        self.files: list[dict[str, Path]] = []
        for src, part in plan:
            names = ["val", "valid", "validation"] if src == "val" else [src]
            d = find_dir(root, names)
            if d is None:
                if split == "all":
                    continue
                raise DatasetError(
                    f"expected {root / src}/{{opt,sar,lbl}} (pre-cut WHU-OPT-SAR layout)"
                )
            mods, subs = {}, {}
            for key, alts in (("optical", OPT_NAMES), ("sar", SAR_NAMES), ("label", LBL_NAMES)):
                sub = find_dir(d, alts)
                if sub is None:
                    raise DatasetError(
                        f"expected {d / alts[0]} (or {'/'.join(alts[1:]) or alts[0]}) in the "
                        "pre-cut WHU-OPT-SAR layout"
                    )
                mods[key] = _tifs(sub)
                subs[key] = sub
            ids = _complete_ids(self, mods, subs, f"{d.name} ({root})")
            if part is not None:
                kept, held = seeded_holdout(ids, val_fraction, self.seed)
                ids = held if part == "held" else kept
            self.files += [{k: mods[k][i] for k in mods} for i in ids]
        if not self.files:
            raise DatasetError(f"the {split} split of whu (pre-cut) at {root} is empty")
        self.bands, self.band_names = _whu_bands(self.files[0]["optical"], bands)

    def __len__(self) -> int:
        return len(self.files)

    def map_label(self, raw: np.ndarray, nodata: float | None = None) -> np.ndarray:
        return whu_map_label(raw, self.ignore_index, nodata)

    def label_arrays(self) -> list[tuple[str, np.ndarray]]:
        import rasterio

        out = []
        for f in self.files:
            with rasterio.open(f["label"]) as ds:
                lab = ds.read(1)
                if ds.nodata is not None:
                    lab = np.where(lab == ds.nodata, 0, lab)
            out.append((str(f["label"]), lab))
        return out

    def raw(self, index, rng=None):  # type: ignore[override]
        import rasterio

        f = self.files[index]
        arrays = {}
        for m in self.modalities:
            with rasterio.open(f[m]) as ds:
                arrays[m] = _as_float_with_nan(
                    ds.read(self.bands[m]), [ds.nodatavals[i - 1] for i in self.bands[m]]
                )
        with rasterio.open(f["label"]) as ds:
            mask = self.map_label(ds.read(1), ds.nodata)
        mask = self._invalid_to_ignore(arrays, mask)
        return arrays, mask, self._percentiles(arrays)

    def scenes(self) -> list[Scene]:
        return _file_scenes(((f["label"].stem, f) for f in self.files), self.modalities, self.bands)


def open_whu(root: str | os.PathLike[str], split: str, **kw: Any) -> SegDataset:
    """WHU-OPT-SAR: the sheet layout, or the pre-cut layout when ``<root>/train`` exists."""
    r = _check_root(root)
    opt, sar, lbl = find_dir(r, OPT_NAMES), find_dir(r, SAR_NAMES), find_dir(r, LBL_NAMES)
    if opt and sar and lbl:
        return WhuSheetDataset(r, split, {"optical": opt, "sar": sar, "label": lbl}, **kw)
    if find_dir(r, ["train"]) is not None:
        return WhuPrecutDataset(r, split, **kw)
    missing = [
        f"{r}/{names[0]}" + (f" (or {names[1]})" if len(names) > 1 else "")
        for names, d in ((("optical", "opt"), opt), (("sar",), sar), (("lbl", "label"), lbl))
        if d is None
    ]
    raise DatasetError(
        f"expected {', '.join(missing)} (WHU-OPT-SAR sheet layout) or {r}/train/{{opt,sar,lbl}} "
        "(pre-cut layout)"
    )


# ---- user scene lists ---------------------------------------------------------------------
MODALITY_COLUMNS = ("optical", "sar", "hsi", "lidar")


def read_scene_list(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Scenes (dicts with modality paths, ``label``, optional ``id``/``split``) and options.

    CSV: a header with ``label``, modality columns (optical, sar, hsi, lidar) and optionally
    ``id``, ``split``. TOML: ``[[scene]]`` tables with the same keys, plus optional top-level
    ``classes`` (names), ``num_classes``, ``ignore_value``, ``[bands]`` and ``[units]``.
    Relative paths are relative to the list's folder.
    """
    base = path.parent
    opts: dict[str, Any] = {}
    if path.suffix.lower() == ".toml":
        try:
            doc = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise DatasetError(f"{path} is not valid TOML ({err})") from None
        rows = doc.get("scene") or doc.get("scenes") or []
        opts = {k: v for k, v in doc.items() if k not in ("scene", "scenes")}
    else:
        with open(path, newline="") as f:
            rows = [
                {k.strip().lower(): (v or "").strip() for k, v in r.items() if k}
                for r in csv.DictReader(f)
            ]
    scenes = []
    for n, row in enumerate(rows, start=1):
        if "label" not in row or not row["label"]:
            raise DatasetError(f"{path}: scene {n} has no 'label' raster")
        sc: dict[str, Any] = {
            "id": str(row.get("id") or f"scene{n}"),
            "split": str(row.get("split") or "").lower() or None,
            "label": (base / str(row["label"])).resolve(),
            "inputs": {},
        }
        for m in MODALITY_COLUMNS:
            if row.get(m):
                sc["inputs"][m] = (base / str(row[m])).resolve()
        for p in [sc["label"], *sc["inputs"].values()]:
            if not p.exists():
                raise DatasetError(f"{path}: scene {sc['id']}: {p} does not exist")
        scenes.append(sc)
    if not scenes:
        raise DatasetError(f"{path} lists no scenes")
    mods = [tuple(s["inputs"]) for s in scenes]
    if len(set(mods)) > 1:
        raise DatasetError(f"{path}: scenes list different modalities {sorted(set(mods))}")
    if not mods[0]:
        raise DatasetError(
            f"{path}: scenes list no modality column ({', '.join(MODALITY_COLUMNS)})"
        )
    return scenes, opts


class FolderDataset(SegDataset):
    """A user's scenes from a CSV/TOML list, co-registered on the fly onto each label's grid.

    Windows (``tile``, non-overlapping; jittered in training) are read through
    :class:`mfaf_cli.coreg.align.AlignedScene`, the same reader predict uses. Splits come from
    the ``split`` column; without one, ≥3 scenes get a seeded scene-level split and fewer
    scenes a seeded window-level split (spatially leaky: a warning says so).
    Label values are class ids; the label raster's nodata and ``ignore_value`` are ignored.
    """

    name = "folder"
    patch_based = False

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        modalities: Sequence[str] | None = None,
        num_classes: int | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        **kw: Any,
    ) -> None:
        super().__init__(split, **kw)
        import rasterio

        r = _check_root(root)
        if r.is_dir():
            cands = (
                [r / n for n in ("scenes.toml", "scenes.csv")]
                + sorted(r.glob("*.csv"))
                + sorted(r.glob("*.toml"))
            )
            lists = [p for p in cands if p.exists()]
            if not lists:
                raise DatasetError(f"expected {r}/scenes.csv or {r}/scenes.toml listing the scenes")
            r = lists[0]
        self.list_path = r
        scenes, opts = read_scene_list(r)
        available = tuple(scenes[0]["inputs"])
        self.modalities = _check_modalities(self.name, available, modalities)
        self.ignore_value = opts.get("ignore_value")
        self.bands_opt = {k: list(v) for k, v in dict(opts.get("bands", {})).items()}
        self.units = {"sar": str(dict(opts.get("units", {})).get("sar", "auto"))}
        # Class table over *all* scenes so every split agrees on K.
        names = opts.get("classes")
        if names:
            self.classes = tuple(
                ClassInfo(i, str(n), default_classes(len(names))[i].color)
                for i, n in enumerate(names)
            )
        else:
            k = num_classes or opts.get("num_classes")
            if k is None:
                mx = -1
                for sc in scenes:
                    lab = self._label_values(sc["label"])
                    if lab.size:
                        mx = max(mx, int(lab.max()))
                k = mx + 1
            if int(k) < 1:
                raise DatasetError(f"{r}: the label rasters hold no class values")
            self.classes = default_classes(int(k))
        self._scenes_all = scenes
        self.windows: list[tuple[int, int, int]] = []  # (scene index, row, col)
        has_split = any(s["split"] for s in scenes)
        sel: list[int]
        if split == "all":
            sel = list(range(len(scenes)))
        elif has_split:
            alias = {"valid": "val", "validation": "val"}
            sel = [i for i, s in enumerate(scenes) if alias.get(s["split"], s["split"]) == split]
        elif len(scenes) >= 3:
            parts = seeded_split3(
                [str(i) for i in range(len(scenes))], val_fraction, test_fraction, self.seed
            )
            sel = sorted(int(i) for i in parts[split])
        else:
            sel = list(range(len(scenes)))
        self.scene_idx = sel
        self.sizes: dict[int, tuple[int, int]] = {}
        for i in sel:
            with rasterio.open(scenes[i]["label"]) as ds:
                self.sizes[i] = (ds.height, ds.width)
            self.windows += [
                (i, rr, cc)
                for rr in grid_offsets(self.sizes[i][0], self.tile)
                for cc in grid_offsets(self.sizes[i][1], self.tile)
            ]
        if split != "all" and not has_split and len(scenes) < 3:
            log.warning(
                "folder dataset: no 'split' column and fewer than 3 scenes; splitting windows "
                "(neighbouring windows share context, so validation scores are optimistic)"
            )
            keys = [f"{w[0]}:{w[1]}:{w[2]}" for w in self.windows]
            parts = seeded_split3(keys, val_fraction, test_fraction, self.seed)
            keep = set(parts[split])
            self.windows = [w for w, k in zip(self.windows, keys, strict=True) if k in keep]
        self.split_source = (
            "the scene list's split column"
            if has_split
            else f"seeded split (seed {self.seed}, val {val_fraction}, test {test_fraction})"
        )
        if not self.windows:
            raise DatasetError(f"the {split} split of the folder dataset {r} is empty")
        self.band_names = {}
        self._aligned: dict[int, Any] = {}
        self._pid = -1
        self.lohi: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        first = self._scene(self.windows[0][0])
        counts = first.band_counts
        # SAR units as read (resolved from "auto"), recorded in the model metadata
        self.units = {m: u for m, u in first.units.items() if u in ("db", "linear")}
        for m in self.modalities:
            self.band_names[m] = _default_band_names(m, counts[m])

    @staticmethod
    def _label_values(path: Path) -> np.ndarray:
        import rasterio

        with rasterio.open(path) as ds:
            f = max(1.0, max(ds.height, ds.width) / DECIMATED_SIDE)
            shape = (max(1, round(ds.height / f)), max(1, round(ds.width / f)))
            lab = ds.read(1, out_shape=shape)
            if ds.nodata is not None:
                lab = lab[lab != ds.nodata]
        return np.asarray(lab).reshape(-1)

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_aligned"] = {}
        d["_pid"] = -1
        return d

    def _scene(self, i: int) -> Any:
        from mfaf_cli.coreg.align import AlignedScene
        from mfaf_cli.coreg.grid import grid_from_reference

        if self._pid != os.getpid():
            self._aligned = {}
            self._pid = os.getpid()
        if i not in self._aligned:
            sc = self._scenes_all[i]
            grid = grid_from_reference(sc["label"])
            self._aligned[i] = AlignedScene(
                {m: sc["inputs"][m] for m in self.modalities},
                grid,
                {m: self.bands_opt[m] for m in self.modalities if m in self.bands_opt},
                units=self.units.get("sar", "auto"),
            )
        return self._aligned[i]

    def _stat_meta(self) -> ModelMeta:
        return ModelMeta(arch="folder", modalities=self.modality_specs(), classes=self.classes)

    def scene_percentiles(self, i: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if i not in self.lohi:
            self.lohi[i] = self._scene(i).percentiles(self._stat_meta())
        return self.lohi[i]

    def __len__(self) -> int:
        return len(self.windows)

    def map_label(self, raw: np.ndarray, nodata: float | None = None) -> np.ndarray:
        raw = np.asarray(raw)
        keep = np.ones(raw.shape, dtype=bool)
        if nodata is not None:
            keep &= ~(
                np.isnan(raw) if isinstance(nodata, float) and math.isnan(nodata) else raw == nodata
            )
        if self.ignore_value is not None:
            keep &= raw != self.ignore_value
        vals = raw[keep]
        bad = (vals < 0) | (vals >= self.num_classes) | (vals != np.round(vals))
        if bad.any():
            raise LabelError(
                f"label values {np.unique(vals[bad])[:8].tolist()} are outside the class table "
                f"0..{self.num_classes - 1}; set the label raster's nodata or 'ignore_value'"
            )
        out = np.full(raw.shape, self.ignore_index, dtype=np.int64)
        out[keep] = vals.astype(np.int64)
        return out

    def label_arrays(self) -> list[tuple[str, np.ndarray]]:
        return [
            (str(self._scenes_all[i]["label"]), self._label_values(self._scenes_all[i]["label"]))
            for i in sorted({w[0] for w in self.windows})
        ]

    def stat_arrays(self, max_items: int) -> dict[str, list[np.ndarray]]:
        out: dict[str, list[np.ndarray]] = {m: [] for m in self.modalities}
        used = sorted({w[0] for w in self.windows})[:max_items]
        for i in used:
            arrays, valid, _ = self._scene(i).read_decimated()
            for m in self.modalities:
                a = arrays[m].copy()
                a[:, ~valid] = np.nan
                out[m].append(a)
        return out

    def raw(self, index, rng=None):  # type: ignore[override]
        import rasterio
        from rasterio.windows import Window as RioWindow

        from mfaf_cli.tiling.windows import Window

        i, r, c = self.windows[index]
        h, w = self.sizes[i]
        t = self.tile
        if rng is not None:
            r = int(np.clip(r + rng.integers(-t // 2, t // 2 + 1), 0, max(0, h - t)))
            c = int(np.clip(c + rng.integers(-t // 2, t // 2 + 1), 0, max(0, w - t)))
        arrays, valid = self._scene(i).read(Window(r, c, t, t))
        arrays = {m: arrays[m] for m in self.modalities}
        with rasterio.open(self._scenes_all[i]["label"]) as ds:
            lab = ds.read(1, window=RioWindow(c, r, min(t, w - c), min(t, h - r)))
            nodata = ds.nodata
        mask = self.map_label(lab, nodata)
        mask = np.pad(
            mask,
            ((0, t - mask.shape[0]), (0, t - mask.shape[1])),
            constant_values=self.ignore_index,
        )
        mask[~valid] = self.ignore_index
        return arrays, mask, self.scene_percentiles(i)

    def scenes(self) -> list[Scene]:
        used = sorted({w[0] for w in self.windows})
        return [
            Scene(
                self._scenes_all[i]["id"],
                {m: self._scenes_all[i]["inputs"][m] for m in self.modalities},
                self._scenes_all[i]["label"],
                {m: self.bands_opt[m] for m in self.modalities if m in self.bands_opt},
            )
            for i in used
        ]


def _default_band_names(modality: str, n: int) -> tuple[str, ...]:
    from mfaf_cli.metadata import DEFAULT_BANDS

    d = DEFAULT_BANDS.get(modality, ())
    if len(d) == n:
        return d
    if modality == "optical" and n == 3:
        return ("red", "green", "blue")
    if modality == "sar" and n == 2:
        return ("vv", "vh")
    return tuple(f"b{i + 1}" for i in range(n))


# ---- factory ------------------------------------------------------------------------------
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
    ``val_fraction``, ``bands`` ({modality: [1-based band indexes]}, sen1floods11/whu),
    ``num_classes`` (folder). Raises :class:`DatasetError` for unknown names, a missing root,
    a wrong layout (naming the folder expected) or an empty split.
    """
    if name not in _FACTORIES:
        raise DatasetError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    options = {k: v for k, v in options.items() if v is not None}
    return _FACTORIES[name](root, split, **options)

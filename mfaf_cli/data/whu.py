"""WHU-OPT-SAR: full map sheets read as windows, or the common pre-cut tile layout."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mfaf_cli.data.bands import layout_indexes
from mfaf_cli.data.base import (
    DECIMATED_SIDE,
    Scene,
    SegDataset,
    _as_float_with_nan,
    _check_modalities,
    _check_root,
    _file_scenes,
    _tifs,
    find_dir,
)
from mfaf_cli.data.splits import grid_offsets, parse_split_file, seeded_holdout, seeded_split3
from mfaf_cli.data.transforms import jitter_window, pad_to
from mfaf_cli.errors import DatasetError, LabelError
from mfaf_cli.metadata import (
    WHU_CLASSES,
    ClassInfo,
)

log = logging.getLogger("mfaf.data")

OPT_NAMES = ("optical", "opt")
SAR_NAMES = ("sar",)
LBL_NAMES = ("lbl", "label", "labels")


#: Band meanings of the WHU-OPT-SAR optical sheets (bands beyond these are named b<n>).
WHU_OPTICAL_BANDS = ("red", "green", "blue", "nir")


class _WhuMeta:
    """What both WHU-OPT-SAR layouts share: modalities, bands, classes (mixed into each)."""

    all_modalities: ClassVar[tuple[str, ...]] = ("optical", "sar")
    all_bands: ClassVar[dict[str, tuple[str, ...]]] = {
        "optical": WHU_OPTICAL_BANDS,
        "sar": ("vv",),
    }
    class_table: ClassVar[tuple[ClassInfo, ...]] = WHU_CLASSES


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


def _whu_bands(
    optical: Path,
    bands: Mapping[str, Sequence[int | str]] | None,
    where: Mapping[str, str] | None = None,
) -> tuple[dict[str, list[int]], dict[str, tuple[str, ...]]]:
    """Selected bands and their names, for both WHU layouts: every band of the optical files
    (counted in ``optical``, one of them) unless ``bands`` says otherwise, SAR band 1."""
    import rasterio

    with rasterio.open(optical) as ds:
        n_opt = ds.count
    bands = {
        m: layout_indexes(
            v, _WhuMeta.all_bands[m], modality=m, dataset="whu", where=(where or {}).get(m)
        )
        for m, v in (bands or {}).items()
        if m in _WhuMeta.all_bands
    }
    sel = {
        "optical": [int(b) for b in bands.get("optical", range(1, n_opt + 1))],
        "sar": [int(b) for b in bands.get("sar", (1,))],
    }
    opt_names = WHU_OPTICAL_BANDS
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


class WhuSheetDataset(_WhuMeta, SegDataset):
    """WHU-OPT-SAR full map sheets read as tile windows on the fly (no pre-cutting).

    Per-modality folders discovered case-insensitively (``optical``/``opt``, ``sar``,
    ``lbl``/``label``); official split file when present (``*division*.txt`` / ``*split*.txt``),
    else a seeded sheet-level split; ``val`` is a seeded holdout of the training sheets.
    Percentiles are per sheet (decimated read), as predict computes them per scene.
    """

    name = "whu"
    patch_based = False
    item_unit = "sheets"
    layout = (
        "<root>/{optical|opt}/, <root>/sar/, <root>/{lbl|label}/ holding same-named sheets "
        "(e.g. NH49E001013.tif); splits from a *division*.txt / *split*.txt file"
    )

    def __init__(
        self,
        root: Path,
        split: str,
        folders: dict[str, Path],
        *,
        modalities: Sequence[str] | None = None,
        bands: Mapping[str, Sequence[int | str]] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        **kw: Any,
    ) -> None:
        super().__init__(split, **kw)
        import rasterio

        self.root = root
        self.modalities = _check_modalities(self.name, self.all_modalities, modalities)
        self.classes = self.class_table
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
        self.bands, self.band_names = _whu_bands(
            self.files[ids[0]]["optical"], bands, self.band_flags
        )
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
        h, w = self.sizes[s]
        r, c = jitter_window(r, c, h, w, self.tile, rng)
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


def _precut_plan(split: str, has_val: bool) -> list[tuple[str, str | None]]:
    """(folder, part) pairs to read for ``split``; part "kept"/"held" splits ``train`` when
    there is no ``val`` folder."""
    if split == "all":
        return [("train", None), ("val", None), ("test", None)]
    if split in ("train", "val") and not has_val:
        return [("train", "held" if split == "val" else "kept")]
    return [(split, None)]


def _precut_folders(d: Path) -> tuple[dict[str, dict[str, Path]], dict[str, Path]]:
    """The .tif files by id, and the folder, of each of optical/sar/label under a split folder."""
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
    return mods, subs


class WhuPrecutDataset(_WhuMeta, SegDataset):
    """The common pre-cut WHU-OPT-SAR layout ``{train,val,test}/{opt,sar,lbl}/*.tif``.

    Percentiles are per tile (patch dataset). Without a ``val`` folder, ``val`` is a seeded
    holdout of the ``train`` tiles.
    """

    name = "whu"
    layout = "<root>/{train,val,test}/{opt,sar,lbl}/<id>.tif (val optional)"

    def __init__(
        self,
        root: Path,
        split: str,
        *,
        modalities: Sequence[str] | None = None,
        bands: Mapping[str, Sequence[int | str]] | None = None,
        val_fraction: float = 0.1,
        **kw: Any,
    ) -> None:
        super().__init__(split, **kw)
        self.root = root
        self.modalities = _check_modalities(self.name, self.all_modalities, modalities)
        self.classes = self.class_table
        self.units = {"sar": ""}
        has_val = find_dir(root, ["val", "valid", "validation"]) is not None
        self.files: list[dict[str, Path]] = []
        for src, part in _precut_plan(split, has_val):
            names = ["val", "valid", "validation"] if src == "val" else [src]
            d = find_dir(root, names)
            if d is None:
                if split == "all":
                    continue
                raise DatasetError(
                    f"expected {root / src}/{{opt,sar,lbl}} (pre-cut WHU-OPT-SAR layout)"
                )
            mods, subs = _precut_folders(d)
            ids = _complete_ids(self, mods, subs, f"{d.name} ({root})")
            if part is not None:
                kept, held = seeded_holdout(ids, val_fraction, self.seed)
                ids = held if part == "held" else kept
            self.files += [{k: mods[k][i] for k in mods} for i in ids]
        if not self.files:
            raise DatasetError(f"the {split} split of whu (pre-cut) at {root} is empty")
        self.bands, self.band_names = _whu_bands(self.files[0]["optical"], bands, self.band_flags)

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

"""A user's own scenes from a CSV/TOML scene list, co-registered onto each label's grid."""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mfaf_cli.data.bands import recorded_names
from mfaf_cli.data.base import (
    _REPORTED,
    DECIMATED_SIDE,
    Scene,
    SegDataset,
    _check_modalities,
    _check_root,
)
from mfaf_cli.data.splits import (
    block_size_for,
    block_split,
    grid_offsets,
    group_split3,
    seeded_split3,
)
from mfaf_cli.data.transforms import jitter_window
from mfaf_cli.errors import DatasetError, LabelError, UsageError
from mfaf_cli.metadata import (
    ALL_MODALITIES,
    ClassInfo,
    ModelMeta,
    default_classes,
    rule_texts,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger("mfaf.data")

MODALITY_COLUMNS = ALL_MODALITIES

#: warped grid blocks each process (main or loader worker) keeps between epochs
#: (coreg/warpcache.py), for a scene whose warped sources fit whole: 2 SAR bands warped onto
#: a 10 m label grid take 9 B a pixel (values and valid mask), so up to ~2700² pixels
WARP_CACHE_BYTES = 64 * 2**20

#: GDAL's block cache while this dataset reads (per process, unless GDAL_CACHEMAX is set).
#: Its default, 5 % of RAM, kept every block a set-up pass decoded (the decimated reads of
#: the statistics and of the SAR-units check decode whole files), so memory grew with the
#: scene: 941 vs 321 MB after set-up at 8192² vs 2048² (benchmarks/train_bench.py). Training
#: reads jittered windows in random order, so a larger cache would rarely be hit anyway.
GDAL_CACHE_BYTES = 64 * 2**20


def bounded_gdal_cache() -> contextlib.AbstractContextManager[Any]:
    """GDAL's block cache capped at :data:`GDAL_CACHE_BYTES` inside (the process's own
    setting restored after; nothing changed when the user set ``GDAL_CACHEMAX``)."""
    if os.environ.get("GDAL_CACHEMAX"):
        return contextlib.nullcontext()
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)


def read_scene_list(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Scenes (dicts with modality paths, ``label``, optional ``id``/``split``) and options.

    CSV: a header with ``label``, modality columns (optical, sar, hsi, lidar) and optionally
    ``id``, ``split``. TOML: ``[[scene]]`` tables with the same keys, plus optional top-level
    ``classes`` (names), ``num_classes``, ``ignore_value``, ``[bands]`` and ``[units]``.
    Relative paths are relative to the list's folder.
    """
    rows, opts = _list_rows(path)
    scenes = [_scene_entry(path, n, row) for n, row in enumerate(rows, start=1)]
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


def _list_rows(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The raw scene rows and top-level options of a TOML or CSV scene list."""
    if path.suffix.lower() == ".toml":
        try:
            doc = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise DatasetError(f"{path} is not valid TOML ({err})") from None
        rows = doc.get("scene") or doc.get("scenes") or []
        return rows, {k: v for k, v in doc.items() if k not in ("scene", "scenes")}
    with open(path, newline="") as f:
        rows = [
            {k.strip().lower(): (v or "").strip() for k, v in r.items() if k}
            for r in csv.DictReader(f)
        ]
    return rows, {}


def _scene_entry(path: Path, n: int, row: Mapping[str, Any]) -> dict[str, Any]:
    """Scene ``n`` of the list with resolved paths; every file it names must exist."""
    base = path.parent
    if "label" not in row or not row["label"]:
        raise DatasetError(f"{path}: scene {n} has no 'label' raster")
    sc: dict[str, Any] = {
        "id": str(row.get("id") or f"scene{n}"),
        "split": str(row.get("split") or "").lower() or None,
        "group": str(row.get("group") or "") or None,  # event / region / date: held out whole
        "label": (base / str(row["label"])).resolve(),
        "inputs": {},
        "ignore": _ignore_column(path, n, row.get("ignore_value")),
    }
    for m in MODALITY_COLUMNS:
        if row.get(m):
            sc["inputs"][m] = (base / str(row[m])).resolve()
    for p in [sc["label"], *sc["inputs"].values()]:
        if not p.exists():
            raise DatasetError(f"{path}: scene {sc['id']}: {p} does not exist")
    return sc


def _ignore_column(path: Path, n: int, value: Any) -> float | None:
    """A scene's own ``ignore_value`` (column or key): a label value that means unlabelled."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: scene {n}: ignore_value {value!r} is not a number") from None


def warn_once(msg: str) -> None:
    """A warning given once per process (train, val and test readers open the same list)."""
    if msg not in _REPORTED:
        _REPORTED.add(msg)
        log.warning("%s", msg)


def folder_bands(
    where: Path,
    listed: Any,
    given: Mapping[str, Sequence[int | str]] | None,
    given_where: Mapping[str, str] | None = None,
) -> tuple[dict[str, list[int | str]], dict[str, str]]:
    """The band lists of a folder dataset and where each came from (for error messages): the
    scene list's ``[bands]`` table (one band grammar: ``optical = "B12,B8,B4"`` or a list),
    overridden per modality by ``--bands`` / the config file's ``[bands]`` (``given_where``
    names the key it was given with; by default ``--bands``)."""
    from mfaf_cli.bandspec import format_band_list, parse_bands_table

    try:
        out = parse_bands_table(listed, f"{where} [bands]")
    except ValueError as err:
        raise DatasetError(str(err)) from None
    flags = {m: f"{where} [bands] {m}" for m in out}
    for m, v in (given or {}).items():
        out[m] = list(v)
        flags[m] = (given_where or {}).get(m) or f"--bands {m}={format_band_list(v)}"
    return out, flags


def _list_rules(where: Path, value: Any) -> list[str]:
    """The scene list's ``rules`` (a table or list, see :func:`metadata.rule_texts`)."""
    if value is None:
        return []
    try:
        return rule_texts(value, f"{where} rules")
    except UsageError as err:
        raise DatasetError(str(err)) from None


def find_scene_list(root: Path) -> Path:
    """The scene list itself, or the one a folder holds (scenes.toml, scenes.csv, then any)."""
    if not root.is_dir():
        return root
    cands = (
        [root / n for n in ("scenes.toml", "scenes.csv")]
        + sorted(root.glob("*.csv"))
        + sorted(root.glob("*.toml"))
    )
    lists = [p for p in cands if p.exists()]
    if not lists:
        raise DatasetError(f"expected {root}/scenes.csv or {root}/scenes.toml listing the scenes")
    return lists[0]


def _select_scenes(
    scenes: Sequence[dict[str, Any]], split: str, val: float, test: float, seed: int
) -> list[int]:
    """Scene indexes of ``split``: the split column, else a seeded split of ≥ 3 scenes, else all
    scenes (their windows are split later)."""
    if split == "all":
        return list(range(len(scenes)))
    if any(s["split"] for s in scenes):
        alias = {"valid": "val", "validation": "val"}
        return [i for i, s in enumerate(scenes) if alias.get(s["split"], s["split"]) == split]
    if any(s["group"] for s in scenes):
        groups = [s["group"] or s["id"] for s in scenes]  # a scene without one: its own group
        if len(set(groups)) < 3:
            raise DatasetError(
                f"the scene list's group column names {len(set(groups))} groups; holding groups "
                "out whole needs at least 3 (or give a split column)"
            )
        ids = [str(i) for i in range(len(scenes))]
        return sorted(int(i) for i in group_split3(ids, groups, val, test, seed)[split])
    if len(scenes) >= 3:
        parts = seeded_split3([str(i) for i in range(len(scenes))], val, test, seed)
        return sorted(int(i) for i in parts[split])
    return list(range(len(scenes)))


def _split_windows(
    windows: Sequence[tuple[int, int, int]], split: str, val: float, test: float, seed: int
) -> list[tuple[int, int, int]]:
    """The windows of ``split`` in a seeded window-level split (for lists of < 3 scenes)."""
    keys = [f"{w[0]}:{w[1]}:{w[2]}" for w in windows]
    keep = set(seeded_split3(keys, val, test, seed)[split])
    return [w for w, k in zip(windows, keys, strict=True) if k in keep]


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
    item_unit = "scenes"
    all_modalities = MODALITY_COLUMNS
    layout = (
        "a CSV/TOML scene list (<root>/scenes.csv or scenes.toml, or the file itself): "
        "label and modality rasters per scene, optional id and split"
    )

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        modalities: Sequence[str] | None = None,
        num_classes: int | None = None,
        classes: str | Sequence[ClassInfo] | None = None,
        ignore_value: float | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        bands: Mapping[str, Sequence[int | str]] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(split, **kw)
        r = find_scene_list(_check_root(root))
        self.list_path = r
        scenes, opts = read_scene_list(r)
        available = tuple(scenes[0]["inputs"])
        self.modalities = _check_modalities(self.name, available, modalities)
        self.ignore_value = ignore_value if ignore_value is not None else opts.get("ignore_value")
        self.bands_opt, self.band_flags = folder_bands(r, opts.get("bands"), bands, self.band_flags)
        #: the list's ``rules`` (``NAME=EXPR``), recorded in the model (--rule wins by name)
        self.list_rules = _list_rules(r, opts.get("rules"))
        self.units = {"sar": str(dict(opts.get("units", {})).get("sar", "auto"))}
        # Class table over *all* scenes so every split agrees on K.
        self.classes = self._class_table(r, scenes, opts, num_classes, classes)
        self._scenes_all = scenes
        has_split = any(s["split"] for s in scenes)
        self.scene_idx = _select_scenes(scenes, split, val_fraction, test_fraction, self.seed)
        self.sizes: dict[int, tuple[int, int]] = {}
        self.windows: list[tuple[int, int, int]] = self._cut_windows(self.scene_idx)
        self.split_source = (
            "the scene list's split column"
            if has_split
            else f"group-held-out split (seed {self.seed}, val {val_fraction}, test "
            f"{test_fraction}): no group on two sides"
            if any(sc["group"] for sc in scenes)
            else f"seeded split (seed {self.seed}, val {val_fraction}, test {test_fraction})"
        )
        if split != "all" and not has_split and len(scenes) < 3:
            self.windows, self.split_source = self._block_windows(
                split, val_fraction, test_fraction
            )
        if not self.windows:
            raise DatasetError(f"the {split} split of the folder dataset {r} is empty")
        self._aligned: dict[int, Any] = {}
        self._labels: dict[int, Any] = {}  # label rasters open in this process (see _pid)
        self._pid = -1
        self.lohi: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        first = self._scene(self.windows[0][0])
        # SAR units as read (resolved from "auto"), recorded in the model metadata
        self.units = {m: u for m, u in first.units.items() if u in ("db", "linear")}
        self.band_names = {
            m: recorded_names(m, c.indexes, c.labels, self.bands_opt.get(m))
            for m, c in first.band_choices.items()
            if m in self.modalities
        }
        self._check_scene_bands()

    def _block_windows(
        self, split: str, val: float, test: float
    ) -> tuple[list[tuple[int, int, int]], str]:
        """The windows of ``split`` in a spatial block split of each scene, with a one-tile gap
        between splits; a scene too small for 3 blocks falls back to a leaky window split."""
        t = self.tile  # whole tiles only: the edge tile shifted back would overlap a neighbour
        offs = {i: (list(range(0, h - t + 1, t)), list(range(0, w - t + 1, t)))
                for i, (h, w) in self.sizes.items()}  # fmt: skip
        if any(len(r) * len(c) < 3 * 4 for r, c in offs.values()):  # < 3 blocks of 2×2 tiles
            warn_once(
                "folder dataset: no 'split' column, fewer than 3 scenes and too few tiles for a "
                "spatial block split; splitting windows (neighbouring windows share context, "
                "so validation scores are optimistic). Fix: add a 'split' or 'group' column "
                "with 3+ scenes, or a smaller --tile so each scene has 12+ tiles"
            )
            rule = f"window-level seeded split (seed {self.seed}; spatially leaky)"
            return _split_windows(self.windows, split, val, test, self.seed), rule
        keep: list[tuple[int, int, int]] = []
        for i, (rows, cols) in offs.items():
            block = block_size_for(len(rows), len(cols))
            cells = block_split(len(rows), len(cols), val, test, self.seed + i, block=block)
            keep += [(i, rows[r], cols[c]) for r, c in cells[split]]
        rule = (f"spatial block split per scene (about 16 square blocks of tiles, seed "
                f"{self.seed}, val {val}, test {test}), one-tile gap between splits")  # fmt: skip
        return sorted(keep), rule

    def _class_table(
        self,
        where: Path,
        scenes: Sequence[dict[str, Any]],
        opts: Mapping[str, Any],
        num_classes: int | None,
        spec: str | Sequence[ClassInfo] | None = None,
    ) -> tuple[ClassInfo, ...]:
        """A class table (``spec`` or the list's ``classes`` as a preset name or a CSV/JSON
        file: product codes mapped to ids), class names in the list, else ``num_classes``,
        else 1 + the largest label value."""
        from mfaf_cli.classes import load_class_table

        names = opts.get("classes")
        if spec is not None and not isinstance(spec, str):  # a model's own table (evaluate)
            return tuple(spec)
        if spec:  # --classes: a path relative to the current folder
            return load_class_table(str(spec))
        if isinstance(names, str):  # the list's own key: relative to the list
            return load_class_table(names, base=where.parent)
        if names:
            return tuple(
                ClassInfo(i, str(n), default_classes(len(names))[i].color)
                for i, n in enumerate(names)
            )
        k = num_classes or opts.get("num_classes")
        if k is None:
            mx = -1
            for sc in scenes:
                lab = self._label_values(sc["label"], sc.get("ignore"))
                if self.ignore_value is not None:
                    lab = lab[lab != self.ignore_value]
                if lab.size:
                    mx = max(mx, int(lab.max()))
            k = mx + 1
        if int(k) < 1:
            raise DatasetError(f"{where}: the label rasters hold no class values")
        return default_classes(int(k))

    def _cut_windows(self, selected: Sequence[int]) -> list[tuple[int, int, int]]:
        """(scene index, row, col) of the tile grid of every selected scene; records sizes."""
        import rasterio

        windows: list[tuple[int, int, int]] = []
        for i in selected:
            with rasterio.open(self._scenes_all[i]["label"]) as ds:
                self.sizes[i] = (ds.height, ds.width)
            windows += [
                (i, rr, cc)
                for rr in grid_offsets(self.sizes[i][0], self.tile)
                for cc in grid_offsets(self.sizes[i][1], self.tile)
            ]
        return windows

    @staticmethod
    def _label_values(path: Path, ignore: float | None = None) -> np.ndarray:
        import rasterio

        with rasterio.open(path) as ds:
            f = max(1.0, max(ds.height, ds.width) / DECIMATED_SIDE)
            shape = (max(1, round(ds.height / f)), max(1, round(ds.width / f)))
            lab = ds.read(1, out_shape=shape)
            if ds.nodata is not None:
                lab = lab[lab != ds.nodata]
        lab = np.asarray(lab).reshape(-1)
        return lab if ignore is None else lab[lab != ignore]

    def check_labels(self) -> None:
        """Codes outside the class table (base check), and a scene whose label raster holds
        no labelled pixel at all: training on it would write a model trained on nothing."""
        super().check_labels()
        from mfaf_cli.data.label_scan import has_labelled_pixel

        for i in sorted({w[0] for w in self.windows}):
            sc = self._scenes_all[i]
            ignores = [v for v in (self.ignore_value, sc.get("ignore")) if v is not None]
            if not has_labelled_pixel(sc["label"], ignores):
                raise LabelError(
                    f"scene {sc['id']}: {sc['label']} holds no labelled pixel (all nodata or "
                    "ignore value); label it, or drop it from the scene list"
                )

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_aligned"] = {}
        d["_labels"] = {}
        d.pop("_split_label_cache", None)
        d["_pid"] = -1
        return d

    def _scene(self, i: int) -> Any:
        if self._pid != os.getpid():
            self._aligned, self._labels = {}, {}
            self._pid = os.getpid()
        if i not in self._aligned:
            self._aligned[i] = self._open_scene(i, warp_cache_bytes=WARP_CACHE_BYTES)
        return self._aligned[i]

    def _open_scene(self, i: int, *, warp_cache_bytes: int = 0, quiet: bool = False) -> Any:
        """A new reader of scene ``i`` on its label grid (the caller closes it)."""
        from mfaf_cli.coreg.align import AlignedScene
        from mfaf_cli.coreg.grid import grid_from_reference

        sc = self._scenes_all[i]
        with bounded_gdal_cache():  # the SAR-units check reads the whole file decimated
            return AlignedScene(
                {m: sc["inputs"][m] for m in self.modalities},
                grid_from_reference(sc["label"]),
                {m: self.bands_opt[m] for m in self.modalities if m in self.bands_opt},
                units=self.units.get("sar", "auto"),
                band_flags=self.band_flags,
                warp_cache_bytes=warp_cache_bytes,
                quiet=quiet,
            )

    def _check_scene_bands(self) -> None:
        """Every scene of the split holds the bands asked for (one line naming the scene and
        the option or key otherwise), before anything is trained or written."""
        import rasterio

        from mfaf_cli.coreg.align import file_descriptions
        from mfaf_cli.coreg.bands import select_bands

        for i in sorted({w[0] for w in self.windows}):
            for m in self.modalities:
                path = self._scenes_all[i]["inputs"][m]
                with rasterio.open(path) as ds:
                    count, described = ds.count, ds.descriptions
                found = select_bands(
                    self.bands_opt.get(m), count, file_descriptions(path.name, count, described),
                    path=path.name, modality=m, flag=self.band_flags.get(m),
                )  # fmt: skip
                if len(found) != len(self.band_names[m]):
                    raise DatasetError(
                        f"scene {self._scenes_all[i]['id']}: {path} gives {len(found)} {m} "
                        f"band(s), the first scene {len(self.band_names[m])}; select the same "
                        f"bands with {self.band_flags.get(m, '--bands')}"
                    )

    def _stat_meta(self) -> ModelMeta:
        return ModelMeta(arch="folder", modalities=self.modality_specs(), classes=self.classes)

    def scene_percentiles(self, i: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if i not in self.lohi:
            self.lohi[i] = self._scene(i).percentiles(self._stat_meta())
        return self.lohi[i]

    def __len__(self) -> int:
        return len(self.windows)

    def map_label(
        self, raw: np.ndarray, nodata: float | None = None, ignore: float | None = None
    ) -> np.ndarray:
        from mfaf_cli.classes import codes_to_ids

        raw = np.asarray(raw)
        keep = np.ones(raw.shape, dtype=bool)
        if nodata is not None:
            keep &= ~(
                np.isnan(raw) if isinstance(nodata, float) and math.isnan(nodata) else raw == nodata
            )
        for value in (self.ignore_value, ignore):
            if value is not None:
                keep &= raw != value
        if any(c.code is not None for c in self.classes):
            return codes_to_ids(raw, self.classes, keep, self.ignore_index)
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
        """The labelled values of this split's windows (not of their whole scenes: a window-level
        split shares scenes between splits), decimated like :meth:`_label_values`."""
        return [(name, vals) for name, vals, _ in self._split_labels()]

    def _full_label_pixels(self) -> dict[str, int]:
        return {name: full for name, _, full in self._split_labels()}

    def _split_labels(self) -> list[tuple[str, np.ndarray, int]]:
        """(label file, its values under this split's windows, how many pixels those are at
        full resolution) per scene of the split; computed once."""
        cached: list[tuple[str, np.ndarray, int]] | None = getattr(self, "_split_label_cache", None)
        if cached is None:
            with bounded_gdal_cache():  # decimated reads of whole label rasters
                cached = [self._covered_labels(i) for i in sorted({w[0] for w in self.windows})]
            self._split_label_cache = cached
        return cached

    def _covered_labels(self, i: int) -> tuple[str, np.ndarray, int]:
        import rasterio

        path, t = self._scenes_all[i]["label"], self.tile
        with rasterio.open(path) as ds:
            f = max(1.0, max(ds.height, ds.width) / DECIMATED_SIDE)
            shape = (max(1, round(ds.height / f)), max(1, round(ds.width / f)))
            lab, nodata, (h, w) = ds.read(1, out_shape=shape), ds.nodata, (ds.height, ds.width)
        fy, fx = shape[0] / h, shape[1] / w
        cover = np.zeros(shape, dtype=bool)
        for j, r, c in self.windows:
            if j == i:
                rows = slice(int(r * fy), math.ceil(min(r + t, h) * fy))
                cover[rows, int(c * fx) : math.ceil(min(c + t, w) * fx)] = True
        if nodata is not None:
            cover &= ~(np.isnan(lab) if math.isnan(nodata) else lab == nodata)
        if (ignore := self._scenes_all[i].get("ignore")) is not None:
            cover &= lab != ignore  # the scene's own ignore_value column
        vals = np.asarray(lab[cover]).reshape(-1)
        return str(path), vals, round(vals.size / (fy * fx))

    def stat_arrays(self, max_items: int) -> dict[str, list[np.ndarray]]:
        out: dict[str, list[np.ndarray]] = {m: [] for m in self.modalities}
        used = sorted({w[0] for w in self.windows})[:max_items]
        for i in used:
            # through handles closed right after: a decimated read decodes every block of
            # the files, and GDAL keeps decoded blocks per handle up to its cache size (5 %
            # of RAM by default), so the samples' long-lived handles kept the whole scene
            # (measured: 941 vs 321 MB after set-up at 8192² vs 2048², train_bench.py)
            with bounded_gdal_cache(), self._open_scene(i, quiet=True) as scene:
                arrays, valid, _ = scene.read_decimated()
            for m in self.modalities:
                a = arrays[m].copy()
                a[:, ~valid] = np.nan
                out[m].append(a)
        return out

    def raw(self, index, rng=None):  # type: ignore[override]
        from rasterio.windows import Window as RioWindow

        from mfaf_cli.tiling.windows import Window

        i, r, c = self.windows[index]
        h, w = self.sizes[i]
        t = self.tile
        r, c = jitter_window(r, c, h, w, t, rng)
        with bounded_gdal_cache():  # an epoch touches every block of the scene
            arrays, valid = self._scene(i).read(Window(r, c, t, t))
            ds = self._label_handle(i)  # opened once per process, like the scene's inputs
            lab = ds.read(1, window=RioWindow(c, r, min(t, w - c), min(t, h - r)))
        arrays = {m: arrays[m] for m in self.modalities}
        nodata = ds.nodata
        mask = self.map_label(lab, nodata, self._scenes_all[i].get("ignore"))
        mask = np.pad(
            mask,
            ((0, t - mask.shape[0]), (0, t - mask.shape[1])),
            constant_values=self.ignore_index,
        )
        mask[~valid] = self.ignore_index
        return arrays, mask, self.scene_percentiles(i) if self._uses_percentiles() else {}

    def _uses_percentiles(self) -> bool:
        """Whether normalising needs the scene's percentiles: ``fixed`` normalisation ignores
        them, and a decimated read of the whole scene per worker is not free."""
        fixed = self.norm_mode == "fixed" and bool(self.norms)
        return not (fixed and all(n.mode == "fixed" for n in self.norms.values()))

    def _label_handle(self, i: int) -> Any:
        """Scene ``i``'s label raster, open in this process (closed with the process)."""
        import rasterio

        self._scene(i)  # resets the per-process caches after a fork
        if i not in self._labels:
            self._labels[i] = rasterio.open(self._scenes_all[i]["label"])
        return self._labels[i]

    def window_labels(self, index: int) -> np.ndarray:
        """The class ids of window ``index`` as training reads it (unjittered), from the label
        raster alone: what balanced sampling's per-window histogram needs."""
        import rasterio
        from rasterio.windows import Window as RioWindow

        i, r, c = self.windows[index]
        h, w = self.sizes[i]
        t = self.tile
        with rasterio.open(self._scenes_all[i]["label"]) as ds:
            lab = ds.read(1, window=RioWindow(c, r, min(t, w - c), min(t, h - r)))
            nodata = ds.nodata
        return self.map_label(lab, nodata, self._scenes_all[i].get("ignore"))

    def scenes(self) -> list[Scene]:
        used = sorted({w[0] for w in self.windows})
        return [
            Scene(
                self._scenes_all[i]["id"],
                {m: self._scenes_all[i]["inputs"][m] for m in self.modalities},
                self._scenes_all[i]["label"],
                {m: self.bands_opt[m] for m in self.modalities if m in self.bands_opt},
                self._scenes_all[i].get("ignore"),
            )
            for i in used
        ]

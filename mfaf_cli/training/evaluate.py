"""Evaluation: a model on a dataset split, or a predicted map against a truth raster.

Both accumulate one confusion matrix and report
:func:`~mfaf_cli.training.metrics.metrics_from_confusion`.
Georeferenced scenes (Sen1Floods11, WHU-OPT-SAR, folder scenes) go through the inference core
that predict uses (co-registration, sliding windows, blending), whose confusion-matrix sink
scores the rows as they are blended, exactly like ``mfaf evaluate PRED.tif --truth LABEL.tif``
scores a written map (no temporary map); PNG patches (OMBRIA) run the same
normalise → predictor → blend steps in memory.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mfaf_cli.errors import BandMismatchError, InputError, LabelError, NoOverlapError
from mfaf_cli.io.truth import apply_mapping, truth_labels, truth_on_grid
from mfaf_cli.metadata import NODATA_LABEL, ModelMeta, default_classes
from mfaf_cli.normalize import apply_normalisation, band_percentiles
from mfaf_cli.training.metrics import confusion_matrix, metrics_from_confusion, to_jsonable
from mfaf_cli.types import Blend, Engine, Precision

if TYPE_CHECKING:
    from mfaf_cli.pipeline.spec import InferenceSpec

#: Rows of the prediction processed at once when scoring rasters (bounded memory).
BLOCK_ROWS = 1024
#: Most classes inferred from a prediction without a class table (uint8 ids, 255 = nodata).
MAX_INFERRED_CLASSES = 255


@dataclass
class EvalResult:
    """Metrics plus what was evaluated."""

    metrics: dict[str, Any]
    class_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def confusion(self) -> np.ndarray:
        return np.asarray(self.metrics["confusion_matrix"], dtype=np.int64)

    def to_json(self) -> str:
        return json.dumps(to_jsonable({**self.info, "metrics": self.metrics}))


# ---- label mapping ---------------------------------------------------------------------------
def parse_mapping(spec: str | Mapping[Any, Any] | None) -> dict[int, int] | None:
    """``"10:1,20:2,0:255"`` (or a dict, or a JSON file path) → {truth value: class id}."""
    if spec is None or spec == "":
        return None
    items: Iterable[tuple[Any, Any]]
    if isinstance(spec, Mapping):
        items = spec.items()
    elif Path(str(spec)).is_file():
        try:
            items = json.loads(Path(str(spec)).read_text()).items()
        except (json.JSONDecodeError, AttributeError) as err:
            raise InputError(f"mapping file {spec} must hold a JSON object ({err})") from None
    else:
        pairs: list[tuple[str, str]] = []
        for part in str(spec).split(","):
            if not part.strip():
                continue
            if ":" not in part:
                raise InputError(f"bad mapping item {part!r}; use TRUTH:CLASS pairs like 10:1,20:2")
            a, b = part.split(":", 1)
            pairs.append((a.strip(), b.strip()))
        items = pairs
    try:
        return {int(float(k)): int(float(v)) for k, v in items}
    except ValueError as err:
        raise InputError(f"mapping values must be integers ({err})") from None


# ---- rasters -------------------------------------------------------------------------------
def _classes_from_tags(tags: Mapping[str, str]) -> list[str] | None:
    names = tags.get("CLASS_NAMES")
    ids = tags.get("CLASS_IDS")
    if not names:
        return None
    try:
        names_l = [str(n) for n in json.loads(names)]
        ids_l = [int(i) for i in json.loads(ids)] if ids else list(range(len(names_l)))
    except (json.JSONDecodeError, TypeError, ValueError):
        return None
    k = max(ids_l) + 1 if ids_l else 0
    out = [f"class-{i}" for i in range(k)]
    for i, n in zip(ids_l, names_l, strict=False):
        out[i] = n
    return out


def check_class_map(ds: Any, name: str) -> None:
    """Refuse a prediction that cannot be a class map: more than one band, or a non-numeric
    dtype (an optical scene passed by mistake would otherwise be scored as ~2000 classes)."""
    if ds.count != 1:
        raise LabelError(
            f"{name} is not a class map: it has {ds.count} bands and dtype {ds.dtypes[0]} "
            "(a class map has one band of class ids, as written by `mfaf predict -o`)"
        )
    if np.dtype(ds.dtypes[0]).kind not in "uif":
        raise LabelError(f"{name} is not a class map: its dtype is {ds.dtypes[0]}")


def _pred_block(pds: Any, win: Any, pnd: float, ignore_index: int, name: str) -> np.ndarray:
    """Class ids of one block of the prediction (nodata → ``ignore_index``); a float raster
    must hold whole numbers."""
    raw = pds.read(1, window=win)
    if raw.dtype.kind == "f":
        missing = ~np.isfinite(raw) | (raw == pnd)
        frac = ~missing & (raw != np.floor(raw))
        if frac.any():
            raise LabelError(
                f"{name} is not a class map: it holds fractional values such as "
                f"{float(raw[frac][0]):g} (dtype {raw.dtype}); class ids are whole numbers"
            )
        pred = np.where(missing, ignore_index, raw).astype(np.int64)
    else:
        pred = raw.astype(np.int64)
        pred[raw == pnd] = ignore_index
    return pred


def footprints_overlap(a: Any, b: Any) -> bool:
    """Whether two open rasters' footprints intersect (compared in ``a``'s CRS)."""
    from rasterio.warp import transform_bounds

    if a.crs is None or b.crs is None:
        return a.crs is None and b.crs is None and a.shape == b.shape
    bb = b.bounds if b.crs == a.crs else transform_bounds(b.crs, a.crs, *b.bounds)
    ab = a.bounds
    return not (
        bb[0] >= ab[2] or bb[2] <= ab[0] or bb[1] >= max(ab[1], ab[3]) or bb[3] <= min(ab[1], ab[3])
    )


def raster_confusion(
    pred_path: str | os.PathLike[str],
    truth_path: str | os.PathLike[str],
    num_classes: int,
    *,
    mapping: dict[int, int] | None = None,
    label_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    ignore_index: int = NODATA_LABEL,
) -> np.ndarray:
    """Confusion matrix of a label GeoTIFF against a truth raster co-registered onto its grid.

    Truth is resampled nearest onto the prediction's grid, block by block. Ignored: prediction
    nodata (255), truth nodata / outside its footprint / −1, values mapped to 255. ``label_fn``
    (a dataset's label mapping: raw values → class ids with ignore) replaces ``mapping``.
    """
    import rasterio
    from rasterio.windows import Window as RioWindow

    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    with rasterio.open(pred_path) as pds, rasterio.open(truth_path) as tds:
        same = (
            tds.crs == pds.crs and tds.transform == pds.transform and tds.shape == pds.shape
        ) or (tds.crs is None and pds.crs is None and tds.shape == pds.shape)
        if tds.crs is None and pds.crs is None and not same:
            raise InputError(
                f"{Path(truth_path).name} ({tds.width}×{tds.height}) and {Path(pred_path).name} "
                f"({pds.width}×{pds.height}) have no CRS and different sizes; cannot co-register"
            )
        check_class_map(pds, Path(pred_path).name)
        both_crs = pds.crs is not None and tds.crs is not None  # else truth_on_grid says so
        if not same and both_crs and not footprints_overlap(pds, tds):
            raise NoOverlapError(
                f"{Path(pred_path).name} and {Path(truth_path).name} do not overlap "
                f"(prediction bounds {_fmt_bounds(pds.bounds)} in {pds.crs}); "
                "check that the truth belongs to this scene"
            )
        pnd = pds.nodata if pds.nodata is not None else NODATA_LABEL
        for r0 in range(0, pds.height, BLOCK_ROWS):
            h = min(BLOCK_ROWS, pds.height - r0)
            win = RioWindow(0, r0, pds.width, h)
            pred = _pred_block(pds, win, pnd, ignore_index, Path(pred_path).name)
            if same:
                t = tds.read(1, window=win).astype(np.float64)
                if tds.nodata is not None:
                    t[t == tds.nodata] = np.nan
            else:
                t = truth_on_grid(tds, pds.crs, pds.window_transform(win), (h, pds.width))
            truth = truth_labels(t, label_fn, mapping, ignore_index)
            try:
                cm += confusion_matrix(pred, truth, num_classes, ignore_index)
            except LabelError as err:
                msg = str(err)
                if msg.startswith("truth"):
                    raise LabelError(
                        f"{Path(truth_path).name}: {msg.replace('truth labels hold', 'holds')} "
                        "(classes the model does not know)"
                    ) from None
                raise LabelError(
                    f"{Path(pred_path).name} is not a class map of these {num_classes} classes: "
                    f"{msg.replace('predictions hold', 'it holds')}"
                ) from None
    return cm


def _fmt_bounds(b: Any) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in b) + ")"


def _largest_value(a: np.ndarray, nodata: float) -> int:
    """Largest valid value of a prediction band (0 when it is all nodata)."""
    a = a[(a != nodata) & np.isfinite(a)] if a.dtype.kind == "f" else a[a != nodata]
    return int(a.max()) if a.size else 0


def _check_inferred(vmax: int, name: str, fix: str) -> None:
    """A raster without a class table whose values reach past uint8 ids is no class map."""
    if vmax >= MAX_INFERRED_CLASSES:
        raise LabelError(
            f"{name} is not a class map: it holds values up to {vmax}, beyond the "
            f"{MAX_INFERRED_CLASSES} class ids a map without a class table may use; {fix}"
        )


def evaluate_rasters(
    pred: str | os.PathLike[str],
    truth: str | os.PathLike[str],
    *,
    mapping: str | Mapping[Any, Any] | None = None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
) -> EvalResult:
    """Score a predicted label GeoTIFF against a truth raster (see :func:`raster_confusion`).

    Classes come from the prediction's tags (written by ``mfaf predict``), else
    ``class_names`` / ``num_classes``, else the largest value found in either raster.
    """
    from mfaf_cli.io.inputs import check_readable, open_raster

    for p, what in ((pred, "prediction"), (truth, "truth")):
        check_readable(p, what)
    m = parse_mapping(mapping) if not isinstance(mapping, dict) else mapping
    # require_crs=False: two CRS-less rasters of the same size can still be compared
    # (raster_confusion says so when they cannot); a truncated file fails here, in one line
    with (
        open_raster(pred, "prediction", require_crs=False) as ds,
        open_raster(truth, "truth", require_crs=False) as tds,  # unreadable files first
    ):
        check_class_map(ds, Path(pred).name)
        names = class_names or _classes_from_tags(ds.tags())
        pmax = None
        if names is None and num_classes is None:
            pmax = _largest_value(ds.read(1), ds.nodata if ds.nodata is not None else NODATA_LABEL)
            _check_inferred(pmax, Path(pred).name, "give --num-classes if that is right")
        if names is None and num_classes is None:
            t = tds.read(1)
            if tds.nodata is not None:
                t = t[t != tds.nodata]
            t = apply_mapping(np.asarray(t).astype(np.int64), m)
            t = t[(t >= 0) & (t != NODATA_LABEL)]
            tmax = int(t.max()) if t.size else 0
            _check_inferred(tmax, Path(truth).name, "map them to class ids with --map")
            num_classes = max(pmax or 0, tmax) + 1
    if names is None:
        assert num_classes is not None  # given, or inferred from the rasters above
        names = [c.name for c in default_classes(num_classes)]
    k = len(names)
    cm = raster_confusion(pred, truth, k, mapping=m)
    if int(cm.sum()) == 0:
        raise InputError(
            f"no pixel of {Path(pred).name} has both a predicted class and a truth label in "
            f"{Path(truth).name} (all nodata or ignored where they overlap); nothing to score"
        )
    metrics = metrics_from_confusion(cm, names)
    info: dict[str, Any] = {"mode": "rasters", "prediction": str(pred), "truth": str(truth)}
    if m:
        info["mapping"] = {str(a): b for a, b in m.items()}
    return EvalResult(metrics, names, info)


# ---- in-memory sliding windows (patch datasets) -------------------------------------------
def predict_arrays(
    predictor: Any,
    arrays: Mapping[str, np.ndarray],
    valid: np.ndarray,
    meta: ModelMeta,
    *,
    tile: int,
    overlap: float = 0.25,
    blend: Blend = "gaussian",
    batch_size: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Class ids (H, W) uint8 (255 = nodata) and validity for one in-memory scene.

    The same steps as the predict spine: scene percentiles over valid pixels, the model's
    normalisation, overlapping windows (reflect-padded past the edges), blended merge.
    """
    from mfaf_cli.stitch.merger import StreamingMerger
    from mfaf_cli.stitch.weights import make_weight_fn
    from mfaf_cli.tiling.windows import batched, tile_windows

    h, w = valid.shape
    norm = _normalised(arrays, valid, meta)
    windows = tile_windows(h, w, tile, overlap)
    out = np.full((h, w), NODATA_LABEL, dtype=np.uint8)
    ok = np.zeros((h, w), dtype=bool)

    def sink(row0: int, probs: np.ndarray, v: np.ndarray) -> None:
        r = probs.shape[1]
        lab = probs.argmax(0).astype(np.uint8)
        lab[~v] = NODATA_LABEL
        out[row0 : row0 + r] = lab
        ok[row0 : row0 + r] = v

    merger = StreamingMerger(h, w, meta.num_classes, windows, make_weight_fn(windows, blend), sink)
    for group in batched(windows, batch_size):
        vs = [_cut(valid, win) for win in group]
        run = [i for i, v in enumerate(vs) if v.any()]
        for i, win in enumerate(group):
            if i not in run:
                merger.add_skipped(win)
        if not run:
            continue
        batch = {m: np.stack([_cut(norm[m], group[i]) for i in run]) for m in meta.modality_names}
        probs = predictor(batch)
        for j, i in enumerate(run):
            merger.add(group[i], probs[j], vs[i])
    merger.finish()
    return out, ok


def _normalised(
    arrays: Mapping[str, np.ndarray], valid: np.ndarray, meta: ModelMeta
) -> dict[str, np.ndarray]:
    """Each modality in the model's normalisation (scene percentiles over valid pixels)."""
    norm: dict[str, np.ndarray] = {}
    for spec in meta.modalities:
        a = arrays[spec.name]
        n = spec.normalisation
        lo, hi = band_percentiles(a, valid, n.p_low, n.p_high)
        norm[spec.name] = apply_normalisation(a, n, lo, hi)
    return norm


def _cut(a: np.ndarray, win: Any) -> np.ndarray:
    """``a``'s pixels under ``win``: reflect-padded past the edges (a 2-D mask pads False)."""
    from mfaf_cli.coreg.align import reflect_pad

    h, w = a.shape[-2:]
    c = win.clip(h, w)
    block = a[..., c.row_off : c.row_end, c.col_off : c.col_end]
    pads = (
        (c.row_off - win.row_off, win.row_end - c.row_end),
        (c.col_off - win.col_off, win.col_end - c.col_end),
    )
    if any(p for pair in pads for p in pair):
        if block.ndim == 2:
            return np.pad(block, pads, constant_values=False)
        return reflect_pad(block, pads)
    return block


# ---- a model on a dataset ------------------------------------------------------------------
def scene_confusion(predictor: Any, scene: Any, ds: Any, spec: Any) -> np.ndarray:
    """Confusion matrix of one georeferenced dataset scene, scored row band by row band by
    the inference core's :class:`~mfaf_cli.pipeline.sinks.ConfusionSink` (no map written)."""
    from mfaf_cli.pipeline.predict import run_on_scene
    from mfaf_cli.pipeline.sinks import ConfusionSink

    meta: ModelMeta = predictor.meta
    k = meta.num_classes

    def make_sink(grid: Any) -> ConfusionSink:
        return ConfusionSink(scene.label, grid, k, label_fn=ds.map_label,
                             ignore_index=ds.ignore_index)  # fmt: skip

    inputs = {m: os.fspath(scene.inputs[m]) for m in meta.modality_names}
    bands = {m: scene.bands[m] for m in meta.modality_names if scene.bands.get(m)}
    _, _, sink = run_on_scene(inputs, meta, predictor, make_sink, spec, bands=bands,
                              read_threads=spec.thread_split()[1])  # fmt: skip
    return sink.confusion


def evaluate_model(
    model: str | os.PathLike[str] | None,
    dataset: str,
    root: str | os.PathLike[str],
    split: str = "test",
    *,
    tile: int | None = None,
    overlap: float = 0.25,
    batch_size: int = 4,
    blend: Blend = "gaussian",
    device: str = "auto",
    engine: Engine = "auto",
    precision: Precision = "auto",
    threads: int | None = None,
    bands: Mapping[str, list[int | str]] | None = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    progress: bool = True,
    max_items: int | None = None,
) -> EvalResult:
    """Run the predict pipeline over a dataset split and score it with one confusion matrix.

    ``model`` is any ``--model`` spec (None = the shipped default for the dataset's
    modalities). The dataset must provide the model's modalities with the same band counts,
    and its class table must fit in the model's (else BandMismatchError / LabelError).
    """
    from mfaf_cli.pipeline.spec import InferenceSpec

    spec = InferenceSpec(tile, overlap, batch_size, blend, device, engine, precision, threads)
    opts: dict[str, Any] = {"seed": seed, "val_fraction": val_fraction, "augment": False}
    if bands:
        opts["bands"] = {k: list(v) for k, v in bands.items()}
    predictor, ds = _predictor_and_dataset(model, dataset, root, split, spec, opts)
    meta: ModelMeta = predictor.meta
    tile = int(tile or meta.tile_size)
    desc = f"evaluate {dataset}/{split}"
    scenes = ds.scenes()
    if scenes is not None:
        todo = scenes if max_items is None else scenes[:max_items]
        cm = _score_scenes(predictor, ds, todo, spec.with_tile(tile), desc, progress)
        n_items = len(todo)
    else:
        n_items = len(ds) if max_items is None else min(len(ds), max_items)
        cm = _score_patches(predictor, ds, n_items, spec.with_tile(tile), desc, progress)
    metrics = metrics_from_confusion(cm, meta.class_names)
    info = {
        "mode": "dataset",
        "model": meta.arch if model is None else str(model),
        "arch": meta.arch,
        "trained": bool(meta.trained),
        "dataset": dataset,
        "data_root": str(root),
        "split": split,
        "items": n_items,
        "scenes" if scenes is not None else "patches": n_items,
        "tile": tile,
        "overlap": overlap,
        "blend": blend,
        "device": getattr(predictor, "device", device),
    }
    if ds.skipped:  # items the reader left out, by reason (also logged as warnings)
        info["skipped"] = dict(ds.skipped)
    if not math.isfinite(metrics["miou"]):
        info["note"] = "no labelled pixel was evaluated"
    return EvalResult(metrics, meta.class_names, info)


def _predictor_and_dataset(
    model: str | os.PathLike[str] | None,
    dataset: str,
    root: str | os.PathLike[str],
    split: str,
    spec: InferenceSpec,
    opts: dict[str, Any],
) -> tuple[Any, Any]:
    """The predictor for the dataset's modalities, and the split opened for its modalities;
    the data must give the model's band counts and fit in its class table."""
    from mfaf_cli.data.datasets import open_dataset
    from mfaf_cli.data.registry import BAND_SELECTABLE
    from mfaf_cli.engine import create_predictor

    probe = open_dataset(dataset, root, split, **opts)
    predictor = create_predictor(
        None if model is None else os.fspath(model) if not isinstance(model, str) else model,
        engine=spec.engine,
        device=spec.device,
        precision=spec.precision,
        modalities=probe.modalities,
        batch_size=spec.batch_size,
        tile=spec.tile,
        threads=spec.thread_split(on_gpu=str(spec.device).startswith("cuda"))[0],
    )
    meta: ModelMeta = predictor.meta
    if not opts.get("bands") and dataset in BAND_SELECTABLE:  # the model's bands, by name
        from mfaf_cli.data.bands import bands_for_model

        picked = bands_for_model(meta.modalities, probe.all_bands, probe.name == "folder")
        opts = {**opts, "bands": picked or None}
    ds = open_dataset(dataset, root, split, modalities=meta.modality_names, **opts)
    if ds.in_channels != meta.in_channels:
        raise BandMismatchError(
            f"the {dataset} data gives bands {ds.in_channels} but the model takes "
            f"{meta.in_channels}; select bands with --bands (e.g. optical=4,3,2)"
        )
    if ds.num_classes > meta.num_classes:
        raise LabelError(
            f"the {dataset} labels have {ds.num_classes} classes "
            f"({', '.join(c.name for c in ds.classes)}) "
            f"but the model predicts {meta.num_classes} ({', '.join(meta.class_names)})"
        )
    return predictor, ds


def _score_scenes(
    predictor: Any, ds: Any, scenes: Sequence[Any], spec: InferenceSpec, desc: str, progress: bool
) -> np.ndarray:
    """Confusion matrix over whole scenes, each through the streaming inference core."""
    from tqdm import tqdm

    k = predictor.meta.num_classes
    cm = np.zeros((k, k), dtype=np.int64)
    for sc in tqdm(scenes, desc=desc, file=sys.stderr, disable=not progress):
        cm += scene_confusion(predictor, sc, ds, spec)
    return cm


def _score_patches(
    predictor: Any, ds: Any, n: int, spec: InferenceSpec, desc: str, progress: bool
) -> np.ndarray:
    """Confusion matrix over the first ``n`` in-memory patches (invalid where not finite)."""
    from tqdm import tqdm

    meta = predictor.meta
    k = meta.num_classes
    cm = np.zeros((k, k), dtype=np.int64)
    for i in tqdm(range(n), desc=desc, file=sys.stderr, disable=not progress):
        arrays, mask, _ = ds.raw(i, None)
        valid = np.ones(mask.shape, dtype=bool)
        for a in arrays.values():
            valid &= np.isfinite(a).all(axis=0)
        pred, ok = predict_arrays(
            predictor,
            arrays,
            valid,
            meta,
            tile=spec.tile or meta.tile_size,
            overlap=spec.overlap,
            blend=spec.blend,
            batch_size=spec.batch_size,
        )
        pred = pred.astype(np.int64)
        pred[~ok] = ds.ignore_index
        cm += confusion_matrix(pred, mask, k, ds.ignore_index)
    return cm

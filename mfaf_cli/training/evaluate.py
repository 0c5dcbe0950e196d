"""Evaluation: a model on a dataset split, or a predicted map against a truth raster.

Both accumulate one confusion matrix and report
:func:`~mfaf_cli.scores.metrics.metrics_from_confusion`.
Georeferenced scenes (Sen1Floods11, WHU-OPT-SAR, folder scenes) go through the inference core
that predict uses (co-registration, sliding windows, blending), whose confusion-matrix sink
scores the rows as they are blended, exactly like ``mfaf evaluate PRED.tif --truth LABEL.tif``
scores a written map (no temporary map); PNG patches (OMBRIA) run the same
normalise → predictor → blend steps in memory.
"""

from __future__ import annotations

import functools
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
from mfaf_cli.scores.calibration import count_length
from mfaf_cli.scores.metrics import confusion_matrix, metrics_from_confusion, to_jsonable
from mfaf_cli.scores.stats import block_grid, block_ids
from mfaf_cli.training.scoring import DEFAULT_BLOCK, Units, summarise
from mfaf_cli.types import Blend

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
    #: per-unit counts (scenes, patches or spatial blocks) behind ``report``
    units: Units | None = None
    #: intervals, per-scene scores and calibration (:func:`~mfaf_cli.training.scoring.summarise`)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def confusion(self) -> np.ndarray:
        return np.asarray(self.metrics["confusion_matrix"], dtype=np.int64)

    def to_json(self) -> str:
        return json.dumps(to_jsonable({**self.info, "metrics": self.metrics, **self.report}))


def _result(units: Units, names: list[str], info: dict[str, Any], seed: int = 0) -> EvalResult:
    """Overall metrics from the units' summed counts, plus intervals / per-scene / calibration."""
    metrics = metrics_from_confusion(units.confusion.sum(axis=0), names)
    return EvalResult(metrics, names, info, units, summarise(units, names, seed=seed))


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
    keep: Callable[[Any], np.ndarray] | None = None,
) -> np.ndarray:
    """Confusion matrix of a label GeoTIFF against a truth raster co-registered onto its grid.

    Truth is resampled nearest onto the prediction's grid, block by block. Ignored: prediction
    nodata (255), truth nodata / outside its footprint / −1, values mapped to 255. ``label_fn``
    (a dataset's label mapping: raw values → class ids with ignore) replaces ``mapping``.
    ``keep(window)``: pixels of a block to score (the rest ignored), e.g. not excluded.
    """
    blocks, _ = raster_block_confusion(pred_path, truth_path, num_classes, mapping=mapping,
                                       label_fn=label_fn, ignore_index=ignore_index,
                                       keep=keep)  # fmt: skip
    return blocks.sum(axis=0)


def raster_block_confusion(
    pred_path: str | os.PathLike[str],
    truth_path: str | os.PathLike[str],
    num_classes: int,
    *,
    mapping: dict[int, int] | None = None,
    label_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    ignore_index: int = NODATA_LABEL,
    block: int | None = None,
    keep: Callable[[Any], np.ndarray] | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`raster_confusion` per ``block``-pixel spatial block of the prediction's grid:
    (blocks, K, K) row-major and the block grid's (rows, columns); one block when None."""
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window as RioWindow

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
        bsize = int(block or max(pds.height, pds.width))
        shape = block_grid(pds.height, pds.width, bsize)
        cm = np.zeros((shape[0] * shape[1], num_classes, num_classes), dtype=np.int64)
        for r0 in range(0, pds.height, BLOCK_ROWS):
            h = min(BLOCK_ROWS, pds.height - r0)
            win = RioWindow(0, r0, pds.width, h)
            pred = _pred_block(pds, win, pnd, ignore_index, Path(pred_path).name)
            if keep is not None:
                pred[~keep(win)] = ignore_index
            if same:
                t = tds.read(1, window=win).astype(np.float64)
                if tds.nodata is not None:
                    t[t == tds.nodata] = np.nan
            else:
                # not pds.window_transform: rasterio multiplies affines with `*` there, which
                # affine 3 deprecates (PendingDeprecationWarning)
                t = truth_on_grid(tds, pds.crs, pds.transform @ Affine.translation(0, r0),
                                  (h, pds.width))  # fmt: skip
            truth = truth_labels(t, label_fn, mapping, ignore_index)
            ids = block_ids(r0, 0, h, pds.width, bsize, shape[1])
            try:
                cm += confusion_matrix(pred, truth, num_classes, ignore_index, groups=ids,
                                       n_groups=len(cm))  # fmt: skip
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
    return cm, shape


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
    block: int = DEFAULT_BLOCK,
    exclusion: str | os.PathLike[str] | None = None,
) -> EvalResult:
    """Score a predicted label GeoTIFF against a truth raster (see :func:`raster_confusion`),
    with intervals from a bootstrap over ``block``-pixel spatial blocks of the scene; with
    ``exclusion`` (the mask predict wrote) also without the excluded pixels.

    Classes come from the prediction's tags (written by ``mfaf predict``), else
    ``class_names`` / ``num_classes``, else the largest value found in either raster.
    """
    names, m = raster_classes(pred, truth, mapping, num_classes, class_names)
    blocks, shape = raster_block_confusion(pred, truth, len(names), mapping=m, block=block)
    _check_scored(int(blocks.sum()), pred, truth)
    info: dict[str, Any] = {"mode": "rasters", "prediction": str(pred), "truth": str(truth),
                            "block": block, "blocks": list(shape)}  # fmt: skip
    if m:
        info["mapping"] = {str(a): b for a, b in m.items()}
    keep = blocks.reshape(len(blocks), -1).sum(axis=1) > 0  # blocks with a scored pixel
    ids = [f"r{i // shape[1]}c{i % shape[1]}" for i in range(len(blocks))]
    units = Units("block", [n for n, k in zip(ids, keep, strict=True) if k], blocks[keep])
    if exclusion is not None:
        kept = raster_confusion(pred, truth, len(names), mapping=m,
                                keep=_kept_by_mask(pred, exclusion))  # fmt: skip
        info["without_excluded"] = without_excluded(blocks.sum(axis=0), kept, names)
    return _result(units, names, info)


def _check_scored(n: int, pred: Any, truth: Any) -> None:
    if n == 0:
        raise InputError(
            f"no pixel of {Path(pred).name} has both a predicted class and a truth label in "
            f"{Path(truth).name} (all nodata or ignored where they overlap); nothing to score"
        )


def raster_classes(
    pred: str | os.PathLike[str],
    truth: str | os.PathLike[str],
    mapping: str | Mapping[Any, Any] | None,
    num_classes: int | None,
    class_names: list[str] | None,
) -> tuple[list[str], dict[int, int] | None]:
    """The class names a prediction is scored with, and the parsed truth mapping."""
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
    return names, m


def _kept_by_mask(pred: str | os.PathLike[str], mask: str | os.PathLike[str]) -> Any:
    """``keep(window)`` of an exclusion mask written with the prediction (code 0 = kept)."""
    from mfaf_cli.io.inputs import open_raster

    with open_raster(pred, "prediction", require_crs=False) as p, open_raster(
        mask, "exclusion mask", require_crs=False
    ) as x:  # fmt: skip
        if x.shape != p.shape or x.transform != p.transform or x.crs != p.crs:
            raise InputError(
                f"exclusion mask {Path(mask).name} is not on the grid of {Path(pred).name}; "
                "give the --exclusion file written by the same predict run"
            )

    def keep(win: Any) -> np.ndarray:
        import rasterio

        with rasterio.open(mask) as ds:
            return np.asarray(ds.read(1, window=win) == 0)

    return keep


def without_excluded(cm: np.ndarray, kept: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Scores on the pixels the exclusion check kept, and the share of scored pixels it took
    out (``cm``: all scored pixels; ``kept``: those not excluded)."""
    n = int(cm.sum())
    return {
        "excluded_of_scored": round(1 - int(kept.sum()) / n, 6) if n else 0.0,
        "metrics": metrics_from_confusion(kept, names),
    }


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
    probs_out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class ids (H, W) uint8 (255 = nodata) and validity for one in-memory scene; the
    blended probabilities go to ``probs_out`` (K, H, W) when given.

    The same steps as the predict spine: scene percentiles over valid pixels, the model's
    normalisation, overlapping windows (reflect-padded past the edges), blended merge.
    """
    from mfaf_cli.stitch.merger import StreamingMerger
    from mfaf_cli.tiling.blend import make_weight_fn
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
        if probs_out is not None:
            probs_out[:, row0 : row0 + r] = probs

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
def scene_confusion(
    predictor: Any, scene: Any, ds: Any, spec: Any, checks: Any = None
) -> np.ndarray:
    """Confusion matrix of one georeferenced dataset scene, scored row band by row band by
    the inference core's :class:`~mfaf_cli.pipeline.sinks.ConfusionSink` (no map written).
    With ``checks`` (:class:`~mfaf_cli.applicability.Checks`): ``(2, K, K)``, all scored
    pixels and those the exclusion check kept."""
    sink = scene_sink(predictor, scene, ds, spec, checks=checks)
    return sink.confusion if checks is None else np.stack([sink.confusion, sink.kept])


def scene_sink(
    predictor: Any, scene: Any, ds: Any, spec: Any, block: int | None = None, checks: Any = None
) -> Any:
    """The :class:`~mfaf_cli.pipeline.sinks.ConfusionSink` that scored one scene: confusion
    and calibration counts per ``block``-pixel block (one block when None); with ``checks``
    also the confusion of the pixels the exclusion check kept (``sink.kept``)."""
    from mfaf_cli.pipeline.exclusion import Excluder, with_excluder
    from mfaf_cli.pipeline.predict import run_on_scene
    from mfaf_cli.pipeline.read_spec import ReadSpec
    from mfaf_cli.pipeline.sinks import ConfusionSink

    meta: ModelMeta = predictor.meta
    k = meta.num_classes
    inputs = {m: os.fspath(scene.inputs[m]) for m in meta.modality_names}
    bands = {m: scene.bands[m] for m in meta.modality_names if scene.bands.get(m)}
    label_fn = ds.map_label  # the scene's own ignore_value (a scene list column), as in training
    if scene.ignore is not None:
        label_fn = functools.partial(ds.map_label, ignore=scene.ignore)

    def make_sink(grid: Any) -> Any:
        ex = None if checks is None else Excluder(inputs, grid, meta, checks, bands=bands)
        return with_excluder(ex, lambda e: ConfusionSink(
            scene.label, grid, k, label_fn=label_fn, ignore_index=ds.ignore_index,
            block=block, calibration=True, excluder=e))  # fmt: skip

    read = ReadSpec(inputs=inputs, bands=bands)
    _, _, sink = run_on_scene(inputs, meta, predictor, make_sink, spec, read,
                              read_threads=spec.thread_split()[1])  # fmt: skip
    return sink


def evaluate_model(
    model: str | os.PathLike[str] | None,
    dataset: str,
    root: str | os.PathLike[str],
    split: str = "test",
    *,
    spec: InferenceSpec | None = None,
    bands: Mapping[str, list[int | str]] | None = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    progress: bool = True,
    max_items: int | None = None,
    block: int = DEFAULT_BLOCK,
    mask_excluded: bool = False,
) -> EvalResult:
    """Run the predict pipeline over a dataset split and score it: overall, per scene (or
    patch) with a bootstrap over them (over ``block``-pixel blocks for a one-scene split),
    and calibration (ECE, Brier, NLL) from the blended probabilities; ``mask_excluded`` also
    scores it without the pixels the model's exclusion check flags.

    ``model`` is any ``--model`` spec (None = the shipped default for the dataset's
    modalities); ``spec`` how to infer (:class:`~mfaf_cli.pipeline.spec.InferenceSpec`,
    default: the model's tile and the defaults). The dataset must provide the model's
    modalities with the same band counts, and its class table must fit in the model's (else
    BandMismatchError / LabelError).
    """
    from mfaf_cli.pipeline.spec import InferenceSpec

    spec = spec or InferenceSpec()
    opts: dict[str, Any] = {"seed": seed, "val_fraction": val_fraction, "augment": False}
    if bands:
        opts["bands"] = {k: list(v) for k, v in bands.items()}
    predictor, ds = _predictor_and_dataset(model, dataset, root, split, spec, opts)
    meta: ModelMeta = predictor.meta
    tile = int(spec.tile or meta.tile_size)
    desc = f"evaluate {dataset}/{split}"
    scenes = ds.scenes()
    checks = _checks(meta, model, mask_excluded)
    if scenes is not None:
        todo = scenes if max_items is None else scenes[:max_items]
        units, kept = _score_scenes(
            predictor, ds, todo, spec.with_tile(tile), desc, progress, block, checks
        )
        n_items = len(todo)
    else:
        n_items = len(ds) if max_items is None else min(len(ds), max_items)
        units, kept = _score_patches(
            predictor, ds, n_items, spec.with_tile(tile), desc, progress, checks
        )
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
        "overlap": spec.overlap,
        "blend": spec.blend,
        "device": getattr(predictor, "device", spec.device),
        "temperature": float(meta.temperature),
    }
    if ds.skipped:  # items the reader left out, by reason (also logged as warnings)
        info["skipped"] = dict(ds.skipped)
    if kept is not None:
        info["without_excluded"] = without_excluded(
            units.confusion.sum(axis=0), kept, meta.class_names
        )
    result = _result(units, meta.class_names, info, seed)
    if not math.isfinite(result.metrics["miou"]):
        info["note"] = "no labelled pixel was evaluated"
    return result


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
        # a named model may take part of the dataset's modalities (a SAR-only fallback)
        modalities=probe.modalities if model is None else None,
        batch_size=spec.batch_size,
        tile=spec.tile,
        threads=spec.thread_split(on_gpu=str(spec.device).startswith("cuda"))[0],
    )
    meta: ModelMeta = predictor.meta
    if not set(meta.modality_names) <= set(probe.modalities):
        from mfaf_cli.errors import ModalityError

        raise ModalityError(
            f"model {meta.arch} takes {' + '.join(meta.modality_names)}, but the {dataset} "
            f"data gives {' + '.join(probe.modalities)}"
        )
    if dataset == "folder" and any(c.code is not None for c in meta.classes):
        opts = opts | {"classes": meta.classes}  # labels in product codes: the model's table
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


def _checks(meta: ModelMeta, model: Any, wanted: bool) -> Any:
    """The model's exclusion checks when asked for (an error when it has none)."""
    if not wanted:
        return None
    from mfaf_cli.pipeline.exclusion import checks_for

    return checks_for(meta, str(model or meta.arch), wanted=True)


def _score_scenes(
    predictor: Any,
    ds: Any,
    scenes: Sequence[Any],
    spec: InferenceSpec,
    desc: str,
    progress: bool,
    block: int,
    checks: Any = None,
) -> tuple[Units, np.ndarray | None]:
    """Counts per scene, each through the streaming inference core; one scene alone is cut
    into ``block``-pixel spatial blocks (the bootstrap's units then). With ``checks`` also
    the confusion of the pixels the exclusion check kept, over all scenes."""
    from tqdm import tqdm

    k = predictor.meta.num_classes
    kept = None if checks is None else np.zeros((k, k), np.int64)
    one = len(scenes) == 1
    cms, cals, names = [], [], []
    for sc in tqdm(scenes, desc=desc, file=sys.stderr, disable=not progress):
        sink = scene_sink(predictor, sc, ds, spec, block if one else None, checks)
        if kept is not None:
            kept += sink.kept
        if one:
            keep = sink.block_confusion.reshape(len(sink.block_confusion), -1).sum(1) > 0
            nc = sink.block_shape[1]
            names = [f"{sc.id}/r{i // nc}c{i % nc}" for i in np.flatnonzero(keep)]
            units = Units("block", names, sink.block_confusion[keep], sink.block_calibration[keep])
            return units, kept
        cms.append(sink.confusion)
        cals.append(sink.block_calibration.sum(axis=0))
        names.append(str(sc.id))
    return Units("scene", names, np.stack(cms) if cms else np.zeros((0, k, k), np.int64),
                 np.stack(cals) if cals else np.zeros((0, count_length()), np.float64)
                 ), kept  # fmt: skip


def _item_name(ds: Any, i: int) -> str:
    """A patch's name for the per-scene table (its dataset item, else its index)."""
    items = getattr(ds, "items", None)
    if isinstance(items, Sequence) and len(items) == len(ds):
        it = items[i]
        return "/".join(map(str, it)) if isinstance(it, tuple) else str(it)
    return f"item-{i}"


def _score_patches(
    predictor: Any, ds: Any, n: int, spec: InferenceSpec, desc: str, progress: bool,
    checks: Any = None,
) -> tuple[Units, np.ndarray | None]:  # fmt: skip
    """Counts per patch over the first ``n`` in-memory patches (invalid where not finite);
    with ``checks`` also the confusion of the pixels the exclusion check kept."""
    from tqdm import tqdm

    from mfaf_cli.scores.calibration import calibration_counts

    meta = predictor.meta
    k = meta.num_classes
    cms, cals = [], []
    kept = None if checks is None else np.zeros((k, k), np.int64)
    for i in tqdm(range(n), desc=desc, file=sys.stderr, disable=not progress):
        arrays, mask, _ = ds.raw(i, None)
        valid = np.ones(mask.shape, dtype=bool)
        for a in arrays.values():
            valid &= np.isfinite(a).all(axis=0)
        probs = np.zeros((k, *mask.shape), dtype=np.float32)
        pred, ok = predict_arrays(
            predictor,
            arrays,
            valid,
            meta,
            tile=spec.tile or meta.tile_size,
            overlap=spec.overlap,
            blend=spec.blend,
            batch_size=spec.batch_size,
            probs_out=probs,
        )
        pred = pred.astype(np.int64)
        pred[~ok] = ds.ignore_index
        cms.append(confusion_matrix(pred, mask, k, ds.ignore_index))
        keep = ok & (mask != ds.ignore_index)
        cals.append(calibration_counts(probs, np.where(keep, mask, 0), keep))
        if kept is not None:
            pred[checks.codes(arrays, ok) != 0] = ds.ignore_index
            kept += confusion_matrix(pred, mask, k, ds.ignore_index)
    names = [_item_name(ds, i) for i in range(n)]
    return Units("patch", names, np.asarray(cms, np.int64).reshape(n, k, k),
                 np.asarray(cals, np.float64).reshape(n, count_length())), kept  # fmt: skip


# ---- a batch of maps, and paired comparisons ------------------------------------------------
def read_pairs(
    csv_path: str | os.PathLike[str], columns: Sequence[str] = ("prediction",)
) -> list[dict[str, str]]:
    """Rows of a ``prediction,truth[,scene]`` CSV (paths relative to the CSV's folder);
    ``columns``: the map columns to read (two for a comparison, e.g. ``unet,mfafnet``)."""
    import csv

    from mfaf_cli.errors import UsageError
    from mfaf_cli.io.inputs import check_readable

    path = Path(csv_path)
    check_readable(path, "pairs CSV")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    need = {*columns, "truth"}
    if not rows or not need <= set(rows[0]):
        raise UsageError(
            f"{path}: needs a header with {','.join(sorted(need))} columns (and scene)"
        )
    out = []
    for n, r in enumerate(rows, start=2):
        if any(not (r.get(c) or "").strip() for c in need):
            raise UsageError(f"{path} line {n}: {' and '.join(sorted(need))} are all required")
        pair = {c: str(path.parent / r[c].strip()) for c in need}
        pair["scene"] = (r.get("scene") or "").strip() or Path(r[columns[0]]).stem
        out.append(pair)
    names = [p["scene"] for p in out]
    if len(set(names)) != len(names):
        raise UsageError(f"{path}: scene names repeat; give each row its own scene name")
    return out


def evaluate_batch(
    csv_path: str | os.PathLike[str],
    *,
    mapping: str | Mapping[Any, Any] | None = None,
    num_classes: int | None = None,
    column: str = "prediction",
) -> EvalResult:
    """Score every ``prediction`` map of a pairs CSV against its ``truth``: overall (the sum),
    per scene, and intervals from a bootstrap over the scenes."""
    pairs = read_pairs(csv_path, (column,))
    first = pairs[0]
    names, m = raster_classes(first[column], first["truth"], mapping, num_classes, None)
    cms = []
    for p in pairs:
        cm = raster_confusion(p[column], p["truth"], len(names), mapping=m)
        cms.append(cm)
    total = np.stack(cms)
    _check_scored(int(total.sum()), first[column], first["truth"])
    info: dict[str, Any] = {"mode": "batch", "pairs": str(csv_path), "column": column,
                            "scenes": len(pairs)}  # fmt: skip
    units = Units("scene", [p["scene"] for p in pairs], total)
    return _result(units, names, info)


def compare_results(a: EvalResult, b: EvalResult, label_a: str, label_b: str) -> dict[str, Any]:
    """The paired difference A − B of two evaluations of the same data."""
    from mfaf_cli.training.scoring import compare

    assert a.units is not None and b.units is not None
    if a.class_names != b.class_names:
        raise LabelError(
            f"the two are scored with different classes ({', '.join(a.class_names)} vs "
            f"{', '.join(b.class_names)}); a comparison needs one class table"
        )
    out = compare(a.units, b.units, a.class_names)
    return {"mode": "compare", "a": label_a, "b": label_b, **out,
            "overall": {"a": a.metrics, "b": b.metrics}}  # fmt: skip

"""The predict spine: co-registered windows → model → streamed blend → georeferenced outputs.

One pass over the scene in raster order through the inference core
(:mod:`mfaf_cli.pipeline.core`): reader threads read and warp row chunks ahead of the model,
windows with no valid pixel never reach the model, and a merge thread blends overlapping
windows in probability space and hands finished rows straight to the writers, so memory
depends on the scene *width*, never its height. All outputs go to temp files that are
renamed into place only when everything succeeded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mfaf_cli.coreg.align import AlignedScene
from mfaf_cli.coreg.grid import Grid, grid_from_reference
from mfaf_cli.errors import InputError, ModalityError, OutputPathError, UsageError
from mfaf_cli.io.inputs import check_readable
from mfaf_cli.io.remote import shown_path
from mfaf_cli.malloc import limit_malloc_growth as limit_malloc_growth
from mfaf_cli.metadata import ALL_MODALITIES, ModelMeta
from mfaf_cli.pipeline import core
from mfaf_cli.pipeline.aoi import aoi_grid, aoi_scene
from mfaf_cli.pipeline.core import (  # noqa: F401 (PreparedBatch, ...: re-exported)
    PreparedBatch,
    prepare_batch,
    read_grid,
    run_scene,
    scene_plan,
)
from mfaf_cli.pipeline.planes import ReadTaps, tapped
from mfaf_cli.pipeline.provenance import provenance_tags
from mfaf_cli.pipeline.read_spec import ReadSpec, expanded
from mfaf_cli.pipeline.spec import InferenceSpec
from mfaf_cli.pipeline.write_spec import WriteSpec, check_vector_path  # noqa: F401 (re-export)
from mfaf_cli.tiling.windows import Window, check_tile
from mfaf_cli.types import Blend

if TYPE_CHECKING:
    from mfaf_cli.applicability import Checks
    from mfaf_cli.models.resolve import ModelSource
    from mfaf_cli.pipeline.exclusion import Excluder, StoredExcluder
    from mfaf_cli.pipeline.fallback import SourceCodes

log = logging.getLogger("mfaf")

PathLike = str | os.PathLike[str]
BandSpec = Mapping[str, Sequence[int | str] | None]


@dataclass
class PredictResult:
    """What a predict run did, for ``--json`` and for callers (batch mode, benchmarks)."""

    inputs: dict[str, str]
    grid: dict[str, Any]
    windows: int
    skipped_windows: int
    seconds: float
    megapixels_per_second: float
    outputs: dict[str, str]
    model: str
    arch: str
    trained: bool
    device: str
    engine: str  # the engine and precision that ran (auto resolved)
    precision: str
    tile: int
    overlap: float
    blend: Blend
    valid_fraction: float
    class_fractions: dict[str, float] = field(default_factory=dict)
    model_seconds: float = 0.0
    #: modality -> which bands were read and how they were chosen (BandChoice.to_dict()).
    bands: dict[str, Any] = field(default_factory=dict)
    #: how the outputs were made (pipeline/provenance.py), also the label map's tag
    provenance: dict[str, Any] = field(default_factory=dict)
    #: excluded fraction of valid pixels per reason (mfaf_cli/applicability.py); None when the
    #: model records no training range and no rules.
    exclusion: dict[str, Any] | None = None
    #: CPU seconds of the pass by stage (engine / read / merge / total) and the thread split
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    threads: dict[str, int] = field(default_factory=dict)
    #: scene-percentile records: how the statistics were sampled and the pre-pass's seconds
    statistics: dict[str, Any] = field(default_factory=dict)
    #: fraction of the grid's pixels per source (fusion, sar-only, optical-only, none) when
    #: the run had fallbacks or an optical mask (pipeline/fallback.py); windows each fallback ran
    sources: dict[str, float] = field(default_factory=dict)
    fallback_windows: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# ---- small helpers ------------------------------------------------------------------------
def check_modalities(given: Sequence[str], meta: ModelMeta, model_name: str) -> None:
    """The inputs must be exactly the modalities the model takes."""
    unknown = [m for m in given if m not in ALL_MODALITIES]
    if unknown:
        raise ModalityError(
            f"unknown modality {', '.join(unknown)}; use {', '.join(ALL_MODALITIES)}"
        )
    want = meta.modality_names
    extra = [m for m in given if m not in want]
    missing = [m for m in want if m not in given]
    if extra:
        raise ModalityError(
            f"model {model_name} does not take {' or '.join(extra)} (it takes "
            f"{' + '.join(want)}); drop --{extra[0]} or choose another --model"
        )
    if missing:
        raise ModalityError(f"model {model_name} needs {' + '.join(want)}; add --{missing[0]} PATH")


def on_gpu(predictor: Any) -> bool:
    """Whether ``predictor`` runs on a GPU (then the CPU cores are left to the readers)."""
    return str(getattr(predictor, "device", "cpu")).startswith("cuda")


def reader_bound(predictor: Any) -> bool:
    """Whether reading, not the network, bounds this predictor's runs (it says so with a
    true ``reader_bound``, as the benchmarks' null engine does): then cores go to readers."""
    return bool(getattr(predictor, "reader_bound", False))


def load_predictor(
    model: Any,
    modalities: Sequence[str],
    *,
    in_channels: Mapping[str, int] | None,
    spec: InferenceSpec,
) -> tuple[Any, ModelSource]:
    """Resolve ``--model`` for these input modalities, check that it takes exactly them, and
    load it: ``(predictor, ModelSource)``. One place for predict and batch mode, so both
    refuse the same models with the same words."""
    from mfaf_cli.engine import create_predictor
    from mfaf_cli.models.resolve import ModelSource, resolve_model

    modalities = tuple(modalities)
    if isinstance(model, ModelSource):
        source = model
    else:
        in_ch = dict(in_channels) if in_channels else None
        source = resolve_model(model, modalities, in_channels=in_ch)
    check_modalities(modalities, source.meta, source.name)
    check_tile(int(spec.tile or source.meta.tile_size), source.meta.divisor, source.meta.arch)
    gpu = str(spec.device).startswith("cuda")
    predictor = create_predictor(
        source,
        engine=spec.engine,
        device=spec.device,
        precision=spec.precision,
        modalities=modalities,
        batch_size=spec.batch_size,
        tile=spec.tile or source.meta.tile_size,
        threads=spec.thread_split(on_gpu=gpu)[0],
    )
    with contextlib.suppress(AttributeError):  # read-only predictors: tags then say less
        # for the output tags (weights name, sha256); not part of the Predictor protocol
        predictor.source = source  # type: ignore[attr-defined]
    return predictor, source


def model_tags(source: ModelSource | None, name: str) -> dict[str, str]:
    """WEIGHTS / WEIGHTS_SHA256 tags of the label map (sha256 of the whole file: the
    manifest's for shipped weights, else computed, streamed)."""
    from mfaf_cli.io.raster import weights_tags
    from mfaf_cli.io.weights import file_sha256

    sha = None
    if source is not None:
        sha = source.sha256 or (file_sha256(source.path) if source.path else None)
    return weights_tags(name, sha)


def class_fractions(outputs: Any, meta: ModelMeta) -> tuple[float, dict[str, float]]:
    """(valid fraction of the grid, fraction of valid pixels per class name) of a finished run."""
    counts, n_valid = outputs.class_counts, int(outputs.class_counts.sum())
    fr = {c.name: float(counts[k]) / n_valid if n_valid else 0.0
          for k, c in enumerate(meta.classes)}  # fmt: skip
    return (n_valid / outputs.pixels if outputs.pixels else 0.0), fr


def run_on_scene(
    inputs: Mapping[str, PathLike],
    meta: ModelMeta,
    predictor: Any,
    make_sink: Any,
    spec: InferenceSpec,
    read: ReadSpec | None = None,
    *,
    progress: bool = False,
    read_threads: int = 1,
    before_commit: Any = None,
    aoi: Any = None,
    taps: ReadTaps | None = None,
) -> tuple[Grid, Any, Any]:
    """One pass of the inference core over one scene: ``(grid, RunStats, sink)``.

    ``inputs`` are in the model's modality order (the plain files of ``read``, which gives
    their bands, SAR units and grid overrides); ``make_sink(grid)`` makes the sink (a
    context manager, entered for the pass); ``before_commit(sink)`` runs inside it after the
    last row, so an error there still discards the sink's output. predict, batch mode and
    evaluate all come through here. ``aoi`` (:class:`~mfaf_cli.io.aoi.Aoi`, read from
    ``read.aoi``): the run covers the polygon's bounds and only its pixels are valid (see
    :mod:`mfaf_cli.pipeline.aoi`). ``taps``: planes the sink takes from the run's reads
    (:mod:`mfaf_cli.pipeline.planes`).
    """
    assert spec.tile is not None
    read = read or ReadSpec()
    taps = taps or ReadTaps()
    bands, sar_units = read.band_lists(), read.sar_units
    ref_path = os.fspath(inputs[meta.reference_modality])
    if aoi is None:
        grid = grid_from_reference(ref_path, **read.grid_options())
    else:
        grid, polygon = aoi_grid(ref_path, aoi, **read.grid_options())
    plan = scene_plan(ref_path, grid, spec.tile, spec.overlap)
    with (
        AlignedScene(inputs, read_grid(grid, plan), bands=bands, units=sar_units, meta=meta)
        as scene,
        _bounded_gdal_cache(
            scene, spec.tile,
            spans=core.panel_read_spans(plan, scene.grid.width, core.panel_width(predictor)),
        ),
        _fallback_scene(predictor, tapped(scene, taps.raw, plan.read_offset)) as mapped,
    ):  # fmt: skip
        base = tapped(mapped, taps.mapped, plan.read_offset)
        # --aoi: pixels outside the polygon invalid; blocks no window touching it needs unread
        reader: Any = base if aoi is None else aoi_scene(base, polygon, plan)
        for m, c in scene.band_choices.items():
            log.info("%s bands: %s", m, c.summary())
        t_stats = time.perf_counter()
        percentiles, sampling = _extent_percentiles(
            scene, inputs, grid, plan, meta, bands, sar_units
        )
        if sampling:
            sampling = dict(sampling, seconds=round(time.perf_counter() - t_stats, 3))
        with make_sink(grid) as sink:
            stats = run_scene(
                reader, plan, meta, predictor, percentiles, sink, batch_size=spec.batch_size,
                blend=spec.blend, read_threads=read_threads, progress=progress,
            )  # fmt: skip
            if before_commit is not None:
                before_commit(sink)
    stats = replace(stats, bands={m: c.to_dict() for m, c in scene.band_choices.items()},
                    statistics=sampling)  # fmt: skip
    return grid, stats, sink


@contextlib.contextmanager
def _fallback_scene(predictor: Any, scene: Any) -> Iterator[Any]:
    """The scene as the predictor reads it: with source codes and the optical mask for a
    :class:`~mfaf_cli.pipeline.fallback.FallbackPredictor`, else as it is."""
    wrap = getattr(predictor, "wrap", None)
    if wrap is None:
        yield scene
        return
    wrapped = wrap(scene)
    try:
        yield wrapped
    finally:
        wrapped.close()


def with_fallbacks(
    predictor: Any,
    source: ModelSource | None,
    spec: InferenceSpec,
    mask: Any = None,
    fallbacks: Mapping[str, Any] | None = None,
) -> Any:
    """``predictor`` with its per-pixel fallbacks (``fallbacks``: missing modality -> model
    spec, or ``self``: the model itself with that modality missing; None: those the model's
    record names) and the optical mask, or as it is when there are neither (see
    :mod:`mfaf_cli.pipeline.fallback`)."""
    from mfaf_cli.pipeline.fallback import SELF, FallbackPredictor

    meta: ModelMeta = predictor.meta
    if fallbacks is None:
        fallbacks = dict((source.meta if source is not None else meta).fallbacks)
    if not fallbacks and mask is None:
        return predictor
    loaded: dict[str, Any] = {}
    spec = spec.with_tile(int(spec.tile or meta.tile_size))  # the main model's windows
    for missing, model in fallbacks.items():
        rest = tuple(m for m in meta.modality_names if m != missing)
        if missing not in meta.modality_names or not rest:
            raise UsageError(
                f"fallback {model} is for a missing {missing}; the model takes "
                f"{', '.join(meta.modality_names)}"
            )
        if model == SELF:  # a fusion model trained with --modality-dropout maps them itself
            loaded[missing] = None
            continue
        in_ch = {m: meta.modality(m).n_bands for m in rest}
        fb, fb_source = load_predictor(model, rest, in_channels=in_ch, spec=spec)
        if fb_source.untrained:
            raise UsageError(f"fallback {model} has no trained weights; name a trained model")
        with contextlib.suppress(AttributeError):
            fb.name = fb_source.name
        loaded[missing] = fb
    return FallbackPredictor(predictor, loaded, mask)


def _extent_percentiles(
    scene: AlignedScene,
    inputs: Mapping[str, PathLike],
    grid: Grid,
    plan: Any,
    meta: ModelMeta,
    bands: Any,
    units: str,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """Scene statistics of the requested extent (not of the larger read grid of an anchored
    crop), so extent-dependent normalisations keep their meaning, and how they were sampled;
    none (no pre-pass) when every modality's normalisation is fixed."""
    if all(s.normalisation.mode != "scene-percentile" for s in meta.modalities):
        return {}, {}
    if not plan.anchored:
        return scene.percentiles(meta), dict(scene.stats_sampling)
    with AlignedScene(inputs, grid, bands=bands, units=units, meta=meta) as crop:
        return crop.percentiles(meta), dict(crop.stats_sampling)


def _bounded_gdal_cache(
    scene: AlignedScene,
    tile: int,
    columns: int | None = None,
    spans: Sequence[tuple[int, int]] | None = None,
) -> Any:
    """Cap GDAL's block cache for this run (unless the user set GDAL_CACHEMAX), so peak
    memory does not grow with the scene; see :meth:`AlignedScene.cache_bytes`."""
    import contextlib

    import rasterio

    if os.environ.get("GDAL_CACHEMAX"):
        return contextlib.nullcontext()
    return rasterio.Env(GDAL_CACHEMAX=scene.cache_bytes(tile, columns, spans))


def vectorize_finished_map(
    label: PathLike, vector: PathLike, written: Sequence[PathLike], *, overwrite: bool,
    progress: bool,
) -> None:  # fmt: skip
    """Polygonise the committed label map into ``vector``. Everything that can fail early was
    checked before the inference (format, pyarrow, folder, existing file); if the step still
    fails, the finished rasters are kept and one clean :class:`VectorOutputError` line says
    how to redo only the polygons."""
    from mfaf_cli.errors import MfafError, VectorOutputError
    from mfaf_cli.vectorize.polygons import vectorize_raster

    try:
        vectorize_raster(label, vector, overwrite=overwrite, progress=progress)
    except Exception as err:  # Ctrl-C (BaseException) propagates as is
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        reason = lines[0] if lines else type(err).__name__
        if not isinstance(err, MfafError):
            reason = f"{type(err).__name__}: {reason}"
        kept = ", ".join(str(p) for p in written)
        raise VectorOutputError(
            f"--vector {vector} failed ({reason.rstrip('.')}); the rasters were kept ({kept}); "
            f"make the polygons with: mfaf vectorize {label} -o {vector}"
        ) from err


# ---- predict ----------------------------------------------------------------------------------
def predict(
    read: ReadSpec | Mapping[str, Any],
    write: WriteSpec | PathLike | None = None,
    model: Any = None,
    *,
    spec: InferenceSpec | None = None,
    predictor: Any = None,
    progress: bool = True,
    read_threads: int | None = None,
    **fields: Any,
) -> PredictResult:
    """Predict a land-use map for one scene and write it as georeferenced GeoTIFF(s).

    Args:
        read: what to read (:class:`ReadSpec`: inputs, bands, grid), or just the inputs,
            modality → raster path, e.g. ``{"optical": "s2.tif", "sar": "s1.tif"}``.
        write: what to write (:class:`WriteSpec`: label map, probabilities, confidence,
            exclusion mask, polygons, format), or just the label GeoTIFF's path.
        model: ``--model`` spec (shipped name, .safetensors/.onnx path, registry arch) or None
            for the default model of these modalities. Ignored when ``predictor`` is given.
        spec: how to infer (:class:`InferenceSpec`: tile, overlap, batch, blend, device,
            engine, precision, threads); default: the model's tile and the defaults.
        predictor: an already created Predictor (reused across scenes by batch mode).
        progress: tqdm bar on stderr.
        read_threads: override the reader threads of the split (0 reads in the caller).
        fields: convenience keywords, any field of the three objects (``bands=...``,
            ``overwrite=True``, ``tile=256``), see :func:`run_objects`.

    Raises:
        MfafError subclasses for every user-facing problem; nothing is left on disk then.
    """
    read, write, spec = run_objects(read, write, spec, fields)
    read = folder_scl(read)  # before the folder becomes a stack of its bands
    result = expanded(
        read,
        lambda flat: _predict(flat, write, spec, model, predictor, progress, read_threads),
        model=model, predictor=predictor, output=write.label,
    )  # fmt: skip
    if write.preview is not None:  # over the inputs as reported (stacks, items: their first)
        write_preview(result.outputs, write.preview, result.inputs, result.model)
    return result


def write_preview(
    outputs: dict[str, str], png: PathLike, inputs: Mapping[str, Any], title: str
) -> None:
    """``--preview``: the quick-look of the committed label map, added to ``outputs``."""
    from mfaf_cli.io.preview import write_run_preview

    write_run_preview(outputs["label"], inputs, png, title=title)
    outputs["preview"] = str(Path(png).absolute())


def run_objects(
    read: ReadSpec | Mapping[str, Any],
    write: WriteSpec | PathLike | None,
    spec: InferenceSpec | None,
    fields: Mapping[str, Any],
) -> tuple[ReadSpec, WriteSpec, InferenceSpec]:
    """The one place where convenience keywords become the run's three objects: each keyword
    goes to the object with a field of that name (``output`` is the label map's path); an
    object given whole is copied with those fields replaced (and checked again)."""
    given = dict(fields)
    if "output" in given:
        given["label"] = given.pop("output")
    kinds: dict[str, tuple[type[Any], Any, dict[str, Any]]] = {
        "read": (ReadSpec, read, {} if isinstance(read, ReadSpec) else {"inputs": read}),
        "write": (WriteSpec, write, {} if isinstance(write, WriteSpec) else {"label": write}),
        "spec": (InferenceSpec, spec, {}),
    }
    changes: dict[str, dict[str, Any]] = {name: {} for name in kinds}
    for key, value in given.items():
        owner = next((n for n, (cls, _, _) in kinds.items() if key in _field_names(cls)), None)
        if owner is None:
            raise TypeError(f"unexpected keyword argument {key!r}: no field of the run's objects")
        changes[owner][key] = value
    built: dict[str, Any] = {}
    for name, (cls, obj, base) in kinds.items():
        if isinstance(obj, cls):
            built[name] = replace(obj, **changes[name]) if changes[name] else obj
        else:
            built[name] = cls(**base, **changes[name])
    return built["read"], built["write"], built["spec"]


def _field_names(cls: type) -> set[str]:
    from dataclasses import fields as dc_fields

    return {f.name for f in dc_fields(cls) if f.name != "template"}


def _predict(
    read: ReadSpec, write: WriteSpec, spec: InferenceSpec, model: Any, predictor: Any,
    progress: bool, read_threads: int | None,
) -> PredictResult:  # fmt: skip
    """:func:`predict` once ``read.inputs`` are plain files."""
    from mfaf_cli.io.raster import OutputSet
    from mfaf_cli.pipeline.exclusion import checks_for, warn_if_excluded, with_excluder

    t_start = time.perf_counter()
    inputs, bands = dict(read.inputs), read.band_lists()
    if not inputs:
        raise ModalityError("give the input rasters, e.g. --optical s2.tif --sar s1.tif")
    write.check_paths()
    for name, path in inputs.items():
        check_readable(path, name)
    mask = _mask_input(read.optical_mask, read.cloud_threshold, inputs)
    area = read.read_aoi()
    given = predictor is not None
    predictor, model_name, trained = _predictor_for(predictor, model, inputs, bands, spec)
    if not given:
        predictor = with_fallbacks(predictor, getattr(predictor, "source", None), spec, mask,
                                   spec.fallbacks)  # fmt: skip
    meta: ModelMeta = predictor.meta
    tile = int(meta.tile_size if spec.tile is None else spec.tile)
    check_tile(tile, meta.divisor, meta.arch)
    spec = spec.with_tile(tile)
    weights = model_tags(getattr(predictor, "source", None), model_name)
    record: dict[str, Any] = {}  # made once the grid and inputs are open (their errors first)
    checks = checks_for(meta, model_name, wanted=write.exclusion is not None or write.mask_excluded)
    ordered = {m: inputs[m] for m in meta.modality_names}
    stored = _stored_excluder(checks, ordered)
    sm = _source_codes(predictor, write.source)
    taps = ReadTaps(raw=[stored.tap] if stored else [], mapped=[sm.tap] if sm else [])

    def _outputs(grid: Grid) -> Any:
        record.update(run_provenance(inputs, meta, bands, predictor, weights, trained, spec))
        ex = stored or _excluder(ordered, grid, meta, checks, bands, read.sar_units)
        return with_excluder(sm, lambda s: with_excluder(ex, lambda e: OutputSet(
            grid, meta, write.label, write.probabilities, write.confidence,
            tags={**weights, **provenance_tags(record)}, exclusion=write.exclusion, excluder=e,
            source=write.source, sourcer=s, **write.output_set_options(),
        )))  # fmt: skip

    if read_threads is None:
        read_threads = spec.thread_split(on_gpu(predictor), reader_bound(predictor))[1]
    t_scene = time.perf_counter()
    grid, stats, outputs = run_on_scene(
        ordered, meta, predictor, _outputs, spec, read, progress=progress,
        read_threads=read_threads, before_commit=_tagged(_require_valid_pixels(inputs), record),
        aoi=area, taps=taps,
    )  # fmt: skip
    seconds_scene = time.perf_counter() - t_scene

    written = {k: str(Path(v).absolute()) for k, v in outputs.paths.items() if v is not None}
    if write.vector is not None and write.label is not None:
        vectorize_finished_map(write.label, write.vector, list(written.values()),
                               overwrite=write.overwrite, progress=progress)  # fmt: skip
        written["vector"] = str(Path(write.vector).absolute())
    valid_fraction, fractions = class_fractions(outputs, meta)
    warn_if_excluded(outputs.exclusion_summary(), write.mask_excluded)
    return PredictResult(
        inputs={k: shown_path(v) for k, v in ordered.items()},
        grid=grid.to_dict(),
        windows=stats.windows,
        skipped_windows=stats.skipped,
        seconds=round(time.perf_counter() - t_start, 3),
        megapixels_per_second=round(grid.width * grid.height / 1e6 / max(seconds_scene, 1e-9), 4),
        outputs=written,
        model=model_name,
        arch=meta.arch,
        trained=trained,
        device=str(getattr(predictor, "device", "cpu")),
        engine=str(getattr(predictor, "engine", spec.engine)),
        precision=str(getattr(predictor, "precision", spec.precision)),
        tile=tile,
        overlap=float(spec.overlap),
        blend=spec.blend,
        valid_fraction=round(valid_fraction, 6),
        class_fractions={k: round(v, 6) for k, v in fractions.items()},
        model_seconds=round(stats.model_seconds, 3),
        bands=stats.bands,
        provenance=record,
        exclusion=outputs.exclusion_summary(),
        cpu_seconds=stats.cpu_seconds,
        statistics=stats.statistics,
        threads={"engine": int(getattr(predictor, "threads", 0) or 0), "readers": read_threads},
        **_source_summary(predictor, outputs),
    )


def folder_scl(read: ReadSpec) -> ReadSpec:
    """An S2 L2A ``--optical`` folder brings its SCL band as the optical mask when none is
    given (looked up before the folder is stacked into its bands)."""
    from mfaf_cli.coreg.cloudmask import find_scl

    folder = read.inputs.get("optical")
    if read.optical_mask is not None or not isinstance(folder, str | os.PathLike):
        return read
    if not Path(folder).is_dir():
        return read
    scl = find_scl(folder)
    if scl is None:
        return read
    log.info("optical mask: the folder's SCL band %s", scl.name)
    return replace(read, optical_mask=str(scl))


def _mask_input(path: PathLike | None, threshold: float | None, inputs: Mapping[str, Any]) -> Any:
    """The :class:`~mfaf_cli.coreg.cloudmask.OpticalMask` of ``--optical-mask`` /
    ``--cloud-threshold`` (before the model loads), or None."""
    from mfaf_cli.coreg.cloudmask import optical_mask

    if path is None:
        if threshold is not None:
            raise UsageError("--cloud-threshold applies to --optical-mask: give the mask raster")
        return None
    if "optical" not in inputs:
        raise UsageError("--optical-mask masks the optical input, but there is no --optical")
    check_readable(path, "optical mask")
    return optical_mask(path, threshold)


def _stored_excluder(checks: Checks | None, inputs: Mapping[str, Any]) -> StoredExcluder | None:
    """The exclusion check computed by the run's readers (no second read), when the checks
    read only the model's bands on these inputs (see
    :func:`~mfaf_cli.pipeline.exclusion.reads_model_bands`)."""
    from mfaf_cli.pipeline.exclusion import StoredExcluder, reads_model_bands

    if checks is None or not reads_model_bands(inputs, checks):
        return None
    return StoredExcluder(checks)


def _excluder(
    inputs: Mapping[str, Any], grid: Grid, meta: ModelMeta, checks: Checks | None, bands: Any,
    units: str,
) -> Excluder | None:  # fmt: skip
    """The exclusion check that reads the inputs again (rules whose alternatives read bands
    the model does not take, found in the input files), or None without checks."""
    from mfaf_cli.pipeline.exclusion import Excluder

    if checks is None:
        return None
    return Excluder(inputs, grid, meta, checks, bands=bands, sar_units=units)


def _source_codes(predictor: Any, source: PathLike | None) -> SourceCodes | None:
    """The source codes of output rows for a fallback run (None otherwise; ``--source``
    without fallbacks or mask is one line)."""
    from mfaf_cli.pipeline.fallback import SourceCodes

    if getattr(predictor, "coverage", None) is None:
        if source is not None:
            raise UsageError(
                "--source maps which model made each pixel, but this run has no fallback "
                "models and no --optical-mask: every pixel is the model's"
            )
        return None
    return SourceCodes(predictor.meta)


def _source_summary(predictor: Any, outputs: Any) -> dict[str, Any]:
    """``sources`` (fractions) and ``fallback_windows`` of a fallback run, for its result."""
    from mfaf_cli.pipeline.fallback import source_fractions, source_names

    if getattr(outputs, "sourcer", None) is None:
        return {}
    names = source_names(predictor.meta)
    return {
        "sources": source_fractions(outputs.source_counts[: len(names)], names),
        "fallback_windows": dict(predictor.windows_run),
    }


def run_provenance(
    inputs: Mapping[str, Any], meta: ModelMeta, bands: Any, predictor: Any,
    weights: Mapping[str, str], trained: bool, spec: InferenceSpec,
) -> dict[str, Any]:  # fmt: skip
    """The provenance record of a run (see pipeline/provenance.py); split-scene runs write it
    when they assemble."""
    from mfaf_cli.pipeline.provenance import provenance_record

    model = {"name": weights.get("WEIGHTS"), "sha256": weights.get("WEIGHTS_SHA256"),
             "trained": trained}  # fmt: skip
    inference = {
        "tile": spec.tile, "overlap": spec.overlap, "batch_size": spec.batch_size,
        "blend": spec.blend, "engine": str(getattr(predictor, "engine", spec.engine)),
        "device": str(getattr(predictor, "device", spec.device)),
        "precision": str(getattr(predictor, "precision", _cpu_auto(spec))),
    }  # fmt: skip
    ordered = {m: os.fspath(inputs[m]) for m in meta.modality_names}
    return provenance_record(ordered, meta, bands, model, inference)


def _predictor_for(
    predictor: Any, model: Any, inputs: Mapping[str, Any], bands: Mapping[str, Any],
    spec: InferenceSpec,
) -> tuple[Any, str, bool]:  # fmt: skip
    """``(predictor, model name, trained)``: the given predictor (checked against the
    inputs) or one loaded for ``model``."""
    if predictor is None:
        in_ch = {m: len(v) for m, v in bands.items() if m in inputs and v}
        predictor, source = load_predictor(
            model, tuple(inputs), in_channels=in_ch or None, spec=spec
        )
        return predictor, source.name, not source.untrained
    meta = predictor.meta
    model_name = getattr(predictor, "name", None) or meta.arch
    check_modalities(tuple(inputs), meta, model_name)
    return predictor, model_name, bool(meta.trained)


def _require_valid_pixels(inputs: Mapping[str, Any]) -> Callable[[Any], None]:
    """A ``before_commit`` check: a scene without a single valid pixel leaves no raster (it
    runs while the rasters are still temp files)."""

    def check(outputs: Any) -> None:
        seen = getattr(outputs, "input_valid_pixels", None)  # before --mask-excluded
        if int(outputs.class_counts.sum() if seen is None else seen) == 0:
            names = ", ".join(f"{m} {Path(p).name}" for m, p in inputs.items())
            raise InputError(
                f"no pixel has data in every input ({names}): the inputs are all nodata/NaN "
                "where they overlap, so there is nothing to predict"
            )

    return check


def _cpu_auto(spec: InferenceSpec) -> str:
    """The precision a predictor on the CPU resolves ``auto`` to (fp32), for records made
    without one (an --assemble process)."""
    cpu = str(spec.device).startswith("cpu")
    return "fp32" if spec.precision == "auto" and cpu else str(spec.precision)


def _tagged(check: Callable[[Any], None], record: Mapping[str, Any]) -> Callable[[Any], None]:
    """``check``, then the provenance tag on the probability and confidence rasters too (the
    label map has it from the start)."""

    def run(outputs: Any) -> None:
        check(outputs)
        for kind, writer in outputs.writers.items():
            if kind != "label":
                writer.dataset.update_tags(**provenance_tags(record))

    return run


# ---- coregister -------------------------------------------------------------------------------
@contextlib.contextmanager
def _output_folder(out: Path) -> Iterator[None]:
    """Create ``out`` if needed; if the run then fails, remove it again (when still empty),
    so that a failed coregister leaves nothing behind."""
    created = not out.exists()
    if created:
        try:
            out.mkdir()
        except OSError as err:
            raise OutputPathError(
                f"cannot create output folder {out} ({err.strerror}); choose another path"
            ) from None
    try:
        yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


@dataclass
class CoregisterResult:
    inputs: dict[str, str]
    grid: dict[str, Any]
    outputs: dict[str, str]
    seconds: float
    valid_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _coregister_dtype(src: Any) -> tuple[str, float]:
    """(dtype, nodata) of a coregistered output: float32/NaN for continuous values; a
    categorical input keeps its dtype, and its nodata (or the dtype's largest value)."""
    if src.kind != "nearest":
        return "float32", float("nan")
    dtype, nodata = src.dtype, src.nodata[0]
    if nodata is None:
        if dtype == "uint8":
            nodata = 255
        elif np.issubdtype(np.dtype(dtype), np.integer):
            nodata = float(np.iinfo(dtype).max)
        else:
            nodata = float("nan")
    return dtype, nodata


def _open_coregistered(
    tmp: Any, src: Any, grid: Grid, spec: tuple[str, float], options: Mapping[str, Any]
) -> Any:
    """Open one coregistered output on ``grid``, with its source's band descriptions and
    provenance tags."""
    import rasterio

    dtype, nodata = spec
    ds = rasterio.open(
        tmp, "w", driver="GTiff", width=grid.width, height=grid.height,
        count=len(src.indexes), dtype=dtype, crs=grid.crs, transform=grid.transform,
        nodata=nodata, **options,
    )  # fmt: skip
    with rasterio.open(src.uri) as s:
        for j, i in enumerate(src.indexes, start=1):
            ds.set_band_description(j, s.descriptions[i - 1] or f"band {i}")
    tags = {"SOURCE": src.uri, "SOURCE_BANDS": ",".join(map(str, src.indexes))}
    if src.kind == "sar":
        tags["SAR_UNITS"] = src.out_units
    ds.update_tags(**tags)
    return ds


def _coregister_block(
    scene: AlignedScene, dsets: Mapping[str, Any], specs: Mapping[str, Any], w: Window
) -> int:
    """Write one block of every output; returns its pixels valid in every modality."""
    joint = np.ones((w.height, w.width), dtype=bool)
    for m, ds in dsets.items():
        vals, ok = scene.read_modality(m, w)
        joint &= ok
        dtype, nodata = specs[m]
        if dtype != "float32":
            vals = np.where(ok[None], vals, nodata).astype(dtype)
        ds.write(vals, window=w.to_rasterio())
    return int(joint.sum())


def coregister(
    read: ReadSpec | Mapping[str, Any],
    out_dir: PathLike,
    *,
    write: WriteSpec | None = None,
    reference: str | None = None,
    progress: bool = True,
    block: int = 512,
    **fields: Any,
) -> CoregisterResult:
    """Warp every input onto the reference grid and write ``<out_dir>/<modality>.tif``.

    ``read``: what to read (:class:`ReadSpec`, or just modality → path); ``write``: the
    GeoTIFF options (``creation_options``, ``overwrite``; no paths: the files are named by
    modality); ``fields``: convenience keywords of those two objects, as :func:`predict`.
    Continuous modalities are written as float32 (nodata NaN); a ``label`` input (categorical,
    resampled nearest) keeps its dtype and nodata. Blocks are read and written one at a time,
    so any scene size works in bounded memory. ``out_dir`` is created if its parent exists.
    """
    read, write, spec = run_objects(read, write or WriteSpec(template=True), None, fields)
    if spec != InferenceSpec():
        raise TypeError("coregister runs no model: it takes no InferenceSpec keywords")
    if any(p is not None for p in (*write.rasters().values(), write.vector)):
        raise UsageError("coregister writes <folder>/<modality>.tif: give no output paths")
    return expanded(read, lambda flat: _coregister(flat, out_dir, write, reference, progress,
                                                   block), for_model=False)  # fmt: skip


def _coregister(
    read: ReadSpec, out_dir: PathLike, write: WriteSpec, reference: str | None, progress: bool,
    block: int,
) -> CoregisterResult:  # fmt: skip
    """:func:`coregister` once ``read.inputs`` are plain files."""
    from tqdm import tqdm

    from mfaf_cli.io.raster import atomic_outputs, gtiff_options
    from mfaf_cli.metadata import REFERENCE_MODALITIES

    t0 = time.perf_counter()
    inputs = dict(read.inputs)
    if not inputs:
        raise ModalityError("give the input rasters, e.g. --optical s2.tif --sar s1.tif")
    if reference is None:
        reference = next((m for m in REFERENCE_MODALITIES if m in inputs), next(iter(inputs)))
    if reference not in inputs:
        raise UsageError(f"reference modality {reference!r} is not among the inputs")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"output {out} is a file; -o takes a folder for coregister")
    if not out.exists() and not out.parent.exists():
        raise OutputPathError(
            f"output folder {out.parent} does not exist; create it or choose another path"
        )
    for name, path in inputs.items():
        check_readable(path, name)
    grid = grid_from_reference(inputs[reference], **read.grid_options())
    options = gtiff_options("deflate", write.creation_options)
    finals = [out / f"{m}.tif" for m in inputs]
    with (
        AlignedScene(inputs, grid, bands=read.band_lists(), units=read.sar_units) as scene,
        _bounded_gdal_cache(scene, block),
    ):
        specs = {m: _coregister_dtype(src) for m, src in scene.sources.items()}
        blocks = [
            Window(r, c, min(block, grid.height - r), min(block, grid.width - c))
            for r in range(0, grid.height, block)
            for c in range(0, grid.width, block)
        ]
        with _output_folder(out), atomic_outputs(finals, write.overwrite) as temps:
            dsets: dict[str, Any] = {}
            try:
                for (m, src), tmp in zip(scene.sources.items(), temps, strict=True):
                    dsets[m] = _open_coregistered(tmp, src, grid, specs[m], options)
                bar = tqdm(blocks, unit="block", disable=not progress, file=sys.stderr)
                valid_px = sum(_coregister_block(scene, dsets, specs, w) for w in bar)
            finally:
                for ds in dsets.values():
                    ds.close()
    return CoregisterResult(
        inputs={k: shown_path(v) for k, v in inputs.items()},
        grid=grid.to_dict(),
        outputs={m: str(f.absolute()) for m, f in zip(inputs, finals, strict=True)},
        seconds=round(time.perf_counter() - t0, 3),
        valid_fraction=round(valid_px / (grid.width * grid.height), 6),
    )

"""One scene split across processes: row strips with their blending halo, assembled into one map.

Process I of N (``--shard I/N``, torchrun's RANK / WORLD_SIZE or a Slurm array task, see
:mod:`~mfaf_cli.pipeline.shard`) takes a contiguous band of the scene's window rows. Its strip
of output rows starts at its first window row (or the top of the scene) and ends where the next
process's begins. It predicts every window of the *full* plan that touches its strip (the
window rows above it are the halo), with the tapers those windows have in the full layout and
the scene statistics of the full grid: the strip is just a crop of the full run, anchored as
:mod:`~mfaf_cli.tiling.plan` anchors a ``--bounds`` crop, so its pixels are the full run's.

Each process writes its strip next to each output, atomically, as
``<output>.part-IIII-of-NNNN.tif``, tagged with a fingerprint of the run (grid, model, tiling,
blend, statistics, N, outputs). Then one process assembles the outputs block stripe by block
stripe through the same writers as a single run (tags, colour table, nodata, COG), renames
them into place and removes the parts:

- under torchrun (a process group, gloo, for coordination only) rank 0 does, after every rank
  has reported its part;
- otherwise (``--shard``, Slurm arrays) the last process to finish does (it sees all N parts
  with its fingerprint; an exclusive lock file stops two doing it at once). ``--assemble``
  with the same command line does it explicitly (e.g. after a killed assembler).

mfaf schedules nothing itself: the launcher starts the N processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from mfaf_cli.coreg.align import AlignedScene
from mfaf_cli.coreg.grid import Grid, grid_from_reference
from mfaf_cli.errors import InputError, MfafError, ModalityError, UsageError
from mfaf_cli.io.inputs import check_readable
from mfaf_cli.metadata import ModelMeta
from mfaf_cli.pipeline.core import (
    panel_read_spans,
    panel_width,
    read_grid,
    reference_anchor,
    run_scene,
)
from mfaf_cli.pipeline.predict import (
    _bounded_gdal_cache,
    check_modalities,
    load_predictor,
    model_tags,
    on_gpu,
    run_objects,
    vectorize_finished_map,
    write_preview,
)
from mfaf_cli.pipeline.read_spec import ReadSpec, expanded
from mfaf_cli.pipeline.shard import Shard, device_for, resolve_shard
from mfaf_cli.pipeline.spec import InferenceSpec
from mfaf_cli.pipeline.write_spec import WriteSpec, check_vector_path
from mfaf_cli.tiling.plan import WindowPlan, plan_windows
from mfaf_cli.tiling.windows import check_tile

log = logging.getLogger("mfaf")

PathLike = str | os.PathLike[str]
OUTPUT_KEYS = ("label", "probabilities", "confidence", "exclusion")
#: Tag on every part file: JSON {"run", "part", "parts", "rows", "valid"}.
PART_TAG = "MFAF_SPLIT_PART"
#: How long torchrun ranks wait for each other (a strip of a huge scene may take hours).
GROUP_TIMEOUT = timedelta(hours=24)
_PART_RE = re.compile(r"\.part-(\d{4,})-of-(\d{4,})\.tif$")


class SplitError(MfafError):
    """Parts missing, from another run, or a rank that failed: nothing was assembled."""


# ---- which rows a process takes -----------------------------------------------------------------
def strip_rows(plan: WindowPlan, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous output-row strips covering ``[0, plan.height)``, cut where a
    window row starts, with about as many window rows each."""
    cuts = sorted({w.row_off for w in plan.windows if 0 < w.row_off < plan.height})
    if count > len(cuts) + 1:
        raise UsageError(
            f"the scene has {len(cuts) + 1} window rows (tile {plan.tile}): split it between "
            f"at most {len(cuts) + 1} processes, not {count}"
        )
    units = len(cuts) + 1
    bounds = [0] + [cuts[k * units // count - 1] for k in range(1, count)] + [plan.height]
    return list(itertools.pairwise(bounds))


def full_anchor(ref_path: str, grid: Grid, tile: int, overlap: float) -> tuple[int, int, int, int]:
    """The anchor of the full run's plan (as :func:`~mfaf_cli.pipeline.core.scene_plan` lays
    it): the reference raster's lattice when the grid lies on it, else the grid itself."""
    anchor = reference_anchor(ref_path, grid)
    if anchor is None or not plan_windows(grid.height, grid.width, tile, overlap, anchor).windows:
        return (0, 0, grid.height, grid.width)
    return anchor


def strip_plan(
    anchor: tuple[int, int, int, int], rows: tuple[int, int], width: int, tile: int, overlap: float
) -> WindowPlan:
    """The full plan's windows touching output rows ``rows``, in the strip's pixels, with the
    full layout's tapers."""
    r0, c0, ref_h, ref_w = anchor
    return plan_windows(rows[1] - rows[0], width, tile, overlap, (r0 + rows[0], c0, ref_h, ref_w))


def strip_grid(grid: Grid, rows: tuple[int, int]) -> Grid:
    from rasterio.transform import Affine

    t = grid.transform @ Affine.translation(0, rows[0])
    return Grid(grid.crs, t, grid.width, rows[1] - rows[0])


def part_path(final: PathLike, index: int, count: int) -> Path:
    """``map.tif`` → ``map.tif.part-0001-of-0004.tif`` (same folder)."""
    p = Path(final)
    return p.with_name(f"{p.name}.part-{index:04d}-of-{count:04d}.tif")


def part_counts(final: PathLike) -> set[int]:
    """The N of every ``<final>.part-*-of-N.tif`` on disk."""
    p = Path(final)
    found = set()
    if p.parent.is_dir():
        for q in p.parent.glob(f"{p.name}.part-*-of-*.tif"):
            m = _PART_RE.search(q.name)
            if m and q.name[: m.start()] == p.name:
                found.add(int(m.group(2)))
    return found


def fingerprint(
    grid: Grid,
    spec: InferenceSpec,
    tags: Mapping[str, str],
    meta: ModelMeta,
    count: int,
    outputs: Mapping[str, Any],
    prob_dtype: str,
    percentiles: Mapping[str, Any],
) -> str:
    """What must agree between the parts of one map: grid, tiling, blend, weights, scene
    statistics, the number of parts and which outputs (with their stored dtype)."""
    doc = {
        "grid": grid.to_dict(),
        "tile": spec.tile,
        "overlap": spec.overlap,
        "blend": spec.blend,
        "weights": dict(tags),
        "arch": meta.arch,
        "parts": count,
        "outputs": sorted(k for k, v in outputs.items() if v is not None),
        "dtype": prob_dtype,
        "stats": {m: [np.asarray(a).tolist() for a in v] for m, v in sorted(percentiles.items())},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


# ---- result ------------------------------------------------------------------------------------
@dataclass
class SplitResult:
    """What one process of a split scene did (``--json``)."""

    part: int
    parts: int
    rows: list[int]
    windows: int
    skipped_windows: int
    seconds: float
    run: str
    part_files: dict[str, str] = field(default_factory=dict)
    assembled: bool = False
    outputs: dict[str, str] = field(default_factory=dict)
    status: str = "part"
    model: str = ""  # the model's name, as predict reports it
    #: excluded fraction of valid pixels per reason, over all parts (the assembling process)
    exclusion: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# ---- the run both halves share ----------------------------------------------------------------
@dataclass
class _Run:
    """Everything a part or the assembly needs, resolved once per process."""

    inputs: dict[str, str]  # in the model's modality order
    finals: dict[str, Path | None]
    meta: ModelMeta
    spec: InferenceSpec  # tile resolved
    grid: Grid
    anchor: tuple[int, int, int, int]
    percentiles: dict[str, tuple[np.ndarray, np.ndarray]]
    tags: dict[str, str]
    bands: dict[str, list[Any]]
    sar_units: str
    options: dict[str, Any]  # OutputSet keywords: creation_options, probability_dtype, cog, ...
    predictor: Any = None
    exclusion: dict[str, Any] | None = None  # the assembled run's exclusion summary

    def fingerprint(self, count: int) -> str:
        return fingerprint(
            self.grid,
            self.spec,
            self.tags | {"MASKED_EXCLUDED": str(bool(self.options.get("mask_excluded")))},
            self.meta,
            count,
            self.finals,
            self.options["probability_dtype"],
            self.percentiles,
        )

    def output_set(self, grid: Grid, paths: Mapping[str, Path | None], **kw: Any) -> Any:
        from mfaf_cli.io.raster import OutputSet

        opts = {**self.options, **kw}
        opts["mask_excluded"] = opts.get("mask_excluded", False) and "excluder" in kw
        return OutputSet(
            grid,
            self.meta,
            paths["label"],
            paths["probabilities"],
            paths["confidence"],
            tags=self.tags,
            exclusion=paths.get("exclusion"),
            reasons=_reasons(self.meta),
            **opts,
        )


def _check_request(inputs: Mapping[str, str], write: WriteSpec) -> None:
    """predict's cheap checks, before the model: output paths, input files."""
    if not inputs:
        raise ModalityError("give the input rasters, e.g. --optical s2.tif --sar s1.tif")
    write.check_paths()
    for name, path in inputs.items():
        check_readable(path, name)


def _model(
    model: Any,
    inputs: Mapping[str, str],
    bands: Mapping[str, list[Any]],
    spec: InferenceSpec,
    predictor: Any,
    load: bool,
) -> tuple[Any, ModelMeta, dict[str, str]]:
    """``(predictor or None, meta, label tags)``; ``load=False`` resolves the model only (the
    assembly needs its metadata, not the network)."""
    from mfaf_cli.models.resolve import resolve_model

    if predictor is not None:
        meta = predictor.meta
        name = getattr(predictor, "name", None) or meta.arch
        check_modalities(tuple(inputs), meta, name)
        return (
            predictor,
            meta,
            model_tags(getattr(predictor, "source", None), name),
        )
    in_ch = {m: len(v) for m, v in bands.items() if v} or None
    if load:
        from mfaf_cli.pipeline.predict import with_fallbacks

        predictor, source = load_predictor(model, tuple(inputs), in_channels=in_ch, spec=spec)
        # the record's per-pixel fallbacks, as a single run maps them (pipeline/fallback.py)
        predictor = with_fallbacks(predictor, source, spec)
    else:
        source = resolve_model(model, tuple(inputs), in_channels=in_ch)
        check_modalities(tuple(inputs), source.meta, source.name)
    return predictor, source.meta, model_tags(source, source.name)


def _full_percentiles(
    run_inputs: Mapping[str, str], grid: Grid, meta: ModelMeta, bands: Any, units: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scene statistics of the whole requested grid (the full run's), never of a strip."""
    if all(s.normalisation.mode != "scene-percentile" for s in meta.modalities):
        return {}
    with AlignedScene(run_inputs, grid, bands=bands, units=units, meta=meta) as scene:
        return scene.percentiles(meta)


def _prepare(
    read: ReadSpec,
    write: WriteSpec,
    model: Any,
    spec: InferenceSpec,
    *,
    load: bool,
    predictor: Any,
) -> _Run:
    """predict's checks in predict's order (outputs, inputs, model, tiling), then the full
    grid, its plan anchor and scene statistics: the same in every process of the run."""
    flat, band_lists = dict(read.inputs), read.band_lists()
    _check_request(flat, write)
    predictor, meta, tags = _model(model, flat, band_lists, spec, predictor, load)
    tile = int(meta.tile_size if spec.tile is None else spec.tile)
    check_tile(tile, meta.divisor, meta.arch)
    spec = spec.with_tile(tile)
    ordered = {m: flat[m] for m in meta.modality_names}
    ref = ordered[meta.reference_modality]
    grid = grid_from_reference(ref, **read.grid_options())
    anchor = full_anchor(ref, grid, tile, spec.overlap)
    stats = _full_percentiles(ordered, grid, meta, band_lists, read.sar_units)
    finals = {k: None if p is None else Path(p) for k, p in write.rasters().items()}
    return _Run(
        ordered,
        finals,
        meta,
        spec,
        grid,
        anchor,
        stats,
        tags,
        band_lists,
        read.sar_units,
        write.output_set_options(),
        predictor,
    )


# ---- one part ---------------------------------------------------------------------------------
def _predict_part(
    run: _Run, share: Shard, *, progress: bool, read_threads: int | None
) -> tuple[dict[str, Path], tuple[int, int], Any]:
    """Predict this process's strip into its part files: ``(parts, rows, RunStats)``."""
    full = plan_windows(
        run.grid.height, run.grid.width, run.spec.tile or 0, run.spec.overlap, run.anchor
    )
    rows = strip_rows(full, share.count)[share.index]
    plan = strip_plan(run.anchor, rows, run.grid.width, run.spec.tile or 0, run.spec.overlap)
    parts = {k: part_path(f, share.index, share.count) for k, f in run.finals.items() if f}
    paths = {k: parts.get(k) for k in OUTPUT_KEYS}
    if read_threads is None:
        read_threads = run.spec.thread_split(on_gpu=on_gpu(run.predictor))[1]
    info = {
        "run": run.fingerprint(share.count),
        "part": share.index,
        "parts": share.count,
        "rows": list(rows),
    }
    log.info(
        "split %d/%d (%s): rows %d..%d, %d windows",
        share.index,
        share.count,
        share.source,
        rows[0],
        rows[1],
        len(plan.windows),
    )
    with (
        AlignedScene(
            run.inputs,
            read_grid(strip_grid(run.grid, rows), plan),
            bands=run.bands,
            units=run.sar_units,
            meta=run.meta,
        ) as scene,
        _bounded_gdal_cache(
            scene,
            plan.tile,
            spans=panel_read_spans(plan, scene.grid.width, panel_width(run.predictor)),
        ),
        _part_outputs(run, strip_grid(run.grid, rows), paths) as out,
    ):
        stats = run_scene(
            scene,
            plan,
            run.meta,
            run.predictor,
            run.percentiles,
            out,
            batch_size=run.spec.batch_size,
            blend=run.spec.blend,
            read_threads=read_threads,
            progress=progress,
            desc=f"part {share.index}/{share.count}",
        )
        info["valid"] = int(out.input_valid_pixels)
        info["exclusion_counts"] = out.exclusion_counts.tolist()
        info["exclusion_rules"] = (out.exclusion_summary() or {}).get("rules")  # which ran
        for w in out.writers.values():
            w.dataset.update_tags(**{PART_TAG: json.dumps(info, sort_keys=True)})
    return parts, rows, stats


def _reasons(meta: ModelMeta) -> list[str] | None:
    """Names of the exclusion codes of the model (None: it has no checks)."""
    from mfaf_cli.applicability import Checks

    checks = Checks.of(meta)
    return None if checks.empty else checks.reasons


def _part_outputs(run: _Run, grid: Grid, paths: Mapping[str, Path | None]) -> Any:
    """A part's OutputSet, with the exclusion check when the model has one (--mask-excluded
    masks the part; the assembling process sums the parts' counts and warns)."""
    from mfaf_cli.pipeline.exclusion import Excluder, checks_for, with_excluder

    wanted = bool(run.options.get("mask_excluded")) or run.finals.get("exclusion") is not None
    checks = checks_for(run.meta, run.meta.arch, wanted=wanted)
    ex = None if checks is None else Excluder(
        run.inputs, grid, run.meta, checks, bands=run.bands, sar_units=run.sar_units)  # fmt: skip
    return with_excluder(ex, lambda e: run.output_set(
        grid, paths, cog=False, creation_options=None, overwrite=True, excluder=e))  # fmt: skip


# ---- assembly ---------------------------------------------------------------------------------
def read_part_info(path: Path) -> dict[str, Any] | None:
    """The part tag of ``path``, or None when it is not a readable part file."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as ds:
            text = ds.tags().get(PART_TAG)
            return None if text is None else {**json.loads(text), "shape": ds.shape}
    except (RasterioError, OSError, ValueError):
        return None


def check_parts(final: Path, count: int, run_fp: str, grid: Grid) -> list[tuple[Path, int]]:
    """``[(part, first row)]`` of ``final``, in order, after checking they are all there, of
    this run, and tile the grid's rows; :class:`SplitError` (one line) otherwise."""
    out, row = [], 0
    for i in range(count):
        p = part_path(final, i, count)
        if not p.exists():
            raise SplitError(
                f"part {i} of {count} ({p.name}) is missing: has process {i} "
                "finished? nothing was assembled"
            )
        info = read_part_info(p)
        if info is None or info.get("run") != run_fp:
            theirs = "none" if info is None else info.get("run")
            raise SplitError(
                f"{p.name} is not from this run (fingerprint {theirs}, this run {run_fp}: other "
                "inputs, model, grid, tiling or number of parts); delete the stale parts "
                f"(rm {final}.part-*) and rerun"
            )
        r0, r1 = info["rows"]
        if r0 != row or info["shape"] != (r1 - r0, grid.width):
            raise SplitError(f"{p.name} holds rows {r0}..{r1}, expected from row {row}")
        out.append((p, r0))
        row = r1
    if row != grid.height:
        raise SplitError(f"the parts of {final.name} end at row {row} of {grid.height}")
    return out


def _copy_rows(part: Path, writer: Any, row0: int, final: Path) -> None:
    """Stream a part's pixels into the final writer, one block stripe at a time."""
    import rasterio
    from rasterio.windows import Window as RioWindow

    from mfaf_cli.io.raster import BLOCK_SIZE, write_errors_as

    with rasterio.open(part) as ds:
        for r in range(0, ds.height, BLOCK_SIZE):
            n = min(BLOCK_SIZE, ds.height - r)
            data = ds.read(window=RioWindow(0, r, ds.width, n))
            with write_errors_as(final, need=data.nbytes):
                writer.write_rows(row0 + r, data)


def assemble(run: _Run, count: int) -> dict[str, str]:
    """Write the final outputs from the ``count`` parts (atomically), then remove the parts."""
    fp = run.fingerprint(count)
    finals = {k: Path(f) for k, f in run.finals.items() if f is not None}
    parts = {k: check_parts(f, count, fp, run.grid) for k, f in finals.items()}
    first = next(iter(parts.values()))
    if sum(int((read_part_info(p) or {}).get("valid", 0)) for p, _ in first) == 0:
        _remove_parts(parts)  # as a single run, nothing is left behind
        names = ", ".join(f"{m} {Path(p).name}" for m, p in run.inputs.items())
        raise InputError(f"no pixel has data in every input ({names}): there is nothing to predict")
    with run.output_set(run.grid, {k: finals.get(k) for k in OUTPUT_KEYS}) as out:
        for key, writer in out.writers.items():
            for part, row0 in parts[key]:
                _copy_rows(part, writer, row0, finals[key])
        for p, _ in first:  # the parts' exclusion counts: tags of the outputs, the summary
            out.exclusion_counts += np.asarray(
                (read_part_info(p) or {}).get("exclusion_counts", np.zeros(256)), dtype=np.int64
            )
        run.exclusion = out.exclusion_summary()
        rules = (read_part_info(first[0][0]) or {}).get("exclusion_rules")
        if run.exclusion is not None and rules:
            run.exclusion["rules"] = rules
        _tag_provenance(run, out)
    _remove_parts(parts)
    from mfaf_cli.pipeline.exclusion import warn_if_excluded

    warn_if_excluded(run.exclusion, bool(run.options.get("mask_excluded")))
    return {k: str(f.absolute()) for k, f in finals.items()}


def _tag_provenance(run: _Run, out: Any) -> None:
    """The assembled outputs say how they were made, as a single run's do (the record is not
    in the parts' fingerprint: its time differs between processes)."""
    from mfaf_cli.pipeline.predict import run_provenance
    from mfaf_cli.pipeline.provenance import provenance_tags

    record = run_provenance(run.inputs, run.meta, run.bands, run.predictor, run.tags,
                            run.meta.trained, run.spec)  # fmt: skip
    for writer in out.writers.values():
        writer.dataset.update_tags(**provenance_tags(record))


def _remove_parts(parts: Mapping[str, list[tuple[Path, int]]]) -> None:
    from mfaf_cli.io.raster import remove_quietly

    for plist in parts.values():
        for p, _ in plist:
            remove_quietly(p)


@contextlib.contextmanager
def _assembly_lock(finals: Mapping[str, Path | None], force: bool) -> Iterator[bool]:
    """An exclusive lock file next to the first output; yields whether this process got it
    (``force``: take over a lock a killed assembler left behind)."""
    first = Path(next(f for f in finals.values() if f is not None))
    lock = first.parent / f".{first.name}.mfaf-assemble.lock"
    if force:
        with contextlib.suppress(OSError):
            lock.unlink()
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        yield False
        return
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        yield True
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()


def _all_parts_here(run: _Run, count: int) -> bool:
    """Whether every part of every output is on disk with this run's fingerprint."""
    fp = run.fingerprint(count)
    for f in run.finals.values():
        if f is None:
            continue
        for i in range(count):
            info = read_part_info(part_path(f, i, count))
            if info is None or info.get("run") != fp:
                return False
    return True


# ---- coordination -----------------------------------------------------------------------------
@contextlib.contextmanager
def _process_group(share: Shard) -> Iterator[Any]:
    """A gloo group of the torchrun ranks (coordination only; None without torchrun's
    rendezvous variables). A group the caller already initialised is reused, not destroyed."""
    env = os.environ
    if share.source != "torchrun" or not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
        yield None
        return
    import torch.distributed as dist

    if not dist.is_available():
        yield None
        return
    if dist.is_initialized():
        yield dist.new_group(backend="gloo", timeout=GROUP_TIMEOUT)
        return
    dist.init_process_group("gloo", rank=share.index, world_size=share.count, timeout=GROUP_TIMEOUT)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def _gather_failures(group: Any, share: Shard, error: BaseException | None) -> list[str]:
    """Every rank's failure (one line each), gathered on all ranks."""
    import torch.distributed as dist

    mine = None if error is None else f"{type(error).__name__}: {str(error).splitlines()[0]}"
    statuses: list[Any] = [None] * share.count
    dist.all_gather_object(statuses, mine, group=group)
    return [f"process {i} failed ({s})" for i, s in enumerate(statuses) if s is not None]


def _assemble_if_last(run: _Run, count: int) -> dict[str, str] | None:
    """Without a process group: the process that sees all N parts assembles them."""
    if not _all_parts_here(run, count):
        return None
    with _assembly_lock(run.finals, force=False) as got:
        if got and _all_parts_here(run, count):  # not already assembled by another
            return assemble(run, count)
    return None


def _assemble_only(run: _Run, shard: Shard, t0: float) -> SplitResult:
    """``--assemble``: the parts on disk (N from ``--shard``/the launcher, else the files)."""
    count = shard.count
    if count == 1:
        first = next(f for f in run.finals.values() if f is not None)
        found = part_counts(first)
        if len(found) != 1:
            what = "no parts" if not found else f"parts of {sorted(found)} processes"
            raise SplitError(
                f"{what} of {Path(first).name} found next to it; "
                "give --shard 0/N for the number of parts"
            )
        count = found.pop()
    with _assembly_lock(run.finals, force=True):
        outputs = assemble(run, count)
    return SplitResult(
        0,
        count,
        [0, run.grid.height],
        0,
        0,
        round(time.perf_counter() - t0, 3),
        run.fingerprint(count),
        assembled=True,
        outputs=outputs,
        status="assembled",
    )


# ---- entry point ------------------------------------------------------------------------------
def predict_split(
    read: ReadSpec | Mapping[str, Any],
    write: WriteSpec | PathLike | None = None,
    model: Any = None,
    *,
    spec: InferenceSpec | None = None,
    shard: str | Shard | None = None,
    assemble_only: bool = False,
    predictor: Any = None,
    progress: bool = True,
    read_threads: int | None = None,
    **fields: Any,
) -> SplitResult:
    """Predict this process's row strip of one scene (see the module docstring); the
    assembling process also writes the outputs (and polygonises the assembled label map into
    ``write.vector``), exactly as :func:`predict` would. Arguments as for
    :func:`~mfaf_cli.pipeline.predict.predict`, plus ``shard`` (``"I/N"``; default from
    torchrun / Slurm) and ``assemble_only`` (only assemble the parts on disk).
    ``write.mask_excluded``: each part masks its excluded pixels (the exclusion check is per
    pixel, so the parts mask exactly what a single run masks)."""
    read, write, spec = run_objects(read, write, spec, fields)
    if read.aoi is not None:
        raise UsageError("--aoi cannot be used with --split-scene/--assemble (yet)")
    result = expanded(
        read,
        lambda flat: _predict_split(flat, write, spec, model, shard, assemble_only, predictor,
                                    progress, read_threads),
        model=model, predictor=predictor, output=write.label,
    )  # fmt: skip
    if write.preview is not None and result.assembled:  # the assembler: the map is complete
        files = {m: v for m, v in read.inputs.items() if _file_names(v)}
        write_preview(result.outputs, write.preview, files, result.model)
    return result


def _file_names(value: Any) -> bool:
    """Whether an input is given as file names (a preview's reference), not STAC items."""
    values = value if isinstance(value, tuple) else (value,)
    return all(isinstance(v, str | os.PathLike) for v in values)


def _predict_split(
    read: ReadSpec, write: WriteSpec, spec: InferenceSpec, model: Any, shard: Any,
    assemble_only: bool, predictor: Any, progress: bool, read_threads: int | None,
) -> SplitResult:  # fmt: skip
    """:func:`predict_split` once ``read.inputs`` are plain files."""
    t0 = time.perf_counter()
    if write.vector is not None:
        check_vector_path(write.vector, write.overwrite)
    share = resolve_shard(shard)
    if share.count == 1 and not assemble_only:
        log.warning("--split-scene without --shard I/N, torchrun or a Slurm array: this one "
                    "process predicts the whole scene")  # fmt: skip
    spec = replace(spec, device=device_for(share, spec.device))
    run = _prepare(read, write, model, spec, load=not assemble_only, predictor=predictor)
    if assemble_only:
        result = _assemble_only(run, share, t0)
    else:
        progress = progress and share.shows_progress
        result = _run_part(run, share, t0, progress=progress, read_threads=read_threads)
    result.model = run.tags.get("WEIGHTS", run.meta.arch)
    result.exclusion = run.exclusion
    if write.vector is not None and write.label is not None and result.assembled:
        written = list(result.outputs.values())
        vectorize_finished_map(write.label, write.vector, written, overwrite=write.overwrite,
                               progress=progress)  # fmt: skip
        result.outputs["vector"] = str(Path(write.vector).absolute())
    return result


def _run_part(
    run: _Run, share: Shard, t0: float, *, progress: bool, read_threads: int | None
) -> SplitResult:
    """Predict the part, then coordinate: rank 0 of a group or the last process assembles."""
    outputs: dict[str, str] | None = None
    with _process_group(share) as group:
        error: BaseException | None = None
        try:
            parts, rows, stats = _predict_part(
                run, share, progress=progress, read_threads=read_threads
            )
        except Exception as err:  # reported to the other ranks, then re-raised
            error = err
        failures = [] if group is None else _gather_failures(group, share, error)
        if error is not None:
            raise error
        if group is None:
            outputs = _assemble_if_last(run, share.count)
        elif share.index == 0:
            if failures:
                raise SplitError(f"{'; '.join(failures)}: nothing was assembled")
            outputs = assemble(run, share.count)
    return SplitResult(
        share.index,
        share.count,
        list(rows),
        stats.windows,
        stats.skipped,
        round(time.perf_counter() - t0, 3),
        run.fingerprint(share.count),
        part_files={k: str(p.absolute()) for k, p in parts.items()},
        assembled=outputs is not None,
        outputs=outputs or {},
    )

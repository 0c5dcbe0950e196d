"""Batch predict: many scenes from a CSV, one model load, failures reported and skipped.

Why a CSV and not a loop of ``mfaf predict`` calls: loading a model (and on a GPU, warming it
up) can cost more than predicting a small scene, so hundreds of scenes should share one
:class:`~mfaf_cli.engine.Predictor`. Everything that can be checked without running (the CSV's
shape, band lists, duplicate outputs, the model and its modalities, tile/overlap) is checked
before the first scene starts, so a typo fails in a second rather than after an hour. Once
running, a scene that fails is recorded with its error and the batch goes on; Ctrl-C/SIGTERM
stop the batch (the scene in flight leaves nothing behind, finished scenes stay).

CSV layout (header required, ``#`` lines and blank rows ignored)::

    scene,optical,sar,optical_bands,output,vector
    tile-01,s2/t01.tif,s1/t01.tif,"4,3,2,8",maps/t01.tif,maps/t01.gpkg
    tile-02,s2/t02.tif,s1/t02.tif,"4,3,2,8",maps/t02.tif,

Columns: one per modality (``optical``, ``sar``, ``hsi``, ``lidar``), ``output`` (required),
optional ``vector``, ``probabilities``, ``confidence``, ``exclusion`` (the exclusion mask,
see mfaf_cli/applicability.py), ``<modality>_bands`` and ``scene`` (a
name for the reports; default the output path). Relative paths are relative to the CSV's
folder. An empty cell means "not given".
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mfaf_cli.errors import MfafError, OutputPathError, UsageError
from mfaf_cli.metadata import ALL_MODALITIES
from mfaf_cli.pipeline.read_spec import ReadSpec
from mfaf_cli.pipeline.shard import Shard
from mfaf_cli.pipeline.spec import InferenceSpec
from mfaf_cli.pipeline.write_spec import WriteSpec

log = logging.getLogger("mfaf")

PathLike = str | os.PathLike[str]

OUTPUT_COLUMNS: tuple[str, ...] = (
    "output", "vector", "probabilities", "confidence", "exclusion",
)  # fmt: skip
BAND_COLUMNS: tuple[str, ...] = tuple(f"{m}_bands" for m in ALL_MODALITIES)
KNOWN_COLUMNS: tuple[str, ...] = ("scene", *ALL_MODALITIES, *OUTPUT_COLUMNS, *BAND_COLUMNS)


@dataclass(frozen=True)
class Scene:
    """One CSV row, with paths resolved against the CSV's folder."""

    line: int  # 1-based line number in the CSV (for messages)
    name: str
    inputs: dict[str, str | list[str]]  # a list: several files stacked (``a.tif;b.tif``)
    output: str
    vector: str | None = None
    probabilities: str | None = None
    confidence: str | None = None
    bands: dict[str, list[int | str]] = field(default_factory=dict)
    exclusion: str | None = None

    @property
    def outputs(self) -> dict[str, str]:
        """Output kind -> path, for the outputs this row asks for."""
        out = {"label": self.output}
        for kind in ("probabilities", "confidence", "vector", "exclusion"):
            path = getattr(self, kind)
            if path is not None:
                out[kind] = path
        return out


# ---- parsing (pure apart from reading the CSV) -------------------------------------------------
def parse_bands(text: str, where: str) -> list[int | str]:
    """``"4,3,2,8"`` / ``"4 3 2 8"`` / ``"VV;VH"`` -> band list (1-based ints or names)."""
    items = [t for t in text.replace(";", ",").replace(" ", ",").split(",") if t.strip()]
    if not items:
        raise UsageError(f"{where}: empty band list; give e.g. 4,3,2,8 or leave the cell empty")
    from mfaf_cli.coreg.align import band_tokens

    try:
        return band_tokens(items)
    except ValueError as err:
        raise UsageError(f"{where}: {err}") from None


def resolve_path(value: str, base: Path) -> str:
    """A CSV path cell: ``~`` expanded, relative paths taken from the CSV's folder; GDAL
    virtual paths (``/vsi...``) and URLs kept as they are."""
    if value.startswith("/vsi") or "://" in value:
        return value
    p = Path(value).expanduser()
    return os.fspath(p if p.is_absolute() else base / p)


def _input_cell(value: str, base: Path) -> str | list[str]:
    """A modality cell: one path, or ``a.tif;b.tif`` for files stacked into one input."""
    parts = [v.strip() for v in value.split(";") if v.strip()]
    if len(parts) > 1:
        return [resolve_path(v, base) for v in parts]
    return resolve_path(parts[0] if parts else value, base)


def _data_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines that are not blank and not ``#`` comments."""
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            out.append((i, line))
    return out


def read_scenes(csv_path: PathLike, default_bands: Mapping[str, Sequence[int | str]] | None = None
                ) -> list[Scene]:  # fmt: skip
    """Parse and check a batch CSV; any problem is a :class:`UsageError` naming the line.

    Checks: the file exists and has a header with an ``output`` column, no unknown or repeated
    columns, at least one scene, each row has an output and at least one input, band cells
    parse and belong to an input of that row, every row gives the same modalities (one batch
    runs one model) and no output path is used twice.
    """
    path = Path(csv_path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise UsageError(f"batch file {path} {what}; give a CSV file with one scene per row")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"batch file {path} cannot be read as UTF-8 text ({err})") from None
    lines = _data_lines(text)
    if not lines:
        raise UsageError(
            f"batch file {path} is empty; it needs a header (e.g. optical,sar,output) "
            "and one row per scene"
        )
    try:
        rows = list(csv.reader([ln for _, ln in lines], skipinitialspace=True))
    except csv.Error as err:
        raise UsageError(f"batch file {path} is not valid CSV ({err})") from None
    header = [h.strip().lower() for h in rows[0]]
    where0 = f"{path.name} line {lines[0][0]}"
    unknown = [h for h in header if h not in KNOWN_COLUMNS]
    if unknown:
        raise UsageError(
            f"{where0}: unknown column {unknown[0]!r}; columns are {', '.join(KNOWN_COLUMNS)}"
        )
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise UsageError(f"{where0}: column {dup[0]!r} appears twice in the header")
    if "output" not in header:
        raise UsageError(f"{where0}: the header has no 'output' column (the label map per scene)")
    if not any(m in header for m in ALL_MODALITIES):
        raise UsageError(
            f"{where0}: the header has no input column; add {', '.join(ALL_MODALITIES)} columns"
        )
    if len(rows) < 2:
        raise UsageError(f"batch file {path} has a header but no scenes")

    base = path.absolute().parent
    defaults = {m: list(v) for m, v in (default_bands or {}).items() if v}
    scenes: list[Scene] = []
    for (lineno, _), row in zip(lines[1:], rows[1:], strict=True):
        where = f"{path.name} line {lineno}"
        if len(row) > len(header):
            raise UsageError(
                f"{where}: {len(row)} cells but the header has {len(header)} columns "
                '(quote band lists that contain commas, e.g. "4,3,2,8")'
            )
        cells = {h: (row[i].strip() if i < len(row) else "") for i, h in enumerate(header)}
        scenes.append(_scene_from_cells(cells, where, lineno, base, defaults))

    first = scenes[0]
    for s in scenes[1:]:
        if set(s.inputs) != set(first.inputs):
            raise UsageError(
                f"{path.name} line {s.line} gives {' + '.join(sorted(s.inputs))} but line "
                f"{first.line} gives {' + '.join(sorted(first.inputs))}; one batch runs one "
                "model, so every row needs the same modalities"
            )
    seen: dict[str, int] = {}
    for s in scenes:
        for out in s.outputs.values():
            key = os.path.normcase(os.path.abspath(out))
            if key in seen:
                raise UsageError(
                    f"{path.name} line {s.line}: output {out} is also written by line "
                    f"{seen[key]}; give every output its own path"
                )
            seen[key] = s.line
    return scenes


def _scene_from_cells(
    cells: Mapping[str, str],
    where: str,
    lineno: int,
    base: Path,
    defaults: Mapping[str, list[int | str]],
) -> Scene:
    inputs = {m: _input_cell(cells[m], base) for m in ALL_MODALITIES if cells.get(m)}
    if not inputs:
        raise UsageError(f"{where}: no input raster; fill at least one of the modality columns")
    if not cells.get("output"):
        raise UsageError(f"{where}: empty 'output' cell; every scene needs a label map path")
    bands: dict[str, list[int | str]] = {}
    for m in ALL_MODALITIES:
        cell = cells.get(f"{m}_bands", "")
        if cell:
            if m not in inputs:
                raise UsageError(f"{where}: {m}_bands is given but the {m} cell is empty")
            bands[m] = parse_bands(cell, f"{where}, {m}_bands")
        elif m in defaults and m in inputs:
            bands[m] = list(defaults[m])
    extra = {k: resolve_path(cells[k], base) if cells.get(k) else None
             for k in ("vector", "probabilities", "confidence", "exclusion")}  # fmt: skip
    output = resolve_path(cells["output"], base)
    return Scene(
        line=lineno,
        name=cells.get("scene") or cells["output"],
        inputs=inputs,
        output=output,
        bands=bands,
        **extra,
    )


def all_outputs_exist(scene: Scene) -> bool:
    """True when every output of the scene is already there (``--skip-existing``)."""
    from mfaf_cli.vectorize.polygons import output_files

    for kind, p in scene.outputs.items():
        files = output_files(p) if kind == "vector" else [Path(p)]
        if not Path(files[0]).exists():
            return False
    return True


# ---- running ----------------------------------------------------------------------------
def _create_predictor(
    model: Any,
    scenes: Sequence[Scene],
    *,
    spec: Any,
) -> Any:
    """Resolve and load the model once for the whole batch (band counts from the first row
    that selects bands, for untrained registry models)."""
    from mfaf_cli.pipeline.predict import load_predictor, with_fallbacks

    modalities = tuple(m for m in ALL_MODALITIES if m in scenes[0].inputs)
    in_ch: dict[str, int] = {}
    for s in scenes:
        for m, b in s.bands.items():
            in_ch.setdefault(m, len(b))
    predictor, source = load_predictor(model, modalities, in_channels=in_ch or None, spec=spec)
    # the record's per-pixel fallbacks, as a single run maps them (pipeline/fallback.py)
    predictor = with_fallbacks(predictor, source, spec)
    if getattr(predictor, "name", None) is None:
        try:
            predictor.name = source.name
        except AttributeError:  # a predictor with slots / read-only attributes
            pass
    return predictor


def _error_text(err: BaseException) -> str:
    """One line saying what went wrong (MfafError messages as they are, others typed)."""
    text = str(err) if isinstance(err, MfafError) else f"{type(err).__name__}: {err}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def predict_batch(
    csv_path: PathLike,
    model: Any = None,
    *,
    read: ReadSpec | None = None,
    write: WriteSpec | None = None,
    spec: InferenceSpec | None = None,
    skip_existing: bool = False,
    predictor: Any = None,
    shard: Any = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    **fields: Any,
) -> list[dict[str, Any]]:
    """Predict every scene of a batch CSV with one model load.

    Args:
        csv_path: the scene list (see the module docstring for its columns).
        model: ``--model`` spec, or None for the default model of the CSV's modalities.
        read: what every scene reads besides its CSV cells (:class:`ReadSpec` without
            inputs: grid overrides, SAR units, nodata; its ``bands`` are the default band
            lists, for rows without a ``<modality>_bands`` cell).
        write: how every scene writes (:class:`WriteSpec` without paths, a template: format,
            dtypes, ``overwrite`` (else a scene whose outputs exist fails), ``mask_excluded``).
        spec: how to infer (:class:`InferenceSpec`), as for
            :func:`mfaf_cli.pipeline.predict.predict`.
        skip_existing: leave scenes whose outputs all exist alone (status ``"skipped"``).
        predictor: an already created Predictor (then ``model`` and the engine options are
            not used).
        shard: ``"I/N"`` or a :class:`~mfaf_cli.pipeline.shard.Shard`: predict only scenes
            I, I+N, ... (default: from torchrun / Slurm array variables, else all).
        on_result: called with each record as soon as its scene is done (for streaming
            JSON lines); the same records are returned.
        progress: a progress bar per scene (the first process of a sharded run only).
        fields: convenience keywords, fields of the three objects (``overwrite=True``).

    Returns:
        One record per scene, in CSV order: ``{"scene", "line", "status": "ok"|"error"|
        "skipped", ...}``; ``ok`` records hold the :class:`PredictResult` fields, ``error``
        records an ``"error"`` message.

    Raises:
        UsageError (and model/weights errors) for problems found before any scene runs;
        per-scene problems are recorded, not raised. KeyboardInterrupt/SystemExit stop the
        batch.
    """
    from mfaf_cli.pipeline.predict import predict, run_objects

    read, write, spec = run_objects(
        read or ReadSpec(), write or WriteSpec(template=True), spec, fields
    )
    _check_templates(read, write)
    scenes, device, share = _my_scenes(read_scenes(csv_path, read.bands), shard, spec.device)
    if not scenes:
        return []
    spec = replace(spec, device=device)
    progress = progress and share.shows_progress
    predictor = _batch_predictor(predictor, model, scenes, spec)
    records: list[dict[str, Any]] = []
    for s in scenes:
        head: dict[str, Any] = {"scene": s.name, "line": s.line}
        if skip_existing and all_outputs_exist(s):
            rec = head | {"status": "skipped", "outputs": s.outputs}
        else:
            try:
                _make_output_folders(s)
                result = predict(
                    read.with_inputs(s.inputs, s.bands),
                    write.for_paths(label=s.output, probabilities=s.probabilities,
                                    confidence=s.confidence, vector=s.vector,
                                    exclusion=s.exclusion),
                    spec=spec, predictor=predictor, progress=progress,
                )  # fmt: skip
            except Exception as err:  # a failing scene must not stop the batch
                log.debug("scene %s failed", s.name, exc_info=True)
                rec = head | {"status": "error", "error": _error_text(err)}
            else:
                rec = head | {"status": "ok"} | result.to_dict()
        records.append(rec)
        if on_result is not None:
            on_result(rec)
    return records


def _check_templates(read: ReadSpec, write: WriteSpec) -> None:
    """Inputs and output paths come from the CSV, never from the objects."""
    if read.inputs:
        raise UsageError("inputs come from the batch CSV, not from an option")
    for key, path in {**write.rasters(), "vector": write.vector, "preview": write.preview}.items():
        if path is not None:
            key = "output" if key == "label" else key
            raise UsageError(f"{key} comes from the batch CSV, not from an option")


def _my_scenes(scenes: list[Scene], shard: Any, device: str) -> tuple[list[Scene], str, Shard]:
    """This process's share of the scenes (``--shard``, torchrun, Slurm array), its device
    (one GPU per rank) and the share itself."""
    from mfaf_cli.pipeline.shard import device_for, resolve_shard

    share = resolve_shard(shard)
    if share.count <= 1:
        return scenes, device, share
    mine = share.take(scenes)
    log.info("shard %d/%d (%s): %d scenes", share.index, share.count, share.source, len(mine))
    return mine, device_for(share, device), share


def _batch_predictor(predictor: Any, model: Any, scenes: list[Scene], spec: Any) -> Any:
    """The one predictor of the batch (loaded here unless given), checked against the first
    scene's modalities and the tile."""
    from mfaf_cli.pipeline.predict import check_modalities
    from mfaf_cli.tiling.windows import check_tile

    if predictor is None:
        t0 = time.perf_counter()
        predictor = _create_predictor(model, scenes, spec=spec)
        log.info("model loaded once for %d scenes in %.1f s", len(scenes), time.perf_counter() - t0)
    meta = predictor.meta
    name = getattr(predictor, "name", None) or meta.arch
    check_modalities(tuple(scenes[0].inputs), meta, name)
    check_tile(int(meta.tile_size if spec.tile is None else spec.tile), meta.divisor, meta.arch)
    return predictor


def _make_output_folders(scene: Scene) -> None:
    """Create the folders of a scene's outputs (a CSV often names maps/<scene>.tif)."""
    for out in scene.outputs.values():
        try:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputPathError(
                f"cannot create output folder {Path(out).parent} ({err.strerror})"
            ) from None


def summarise(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Counts per status, e.g. ``{"ok": 7, "skipped": 2, "error": 1}``."""
    out = {"ok": 0, "skipped": 0, "error": 0}
    for r in records:
        out[str(r.get("status"))] = out.get(str(r.get("status")), 0) + 1
    return out

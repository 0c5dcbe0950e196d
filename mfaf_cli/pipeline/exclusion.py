"""The exclusion check of a run: reason codes for rows of the output grid.

The model sees normalised inputs; the checks of :mod:`mfaf_cli.applicability` need the raw
values (sensor units). A pixel's code depends only on its own raw values, so a crop of a
scene gets exactly the codes of the whole scene there, and the codes can be computed where
the values are at hand:

* :class:`StoredExcluder` (predict): the run's reader threads compute the codes from the raw
  values they read anyway, before normalisation (:mod:`mfaf_cli.pipeline.planes`), and the
  sink takes them for finished rows;
* :class:`Excluder` (evaluate, split scenes, and rules whose alternatives read bands the
  model does not take): reads the inputs a second time, on the run's own output grid, as the
  sink receives finished rows (from the merge thread; it owns its file handles).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from mfaf_cli.applicability import NODATA, Checks
from mfaf_cli.coreg.align import AlignedScene, file_descriptions
from mfaf_cli.coreg.grid import Grid
from mfaf_cli.errors import UsageError
from mfaf_cli.io.inputs import open_raster
from mfaf_cli.metadata import MEANINGS, RESAMPLING_KIND, ModelMeta, identify_band
from mfaf_cli.pipeline.planes import PlaneStore, PlaneTap
from mfaf_cli.scratch import scratch
from mfaf_cli.tiling.windows import Window

log = logging.getLogger("mfaf")


class _ChecksView:
    """What the output set asks of either excluder: the reasons and which rule alternative
    runs (both from ``self.checks``)."""

    checks: Checks

    @property
    def reasons(self) -> list[str]:
        return self.checks.reasons

    @property
    def alternatives(self) -> dict[str, dict[str, Any]]:
        """Which alternative of each rule runs on these inputs (see :meth:`Checks.alternatives`)."""
        return self.checks.alternatives()


class Excluder(_ChecksView):
    """``excluder(row0, col0, valid) -> uint8 codes``: a context manager (opens the inputs)."""

    def __init__(
        self,
        inputs: Mapping[str, str | os.PathLike[str]],
        grid: Grid,
        meta: ModelMeta,
        checks: Checks,
        *,
        bands: Any = None,
        sar_units: str = "auto",
    ) -> None:
        self.checks = checks
        need = set(checks.ranges) | {checks.locations[b][0] for r in checks.rules for b in r.bands}
        need |= {MEANINGS[b].modality for b in checks.extra_bands}  # rules' other alternatives
        self._inputs = {m: p for m, p in inputs.items() if m in need}
        self._grid, self._meta, self._bands, self._units = grid, meta, bands, sar_units
        self._scene: AlignedScene | None = None
        self._extra_scene: AlignedScene | None = None

    def __enter__(self) -> Excluder:
        bands = {m: v for m, v in (self._bands or {}).items() if m in self._inputs}
        model_inputs = {m: p for m, p in self._inputs.items() if m in self._meta.modality_names}
        self._scene = AlignedScene(
            model_inputs, self._grid, bands=bands, units=self._units, meta=self._meta, quiet=True
        ).__enter__()
        try:
            self._open_extra_bands()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _open_extra_bands(self) -> None:
        """Locate the extra bands the rules' alternatives read in the user's inputs (by the
        band identity of their descriptions or file names, as band selection does) and open
        them on the same grid; the checks then run the first alternative they complete."""
        located: dict[str, tuple[str, int]] = {}
        inputs: dict[str, str | os.PathLike[str]] = {}
        indexes: dict[str, list[int | str]] = {}
        for mod, found in find_extra_bands(self._inputs, self.checks).items():
            key = f"{mod}+"
            for k, (meaning, index) in enumerate(found.items()):
                located[meaning] = (key, k)
                indexes.setdefault(key, []).append(index)
            inputs[key] = self._inputs[mod]
        if not inputs:
            return
        kinds = {k: RESAMPLING_KIND.get(k[:-1], "bilinear") for k in inputs}
        self._extra_scene = AlignedScene(
            inputs, self._grid, bands=indexes, units=self._units, kinds=kinds, quiet=True
        ).__enter__()
        self.checks = self.checks.with_bands(located)

    def __exit__(self, *exc: object) -> None:
        for scene in (self._scene, self._extra_scene):
            if scene is not None:
                scene.close()
        self._scene = self._extra_scene = None

    def __call__(self, row0: int, col0: int, valid: np.ndarray) -> np.ndarray:
        assert self._scene is not None, "Excluder used without 'with'"
        h, w = valid.shape
        win = Window(row0, col0, h, w)
        raw = {m: self._scene.read_modality(m, win)[0] for m in self._scene.modalities}
        if self._extra_scene is not None:
            raw |= {m: self._extra_scene.read_modality(m, win)[0]
                    for m in self._extra_scene.modalities}  # fmt: skip
        return self.checks.codes(raw, valid)


#: Pixels of a read whose codes are computed at once (rows of it: 12 of a 2048-px panel,
#: 192 KB per float64 temporary, below the CLI's 256 KB mmap threshold).
CODE_PIXELS = 24_576


class StoredExcluder(_ChecksView):
    """:class:`Excluder`'s codes without a second read: the readers compute each pixel's
    code from the raw values they read (:meth:`tap`, below any fallback mask, like the
    excluder's own read) and this takes them for finished rows. For checks that read only
    the model's bands (:func:`reads_model_bands`); a context manager like :class:`Excluder`."""

    def __init__(self, checks: Checks) -> None:
        self.checks, self.store = checks, PlaneStore()

    def tap(self, scene: Any) -> PlaneTap:
        """``scene`` read through, each read's reason codes kept for the sink."""
        return PlaneTap(scene, self._pixel_codes, self.store)

    def _pixel_codes(self, raw: Mapping[str, np.ndarray]) -> np.ndarray:
        """The codes of a read, :data:`CODE_PIXELS` at a time (whole rows): the checks'
        float64 temporaries then stay small (reused by the allocator, in cache) instead of
        fresh pages per chunk (measured 2x the CPU on whole 2048-wide chunks)."""
        h, w = next(iter(raw.values())).shape[1:]
        rows = max(1, CODE_PIXELS // max(w, 1))
        out = np.empty((h, w), dtype=np.uint8)
        for r in range(0, h, rows):
            part = {k: v[:, r : r + rows] for k, v in raw.items()}
            out[r : r + rows] = self.checks.pixel_codes(part, out[r : r + rows].shape)
        return out

    def __enter__(self) -> StoredExcluder:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, row0: int, col0: int, valid: np.ndarray) -> np.ndarray:
        """The rows' codes, in the calling thread's reused array (the sink counts and copies
        them before it asks for the next rows)."""
        codes = scratch("exclusion.codes", valid.shape, np.uint8)
        return self.store.take(row0, col0, valid, NODATA, out=codes)


def find_extra_bands(
    inputs: Mapping[str, str | os.PathLike[str]], checks: Checks
) -> dict[str, dict[str, int]]:
    """modality -> {meaning: 1-based band} of the extra bands the rules' alternatives read
    (:attr:`Checks.extra_bands`) that the inputs hold; modalities holding none are left out.
    Reads the files' headers only."""
    wanted: dict[str, list[str]] = {}
    for b in checks.extra_bands:
        wanted.setdefault(MEANINGS[b].modality, []).append(b)
    out = {}
    for mod, meanings in wanted.items():
        if mod in inputs:
            found = extra_band_indexes(inputs[mod], meanings, mod)
            if found:
                out[mod] = found
    return out


def reads_model_bands(inputs: Mapping[str, str | os.PathLike[str]], checks: Checks) -> bool:
    """Whether the checks read only bands the model takes on these inputs (no rule's earlier
    alternative finds its extra bands there), so the run's own reads hold all they need."""
    return not checks.extra_bands or not find_extra_bands(inputs, checks)


def extra_band_indexes(
    path: str | os.PathLike[str], meanings: Sequence[str], modality: str
) -> dict[str, int]:
    """meaning -> 1-based band of ``path`` that its description (or, for a one-band file, its
    name) identifies as that meaning; meanings no band or two bands say are left out."""
    ds = open_raster(path, modality)
    try:
        described = file_descriptions(os.fspath(path), ds.count, ds.descriptions)
    finally:
        ds.close()
    ids = [identify_band(d) for d in described]
    out: dict[str, int] = {}
    for meaning in meanings:
        hits = [k + 1 for k, i in enumerate(ids) if i is not None and i.meaning == meaning]
        if len(hits) == 1:
            out[meaning] = hits[0]
    return out


def checks_for(meta: ModelMeta, model_name: str, *, wanted: bool) -> Checks | None:
    """The model's checks, or None when it carries none; ``wanted`` (``--exclusion`` or
    ``--mask-excluded`` given) makes a model without any an error."""
    checks = Checks.of(meta)
    if not checks.empty:
        return checks
    if wanted:
        raise UsageError(
            f"model {model_name} records no training range and no applicability rules, so "
            "there is nothing to exclude; drop --exclusion/--mask-excluded (retrain with a "
            "current mfaf to record the range, or add --rule NAME=EXPR at train time)"
        )
    return None


def excluded_note(summary: Mapping[str, Any]) -> str:
    """``12.5 % of valid pixels excluded (snow 12.0 %, outside-training-range 0.5 %)``; a rule
    with alternatives says which ran (``snow by alternative 1 of 2 12.0 %``)."""
    rules = summary.get("rules") or {}

    def which(name: str) -> str:
        alt = rules.get(name)
        if not alt or alt["of"] < 2:
            return ""
        return f" by alternative {alt['alternative']} of {alt['of']}"

    parts = [f"{k}{which(k)} {100 * v:.1f} %" for k, v in summary["reasons"].items()]
    return f"{100 * summary['excluded']:.1f} % of valid pixels excluded ({', '.join(parts)})"


@contextlib.contextmanager
def with_excluder(excluder: Any, make_outputs: Callable[[Any], Any]) -> Iterator[Any]:
    """Open ``excluder`` (when there is one) around the outputs it feeds; any optional
    per-row context manager the outputs read from (the source mapper too) goes this way."""
    if excluder is None:
        with make_outputs(None) as out:
            yield out
        return
    with excluder, make_outputs(excluder) as out:
        yield out


def check_distinct_outputs(paths: Mapping[str, Any]) -> None:
    """Two outputs of one run may not share a file (flag -> path; None: not asked for)."""
    seen: dict[str, str] = {}
    for flag, p in paths.items():
        if p is None:
            continue
        key = os.path.realpath(os.fspath(p))
        if key in seen:
            raise UsageError(f"{flag} {p} is also the {seen[key]} path (the same output path "
                             "given twice); give each output its own file")  # fmt: skip
        seen[key] = flag


def warn_if_excluded(summary: Mapping[str, Any] | None, masked: bool) -> None:
    """The warning of a run that excluded more than WARN_FRACTION of its valid pixels."""
    from mfaf_cli.applicability import WARN_FRACTION

    if summary is None or summary["excluded"] <= WARN_FRACTION:
        return
    how = "written as nodata (--mask-excluded)" if masked else (
        "still labelled: see --exclusion, or drop them with --mask-excluded")  # fmt: skip
    log.warning("%s, where the model cannot be trusted; they are %s", excluded_note(summary), how)

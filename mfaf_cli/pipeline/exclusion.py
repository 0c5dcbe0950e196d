"""The exclusion check of a run: reason codes for rows of the output grid.

The model sees normalised inputs; the checks of :mod:`mfaf_cli.applicability` need the raw
values (sensor units), so the :class:`Excluder` reads the inputs a second time, on the run's
own output grid, block by block as the sink receives finished rows (from the merge thread;
it owns its file handles). A pixel's code depends only on its own raw values, so a crop of a
scene gets exactly the codes of the whole scene there.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from mfaf_cli.applicability import Checks
from mfaf_cli.coreg.align import AlignedScene
from mfaf_cli.coreg.grid import Grid
from mfaf_cli.errors import UsageError
from mfaf_cli.metadata import ModelMeta
from mfaf_cli.tiling.windows import Window

log = logging.getLogger("mfaf")


class Excluder:
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
        self._inputs = {m: p for m, p in inputs.items() if m in need}
        self._grid, self._meta, self._bands, self._units = grid, meta, bands, sar_units
        self._scene: AlignedScene | None = None

    @property
    def reasons(self) -> list[str]:
        return self.checks.reasons

    def __enter__(self) -> Excluder:
        bands = {m: v for m, v in (self._bands or {}).items() if m in self._inputs}
        self._scene = AlignedScene(
            self._inputs, self._grid, bands=bands, units=self._units, meta=self._meta, quiet=True
        ).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._scene is not None:
            self._scene.close()
            self._scene = None

    def __call__(self, row0: int, col0: int, valid: np.ndarray) -> np.ndarray:
        assert self._scene is not None, "Excluder used without 'with'"
        h, w = valid.shape
        raw = {m: self._scene.read_modality(m, Window(row0, col0, h, w))[0] for m in self._inputs}
        return self.checks.codes(raw, valid)


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
    """``12.5 % of valid pixels excluded (snow 12.0 %, outside-training-range 0.5 %)``."""
    parts = [f"{k} {100 * v:.1f} %" for k, v in summary["reasons"].items()]
    return f"{100 * summary['excluded']:.1f} % of valid pixels excluded ({', '.join(parts)})"


@contextlib.contextmanager
def with_excluder(
    excluder: Excluder | None, make_outputs: Callable[[Excluder | None], Any]
) -> Iterator[Any]:
    """Open ``excluder`` (when there is one) around the outputs it feeds."""
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

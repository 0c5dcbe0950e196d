"""Per-pixel fallback: a map wherever any sensor sees.

A fusion model needs every modality at a pixel; where one is missing (nodata, or optical
masked by ``--optical-mask``) a *fallback* model that takes the others maps the pixel instead
(a SAR-only model under clouds). Three pieces, each per pixel, so that the result of a pixel
depends only on the windows that cover it (anchored windows: independent of the run's extent):

* :class:`FallbackScene` wraps the scene the core reads: it applies the optical mask (masked
  optical pixels become NaN, i.e. missing), computes each pixel's **source code**
  (:data:`SOURCE_NAMES`) from which modalities it has, hands the codes to the predictor as an
  extra input plane (:data:`SOURCE_KEY`), and marks valid exactly the pixels some model maps;
* :class:`FallbackPredictor` runs the main model on every window, and each fallback only on
  the windows holding pixels of its code, then takes the fallback's probabilities at those
  pixels: one set of probabilities per window, blended by the one streamed merger;
* :class:`SourceCodes` gives the codes of finished output rows, as the scene computed them
  while the readers read (kept by :mod:`~mfaf_cli.pipeline.planes`), for ``--source`` and
  the fractions in ``--json``.

Codes: 0 none (no model sees the pixel: nodata), 1 fusion (the main model), 2 + i: the
fallback for a missing ``meta.modalities[i]`` (optical, sar: 2 SAR-only, 3 optical-only).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mfaf_cli.coreg.align import AlignedScene
from mfaf_cli.coreg.cloudmask import MASK_INPUT, OpticalMask
from mfaf_cli.errors import UsageError
from mfaf_cli.metadata import ModelMeta
from mfaf_cli.normalize import apply_normalisation
from mfaf_cli.pipeline.planes import PlaneStore, PlaneTap
from mfaf_cli.scratch import scratch

log = logging.getLogger("mfaf")

#: The extra input plane the scene hands the predictor: (1, h, w) float32 source codes.
SOURCE_KEY = "_source"
#: Prefix of raw (un-normalised) copies of a modality, for a fallback normalising otherwise.
RAW_PREFIX = "_raw:"
NONE, FUSION = 0, 1
#: A fallback name meaning "the main model itself, the missing modality fed as missing (0 after
#: normalisation)": for fusion models trained with ``--modality-dropout`` (training/dropout.py).
SELF = "self"


def source_names(meta: ModelMeta) -> list[str]:
    """Category names of the codes: ``none``, ``fusion``, then one per missing modality
    (named by what is left: ``sar-only``)."""
    names = ["none", "fusion"]
    for spec in meta.modalities:
        rest = [m for m in meta.modality_names if m != spec.name]
        names.append("-".join(rest) + "-only" if rest else f"without-{spec.name}")
    return names


#: The names for the usual optical + SAR fusion model (documentation and tests).
SOURCE_NAMES = ("none", "fusion", "sar-only", "optical-only")


def fallback_code(meta: ModelMeta, missing: str) -> int:
    """The source code of pixels mapped by the fallback for a missing ``missing``."""
    return 2 + meta.modality_names.index(missing)


@dataclass(frozen=True)
class Coverage:
    """What a run maps: the main model's modalities, the missing modalities that have a
    fallback, and the optical mask (or None)."""

    modalities: tuple[str, ...]
    fallbacks: tuple[str, ...] = ()
    mask: OpticalMask | None = None

    def codes(self, available: Mapping[str, np.ndarray]) -> np.ndarray:
        """(h, w) uint8 source codes from each modality's (h, w) availability."""
        shape = next(iter(available.values())).shape
        codes = np.zeros(shape, np.uint8)
        every = np.logical_and.reduce([available[m] for m in self.modalities])
        codes[every] = FUSION
        for missing in self.fallbacks:
            rest = [available[m] for m in self.modalities if m != missing]
            got = np.logical_and.reduce(rest) & ~available[missing] & (codes == NONE)
            codes[got] = 2 + self.modalities.index(missing)
        return codes


def _inside(window: Any, height: int, width: int) -> np.ndarray:
    """(h, w) bool: the window's pixels that lie inside a ``height`` x ``width`` grid."""
    r0w, c0w, hw, ww = (
        int(window.row_off),
        int(window.col_off),
        int(window.height),
        int(window.width),
    )
    inside = np.zeros((hw, ww), dtype=bool)
    r0, c0 = max(0, r0w), max(0, c0w)
    r1, c1 = min(height, r0w + hw), min(width, c0w + ww)
    if r1 > r0 and c1 > c0:
        inside[r0 - r0w : r1 - r0w, c0 - c0w : c1 - c0w] = True
    return inside


class FallbackScene:
    """A scene whose reads carry source codes (see the module doc); everything else is the
    wrapped scene's. ``raw``: modalities also handed on un-normalised (``_raw:NAME``)."""

    def __init__(self, scene: Any, coverage: Coverage, raw: tuple[str, ...] = ()) -> None:
        self.scene, self.coverage, self.raw = scene, coverage, tuple(raw)
        self._mask: AlignedScene | None = None
        if coverage.mask is not None:
            self._mask = AlignedScene({MASK_INPUT: coverage.mask.path}, scene.grid, quiet=True)

    @property
    def band_counts(self) -> dict[str, int]:
        counts = dict(self.scene.band_counts)
        counts.update({RAW_PREFIX + m: counts[m] for m in self.raw})
        return counts | {SOURCE_KEY: 1}

    def read(
        self, window: Any, out: Mapping[str, np.ndarray] | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        inner = None if out is None else {k: v for k, v in out.items() if k in self.scene.sources}
        arrays, _ = self.scene.read(window, out=inner)
        inside = _inside(window, self.scene.grid.height, self.scene.grid.width)
        available = {
            m: inside & np.isfinite(arrays[m]).all(axis=0) for m in self.coverage.modalities
        }
        if self._mask is not None and "optical" in arrays:
            vals = self._mask.read(window)[0][MASK_INPUT]
            assert self.coverage.mask is not None
            masked = self.coverage.mask.masked(vals) & inside
            arrays["optical"][:, masked] = np.nan
            available["optical"] &= ~masked
        codes = self.coverage.codes(available)
        arrays[SOURCE_KEY] = _into(out, SOURCE_KEY, codes[None].astype(np.float32))
        for m in self.raw:
            arrays[RAW_PREFIX + m] = _into(out, RAW_PREFIX + m, arrays[m])
        return arrays, codes != NONE

    def close(self) -> None:
        if self._mask is not None:
            self._mask.close()
            self._mask = None

    def close_thread_handles(self, idents: Any) -> None:
        self.scene.close_thread_handles(idents)
        if self._mask is not None:
            self._mask.close_thread_handles(idents)

    def __getattr__(self, name: str) -> Any:  # grid, sources, read_blocks, ...
        return getattr(self.scene, name)


def _into(out: Mapping[str, np.ndarray] | None, key: str, values: np.ndarray) -> np.ndarray:
    """``values`` copied into ``out[key]`` when the reader handed a buffer of that shape."""
    buf = None if out is None else out.get(key)
    if buf is None or buf.shape != values.shape:
        return values.copy() if key.startswith(RAW_PREFIX) else values
    buf[...] = values
    return buf


class FallbackPredictor:
    """The main predictor with fallbacks per missing modality (see the module doc).

    ``fallbacks``: missing modality -> predictor of a model taking the other modalities
    (same classes, same bands). Not a device-merger predictor: it hands numpy arrays only."""

    def __init__(self, main: Any, fallbacks: Mapping[str, Any], mask: OpticalMask | None) -> None:
        self.main = main
        self.meta: ModelMeta = main.meta
        #: missing modality -> predictor, or None: the main model maps those pixels itself
        self.fallbacks = dict(fallbacks)
        for missing, fb in self.fallbacks.items():
            if fb is not None:
                check_fallback(self.meta, fb.meta, missing, getattr(fb, "name", fb.meta.arch))
        self.coverage = Coverage(self.meta.modality_names, tuple(self.fallbacks), mask)
        #: modalities whose normalisation differs between the main model and a fallback
        self.raw = tuple(sorted({
            m for fb in self.fallbacks.values() if fb is not None for m in fb.meta.modality_names
            if fb.meta.modality(m).normalisation != self.meta.modality(m).normalisation
        }))  # fmt: skip
        #: windows each fallback ran on (missing modality -> count)
        self.windows_run = dict.fromkeys(self.fallbacks, 0)
        for attr in ("device", "engine", "precision", "threads", "source", "name"):
            if hasattr(main, attr):
                setattr(self, attr, getattr(main, attr))
        self.reader_bound = bool(getattr(main, "reader_bound", False))

    def wrap(self, scene: Any) -> FallbackScene:
        """The scene as this predictor reads it (codes, mask, raw copies)."""
        return FallbackScene(scene, self.coverage, self.raw)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        codes = batch[SOURCE_KEY][:, 0]
        probs = np.array(self.main({m: batch[m] for m in self.meta.modality_names}), copy=True)
        for missing, fb in self.fallbacks.items():
            if fb is None:  # SELF: the main model's probabilities stand
                continue
            need = codes == fallback_code(self.meta, missing)
            idx = np.flatnonzero(need.reshape(len(need), -1).any(axis=1))
            if idx.size == 0:
                continue
            self.windows_run[missing] += int(idx.size)
            out = fb({m: self._input(batch, fb.meta, m, idx) for m in fb.meta.modality_names})
            for j, i in enumerate(idx):
                probs[i][:, need[i]] = out[j][:, need[i]]
        return probs

    def _input(self, batch: Mapping[str, np.ndarray], meta: ModelMeta, m: str, idx: Any) -> Any:
        if m not in self.raw:
            return batch[m][idx]
        norm = meta.modality(m).normalisation
        return np.stack([apply_normalisation(a, norm) for a in batch[RAW_PREFIX + m][idx]])


def check_fallback(main: ModelMeta, fb: ModelMeta, missing: str, name: str) -> None:
    """A fallback for a missing ``missing`` takes exactly the main model's other modalities,
    with the same bands, and predicts the same classes (one line otherwise)."""
    if missing not in main.modality_names:
        raise UsageError(
            f"fallback {name} is for a missing {missing}, which the model does not take"
        )
    want = tuple(m for m in main.modality_names if m != missing)
    if set(fb.modality_names) != set(want):
        raise UsageError(
            f"fallback {name} for a missing {missing} takes {', '.join(fb.modality_names)}; "
            f"it must take {', '.join(want)}"
        )
    if [c.name for c in fb.classes] != [c.name for c in main.classes]:
        raise UsageError(
            f"fallback {name}'s classes ({', '.join(c.name for c in fb.classes)}) differ from "
            f"the main model's ({', '.join(c.name for c in main.classes)})"
        )
    for m in want:
        if fb.modality(m).n_bands != main.modality(m).n_bands:
            raise UsageError(
                f"fallback {name} takes {fb.modality(m).n_bands} {m} bands, the main model "
                f"{main.modality(m).n_bands}: they must read the same bands"
            )
        if fb.modality(m).normalisation.mode != "fixed" and (
            fb.modality(m).normalisation != main.modality(m).normalisation
        ):
            raise UsageError(
                f"fallback {name} normalises {m} by scene percentiles unlike the main model; "
                "fallbacks need fixed normalisation"
            )


class SourceCodes:
    """``codes(row0, col0, valid) -> uint8 source codes`` of output rows, as the run's
    :class:`FallbackScene` computed them while reading (:meth:`tap`, kept by grid position):
    no second read of the inputs and the mask. A context manager (nothing to open), like the
    exclusion check it sits beside."""

    def __init__(self, meta: ModelMeta) -> None:
        self.names = source_names(meta)
        self.store = PlaneStore()

    def tap(self, scene: Any) -> PlaneTap:
        """The fallback scene read through, each read's source codes kept for the sink."""
        return PlaneTap(scene, source_plane, self.store)

    def __enter__(self) -> SourceCodes:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, row0: int, col0: int, valid: np.ndarray) -> np.ndarray:
        """The rows' codes, in the calling thread's reused array (the sink counts and copies
        them before it asks for the next rows)."""
        codes = scratch("source.codes", valid.shape, np.uint8)
        return self.store.take(row0, col0, valid, NONE, out=codes)


def source_plane(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """(h, w) uint8 source codes of a :class:`FallbackScene` read's arrays."""
    return arrays[SOURCE_KEY][0].astype(np.uint8)


def source_fractions(counts: np.ndarray, names: list[str]) -> dict[str, float]:
    """Fraction of the grid's pixels per source name (``--json``'s ``sources``)."""
    total = int(counts.sum())
    return {n: round(float(counts[k]) / total, 6) if total else 0.0 for k, n in enumerate(names)}

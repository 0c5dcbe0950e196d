"""Which input values are data: ``--nodata`` overrides and physically impossible values.

A fill value the file does not tag as nodata (Sentinel-2's 0, a processor's −9999 "dB") would
otherwise be read as a measurement, and a model maps it to *some* class (water, usually).
Two guards: the user's ``--nodata MOD=VALUE`` (as gdalwarp's ``-srcnodata``), and values no
sensor can measure — SAR backscatter below −60 dB or above +40 dB, optical reflectance × 10⁴
below 0 or above 2 × 10⁴, and an optical pixel whose every band is 0 (Sentinel-2's NO_DATA) —
which are made invalid and counted, so a run says how many it dropped.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mfaf_cli.errors import UsageError

#: SAR backscatter no sensor measures: below −60 dB (under any noise floor) or above +40 dB.
SAR_DB_RANGE = (-60.0, 40.0)
#: Optical reflectance × 10⁴: negative, or above twice full reflectance.
REFLECTANCE_1E4_RANGE = (0.0, 2.0e4)
#: A record's optical unit that says "reflectance × 10⁴" (Sentinel-2 L1C / L2A digital numbers).
REFLECTANCE_1E4 = "reflectance_x1e4"

_OVERRIDES: contextvars.ContextVar[Mapping[str, float] | None] = contextvars.ContextVar(
    "mfaf_nodata", default=None
)


def parse_nodata(values: Iterable[str]) -> dict[str, float]:
    """``["sar=-9999", "optical=0"]`` → ``{"sar": -9999.0, "optical": 0.0}`` (``nan`` allowed)."""
    out: dict[str, float] = {}
    for text in values:
        mod, sep, value = text.partition("=")
        mod = mod.strip().lower()
        try:
            number = float(value)
        except ValueError:
            number = None  # type: ignore[assignment]
        if not sep or not mod or number is None:
            raise UsageError(f"--nodata {text!r}: give MODALITY=VALUE, e.g. --nodata sar=-9999")
        out[mod] = number
    return out


def check_nodata(nodata: Mapping[str, float] | None, inputs: Iterable[str]) -> None:
    """A ``--nodata`` for a modality the run does not read is a mistake, not a no-op."""
    given = list(inputs)
    for mod in nodata or {}:
        if mod not in given:
            raise UsageError(
                f"--nodata {mod}=...: no {mod} input is given (inputs: {', '.join(given)})"
            )


@contextlib.contextmanager
def nodata_overrides(nodata: Mapping[str, float] | None) -> Iterator[None]:
    """Every :class:`~mfaf_cli.coreg.align.AlignedScene` opened inside reads ``nodata``
    (modality → value) as the files' nodata, unless it is given its own."""
    token = _OVERRIDES.set(dict(nodata) if nodata else None)
    try:
        yield
    finally:
        _OVERRIDES.reset(token)


def current_overrides() -> Mapping[str, float]:
    return _OVERRIDES.get() or {}


def reflectance_scaled(spec: Any) -> bool:
    """Whether a model record's optical modality takes reflectance × 10⁴: its unit says so, or
    (records without an optical unit) its clip range is in the thousands, as S2 values are."""
    if spec is None or spec.name != "optical":
        return False
    if spec.units:
        return bool(spec.units == REFLECTANCE_1E4)
    high = spec.normalisation.clip_high
    return high is not None and 255.0 < max(high) <= REFLECTANCE_1E4_RANGE[1]


@dataclass
class Limits:
    """The physical range of one input (in its own units), and the impossible pixels seen,
    each source pixel once (a bitmap over the file, allocated on the first one)."""

    low: float
    high: float
    unit: str
    zero_fill: bool = False  # an all-zero pixel is a fill value (Sentinel-2 reflectance)
    shape: tuple[int, int] = (0, 0)
    _bits: np.ndarray | None = field(default=None, repr=False)
    _zeros: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def invalid(
        self, raw: np.ndarray, place: tuple[int, int] | None, valid: np.ndarray | None = None
    ) -> np.ndarray:
        """(h, w) True where a band is outside the range (or every band is 0); counted, where
        still ``valid`` (not nodata already), when ``place`` (the block's first row, col in
        the file) is given."""
        lo_all, hi_all = raw.min(), raw.max()  # the common case, all possible: two fast passes
        if hi_all <= self.high and (lo_all > 0 if self.zero_fill else lo_all >= self.low):
            return np.zeros(raw.shape[1:], dtype=bool)
        low, high = raw.min(axis=0), raw.max(axis=0)
        with np.errstate(invalid="ignore"):
            bad: np.ndarray = np.asarray((low < self.low) | (high > self.high))
            zero = (high == 0) & (low == 0) if self.zero_fill else None
        if zero is not None:
            bad |= zero
        news = bad if valid is None else bad & valid
        if place is not None and news.any():
            self._count(news, place, zero)
        return bad

    def _count(self, bad: np.ndarray, place: tuple[int, int], zero: np.ndarray | None) -> None:
        r0, c0 = place
        h, w = bad.shape
        b0, b1 = c0 // 8, math.ceil((c0 + w) / 8)
        with self._lock:
            if self._bits is None:
                self._bits = np.zeros((self.shape[0], math.ceil(self.shape[1] / 8)), np.uint8)
            block = np.unpackbits(self._bits[r0 : r0 + h, b0:b1], axis=1)
            fresh = bad & (block[:, c0 - 8 * b0 : c0 - 8 * b0 + w] == 0)
            if zero is not None:
                self._zeros += int((fresh & zero).sum())
            block[:, c0 - 8 * b0 : c0 - 8 * b0 + w] |= bad
            self._bits[r0 : r0 + h, b0:b1] = np.packbits(block, axis=1)[:, : b1 - b0]

    @property
    def count(self) -> int:
        """Source pixels found impossible so far."""
        return 0 if self._bits is None else int(np.unpackbits(self._bits).sum())

    def warning(self, name: str, path: str) -> str | None:
        """The one line a run prints about this input, or None when nothing was dropped."""
        n = self.count
        if not n:
            return None
        fill = f" or 0 in every band ({self._zeros:,}: Sentinel-2's fill)" if self._zeros else ""
        return (
            f"{name} {path}: {n:,} pixels treated as nodata: values outside the physical range "
            f"of {self.unit} ({self.low:g}..{self.high:g}){fill}; "
            f"if they are a fill value, say so with --nodata {name}=VALUE"
        )


def limits_for(kind: str, units: str, spec: Any, shape: tuple[int, int]) -> Limits | None:
    """The physical range of an input read as ``kind`` in ``units`` for the model record's
    modality ``spec`` (None: no range known, e.g. HSI, LiDAR, labels, linear SAR power)."""
    if kind == "sar" and units == "db":
        return Limits(*SAR_DB_RANGE, "SAR backscatter in dB", shape=shape)
    if reflectance_scaled(spec):
        return Limits(*REFLECTANCE_1E4_RANGE, "reflectance × 10⁴", zero_fill=True, shape=shape)
    return None

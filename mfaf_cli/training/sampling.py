"""Window sampling and class weights for imbalanced land cover.

Both start from one table computed once per run: the class histogram of every training window
(:func:`window_histograms`, label rasters only, one window at a time). From it:

* ``--sampling balanced`` draws windows with probability proportional to
  ``sum_c n_ic / N_c`` (``n_ic`` pixels of class c in window i, ``N_c`` in all windows): each
  class present gets the same total sampling mass, so a window holding a rare class is drawn
  more often than one of the dominant class alone; windows without labels are never drawn.
* ``--class-weights auto`` is median-frequency balancing (Eigen & Fergus 2015):
  ``freq_c = N_c / (pixels of the windows where c occurs)``, ``w_c = median(freq) / freq_c``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mfaf_cli.errors import UsageError
from mfaf_cli.metadata import ClassInfo
from mfaf_cli.training.config import SAMPLINGS as SAMPLINGS


def window_histograms(ds: Any, k: int, ignore_index: int) -> np.ndarray:
    """(windows, k) pixel counts per class of every window of ``ds`` (unaugmented)."""
    out = np.zeros((len(ds), k), dtype=np.int64)
    for i in range(len(ds)):
        mask = ds.window_labels(i) if hasattr(ds, "window_labels") else ds.raw(i)[1]
        ids = np.asarray(mask).reshape(-1)
        out[i] = np.bincount(ids[ids != ignore_index], minlength=k)[:k]
    return out


def balanced_window_weights(hist: np.ndarray) -> np.ndarray:
    """Sampling weight per window: ``sum_c n_ic / N_c`` (see the module docstring)."""
    totals = hist.sum(axis=0).astype(np.float64)
    inv = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
    return hist.astype(np.float64) @ inv


def median_frequency_weights(hist: np.ndarray) -> np.ndarray:
    """Median-frequency class weights from per-window histograms; 1 for absent classes."""
    counts = hist.sum(axis=0).astype(np.float64)
    window_pixels = hist.sum(axis=1).astype(np.float64)
    present = hist > 0
    seen = (present * window_pixels[:, None]).sum(axis=0)
    freq = np.divide(counts, seen, out=np.zeros_like(counts), where=seen > 0)
    ok = freq > 0
    if not ok.any():
        return np.ones_like(freq)
    med = float(np.median(freq[ok]))
    return np.where(ok, med / np.where(ok, freq, 1.0), 1.0)


def weights_from_file(path: str, classes: Sequence[ClassInfo]) -> np.ndarray:
    """Class weights from JSON: a list of K numbers, or an object keyed by class name or code
    (classes it leaves out weigh 1)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"class weights file {p} could not be read as JSON ({err})") from None
    w = np.ones(len(classes), dtype=np.float64)
    if isinstance(doc, list) and len(doc) == len(classes):
        w = np.asarray([_weight(v, p) for v in doc], dtype=np.float64)
    elif isinstance(doc, dict):
        keys = {c.name: c.id for c in classes} | {
            str(c.code): c.id for c in classes if c.code is not None
        }
        unknown = sorted(set(doc) - set(keys))
        if unknown:
            raise UsageError(f"class weights file {p}: unknown classes {', '.join(unknown)}")
        for key, v in doc.items():
            w[keys[key]] = _weight(v, p)
    else:
        raise UsageError(
            f"class weights file {p} must hold a list of {len(classes)} numbers "
            "or an object {class name or code: weight}"
        )
    return w


def _weight(v: Any, p: Path) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0:
        raise UsageError(f"class weights file {p}: {v!r} is not a weight >= 0")
    return float(v)


def class_weights(spec: str, hist: np.ndarray | None, classes: Sequence[ClassInfo]) -> np.ndarray:
    """The weights ``--class-weights none|auto|FILE`` asks for (``hist`` needed for auto)."""
    if spec == "none":
        return np.ones(len(classes), dtype=np.float64)
    if spec == "auto":
        assert hist is not None
        return median_frequency_weights(hist)
    return weights_from_file(spec, classes)


class DrawnSampler(torch.utils.data.Sampler[int]):
    """Indexes for one epoch: ``grid`` in order, ``balanced`` drawn with replacement from
    ``weights``; seeded by (seed, epoch), and this process's share under DDP."""

    def __init__(
        self,
        n: int,
        mode: str,
        seed: int,
        epoch: int,
        weights: np.ndarray | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if mode == "balanced":
            assert weights is not None and weights.sum() > 0
            g = torch.Generator()
            g.manual_seed(seed * 100_003 + epoch)
            w = torch.as_tensor(weights, dtype=torch.float64)
            order = torch.multinomial(w, n, replacement=True, generator=g).tolist()
        else:
            order = list(range(n))
        self.order = order[rank::world][: n // world] if world > 1 else order

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def imbalance_plan(
    sampling: str, weights_spec: str, ds: Any, classes: Sequence[ClassInfo], ignore_index: int
) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """(window sampling weights or None, CE class weights or None, the record for the model
    and the run's summary); the window histogram is read only when balanced or auto needs it."""
    k = len(classes)
    need_hist = sampling == "balanced" or weights_spec == "auto"
    hist = window_histograms(ds, k, ignore_index) if need_hist else None
    window_w = None
    if sampling == "balanced":
        assert hist is not None
        window_w = balanced_window_weights(hist)
    cw = class_weights(weights_spec, hist, classes)
    record: dict[str, Any] = {
        "sampling": sampling,
        "class_weights": {
            "mode": weights_spec if weights_spec in ("none", "auto") else "file",
            "source": weights_spec,
            "weights": {c.name: round(float(w), 4) for c, w in zip(classes, cw, strict=True)},
        },
    }
    return window_w, (None if weights_spec == "none" else cw), record

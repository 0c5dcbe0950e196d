"""Temperature scaling after training: one temperature per model, fitted on the validation
split by minimising the NLL (:func:`~mfaf_cli.scores.calibration.fit_temperature`), stored
in the model record (``ModelMeta.temperature``) that every engine applies.

Used by the trainer (on ``best.safetensors``, after the last epoch) and by
``weights/recalibrate.py`` (the shipped models, on their validation holdouts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np

from mfaf_cli.metadata import ModelMeta
from mfaf_cli.scores import calibration as cal

#: Most labelled pixels kept per batch / patch for the fit (a seeded sample beyond that).
PIXELS_PER_ITEM = 65_536


def sample_pixels(
    logits: np.ndarray, labels: np.ndarray, ignore_index: int, rng: np.random.Generator,
    limit: int = PIXELS_PER_ITEM,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(K, n) logits and (n,) labels of the labelled pixels of (N, K, H, W) / (N, H, W) arrays
    (or (K, H, W) / (H, W)), at most ``limit`` of them, drawn without replacement."""
    z = np.asarray(logits, dtype=np.float32)
    y = np.asarray(labels).astype(np.int64)
    if z.ndim == 4:
        z = np.moveaxis(z, 1, 0)  # K, N, H, W
    k = z.shape[0]
    z, y = z.reshape(k, -1), y.reshape(-1)
    keep = np.flatnonzero((y != ignore_index) & np.isfinite(z).all(axis=0))
    if keep.size > limit:
        keep = np.sort(rng.choice(keep, size=limit, replace=False))
    return z[:, keep], y[keep]


def fit_report(logits: np.ndarray, labels: np.ndarray, where: str) -> dict[str, Any]:
    """The fitted temperature and what it did on the fitting pixels (NLL, ECE, Brier)."""
    t = cal.fit_temperature(logits, labels)
    before = cal.calibration_counts(cal.softmax(logits, 1.0), labels)
    after = cal.calibration_counts(cal.softmax(logits, t), labels)
    return {
        "temperature": t,
        "fitted_on": where,
        "pixels": int(labels.size),
        "method": "temperature scaling (Guo et al. 2017): one T minimising the mean NLL",
        "before": {k: float(f(before)) for k, f in _SCORES.items()},
        "after": {k: float(f(after)) for k, f in _SCORES.items()},
    }


_SCORES = {"nll": cal.nll, "ece": cal.ece, "brier": cal.brier}


def collect(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]], ignore_index: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated sampled (logits, labels) over ``(logits, labels)`` batches."""
    rng = np.random.default_rng(seed)
    zs, ys = [], []
    for z, y in pairs:
        a, b = sample_pixels(z, y, ignore_index, rng)
        zs.append(a)
        ys.append(b)
    if not ys or sum(len(y) for y in ys) == 0:
        raise ValueError("the validation split has no labelled pixel to fit a temperature on")
    return np.concatenate(zs, axis=1), np.concatenate(ys)


def with_temperature(meta: ModelMeta, report: dict[str, Any]) -> ModelMeta:
    """``meta`` carrying the fitted temperature, and the fit's report under
    ``metrics["calibration"]``."""
    metrics = {**meta.metrics, "calibration": report}
    return dataclasses.replace(meta, temperature=float(report["temperature"]), metrics=metrics)

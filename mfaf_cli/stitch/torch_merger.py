"""The streaming merger with its row band on the model's device (torch tensors).

Fed by a torch predictor's device tensors, it blends, normalises and takes the arg-max where
the probabilities already are, and copies back only the uint8 index and the planes the sink
asked for (:class:`~mfaf_cli.stitch.rows.RowNeeds`): on a GPU through pinned host memory with
non-blocking copies and one stream synchronisation per emitted band. Windows, weights, row
order and arithmetic (float32, same operation order) are those of
:class:`~mfaf_cli.stitch.StreamingMerger`, so on the CPU its output is bit-identical.

Work is queued on the device's current stream from the merge thread; the predictor queues
its forwards on the same (default) stream, so a batch's probabilities are complete before
they are blended, without a host synchronisation per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from mfaf_cli.metadata import NODATA_LABEL
from mfaf_cli.stitch.merger import RowBandMerger, WeightFn
from mfaf_cli.stitch.rows import (
    MAX_INDEXED_CLASSES,
    PROB_NODATA_U8,
    PROB_SCALE,
    FinishedRows,
    ProbDtype,
    RowNeeds,
    empty_rows,
)
from mfaf_cli.tiling.windows import Window

RowsSink = Callable[[FinishedRows], None]
_F32 = torch.float32  # explicit: the band must not follow torch's default dtype
#: Device copies of distinct weight arrays kept (a plan has at most 9 tapers per tile shape).
_WEIGHT_CACHE = 64


def argmax_max(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel: uint8 index of the most probable plane (first on ties) and its value, the
    way :func:`mfaf_cli.io.raster.argmax_max` computes them."""
    best = probs[0].clone()
    idx = torch.zeros(best.shape, dtype=torch.uint8, device=probs.device)
    for k in range(1, probs.shape[0]):
        plane = probs[k]
        idx.masked_fill_(plane > best, k)
        torch.maximum(best, plane, out=best)
    return idx, best


def stored(planes: torch.Tensor, valid: torch.Tensor, dtype: ProbDtype) -> torch.Tensor:
    """Probabilities (C, r, W) as stored, like :func:`mfaf_cli.io.raster.scale_probs`:
    uint8 ``floor(p*254 + 0.5)`` / 255 nodata, or float32 / NaN nodata."""
    if dtype == "uint8":
        tmp = planes * float(PROB_SCALE)
        tmp += 0.5
        tmp.clamp_(0.0, PROB_SCALE + 0.5)
        return tmp.to(torch.uint8).masked_fill_(~valid, PROB_NODATA_U8)
    return planes.masked_fill(~valid, float("nan"))


class DeviceMerger(RowBandMerger[torch.Tensor]):
    """:class:`~mfaf_cli.stitch.StreamingMerger` on ``device``, emitting
    :class:`~mfaf_cli.stitch.rows.FinishedRows` to ``sink``.

    ``add`` takes probabilities as tensors (any device; numpy is accepted too). With
    ``nonfinite`` given, a NaN / inf anywhere in an added window (the check a predictor does
    on its host output) raises ``nonfinite()`` at the next emission, when the host waits for
    the device anyway; without it, invalid pixels may hold anything, as in StreamingMerger.
    """

    def __init__(
        self,
        height: int,
        width: int,
        num_classes: int,
        windows: Sequence[Window],
        weight_fn: WeightFn | None,
        sink: RowsSink,
        *,
        device: str | torch.device = "cpu",
        needs: RowNeeds | None = None,
        nonfinite: Callable[[], BaseException] | None = None,
    ) -> None:
        if num_classes > MAX_INDEXED_CLASSES:
            raise ValueError(f"{num_classes} classes do not fit a uint8 index with nodata")
        self.device = torch.device(device)
        self.needs = needs or RowNeeds()
        self._sink = sink
        self._nonfinite = nonfinite
        self._pinned = self.device.type == "cuda"
        self._weight_cache: dict[int, tuple[np.ndarray, torch.Tensor]] = {}
        with torch.inference_mode():
            self._finite = torch.ones((), dtype=torch.bool, device=self.device)
            self._acc = torch.empty((0, 0, 0), dtype=_F32, device=self.device)
            self._wsum = torch.empty((0, 0), dtype=_F32, device=self.device)
            self._invalid = torch.empty((0, 0), dtype=torch.bool, device=self.device)
            super().__init__(height, width, num_classes, windows, weight_fn)

    # ---- input -----------------------------------------------------------------------
    def add(self, window: Window, probs: Any, valid: np.ndarray | None = None) -> None:
        with torch.inference_mode():
            probs = torch.as_tensor(probs, dtype=_F32, device=self.device)
            if self._nonfinite is not None:  # no host sync here: checked at emission
                self._finite &= torch.isfinite(probs).all()
            super().add(window, probs, valid)

    def add_skipped(self, window: Window) -> None:
        with torch.inference_mode():
            super().add_skipped(window)

    def finish(self) -> None:
        with torch.inference_mode():
            super().finish()
        self._check_finite()

    # ---- the band ----------------------------------------------------------------------
    def _realloc(self, rows: int, used: int) -> None:
        acc, wsum, inv = self._acc, self._wsum, self._invalid
        dev = self.device
        self._acc = torch.zeros((self.num_classes, rows, self.width), dtype=_F32, device=dev)
        self._wsum = torch.zeros((rows, self.width), dtype=_F32, device=dev)
        self._invalid = torch.zeros((rows, self.width), dtype=torch.bool, device=dev)
        if used:
            self._acc[:, :used] = acc[:, :used]
            self._wsum[:used] = wsum[:used]
            self._invalid[:used] = inv[:used]

    def _weights(
        self, window: Window, shape: tuple[int, int], ys: slice, xs: slice
    ) -> torch.Tensor:
        w = self._window_weights(window)
        if w is None:
            return torch.ones(shape, dtype=_F32, device=self.device)
        hit = self._weight_cache.get(id(w))
        if hit is None or hit[0] is not w:
            if len(self._weight_cache) >= _WEIGHT_CACHE:
                self._weight_cache.clear()
            hit = (w, torch.tensor(w, device=self.device))
            self._weight_cache[id(w)] = hit  # keeps ``w`` alive, so its id stays unique
        return hit[1][ys, xs]

    def _accumulate(
        self, p: torch.Tensor, w: torch.Tensor, v: np.ndarray | None, b: slice, cols: slice
    ) -> None:
        acc = self._acc[:, b, cols]
        if v is None or v.all():
            acc += p * w
        else:
            # Invalid pixels may hold anything (NaN from padding): select, do not multiply.
            vt = torch.from_numpy(np.ascontiguousarray(v)).to(self.device, non_blocking=True)
            w = torch.where(vt, w, 0.0)
            acc += torch.where(vt, p * w, 0.0)
            self._invalid[b, cols] |= ~vt
        self._wsum[b, cols] += w

    def _emit_band(self, row0: int, n: int) -> None:
        wsum = self._wsum[:n]
        valid = (wsum > 0) & ~self._invalid[:n]
        inv = torch.where(valid, 1.0 / wsum, 0.0)
        probs = self._acc[:, :n] * inv  # invalid pixels: 0 * 0
        idx, best = argmax_max(probs)
        idx.masked_fill_(~valid, NODATA_LABEL)
        p_dtype, c_dtype = self.needs.probabilities, self.needs.confidence
        planes = [
            idx,
            None if p_dtype is None else stored(probs, valid, p_dtype),
            None if c_dtype is None else stored(best[None], valid, c_dtype),
        ]
        index, prob, conf = self._to_host(planes)
        self._check_finite()
        assert index is not None
        self._sink(FinishedRows(row0, index, prob, conf))

    def _shift(self, n: int, used: int) -> None:
        m = used - n  # rows still open: move them to the top of the buffers
        if m:
            # torch refuses overlapping in-place copies: clone the source when they overlap
            def src(t: torch.Tensor) -> torch.Tensor:
                return t.clone() if m > n else t

            self._acc[:, :m] = src(self._acc[:, n:used])
            self._wsum[:m] = src(self._wsum[n:used])
            self._invalid[:m] = src(self._invalid[n:used])
        self._acc[:, m:used] = 0.0
        self._wsum[m:used] = 0.0
        self._invalid[m:used] = False

    def _emit_empty(self, row0: int, rows: int) -> None:
        self._sink(empty_rows(row0, rows, self.width, self.num_classes, self.needs))

    # ---- host side ---------------------------------------------------------------------
    def _to_host(self, planes: list[torch.Tensor | None]) -> list[np.ndarray | None]:
        """The planes as host arrays: on CUDA copied into fresh pinned buffers (the caching
        host allocator recycles them) without blocking, then one wait for the stream."""
        if not self._pinned:
            return [None if t is None else t.numpy() for t in planes]
        host: list[torch.Tensor | None] = []
        for t in planes:
            if t is None:
                host.append(None)
                continue
            h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            h.copy_(t, non_blocking=True)
            host.append(h)
        torch.cuda.current_stream(self.device).synchronize()
        return [None if h is None else h.numpy() for h in host]

    def _check_finite(self) -> None:
        if self._nonfinite is not None and not bool(self._finite.item()):
            raise self._nonfinite()

"""PyTorch engine: eval mode, ``torch.inference_mode``, AMP autocast on CUDA, fp32 on CPU."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mfaf_cli.devices import cuda_autocast_dtype, resolve_device
from mfaf_cli.engine.base import check_batch
from mfaf_cli.errors import EngineError, UsageError
from mfaf_cli.metadata import ModelMeta
from mfaf_cli.tiling.pad import bottom_right_pad, round_up

if TYPE_CHECKING:
    from mfaf_cli.models.resolve import ModelSource

log = logging.getLogger("mfaf")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for plain fp32.

    ``auto``: bf16 on CUDA GPUs that compute it natively (its fp32-sized exponent keeps the
    INN's exp from overflowing), else fp16 (:func:`~mfaf_cli.devices.cuda_autocast_dtype`);
    fp32 on CPU, where autocast rarely pays off.
    """
    p = precision.lower()
    if p == "fp32":
        return None
    if p == "auto":
        if device.type != "cuda":
            return None
        dtype, why = cuda_autocast_dtype(device)
        log.info("precision auto: %s", why)
        return dtype
    if p == "bf16":
        return torch.bfloat16
    if p == "fp16":
        if device.type != "cuda":
            raise UsageError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        return torch.float16
    raise UsageError(f"unknown precision {precision!r}; choose auto, fp32, fp16 or bf16")


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads, then restore torch's previous setting."""
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if before != threads:
            torch.set_num_threads(before)


def pad_to_multiple(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """Pad H and W at the bottom/right up to a multiple of ``divisor`` (reflect where possible)."""
    h, w = x.shape[-2:]
    ph, pw, mode = bottom_right_pad(h, w, round_up(h, divisor), round_up(w, divisor))
    if not ph and not pw:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate" if mode == "edge" else mode)


class TorchPredictor:
    """Run a PyTorch model on batches of normalised tiles."""

    engine = "torch"

    def __init__(
        self,
        model: nn.Module,
        meta: ModelMeta,
        device: str | torch.device = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        threads: int | None = None,
    ) -> None:
        self._device = resolve_device(device)
        self.autocast_dtype = resolve_precision(precision, self._device)
        self.meta = meta
        self.device = str(self._device)
        self.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[
            self.autocast_dtype
        ]
        self.batch_size = batch_size
        self.model = model.to(self._device).eval()
        self.divisor = int(getattr(model, "divisor", meta.divisor) or 1)
        #: intra-op threads for CPU forwards (None: leave torch's setting alone)
        self.threads = threads if self._device.type == "cpu" else None

    @classmethod
    def from_source(
        cls,
        source: ModelSource,
        device: str | torch.device = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        threads: int | None = None,
    ) -> TorchPredictor:
        from mfaf_cli.models.resolve import load_model

        model, meta = load_model(source, device="cpu")
        return cls(
            model, meta, device=device, precision=precision, batch_size=batch_size,
            threads=threads,
        )  # fmt: skip

    def _forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        h, w = inputs[0].shape[-2:]
        padded = [pad_to_multiple(x, self.divisor) for x in inputs]
        with torch.autocast(
            self._device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        ):
            logits = self.model(*padded)
        if isinstance(logits, tuple):  # a model returning (logits, aux) by mistake
            logits = logits[0]
        return torch.softmax(logits.float(), dim=1)[..., :h, :w]

    def _chunks(
        self, batch: Mapping[str, np.ndarray], pin: bool = False
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first tile, probabilities on the device)`` per ``batch_size`` tiles of ``batch``;
        call inside ``torch.inference_mode()``. ``pin``: stage the inputs in pinned memory, so
        their copy to the GPU does not wait for the work already queued there."""
        n, h, w = check_batch(batch, self.meta)
        step = self.batch_size or n or 1
        try:
            with _torch_threads(self.threads):
                for i in range(0, n, step):
                    host = [
                        torch.from_numpy(
                            np.ascontiguousarray(batch[m][i : i + step], dtype=np.float32)
                        )
                        for m in self.meta.modality_names
                    ]
                    if pin:
                        host = [x.pin_memory() for x in host]
                    inputs = [x.to(self._device, non_blocking=True) for x in host]
                    probs = self._forward(inputs)
                    if probs.shape[1] != self.meta.num_classes:
                        raise EngineError(
                            f"the model returned {probs.shape[1]} classes but its metadata "
                            f"lists {self.meta.num_classes}"
                        )
                    yield i, probs
        except torch.cuda.OutOfMemoryError:
            raise EngineError(
                f"the GPU ran out of memory on a batch of {step} tiles of {h}×{w}; "
                "lower --batch-size or --tile"
            ) from None

    def nonfinite_error(self) -> EngineError:
        """The error for NaN / inf in the model's output."""
        hint = "; try --precision fp32" if self.autocast_dtype is not None else ""
        return EngineError(f"the model produced non-finite probabilities{hint}")

    def __call__(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        n, h, w = check_batch(batch, self.meta)
        out = np.empty((n, self.meta.num_classes, h, w), dtype=np.float32)
        with torch.inference_mode():
            for i, probs in self._chunks(batch):
                out[i : i + len(probs)] = probs.cpu().numpy()
        if not np.isfinite(out).all():
            raise self.nonfinite_error()
        return out

    def device_event(self) -> torch.cuda.Event | None:
        """A timing event recorded now on the stream this predictor's work goes to (None on
        the CPU, where calls return finished results): the pipeline's model clock
        (:class:`~mfaf_cli.pipeline.clock.ModelClock`) brackets calls with two, because
        :meth:`predict_tensor` returns before the GPU has finished."""
        if self._device.type != "cuda":
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self._device))
        return event

    def predict_tensor(self, batch: Mapping[str, np.ndarray]) -> torch.Tensor:
        """Probabilities (N, K, h, w) float32 left on the predictor's device: no copy to the
        host and no wait for the device, for a merger whose band lives there
        (:class:`~mfaf_cli.stitch.torch_merger.DeviceMerger`). Not checked for non-finite
        values: the consumer does that when it synchronises (see :meth:`nonfinite_error`)."""
        pin = self._device.type == "cuda"
        with torch.inference_mode():
            chunks = [probs for _, probs in self._chunks(batch, pin)]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

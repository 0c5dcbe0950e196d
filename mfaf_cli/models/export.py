"""ONNX export: softmax probabilities out, inputs named by modality, metadata embedded.

The graph's only dynamic axis is the batch; H and W are fixed to ``meta.tile_size`` (the
networks' attention/reshape ops are simplest and fastest to export with static spatial dims).
Opset 17 by default; 20 when the model samples 5-D volumes with ``grid_sample`` (CoMiX's 3-D
deformable conv), because GridSample only became N-D in opset 20.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from mfaf_cli.errors import EngineError, ModelError, UsageError
from mfaf_cli.metadata import META_KEY, ModelMeta

log = logging.getLogger("mfaf")

DEFAULT_OPSET = 17
#: GridSample accepts 5-D (volumetric) input from this opset on.
GRID_SAMPLE_3D_OPSET = 20
OUTPUT_NAME = "probabilities"
EXPORTERS = ("auto", "dynamo", "torchscript")


class ProbabilityHead(nn.Module):
    """Wrap a network so the exported graph returns softmax probabilities in fp32, of the
    logits divided by the record's temperature (the same calibration the torch engine uses)."""

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        logits = self.model(*inputs).float()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return torch.softmax(logits, dim=1)


class _GridSampleSpy(TorchFunctionMode):
    """Record the input rank of every ``F.grid_sample`` call during a forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.ranks: list[int] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is F.grid_sample and args:
            self.ranks.append(args[0].dim())
        return func(*args, **(kwargs or {}))


def uses_volumetric_grid_sample(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> bool:
    """Whether a forward pass calls ``grid_sample`` on a 5-D tensor."""
    spy = _GridSampleSpy()
    with torch.inference_mode(), spy:
        model(*inputs)
    return 5 in spy.ranks


def required_opset(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """Lowest opset this exporter targets for ``model``: 20 for 5-D grid_sample, else 17."""
    declared = int(getattr(model, "onnx_min_opset", 0) or 0)
    needed = GRID_SAMPLE_3D_OPSET if uses_volumetric_grid_sample(model, inputs) else DEFAULT_OPSET
    return max(declared, needed)


def _probe_opset(model: nn.Module, meta: ModelMeta, divisor: int) -> int:
    """The rank of grid_sample's input does not depend on the tile: probe on a small one
    (some networks cannot run on tiny tiles, e.g. reflect padding at 1×1; then use the tile)."""
    small = min(meta.tile_size, 2 * divisor)
    for size in dict.fromkeys((small, meta.tile_size)):
        try:
            return required_opset(model, example_inputs(replace(meta, tile_size=size), batch=1))
        except RuntimeError:
            if size == meta.tile_size:
                raise
    raise AssertionError("unreachable")


def example_inputs(meta: ModelMeta, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random normalised-looking tiles, one per modality in model order."""
    g = torch.Generator().manual_seed(seed)
    t = meta.tile_size
    return tuple(torch.randn(batch, m.n_bands, t, t, generator=g) for m in meta.modalities)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints and deprecation chatter (kept at DEBUG)."""
    buf_out, buf_err = io.StringIO(), io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(buf_out),
        contextlib.redirect_stderr(buf_err),
    ):
        warnings.simplefilter("ignore")
        loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
            text = (buf_out.getvalue() + buf_err.getvalue()).strip()
            if text:
                log.debug("torch.onnx.export said:\n%s", text[-4000:])


def _export_dynamo(
    head: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str], path: Path, opset: int
) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    onnx_program = torch.onnx.export(
        head,
        inputs,
        input_names=names,
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=(tuple({0: batch} for _ in inputs),),  # one entry: the *inputs tuple
        external_data=False,
        optimize=True,
        verbose=False,
    )
    assert onnx_program is not None
    onnx_program.save(str(path), external_data=False)


def _export_torchscript(
    head: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str], path: Path, opset: int
) -> None:
    axes = {n: {0: "batch"} for n in [*names, OUTPUT_NAME]}
    torch.onnx.export(
        head,
        inputs,
        str(path),
        input_names=names,
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=False,
        dynamic_axes=axes,
        do_constant_folding=True,
    )


def export_onnx(
    model: nn.Module,
    meta: ModelMeta,
    path: str | os.PathLike[str],
    opset: int | None = None,
    *,
    exporter: str = "auto",
) -> Path:
    """Export ``model`` (moved to CPU, eval mode) to ``path`` with ``meta`` embedded.

    ``exporter``: "torchscript" (the legacy tracer: fast, exact for these conv/attention nets),
    "dynamo" (torch.export based), or "auto" = torchscript, falling back to dynamo if it fails.
    Writes atomically and verifies the result with ``onnx.checker``.
    """
    try:
        import onnx
    except ImportError:
        raise EngineError("ONNX export needs the onnx package: pip install mfaf[onnx]") from None
    from mfaf_cli.io.atomic import atomic_path

    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    divisor = _check_exportable(model, meta)
    model = model.to("cpu").eval()
    inputs = example_inputs(meta)
    needed = _probe_opset(model, meta, divisor)
    if opset is None:
        opset = needed
    elif opset < needed:
        raise UsageError(
            f"{meta.arch} needs opset >= {needed} (5-D grid_sample of its 3-D deformable conv "
            f"became legal ONNX in opset {GRID_SAMPLE_3D_OPSET}); got --opset {opset}"
        )
    head = ProbabilityHead(model, meta.temperature).eval()
    path = Path(path)
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    with atomic_path(path) as tmp:
        used = _run_exporters(head, inputs, meta, tmp, opset, order)
        proto = onnx.load(str(tmp))
        _set_metadata(proto, meta, used)
        try:
            onnx.checker.check_model(proto, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
            raise EngineError(f"exported ONNX model failed onnx.checker: {err}") from None
        onnx.save(proto, str(tmp))
    log.info("exported %s to %s (opset %d, %s exporter)", meta.arch, path, opset, used)
    return path


def _check_exportable(model: nn.Module, meta: ModelMeta) -> int:
    """The model's divisor, after checking the record's tile fits it and the inputs match."""
    divisor = int(getattr(model, "divisor", meta.divisor) or 1)
    if meta.tile_size < divisor or meta.tile_size % divisor:
        raise UsageError(
            f"tile size {meta.tile_size} must be a multiple of {divisor} for {meta.arch}"
        )
    names = list(meta.modality_names)
    if tuple(getattr(model, "modalities", names)) != tuple(names):
        raise ModelError(
            f"model inputs {getattr(model, 'modalities', ())} differ from the metadata's {names}"
        )
    return divisor


def _run_exporters(
    head: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    meta: ModelMeta,
    tmp: Path,
    opset: int,
    order: list[str],
) -> str:
    """Try the exporters in ``order`` into ``tmp``; the name of the first that worked."""
    errors: list[str] = []
    for name in order:
        fn = _export_torchscript if name == "torchscript" else _export_dynamo
        try:
            with _quiet():
                fn(head, inputs, list(meta.modality_names), tmp, opset)
            return name
        # Deliberately broad: either exporter may fail with any type (torch.onnx errors,
        # RuntimeError, TypeError from tracing...) and the next one is then tried; all
        # failures are reported together below, with --debug logging each.
        except Exception as err:
            first = (str(err).strip().splitlines() or [""])[0][:300]
            errors.append(f"{name}: {type(err).__name__}: {first}")
            log.debug("%s exporter failed for %s: %s", name, meta.arch, err)
    raise EngineError(f"ONNX export of {meta.arch} failed ({'; '.join(errors)})")


def _set_metadata(proto: Any, meta: ModelMeta, exporter: str) -> None:
    props = {p.key: p.value for p in proto.metadata_props}
    props[META_KEY] = meta.to_json()
    props["mfaf_exporter"] = exporter
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "mfaf"
    proto.doc_string = f"mfaf {meta.arch}: inputs {', '.join(meta.modality_names)} -> probabilities"

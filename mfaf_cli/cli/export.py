"""``mfaf export``: a shipped model, checkpoint or registry name to ONNX, metadata embedded."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from mfaf_cli.cli.options import json_opt, overwrite_opt, refuse_stdout

log = logging.getLogger("mfaf")

EPILOG = """\b
Examples:
  mfaf export --model runs/x/best.safetensors -o mine.onnx
  mfaf export --model comix-s -o comix.onnx --tile 64
  mfaf export --model mfafnet-s-ombria-water -o mfafnet.onnx
  mfaf predict --engine onnx --model mfafnet.onnx --optical S2.tif --optical-bands B12,B8,B4 \\
      --sar S1.tif --sar-bands VV -o map.tif
\b
The graph takes one input per modality (named optical, sar, hsi, lidar) of shape
(batch, bands, tile, tile), already normalised, and returns softmax "probabilities". Only the
batch axis is dynamic. Opset 17 by default, 20 for CoMiX (5-D grid_sample). The metadata
record (bands, normalisation, classes) is stored in the model's metadata_props ("mfaf_meta").
"""


@click.command(
    "export",
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--model",
    "model_spec",
    required=True,
    metavar="NAME|PATH",
    help="Shipped model name, .safetensors checkpoint, or registry name (untrained).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="PATH",
    callback=refuse_stdout,
    help="Output .onnx file.",
)
@click.option("--opset", type=int, default=None, help="ONNX opset (default 17, or 20 for CoMiX).")
@click.option(
    "--tile", type=int, default=None, help="Fixed tile height/width (default: the model's)."
)
@click.option(
    "--exporter",
    type=click.Choice(("auto", "torchscript", "dynamo")),
    default="auto",
    show_default=True,
    help="torch.onnx exporter (auto: TorchScript tracer, dynamo if that fails).",
)
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Compare ONNX Runtime with PyTorch on a random batch.",
)
@overwrite_opt
@json_opt
def command(
    model_spec: str,
    output: str,
    opset: int | None,
    tile: int | None,
    exporter: str,
    check: bool,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Export a model to ONNX (dynamic batch, fixed tile) with its metadata embedded."""
    from dataclasses import replace

    from mfaf_cli.errors import OutputExistsError, OutputPathError, UsageError
    from mfaf_cli.models.resolve import load_model, resolve_model

    out = Path(output)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    if out.is_dir():
        raise OutputPathError(f"{out} is a directory; give a file name like model.onnx")
    if not out.parent.exists() and str(out.parent) not in ("", "."):
        raise OutputPathError(f"output folder {out.parent} does not exist")
    if opset is not None and not 17 <= opset <= 23:
        raise UsageError(f"--opset must be between 17 and 23, got {opset}")
    if tile is not None and tile < 1:
        raise UsageError(f"--tile must be positive, got {tile}")

    source = resolve_model(model_spec)
    if source.kind == "onnx":
        raise UsageError(f"{source.path} is already an ONNX model")
    model, meta = load_model(source)
    if tile is not None:
        meta = replace(meta, tile_size=int(tile))

    from mfaf_cli.models.export import export_onnx

    export_onnx(model, meta, out, opset=opset, exporter=exporter)
    summary: dict[str, Any] = {
        "output": str(out),
        "model": source.name,
        "arch": meta.arch,
        "trained": bool(meta.trained),
        "inputs": {
            m.name: ["batch", m.n_bands, meta.tile_size, meta.tile_size] for m in meta.modalities
        },
        "classes": meta.class_names,
        "opset": onnx_opset(out),
        "size_bytes": out.stat().st_size,
    }
    if check:
        summary["max_abs_diff"] = compare_with_torch(model, meta, out)
        if summary["max_abs_diff"] is None:
            log.warning("onnxruntime is not installed: the export was not checked numerically")
    if as_json:
        click.echo(json.dumps(summary))
    else:
        msg = f"wrote {out} ({meta.arch}, opset {summary['opset']}, tile {meta.tile_size})"
        if summary.get("max_abs_diff") is not None:
            msg += f"; max |Δ probability| vs PyTorch = {summary['max_abs_diff']:.2e}"
        click.echo(msg)


def onnx_opset(path: Path) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def compare_with_torch(model: Any, meta: Any, path: Path) -> float | None:
    """Max |Δ| between ONNX Runtime and PyTorch softmax on a random batch of two tiles."""
    import importlib.util

    import numpy as np
    import torch

    if importlib.util.find_spec("onnxruntime") is None:
        return None

    from mfaf_cli.engine.onnx_predictor import OnnxPredictor
    from mfaf_cli.models.export import example_inputs

    inputs = example_inputs(meta, batch=2, seed=1)
    with torch.inference_mode():
        ref = torch.softmax(model(*inputs).float(), dim=1).numpy()
    got = OnnxPredictor(path, meta, device="cpu")(
        {m: x.numpy() for m, x in zip(meta.modality_names, inputs, strict=True)}
    )
    return float(np.abs(got - ref).max())

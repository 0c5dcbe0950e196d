"""``mfaf models``: the registry (names, modalities, band counts, classes, parameters) and the
shipped weights listed in weights/manifest.json."""

from __future__ import annotations

import json
from typing import Any

import click

from mfaf_cli.cli.options import json_opt

EPILOG = """\b
Examples:
  mfaf models
  mfaf models --json
  mfaf models mfafnet-s          # one architecture or shipped model in detail
  mfaf models mfaf_cli/weights/unet-ombria-water.safetensors   # the record inside a model file
\b
Registry models are untrained; predict uses the shipped weights marked default for the
modalities given, and stops (exit 2) when none is shipped. Random weights run only when an
architecture is named with --model (with a warning; the outputs are tagged UNTRAINED).
"""


def count_parameters(name: str) -> int:
    """Parameters of a registry model at its default size, built without allocating weights."""
    import torch

    from mfaf_cli.registry import count_parameters as count
    from mfaf_cli.registry import create_model

    try:
        with torch.device("meta"):
            model = create_model(name)
    except (RuntimeError, NotImplementedError):  # a builder that needs real tensors: CPU
        model = create_model(name)
    return int(count(model))


def architectures() -> list[dict[str, Any]]:
    from mfaf_cli.registry import default_meta, list_models

    rows = []
    for e in list_models():
        meta = default_meta(e.name)
        rows.append(
            {
                "name": e.name,
                "modalities": list(e.modalities),
                "in_channels": dict(e.default_in_channels),
                "num_classes": meta.num_classes,
                "classes": meta.class_names,
                "divisor": e.divisor,
                "tile_size": meta.tile_size,
                "parameters": count_parameters(e.name),
                "description": e.description,
            }
        )
    return rows


def shipped() -> list[dict[str, Any]]:
    from mfaf_cli.io.weights import entry_path, read_manifest

    out = []
    for e in read_manifest():
        path = entry_path(e)
        out.append(
            {
                "name": e["name"],
                "arch": e.get("arch"),
                "modalities": list(e.get("modalities", [])),
                "bands": e.get("bands", {}),
                "classes": e.get("classes", []),
                "default": bool(e.get("default", False)),
                "trained": e.get("trained"),
                "file": str(path),
                "present": path.is_file(),
                "sha256": e.get("sha256"),
                "metrics": e.get("metrics", {}),
                "description": e.get("description", ""),
            }
        )
    return out


def detail(name: str) -> dict[str, Any]:
    """One shipped model (metadata read from its file) or registry architecture."""
    from mfaf_cli.io.weights import entry_path, manifest_entry, read_meta
    from mfaf_cli.registry import default_meta, get_entry, list_models

    entry = manifest_entry(name)
    if entry is not None:
        path = entry_path(entry)
        meta = read_meta(path).to_dict() if path.is_file() else None
        return {"name": name, "kind": "shipped", "entry": entry, "meta": meta}
    names = [e.name for e in list_models()]
    if name not in names:
        from mfaf_cli.errors import ModelError
        from mfaf_cli.io.weights import read_manifest

        valid = ", ".join([e["name"] for e in read_manifest()] + names)
        raise ModelError(f"unknown model {name!r}; valid names: {valid}")
    untrained = default_meta(name)
    return {
        "name": name,
        "kind": "architecture",
        "parameters": count_parameters(name),
        "description": get_entry(name).description,
        "meta": untrained.to_dict(),
    }


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def format_table(archs: list[dict[str, Any]], weights: list[dict[str, Any]]) -> str:
    lines = ["Architectures (untrained registry models):"]
    lines.append(f"  {'name':<16} {'modalities (bands)':<24} {'classes':>7} {'params':>9}  notes")
    for a in archs:
        mods = " + ".join(f"{m}({c})" for m, c in a["in_channels"].items())
        lines.append(
            f"  {a['name']:<16} {mods:<24} {a['num_classes']:>7} "
            f"{_fmt_params(a['parameters']):>9}  {a['description']}"
        )
    lines.append("Shipped weights (mfaf_cli/weights/manifest.json):")
    if not weights:
        lines.append("  none: predict needs --model (a file, or an architecture: UNTRAINED)")
    for w in weights:
        flags = [f for f, on in (("default", w["default"]), ("missing", not w["present"])) if on]
        if w["trained"] is False:
            flags.append("untrained")
        mods = " + ".join(w["modalities"])
        classes = len(w["classes"])
        note = f" [{', '.join(flags)}]" if flags else ""
        lines.append(f"  {w['name']:<20} {w['arch'] or '?':<12} {mods:<14} {classes} classes{note}")
    return "\n".join(lines)


@click.command(
    "models",
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.argument("name", required=False)
@json_opt
def command(name: str | None, as_json: bool) -> None:
    """List the model registry and the shipped weights (or describe one NAME)."""
    if name is not None:
        from mfaf_cli.cli.model_record import format_record, is_model_file, model_record

        if is_model_file(name):  # a checkpoint / ONNX file: the record inside it
            rec = model_record(name)
            click.echo(json.dumps(rec) if as_json else format_record(rec))
            return
        info = detail(name)
        if as_json:
            click.echo(json.dumps(info))
        else:
            click.echo(json.dumps(info, indent=2))
        return
    archs, weights = architectures(), shipped()
    if as_json:
        click.echo(json.dumps({"architectures": archs, "weights": weights}))
    else:
        click.echo(format_table(archs, weights))

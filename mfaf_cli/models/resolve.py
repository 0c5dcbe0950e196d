"""Model resolution: a ``--model`` value (or none) → where the model comes from.

``None`` means the shipped model for exactly the given modalities; a manifest name, a
``.safetensors`` / ``.onnx`` path or a registry architecture name can be given instead. The
one rule that matters to users: mfaf never runs random weights unless asked to. Without
``--model`` and without shipped weights for the inputs it stops with the list of what is
shipped; untrained weights come only from naming an architecture (or an untrained file), and
then with a loud warning and ``trained=False`` in the metadata the writers tag outputs from.

The checkpoint format and the manifest are I/O and stay in :mod:`mfaf_cli.io.weights`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mfaf_cli.errors import ModalityError, ModelError, WeightsError
from mfaf_cli.io import weights as ckpt
from mfaf_cli.metadata import ModelMeta

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger("mfaf")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a checkpoint, an ONNX file, or an untrained registry build."""

    kind: Literal["checkpoint", "onnx", "untrained"]
    path: Path | None
    name: str
    meta: ModelMeta
    sha256: str | None = None  # expected whole-file checksum (manifest entries)

    @property
    def untrained(self) -> bool:
        return self.kind == "untrained" or not self.meta.trained


def _check_modalities(meta: ModelMeta, name: str, modalities: tuple[str, ...]) -> None:
    if modalities and set(modalities) != set(meta.modality_names):
        raise ModalityError(
            f"model {name!r} takes {' + '.join(meta.modality_names)}, "
            f"but {' + '.join(modalities) or 'nothing'} was given"
        )


def _warn_untrained(name: str) -> None:
    log.warning(
        "using an UNTRAINED %s model (random weights): the output is meaningless except for "
        "testing the pipeline, and its tags say UNTRAINED; pass --model with trained weights",
        name,
    )


def _source_from_entry(entry: dict[str, Any]) -> ModelSource:
    path = ckpt.entry_path(entry)
    if not path.is_file():
        raise WeightsError(
            f"shipped weights {entry['name']!r} are listed in the manifest but {path} is missing"
        )
    kind: Literal["checkpoint", "onnx"] = (
        "onnx" if path.suffix.lower() in ckpt.ONNX_SUFFIXES else "checkpoint"
    )
    meta = ckpt.read_meta(path)
    if entry.get("fallbacks") and not meta.fallbacks:  # shipped later than the weights
        meta = dataclasses.replace(meta, fallbacks=dict(entry["fallbacks"]))
    return ModelSource(kind, path, entry["name"], meta, entry.get("sha256"))


def _looks_like_path(spec: str) -> bool:
    suffix = Path(spec).suffix.lower()
    return (
        suffix in ckpt.CHECKPOINT_SUFFIXES + ckpt.ONNX_SUFFIXES
        or os.sep in spec
        or "/" in spec
        or Path(spec).exists()
    )


def shipped_for(modalities: Iterable[str], entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The manifest entry predict uses for exactly these modalities: the one marked default,
    else the first listed for them; None when nothing shipped takes them. Entries shipped
    ``by_name_only`` are never picked here: a model below its baseline is no default."""
    wanted = set(modalities)
    fits = [
        e for e in entries
        if set(e.get("modalities", ())) == wanted and not e.get("by_name_only")
    ]  # fmt: skip
    return next((e for e in fits if e.get("default")), fits[0] if fits else None)


def no_shipped_message(modalities: tuple[str, ...], entries: list[dict[str, Any]]) -> str:
    """Why there is no default model for ``modalities``, what is shipped, and the ways out."""
    from mfaf_cli.registry import list_models

    given = " + ".join(modalities)
    shipped = (
        "; ".join(f"{e['name']} ({' + '.join(e.get('modalities', ()))})" for e in entries)
        or "none (the weights folder has no manifest.json)"
    )
    by_name = [
        e for e in entries
        if e.get("by_name_only") and set(e.get("modalities", ())) == set(modalities)
    ]  # fmt: skip
    fixes = [f"name it (--model {e['name']}; not picked by default: {e['by_name_only']})"
             for e in by_name]  # fmt: skip
    for e in entries:
        missing = [m for m in e.get("modalities", ()) if m not in modalities]
        if missing and set(modalities) < set(e.get("modalities", ())):
            fixes.append(f"add {' '.join(f'--{m} PATH' for m in missing)}")
            break
    fixes.append("pass --model FILE.safetensors")
    archs = [a.name for a in list_models() if set(a.modalities) == set(modalities)]
    if archs:
        fixes.append(f"name an architecture (--model {archs[0]}) to run UNTRAINED random weights")
    head = f"no shipped model {'is the default for' if by_name else 'takes'} {given}"
    return f"{head}; shipped: {shipped}; {', or '.join(fixes)}"


def resolve_model(
    spec: str | os.PathLike[str] | None,
    modalities: Iterable[str] | None = None,
    *,
    in_channels: dict[str, int] | None = None,
) -> ModelSource:
    """Turn a ``--model`` value into a :class:`ModelSource`.

    ``spec``: None (the shipped model for exactly these modalities; :class:`ModalityError`,
    exit 2, listing what is shipped when there is none), a manifest name, a .safetensors /
    .onnx path, or a registry architecture name (untrained, warns). ``in_channels`` only sizes
    untrained models. A model whose modalities differ from ``modalities`` raises
    :class:`ModalityError`.
    """
    mods = tuple(modalities or ())
    if spec is None:
        if not mods:
            raise ModalityError("give at least one modality (e.g. --optical and --sar)")
        entries = ckpt.read_manifest()
        entry = shipped_for(mods, entries)
        if entry is None:
            raise ModalityError(no_shipped_message(mods, entries))
        source = _source_from_entry(entry)
        _check_modalities(source.meta, source.name, mods)
        return source

    spec_str = os.fspath(spec)
    if not isinstance(spec, os.PathLike):
        entry = ckpt.manifest_entry(spec_str)
        if entry is not None:
            source = _source_from_entry(entry)
            _check_modalities(source.meta, source.name, mods)
            return source
    if isinstance(spec, os.PathLike) or _looks_like_path(spec_str):
        return _source_from_file(Path(spec_str).expanduser(), mods)
    return _source_from_registry(spec_str, mods, in_channels)


def _source_from_file(path: Path, mods: tuple[str, ...]) -> ModelSource:
    if not path.exists():
        raise WeightsError(f"model file not found: {path}")
    kind: Literal["checkpoint", "onnx"] = (
        "onnx" if path.suffix.lower() in ckpt.ONNX_SUFFIXES else "checkpoint"
    )
    meta = ckpt.read_meta(path)
    _check_modalities(meta, path.name, mods)
    if not meta.trained:
        _warn_untrained(meta.arch)
    return ModelSource(kind, path, path.stem, meta)


def _source_from_registry(
    name: str, mods: tuple[str, ...], in_channels: dict[str, int] | None
) -> ModelSource:
    """An explicitly named architecture: random weights, said loudly."""
    from mfaf_cli import registry

    arch_names = [e.name for e in registry.list_models()]
    if name not in arch_names:
        shipped = [e["name"] for e in ckpt.read_manifest()]
        valid = ", ".join(shipped + arch_names)
        raise ModelError(
            f"unknown model {name!r}; valid names: {valid} (or a .safetensors/.onnx path)"
        )
    meta = registry.default_meta(name, in_channels=_channels_for(name, in_channels))
    _check_modalities(meta, name, mods)
    _warn_untrained(name)
    return ModelSource("untrained", None, name, meta)


def _channels_for(arch: str, in_channels: dict[str, int] | None) -> dict[str, int] | None:
    """Keep only the band counts of modalities ``arch`` takes (others are checked elsewhere)."""
    if not in_channels:
        return None
    from mfaf_cli.registry import get_entry

    takes = set(get_entry(arch).modalities)
    return {m: n for m, n in in_channels.items() if m in takes} or None


def load_model(
    spec: str | os.PathLike[str] | ModelSource | None = None,
    modalities: Iterable[str] | None = None,
    device: str | torch.device = "cpu",
    *,
    in_channels: dict[str, int] | None = None,
) -> tuple[nn.Module, ModelMeta]:
    """Resolve ``spec`` and return a PyTorch model (eval mode) with its metadata."""
    source = (
        spec
        if isinstance(spec, ModelSource)
        else resolve_model(spec, modalities, in_channels=in_channels)
    )
    if source.kind == "onnx":
        raise WeightsError(
            f"{source.path} is an ONNX model; it cannot be loaded into PyTorch (use --engine onnx)"
        )
    if source.kind == "checkpoint":
        assert source.path is not None
        return ckpt.load_checkpoint(source.path, device, expected_sha256=source.sha256)
    model = ckpt.build_model(source.meta)
    return model.to(device).eval(), source.meta

"""Fine-tuning: start a run from another model's weights (``--init CKPT|SHIPPED_NAME``).

Every tensor whose name and shape match is loaded. The classification head is re-initialised
when the class table differs (names or codes, even at the same count), and a tensor whose
shape differs (the first layer of a modality given another band count) keeps its fresh
initialisation; both are listed in the record. ``--freeze-encoder N`` keeps the encoder's
parameters fixed for the first N epochs (named per architecture family in
:data:`ENCODER_PREFIXES`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from mfaf_cli.errors import WeightsError
from mfaf_cli.metadata import ClassInfo, ModelMeta

#: top-level module names of the classification head, per architecture family
HEAD_PREFIXES = ("outc.", "classifier.", "head.")
#: top-level module names of the encoder(s), per architecture family (U-Net, CoMiX, MFAFNet)
ENCODER_PREFIXES = (
    "inc.",
    "downs.",
    "h_stem",
    "h_blocks.",
    "h_down.",
    "x_stem",
    "x_blocks.",
    "x_down.",
    "band_proj.",
    "stem.",
    "encoders.",
)


def resolve_init(spec: str) -> tuple[Path, str]:
    """(file, name) of ``--init``: a checkpoint path, or a shipped model's name."""
    from mfaf_cli.io.weights import entry_path, manifest_entry

    p = Path(spec)
    if p.is_file():
        return p, p.name
    entry = manifest_entry(spec)
    if entry is not None:
        return entry_path(entry), spec
    raise WeightsError(f"--init {spec}: no such checkpoint file or shipped model name")


def _same_table(a: Sequence[ClassInfo], b: Sequence[ClassInfo]) -> bool:
    return [(c.name, c.code) for c in a] == [(c.name, c.code) for c in b]


def init_from(
    model: nn.Module, spec: str, arch: str, config: dict[str, Any], classes: Sequence[ClassInfo]
) -> dict[str, Any]:
    """Load ``spec``'s matching tensors into ``model``; the record for the model's metadata."""
    from mfaf_cli.io.weights import file_sha256, load_checkpoint, read_meta

    path, name = resolve_init(spec)
    if path.suffix.lower() != ".safetensors":
        raise WeightsError(f"--init {spec}: {path.name} is not a .safetensors checkpoint")
    meta: ModelMeta = read_meta(path)
    if meta.arch != arch or dict(meta.config) != dict(config):
        raise WeightsError(
            f"--init {spec} is a checkpoint of {meta.arch} (model config {meta.config}), not "
            f"of {arch} (model config {config}); use --model {meta.arch} or another --init"
        )
    parent, _ = load_checkpoint(path)
    src = parent.state_dict()
    head_new = not _same_table(meta.classes, classes)
    dst = model.state_dict()
    loaded, fresh = {}, []
    for key, t in dst.items():
        s = src.get(key)
        if (head_new and key.startswith(HEAD_PREFIXES)) or s is None or s.shape != t.shape:
            fresh.append(key)
        else:
            loaded[key] = s
    if not loaded:
        raise WeightsError(f"--init {spec}: no tensor of it fits this model")
    model.load_state_dict(loaded, strict=False)
    return {
        "name": name,
        "sha256": file_sha256(path),
        "arch": meta.arch,
        "classes": meta.class_names,
        "loaded_tensors": len(loaded),
        "reinitialised": sorted({k.rsplit(".", 1)[0] for k in fresh}),
        "head_reinitialised": head_new,
    }


def set_encoder_frozen(model: nn.Module, frozen: bool) -> int:
    """Freeze (or unfreeze) the encoder's parameters; how many tensors that touched."""
    n = 0
    for key, p in model.named_parameters():
        if key.startswith(ENCODER_PREFIXES):
            p.requires_grad_(not frozen)
            n += 1
    return n

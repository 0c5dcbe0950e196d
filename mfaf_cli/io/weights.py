"""Checkpoints (safetensors + metadata record) and the shipped-weights manifest.

Turning a ``--model`` value into a model (shipped name, file, registry architecture) is not
I/O and lives in :mod:`mfaf_cli.models.resolve`.

Why safetensors only: a checkpoint is data, never code. ``torch.load`` unpickles and can run
arbitrary code from a downloaded file; safetensors cannot. Every checkpoint carries its
:class:`~mfaf_cli.metadata.ModelMeta` as JSON in the safetensors metadata (key ``mfaf_meta``)
and a sha256 of that record plus every tensor (key ``mfaf_sha256``), so a flipped byte is
caught even for files that are not listed in the shipped-weights manifest
(``mfaf_cli/weights/manifest.json``). Files listed there are additionally checked against the
manifest's whole-file sha256.

Every failure here is a :class:`WeightsError` (or a usage error) with a one-line message that
says what is wrong with which file; nothing leaks a safetensors/JSON traceback to the user.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfaf_cli.errors import ModelError, WeightsError
from mfaf_cli.io.atomic import atomic_path
from mfaf_cli.metadata import META_KEY, ModelMeta

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger("mfaf")

DIGEST_KEY = "mfaf_sha256"
MANIFEST_NAME = "manifest.json"
CHECKPOINT_SUFFIXES = (".safetensors",)
ONNX_SUFFIXES = (".onnx",)
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


# ---- small helpers ------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a whole file (streamed, constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike[str], expected: str) -> None:
    """Raise :class:`WeightsError` unless the file's sha256 is ``expected``."""
    actual = file_sha256(path)
    if actual.lower() != expected.lower():
        raise WeightsError(
            f"checksum mismatch for {path}: expected sha256 {expected[:12]}…, got {actual[:12]}… "
            "(the file was altered or truncated; re-download or re-train it)"
        )


def _tensor_digest(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    """sha256 over the metadata record and every tensor (name, dtype, shape, bytes)."""
    import torch

    h = hashlib.sha256()
    h.update(meta_json.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---- safetensors header (read without loading any tensor) --------------------------------
def _sniff_format(head: bytes) -> str | None:
    """Name a recognisable non-safetensors format, for a helpful error. A safetensors header
    (8-byte length, then ``{``) is none of them, whatever its length's first bytes are (a
    length of 0x0280..0x05ff bytes starts like a pickle)."""
    if head[8:9] == b"{":
        return None
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (PyTorch .pt/.pth checkpoints are zipped pickles)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the weights (run `git lfs pull`)"
    if head.startswith(b"\x08") and b"onnx" in head[:64].lower():
        return "an ONNX model (use it with --engine onnx)"
    return None


def read_safetensors_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and validate a safetensors header; raise :class:`WeightsError` when broken.

    Checks that the header is JSON, that every tensor's byte range lies in the file and that
    the data section ends exactly at the end of the file (catches truncation and appended bytes).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        what = _sniff_format(head + f.read(64))
        if what is not None:
            raise WeightsError(
                f"{path} is {what}, not a safetensors checkpoint; mfaf never unpickles weights"
            )
        if len(head) < 8:
            raise WeightsError(f"{path} is not a safetensors checkpoint (file is {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > _MAX_HEADER or 8 + n > size:
            raise WeightsError(
                f"{path} is not a valid safetensors checkpoint (bad header length; "
                "file truncated or not safetensors)"
            )
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WeightsError(
            f"{path} is not a valid safetensors checkpoint (header is not JSON; "
            "file was altered or is another format)"
        ) from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path} is not a valid safetensors checkpoint (header is not a map)")
    data_len = size - 8 - n
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            start, stop = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"{path}: tensor {key!r} has a malformed header entry") from None
        end = max(end, stop)
        if not 0 <= start <= stop:
            raise WeightsError(f"{path}: tensor {key!r} has invalid offsets (file was altered)")
    if end > data_len:
        raise WeightsError(
            f"{path} is truncated: tensors need {end} data bytes but only {data_len} are present"
        )
    if end < data_len:
        raise WeightsError(f"{path} has {data_len - end} unexpected trailing bytes (file altered)")
    return header


def _meta_from_record(path: Path, record: Mapping[str, str], missing: str) -> ModelMeta:
    """The :class:`ModelMeta` stored under ``mfaf_meta`` in a file's string metadata
    (safetensors ``__metadata__`` or ONNX ``metadata_props``); ``missing`` says how to fix a
    file without one."""
    if META_KEY not in record:
        raise WeightsError(f"{path} has no mfaf metadata record; {missing}")
    try:
        return ModelMeta.from_json(record[META_KEY])
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from None


def _meta_from_header(path: Path, header: dict[str, Any]) -> ModelMeta:
    return _meta_from_record(
        path,
        header.get("__metadata__") or {},
        "it is not an mfaf checkpoint (save it with mfaf_cli.io.weights.save_checkpoint)",
    )


def read_meta(path: str | os.PathLike[str]) -> ModelMeta:
    """The metadata record of a .safetensors checkpoint or .onnx model, without the weights."""
    path = Path(path)
    if path.suffix.lower() in ONNX_SUFFIXES:
        return read_onnx_meta(path)
    return _meta_from_header(path, read_safetensors_header(path))


def read_onnx_meta(path: str | os.PathLike[str]) -> ModelMeta:
    """Metadata record from an ONNX model's ``metadata_props`` (key ``mfaf_meta``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"ONNX model not found: {path}")
    from mfaf_cli.io.onnx_props import ProtoError, read_metadata_props

    try:
        with open(path, "rb") as f:
            props = read_metadata_props(f, path.stat().st_size)
    except (OSError, ProtoError) as err:
        raise WeightsError(f"{path} is not a readable ONNX model ({type(err).__name__})") from None
    return _meta_from_record(
        path,
        props,
        "export it with `mfaf export` so band order, normalisation and classes travel with it",
    )


# ---- checkpoints --------------------------------------------------------------------------
def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict as contiguous CPU tensors, cloning any that share storage (tied weights)."""
    import torch

    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in model.state_dict().items():
        t = v.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or not t.is_contiguous() or t.storage_offset() != 0:
            t = t.clone(memory_format=torch.contiguous_format)
        elif t.numel():
            seen.add(ptr)
        out[k] = t.contiguous()
    return out


def save_checkpoint(model: nn.Module, meta: ModelMeta, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s weights and ``meta`` to a safetensors file atomically; return the path."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = _cpu_state(model)
    meta_json = meta.to_json()
    metadata = {META_KEY: meta_json, DIGEST_KEY: _tensor_digest(tensors, meta_json)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def build_model(meta: ModelMeta) -> nn.Module:
    """An untrained network with the architecture, bands and classes that ``meta`` describes."""
    from mfaf_cli import registry

    return registry.create_model(meta.arch, meta.in_channels, meta.num_classes, **meta.config)


def load_checkpoint(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    expected_sha256: str | None = None,
) -> tuple[nn.Module, ModelMeta]:
    """Build the model a checkpoint describes and load its weights (strict); eval mode.

    ``expected_sha256`` (whole file) is checked first when given; otherwise, if the file is
    listed in the weights manifest, the manifest's checksum is used.
    """
    from safetensors.torch import load_file

    path = Path(path)
    header = read_safetensors_header(path)
    meta = _meta_from_header(path, header)
    if expected_sha256 is None:
        entry = _manifest_entry_for_file(path)
        expected_sha256 = entry.get("sha256") if entry else None
    if expected_sha256:
        verify_sha256(path, expected_sha256)
    from safetensors import SafetensorError

    try:
        tensors = load_file(str(path), device="cpu")
    except (OSError, SafetensorError) as err:
        raise WeightsError(
            f"{path} could not be read as safetensors ({type(err).__name__}); "
            "the file was altered or truncated"
        ) from None
    digest = (header.get("__metadata__") or {}).get(DIGEST_KEY)
    if digest is None:
        log.debug("%s carries no %s; integrity checked by format only", path, DIGEST_KEY)
    elif _tensor_digest(tensors, header["__metadata__"][META_KEY]) != digest:
        raise WeightsError(
            f"checksum mismatch for {path}: its tensors do not match the checksum recorded "
            "at save time (the file was altered or truncated)"
        )
    try:
        model = build_model(meta)
    except ModelError as err:
        raise WeightsError(f"{path} describes a model this mfaf cannot build: {err}") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = "; ".join(s.strip() for s in first[1:3]) or first[0]
        raise WeightsError(
            f"{path} does not fit architecture {meta.arch!r} ({detail[:300]})"
        ) from None
    return model.to(device).eval(), meta


# ---- manifest -----------------------------------------------------------------------------
def weights_dir() -> Path:
    """The shipped-weights folder: ``$MFAF_WEIGHTS_DIR`` or the package's ``weights/`` folder.

    The weights are package data (``mfaf_cli/weights/``), so they are found from a source
    checkout, an editable install and a wheel alike. Which files ship is what
    ``manifest.json`` there lists; nothing here knows their names.
    """
    env = os.environ.get("MFAF_WEIGHTS_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[1] / "weights"


def manifest_path(root: str | os.PathLike[str] | None = None) -> Path:
    """``<weights folder>/manifest.json`` (``root`` overrides the weights folder)."""
    return (Path(root) if root is not None else weights_dir()) / MANIFEST_NAME


def read_manifest(root: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Entries of the weights folder's ``manifest.json`` ([] when there is none)."""
    mpath = manifest_path(root)
    if not mpath.is_file():
        return []
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
        models = data["models"]
        if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
            raise TypeError("'models' is not a list of objects")
        for m in models:
            for key in ("name", "file"):
                if key not in m:
                    raise KeyError(key)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise WeightsError(f"weights manifest {mpath} is malformed ({err})") from None
    return models


def manifest_entry(name: str, root: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The manifest entry called ``name``, or None."""
    for entry in read_manifest(root):
        if entry["name"] == name:
            return entry
    return None


def entry_path(entry: dict[str, Any], root: str | os.PathLike[str] | None = None) -> Path:
    """Absolute path of a manifest entry's file (``file`` is relative to the weights folder)."""
    base = Path(root) if root is not None else weights_dir()
    return base / entry["file"]


def _manifest_entry_for_file(path: Path) -> dict[str, Any] | None:
    try:
        entries = read_manifest()
    except WeightsError:
        return None
    target = path.resolve()
    for entry in entries:
        if entry_path(entry).resolve() == target:
            return entry
    return None


def _write_manifest(entries: list[dict[str, Any]], root: Path) -> None:
    payload = json.dumps({"format_version": 1, "models": entries}, indent=2, sort_keys=False)
    with atomic_path(root / MANIFEST_NAME) as tmp:
        tmp.write_text(payload + "\n", encoding="utf-8")


def register_weights(
    path: str | os.PathLike[str],
    name: str,
    *,
    default: bool = False,
    root: str | os.PathLike[str] | None = None,
    description: str = "",
    by_name_only: str = "",
) -> dict[str, Any]:
    """Add or update a manifest entry for a checkpoint (copied into the weights folder).

    ``default=True`` makes it the model ``mfaf predict`` uses for its modality set and clears
    the flag on other entries for the same set. ``by_name_only``: why the model is shipped but
    never picked without ``--model NAME`` (e.g. it scores below a plain baseline); a user who
    gives only its modalities is told so instead. Returns the entry written.
    """
    from mfaf_cli.registry import list_models

    path = Path(path)
    if name in {e.name for e in list_models()}:
        raise ModelError(f"weights name {name!r} clashes with a registry architecture name")
    base = Path(root) if root is not None else weights_dir()
    base.mkdir(parents=True, exist_ok=True)
    meta = read_meta(path)  # validates the file before it is registered
    dest = base / f"{name}{path.suffix.lower()}"
    if path.resolve() != dest.resolve():
        with atomic_path(dest) as tmp:
            shutil.copyfile(path, tmp)
    entry: dict[str, Any] = {
        "name": name,
        "file": dest.name,
        "sha256": file_sha256(dest),
        "size_bytes": dest.stat().st_size,
        "arch": meta.arch,
        "modalities": list(meta.modality_names),
        "bands": {m.name: m.n_bands for m in meta.modalities},
        "classes": meta.class_names,
        "tile_size": meta.tile_size,
        "trained": meta.trained,
        "default": bool(default),
        "metrics": meta.metrics,
        "description": description,
    }
    if by_name_only:
        entry["by_name_only"] = by_name_only
    entries = [e for e in read_manifest(base) if e["name"] != name]
    if default:
        mods = set(meta.modality_names)
        for e in entries:
            if set(e.get("modalities", ())) == mods:
                e["default"] = False
    entries.append(entry)
    _write_manifest(entries, base)
    return entry

"""A per-user cache of ONNX exports, so ``--engine auto`` pays the export once per checkpoint.

An entry is keyed by the checkpoint file's sha256, the tile size the graph is fixed to and the
model metadata (which bands/classes the graph takes): a changed checkpoint gets a new key and
is exported again; an unchanged one is loaded straight away. Entries are written atomically
(temp file + rename), so concurrent runs never load a half-written graph.

The folder is ``$MFAF_CACHE_DIR`` when set, else the platform's user cache folder
(``~/.cache/mfaf`` on Linux, via platformdirs).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from mfaf_cli.errors import EngineError

if TYPE_CHECKING:
    from mfaf_cli.models.resolve import ModelSource

log = logging.getLogger("mfaf")

CACHE_ENV = "MFAF_CACHE_DIR"
#: bump when the export procedure changes in a way that invalidates old graphs
EXPORT_FORMAT = "1"


def cache_dir() -> Path:
    """The cache folder (not created here)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("mfaf", appauthor=False))


def export_key(checkpoint_sha256: str, tile: int, meta_json: str) -> str:
    """Cache key of one export: pure function of what determines the graph."""
    h = hashlib.sha256()
    for part in (EXPORT_FORMAT, checkpoint_sha256, str(int(tile)), meta_json):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def cached_onnx(source: ModelSource, tile: int) -> Path:
    """Path of the ONNX export of checkpoint ``source`` for ``tile``, exporting it if missing."""
    from mfaf_cli.io.weights import file_sha256

    if source.kind != "checkpoint" or source.path is None:
        raise ValueError("only checkpoints are cached")
    meta = replace(source.meta, tile_size=int(tile))
    key = export_key(file_sha256(source.path), tile, meta.to_json())
    folder = cache_dir() / "onnx"
    path = folder / f"{Path(source.path).stem}-{key}.onnx"
    if path.is_file():
        log.debug("ONNX export cache hit: %s", path)
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EngineError(
            f"cannot create the cache folder {folder} ({err.strerror}); set {CACHE_ENV} to a "
            "writable folder or use --engine torch"
        ) from None
    from mfaf_cli.models.export import export_onnx
    from mfaf_cli.models.resolve import load_model  # torch: only on a cache miss

    log.info("exporting %s to ONNX for tile %d (cached in %s)", source.name, tile, folder)
    model, loaded = load_model(source, device="cpu")
    return export_onnx(model, replace(loaded, tile_size=int(tile)), path)

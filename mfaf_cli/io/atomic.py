"""One way to write a single file so that its final name never holds a half-written file.

Checkpoints, manifests, ONNX exports and preview PNGs use :func:`atomic_path`. Prediction
rasters and vector outputs write several files that must appear together, and keep their own
transactional writers (:func:`mfaf_cli.io.raster.atomic_outputs`,
:func:`mfaf_cli.vectorize.polygons.write_vector_atomic`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    A crash or Ctrl-C therefore never leaves a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp (and writers that recreate the file) leave it 0600; give the usual mode
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()

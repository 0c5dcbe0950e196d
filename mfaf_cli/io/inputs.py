"""Opening a user's raster, with one actionable error line for everything that can be wrong.

The one place that turns "this path is not a usable raster" into an :class:`InputError`
naming the file, the problem and the fix. predict / coregister (through
:mod:`mfaf_cli.coreg`), ``mfaf info``, ``mfaf vectorize`` and ``mfaf evaluate`` all open their
inputs here, so a missing, empty, truncated or CRS-less file reads the same in every command.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from mfaf_cli.errors import CRSError, InputError
from mfaf_cli.io.remote import is_remote


def check_readable(path: str | os.PathLike[str], what: str = "input") -> Path:
    """Fail early, with a fix, for paths that cannot be a raster (before GDAL's own errors).

    ``what`` names the file's role in the messages (``"sar"``, ``"truth"``, ``"label raster"``).
    GDAL virtual paths (``/vsi...``) and URLs are left for GDAL to judge.
    """
    p = Path(path)
    text = os.fspath(path)
    if text.startswith("/vsi") or "://" in text:
        return p
    if not p.exists():
        raise InputError(f"{what} file {p} does not exist; check the path")
    if p.is_dir():
        raise InputError(f"{what} {p} is a directory; pass a raster file (e.g. a GeoTIFF)")
    if not os.access(p, os.R_OK):
        raise InputError(f"{what} {p} is not readable (permission denied); check its permissions")
    if p.stat().st_size == 0:
        raise InputError(
            f"{what} {p} is an empty (zero-byte) file, not a readable raster; "
            "copy or export it again"
        )
    return p


def open_raster(
    path: str | os.PathLike[str], what: str = "input", *, require_crs: bool = True
) -> Any:
    """Open a raster for reading (a ``rasterio`` dataset), or raise one clear mfaf error.

    Checks, in order: the path (:func:`check_readable`), that GDAL can open it and it has
    pixels, that its first and last blocks can be read (:func:`probe_pixels`: a truncated copy
    has an intact header), and with ``require_crs`` that it has a CRS (:class:`CRSError`).
    Without ``require_crs`` a CRS-less file opens silently, for callers that describe it
    (``mfaf info``) or word the error themselves (``mfaf vectorize``).
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    p = check_readable(path, what)
    if is_remote(path):
        return _open_remote(os.fspath(path), what, require_crs)
    try:
        with warnings.catch_warnings():
            if not require_crs:  # the caller reports a missing CRS its own way
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path if isinstance(path, str) else p)
    except (OSError, RasterioError) as err:  # not a raster, corrupt header, unsupported
        raise InputError(f"{what} {p} is not a readable raster ({_first_line(err)})") from None
    return _checked(ds, p, what, require_crs)


def _open_remote(path: str, what: str, require_crs: bool) -> Any:
    """A URL or ``/vsi`` path through GDAL; a failure says the URL and the server's answer."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    from mfaf_cli.io.remote import diagnose, gdal_path, url_of

    try:
        with warnings.catch_warnings():
            if not require_crs:
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(gdal_path(path))
    except (OSError, RasterioError) as err:
        why = diagnose(path) or _first_line(err)
        raise InputError(f"{what} {url_of(path)} could not be opened: {why}") from None
    return _checked(ds, url_of(path), what, require_crs)


def _checked(ds: Any, p: Any, what: str, require_crs: bool) -> Any:
    """``ds`` if it has pixels, readable first/last blocks and (if required) a CRS."""
    try:
        if ds.count == 0 or ds.width == 0 or ds.height == 0:
            raise InputError(f"{what} {p} is not a readable raster (it has no bands or no pixels)")
        probe_pixels(ds)  # a truncated file can lose its CRS tags too: say "truncated" first
        # a file located by ground control points or RPCs is georeferenced (coreg/georef.py)
        located = bool(ds.gcps[0] and ds.gcps[1] is not None) or ds.rpcs is not None
        if require_crs and (ds.crs is None or not ds.crs.to_wkt()) and not located:
            name = Path(str(p)).name
            fix = f"assign one with gdal_edit.py -a_srs EPSG:xxxx {name}"
            raise CRSError(
                f"{what} {p} has no CRS; {fix} (it has no ground control points or RPCs either)"
            )
    except BaseException:
        ds.close()
        raise
    return ds


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def gdal_reason(err: BaseException) -> str:
    """First line of the innermost exception of a chain (GDAL's own reason for a failure)."""
    inner = err
    while inner.__cause__ is not None or inner.__context__ is not None:
        inner = inner.__cause__ or inner.__context__  # type: ignore[assignment]
    text = str(inner).strip() or str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def read_error(path: Any, err: BaseException) -> InputError:
    """The one-line error for pixels GDAL cannot read (truncated or corrupt file; for a URL,
    the transfer that failed)."""
    if is_remote(path):
        from mfaf_cli.io.remote import url_of

        return InputError(
            f"reading {url_of(os.fspath(path))} failed ({gdal_reason(err)}); check the "
            "connection or raise MFAF_HTTP_TIMEOUT / MFAF_HTTP_RETRIES"
        )
    return InputError(
        f"{path} is truncated or corrupt (reading its pixels failed: {gdal_reason(err)}); "
        "copy or export the file again"
    )


#: Local files whose probe passed, by identity (path, size, modification time): a run opens
#: each input several times (grid, scene, each reader thread's handle, provenance), and each
#: probe decodes two blocks (measured ~10 ms per open of a deflate GeoTIFF with 512² blocks);
#: a file rewritten since gets a new identity and is probed again.
_PROBED: set[tuple[str, int, int]] = set()
_PROBED_MAX = 256


def _identity(ds: Any) -> tuple[str, int, int] | None:
    """A local file's (real path, size, mtime in ns), or None (remote, in-memory, gone)."""
    name = str(getattr(ds, "name", ""))
    if not name or is_remote(name) or name.startswith("/vsi"):
        return None
    try:
        st = os.stat(name)
    except OSError:
        return None
    return os.path.realpath(name), st.st_size, st.st_mtime_ns


def probe_pixels(ds: Any) -> None:
    """Read the first and the last block of band 1; raise :func:`read_error` if that fails.

    The header alone can look fine (GDAL reads it from the first bytes), so a copy that was cut
    short would otherwise be described as valid and fail later, deep inside a run. A local
    file is probed once while it stays the same (:data:`_PROBED`).
    """
    key = _identity(ds)
    if key is not None and key in _PROBED:
        return
    _read_probe(ds)
    if key is not None:
        if len(_PROBED) >= _PROBED_MAX:
            _PROBED.clear()
        _PROBED.add(key)


def _read_probe(ds: Any) -> None:
    """The reads of :func:`probe_pixels`."""
    from rasterio.errors import RasterioError
    from rasterio.windows import Window as RioWindow

    bh, bw = ds.block_shapes[0]
    last = RioWindow(((ds.width - 1) // bw) * bw, ((ds.height - 1) // bh) * bh, 1, 1)
    try:
        ds.read(1, window=RioWindow(0, 0, 1, 1))
        ds.read(1, window=last)
    except (OSError, RasterioError) as err:
        raise read_error(ds.name, err) from None

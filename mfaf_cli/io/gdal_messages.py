"""libtiff's own error lines, routed into mfaf's logging instead of straight to stderr.

GDAL reports a failed write through its error handler (rasterio turns it into an exception,
the CLI into one line: "no space left on device"), but the libtiff it bundles also prints
``_tiffWriteProc: No space left on device.`` lines on its own, from its default error handler,
above that one line. :func:`route_libtiff_messages` replaces that default handler by one that
logs the module name at debug level (``-vv`` shows them). It is called once by the CLI; the
library leaves process-wide handlers alone.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

log = logging.getLogger("mfaf")

#: ``void handler(const char *module, const char *fmt, va_list ap)``
_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)
_installed: list[Any] = []  # keeps the callback alive while libtiff holds it


def _libtiff_paths() -> list[str]:
    """Files of the libtiff copies loaded into this process (rasterio's wheel bundles one)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            paths = {ln.split()[-1] for ln in f if "libtiff" in ln and "/" in ln}
    except OSError:  # not Linux: nothing to route (the messages stay as they are)
        return []
    return sorted(paths)


def _log_tiff_error(module: bytes | None, fmt: bytes | None, _ap: int | None) -> None:
    log.debug("libtiff error in %s", (module or b"?").decode(errors="replace"))


def route_libtiff_messages() -> int:
    """Install the logging handler in every loaded libtiff; returns how many took it."""
    import rasterio  # noqa: F401 - loads GDAL and its libtiff

    if not _installed:
        _installed.append(_HANDLER(_log_tiff_error))
    done = 0
    for path in _libtiff_paths():
        try:
            lib = ctypes.CDLL(path)
            lib.TIFFSetErrorHandler.restype = ctypes.c_void_p
            lib.TIFFSetErrorHandler.argtypes = [_HANDLER]
        except (OSError, AttributeError):
            continue
        lib.TIFFSetErrorHandler(_installed[0])
        done += 1
    return done

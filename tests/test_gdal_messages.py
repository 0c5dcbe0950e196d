"""Issue 20.5: on a full disk libtiff's own ``_tiffWriteProc: No space left on device.`` lines
no longer go to stderr above mfaf's one line; they go to the log (debug)."""

from __future__ import annotations

import ctypes
import logging
import sys

import pytest

from mfaf_cli.io.gdal_messages import _libtiff_paths, route_libtiff_messages


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps")
def test_libtiff_errors_go_to_the_log_not_stderr(capfd, caplog) -> None:  # type: ignore[no-untyped-def]
    assert route_libtiff_messages() >= 1
    lib = ctypes.CDLL(_libtiff_paths()[0])
    with caplog.at_level(logging.DEBUG, logger="mfaf"):
        lib.TIFFError(b"_tiffWriteProc", b"%s", b"No space left on device")
    assert capfd.readouterr().err == ""
    assert "libtiff error in _tiffWriteProc" in caplog.text

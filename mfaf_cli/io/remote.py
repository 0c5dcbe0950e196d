"""Inputs by URL: ``http(s)://``, ``s3://``, ``gs://`` and GDAL ``/vsi…`` paths.

GDAL reads them through its virtual file systems (``/vsicurl/``, ``/vsis3/``, ``/vsigs/``),
fetching only the byte ranges a window needs. :func:`remote_env` sets the HTTP behaviour for
one run (no directory listing on open, a block cache, retries with back-off, a timeout) and
restores GDAL's settings afterwards; a setting the user exported (``GDAL_HTTP_MAX_RETRY=…``)
wins. When GDAL cannot open a URL, :func:`diagnose` asks the server once more, with the same
timeout, to say *why* in one line (HTTP status, timeout, an HTML page instead of a raster).
Nothing here touches the network at import time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

#: URL scheme → GDAL virtual file system.
_SCHEMES = {"http://": "/vsicurl/", "https://": "/vsicurl/", "s3://": "/vsis3/",
            "gs://": "/vsigs/"}  # fmt: skip


def is_remote(path: Any) -> bool:
    """Whether ``path`` is a URL or a GDAL virtual path (``/vsi…``): never a local file."""
    text = os.fspath(path) if isinstance(path, str | os.PathLike) else ""
    return isinstance(text, str) and (text.startswith("/vsi") or "://" in text)


def is_http(path: Any) -> bool:
    text = os.fspath(path) if isinstance(path, str | os.PathLike) else ""
    return isinstance(text, str) and text.lower().startswith(("http://", "https://"))


def gdal_path(path: str) -> str:
    """``https://h/a.tif`` → ``/vsicurl/https://h/a.tif``; ``s3://b/k`` → ``/vsis3/b/k``;
    ``gs://b/k`` → ``/vsigs/b/k``; ``/vsi…`` and local paths unchanged."""
    for scheme, vsi in _SCHEMES.items():
        if path.lower().startswith(scheme):
            rest = path if vsi == "/vsicurl/" else path[len(scheme) :]
            return vsi + rest
    return path


def url_of(path: str) -> str:
    """The URL a user would recognise: ``/vsicurl/https://h/a.tif`` → ``https://h/a.tif``."""
    for prefix in ("/vsicurl/", "/vsicurl_streaming/"):
        if path.startswith(prefix):
            return path[len(prefix) :]
    for scheme, vsi in (("s3://", "/vsis3/"), ("gs://", "/vsigs/")):
        if path.startswith(vsi):
            return scheme + path[len(vsi) :]
    return path


def shown_path(path: Any) -> str:
    """An input as reports show it: a URL as given, a local file as an absolute path."""
    from pathlib import Path

    text = os.fspath(path)
    return url_of(text) if is_remote(text) else str(Path(text).absolute())


def timeout_s() -> float:
    """The run's HTTP timeout: ``$MFAF_HTTP_TIMEOUT`` seconds without data (default 30)."""
    try:
        return max(float(os.environ.get("MFAF_HTTP_TIMEOUT", "30")), 0.1)
    except ValueError:
        return 30.0


def http_options() -> dict[str, str]:
    """GDAL settings for remote inputs. Retries (``$MFAF_HTTP_RETRIES``, default 3) back off
    from 0.5 s (GDAL doubles the delay, with jitter). The timeout is a time without data
    (connecting, or under 1 byte/s), not a cap on a transfer: a large block on a slow link
    still arrives, a server that stalls is given up."""
    secs = str(max(round(timeout_s()), 1))
    return {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no listing of the folder on open
        # a block cache per file handle, and one of downloaded ranges for the process: both
        # bounded, so memory does not grow with the scene (GDAL_CACHEMAX is set per run)
        "VSI_CACHE": "TRUE",
        "VSI_CACHE_SIZE": str(8 * 1024 * 1024),
        "CPL_VSIL_CURL_CACHE_SIZE": str(64 * 1024 * 1024),
        "GDAL_HTTP_MULTIRANGE": "YES",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "GDAL_HTTP_MAX_RETRY": os.environ.get("MFAF_HTTP_RETRIES", "3"),
        "GDAL_HTTP_RETRY_DELAY": "0.5",
        "GDAL_HTTP_CONNECTTIMEOUT": secs,
        "GDAL_HTTP_LOW_SPEED_TIME": secs,
        "GDAL_HTTP_LOW_SPEED_LIMIT": "1",
    }


def _user_set(options: Mapping[str, str]) -> dict[str, str]:
    """``options`` less those the user set in the environment (theirs win)."""
    return {k: v for k, v in options.items() if k not in os.environ}


@contextlib.contextmanager
def remote_env(active: bool = True) -> Iterator[None]:
    """GDAL's HTTP settings for the body of the block (a no-op when ``active`` is False)."""
    if not active:
        yield
        return
    import rasterio

    with rasterio.Env(**_user_set(http_options())):
        yield


def diagnose(path: str) -> str:
    """Why a remote raster could not be opened, in a few words (one request, small range).

    ``HTTP 404 Not Found``, ``no answer within 2 s (timeout)``, ``the server answered an HTML
    page (text/html), not a raster``; for s3/gs and ``/vsi`` paths, GDAL's reason is all there
    is, so an empty string is returned and the caller says what GDAL said.
    """
    url = url_of(path)
    if not is_http(url):
        return ""
    import urllib.error  # here: urllib.request loads ssl, ~3 MB that a local run never uses
    import urllib.request

    req = urllib.request.Request(url, headers={"Range": "bytes=0-1023"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s()) as resp:
            kind = resp.headers.get("Content-Type", "") or ""
            head = resp.read(1024)
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code} {err.reason}"
    except TimeoutError:
        return f"no answer within {timeout_s():g} s (timeout)"
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            return f"no answer within {timeout_s():g} s (timeout)"
        return f"cannot connect ({err.reason})"
    except OSError as err:
        return f"cannot connect ({err})"
    if "html" in kind.lower() or head.lstrip()[:1] == b"<":
        return f"the server answered an HTML page ({kind or 'text/html'}), not a raster"
    return ""


def fetch_text(path: str, what: str) -> str:
    """The text of a small document (a STAC item) at a URL or local path, one error line else."""
    from pathlib import Path

    from mfaf_cli.errors import InputError

    if not is_http(path):
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{what} {path} does not exist; check the path")
        return p.read_text(encoding="utf-8")
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(path, timeout=timeout_s()) as resp:
            data: bytes = resp.read()
    except urllib.error.HTTPError as err:
        raise InputError(f"{what} {path}: HTTP {err.code} {err.reason}") from None
    except TimeoutError:
        raise InputError(f"{what} {path}: no answer within {timeout_s():g} s (timeout)") from None
    except urllib.error.URLError as err:
        raise InputError(f"{what} {path}: cannot connect ({err.reason})") from None
    return data.decode("utf-8", errors="replace")

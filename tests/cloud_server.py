"""A small HTTP server for the cloud-input tests: files over Range requests, on 127.0.0.1.

``/<anything>/<name>`` serves ``root/<name>`` (prefixes defeat GDAL's per-URL cache between
runs of one process); ``/stall/...`` answers nothing for ``stall_s`` seconds; ``/html/...``
answers an HTML page; a missing file is a 404. Every body byte sent is counted.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Served:
    """The running server's address and its byte counter."""

    def __init__(self, root: Path, stall_s: float) -> None:
        self.root, self.stall_s = root, stall_s
        self.bytes_sent = 0
        self.requests = 0
        self.log: list[tuple[str, int, int]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.url = ""

    def count(self, n: int) -> None:
        with self.lock:
            self.bytes_sent += n
            self.requests += 1

    def reset(self) -> None:
        with self.lock:
            self.bytes_sent = self.requests = 0
            self.log = []


def _handler(state: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = self.path.split("?")[0]
            if path.startswith("/stall/"):
                state.stop.wait(state.stall_s)  # bounded: the test's stop ends it at once
                return
            if path.startswith("/html/"):
                page = b"<!doctype html><html><body>Sign in to continue</body></html>"
                self._send(200, page, "text/html; charset=utf-8", body)
                return
            f = state.root / Path(path).name
            if not f.is_file():
                self._send(404, b"not found", "text/plain", body)
                return
            data = f.read_bytes()
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if m is None:
                self._send(200, data, "image/tiff", body)
                return
            a = int(m.group(1))
            b = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            if a >= len(data):
                self._send(416, b"", "text/plain", body)
                return
            state.log.append((f.name, a, b + 1 - a))
            self._send(206, data[a : b + 1], "image/tiff", body, (a, b, len(data)))

        def _send(self, code: int, data: bytes, kind: str, body: bool,
                  rng: tuple[int, int, int] | None = None) -> None:  # fmt: skip
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            if rng is not None:
                self.send_header("Content-Range", f"bytes {rng[0]}-{rng[1]}/{rng[2]}")
            self.end_headers()
            if body:
                self.wfile.write(data)
                state.count(len(data))

    return Handler


@contextlib.contextmanager
def serve(root: Path, stall_s: float = 5.0) -> Iterator[Served]:
    """Serve ``root`` on 127.0.0.1 (a free port) for the body of the block."""
    state = Served(root, stall_s)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        time.sleep(0)

"""A local HTTP file server for download tests (127.0.0.1 only).

``http_server`` (a pytest fixture, registered in conftest) serves files from a temporary
folder. URL paths map to files under ``server.root``, so fixture archives placed at the path of
a task's real URL are found with ``task.download(root, mirror=server.url)``.

Switches for failure cases:
- ``server.cut_after = N``: the next ``server.cut_count`` GET responses announce the full
  length but send only N bytes, then drop the connection (an interrupted transfer).
- ``server.ignore_range = True``: answer Range requests with the whole file (200).
- ``server.status[path] = 401``: answer that path with an error status.
- ``server.redirects[path] = url``: answer that path with a 302 to ``url``.
A URL path ending in "/" (an API endpoint such as ``.../contents/blob/``) is served from the
file ``<path>/__index__``.
Every request is logged in ``server.requests`` (method, path, headers).
"""

from __future__ import annotations

import mimetypes
import shutil
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote, urlsplit

import pytest


@dataclass
class LoggedRequest:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class LocalServer:
    root: Path
    url: str = ""
    requests: list[LoggedRequest] = field(default_factory=list)
    cut_after: int | None = None
    cut_count: int = 1
    ignore_range: bool = False
    status: dict[str, int] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, url_path: str, content: bytes | str | Path) -> str:
        """Serve ``content`` at ``url_path`` (unquoted, e.g. '/files/a.zip'); return its URL."""
        target = self.file_for(unquote(url_path))
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_bytes(content.encode() if isinstance(content, str) else content)
        return self.url + quote(url_path)

    def file_for(self, path: str) -> Path:
        """The file that answers the (unquoted) URL path ``path``."""
        return self.root / (path.lstrip("/") + ("__index__" if path.endswith("/") else ""))

    def range_requests(self, path: str | None = None) -> list[LoggedRequest]:
        return [r for r in self.requests if "Range" in r.headers and (path is None or r.path == path)]

    def gets(self, path: str | None = None) -> list[LoggedRequest]:
        return [r for r in self.requests if r.method == "GET" and (path is None or r.path == path)]


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` or ``bytes=a-`` -> inclusive (a, b); None when unsatisfiable."""
    unit, _, spec = header.partition("=")
    start_text, _, end_text = spec.split(",")[0].strip().partition("-")
    if unit.strip() != "bytes" or not start_text:
        return None
    start = int(start_text)
    end = min(int(end_text), size - 1) if end_text else size - 1
    return (start, end) if start < size and start <= end else None


def _make_handler(server: LocalServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(send_body=False)

        def do_GET(self) -> None:
            self._serve(send_body=True)

        def _serve(self, send_body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            with server.lock:
                server.requests.append(LoggedRequest(self.command, path, dict(self.headers)))
            if path in server.status:
                return self._error(server.status[path])
            if path in server.redirects:
                self.send_response(302)
                self.send_header("Location", server.redirects[path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            file = server.file_for(path)
            if not file.is_file():
                return self._error(404)
            data = file.read_bytes()
            status, body = 200, data
            content_range = None
            if "Range" in self.headers and not server.ignore_range:
                span = _parse_range(self.headers["Range"], len(data))
                if span is None:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status, body = 206, data[span[0]: span[1] + 1]
                content_range = f"bytes {span[0]}-{span[1]}/{len(data)}"
            self.send_response(status)
            ctype = mimetypes.guess_type(file.name)[0] if "." in path.rsplit("/", 1)[-1] else "text/html"
            self.send_header("Content-Type", ctype or "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            if content_range:
                self.send_header("Content-Range", content_range)
            self.end_headers()
            if not send_body:
                return
            with server.lock:
                cut = server.cut_after if server.cut_count > 0 else None
                if cut is not None:
                    server.cut_count -= 1
            if cut is None:
                self.wfile.write(body)
                return
            # send part of the body, then drop the connection mid-transfer
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _error(self, code: int) -> None:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@contextmanager
def running(handler: type[BaseHTTPRequestHandler], poll_interval: float = 0.5) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1 (a free port) in a daemon thread until the block ends;
    yields the server's base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": poll_interval},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def serving(root: Path) -> Iterator[LocalServer]:
    """Run a ``LocalServer`` for files under ``root`` on 127.0.0.1 (random free port)."""
    server = LocalServer(root=root)
    with running(_make_handler(server)) as url:
        server.url = url
        yield server


@pytest.fixture()
def http_server(tmp_path_factory) -> Iterator[LocalServer]:
    """A ``LocalServer`` for the test, stopped afterwards."""
    with serving(tmp_path_factory.mktemp("served")) as server:
        yield server

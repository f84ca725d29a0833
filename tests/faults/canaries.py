"""Canaries of the hostile-files scenario: things a hostile job must never reach, each
counting whoever reaches them.

- :class:`ListenerCanary`: a TCP listener on 127.0.0.1 (and ::1 on the same port when the
  machine has IPv6 loopback) that accepts and counts every connection;
- :class:`RedirectServer`: an HTTP server (an allowed host, ``localhost``) whose routes
  answer a redirect to wherever a scenario says (the canary, ``file://``, ...), counting
  requests;
- :class:`FileCanary`: a directory outside ``PREVIEW_SOURCE_ROOT`` holding a text file, a
  PNG and a FIFO that carry a marker nobody else writes; an inotify watch on the directory
  counts every open and read of anything in it (by any process), and :meth:`FileCanary.leaks`
  finds the marker (raw or hex-encoded) in bytes.

Everything binds 127.0.0.1 (or ::1) and lives in the scenario's temp directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import socket
import struct
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple


class Connection(NamedTuple):
    at: float
    peer: str


class ListenerCanary:
    """Accepts and counts TCP connections on 127.0.0.1:``port`` (and [::1]:``port``)."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        v4.bind(("127.0.0.1", 0))
        self.port = int(v4.getsockname()[1])
        self._sockets = [v4]
        with contextlib.suppress(OSError):
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            try:
                v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                v6.bind(("::1", self.port))
            except OSError:
                v6.close()
                raise
            self._sockets.append(v6)
        for sock in self._sockets:
            sock.listen(64)
            sock.setblocking(False)
        self._thread = threading.Thread(target=self._serve, daemon=True, name="canary-listener")

    @property
    def ipv6(self) -> bool:
        return len(self._sockets) > 1

    def url(self, host: str = "127.0.0.1", path: str = "/canary.png") -> str:
        return f"http://{host}:{self.port}{path}"

    def start(self) -> ListenerCanary:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select(self._sockets, [], [], 0.2)
            for sock in ready:
                with contextlib.suppress(BlockingIOError, OSError):
                    conn, peer = sock.accept()
                    with self._lock:
                        self.connections.append(Connection(time.time(), str(peer[0])))
                    conn.close()

    def count(self) -> int:
        with self._lock:
            return len(self.connections)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()


class RedirectServer:
    """``GET /route`` answers ``status`` with ``Location: target`` (routes set with
    :meth:`add`); anything else is a 404.  Serves 127.0.0.1, reached as ``localhost``."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, str]] = {}
        self.hits: dict[str, int] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    route = server.routes.get(self.path)
                    server.hits[self.path] = server.hits.get(self.path, 0) + 1
                try:
                    if route is None:
                        self.send_response(404)
                        self.send_header("Content-Length", "0")
                    else:
                        self.send_response(route[0])
                        self.send_header("Location", route[1])
                        self.send_header("Content-Length", "0")
                    self.end_headers()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, path: str, status: int, target: str) -> str:
        """Route ``path`` to a ``status`` redirect to ``target``; its URL (``localhost``)."""
        self.routes[path] = (status, target)
        return f"http://localhost:{self.port}{path}"

    def start(self) -> RedirectServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _inflated(data: bytes) -> list[bytes]:
    """The zlib-compressed payloads of a PNG's ``zTXt``, ``iTXt`` and ``iCCP`` chunks."""
    found: list[bytes] = []
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return found
    offset = 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        body = data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind in (b"zTXt", b"iTXt", b"iCCP"):
            start = body.find(b"\0")
            for skip in range(start + 1, min(len(body), start + 64)):
                with contextlib.suppress(zlib.error):
                    found.append(zlib.decompress(body[skip:]))
                    break
    return found


# --- the file canary ------------------------------------------------------------------

_IN_ACCESS = 0x001
_IN_OPEN = 0x020
_EVENT = struct.Struct("iIII")


class Access(NamedTuple):
    at: float
    name: str
    mask: int


class FileCanary:
    """A directory outside the source root with ``secret.txt``, ``secret.png`` and a FIFO
    ``pipe``, each carrying :attr:`marker`; :meth:`arm` starts counting every open or read
    of anything in the directory (inotify, whichever process does it).

    Raises:
      OSError: from :meth:`arm`, when inotify is not available.
    """

    def __init__(self, directory: Path, png: bytes) -> None:
        self.dir = directory
        self.marker = f"CANARY-{uuid.uuid4().hex}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.text = self.dir / "secret.txt"
        self.png = self.dir / "secret.png"
        self.fifo = self.dir / "pipe"
        self.text.write_text(f"{self.marker}\nroot:x:0:0:{self.marker}:/root:/bin/sh\n")
        self.png.write_bytes(png)
        os.mkfifo(self.fifo)
        self.accesses: list[Access] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._fd = -1
        self._thread: threading.Thread | None = None

    def arm(self) -> FileCanary:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(fd, os.fsencode(self.dir), _IN_OPEN | _IN_ACCESS) < 0:
            errno = ctypes.get_errno()
            os.close(fd)
            raise OSError(errno, f"inotify_add_watch({self.dir}) failed")
        self._fd = fd
        self._thread = threading.Thread(target=self._watch, daemon=True, name="canary-files")
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length]
                offset += _EVENT.size + length
                with self._lock:
                    self.accesses.append(
                        Access(time.time(), name.rstrip(b"\0").decode(errors="replace"), mask)
                    )

    def opened(self) -> list[Access]:
        """Every open or read seen in the directory since :meth:`arm` (after a short
        settle, so that events already queued are in)."""
        time.sleep(0.5)
        with self._lock:
            return list(self.accesses)

    def leaks(self, data: bytes) -> bool:
        """Whether ``data`` holds the marker, raw or hex-encoded, or (a PNG) in a compressed
        text or profile chunk."""
        marker = self.marker.encode()
        return any(
            marker in part or marker.hex().encode() in part for part in [data, *_inflated(data)]
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

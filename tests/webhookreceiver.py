"""A webhook receiver on 127.0.0.1 for the tests and the benchmark: a real HTTP server.

Each path answers from a script of its own, one step per request, the last step repeated:
``receiver.script("/hook", 500, 500, 200)``; a step is a status, ``HANG`` (accept the
request, read it, and answer nothing until :meth:`Receiver.release` or :meth:`stop`),
``TRICKLE`` (a 200 whose status line and headers, :data:`TRICKLED`, are sent one byte every
:data:`TRICKLE_INTERVAL` seconds: every read gets a byte long before any read timeout) or
``("redirect", url)`` (a 302 to ``url``).  Every request is kept (:class:`Received`: path,
headers, body, arrival time) and :meth:`Receiver.wait_for` blocks until enough arrived.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HANG = "hang"
TRICKLE = "trickle"
TRICKLE_INTERVAL = 0.05
#: What a TRICKLE step sends, byte by byte (about 3 s at TRICKLE_INTERVAL).
TRICKLED = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"." * 32 + b"\r\nContent-Length: 0\r\n\r\n"
Step = int | str | tuple[str, str]


@dataclass
class Received:
    path: str
    #: Header names in lower case.
    headers: dict[str, str]
    body: bytes
    #: ``time.time()`` when the request was read (for latency figures, never asserted).
    at: float


@dataclass
class _Route:
    steps: list[Step]
    requests: list[Received] = field(default_factory=list)
    #: Requests being held by a HANG step right now.
    hanging: int = 0


class Receiver:
    """A threaded HTTP server that plays webhook receivers (see the module docstring)."""

    def __init__(self) -> None:
        self.routes: dict[str, _Route] = {}
        self._lock = threading.Condition()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                step = receiver._arrived(self.path, headers, body)
                if step == HANG:
                    try:
                        receiver._release.wait(300)
                    finally:
                        with receiver._lock:
                            receiver.routes[self.path].hanging -= 1
                            receiver._lock.notify_all()
                    self.close_connection = True
                    return
                if step == TRICKLE:
                    self.close_connection = True
                    try:
                        for i in range(len(TRICKLED)):
                            self.wfile.write(TRICKLED[i : i + 1])
                            self.wfile.flush()
                            time.sleep(TRICKLE_INTERVAL)
                    except OSError:
                        pass  # the sender gave up
                    return
                if isinstance(step, tuple):
                    self._answer(302, {"Location": step[1]})
                else:
                    self._answer(int(step), {})

            def _answer(self, status: int, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        class QuietServer(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # senders that time out hang up on purpose

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _arrived(self, path: str, headers: dict[str, str], body: bytes) -> Step:
        with self._lock:
            route = self.routes.setdefault(path, _Route([404]))
            route.requests.append(Received(path, headers, body, time.time()))
            index = min(len(route.requests), len(route.steps)) - 1
            step = route.steps[index]
            if step == HANG:
                route.hanging += 1
            self._lock.notify_all()
            return step

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def script(self, path: str, *steps: Step) -> str:
        """Answer ``path`` with ``steps`` (the last one repeated); returns its URL."""
        with self._lock:
            self.routes[path] = _Route(list(steps) or [200])
        return self.url(path)

    def requests(self, path: str) -> list[Received]:
        with self._lock:
            route = self.routes.get(path)
            return list(route.requests) if route else []

    def hanging(self, path: str) -> int:
        with self._lock:
            route = self.routes.get(path)
            return route.hanging if route else 0

    def wait_for(self, path: str, count: int, *, timeout: float = 30) -> list[Received]:
        """Block until ``path`` got at least ``count`` requests; returns them all.

        Raises:
          TimeoutError: fewer arrived within ``timeout`` seconds (a failure guard only).
        """
        with self._lock:
            if not self._lock.wait_for(
                lambda: len(self.routes.get(path, _Route([])).requests) >= count, timeout
            ):
                got = len(self.routes.get(path, _Route([])).requests)
                raise TimeoutError(f"{path}: {got} request(s) within {timeout:g}s, not {count}")
            return list(self.routes[path].requests)

    def release(self) -> None:
        """Let every held (HANG) request end without an answer."""
        self._release.set()

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

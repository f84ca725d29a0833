"""A programmable HTTP server on 127.0.0.1 that plays the part of a URL source.

Routes are registered per test: ``server.add("/a.png", body)`` serves bytes;
``server.add("/x", body, fail=[500, 503])`` answers those statuses to the first requests and
then the body; ``server.add("/slow", body, stall=5)`` waits before answering the first
``stall_count`` requests, or until ``server.release(path)``.  ``server.hits(path)`` counts
requests; ``server.wait_for_hits(path, n)`` blocks until the n-th has arrived.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Re-exported: tests/test_rabbitmq.py imports it from here.
from support import wait_until

__all__ = ["Route", "SourceServer", "wait_until"]


@dataclass
class Route:
    body: bytes
    content_type: str = "application/octet-stream"
    fail: list[int] = field(default_factory=list)
    stall: float = 0.0
    stall_count: int = 1
    hits: int = 0
    release: threading.Event = field(default_factory=threading.Event)


class SourceServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        # Notified by the handler on every request, for wait_for_hits.
        self._arrived = threading.Condition(self._lock)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = server._hit(self.path)
                if route is None:
                    self._answer(404, b"not found")
                    return
                n = route.hits
                if n <= len(route.fail):
                    self._answer(route.fail[n - 1], b"failing on purpose")
                    return
                if route.stall and n - len(route.fail) <= route.stall_count:
                    route.release.wait(route.stall)
                self._answer(200, route.body, route.content_type)

            def _answer(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _hit(self, path: str) -> Route | None:
        with self._lock:
            route = self.routes.get(path)
            if route is not None:
                route.hits += 1
                self._arrived.notify_all()
            return route

    def url(self, path: str) -> str:
        """The URL of ``path`` under the host name the tests allow (``localhost``)."""
        return f"http://localhost:{self.port}{path}"

    def add(self, path: str, body: bytes, **kwargs: Any) -> str:
        self.routes[path] = Route(body=body, **kwargs)
        return self.url(path)

    def hits(self, path: str) -> int:
        return self.routes[path].hits

    def wait_for_hits(self, path: str, count: int, *, timeout: float = 20) -> int:
        """Block until ``path`` has been requested at least ``count`` times.

        Returns:
          The number of requests so far (more than ``count`` if more arrived).

        Raises:
          TimeoutError: fewer requests arrived within ``timeout`` seconds.
        """
        route = self.routes[path]
        with self._arrived:
            if not self._arrived.wait_for(lambda: route.hits >= count, timeout):
                raise TimeoutError(
                    f"{path} was requested {route.hits} time(s) within {timeout:g}s, not {count}"
                )
            return route.hits

    def release(self, path: str) -> None:
        """End the stall of ``path`` now."""
        self.routes[path].release.set()

    def start(self) -> SourceServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        for route in self.routes.values():
            route.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

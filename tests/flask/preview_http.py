"""Helpers for the Flask tests: app factories, a live HTTP server, payloads and raw requests.

The environment (private Redis, source root, output dir) comes from tests/conftest.py.
Nothing here mocks Redis, the broker or the file system.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from dramatiq_preview.flask import PreviewExtension

TOKEN = "s3cret-token-for-the-tests"
PREFIX = "/api/preview"
#: A namespace no worker consumes: jobs submitted there stay queued until cancelled.
IDLE_NAMESPACE = "dpflask-idle"


def source_root() -> Path:
    return Path(os.environ["PREVIEW_SOURCE_ROOT"])


def output_dir() -> Path:
    return Path(os.environ["PREVIEW_OUTPUT_DIR"])


def make_app(*, authorize: Callable[[Any], bool] | None = None, **config: Any) -> Flask:
    """A host app (factory style) with the extension initialised; ``config`` goes to
    ``app.config`` before ``init_app``."""
    app = Flask("host")
    app.config.update(config)

    @app.get("/")
    def index() -> str:
        return "host index"

    ext = PreviewExtension(authorize=authorize)
    ext.init_app(app)
    return app


def new_job_id() -> str:
    return "h-" + uuid.uuid4().hex


def job(**overrides: Any) -> dict[str, Any]:
    """A valid payload (a file that need not exist: most tests never render it)."""
    payload: dict[str, Any] = {
        "jobId": new_job_id(),
        "source": {"path": "http-tests/missing.png"},
        "outputs": [{"width": 32, "height": 32, "format": "png"}],
    }
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class LiveServer:
    """A Flask app behind werkzeug's threaded WSGI server on a free port, in a thread."""

    def __init__(self, app: Flask) -> None:
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class Raw:
    """One HTTP/1.1 exchange with full control over the request (chunked bodies...)."""

    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    port: int,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | Iterable[bytes] | None = None,
    chunked: bool = False,
) -> Raw:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        if chunked:
            conn.putrequest(method, path)
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for chunk in body or []:
                assert isinstance(chunk, bytes)
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        else:
            assert body is None or isinstance(body, bytes)
            conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Raw(response.status, response.headers, response.read())
    finally:
        conn.close()

"""Shared fixtures: a private redis-server, temp source/output dirs, real workers.

The environment is set up here, at import time, before any test module imports
``dramatiq_preview``: the package reads ``PREVIEW_*`` when it is first imported.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

for _name in [n for n in os.environ if n.startswith("PREVIEW_")]:
    del os.environ[_name]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


REDIS_PORT = _free_port()
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"
TMP = Path(tempfile.mkdtemp(prefix="preview-tests-"))
SOURCE_ROOT = TMP / "sources"
OUTPUT_DIR = TMP / "outputs"
SOURCE_ROOT.mkdir()
OUTPUT_DIR.mkdir()
REPO = Path(__file__).resolve().parent.parent

#: The settings every test process and worker starts from.
BASE_ENV = {
    "PREVIEW_REDIS_URL": REDIS_URL,
    "PREVIEW_NAMESPACE": "dptest",
    "PREVIEW_SOURCE_ROOT": str(SOURCE_ROOT),
    "PREVIEW_OUTPUT_DIR": str(OUTPUT_DIR),
    "PREVIEW_MAX_RETRIES": "2",
    "PREVIEW_MIN_BACKOFF_MS": "100",
    "PREVIEW_MAX_BACKOFF_MS": "400",
    "PREVIEW_TIME_LIMIT_MS": "20000",
    "PREVIEW_PROGRESS_INTERVAL_MS": "50",
    "PREVIEW_ALLOWED_URL_HOSTS": "localhost",
    "PREVIEW_ALLOW_PRIVATE_NETWORKS": "true",
    "PREVIEW_FETCH_READ_TIMEOUT_MS": "2000",
    "PREVIEW_BROKER_HEARTBEAT_TIMEOUT_MS": "2000",
    "PREVIEW_BROKER_MAINTENANCE_CHANCE": "200000",
}
os.environ.update(BASE_ENV)
# Worker subprocesses import the package from this checkout.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
)

from dramatiq_preview.testing import RedisServer, WorkerProcess, wait_for_state  # noqa: E402

_redis = RedisServer(port=REDIS_PORT)


def pytest_configure(config: pytest.Config) -> None:
    _redis.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    _redis.close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"private redis-server: {REDIS_URL} (pid {_redis.process and _redis.process.pid})"]


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    """The private redis-server of this test session (the state store and the broker)."""
    return _redis


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Any:
    return redis_server.client()


@pytest.fixture
def source_root() -> Path:
    return SOURCE_ROOT


@pytest.fixture
def output_dir() -> Path:
    return OUTPUT_DIR


@pytest.fixture
def job_id() -> str:
    """A fresh jobId: tests share one Redis, so each job gets its own id."""
    return "t-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def worker(redis_server: RedisServer) -> Iterator[WorkerProcess]:
    """One `dramatiq dramatiq_preview` worker (1 process, 2 threads) for the whole session."""
    proc = WorkerProcess(processes=1, threads=2)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def start_worker() -> Iterator[Any]:
    """Start extra workers with their own settings; they are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str] | None = None, **kwargs: Any) -> WorkerProcess:
        proc = WorkerProcess(env=env, **kwargs)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def wait_for() -> Any:
    """``wait_for(job_id, states=..., timeout=...)`` polling the real state store."""
    from dramatiq_preview import get_status

    def wait(job_id: str, states: Any = ("succeeded", "failed", "cancelled"), **kw: Any) -> Any:
        return wait_for_state(get_status, job_id, states, **kw)

    return wait


def python_env(**extra: str) -> dict[str, str]:
    """The environment for a plain Python subprocess of the test-suite."""
    return {**os.environ, **extra}


PYTHON = sys.executable


@pytest.fixture
def source_server() -> Iterator[Any]:
    """A local HTTP server for URL sources (``localhost`` is allowed in the tests)."""
    from sourceserver import SourceServer

    server = SourceServer().start()
    yield server
    server.stop()


def image_info(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) of an encoded image, read with ImageMagick."""
    from wand.image import Image

    with Image(blob=data) as img:
        return str(img.format).lower(), int(img.width), int(img.height)

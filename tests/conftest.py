"""Shared fixtures: a private redis-server, temp source/output dirs, real workers.

The environment is set up here, at import time, before any test module imports
``dramatiq_preview``: the package reads ``PREVIEW_*`` when it is first imported.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import (
    OUTPUT_DIR,
    REDIS_PORT,
    REDIS_URL,
    SOURCE_ROOT,
)

from dramatiq_preview.testing import RedisServer, WorkerProcess, wait_for_state

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
def redis_client(redis_server: RedisServer) -> Iterator[Any]:
    client = redis_server.client()
    yield client
    client.close()


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


@pytest.fixture
def source_server() -> Iterator[Any]:
    """A local HTTP server for URL sources (``localhost`` is allowed in the tests)."""
    from sourceserver import SourceServer

    server = SourceServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    """A private SeaweedFS S3 server (``weed mini``) for the whole session.

    Tests that stop it start their own :class:`~dramatiq_preview.testing.S3Server`.
    """
    from dramatiq_preview.testing import S3Server

    with S3Server() as server:
        yield server


@pytest.fixture
def s3_env(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The S3 server's ``AWS_*`` variables set in this process (for in-process storage);
    pass ``s3_server.environment()`` to workers started by the test."""
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def make_broker() -> Iterator[Any]:
    """``make_broker(settings)``: a broker built by the library, closed after the test."""
    from dramatiq_preview.broker import build_broker

    brokers: list[Any] = []

    def make(settings: Any) -> Any:
        brokers.append(build_broker(settings))
        return brokers[-1]

    yield make
    for broker in brokers:
        broker.client.close()

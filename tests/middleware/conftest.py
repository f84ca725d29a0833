"""Middleware unit tests: our middleware on Dramatiq's ``StubBroker`` with an in-process
``Worker``, as Dramatiq's own tests do, and job records in the session's private Redis.

The actor here is a stand-in named ``render_preview`` whose body each test chooses, so a
test looks at one middleware's logic without rendering anything.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries

from dramatiq_preview.config import Settings
from dramatiq_preview.errors import PermanentError
from dramatiq_preview.middleware import Idempotency, JobStatus, PayloadValidation
from dramatiq_preview.names import ACTOR_NAME, DEFAULT_QUEUE, QUEUES
from dramatiq_preview.state import JobStore, get_store
from dramatiq_preview.testing import RedisServer


@dataclass
class Stack:
    """A StubBroker with our state middleware, a stand-in actor and a worker."""

    broker: StubBroker
    settings: Settings
    store: JobStore
    body: list[Callable[[dict[str, Any]], Any]]
    calls: list[dict[str, Any]] = field(default_factory=list)
    worker: dramatiq.Worker | None = None

    @property
    def actor(self) -> dramatiq.Actor[Any, Any]:
        return self.broker.get_actor(ACTOR_NAME)

    def run(self) -> None:
        """Process everything enqueued so far (retries included), then stop the worker."""
        self.worker = dramatiq.Worker(self.broker, worker_timeout=50, worker_threads=1)
        self.worker.start()
        try:
            for queue in QUEUES.values():
                self.broker.join(queue, fail_fast=False)
            self.worker.join()
        finally:
            self.worker.stop()


@pytest.fixture
def stack(redis_server: RedisServer) -> Iterator[Stack]:
    settings = Settings.from_mapping(
        {
            "PREVIEW_REDIS_URL": redis_server.url,
            "PREVIEW_NAMESPACE": "mw-" + uuid.uuid4().hex[:12],
            "PREVIEW_PROGRESS_INTERVAL_MS": 0,
        },
        {},
    )
    broker = StubBroker(middleware=[])
    broker.add_middleware(Retries(min_backoff=10, max_backoff=20))
    for middleware_class in (PayloadValidation, Idempotency, JobStatus):
        broker.add_middleware(middleware_class(settings=settings), before=Retries)
    for queue in QUEUES.values():
        broker.declare_queue(queue)
    body: list[Callable[[dict[str, Any]], Any]] = [lambda payload: None]
    stack = Stack(broker, settings, get_store(settings), body)

    def render_preview(payload: dict[str, Any]) -> Any:
        stack.calls.append(payload)
        return stack.body[0](payload)

    dramatiq.actor(
        render_preview,
        actor_name=ACTOR_NAME,
        queue_name=DEFAULT_QUEUE,
        broker=broker,
        max_retries=2,
        throws=(PermanentError,),
    )
    yield stack
    broker.close()


def payload(job_id: str, **extra: Any) -> dict[str, Any]:
    """A valid payload for ``job_id``."""
    return {
        "jobId": job_id,
        "source": {"path": "a.png"},
        "outputs": [{"width": 8, "height": 8, "format": "png"}],
        **extra,
    }

"""The fused enqueue: a submit that writes the job record and the Dramatiq message in one
script must leave exactly what ``RedisBroker.enqueue`` would, so a stock Dramatiq worker
consumes it; on a Dramatiq version it was not tested with, submits use ``broker.enqueue``.

Everything runs against the private redis-server: no Redis, broker or worker is mocked.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

from dramatiq_preview import PreviewClient, Settings
from dramatiq_preview.fused_enqueue import TESTED_DRAMATIQ_MAJORS, fused_enqueue_supported
from dramatiq_preview.names import ACTOR_NAME, QUEUES

PAYLOAD = {
    "source": {"path": "a.png"},
    "outputs": [{"width": 8, "height": 8, "format": "png"}],
    "metadata": {"k": "v"},
}


@pytest.fixture
def namespace() -> str:
    """A namespace of its own: the stock worker below must see only this test's messages."""
    return "fz-" + uuid.uuid4().hex[:12]


@pytest.fixture
def client(redis_server: Any, namespace: str) -> Iterator[PreviewClient]:
    """A client whose state store and (Redis) broker share the private server."""
    settings = Settings.from_mapping(
        {"PREVIEW_REDIS_URL": redis_server.url, "PREVIEW_NAMESPACE": namespace}
    )
    with PreviewClient(settings) as client:
        yield client


@contextmanager
def stock_worker(url: str, namespace: str) -> Iterator[tuple[list[Any], threading.Event]]:
    """A stock Dramatiq ``Worker`` on a stock ``RedisBroker`` (its default middleware only)
    with a plain ``render_preview`` actor on the normal lane; yields what the actor got."""
    broker = RedisBroker(url=url, namespace=namespace)  # type: ignore[no-untyped-call]
    received: list[Any] = []
    got = threading.Event()

    @dramatiq.actor(actor_name=ACTOR_NAME, queue_name=QUEUES["normal"], broker=broker)
    def render_preview(payload: Any) -> None:
        received.append(payload)
        got.set()

    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        yield received, got
    finally:
        worker.stop()
        broker.close()
        broker.client.close()
        broker.client.connection_pool.disconnect()


def producer_heartbeat(client: PreviewClient, redis_client: Any, namespace: str) -> bool:
    """Whether the client's broker ran Dramatiq's dispatch script: ``RedisBroker.enqueue``
    does, and it records the producer's broker id in ``{ns}:__heartbeats__``; the fused
    script never touches that key."""
    broker_id = client.broker.broker_id  # type: ignore[attr-defined]
    return redis_client.zscore(f"{namespace}:__heartbeats__", broker_id) is not None


def test_the_installed_dramatiq_is_a_tested_one() -> None:
    """Given the Dramatiq this suite runs with, then the fused path is on for it: else the
    consumption test below proves nothing (qualify a new major by adding it to
    TESTED_DRAMATIQ_MAJORS and running this module)."""
    assert fused_enqueue_supported(), (dramatiq.__version__, TESTED_DRAMATIQ_MAJORS)


@pytest.mark.parametrize(
    ("version", "supported"),
    [
        ("2.2.1", True),
        ("2.0.0", True),
        ("2.9.0rc1", True),
        ("3.0.0", False),
        ("1.17.1", False),
        ("20.1", False),
        ("", False),
        ("dev", False),
    ],
)
def test_only_a_tested_major_version_may_fuse(version: str, supported: bool) -> None:
    assert fused_enqueue_supported(version) is supported


def test_a_fused_submit_is_consumed_by_a_stock_dramatiq_worker(
    client: PreviewClient, redis_server: Any, redis_client: Any, namespace: str
) -> None:
    # Given a client that fuses (a plain RedisBroker on the state store's server)
    assert client._fused_namespace() == namespace
    with stock_worker(redis_server.url, namespace) as (received, got):
        # When a job is submitted
        job = client.submit(PAYLOAD)
        # Then a stock worker runs the actor with the normalised payload
        assert got.wait(10), "the stock worker never received the fused message"
    assert len(received) == 1
    assert received[0]["jobId"] == job.job_id
    assert received[0]["source"] == PAYLOAD["source"]
    # ... the message went through the fused script, not the broker's dispatch script ...
    assert not producer_heartbeat(client, redis_client, namespace)
    # ... and the stock worker acknowledged it: nothing is left in the lane
    lane = f"{namespace}:{QUEUES['normal']}"
    assert redis_client.llen(lane) == 0 and redis_client.hlen(lane + ".msgs") == 0
    assert client.status(job.job_id)["state"] == "queued"  # no preview middleware ran


def test_a_stock_consumer_fetches_the_fused_message_as_it_was_sent(
    client: PreviewClient, redis_client: Any, namespace: str
) -> None:
    """Given a fused submit, when a stock ``RedisBroker`` consumer fetches its lane (the
    broker's own dispatch script), then it decodes the message the client built."""
    job = client.submit(PAYLOAD)
    fused_ids = redis_client.lrange(f"{namespace}:{QUEUES['normal']}", 0, -1)
    assert len(fused_ids) == 1
    stock = RedisBroker(url=client.settings.redis_url, namespace=namespace)  # type: ignore[no-untyped-call]
    try:
        stock.declare_queue(QUEUES["normal"])
        consumer = stock.consume(QUEUES["normal"], prefetch=1, timeout=100)
        fetched = None
        for _ in range(50):
            fetched = next(consumer)
            if fetched is not None:
                break
        assert fetched is not None, "the stock consumer fetched nothing"
        consumer.ack(fetched)
        consumer.close()
    finally:
        stock.close()
        stock.client.close()
        stock.client.connection_pool.disconnect()
    assert fetched.options["redis_message_id"] == fused_ids[0]
    assert fetched.actor_name == ACTOR_NAME and fetched.queue_name == QUEUES["normal"]
    assert len(fetched.args) == 1 and not fetched.kwargs
    assert fetched.args[0]["jobId"] == job.job_id
    assert fetched.options["preview_recorded"] is True
    assert redis_client.hlen(f"{namespace}:{QUEUES['normal']}.msgs") == 0


@pytest.mark.parametrize("why", ["untested dramatiq version", "fused_enqueue=False"])
def test_without_the_fused_path_submit_uses_broker_enqueue(
    why: str,
    redis_server: Any,
    redis_client: Any,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a Dramatiq version the fused enqueue was not tested with (or the switch off)
    if why == "untested dramatiq version":
        monkeypatch.setattr(dramatiq, "__version__", "3.0.0")
    settings = Settings.from_mapping(
        {"PREVIEW_REDIS_URL": redis_server.url, "PREVIEW_NAMESPACE": namespace}
    )
    with PreviewClient(settings, fused_enqueue=why != "fused_enqueue=False") as client:
        assert client._fused_namespace() is None
        with stock_worker(redis_server.url, namespace) as (received, got):
            # When a job is submitted
            job = client.submit(PAYLOAD)
            # Then it went through RedisBroker.enqueue (Dramatiq's dispatch script) ...
            assert producer_heartbeat(client, redis_client, namespace)
            # ... and is consumed all the same
            assert got.wait(10)
        assert [p["jobId"] for p in received] == [job.job_id]
        assert client.status(job.job_id)["state"] == "queued"
        # A duplicate is still answered from the record, without a second message
        again = client.submit(dict(PAYLOAD, jobId=job.job_id))
        assert again.duplicate is True
        assert redis_client.llen(f"{namespace}:{QUEUES['normal']}") == 0

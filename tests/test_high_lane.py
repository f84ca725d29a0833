"""The high lane in a worker process: its idle poll on Redis, and overtaking prefetched work.

A stock Dramatiq ``Worker`` on a ``RedisBroker`` of our private redis-server, with our
middleware attached (``setup_broker``'s path), and a test actor on our lane queues.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from dramatiq_preview.broker import HighLane, attach_middleware
from dramatiq_preview.config import Settings
from dramatiq_preview.names import QUEUES


def _until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


@pytest.fixture
def lane_broker(redis_server: Any, request: pytest.FixtureRequest) -> Iterator[RedisBroker]:
    """A RedisBroker in a namespace of its own, with our middleware, and nothing queued."""
    namespace = f"lanes-{request.node.name[-40:]}-{time.monotonic_ns()}"
    broker = RedisBroker(url=redis_server.url, namespace=namespace)  # type: ignore[no-untyped-call]
    settings = Settings.from_mapping({"PREVIEW_REDIS_URL": redis_server.url}, {})
    attach_middleware(broker, replace(settings, high_lane_poll_ms=30))
    yield broker
    broker.flush_all()
    broker.close()
    broker.client.close()


def _consumers(worker: Worker) -> dict[str, Any]:
    _until(lambda: all(c.consumer is not None for c in worker.consumers.values()), "consumers up")
    return worker.consumers


def test_the_high_lane_polls_at_most_every_poll_interval(lane_broker: RedisBroker) -> None:
    """Given a worker with Dramatiq's default timeout (1,000 ms) and PREVIEW_HIGH_LANE_POLL_MS
    = 30, when its consumers boot, then the high lane's consumer backs off at most 30 ms and
    the other lanes keep Dramatiq's timeout."""
    worker = Worker(lane_broker, worker_threads=1, worker_timeout=1000)
    worker.start()
    try:
        consumers = _consumers(worker)
        assert consumers[QUEUES["high"]].consumer.timeout == 30
        assert consumers[QUEUES["high"]].worker_timeout == 30
        for lane in ("normal", "low"):
            assert consumers[QUEUES[lane]].consumer.timeout == 1000
        assert consumers[QUEUES["high"] + ".DQ"].worker_timeout == 1000
    finally:
        worker.stop()


def test_zero_leaves_the_high_lane_to_dramatiq(redis_server: Any) -> None:
    """Given PREVIEW_HIGH_LANE_POLL_MS=0, when the worker boots, then the high lane's
    consumer keeps the worker timeout."""
    broker = RedisBroker(url=redis_server.url, namespace=f"lanes-zero-{time.monotonic_ns()}")  # type: ignore[no-untyped-call]
    settings = Settings.from_mapping(
        {"PREVIEW_REDIS_URL": redis_server.url, "PREVIEW_HIGH_LANE_POLL_MS": "0"}, {}
    )
    assert settings.high_lane_poll_ms == 0
    attach_middleware(broker, settings)
    worker = Worker(broker, worker_threads=1, worker_timeout=1000)
    worker.start()
    try:
        assert _consumers(worker)[QUEUES["high"]].consumer.timeout == 1000
    finally:
        worker.stop()
        broker.close()
        broker.client.close()


def test_a_high_message_overtakes_the_prefetched_normal_ones(lane_broker: RedisBroker) -> None:
    """Given a one-thread worker busy with a normal job while more normal jobs wait in its
    work queue (prefetched), when a high job arrives, then it runs before them."""
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    @dramatiq.actor(broker=lane_broker, queue_name=QUEUES["normal"], actor_name="lane_probe")
    def probe(name: str) -> None:
        if name == "blocker":
            started.set()
            release.wait(30)
        order.append(name)

    worker = Worker(lane_broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        probe.send("blocker")
        assert started.wait(20)
        for index in range(3):
            probe.send(f"normal-{index}")
        # One thread prefetches two per lane: the blocker (running) and normal-0 (queued).
        _until(lambda: worker.work_queue.qsize() == 1, "normal-0 prefetched")
        lane_broker.enqueue(probe.message("high").copy(queue_name=QUEUES["high"]))
        _until(lambda: worker.work_queue.qsize() == 2, "the high job prefetched")
        release.set()
        lane_broker.join(QUEUES["high"], timeout=20_000)
        lane_broker.join(QUEUES["normal"], timeout=20_000)
        worker.join()
    finally:
        release.set()
        worker.stop()
    assert order == ["blocker", "high", "normal-0", "normal-1", "normal-2"]


def test_the_middleware_is_attached_once_and_only_reorders_the_high_lane() -> None:
    """Given a host's stub broker, when our middleware is attached twice, then there is one
    HighLane, and a consumer of another queue keeps the worker's own work queue."""
    host = StubBroker(middleware=[])
    settings = Settings()
    attach_middleware(host, settings)
    attach_middleware(host, settings)
    assert [type(m) for m in host.middleware].count(HighLane) == 1
    high_lane = next(m for m in host.middleware if isinstance(m, HighLane))

    class Thread:
        def __init__(self, queue_name: str) -> None:
            self.queue_name, self.worker_timeout, self.work_queue = queue_name, 1000, object()

    normal, high = Thread(QUEUES["normal"]), Thread(QUEUES["high"])
    queue = normal.work_queue
    high_lane.after_consumer_thread_boot(host, normal)
    high_lane.after_consumer_thread_boot(host, high)
    assert normal.work_queue is queue
    assert high.work_queue is not queue
    # Not a Redis broker: nothing polls, the timeout stays.
    assert high.worker_timeout == 1000

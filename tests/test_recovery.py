"""Recovery after a worker dies (contract §7): a dead worker's jobs start again within the
heartbeat timeout plus one render time limit and a few seconds, idle system or not, even
with Dramatiq's own random maintenance turned off."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import imagegen
import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from support import wait_until

from dramatiq_preview import PreviewClient, Settings, render_preview, setup_broker
from dramatiq_preview.middleware import Recovery
from dramatiq_preview.names import QUEUES
from dramatiq_preview.testing import RedisServer, WorkerProcess, wait_for_state

OUT = [{"width": 8, "height": 8, "format": "png"}]
#: A job killed just after its claim starts again once its dead holder's lease (time limit
#: + 5 s from the claim) has ended, about 2 s later still: the busy copy is put back to land
#: 1 s after the lease, then waits for a delay-queue hop (up to a poll of each consumer).
#: So the deadline holds for a heartbeat timeout of at least ~3 s; 4 s keeps a margin.
HEARTBEAT_TIMEOUT_MS = 4000
TIME_LIMIT_MS = 5000
#: The contract's deadline: heartbeat timeout + one time limit (the dead holder's lease) + 5 s.
DEADLINE = HEARTBEAT_TIMEOUT_MS / 1000 + TIME_LIMIT_MS / 1000 + 5


def namespace() -> str:
    return "rec-" + uuid.uuid4().hex[:10]


@pytest.fixture
def ns(redis_client: Any) -> Iterator[str]:
    """A namespace of this test's own; its keys are deleted afterwards."""
    name = namespace()
    yield name
    keys = list(redis_client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


def recovery_of(broker: dramatiq.Broker) -> list[Recovery]:
    return [m for m in broker.middleware if isinstance(m, Recovery)]


def recovery_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "preview-recovery"}


@pytest.mark.slow
def test_a_killed_workers_job_starts_again_on_the_other_worker_within_the_deadline(
    source_server: Any, job_id: str, ns: str, start_worker: Any
) -> None:
    # Given two worker processes, Dramatiq's random maintenance off, and a job whose first
    # source fetch hangs, being processed by one of them
    env = {
        "PREVIEW_NAMESPACE": ns,
        "PREVIEW_BROKER_MAINTENANCE_CHANCE": "0",
        "PREVIEW_BROKER_HEARTBEAT_TIMEOUT_MS": str(HEARTBEAT_TIMEOUT_MS),
        "PREVIEW_TIME_LIMIT_MS": str(TIME_LIMIT_MS),
        # The hung fetch must outlast the moment of the kill, not end in a retry before it.
        "PREVIEW_FETCH_READ_TIMEOUT_MS": str(TIME_LIMIT_MS),
    }
    url = source_server.add(
        "/recover-me.png", imagegen.png(imagegen.quadrants(32, 32)), stall=60, stall_count=1
    )
    workers: list[WorkerProcess] = [start_worker(env=env, threads=1) for _ in range(2)]
    with PreviewClient(Settings.from_mapping(env)) as client:
        client.submit({"jobId": job_id, "source": {"url": url}, "outputs": OUT})
        source_server.wait_for_hits("/recover-me.png", 1)
        holder = wait_until(
            lambda: [w for w in workers if f"job {job_id} running" in w.log],
            what=f"a worker logging that {job_id} runs",
        )[0]
        survivor = next(w for w in workers if w is not holder)

        # When the worker process holding it is killed with SIGKILL
        (pid,) = holder.worker_pids()
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()

        # Then the job starts again on the other worker, and succeeds, within the deadline
        second = wait_until(
            lambda: client.status(job_id),
            lambda status: status["attempts"] >= 2,
            timeout=DEADLINE + 5,
            interval=0.02,
            what=f"{job_id} started again",
        )
        restart_after = time.monotonic() - killed_at
        status = wait_for_state(client.status, job_id, ("succeeded", "failed"), timeout=30)
        done_after = time.monotonic() - killed_at
    print(f"restarted {restart_after:.2f} s, succeeded {done_after:.2f} s after the kill")
    assert second["state"] in ("running", "succeeded")
    assert status["state"] == "succeeded", status
    assert restart_after <= DEADLINE, restart_after
    assert done_after <= DEADLINE, done_after
    # Rendered to success once: one fetch per delivery, one success, logged by the survivor
    assert status["attempts"] == 2
    assert source_server.hits("/recover-me.png") == 2
    wait_until(lambda: f"job {job_id} succeeded" in survivor.log)
    assert sum(w.log.count(f"job {job_id} succeeded") for w in workers) == 1


def test_a_dead_brokers_fetched_messages_go_back_to_each_lane_and_delay_queue(
    redis_server: RedisServer, redis_client: Any, ns: str
) -> None:
    # Given a worker that fetched a message from a lane and one from a delay queue, then
    # died, and a live worker holding a message of its own, Dramatiq's maintenance off
    def broker() -> RedisBroker:
        return RedisBroker(  # type: ignore[no-untyped-call]
            url=redis_server.url, namespace=ns, heartbeat_timeout=1000, maintenance_chance=0
        )

    dead, live = broker(), broker()

    def message(queue: str) -> dramatiq.Message[Any]:
        return dramatiq.Message(
            queue_name=queue, actor_name="probe", args=(), kwargs={}, options={}
        )

    dead.enqueue(message(QUEUES["high"]))
    dead.enqueue(message(QUEUES["normal"]), delay=60_000)
    live.enqueue(message(QUEUES["low"]))
    assert len(dead.do_fetch(QUEUES["high"], 1)) == 1
    assert len(dead.do_fetch(QUEUES["normal"] + ".DQ", 1)) == 1
    assert len(live.do_fetch(QUEUES["low"], 1)) == 1
    dead.client.close()

    def waiting() -> tuple[int, int, int]:
        return (
            redis_client.llen(f"{ns}:{QUEUES['high']}"),
            redis_client.llen(f"{ns}:{QUEUES['normal']}.DQ"),
            redis_client.llen(f"{ns}:{QUEUES['low']}"),
        )

    assert waiting() == (0, 0, 0)
    # When the live worker process boots with the Recovery middleware
    recovery = Recovery()
    started = time.monotonic()
    recovery.after_worker_boot(live, None)
    try:
        # Then, once the dead one's heartbeat is older than the timeout, its messages are
        # back in their queues; the live worker keeps its own
        wait_until(waiting, lambda counts: counts[:2] == (1, 1), timeout=10, what="requeued")
        took = time.monotonic() - started
    finally:
        recovery.before_worker_shutdown(live, None)
        live.client.close()
    assert waiting() == (1, 1, 0)
    # heartbeat timeout + one interval (1 s) + slack
    assert took <= 1 + 1 + 1.5, took
    assert not recovery_threads(), "the thread stops at worker shutdown"


def test_a_worker_on_a_broker_other_than_redis_runs_no_recovery() -> None:
    # Given a StubBroker (as RabbitMQ, it redelivers by itself) with Recovery on it
    broker = StubBroker(middleware=[])
    broker.add_middleware(Recovery())
    before = recovery_threads()
    # When a worker boots on it and stops
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    during = recovery_threads() - before
    worker.stop()
    # Then no maintenance thread ever ran
    assert during == set()


def test_redis_brokers_get_recovery_and_others_do_not(ns: str, make_broker: Any) -> None:
    # Given a broker the library builds, and brokers a host built itself
    settings = Settings.from_mapping({"PREVIEW_NAMESPACE": ns})
    built = make_broker(settings)
    host_redis = RedisBroker(  # type: ignore[no-untyped-call]
        url=settings.broker_url, namespace=ns, middleware=[]
    )
    host_stub = StubBroker(middleware=[])
    original = render_preview.broker
    try:
        # When setup_broker attaches us to the host's brokers (twice)
        for host in (host_redis, host_stub, host_redis):
            setup_broker(host)
        # Then each Redis broker has one Recovery and the stub none
        assert len(recovery_of(built)) == 1
        assert len(recovery_of(host_redis)) == 1
        assert recovery_of(host_stub) == []
    finally:
        setup_broker(original)
        host_redis.client.close()


def test_an_untested_dramatiq_major_warns_once_and_maintains_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a Dramatiq major version the broker layout was not tested with
    monkeypatch.setattr(dramatiq, "__version__", "99.0.0")
    broker = RedisBroker(url="redis://127.0.0.1:1/0", namespace=namespace())  # type: ignore[no-untyped-call]
    before = recovery_threads()
    # When Recovery boots twice in one process on a Redis broker (nothing listens there)
    with caplog.at_level(logging.WARNING, logger="dramatiq_preview.recovery"):
        for _ in range(2):
            Recovery().after_worker_boot(broker, None)
    # Then one warning says so and no maintenance thread runs
    warnings = [r for r in caplog.records if "99.0.0" in r.getMessage()]
    assert len(warnings) == 1
    assert recovery_threads() - before == set()

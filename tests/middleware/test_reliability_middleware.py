"""Issue #16 in the middleware: a delivery waits for a Redis that is down (its time limit
notwithstanding), a job whose delivery died renders alone in its process, and an orphaned
job's message is put back.  StubBroker and in-process workers; the state store is a real
``redis-server`` of the test's own where a test stops and starts it."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from conftest import payload
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries, TimeLimit

from dramatiq_preview.config import Settings
from dramatiq_preview.errors import PermanentError, StateStoreUnavailable
from dramatiq_preview.middleware import Idempotency, JobStatus, PayloadValidation
from dramatiq_preview.middleware.isolation import RenderGate
from dramatiq_preview.middleware.orphans import OrphanSweep
from dramatiq_preview.middleware.patience import until_answered
from dramatiq_preview.names import ACTOR_NAME, DEFAULT_QUEUE, QUEUES
from dramatiq_preview.state import JobStore, get_store, redis_client
from dramatiq_preview.testing import RedisServer


def stop_keeping_data(server: RedisServer) -> None:
    """Stop the server as a restart would, its data saved to be loaded at the next start."""
    client = server.client()
    client.save()
    client.close()
    server.stop()


@pytest.fixture
def state() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


def make_stack(
    state: RedisServer, body: Any, *, time_limit_ms: int, retry_seconds: int = 30
) -> tuple[StubBroker, Settings, list[dict[str, Any]]]:
    """A StubBroker with Dramatiq's TimeLimit (checking every 50 ms), Retries and our state
    middleware, and a stand-in render_preview running ``body``."""
    settings = Settings.from_mapping(
        {
            "PREVIEW_REDIS_URL": state.url,
            "PREVIEW_NAMESPACE": "rel-" + uuid.uuid4().hex[:10],
            "PREVIEW_PROGRESS_INTERVAL_MS": 0,
            "PREVIEW_TIME_LIMIT_MS": time_limit_ms,
            "PREVIEW_STORE_RETRY_SECONDS": retry_seconds,
        },
        {},
    )
    broker = StubBroker(middleware=[])
    broker.add_middleware(TimeLimit(interval=50))
    broker.add_middleware(Retries(min_backoff=10, max_backoff=20))
    for middleware_class in (PayloadValidation, Idempotency, JobStatus):
        broker.add_middleware(middleware_class(settings=settings), before=Retries)
    for queue in QUEUES.values():
        broker.declare_queue(queue)
    calls: list[dict[str, Any]] = []

    def render_preview(job: dict[str, Any]) -> Any:
        calls.append(job)
        return body(job)

    dramatiq.actor(
        render_preview,
        actor_name=ACTOR_NAME,
        queue_name=DEFAULT_QUEUE,
        broker=broker,
        max_retries=2,
        time_limit=time_limit_ms,
        throws=(PermanentError,),
    )
    broker.emit_after("process_boot")  # starts TimeLimit's watch
    return broker, settings, calls


def run(broker: StubBroker, *, threads: int = 1) -> None:
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=threads)
    worker.start()
    try:
        for queue in QUEUES.values():
            broker.join(queue, fail_fast=False)
        worker.join()
    finally:
        worker.stop()


def test_a_render_ending_while_redis_is_down_is_recorded_once_it_is_back(
    state: RedisServer, job_id: str
) -> None:
    # Given a render during which the state store goes down, for longer than the render's
    # time limit (1 s) and than the old final-write retries (1.4 s)
    restarted: list[float] = []

    def body(job: dict[str, Any]) -> dict[str, Any]:
        stop_keeping_data(state)
        threading.Timer(3.0, lambda: (state.start(), restarted.append(time.monotonic()))).start()
        return {"outputs": [{"path": "x", "width": 8, "height": 8, "format": "png", "bytes": 1}]}

    broker, settings, calls = make_stack(state, body, time_limit_ms=1000)
    broker.get_actor(ACTOR_NAME).send(payload(job_id))
    # When a worker processes it
    run(broker)
    # Then the write of its end waited for Redis: succeeded, rendered once, nothing dead
    status = get_store(settings).get(job_id)
    assert restarted, "Redis was started again"
    assert status and (status["state"], status["attempts"]) == ("succeeded", 1), status
    assert len(calls) == 1
    assert broker.dead_letters == []
    assert get_store(settings).client.zcard(get_store(settings).inflight_key) == 0


def test_a_claim_waits_for_redis_and_the_render_still_gets_its_whole_time_limit(
    state: RedisServer, job_id: str
) -> None:
    # Given a recorded job, and the state store down when the worker picks it up, for
    # longer than the time limit (1 s)
    def body(job: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.6)  # more than what is left of a limit that ran while the claim waited
        return {"outputs": []}

    broker, settings, calls = make_stack(state, body, time_limit_ms=1000)
    broker.get_actor(ACTOR_NAME).send(payload(job_id))
    stop_keeping_data(state)
    threading.Timer(2.0, state.start).start()
    # When a worker processes it
    run(broker)
    # Then the claim waited (no retry spent, no time limit), and the job succeeded once
    status = get_store(settings).get(job_id)
    assert status and (status["state"], status["attempts"]) == ("succeeded", 1), status
    assert len(calls) == 1 and broker.dead_letters == []


def test_a_store_down_for_longer_than_the_bound_gives_the_write_up(state: RedisServer) -> None:
    # Given a store that is down
    store = JobStore(redis_client(state.url), namespace="rel", ttl_seconds=60)
    state.stop()
    # When a write is tried for 0.5 s, Then it gives up with the store's error, having tried
    # again with backoff meanwhile
    tries: list[float] = []

    def call() -> Any:
        tries.append(time.monotonic())
        return store.get("x")

    started = time.monotonic()
    with pytest.raises(StateStoreUnavailable):
        until_answered(call, seconds=0.5, what="read x")
    assert 0.5 <= time.monotonic() - started < 2.5
    assert len(tries) >= 3
    # And with a bound of 0, one try only
    tries.clear()
    with pytest.raises(StateStoreUnavailable):
        until_answered(call, seconds=0, what="read x")
    assert len(tries) == 1


def test_a_suspect_waits_for_the_renders_under_way_and_holds_new_ones_back() -> None:
    gate = RenderGate()
    order: list[str] = []
    entered = threading.Event()
    release = threading.Event()

    def ordinary(name: str, hold: threading.Event | None) -> None:
        gate.enter(name, name, timeout=10)
        order.append(f"{name} in")
        entered.set()
        if hold is not None:
            hold.wait(10)
        order.append(f"{name} out")
        gate.leave()

    # Given an ordinary render under way
    first = threading.Thread(target=ordinary, args=("a", release))
    first.start()
    assert entered.wait(5)

    # When a suspect asks to run alone, and another ordinary delivery arrives after it
    def suspect() -> None:
        assert gate.isolate("s", "s", timeout=10)
        order.append("s alone")
        time.sleep(0.1)
        order.append("s out")
        gate.leave()

    isolated = threading.Thread(target=suspect)
    isolated.start()
    time.sleep(0.1)
    late = threading.Thread(target=ordinary, args=("b", None))
    late.start()
    time.sleep(0.1)
    assert order == ["a in"], "nobody enters while a suspect waits"
    release.set()
    for t in (first, isolated, late):
        t.join(10)
    # Then the suspect ran alone, after the render under way and before the late one
    assert order == ["a in", "a out", "s alone", "s out", "b in", "b out"]
    assert gate.running == 0


def test_the_company_of_a_delivery_is_the_other_renders_of_its_process() -> None:
    gate = RenderGate()
    assert gate.enter("j1", "t1", timeout=1) == []
    seen: list[list[tuple[str, str]]] = []
    done = threading.Event()

    def deliver(job_id: str, token: str) -> None:
        seen.append(gate.enter(job_id, token, timeout=1))
        done.wait(10)  # a worker thread lives on (the gate knows deliveries by thread)

    threads = [threading.Thread(target=deliver, args=args) for args in (("j2", "t2"),)]
    threads[0].start()
    time.sleep(0.1)
    threads.append(threading.Thread(target=deliver, args=("j1", "t3")))
    threads[1].start()
    time.sleep(0.1)
    assert seen == [[("j1", "t1")], [("j2", "t2")]], "another copy of the same job is no company"
    # A suspect that cannot have the process to itself in time gives up, out of the gate
    assert gate.isolate("j1", "t1", timeout=0.2) is False
    assert gate.running == 2
    done.set()
    for t in threads:
        t.join(5)


def test_a_job_beside_a_dead_delivery_renders_alone_and_succeeds(
    state: RedisServer, job_id: str
) -> None:
    # Given a job whose last delivery died beside another render of its process (the other
    # delivery named it as company), its lease over
    broker, settings, _calls = make_stack(
        state, lambda job: {"outputs": []}, time_limit_ms=10_000, retry_seconds=1
    )
    store = get_store(settings)
    broker.get_actor(ACTOR_NAME).send(payload(job_id))
    store.create("pill", fp="x", priority="normal", queue=DEFAULT_QUEUE, metadata={})
    store.claim(job_id, token="dead", lease_ms=0, max_deliveries=1, isolated=False)
    store.claim("pill", token="p", lease_ms=0, max_deliveries=1, company=[(job_id, "dead")])
    # When its message is processed (PREVIEW_MAX_DELIVERIES is 1 here)
    run(broker, threads=2)
    # Then it is not failed as worker_lost: it ran alone, and succeeded
    status = store.get(job_id)
    assert status and (status["state"], status["attempts"]) == ("succeeded", 2), status
    assert store.client.hget(store.job_key(job_id), "deliveries") == "0"


def test_an_orphaned_job_is_put_back_on_the_broker_and_then_succeeds(
    state: RedisServer, job_id: str
) -> None:
    # Given a job claimed by a delivery that was then given up (its message acknowledged):
    # its record says running, its lease long over
    broker, settings, calls = make_stack(state, lambda job: {"outputs": []}, time_limit_ms=1000)
    store = get_store(settings)
    broker.get_actor(ACTOR_NAME).send(payload(job_id))
    message = broker.queues[DEFAULT_QUEUE].get(timeout=1)
    broker.queues[DEFAULT_QUEUE].task_done()  # taken off the broker, as if acknowledged
    kept = dramatiq.Message.decode(message).encode().decode()
    store.claim(job_id, token="gone", lease_ms=0, max_deliveries=3, message=kept)
    assert broker.queues[DEFAULT_QUEUE].qsize() == 0
    sweep = OrphanSweep(broker, store, settings)
    sweep.margin_ms = 100
    time.sleep(0.2)
    # When the sweep runs: the first round after start only checks Redis, the next acts
    assert sweep.run_once() == {}
    assert sweep.run_once() == {"redeliver": 1}
    # Then its message is back on its queue, under a new id; a worker renders it once
    assert broker.queues[DEFAULT_QUEUE].qsize() == 1
    run(broker)
    status = store.get(job_id)
    assert status and (status["state"], status["attempts"]) == ("succeeded", 2), status
    assert len(calls) == 1
    assert sweep.run_once() == {}

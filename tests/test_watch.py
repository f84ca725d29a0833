"""Following a job's events (dramatiq_preview.watch) against the private Redis.

Transitions are made through the real JobStore scripts, between reads of the watch: the
published messages wait in the subscriber's socket, as they would for a slow reader.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import wait_until

from dramatiq_preview import watch as watch_module
from dramatiq_preview.client import PreviewClient
from dramatiq_preview.errors import JobNotFound, PreviewError, StateStoreUnavailable, WaitTimeout
from dramatiq_preview.state import JobStore, Version, redis_client
from dramatiq_preview.testing import RedisServer
from dramatiq_preview.watch import Event, JobWatch, KeepAlive, watch

TTL = 600
NAMESPACE = "watchtest"


@pytest.fixture
def store(redis_server: RedisServer) -> JobStore:
    return JobStore(redis_client(redis_server.url), namespace=NAMESPACE, ttl_seconds=TTL)


def create(store: JobStore, job_id: str) -> None:
    outcome, _ = store.create(
        job_id, fp="fp", priority="normal", queue="preview-normal", metadata={"who": "watch"}
    )
    assert outcome == "created"


def claim(store: JobStore, job_id: str, token: str = "tok") -> None:
    assert store.claim(job_id, token=token, lease_ms=60_000, max_deliveries=3).verdict == "run"


def succeed(store: JobStore, job_id: str, token: str = "tok") -> None:
    result = {"outputs": [{"path": f"{job_id}/0.png", "width": 1, "height": 1, "format": "png"}]}
    assert store.finish(job_id, token=token, outcome="succeeded", data=result).verdict == "ok"


def subscribers(store: JobStore, job_id: str) -> int:
    channel = store.events_channel(job_id)
    return int(dict(store.client.pubsub_numsub(channel))[channel])


def no_subscriber_left(store: JobStore, job_id: str) -> None:
    # The server notices a closed connection on its next turn of the event loop.
    wait_until(lambda: subscribers(store, job_id), lambda n: n == 0, what="the subscription to end")


def events_of(items: Iterator[Event | KeepAlive]) -> list[Event]:
    return [item for item in items if isinstance(item, Event)]


def test_the_current_status_comes_first_then_every_change_until_the_final_one(
    store: JobStore, job_id: str
) -> None:
    # Given a queued job and an open watch
    create(store, job_id)
    items = iter(watch(store, job_id, max_seconds=60, keepalive_seconds=10))
    # Then its first event is the current status, at once
    first = next(items)
    assert isinstance(first, Event)
    assert (first.state, first.status["jobId"], first.status["metadata"]) == (
        "queued",
        job_id,
        {"who": "watch"},
    )
    # When the job runs, reports progress and succeeds
    claim(store, job_id)
    running = next(items)
    assert store.progress(job_id, token="tok", percent=40) == 0
    progressed = next(items)
    succeed(store, job_id)
    final = next(items)
    # Then each change is one event, in order, with rising ids; the final one is last
    assert isinstance(running, Event) and isinstance(progressed, Event)
    assert isinstance(final, Event)
    assert [e.state for e in (running, progressed, final)] == ["running", "running", "succeeded"]
    assert progressed.status["progress"] == 40
    assert first.seq < running.seq < progressed.seq < final.seq
    assert final.final and final.status["result"]["outputs"][0]["format"] == "png"
    with pytest.raises(StopIteration):
        next(items)
    # and the subscription is gone
    no_subscriber_left(store, job_id)


def test_a_final_job_yields_its_status_and_ends(store: JobStore, job_id: str) -> None:
    create(store, job_id)
    assert store.cancel(job_id).outcome == "cancelled"
    seen = list(watch(store, job_id, max_seconds=60))
    assert len(seen) == 1 and isinstance(seen[0], Event) and seen[0].state == "cancelled"


class ChangesBeforeTheRead(JobStore):
    """A store whose record changes between the watch's SUBSCRIBE and its read: the race
    every watch can meet, made to happen every time (the change is a real script)."""

    def get_versioned(self, job_id: str) -> tuple[Version, dict[str, Any]] | None:
        if not getattr(self, "changed", False):
            self.changed = True
            self.progress(job_id, token="tok", percent=30)
        return super().get_versioned(job_id)


def test_a_change_between_subscribe_and_read_is_seen_once(
    redis_server: RedisServer, store: JobStore, job_id: str
) -> None:
    # Given a running job whose progress changes after the watch subscribed, before it reads
    create(store, job_id)
    claim(store, job_id)
    racing = ChangesBeforeTheRead(
        redis_client(redis_server.url), namespace=NAMESPACE, ttl_seconds=TTL
    )
    items = iter(watch(racing, job_id, max_seconds=60, keepalive_seconds=10))
    # When the job then succeeds
    first = next(items)
    succeed(store, job_id)
    rest = list(items)
    # Then the change is in the first event, and its published copy is not yielded again
    assert isinstance(first, Event) and first.status["progress"] == 30
    assert [(e.state, e.seq) for e in events_of(iter(rest))] == [("succeeded", first.seq + 1)]


def test_concurrent_watchers_see_rising_ids_and_the_final_state(
    store: JobStore, job_id: str
) -> None:
    # Given a job changing fast while watchers keep opening
    create(store, job_id)
    claim(store, job_id)
    seen: list[list[tuple[int, str]]] = []
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            with watch(store, job_id, max_seconds=60, keepalive_seconds=1) as events:
                seen.append([(e.seq, e.state) for e in events_of(iter(events))])
        except BaseException as exc:
            errors.append(exc)

    threads = []
    for percent in range(1, 100):
        store.progress(job_id, token="tok", percent=percent)
        if percent % 10 == 0:
            threads.append(threading.Thread(target=follow))
            threads[-1].start()
    succeed(store, job_id)
    for thread in threads:
        thread.join(timeout=60)
    # Then every watcher saw strictly rising ids and ended with the final state
    assert not errors
    assert len(seen) == len(threads)
    final_seq = max(s for events in seen for s, _ in events)
    for events in seen:
        seqs = [s for s, _ in events]
        assert seqs == sorted(set(seqs)), events
        assert events[-1] == (final_seq, "succeeded")


def test_last_seen_resumes_after_the_event_already_seen(store: JobStore, job_id: str) -> None:
    # Given a running job whose current event the caller already has
    create(store, job_id)
    claim(store, job_id)
    current = store.get_versioned(job_id)
    assert current is not None
    items = iter(watch(store, job_id, last_seen=current[0], max_seconds=60, keepalive_seconds=10))
    # When it succeeds
    succeed(store, job_id)
    # Then only the new event comes
    assert [(e.state, e.seq) for e in events_of(items)] == [("succeeded", current[0].seq + 1)]


def test_a_final_event_already_seen_leaves_nothing_to_yield(store: JobStore, job_id: str) -> None:
    create(store, job_id)
    claim(store, job_id)
    succeed(store, job_id)
    found = store.get_versioned(job_id)
    assert found is not None
    opened = watch(store, job_id, last_seen=found[0], max_seconds=60)
    assert opened.done
    assert list(opened) == []
    no_subscriber_left(store, job_id)


@pytest.mark.parametrize(
    "other",
    [
        lambda v: Version(v.incarnation, v.seq - 1),
        lambda v: Version(v.incarnation, v.seq + 5),
        lambda v: Version("0" + v.incarnation, v.seq),
    ],
    ids=["older id", "id from nowhere", "id of another record"],
)
def test_any_other_last_seen_gets_the_current_status(
    store: JobStore, job_id: str, other: Callable[[Version], Version]
) -> None:
    # Given a final job and a last id that is not its current one
    create(store, job_id)
    claim(store, job_id)
    succeed(store, job_id)
    found = store.get_versioned(job_id)
    assert found is not None
    # Then the final state is never withheld
    opened = watch(store, job_id, last_seen=other(found[0]), max_seconds=60)
    assert not opened.done
    assert [(e.state, e.version) for e in events_of(iter(opened))] == [("succeeded", found[0])]


def test_keep_alives_come_when_nothing_changes(store: JobStore, job_id: str) -> None:
    create(store, job_id)
    items = iter(watch(store, job_id, max_seconds=60, keepalive_seconds=0.2))
    first = next(items)
    assert isinstance(first, Event)
    assert [next(items) for _ in range(2)] == [KeepAlive(first.version)] * 2
    # and the watch still follows the job after them
    claim(store, job_id)
    running = next(items)
    assert isinstance(running, Event) and running.state == "running"


def test_the_lifetime_bound_ends_the_watch(store: JobStore, job_id: str) -> None:
    # Given a job that never changes and a watch that may live 1 s
    create(store, job_id)
    items = list(watch(store, job_id, max_seconds=1, keepalive_seconds=0.3))
    # Then it ended with the first event and keep-alives only, and let go of Redis
    assert isinstance(items[0], Event) and items[0].state == "queued"
    assert items[1:] and all(isinstance(i, KeepAlive) for i in items[1:])
    no_subscriber_left(store, job_id)


def test_an_unknown_job_is_not_found_and_leaves_no_subscription(store: JobStore) -> None:
    job_id = "nobody-" + uuid.uuid4().hex
    with pytest.raises(JobNotFound):
        watch(store, job_id, max_seconds=60)
    assert subscribers(store, job_id) == 0


def test_a_record_that_vanishes_while_watched_is_not_found(store: JobStore, job_id: str) -> None:
    # Given a watched job whose record is deleted (as expiry would)
    create(store, job_id)
    items = iter(watch(store, job_id, max_seconds=60, keepalive_seconds=0.2))
    next(items)
    store.client.delete(store.job_key(job_id))
    # Then the watch says so at its next idle check, and lets go of Redis
    with pytest.raises(JobNotFound):
        next(items)
    no_subscriber_left(store, job_id)


def test_stopping_early_releases_the_subscription(store: JobStore, job_id: str) -> None:
    create(store, job_id)
    items = iter(watch(store, job_id, max_seconds=60))
    next(items)
    assert subscribers(store, job_id) == 1
    items.close()  # type: ignore[attr-defined]  # a generator: what a `break` does
    no_subscriber_left(store, job_id)


def test_a_watch_that_is_closed_unopened_or_reused_refuses_to_iterate(
    store: JobStore, job_id: str
) -> None:
    create(store, job_id)
    with pytest.raises(RuntimeError):
        iter(JobWatch(store, job_id))
    opened = watch(store, job_id, max_seconds=60)
    iter(opened)
    with pytest.raises(RuntimeError):
        iter(opened)
    opened.close()
    assert opened.status["state"] == "queued"


def test_a_change_while_the_subscriber_reconnects_is_not_lost(job_id: str) -> None:
    # Given a watched job on a Redis of our own (the test drops its pub/sub connections)
    with RedisServer() as server:
        own = JobStore(redis_client(server.url), namespace=NAMESPACE, ttl_seconds=TTL)
        create(own, job_id)
        items = iter(watch(own, job_id, max_seconds=60, keepalive_seconds=30))
        next(items)
        # When the server drops the subscriber and the job changes before redis-py
        # reconnects and subscribes again
        assert own.client.client_kill_filter(_type="pubsub") == 1
        claim(own, job_id)
        # Then the watch reads what changed once it is subscribed again (well before 30 s)
        event = next(items)
        assert isinstance(event, Event) and event.state == "running"


def test_redis_down_is_state_store_unavailable() -> None:
    # Given a Redis of our own, with a watched job
    with RedisServer() as server:
        own = JobStore(redis_client(server.url), namespace=NAMESPACE, ttl_seconds=TTL)
        create(own, "down-job")
        items = iter(watch(own, "down-job", max_seconds=60, keepalive_seconds=0.2))
        next(items)
        # When it stops
        server.stop()
        # Then the watch raises StateStoreUnavailable, as does a new one
        with pytest.raises(StateStoreUnavailable):
            next(items)
        with pytest.raises(StateStoreUnavailable):
            watch(own, "down-job", max_seconds=60)


def test_a_message_that_is_no_record_is_ignored(store: JobStore, job_id: str) -> None:
    # Given a watched job and someone else publishing on its channel
    create(store, job_id)
    items = iter(watch(store, job_id, max_seconds=60, keepalive_seconds=10))
    next(items)
    store.client.publish(store.events_channel(job_id), "not a record")
    store.client.publish(store.events_channel(job_id), '["seq", "x"]')
    # Then the watch goes on with the job's own events
    claim(store, job_id)
    event = next(items)
    assert isinstance(event, Event) and event.state == "running"


class ChangesRightAfterTheRead(JobStore):
    """A store whose record changes right after the watch's read, before the read returns
    (the change is a real script, published only to subscribers already there).  A watch
    that subscribed first hears of it; one that read first and subscribed after could not."""

    def get_versioned(self, job_id: str) -> tuple[Version, dict[str, Any]] | None:
        found = super().get_versioned(job_id)
        if not getattr(self, "changed", False):
            self.changed = True
            assert self.progress(job_id, token="tok", percent=60) == 0
        return found


def test_the_subscription_is_confirmed_before_the_record_is_read(
    redis_server: RedisServer, store: JobStore, job_id: str
) -> None:
    # Given a running job that changes just after the watch read it
    create(store, job_id)
    claim(store, job_id)
    racing = ChangesRightAfterTheRead(
        redis_client(redis_server.url), namespace=NAMESPACE, ttl_seconds=TTL
    )
    # When the watch yields the (now stale) status it read
    items = iter(watch(racing, job_id, max_seconds=5, keepalive_seconds=60))
    first = next(items)
    assert isinstance(first, Event) and first.status["progress"] == 0
    # Then the change comes next, as published (no re-read: the keep-alive is far off)
    second = next(items, None)
    assert isinstance(second, Event), "the change made after the read was missed"
    assert (second.status["progress"], second.seq) == (60, first.seq + 1)


def test_a_record_deleted_and_created_again_is_followed_whatever_its_seq(
    store: JobStore, job_id: str
) -> None:
    # Given a watched job at seq 3 (created, claimed, progressed)
    create(store, job_id)
    claim(store, job_id)
    assert store.progress(job_id, token="tok", percent=50) == 0
    items = iter(watch(store, job_id, max_seconds=5, keepalive_seconds=60))
    first = next(items)
    assert isinstance(first, Event) and first.seq == 3
    # When its record is deleted (as after a submit whose enqueue failed) and the jobId is
    # submitted again, and the new record runs to success at the same seq
    store.client.delete(store.job_key(job_id))  # the record goes (as when it expires)
    create(store, job_id)
    claim(store, job_id)
    succeed(store, job_id)
    assert (store.get_with_seq(job_id) or (0, {}))[0] == 3
    # Then the watch yields the new record's final state, and ends
    rest = events_of(items)
    assert rest, "the new record's events were taken for old ones"
    final = rest[-1]
    assert (final.state, final.seq) == ("succeeded", 3)
    assert final.version.incarnation != first.version.incarnation


def test_a_wait_without_timeout_sees_the_end_of_a_record_created_again(job_id: str) -> None:
    # Given a job at seq 2 on a Redis of our own (its command counts tell when the wait has
    # read the record), and a wait without a timeout
    with RedisServer() as server:
        client = PreviewClient.from_url(server.url, PREVIEW_NAMESPACE=NAMESPACE)
        store = client.store
        create(store, job_id)
        claim(store, job_id)
        reads = hgetalls(store)
        answer: list[dict[str, Any]] = []
        waiter = threading.Thread(target=lambda: answer.append(client.wait(job_id)), daemon=True)
        waiter.start()
        wait_until(lambda: hgetalls(store), lambda n: n > reads, what="the wait to read")
        # When the record is deleted, created again and cancelled (seq 2 again)
        store.client.delete(store.job_key(job_id))  # the record goes (as when it expires)
        create(store, job_id)
        assert store.cancel(job_id).outcome == "cancelled"
        # Then the wait returns the new record's final status
        waiter.join(timeout=30)
        assert answer and answer[0]["state"] == "cancelled"


def hgetalls(store: JobStore) -> int:
    """How many HGETALL the server has run (reads of a record by a watch)."""
    stats = store.client.info("commandstats").get("cmdstat_hgetall")
    return int(stats["calls"]) if stats else 0


def test_a_late_message_of_another_record_is_checked_against_the_record(
    store: JobStore, job_id: str
) -> None:
    # Given a watched queued job
    create(store, job_id)
    items = iter(watch(store, job_id, max_seconds=10, keepalive_seconds=60))
    first = next(items)
    assert isinstance(first, Event)
    # When a record of another incarnation of the id arrives (a late message of the record
    # before this one), seemingly newer
    stale = ["state", "succeeded", "incarnation", "0ld", "seq", "99", "created_at", "1"]
    store.client.publish(store.events_channel(job_id), json.dumps(stale))
    claim(store, job_id)
    # Then the watch read the record instead, and goes on with the job's own events
    event = next(items)
    assert isinstance(event, Event)
    assert (event.state, event.version) == ("running", Version(first.version.incarnation, 2))


class SlowFirstRead(JobStore):
    """A store whose first read takes longer than the watch may live."""

    def get_versioned(self, job_id: str) -> tuple[Version, dict[str, Any]] | None:
        found = super().get_versioned(job_id)
        if not getattr(self, "slowed", False):
            self.slowed = True
            time.sleep(1.5)
        return found


def test_the_lifetime_counts_from_the_start_of_open(redis_server: RedisServer, job_id: str) -> None:
    # Given a watch that may live 1 s, whose subscribe and first read take longer
    slow = SlowFirstRead(redis_client(redis_server.url), namespace=NAMESPACE, ttl_seconds=TTL)
    create(slow, job_id)
    items = list(watch(slow, job_id, max_seconds=1, keepalive_seconds=0.3))
    # Then it yields the status it read and ends at once: no keep-alive period is left
    assert [type(i) for i in items] == [Event]


@contextlib.contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """The server stopped (SIGSTOP): connections stay open, nothing is answered."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def test_the_wait_for_the_subscription_is_bounded_by_the_lifetime(job_id: str) -> None:
    # Given a job on a Redis of our own that then stops answering
    with RedisServer() as server:
        own = JobStore(redis_client(server.url), namespace=NAMESPACE, ttl_seconds=TTL)
        create(own, job_id)  # leaves a connection in the pool: nothing left to connect
        # Then a watch that may live less than SUBSCRIBE_TIMEOUT gives up when it ends
        with frozen(server), pytest.raises(TimeoutError):
            watch(own, job_id, max_seconds=0.5)


def test_a_wait_on_a_job_that_does_not_end_raises_wait_timeout(job_id: str) -> None:
    # Given a queued job that no worker takes
    with RedisServer() as server:
        client = PreviewClient.from_url(server.url, PREVIEW_NAMESPACE=NAMESPACE)
        create(client.store, job_id)
        # When a wait runs out / Then it says which job and its state, as a PreviewError
        # that is also a TimeoutError
        with pytest.raises(WaitTimeout, match=r"is not final after 0\.3s: it is queued") as info:
            client.wait(job_id, timeout=0.3)
        assert info.value.job_id == job_id
        assert isinstance(info.value, PreviewError) and isinstance(info.value, TimeoutError)
        # And the job goes on as it was
        assert client.status(job_id)["state"] == "queued"


def test_a_wait_gives_up_on_a_silent_redis_at_its_timeout(job_id: str) -> None:
    with RedisServer() as server:
        client = PreviewClient.from_url(server.url, PREVIEW_NAMESPACE=NAMESPACE)
        create(client.store, job_id)
        with frozen(server), pytest.raises(TimeoutError, match=r"did not answer within 0\.5s"):
            client.wait(job_id, timeout=0.5)


def test_no_answer_to_subscribe_within_its_timeout_is_unavailable(
    job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch_module, "SUBSCRIBE_TIMEOUT", 0.5)
    with RedisServer() as server:
        own = JobStore(redis_client(server.url), namespace=NAMESPACE, ttl_seconds=TTL)
        create(own, job_id)
        with frozen(server), pytest.raises(StateStoreUnavailable):
            watch(own, job_id, max_seconds=60)

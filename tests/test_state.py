"""The job store's transitions, against the private Redis: atomic, final states stick."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from dramatiq_preview.state import (
    SCRIPTS,
    SHARED,
    Cancellation,
    CancelOutcome,
    ClaimVerdict,
    CreateOutcome,
    FinishVerdict,
    JobStore,
    ProgressVerdict,
    RequeueOutcome,
    Version,
    WebhookOp,
    iso,
    load_script,
    record_from_event,
    version_of,
)
from dramatiq_preview.state import redis_client as client_for
from dramatiq_preview.testing import RedisServer

TTL = 600


@pytest.fixture
def store(redis_server: Any) -> JobStore:
    return JobStore(client_for(redis_server.url), namespace="unit", ttl_seconds=TTL)


def create(store: JobStore, job_id: str, fp: str = "fp1") -> tuple[str, str]:
    return store.create(job_id, fp=fp, priority="high", queue="preview-high", metadata={"k": "v"})


def claim(
    store: JobStore, job_id: str, token: str = "t1", lease_ms: int = 10_000, max_deliveries: int = 3
) -> Any:
    return store.claim(job_id, token=token, lease_ms=lease_ms, max_deliveries=max_deliveries)


def test_create_records_a_queued_job_once(store: JobStore, job_id: str) -> None:
    assert create(store, job_id) == ("created", "queued")
    assert create(store, job_id) == ("duplicate", "queued")
    assert create(store, job_id, fp="other") == ("conflict", "queued")
    status = store.get(job_id)
    assert status is not None
    assert status["state"] == "queued" and status["priority"] == "high"
    assert status["metadata"] == {"k": "v"}
    assert status["attempts"] == 0 and status["progress"] == 0
    assert status["startedAt"] is None and status["result"] is None


def test_concurrent_creates_make_exactly_one_job(store: JobStore, job_id: str) -> None:
    outcomes: list[str] = []
    barrier = threading.Barrier(20)

    def go() -> None:
        barrier.wait()
        outcomes.append(create(store, job_id)[0])

    threads = [threading.Thread(target=go) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["created"] + ["duplicate"] * 19


def test_claim_runs_once_and_counts_attempts(store: JobStore, job_id: str) -> None:
    create(store, job_id)
    first = claim(store, job_id)
    assert (first.verdict, first.attempts) == ("run", 1)
    status = store.get(job_id)
    assert status and status["state"] == "running" and status["startedAt"]
    # A second delivery while the lease is live must not render concurrently
    second = claim(store, job_id, token="t2")
    assert second.verdict == "busy"
    assert second.lease_until > time.time() * 1000


def test_an_expired_lease_can_be_taken_over(store: JobStore, job_id: str) -> None:
    create(store, job_id)
    # A lease of 0 ms ends the moment it is taken: the next claim finds it expired
    assert claim(store, job_id, lease_ms=0).verdict == "run"
    taken = claim(store, job_id, token="t2")
    assert (taken.verdict, taken.attempts) == ("run", 2)
    # The old holder can neither report progress nor finish the job any more
    assert store.progress(job_id, token="t1", percent=50) == 2
    assert store.finish(job_id, token="t1", outcome="succeeded", data={}) == ("busy", "running")


def test_succeeded_is_final(store: JobStore, job_id: str) -> None:
    create(store, job_id)
    claim(store, job_id)
    result = {"outputs": [{"path": "x/0.png"}]}
    assert store.finish(job_id, token="t1", outcome="succeeded", data=result) == ("ok", "succeeded")
    status = store.get(job_id)
    assert status and status["progress"] == 100 and status["result"] == result
    # A late delivery is skipped; late writes change nothing
    assert claim(store, job_id, token="t9").verdict == "done"
    assert store.finish(job_id, token="t9", outcome="failed", data={}) == ("final", "succeeded")
    assert store.cancel(job_id) == Cancellation(CancelOutcome.FINAL, "succeeded")
    assert store.get(job_id) == status


def test_retrying_records_the_error_and_the_next_attempt(store: JobStore, job_id: str) -> None:
    create(store, job_id)
    claim(store, job_id)
    error = {"type": "source_unavailable", "message": "503", "retryable": True}
    next_at = int(time.time() * 1000) + 5000
    assert store.finish(
        job_id, token="t1", outcome="retrying", data=error, next_attempt_at=next_at
    ) == ("ok", "retrying")
    status = store.get(job_id)
    assert status and status["error"] == error and status["nextAttemptAt"] == iso(next_at)
    again = claim(store, job_id, token="t2")
    assert (again.verdict, again.attempts) == ("run", 2)
    status = store.get(job_id)
    assert status and status["state"] == "running" and status["nextAttemptAt"] is None


def test_cancel_of_a_waiting_job_is_immediate_and_final(store: JobStore, job_id: str) -> None:
    create(store, job_id)
    assert store.oldest_waiting("preview-high") is not None
    assert store.cancel(job_id) == Cancellation(CancelOutcome.CANCELLED, "cancelled")
    assert store.cancel(job_id) == Cancellation(CancelOutcome.FINAL, "cancelled")
    status = store.get(job_id)
    assert status and status["state"] == "cancelled" and status["finishedAt"]
    # Its first delivery counts it (nobody else does); later copies are plain skips.
    assert claim(store, job_id).verdict == "cancelled_waiting"
    assert claim(store, job_id).verdict == "cancelled"


def test_cancel_of_a_running_job_is_seen_at_the_next_checkpoint(
    store: JobStore, job_id: str
) -> None:
    create(store, job_id)
    claim(store, job_id)
    assert store.progress(job_id, token="t1", percent=30) == 0
    assert store.cancel(job_id) == Cancellation(CancelOutcome.RUNNING, "running")
    assert store.progress(job_id, token="t1", percent=None) == 1
    # Even a render that completes ends cancelled once cancellation was requested
    assert store.finish(job_id, token="t1", outcome="succeeded", data={}) == ("ok", "cancelled")


def test_a_cancelled_running_job_whose_holder_died_ends_cancelled(
    store: JobStore, job_id: str
) -> None:
    create(store, job_id)
    claim(store, job_id, lease_ms=0)
    store.cancel(job_id)
    assert claim(store, job_id, token="t2").verdict == "cancelled_now"
    assert claim(store, job_id, token="t3").verdict == "cancelled"
    status = store.get(job_id)
    assert status and status["state"] == "cancelled"


def test_a_poison_pill_fails_as_worker_lost(store: JobStore, job_id: str) -> None:
    create(store, job_id)
    for n in range(1, 3):
        assert claim(store, job_id, token=f"t{n}", lease_ms=0, max_deliveries=2).verdict == "run"
    lost = claim(store, job_id, token="t3", max_deliveries=2)
    assert (lost.verdict, lost.attempts) == ("lost", 2)
    status = store.get(job_id)
    assert status and status["state"] == "failed"
    assert status["error"]["type"] == "worker_lost"
    assert status["attempts"] == 2


def test_a_clean_finish_resets_the_delivery_count(store: JobStore, job_id: str) -> None:
    create(store, job_id)
    for n in range(5):  # more retries than max_deliveries: retries are not deaths
        assert claim(store, job_id, token=f"t{n}", max_deliveries=2).verdict == "run"
        store.finish(job_id, token=f"t{n}", outcome="retrying", data={}, next_attempt_at=0)
    assert claim(store, job_id, token="last", max_deliveries=2).verdict == "run"


def test_requeue_puts_a_failed_job_back_only(store: JobStore, job_id: str) -> None:
    create(store, job_id)
    claim(store, job_id)
    store.finish(job_id, token="t1", outcome="failed", data={"type": "x"})
    assert store.requeue(job_id, queue="preview-low") is RequeueOutcome.REQUEUED
    status = store.get(job_id)
    assert status and status["state"] == "queued" and status["error"] is None
    assert status["attempts"] == 1, "attempts keep counting across a replay"
    assert store.requeue(job_id, queue="preview-low") is RequeueOutcome.NOT_FAILED
    assert store.requeue("never-existed", queue="preview-low") is RequeueOutcome.MISSING


def test_every_write_sets_the_ttl(store: JobStore, job_id: str, redis_client: Any) -> None:
    create(store, job_id)
    key = store.job_key(job_id)
    waiting = store.waiting_key("preview-high")
    assert 0 < redis_client.ttl(key) <= TTL
    for step in (
        lambda: claim(store, job_id),
        lambda: store.progress(job_id, token="t1", percent=40),
        lambda: store.finish(job_id, token="t1", outcome="succeeded", data={}),
    ):
        redis_client.persist(key)
        step()
        if redis_client.ttl(key) == -1:
            pytest.fail("a write left the job record without a TTL")
        assert 0 < redis_client.ttl(key) <= TTL
    assert 0 < redis_client.ttl(waiting) <= TTL


def test_a_redis_outage_is_a_state_store_error() -> None:
    from dramatiq_preview.errors import StateStoreUnavailable
    from dramatiq_preview.state import redis_client
    from dramatiq_preview.testing import free_port

    dead = JobStore(
        redis_client(f"redis://127.0.0.1:{free_port()}/0"), namespace="x", ttl_seconds=60
    )
    with pytest.raises(StateStoreUnavailable) as info:
        dead.get("a")
    assert info.value.retryable is True


def test_a_cancel_of_an_unknown_job_says_missing(store: JobStore) -> None:
    assert store.cancel("never-existed") == Cancellation(CancelOutcome.MISSING, "")


def test_answers_are_enum_members_that_still_compare_as_text(store: JobStore, job_id: str) -> None:
    """Given each transition, when it answers, then the answer is a member of its enum,
    and it equals (and prints as) the text callers compared it with before the enums."""
    outcome, state = create(store, job_id)
    assert outcome is CreateOutcome.CREATED and outcome == "created" and state == "queued"
    assert f"{outcome}" == "created" and str(outcome) == "created"
    assert create(store, job_id)[0] is CreateOutcome.DUPLICATE
    assert create(store, job_id, fp="other")[0] is CreateOutcome.CONFLICT
    claimed = claim(store, job_id)
    assert claimed.verdict is ClaimVerdict.RUN and claimed.verdict == "run"
    assert claimed.verdict in ("run", "busy")
    assert claim(store, job_id, token="t2").verdict is ClaimVerdict.BUSY
    assert claim(store, "never-existed").verdict is ClaimVerdict.MISSING
    go_on = store.progress(job_id, token="t1", percent=10)
    assert go_on is ProgressVerdict.GO_ON and go_on == 0
    store.cancel(job_id)
    assert store.progress(job_id, token="t1", percent=None) is ProgressVerdict.CANCEL_REQUESTED
    assert store.progress(job_id, token="t9", percent=None) is ProgressVerdict.LEASE_LOST
    assert store.progress(job_id, token="t9", percent=None) == 2
    verdict, state = store.finish(job_id, token="t1", outcome="succeeded", data={})
    assert (verdict, state) == (FinishVerdict.OK, "cancelled") and verdict == "ok"
    assert store.finish(job_id, token="t1", outcome="failed")[0] is FinishVerdict.FINAL
    assert store.finish("never-existed", token="t1", outcome="failed") == (
        FinishVerdict.MISSING,
        "",
    )
    assert claim(store, job_id).verdict is ClaimVerdict.CANCELLED


def test_the_scripts_are_read_from_the_package(store: JobStore) -> None:
    """Given the installed package, then every transition's Lua ships as a resource file
    (dramatiq_preview/lua/NAME.lua) and is what the store registers."""
    from importlib import resources

    lua = resources.files("dramatiq_preview") / "lua"
    shipped = sorted(p.name for p in lua.iterdir() if p.name.endswith(".lua"))
    assert shipped == sorted(f"{name}.lua" for name in (*SCRIPTS, SHARED))
    for name in SCRIPTS:
        assert "redis.call" in load_script(name), name
        assert getattr(store, f"_{name}").script == load_script(name)


# --- events: seq and the notification of every change ---------------------------------------


class Listener:
    """A confirmed subscriber on one job's events channel.

    :meth:`published` fences what the scripts published: it publishes a marker of its own
    and reads up to it.  Redis delivers one channel's messages to a subscriber in order, so
    every message a script published before the marker is read, and nothing is waited for.
    """

    FENCE = "fence"

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store = store
        self.channel = store.events_channel(job_id)
        self.pubsub = store.client.pubsub()
        self.pubsub.subscribe(self.channel)
        confirmed = self.pubsub.get_message(timeout=10)
        assert confirmed is not None and confirmed["type"] == "subscribe"

    def published(self) -> list[dict[str, str]]:
        """The records published since the last call."""
        self.store.client.publish(self.channel, self.FENCE)
        records: list[dict[str, str]] = []
        while True:
            message = self.pubsub.get_message(timeout=10)
            assert message is not None, "the fence never came back"
            if message["type"] != "message":
                continue
            if message["data"] == self.FENCE:
                return records
            records.append(record_from_event(message["data"]))

    def close(self) -> None:
        self.pubsub.close()


def seq_of(store: JobStore, job_id: str) -> int:
    return int(store.client.hget(store.job_key(job_id), "seq") or 0)


@pytest.fixture
def listener(store: JobStore, job_id: str) -> Any:
    heard = Listener(store, job_id)
    yield heard
    heard.close()


def _then_one_event(store: JobStore, job_id: str, listener: Listener, before: int) -> None:
    records = listener.published()
    assert seq_of(store, job_id) == before + 1
    assert len(records) == 1, records
    assert records[0]["seq"] == str(before + 1)
    assert records[0]["state"] == store.client.hget(store.job_key(job_id), "state")


def _then_no_event(store: JobStore, job_id: str, listener: Listener, before: int) -> None:
    assert listener.published() == []
    assert seq_of(store, job_id) == before


def _run(store: JobStore, job_id: str) -> bool:
    """Claim the job for delivery ``t1``: it runs."""
    return bool(claim(store, job_id).verdict == "run")


#: Each change of state or progress, from the state its set-up leaves the job in.
CHANGES: dict[str, Any] = {
    "claim run": lambda s, j: claim(s, j).verdict == "run",
    "claim cancelled_now": lambda s, j: claim(s, j, token="t2").verdict == "cancelled_now",
    "claim lost": lambda s, j: claim(s, j, token="t9", max_deliveries=1).verdict == "lost",
    "progress": lambda s, j: s.progress(j, token="t1", percent=40) == 0,
    "finish retrying": lambda s, j: (
        s.finish(j, token="t1", outcome="retrying", data={}, next_attempt_at=0).verdict == "ok"
    ),
    "finish succeeded": lambda s, j: (
        s.finish(j, token="t1", outcome="succeeded", data={}).verdict == "ok"
    ),
    "finish failed": lambda s, j: (
        s.finish(j, token="t1", outcome="failed", data={}).verdict == "ok"
    ),
    "finish cancelled": lambda s, j: s.finish(j, token="t1", outcome="cancelled").verdict == "ok",
    "cancel of a waiting job": lambda s, j: s.cancel(j).outcome == "cancelled",
    "requeue": lambda s, j: s.requeue(j, queue="preview-low") == "requeued",
}


def _set_up(store: JobStore, job_id: str, change: str) -> None:
    create(store, job_id)
    if change == "claim cancelled_now":
        claim(store, job_id, lease_ms=0)
        store.cancel(job_id)
    elif change == "claim lost":
        claim(store, job_id, lease_ms=0)
    elif change.startswith(("progress", "finish")):
        assert _run(store, job_id)
    elif change == "requeue":
        assert _run(store, job_id)
        store.finish(job_id, token="t1", outcome="failed", data={})


def test_creating_a_job_is_one_event(store: JobStore, job_id: str, listener: Listener) -> None:
    assert create(store, job_id) == ("created", "queued")
    _then_one_event(store, job_id, listener, 0)


@pytest.mark.parametrize("change", list(CHANGES))
def test_each_change_bumps_seq_by_one_and_publishes_it_once(
    store: JobStore, job_id: str, listener: Listener, change: str
) -> None:
    # Given a job in the state the change starts from, with a subscriber on its channel
    _set_up(store, job_id, change)
    listener.published()
    before = seq_of(store, job_id)
    # When it changes
    assert CHANGES[change](store, job_id)
    # Then seq rose by exactly one, and the subscriber got exactly that record
    _then_one_event(store, job_id, listener, before)


def _webhook_ops(store: JobStore, job_id: str) -> None:
    store.create(
        job_id,
        fp="fp1",
        priority="high",
        queue="preview-high",
        metadata={},
        webhook_url="https://example.com/hook",
    )
    assert _run(store, job_id)
    done = store.finish(job_id, token="t1", outcome="succeeded", data={})
    assert done.webhook_due > 0


#: What changes nothing a status shows: (set-up, the call).
NO_CHANGES: dict[str, tuple[Any, Any]] = {
    "create duplicate": (create, lambda s, j: create(s, j)[0] == "duplicate"),
    "create conflict": (create, lambda s, j: create(s, j, fp="other")[0] == "conflict"),
    "claim busy": (
        lambda s, j: (create(s, j), _run(s, j)),
        lambda s, j: claim(s, j, token="t2").verdict == "busy",
    ),
    "cancel of a running job": (
        lambda s, j: (create(s, j), _run(s, j)),
        lambda s, j: s.cancel(j).outcome == "running",
    ),
    "progress poll": (
        lambda s, j: (create(s, j), _run(s, j)),
        lambda s, j: s.progress(j, token="t1", percent=None) == 0,
    ),
    "progress of a lost lease": (
        lambda s, j: (create(s, j), _run(s, j)),
        lambda s, j: s.progress(j, token="t9", percent=70) == 2,
    ),
    "release": (
        lambda s, j: (create(s, j), _run(s, j)),
        lambda s, j: s.finish(j, token="t1", outcome="release").verdict == "ok",
    ),
    "a second finish": (
        lambda s, j: (create(s, j), _run(s, j), s.finish(j, token="t1", outcome="failed")),
        lambda s, j: s.finish(j, token="t1", outcome="succeeded").verdict == "final",
    ),
    "claim of a final job": (
        lambda s, j: (create(s, j), _run(s, j), s.finish(j, token="t1", outcome="failed")),
        lambda s, j: claim(s, j, token="t2").verdict == "done",
    ),
    "cancel of a final job": (
        lambda s, j: (create(s, j), s.cancel(j)),
        lambda s, j: s.cancel(j).outcome == "final",
    ),
    "claims of a cancelled job": (
        lambda s, j: (create(s, j), s.cancel(j)),
        lambda s, j: [claim(s, j).verdict for _ in range(2)] == ["cancelled_waiting", "cancelled"],
    ),
    "requeue of a job that did not fail": (
        create,
        lambda s, j: s.requeue(j, queue="preview-low") == "not_failed",
    ),
    "webhook ops": (
        _webhook_ops,
        lambda s, j: (
            [
                s.webhook(j, op, int(s.client.hget(s.job_key(j), "webhook_seq") or 0), "x")
                for op in (WebhookOp.QUEUED, WebhookOp.RETRY, WebhookOp.FAILED, WebhookOp.DELIVERED)
            ]
            == ["ok"] * 4
        ),
    ),
}


@pytest.mark.parametrize("call", list(NO_CHANGES))
def test_what_changes_no_status_bumps_nothing_and_publishes_nothing(
    store: JobStore, job_id: str, listener: Listener, call: str
) -> None:
    set_up, act = NO_CHANGES[call]
    set_up(store, job_id)
    listener.published()
    before = seq_of(store, job_id)
    assert act(store, job_id)
    _then_no_event(store, job_id, listener, before)


def test_without_a_subscriber_nothing_is_published() -> None:
    # Given a redis-server of our own, whose command statistics only this test moves
    with RedisServer() as server:
        client = client_for(server.url)
        own = JobStore(client, namespace="unit", ttl_seconds=TTL)

        def publishes() -> int:
            stats = client.info("commandstats").get("cmdstat_publish")
            return int(stats["calls"]) if stats else 0

        def every_change(job_id: str) -> int:
            """Create, claim, progress, retry, run again, fail, requeue, cancel: 8 events."""
            create(own, job_id)
            claim(own, job_id)
            own.progress(job_id, token="t1", percent=10)
            own.finish(job_id, token="t1", outcome="retrying", data={}, next_attempt_at=0)
            claim(own, job_id, token="t2")
            own.finish(job_id, token="t2", outcome="failed", data={})
            own.requeue(job_id, queue="preview-high")
            own.cancel(job_id)
            return 8

        # When jobs change with nobody on their channels (a pattern subscriber included:
        # PUBSUB NUMSUB does not count it)
        patterns = client.pubsub()
        patterns.psubscribe("unit:job:*")
        assert patterns.get_message(timeout=10) is not None
        every_change("quiet")
        # Then the scripts published nothing
        assert publishes() == 0
        assert seq_of(own, "quiet") == 8
        # while a subscriber (the control: script calls are counted) gets each change
        heard = Listener(own, "watched")
        changes = every_change("watched")
        assert len(heard.published()) == changes
        assert publishes() == changes + 1  # and the listener's fence
        heard.close()
        patterns.close()


def test_a_record_created_again_is_another_incarnation(store: JobStore, job_id: str) -> None:
    # Given a job that ran, failed and was requeued: one record all along
    create(store, job_id)
    first = store.get_versioned(job_id)
    assert first is not None and first[0] == Version(first[0].incarnation, 1)
    claim(store, job_id)
    store.finish(job_id, token="t1", outcome="failed", data={})
    store.requeue(job_id, queue="preview-high")
    again = store.get_versioned(job_id)
    assert again is not None and again[0] == Version(first[0].incarnation, 4)
    assert store.get_with_seq(job_id) == (4, again[1])
    # When the record is deleted (a submit whose enqueue failed) and the id submitted again
    store.client.delete(store.job_key(job_id))  # the record goes (as when it expires)
    create(store, job_id)
    # Then seq starts over, under another incarnation
    new = store.get_versioned(job_id)
    assert new is not None and new[0].seq == 1
    assert new[0].incarnation != first[0].incarnation


def test_event_ids_name_a_version_and_nothing_else() -> None:
    version = Version("3f9c0a1b2d4e", 12)
    assert str(version) == "3f9c0a1b2d4e-12"
    assert Version.parse(str(version)) == version
    assert Version.parse("1712345678901-3") == Version("1712345678901", 3)  # created_at
    for text in ("12", "", "-12", "3f9c-", "3F9C-1", "3f9c-1-2", "3f9c-x", "3f9c-" + "9" * 19):
        assert Version.parse(text) is None, text


def test_a_record_from_before_incarnations_goes_by_its_creation_time() -> None:
    assert version_of({"state": "queued", "created_at": "1712345678901", "seq": "2"}) == (
        Version("1712345678901", 2)
    )
    assert version_of({"state": "queued", "incarnation": "ab", "created_at": "1"}) == (
        Version("ab", 0)
    )


def test_a_requeued_job_waits_for_its_next_end_before_its_webhook_is_due_again(
    store: JobStore, job_id: str
) -> None:
    # Given a job with a webhook that failed, and whose failure was delivered
    store.create(
        job_id,
        fp="fp1",
        priority="normal",
        queue="preview-normal",
        metadata={},
        webhook_url="https://hooks.example/x",
    )
    claim(store, job_id)
    failed = store.finish(job_id, token="t1", outcome="failed", data={"type": "x"})
    assert failed.webhook_due
    assert store.webhook(job_id, WebhookOp.DELIVERED, failed.webhook_due) == "ok"
    # When it is requeued from the dead letters
    assert store.requeue(job_id, queue="preview-normal") == "requeued"
    # Then its status shows a webhook waiting for the next final state, not the old one's
    status = store.get(job_id)
    assert status is not None and status["state"] == "queued"
    assert status["webhook"] == {"state": "pending", "attempts": 0, "lastError": None}
    # And an attempt at the old event still in flight records nothing
    for op in (WebhookOp.RETRY, WebhookOp.FAILED, WebhookOp.DELIVERED):
        assert store.webhook(job_id, op, failed.webhook_due, "late") == "stale"
    assert store.get(job_id)["webhook"]["attempts"] == 0  # type: ignore[index]

"""The job store's bookkeeping of deliveries that never ended (issue #16), against the private
Redis: deaths shared with other renders of a process, isolation, time-limit overruns, and the
in-flight index that the sweep of orphaned jobs reads."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from dramatiq_preview.state import ClaimVerdict, JobStore, SweepVerdict
from dramatiq_preview.state import redis_client as client_for

TTL = 600


@pytest.fixture
def store(redis_server: Any) -> JobStore:
    """A store of a namespace of this test's own (the in-flight index is per namespace)."""
    return JobStore(
        client_for(redis_server.url), namespace="dl-" + uuid.uuid4().hex[:10], ttl_seconds=TTL
    )


def create(store: JobStore, job_id: str) -> None:
    store.create(job_id, fp="fp", priority="normal", queue="preview-normal", metadata={})


def claim(store: JobStore, job_id: str, token: str, **kwargs: Any) -> Any:
    options: dict[str, Any] = {"lease_ms": 0, "max_deliveries": 2, **kwargs}
    return store.claim(job_id, token=token, **options)


def test_a_death_beside_other_renders_never_fails_a_job_it_runs_alone_instead(
    store: JobStore,
) -> None:
    # Given two jobs rendering side by side in one process (the second claim names the first
    # as its company), whose process then dies (leases of 0 ms: already expired)
    pill, bystander = "pill-" + uuid.uuid4().hex, "by-" + uuid.uuid4().hex
    create(store, pill)
    create(store, bystander)
    assert claim(store, bystander, "b1", isolated=False).verdict == "run"
    assert claim(store, pill, "p1", isolated=False, company=[(bystander, "b1")]).verdict == "run"

    # When each is delivered again, not alone in its process
    again = claim(store, bystander, "b2", isolated=False)
    # Then neither fails: each must run alone first (nothing was taken)
    assert again.verdict is ClaimVerdict.ISOLATE
    assert claim(store, pill, "p2", isolated=False).verdict is ClaimVerdict.ISOLATE
    raw = store.client.hgetall(store.job_key(bystander))
    assert (raw["attempts"], raw.get("lone_deaths", "0")) == ("1", "0")

    # When the pill runs alone and kills its process each time
    for n in range(2, 4):
        run = claim(store, pill, f"p{n}x", isolated=True, max_deliveries=3)
        assert run.verdict is ClaimVerdict.RUN, n
    # Then it is failed as worker_lost after PREVIEW_MAX_DELIVERIES deliveries ...
    lost = claim(store, pill, "p9", isolated=True, max_deliveries=3)
    assert (lost.verdict, lost.attempts) == (ClaimVerdict.LOST, 3)
    status = store.get(pill)
    assert status and status["error"]["type"] == "worker_lost" and status["attempts"] == 3
    # ... while the job beside it, run alone, succeeds
    assert claim(store, bystander, "b3", isolated=True).verdict is ClaimVerdict.RUN
    store.finish(bystander, token="b3", outcome="succeeded", data={"outputs": []})
    done = store.get(bystander)
    assert done and done["state"] == "succeeded" and done["attempts"] == 2


def test_deaths_that_were_all_shared_give_one_isolated_delivery_past_the_limit(
    store: JobStore, job_id: str
) -> None:
    # Given a job that died once beside another render, with PREVIEW_MAX_DELIVERIES 1
    create(store, job_id)
    assert claim(store, job_id, "t1", company=[("other", "o1")], max_deliveries=1).verdict == "run"
    # When it is delivered again: it is not failed on a shared death, it runs alone
    assert claim(store, job_id, "t2", isolated=False, max_deliveries=1).verdict == "isolate"
    assert claim(store, job_id, "t3", isolated=True, max_deliveries=1).verdict == "run"
    # Then a death alone fails it
    lost = claim(store, job_id, "t4", isolated=True, max_deliveries=1)
    assert (lost.verdict, lost.attempts) == (ClaimVerdict.LOST, 2)


def test_a_company_mark_made_before_the_other_claim_still_counts(store: JobStore) -> None:
    # Given a delivery registered in its process but not yet claimed, named as company by a
    # claim that runs first
    first, second = "a-" + uuid.uuid4().hex, "b-" + uuid.uuid4().hex
    create(store, first)
    create(store, second)
    assert claim(store, second, "s1", company=[(first, "f1")]).verdict == "run"
    assert claim(store, first, "f1").verdict == "run"  # its own claim: alone, it thinks
    # When the process dies: the first job's death was shared all the same
    assert claim(store, first, "f2", isolated=False).verdict is ClaimVerdict.ISOLATE
    assert store.client.hget(store.job_key(first), "lone_deaths") is None


def test_a_clean_end_forgets_the_deaths(store: JobStore, job_id: str) -> None:
    create(store, job_id)
    assert claim(store, job_id, "t1").verdict == "run"
    assert claim(store, job_id, "t2", isolated=False).verdict == "isolate"
    assert claim(store, job_id, "t3").verdict == "run"
    store.finish(job_id, token="t3", outcome="retrying", data={}, next_attempt_at=0)
    # The retry is an ordinary delivery again
    assert claim(store, job_id, "t4", isolated=False).verdict == "run"
    raw = store.client.hgetall(store.job_key(job_id))
    assert raw["deliveries"] == "1" and raw["lone_deaths"] == "0"


def test_overruns_are_counted_reported_by_the_next_claim_and_forgotten_on_requeue(
    store: JobStore, job_id: str
) -> None:
    create(store, job_id)
    first = claim(store, job_id, "t1", lease_ms=10_000)
    assert first.overruns == 0
    store.finish(job_id, token="t1", outcome="retrying", data={}, next_attempt_at=0, overrun=True)
    second = claim(store, job_id, "t2", lease_ms=10_000)
    assert second.overruns == 1
    store.finish(job_id, token="t2", outcome="retrying", data={}, next_attempt_at=0)
    assert claim(store, job_id, "t3", lease_ms=10_000).overruns == 1, "other retries count 0"
    store.finish(job_id, token="t3", outcome="failed", data={"type": "too_complex"})
    store.requeue(job_id, queue="preview-normal")
    assert claim(store, job_id, "t4", lease_ms=10_000).overruns == 0


def test_the_inflight_index_follows_a_job_until_it_ends(store: JobStore, job_id: str) -> None:
    # Given a claimed job: it is indexed by the end of its lease, its message kept
    create(store, job_id)
    before = int(time.time() * 1000)
    claim(store, job_id, "t1", lease_ms=60_000, message="M1")
    score = store.client.zscore(store.inflight_key, job_id)
    assert before + 60_000 <= score <= before + 61_000
    assert store.client.hget(store.job_key(job_id), "message") == "M1"
    assert 0 < store.client.ttl(store.inflight_key) <= TTL
    # When it is retried: indexed by when the retry is due
    store.finish(job_id, token="t1", outcome="retrying", data={}, next_attempt_at=12345)
    assert store.client.zscore(store.inflight_key, job_id) == 12345
    # When it ends: out of the index, its message dropped
    claim(store, job_id, "t2", lease_ms=60_000, message="M2")
    store.finish(job_id, token="t2", outcome="succeeded", data={"outputs": []})
    assert store.client.zscore(store.inflight_key, job_id) is None
    assert store.client.hget(store.job_key(job_id), "message") is None


def test_an_overdue_job_is_put_back_then_failed_when_nothing_claims_it(
    store: JobStore, job_id: str
) -> None:
    # Given a job whose delivery was given up: running, its lease long over
    create(store, job_id)
    claim(store, job_id, "t1", lease_ms=0, message="the message")
    # When it is only just overdue: nothing happens
    time.sleep(0.05)
    assert store.overdue(60_000) == []
    assert store.sweep(job_id, margin_ms=60_000, max_sweeps=2).verdict is SweepVerdict.LIVE
    # When it is overdue past the margin: its message is put back, twice at most, each
    # put-back waiting twice as long as the one before
    assert store.overdue(10) == [job_id]
    for wait in (0.04, 0.08):
        swept = store.sweep(job_id, margin_ms=10, max_sweeps=2)
        assert (swept.verdict, swept.message) == (SweepVerdict.REDELIVER, "the message")
        assert store.overdue(10) == [], "looked at again one margin later"
        # A second sweeper of the same round leaves it alone (it was just put back)
        assert store.sweep(job_id, margin_ms=10, max_sweeps=2).verdict is SweepVerdict.LIVE
        time.sleep(wait)
    # Then, still unclaimed, it is failed as worker_lost and leaves the index
    assert store.sweep(job_id, margin_ms=10, max_sweeps=2).verdict is SweepVerdict.LOST
    status = store.get(job_id)
    assert status and status["state"] == "failed" and status["error"]["type"] == "worker_lost"
    assert store.client.zscore(store.inflight_key, job_id) is None


def test_a_claim_of_the_copy_put_back_counts_the_dead_delivery(
    store: JobStore, job_id: str
) -> None:
    create(store, job_id)
    claim(store, job_id, "t1", lease_ms=0, message="m")
    time.sleep(0.02)
    assert store.sweep(job_id, margin_ms=1, max_sweeps=3).verdict is SweepVerdict.REDELIVER
    # The copy's claim: the death was alone (no company), so it runs (alone) and the sweep
    # count starts over
    run = claim(store, job_id, "t2", lease_ms=60_000, message="m")
    assert run.verdict is ClaimVerdict.RUN and run.attempts == 2
    raw = store.client.hgetall(store.job_key(job_id))
    assert raw["lone_deaths"] == "1" and "swept" not in raw
    assert store.sweep(job_id, margin_ms=1, max_sweeps=3).verdict is SweepVerdict.LIVE


def test_sweepers_of_one_round_put_a_job_back_once_and_then_wait_longer(
    store: JobStore, job_id: str
) -> None:
    # Given an orphan that four worker processes find overdue in the same round
    create(store, job_id)
    claim(store, job_id, "t1", lease_ms=0, message="m")
    time.sleep(0.35)
    verdicts = [store.sweep(job_id, margin_ms=300, max_sweeps=3).verdict for _ in range(4)]
    # Then one puts it back and the others leave it: it is not failed after one round
    assert verdicts == [SweepVerdict.REDELIVER] + [SweepVerdict.LIVE] * 3
    # And the next put-back waits two margins, not one
    time.sleep(0.3)
    assert store.sweep(job_id, margin_ms=300, max_sweeps=3).verdict is SweepVerdict.LIVE
    time.sleep(0.4)
    assert store.sweep(job_id, margin_ms=300, max_sweeps=3).verdict is SweepVerdict.REDELIVER


def test_an_overdue_job_without_a_kept_message_is_failed_and_one_that_ended_is_dropped(
    store: JobStore, job_id: str
) -> None:
    create(store, job_id)
    claim(store, job_id, "t1", lease_ms=0)  # a record from before messages were kept
    time.sleep(0.02)
    lost = store.sweep(job_id, margin_ms=1, max_sweeps=3)
    assert lost.verdict is SweepVerdict.LOST
    error = json.loads(store.client.hget(store.job_key(job_id), "error"))
    assert error["type"] == "worker_lost" and error["retryable"] is False
    # An index entry of a job that ended (or expired) is simply dropped
    store.client.zadd(store.inflight_key, {job_id: 0, "expired-" + job_id: 0})
    assert store.sweep(job_id, margin_ms=1, max_sweeps=3).verdict is SweepVerdict.GONE
    gone = store.sweep("expired-" + job_id, margin_ms=1, max_sweeps=3)
    assert gone.verdict is SweepVerdict.GONE
    assert store.client.zcard(store.inflight_key) == 0
    assert not store.client.exists(store.job_key("expired-" + job_id))


def test_a_failed_enqueue_removes_the_record_only_while_no_delivery_claimed_it(
    store: JobStore, job_id: str
) -> None:
    # Given a record a submit just created: its enqueue failed, nothing claimed it
    create(store, job_id)
    assert store.delete(job_id, "preview-normal") is True
    assert store.get(job_id) is None
    # Given one whose message reached a worker although the enqueue reported a failure (a
    # publisher confirm lost with the connection): the worker claimed it and rendered it
    create(store, job_id)
    claim(store, job_id, "t1", lease_ms=60_000, message="m")
    store.finish(job_id, token="t1", outcome="succeeded", data={"outputs": []})
    # Then the record stays: a resubmit is a duplicate, not a second render
    assert store.delete(job_id, "preview-normal") is False
    status = store.get(job_id)
    assert status is not None and status["state"] == "succeeded"

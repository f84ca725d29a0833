"""The recent-jobs index behind ``GET /jobs`` and the dashboard, against the private Redis."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from dramatiq_preview import state as state_module
from dramatiq_preview.state import JobStore
from dramatiq_preview.state import redis_client as client_for

TTL = 600


@pytest.fixture
def store(redis_server: Any) -> JobStore:
    # A namespace of its own: the index is per namespace and other tests share the server.
    return JobStore(
        client_for(redis_server.url), namespace=f"recent-{uuid.uuid4().hex[:8]}", ttl_seconds=TTL
    )


def create(store: JobStore, job_id: str) -> None:
    store.create(job_id, fp="fp", priority="normal", queue="preview-normal", metadata={})


def fail(store: JobStore, job_id: str) -> None:
    claim = store.claim(job_id, token="t", lease_ms=10_000, max_deliveries=3)
    assert claim.verdict == "run"
    error = {"type": "corrupt_source", "message": "bad", "retryable": False}
    store.finish(job_id, token="t", outcome="failed", data=error)


def test_recent_lists_status_objects_newest_first(store: JobStore) -> None:
    for n in range(5):
        create(store, f"job-{n}")
    jobs = store.recent()
    assert [j["jobId"] for j in jobs] == [f"job-{n}" for n in reversed(range(5))]
    assert jobs[0]["state"] == "queued" and jobs[0]["createdAt"] is not None
    assert store.get("job-4") == jobs[0]


def test_recent_filters_by_state_and_stops_at_the_limit(store: JobStore) -> None:
    for n in range(30):
        create(store, f"job-{n}")
    for n in (3, 7, 11):
        fail(store, f"job-{n}")
    failed = store.recent(state="failed")
    assert [j["jobId"] for j in failed] == ["job-11", "job-7", "job-3"]
    assert all(j["error"]["type"] == "corrupt_source" for j in failed)
    assert [j["jobId"] for j in store.recent(state="failed", limit=2)] == ["job-11", "job-7"]
    assert len(store.recent(limit=25)) == 25
    assert store.recent(state="cancelled") == []


def test_a_filter_finds_jobs_beyond_the_first_batch(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_module, "_RECENT_BATCH", 4)
    for n in range(20):
        create(store, f"job-{n}")
    fail(store, "job-0")
    assert [j["jobId"] for j in store.recent(state="failed")] == ["job-0"]


def test_expired_records_leave_the_index(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "_RECENT_BATCH", 2)
    for n in range(6):
        create(store, f"job-{n}")
    for n in (1, 2, 3, 5):
        store.client.delete(store.job_key(f"job-{n}"))  # as if their TTL ran out
    assert [j["jobId"] for j in store.recent()] == ["job-4", "job-0"]
    assert store.client.zrange(store.recent_key, 0, -1) == ["job-0", "job-4"]


def test_the_index_is_bounded_and_expires(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "RECENT_MAX", 10)
    monkeypatch.setattr(state_module, "PRUNE_CHANCE", 1.0)
    for n in range(25):
        create(store, f"job-{n}")
    assert store.client.zcard(store.recent_key) == 10
    assert [j["jobId"] for j in store.recent(limit=200)][-1] == "job-15"
    assert 0 < store.client.ttl(store.recent_key) <= TTL


def test_a_record_deleted_after_a_failed_enqueue_leaves_the_index(store: JobStore) -> None:
    create(store, "gone")
    store.delete("gone", "preview-normal")
    assert store.client.zcard(store.recent_key) == 0
    assert store.recent() == []

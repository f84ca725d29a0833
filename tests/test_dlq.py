"""Dead-letter replay on a real RedisBroker (our middleware on it), without a worker.

Dead messages are put where Dramatiq's Redis broker keeps them (``{ns}:{queue}.XQ`` scored
by failure time, ``.XQ.msgs`` holding the encoded messages), as a worker's nack would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest

from dramatiq_preview.broker import build_broker
from dramatiq_preview.config import Settings
from dramatiq_preview.dlq import DeadLetters, dead_letters
from dramatiq_preview.errors import InvalidPayload, PreviewError
from dramatiq_preview.names import ACTOR_NAME, QUEUES, WEBHOOK_ACTOR_NAME, WEBHOOK_QUEUE
from dramatiq_preview.state import WebhookOp, get_store
from dramatiq_preview.testing import RedisServer
from dramatiq_preview.validation import normalize

LANE = QUEUES["normal"]


@pytest.fixture
def dlq(redis_server: RedisServer) -> Iterator[DeadLetters]:
    settings = Settings.from_mapping(
        {"PREVIEW_REDIS_URL": redis_server.url, "PREVIEW_NAMESPACE": "dlq-" + uuid.uuid4().hex[:8]},
        {},
    )
    broker = build_broker(settings)
    yield dead_letters(broker, get_store(settings))
    broker.close()


def bury(dlq: DeadLetters, payload: dict[str, Any]) -> None:
    """Put a render_preview message for ``payload`` into the lane's dead letters."""
    redis_id = str(uuid.uuid4())
    message = dramatiq.Message(
        queue_name=LANE,
        actor_name=ACTOR_NAME,
        args=(payload,),
        kwargs={},
        options={"redis_message_id": redis_id, "retries": 5},
    )
    base = f"{dlq.broker.namespace}:{LANE}.XQ"
    dlq.broker.client.zadd(base, {redis_id: int(time.time() * 1000)})
    dlq.broker.client.hset(base + ".msgs", redis_id, message.encode())


def job(job_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "jobId": job_id,
        "source": {"path": "a.png"},
        "outputs": [{"width": 8, "height": 8, "format": "png"}],
        **extra,
    }


def queued_ids(dlq: DeadLetters) -> list[str]:
    """jobIds of the messages waiting in the lane."""
    client = dlq.broker.client
    ids = client.lrange(f"{dlq.broker.namespace}:{LANE}", 0, -1)
    blobs = client.hmget(f"{dlq.broker.namespace}:{LANE}.msgs", ids) if ids else []
    return [dramatiq.Message.decode(b).args[0]["jobId"] for b in blobs if b]


def test_a_dead_letter_whose_record_expired_is_recorded_again_and_queued(
    dlq: DeadLetters,
) -> None:
    # Given a dead letter whose job record has expired (none exists)
    bury(dlq, job("expired-1"))
    assert dlq.store.get("expired-1") is None
    # When it is requeued
    assert dlq.requeue("expired-1") == ["expired-1"]
    # Then the job is recorded as queued, its message waits in its lane, and it is no longer dead
    assert dlq.store.get("expired-1")["state"] == "queued"
    assert queued_ids(dlq) == ["expired-1"]
    assert dlq.list() == []


def test_requeue_all_replays_the_good_letters_and_leaves_a_refused_one_dead(
    dlq: DeadLetters,
) -> None:
    # Given two dead letters without records, one of them with an invalid payload
    bury(dlq, job("good-1"))
    bury(dlq, job("bad-1", page=-1))
    skipped: list[tuple[str, PreviewError]] = []
    # When every letter is requeued
    replayed = dlq.requeue(on_skip=lambda job_id, error: skipped.append((job_id, error)))
    # Then the good one is replayed, and the bad one is reported and stays dead
    assert replayed == ["good-1"]
    assert [(job_id, type(error)) for job_id, error in skipped] == [("bad-1", InvalidPayload)]
    assert queued_ids(dlq) == ["good-1"]
    assert [letter.job_id for letter in dlq.list()] == ["bad-1"]


def test_requeueing_one_refused_letter_says_why_and_keeps_it(dlq: DeadLetters) -> None:
    # Given a dead letter with an invalid payload and no record
    bury(dlq, job("bad-2", page=-1))
    # When it alone is requeued, Then the caller gets the payload's problem
    with pytest.raises(InvalidPayload) as info:
        dlq.requeue("bad-2")
    assert [issue.path for issue in info.value.issues] == ["page"]
    # And the letter is still dead, nothing was queued
    assert [letter.job_id for letter in dlq.list()] == ["bad-2"]
    assert queued_ids(dlq) == []


def bury_webhook(dlq: DeadLetters, job_id: str, seq: int) -> None:
    """Put a delivery message of ``job_id``'s event ``seq`` into the webhook dead letters."""
    redis_id = str(uuid.uuid4())
    message = dramatiq.Message(
        queue_name=WEBHOOK_QUEUE,
        actor_name=WEBHOOK_ACTOR_NAME,
        args=(job_id, seq),
        kwargs={},
        options={"redis_message_id": redis_id, "retries": 2},
    )
    base = f"{dlq.broker.namespace}:{WEBHOOK_QUEUE}.XQ"
    dlq.broker.client.zadd(base, {redis_id: int(time.time() * 1000)})
    dlq.broker.client.hset(base + ".msgs", redis_id, message.encode())


def test_a_failed_webhook_delivery_is_listed_requeued_and_purged_apart_from_its_job(
    dlq: DeadLetters,
) -> None:
    # Given a job that succeeded and whose webhook failed twice, for good
    store = dlq.store
    store.record(normalize(job("hook-1", webhook={"url": "https://hooks.example/h"})), queue=LANE)
    seq = store.finish("hook-1", token="", outcome="succeeded", data={"outputs": []}).webhook_due
    store.webhook("hook-1", WebhookOp.RETRY, seq, "https://hooks.example/h answered HTTP 503")
    store.webhook("hook-1", WebhookOp.FAILED, seq, "https://hooks.example/h answered HTTP 503")
    bury_webhook(dlq, "hook-1", seq)
    # When the dead letters are listed / Then the delivery is there, its line led by the jobId
    (letter,) = dlq.list()
    assert (letter.job_id, letter.kind, letter.queue, letter.attempts) == (
        "hook-1",
        "webhook",
        WEBHOOK_QUEUE,
        2,
    )
    assert letter.line().startswith("hook-1\twebhook_failed\tattempts=2\tfailed=")
    assert letter.line().endswith("https://hooks.example/h answered HTTP 503")
    assert letter.to_dict()["kind"] == "webhook"
    # When it is requeued / Then a fresh delivery waits, and the job is left as it was
    assert dlq.requeue("hook-1") == ["hook-1"]
    client = dlq.broker.client
    (redis_id,) = client.lrange(f"{dlq.broker.namespace}:{WEBHOOK_QUEUE}", 0, -1)
    fresh = dramatiq.Message.decode(
        client.hget(f"{dlq.broker.namespace}:{WEBHOOK_QUEUE}.msgs", redis_id)
    )
    assert (fresh.actor_name, list(fresh.args)) == (WEBHOOK_ACTOR_NAME, ["hook-1", seq])
    assert "retries" not in fresh.options
    assert store.get("hook-1")["state"] == "succeeded"
    assert dlq.list() == []
    # And a purge takes webhook dead letters too
    bury_webhook(dlq, "hook-1", seq)
    assert dlq.purge() == 1
    assert dlq.list() == []

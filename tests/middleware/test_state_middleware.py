"""PayloadValidation, Idempotency and JobStatus on a StubBroker (see conftest.py)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from conftest import Stack, payload

from dramatiq_preview.delivery import current_job
from dramatiq_preview.errors import InvalidPayload, JobConflict, SourceNotFound, StorageError
from dramatiq_preview.names import QUEUES, RECORDED, WEBHOOK_QUEUE
from dramatiq_preview.notify import is_webhook_message, webhook_of


def test_an_invalid_payload_is_refused_in_the_sender_and_never_enqueued(stack: Stack) -> None:
    # Given a payload with a string where an integer belongs
    bad = payload("v1")
    bad["outputs"][0]["width"] = "8"
    # When it is sent, Then the sender gets the schema's complaint with its path
    with pytest.raises(InvalidPayload) as info:
        stack.actor.send(bad)
    assert [i.path for i in info.value.issues] == ["outputs/0/width"]
    # And nothing reached the broker or the store
    assert all(stack.broker.queues[q].qsize() == 0 for q in QUEUES.values())
    assert stack.store.get("v1") is None


def test_a_sent_job_is_recorded_queued_and_the_same_id_with_another_payload_conflicts(
    stack: Stack, job_id: str
) -> None:
    # Given a job sent once
    stack.actor.send(payload(job_id))
    assert stack.store.get(job_id)["state"] == "queued"
    # When the same id is sent with another payload, Then the sender gets a conflict
    with pytest.raises(JobConflict):
        stack.actor.send(payload(job_id, page=2))
    # And the same payload again is accepted as a duplicate (one record, two messages)
    stack.actor.send(payload(job_id))
    assert stack.broker.queues[QUEUES["normal"]].qsize() == 2


def test_the_actors_return_value_is_recorded_as_the_result(
    stack: Stack, job_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an actor that returns a result
    outputs = [{"path": f"{job_id}/0.png", "width": 8, "height": 8, "format": "png", "bytes": 9}]
    stack.body[0] = lambda p: {"outputs": outputs}
    stack.actor.send(payload(job_id))
    # When a worker processes it
    with caplog.at_level(logging.WARNING, logger="dramatiq"):
        stack.run()
    # Then the status says succeeded with that result, after one attempt
    status = stack.store.get(job_id)
    assert (status["state"], status["attempts"], status["progress"]) == ("succeeded", 1, 100)
    assert status["result"] == {"outputs": outputs}
    # And Dramatiq's "value discarded" warning is not logged: the value was recorded
    assert not [r for r in caplog.records if "returned a value" in r.getMessage()]


def test_a_copy_of_a_finished_job_is_skipped_without_running_the_actor(
    stack: Stack, job_id: str
) -> None:
    # Given the same job sent twice (two messages, one record)
    stack.body[0] = lambda p: {"outputs": []}
    stack.actor.send(payload(job_id))
    stack.actor.send(payload(job_id))
    # When both are processed
    stack.run()
    # Then the actor ran once and the job succeeded once
    assert len(stack.calls) == 1
    assert stack.store.get(job_id)["attempts"] == 1


def test_a_transient_error_is_recorded_as_retrying_and_the_retry_succeeds(
    stack: Stack, job_id: str
) -> None:
    # Given an actor that fails transiently once, then succeeds
    seen: list[dict[str, Any] | None] = []

    def body(p: dict[str, Any]) -> Any:
        if not seen:
            seen.append(stack.store.get(job_id))
            raise StorageError("disk hiccup")
        seen.append(stack.store.get(job_id))
        return {"outputs": []}

    stack.body[0] = body
    stack.actor.send(payload(job_id))
    # When the worker processes it and its retry
    stack.run()
    # Then the second attempt saw the first one's error, and the job succeeded on attempt 2
    second = seen[1]
    assert second is not None and second["error"]["type"] == "storage_error"
    status = stack.store.get(job_id)
    assert (status["state"], status["attempts"], status["error"]) == ("succeeded", 2, None)


def test_a_permanent_error_fails_at_once_and_dead_letters_the_message(
    stack: Stack, job_id: str
) -> None:
    # Given an actor that raises a permanent error
    def body(p: dict[str, Any]) -> Any:
        raise SourceNotFound("a.png does not exist")

    stack.body[0] = body
    stack.actor.send(payload(job_id))
    # When it is processed
    stack.run()
    # Then the job failed after one attempt, with the error's type and no retry
    status = stack.store.get(job_id)
    assert (status["state"], status["attempts"]) == ("failed", 1)
    assert status["error"] == {
        "type": "source_not_found",
        "message": "a.png does not exist",
        "retryable": False,
    }
    assert len(stack.calls) == 1
    # And the message is in the dead letters
    assert len(stack.broker.dead_letters) == 1


def test_a_cancellation_seen_at_a_checkpoint_ends_the_job_cancelled(
    stack: Stack, job_id: str
) -> None:
    # Given an actor that is cancelled while it runs and then reaches a checkpoint
    def body(p: dict[str, Any]) -> Any:
        ctx = current_job()
        assert ctx is not None and ctx.job_id == job_id
        stack.store.cancel(job_id)
        try:
            ctx.checkpoint(50)
        except Exception:
            return None
        return {"outputs": []}

    stack.body[0] = body
    stack.actor.send(payload(job_id))
    # When it is processed
    stack.run()
    # Then the job is cancelled and no result is recorded
    status = stack.store.get(job_id)
    assert (status["state"], status["result"]) == ("cancelled", None)


def test_a_message_refused_on_receipt_is_recorded_as_failed(stack: Stack, job_id: str) -> None:
    # Given a message from a producer without our middleware, whose payload is invalid
    message = stack.actor.message(payload(job_id, page=-1))
    stack.broker.queues[message.queue_name].put(message.encode())
    # When a worker receives it
    stack.run()
    # Then the actor never runs, and the job can be looked up as failed with the reason
    assert stack.calls == []
    status = stack.store.get(job_id)
    assert status["state"] == "failed"
    assert status["error"]["type"] == "invalid_payload"


def test_an_actor_that_returns_no_result_fails_the_job_instead_of_succeeding(
    stack: Stack, job_id: str
) -> None:
    # Given an actor that ends without a result and without a cancellation or lost lease
    stack.body[0] = lambda p: None
    stack.actor.send(payload(job_id))
    # When it is processed
    stack.run()
    # Then the job is not reported as a success with no outputs
    status = stack.store.get(job_id)
    assert status["state"] == "failed"
    assert status["error"]["type"] == "internal_error"


def test_a_job_cancelled_while_its_render_fails_transiently_queues_its_webhook_at_once(
    stack: Stack, job_id: str
) -> None:
    # Given a job with a webhook whose render is cancelled, then fails transiently
    stack.broker.declare_queue(WEBHOOK_QUEUE)
    stack.store.create(
        job_id,
        fp="x",
        priority="normal",
        queue=QUEUES["normal"],
        metadata={},
        webhook_url="https://hooks.example/x",
    )

    def body(p: dict[str, Any]) -> Any:
        stack.store.cancel(job_id)
        raise StorageError("disk hiccup")

    stack.body[0] = body
    stack.actor.send_with_options(args=(payload(job_id),), **{RECORDED: True})
    # When it is processed
    stack.run()
    # Then it ended cancelled (not retrying), rendered once, and its delivery is on the
    # broker now, not when the retry's message comes round
    status = stack.store.get(job_id)
    assert status is not None and status["state"] == "cancelled"
    assert len(stack.calls) == 1
    # (this stub worker consumes it without the actor: it lands in the dead letters)
    queued = [webhook_of(m) for m in stack.broker.dead_letters if is_webhook_message(m)]
    assert queued == [(job_id, stack.store.get_with_seq(job_id)[0])]  # type: ignore[index]
    assert stack.store.client.hget(stack.store.job_key(job_id), "webhook_due") is None


def test_a_broker_that_refuses_a_delivery_for_good_fails_the_webhook_not_the_ack(
    stack: Stack, job_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a job with a webhook, on a broker without the webhook queue (a refusal that
    # trying again cannot cure, unlike a lost connection)
    stack.store.create(
        job_id,
        fp="x",
        priority="normal",
        queue=QUEUES["normal"],
        metadata={},
        webhook_url="https://hooks.example/x",
    )
    stack.body[0] = lambda p: {"outputs": []}
    stack.actor.send_with_options(args=(payload(job_id),), **{RECORDED: True})
    # When it succeeds
    with caplog.at_level(logging.ERROR, logger="dramatiq_preview.notify"):
        stack.run()
    # Then the render message was acknowledged (the worker did not hang on it), the job
    # succeeded, and its webhook says why it will not be delivered
    status = stack.store.get(job_id)
    assert status is not None and status["state"] == "succeeded"
    assert status["webhook"]["state"] == "failed"
    assert "could not be queued: QueueNotFound" in status["webhook"]["lastError"]
    assert "refused by the broker" in caplog.text

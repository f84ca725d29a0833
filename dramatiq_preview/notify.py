"""Queueing a job's webhook delivery, without ever losing it.

A final state of a job with a webhook arms its delivery in the very script that writes the
state (``webhook_seq``, ``webhook_due``: ``lua/_shared.lua``).  Whoever learns that an
event is due puts a delivery message for the ``deliver_preview_webhook`` actor on the
broker (:func:`enqueue_webhook`, by actor name: this module sits below the actor), then
clears ``webhook_due`` (:meth:`~dramatiq_preview.state.JobStore.webhook` ``QUEUED``):

* the worker that wrote the final state (:class:`~dramatiq_preview.middleware.JobStatus`);
* a delivery of the job whose claim finds it final with an event still due
  (:class:`~dramatiq_preview.middleware.Idempotency`): the worker that wrote the state died
  before queueing, so its render message was not acknowledged and came back;
* the client that cancelled a waiting job (when that fails, the job's own render message,
  still on the broker, is claimed later and queues it).

In a worker the delivery is queued from the render message's ``before_ack`` or
``before_nack`` hook (:func:`owe`, then :func:`settle`), the last moment before Dramatiq
acknowledges it.  If the broker refuses, :class:`~dramatiq_preview.errors.WebhookNotQueued`
makes Dramatiq's worker retry the acknowledgement every 5 s, running the hook (and the
enqueue) again, as it does when an acknowledgement itself fails: the render message is never
acknowledged while its delivery is not on the broker, so a worker killed meanwhile leaves
it to be redelivered, and its claim queues the delivery.

A delivery may be queued twice (the ``QUEUED`` write failed, or two processes saw the event
due at once); the actor drops a message whose event was delivered already, and the
``webhook-id`` of both is the same, so a receiver that de-duplicates by it sees one event.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
from dramatiq.errors import BrokerConnectionError

from .errors import StateStoreUnavailable, WebhookNotQueued
from .names import WEBHOOK_ACTOR_NAME, broker_queues
from .state import JobStore, WebhookOp

logger = logging.getLogger("dramatiq_preview.notify")


@dataclass(frozen=True)
class Attempt:
    """What one run of the delivery actor did (its result, which the status middleware
    records).  A failed attempt is an exception instead
    (:class:`~dramatiq_preview.errors.WebhookFailed`, ``WebhookRefused``).

    ``delivered`` is False when the message was dropped without a POST (``reason`` says
    why: the job ended again since, the event was delivered already, the record expired);
    ``seconds`` is how long the POST took, ``status`` the receiver's HTTP status.
    """

    delivered: bool
    seconds: float | None = None
    status: int | None = None
    reason: str = ""


def webhook_message(job_id: str, seq: int, queue: str) -> dramatiq.Message[Any]:
    """The delivery message of event ``seq`` of job ``job_id``, on ``queue`` (the webhook
    queue of the deployment: :func:`~.names.broker_queues`)."""
    return dramatiq.Message(
        queue_name=queue,
        actor_name=WEBHOOK_ACTOR_NAME,
        args=(job_id, int(seq)),
        kwargs={},
        options={},
    )


def is_webhook_message(message: Any) -> bool:
    """Whether ``message`` is a delivery message of ``deliver_preview_webhook``."""
    return bool(getattr(message, "actor_name", None) == WEBHOOK_ACTOR_NAME)


def webhook_of(message: Any) -> tuple[str, int] | None:
    """``(job_id, seq)`` of a delivery message, or None when it is not one we wrote."""
    args: tuple[Any, ...] = tuple(getattr(message, "args", ()))
    if (
        is_webhook_message(message)
        and len(args) == 2
        and isinstance(args[0], str)
        and isinstance(args[1], int)
        and not isinstance(args[1], bool)
    ):
        return args[0], args[1]
    return None


def enqueue_webhook(broker: dramatiq.Broker, store: JobStore, job_id: str, seq: int) -> None:
    """Put the delivery of event ``seq`` of ``job_id`` on ``broker``, then mark it queued.

    A store that fails after the enqueue leaves ``webhook_due`` set: the event may be
    queued again later, which the actor and the ``webhook-id`` make harmless.

    An error that is not the broker's connection (a host middleware refusing the message,
    an ACL refusing the queue's keys, an undeclared queue) will not heal by trying again:
    it is logged, the webhook is recorded ``failed`` with the reason, and nothing is raised,
    so the render message is acknowledged rather than held for ever.

    Raises:
      WebhookNotQueued: the broker could not be reached (``webhook_due`` stays set).
    """
    try:
        queue = broker_queues(broker, store.namespace).webhooks
        broker.enqueue(webhook_message(job_id, seq, queue))
    except _UNREACHABLE as exc:
        logger.warning("the webhook of job %s could not be queued: %r", job_id, exc)
        raise WebhookNotQueued(
            f"the webhook delivery of job {job_id!r} could not be queued: {type(exc).__name__}"
        ) from exc
    except Exception as exc:
        logger.error("the webhook of job %s was refused by the broker: %r", job_id, exc)
        try:
            store.webhook(
                job_id,
                WebhookOp.FAILED,
                seq,
                f"the delivery could not be queued: {type(exc).__name__}",
            )
        except StateStoreUnavailable:
            logger.warning("could not record the failed webhook of job %s", job_id)
        return
    try:
        store.webhook(job_id, WebhookOp.QUEUED, seq)
    except StateStoreUnavailable:
        logger.warning("the webhook of job %s is queued but still marked due", job_id)


#: What a broker that cannot be reached raises from ``enqueue``: Dramatiq's own connection
#: errors (RabbitMQ's, after its retries), redis-py's (the Redis broker lets them through)
#: and socket errors.  Anything else is a refusal.
_UNREACHABLE = (BrokerConnectionError, redis.ConnectionError, redis.TimeoutError, OSError)


class _Owed(threading.local):
    #: ``(message_id, job_id, seq)`` of the delivery the message this thread processes owes.
    value: tuple[str, str, int] | None = None


_owed = _Owed()


def owe(message: Any, job_id: str, seq: int) -> None:
    """Note that ``message`` (being processed on this thread) may not be acknowledged
    before the delivery of event ``seq`` of ``job_id`` is queued (:func:`settle`)."""
    _owed.value = (str(message.message_id), job_id, int(seq))


def settle(broker: dramatiq.Broker, store: JobStore, message: Any) -> None:
    """Queue the delivery ``message`` owes, if any (from ``before_ack``/``before_nack``).

    Raises:
      WebhookNotQueued: the broker refused it; it stays owed, and Dramatiq calls the hook
        again before it acknowledges the message.
    """
    owed = _owed.value
    if owed is None or owed[0] != str(message.message_id):
        return
    _message_id, job_id, seq = owed
    enqueue_webhook(broker, store, job_id, seq)
    _owed.value = None


__all__ = [
    "Attempt",
    "enqueue_webhook",
    "is_webhook_message",
    "owe",
    "settle",
    "webhook_message",
    "webhook_of",
]

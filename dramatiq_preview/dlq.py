"""The dead-letter queue: list, requeue and purge the messages of failed jobs and failed
webhook deliveries.

Failed jobs sit in Dramatiq's own dead-letter queues (``preview-*.XQ``), webhook deliveries
that failed for good in ``preview-webhooks.XQ``.  A backend per broker kind reads them:
Redis keeps dead messages in a sorted set scored by failure time, RabbitMQ in a durable
queue.  Listing joins each message with its job record for the error and attempt count (of
the render, or of the webhook); replaying a render resets the record to ``queued`` (same
jobId, poison-pill counter cleared) before the message is enqueued again; replaying a
webhook delivery enqueues it again with a fresh set of attempts (the job is left as it is,
and the actor drops it if the job has ended again since).
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.errors import BrokerConnectionError
from dramatiq.message import Message

from .errors import BrokerUnavailable, InvalidPayload, JobConflict, JobNotFound, PreviewError
from .messages import job_id_of
from .names import RECORDED, broker_queues
from .notify import is_webhook_message, webhook_of
from .state import JobStore, RequeueOutcome, iso

logger = logging.getLogger("dramatiq_preview.dlq")

#: Options that describe a past delivery and must not follow a replayed message.
_DELIVERY_OPTIONS = {"eta", "redis_message_id", "retries", "traceback", "requeue_timestamp"}


@dataclass(frozen=True)
class DeadLetter:
    """One dead message: its job and why it died.

    ``kind`` is ``render`` (a job that failed: ``error`` and ``attempts`` are the job's) or
    ``webhook`` (a webhook delivery that failed for good: ``error`` is
    ``{"type": "webhook_failed", "message": <the last attempt's error>}`` and ``attempts``
    counts the delivery's attempts).
    """

    job_id: str
    queue: str
    message_id: str
    failed_at: str | None
    error: dict[str, Any] | None
    attempts: int
    kind: str = "render"

    def to_dict(self) -> dict[str, Any]:
        return {
            "jobId": self.job_id,
            "kind": self.kind,
            "queue": self.queue,
            "messageId": self.message_id,
            "failedAt": self.failed_at,
            "error": self.error,
            "attempts": self.attempts,
        }

    def line(self) -> str:
        """``jobId  error-type  attempts=N  failed=TIME  message`` for the CLI (a webhook
        delivery's error type is ``webhook_failed``)."""
        err = self.error or {}
        return "\t".join(
            [
                self.job_id,
                str(err.get("type", "unknown")),
                f"attempts={self.attempts}",
                f"failed={self.failed_at or '-'}",
                str(err.get("message", "")),
            ]
        )


@dataclass(frozen=True)
class Listing:
    """A listing of the dead letters: ``letters`` (oldest failure first) of ``total``."""

    letters: builtins.list[DeadLetter]
    total: int


class DeadLetters(abc.ABC):
    """The dead-letter queues of our priority lanes on one broker."""

    def __init__(self, broker: dramatiq.Broker, store: JobStore) -> None:
        # Broker-specific attributes (client, namespace, parameters) are read by subclasses.
        self.broker: Any = broker
        self.store = store
        #: Our queues on this broker, whose ``.XQ`` hold our dead letters.
        self.queues = broker_queues(broker, store.namespace).all

    @abc.abstractmethod
    def _entries(
        self, newest: int | None = None
    ) -> Iterator[tuple[str, Message[Any], float | None]]:
        """Yield ``(queue, message, failed_at_ms)`` for every dead message.

        ``newest``: a backend that knows failure times without reading the messages may
        yield only the ``newest`` last failures of each lane (the others are never listed).
        """

    def _total(self) -> int | None:
        """How many dead messages there are, when the backend can tell without reading
        them all (None: count what :meth:`_entries` yields)."""
        return None

    @abc.abstractmethod
    def _remove(self, queue: str, message: Message[Any]) -> None:
        """Delete one dead message."""

    @abc.abstractmethod
    def _purge(self) -> int:
        """Delete every dead message of our lanes; returns how many there were."""

    def _broker_errors(self) -> tuple[type[BaseException], ...]:
        """The exceptions that mean the broker did not answer (not a bug of ours)."""
        return (redis.RedisError, BrokerConnectionError, OSError)

    @contextlib.contextmanager
    def _answering(self) -> Iterator[None]:
        """Turn the broker's connection errors into :class:`BrokerUnavailable` (a 503 for
        the HTTP API, a one-line message for the CLI)."""
        try:
            yield
        except PreviewError:
            raise
        except self._broker_errors() as exc:
            raise BrokerUnavailable(
                f"the broker is unavailable for the dead-letter queues: {type(exc).__name__}"
            ) from exc

    def purge(self) -> int:
        """Delete every dead message of our lanes; returns how many there were.

        Raises:
          BrokerUnavailable: the broker did not answer.
        """
        with self._answering():
            return self._purge()

    @abc.abstractmethod
    def count(self, queue: str) -> int:
        """Number of dead messages of one lane."""

    def list(self) -> builtins.list[DeadLetter]:
        """Every dead job, oldest failure first.

        Raises:
          BrokerUnavailable, StateStoreUnavailable: the broker or Redis did not answer.
        """
        return self.listing().letters

    def listing(self, limit: int | None = None) -> Listing:
        """The dead letters (only the ``limit`` newest failures, when given), oldest failure
        first, and how many there are in all.

        The job records of the listed letters are read in one round trip to Redis
        (:meth:`JobStore.get_many`), whatever their number.  On Redis only the newest
        ``limit`` messages of each lane are read; RabbitMQ has no index by failure time, so
        every message is read there, and the cut is made after.

        Raises:
          BrokerUnavailable, StateStoreUnavailable: the broker or Redis did not answer.
        """
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1")
        with self._answering():
            entries = builtins.list(self._entries(limit))
            total = self._total()
        if total is None:
            total = len(entries)
        if limit is not None and all(ms is not None for _, _, ms in entries):
            # Known failure times: only the newest are described (and their records read).
            entries = sorted(entries, key=lambda e: e[2] or 0.0)[-limit:]
        statuses = self.store.get_many([_job_id(message) for _, message, _ in entries])
        letters = sorted(
            (
                self._describe(queue, message, failed_ms, status)
                for (queue, message, failed_ms), status in zip(entries, statuses, strict=True)
            ),
            key=lambda d: d.failed_at or "",
        )
        if limit is not None:
            letters = letters[-limit:]
        return Listing(letters, max(total, len(letters)))

    def requeue(
        self,
        job_id: str | None = None,
        *,
        on_skip: Callable[[str, PreviewError], None] | None = None,
    ) -> builtins.list[str]:
        """Replay the dead messages of ``job_id`` (or all when None).

        A dead letter whose record expired is recorded afresh, its payload checked again;
        when every dead letter is replayed, one that is refused (an invalid payload, or its
        jobId reused meanwhile with another payload) stays dead and is passed to
        ``on_skip(job_id, error)``, and the others are replayed.

        Returns the replayed jobIds.

        Raises:
          JobNotFound: ``job_id`` has no dead message.
          InvalidPayload, JobConflict: ``job_id``'s dead letter cannot be replayed.
          BrokerUnavailable, StateStoreUnavailable: the broker or Redis did not answer.
        """
        with self._answering():
            return self._requeue(job_id, on_skip)

    def _requeue(
        self, job_id: str | None, on_skip: Callable[[str, PreviewError], None] | None
    ) -> builtins.list[str]:
        replayed = []
        found = False
        for queue, message, _ in list(self._entries()):
            this_id = _job_id(message)
            if job_id is not None and this_id != job_id:
                continue
            found = True
            try:
                self._replay(queue, message, this_id)
            except (InvalidPayload, JobConflict) as exc:
                if job_id is not None:
                    raise
                logger.warning("dead letter of job %s not requeued: %s", this_id, exc.message)
                if on_skip is not None:
                    on_skip(this_id, exc)
                continue
            replayed.append(this_id)
        if job_id is not None and not found:
            raise JobNotFound(job_id)
        return replayed

    def _replay(self, queue: str, message: Message[Any], job_id: str) -> None:
        options = {k: v for k, v in message.options.items() if k not in _DELIVERY_OPTIONS}
        if is_webhook_message(message):
            # A fresh set of attempts; the job's state is not the delivery's to change.
            self.broker.enqueue(dataclasses.replace(message, queue_name=queue, options=options))
            self._remove(queue, message)
            return
        outcome = self.store.requeue(job_id, queue=queue)
        # A record that expired while the message sat in the DLQ is created afresh by the
        # broker's Idempotency middleware (and the payload checked again) on enqueue.
        options.pop(RECORDED, None)
        if outcome is not RequeueOutcome.MISSING:
            options[RECORDED] = True
        fresh = dataclasses.replace(message, queue_name=queue, options=options)
        # Enqueue before removing: a crash in between leaves a duplicate, which the
        # idempotency middleware skips, rather than losing the job.
        self.broker.enqueue(fresh)
        self._remove(queue, message)

    def _describe(
        self,
        queue: str,
        message: Message[Any],
        failed_ms: float | None,
        status: dict[str, Any] | None,
    ) -> DeadLetter:
        """The dead letter of ``message``, with its job's ``status`` (None: no record)."""
        job_id = _job_id(message)
        if is_webhook_message(message):
            return self._describe_webhook(queue, message, failed_ms, job_id, status)
        error = status["error"] if status else None
        if error is None and message.options.get("retries"):
            error = {"type": "unknown", "message": "record expired", "retryable": True}
        return DeadLetter(
            job_id=job_id,
            queue=queue,
            message_id=message.message_id,
            failed_at=iso(int(failed_ms)) if failed_ms else (status or {}).get("finishedAt"),
            error=error,
            attempts=int(status["attempts"]) if status else int(message.options.get("retries", 0)),
        )

    @staticmethod
    def _describe_webhook(
        queue: str,
        message: Message[Any],
        failed_ms: float | None,
        job_id: str,
        status: dict[str, Any] | None,
    ) -> DeadLetter:
        webhook = (status or {}).get("webhook") or {}
        last = webhook.get("lastError") or ("record expired" if status is None else "unknown")
        return DeadLetter(
            job_id=job_id,
            queue=queue,
            message_id=message.message_id,
            failed_at=iso(int(failed_ms)) if failed_ms else None,
            error={"type": "webhook_failed", "message": last, "retryable": True},
            attempts=int(webhook.get("attempts") or message.options.get("retries", 0)),
            kind="webhook",
        )


def _job_id(message: Message[Any]) -> str:
    """The jobId of a dead render message or webhook delivery."""
    found = webhook_of(message)
    return found[0] if found is not None else job_id_of(message)


class RedisDeadLetters(DeadLetters):
    """Dead letters of a ``RedisBroker``: ``{ns}:{queue}.XQ`` (zset) + ``.XQ.msgs`` (hash)."""

    def _keys(self, queue: str) -> tuple[str, str]:
        base = f"{self.broker.namespace}:{queue}.XQ"
        return base, base + ".msgs"

    def _entries(
        self, newest: int | None = None
    ) -> Iterator[tuple[str, Message[Any], float | None]]:
        client = self.broker.client
        for queue in self.queues:
            zkey, hkey = self._keys(queue)
            # Scored by failure time: the newest are the last members.
            start = 0 if newest is None else -newest
            ids = client.zrange(zkey, start, -1, withscores=True)
            if not ids:
                continue
            blobs = client.hmget(hkey, [i for i, _ in ids])
            for (redis_id, score), blob in zip(ids, blobs, strict=True):
                if blob is None:
                    continue
                message = Message.decode(blob)
                message.options.setdefault("redis_message_id", _text(redis_id))
                yield queue, message, float(score)

    def _remove(self, queue: str, message: Message[Any]) -> None:
        zkey, hkey = self._keys(queue)
        redis_id = message.options.get("redis_message_id")
        pipe = self.broker.client.pipeline(transaction=True)
        pipe.zrem(zkey, redis_id)
        pipe.hdel(hkey, redis_id)
        pipe.execute()

    def _purge(self) -> int:
        total = 0
        for queue in self.queues:
            zkey, hkey = self._keys(queue)
            total += int(self.broker.client.zcard(zkey))
            self.broker.client.delete(zkey, hkey)
        return total

    def count(self, queue: str) -> int:
        return int(self.broker.client.zcard(self._keys(queue)[0]))

    def _total(self) -> int | None:
        pipe = self.broker.client.pipeline(transaction=False)
        for queue in self.queues:
            pipe.zcard(self._keys(queue)[0])
        return sum(int(n) for n in pipe.execute())


class RabbitmqDeadLetters(DeadLetters):
    """Dead letters of a ``RabbitmqBroker``: the durable ``{queue}.XQ`` queues.

    Reading a queue takes every message without acknowledging it and puts them all back at
    the end, so listing changes nothing.
    """

    def _channel(self) -> Any:
        import pika  # optional: the rabbitmq extra (this class is only used with RabbitMQ)

        connection = pika.BlockingConnection(self.broker.parameters)
        return connection, connection.channel()

    def _entries(
        self, newest: int | None = None
    ) -> Iterator[tuple[str, Message[Any], float | None]]:
        # No index by failure time: every message is read, whatever ``newest`` says.
        connection, channel = self._channel()
        try:
            for queue in self.queues:
                self.broker.declare_queue(queue, ensure=True)
                tags = []
                while True:
                    method, props, body = channel.basic_get(queue + ".XQ", auto_ack=False)
                    if method is None:
                        break
                    tags.append(method.delivery_tag)
                    message = Message.decode(body)
                    stamp = props.timestamp * 1000 if props and props.timestamp else None
                    yield queue, message, stamp
                for tag in tags:
                    channel.basic_nack(tag, requeue=True)
        finally:
            connection.close()

    def _remove(self, queue: str, message: Message[Any]) -> None:
        connection, channel = self._channel()
        try:
            tags = []
            while True:
                method, _props, body = channel.basic_get(queue + ".XQ", auto_ack=False)
                if method is None:
                    break
                if Message.decode(body).message_id == message.message_id:
                    channel.basic_ack(method.delivery_tag)
                else:
                    tags.append(method.delivery_tag)
            for tag in tags:
                channel.basic_nack(tag, requeue=True)
        finally:
            connection.close()

    def _broker_errors(self) -> tuple[type[BaseException], ...]:
        import pika.exceptions  # optional: the rabbitmq extra (this class is only used so)

        return (*super()._broker_errors(), pika.exceptions.AMQPError)

    def _purge(self) -> int:
        connection, channel = self._channel()
        total = 0
        try:
            for queue in self.queues:
                self.broker.declare_queue(queue, ensure=True)
                total += int(channel.queue_purge(queue + ".XQ").method.message_count)
        finally:
            connection.close()
        return total

    def count(self, queue: str) -> int:
        connection, channel = self._channel()
        try:
            self.broker.declare_queue(queue, ensure=True)
            frame = channel.queue_declare(queue + ".XQ", passive=True)
            return int(frame.method.message_count)
        finally:
            connection.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def dead_letters(broker: dramatiq.Broker, store: JobStore) -> DeadLetters:
    """The dead-letter backend for ``broker``.

    Raises:
      TypeError: the broker is neither a RedisBroker nor a RabbitmqBroker.
    """
    if isinstance(broker, RedisBroker):
        return RedisDeadLetters(broker, store)
    try:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
    except ImportError:  # optional: pika comes with the rabbitmq extra
        RabbitmqBroker = None  # type: ignore[misc,assignment]
    if RabbitmqBroker is not None and isinstance(broker, RabbitmqBroker):
        return RabbitmqDeadLetters(broker, store)
    raise TypeError(f"no dead-letter support for {type(broker).__name__}")


__all__ = ["DeadLetter", "DeadLetters", "Listing", "dead_letters"]

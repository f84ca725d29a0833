"""Orphans: jobs left ``running`` or ``retrying`` with no delivery to end them, put back.

A job's message is normally the broker's to give back: RabbitMQ returns a dead consumer's
messages at once, the Redis broker a dead worker's ones (:class:`~.recovery.Recovery`), and
the claim of that copy takes over the dead lease.  Some jobs have no such copy any more: a
worker that could not record how a render ended within ``PREVIEW_STORE_RETRY_SECONDS``
gave the delivery up and its message was acknowledged; a retry that the broker refused
while it was down was never enqueued.  Their record says ``running`` or ``retrying`` for
ever.

So each claim keeps its message in the job's record and indexes the job by when its lease
ends (or its retry is due) in ``{ns}:inflight``; the end of the delivery drops both
(``lua/claim.lua``, ``lua/finish.lua``).  Each worker process looks, about every
:func:`sweep_interval`, for jobs whose lease ended (or retry was due) more than
:func:`overdue_margin` ago with no delivery claiming them since, and puts their message back
on the broker (``lua/sweep.lua``, atomic, so two workers never both put one back): the claim
of that copy counts the dead delivery as usual.  The margin leaves the broker's own
redelivery time to come first, so a copy put back here is rare; a copy too many is harmless
(its claim finds the job busy or done).  A job with no message kept (a record older than
this feature), or put back :data:`MAX_SWEEPS` times with no delivery claiming it, is failed
as ``worker_lost`` instead.  Each put-back waits twice as long as the one before (2, 4, 8
margins: a retry still queued behind a long backlog gets about 15 margins in all), and a
job another sweeper has just put back is left alone (its index score says when).

The sweep needs Redis to have answered for a while: right after an outage, a worker still
retrying the write of a render's end gets that write in first (its pauses are at most
:data:`~.patience.MAX_PAUSE`), so a round that follows a failed one only checks Redis.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import dramatiq
import redis

from ..config import Settings, get_settings
from ..errors import StateStoreUnavailable, WebhookNotQueued
from ..events import emit
from ..notify import enqueue_webhook
from ..state import JobStore, SweepVerdict, get_store
from .periodic import PeriodicThread

logger = logging.getLogger("dramatiq_preview.orphans")

#: A job put back this many times with no delivery claiming it is failed as worker_lost.
MAX_SWEEPS = 3
#: Bounds of the time between two sweeps, in seconds.
MIN_INTERVAL = 1.0
MAX_INTERVAL = 30.0


def overdue_margin(settings: Settings) -> int:
    """How long (ms) after a lease ends, or a retry is due, a job with no delivery claiming
    it is taken for an orphan: the Redis broker gives a dead worker's messages back within
    about 1.5 heartbeat timeouts, and their claim comes about a second after the lease;
    5 s more, and 10 s at least."""
    return max(10_000, settings.broker_heartbeat_timeout_ms * 3 // 2 + 5000)


def sweep_interval(settings: Settings) -> float:
    """Seconds between two sweeps: a quarter of :func:`overdue_margin`, within
    :data:`MIN_INTERVAL` and :data:`MAX_INTERVAL`."""
    return min(MAX_INTERVAL, max(MIN_INTERVAL, overdue_margin(settings) / 4000))


class Orphans(dramatiq.Middleware):
    """Put back the message of each job left ``running`` or ``retrying`` without a delivery
    (see the module docstring), from a daemon thread of each worker process.

    Parameters:
      settings: the settings to use; by default the process-wide ones, read at boot.
    """

    def __init__(self, *, settings: Settings | None = None) -> None:
        self._settings = settings
        self._sweeper: OrphanSweep | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        settings = self._settings or get_settings()
        self._sweeper = OrphanSweep(broker, get_store(settings), settings).start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None


class OrphanSweep(PeriodicThread):
    """One worker process's sweep of overdue jobs (:meth:`run_once`, every
    :func:`sweep_interval`).

    Parameters:
      broker: where to put messages back (the worker's broker).
      store: the job store.
      settings: for the margin and the interval.
    """

    name = "preview-orphans"

    def __init__(self, broker: dramatiq.Broker, store: JobStore, settings: Settings) -> None:
        self.broker = broker
        self.store = store
        self.margin_ms = overdue_margin(settings)
        self.interval = sweep_interval(settings)
        #: Whether the last round reached Redis (a round after a failed one only checks).
        self._reached = False
        super().__init__()

    def first_delay(self) -> float:
        return self.interval

    def next_delay(self) -> float:
        return self.interval

    def tick(self) -> None:
        self.run_once()

    def run_once(self) -> dict[str, int]:
        """One round; returns how many jobs got each verdict (empty when Redis did not
        answer, or just came back)."""
        counts: dict[str, int] = {}
        try:
            overdue = self.store.overdue(self.margin_ms)
        except StateStoreUnavailable:
            self._reached = False
            return counts
        if not self._reached:
            # Redis is back (or this is the first round): writers that waited for it get
            # their turn before anything of theirs is taken for an orphan.
            self._reached = True
            return counts
        for job_id in overdue:
            try:
                verdict = self.sweep(job_id)
            except (StateStoreUnavailable, redis.RedisError, WebhookNotQueued) as exc:
                logger.warning("sweep of job %s failed: %s", job_id, type(exc).__name__)
                self._reached = False
                break
            except Exception as exc:
                # The broker refused the put-back (RabbitMQ down: ConnectionClosed, a pika
                # error).  The thread must outlive it, or this process never sweeps again.
                logger.warning("sweep of job %s failed: %s", job_id, type(exc).__name__)
                break
            counts[verdict.value] = counts.get(verdict.value, 0) + 1
        return counts

    def sweep(self, job_id: str) -> SweepVerdict:
        """Look at one overdue job; put its message back or fail it (see the module
        docstring).

        Raises:
          StateStoreUnavailable: Redis did not answer.
          redis.RedisError: the broker (Redis) refused the message put back.
          WebhookNotQueued: the webhook of a job failed here could not be queued (its
            ``webhook_due`` stays set; the next claim of a copy queues it).
        """
        swept = self.store.sweep(job_id, margin_ms=self.margin_ms, max_sweeps=MAX_SWEEPS)
        if swept.verdict is SweepVerdict.REDELIVER:
            message = dramatiq.Message.decode(swept.message.encode())
            # A fresh id: the original may still be somewhere in the broker.
            copy = dataclasses.replace(message, message_id=dramatiq.message.generate_unique_id())
            self.broker.enqueue(copy)
            logger.warning(
                "job %s had no delivery for %d ms past its due time; its message was put "
                "back on %s",
                job_id,
                self.margin_ms,
                copy.queue_name,
            )
        elif swept.verdict is SweepVerdict.LOST:
            logger.error("job %s had no delivery and nothing to put back: failed", job_id)
            emit("worker_lost", job_id=job_id, attempt=None)
            if swept.webhook_due:
                enqueue_webhook(self.broker, self.store, job_id, swept.webhook_due)
        return swept.verdict


__all__ = ["MAX_SWEEPS", "OrphanSweep", "Orphans", "overdue_margin", "sweep_interval"]

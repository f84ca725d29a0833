"""Idempotency: one record per jobId, at most one successful render, poison-pill limit."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from typing import Any

import dramatiq
from dramatiq.middleware import SkipMessage

from ..config import Settings, get_settings
from ..delivery import JobContext, set_current_job
from ..errors import JobConflict
from ..events import emit
from ..messages import is_preview_message, job_id_of, payload_of
from ..names import BUSY_TRIES, RECORDED, canonical_queue
from ..notify import owe
from ..state import Claim, ClaimVerdict, CreateOutcome, JobStore, get_store, now_ms
from ..validation import normalize
from .isolation import RenderGate
from .patience import TimeLimitPause, until_answered

logger = logging.getLogger("dramatiq_preview.idempotency")

#: How long past the time limit a render lease outlives its holder.  The render child is
#: killed at the time limit, so a live holder never needs longer; a dead one blocks the job
#: for at most this much beyond it.
LEASE_GRACE_MS = 5000
#: A suspect that cannot have its process to itself within a lease is put back this much
#: later (ms), to try again here or elsewhere.
ISOLATION_RETRY_MS = 1000


class Idempotency(dramatiq.Middleware):
    """Make ``jobId`` an idempotency key, end to end.

    * ``before_enqueue``: a message whose job is not yet recorded (``render_preview.send()``
      from anywhere) creates the record atomically; the same jobId with a different payload
      raises :class:`~dramatiq_preview.errors.JobConflict` in the sender.
    * ``before_process_message``: claims the job.  A job already succeeded, failed or
      cancelled is skipped; a job another worker is rendering (live lease) is put back with a
      delay instead of rendered concurrently; a job whose worker died
      ``PREVIEW_MAX_DELIVERIES`` times (once at least with its process to itself) is failed
      as ``worker_lost`` and dead-lettered; until then, a job whose delivery died runs
      alone in its worker process (:mod:`.isolation`), so that a poison pill takes no
      other job down with it.  While Redis does not answer, the claim is tried again for
      up to ``PREVIEW_STORE_RETRY_SECONDS`` (:mod:`.patience`).  A job found final with its
      webhook delivery still due (the worker that ended it died before queueing it) has the
      delivery queued before this copy is acknowledged (:mod:`dramatiq_preview.notify`).

    Parameters:
      settings: the settings to use; by default the process-wide ones, read at use time.
    """

    def __init__(self, *, settings: Settings | None = None) -> None:
        self._settings = settings
        self._gate = RenderGate()

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    def before_enqueue(self, broker: dramatiq.Broker, message: Any, delay: Any) -> None:
        if not is_preview_message(message):
            return
        if message.options.get(RECORDED) or message.options.get("retries"):
            return
        job_id = job_id_of(message)
        outcome = self._record(get_store(self.settings), message, job_id)
        if outcome is CreateOutcome.CONFLICT:
            raise JobConflict(f"jobId {job_id!r} was already used with a different payload")
        if outcome is CreateOutcome.DUPLICATE:
            emit("duplicate", job_id=job_id)
        # Messages are encoded after before_enqueue, so this flag travels with the message
        # (and spares the delay-queue hop a second round trip).
        message.options[RECORDED] = True

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if not is_preview_message(message):
            return
        settings = self.settings
        store = get_store(settings)
        job_id = job_id_of(message)
        token = uuid.uuid4().hex
        lease_ms = settings.time_limit_ms + LEASE_GRACE_MS
        # The time limit is the render's: waits for the gate or for Redis do not eat it
        # (nor are they interrupted by it); it starts again, whole, once the claim is made.
        limit = TimeLimitPause(broker)
        limit.pause()
        # A render holds the gate for at most its lease (time limit + grace); the write of
        # its end may take longer only while Redis is down, when claims wait anyway.
        wait = lease_ms / 1000
        company = self._gate.enter(job_id, token, timeout=wait)
        claim = self._claim(broker, message, store, job_id, token, company=company)
        if claim.verdict is ClaimVerdict.ISOLATE:
            if not self._gate.isolate(job_id, token, timeout=wait):
                self._put_back(broker, message, ISOLATION_RETRY_MS, 0)
                logger.info("job %s waits for a worker process to itself", job_id)
                raise SkipMessage(f"job {job_id} must render alone; put back")
            claim = self._claim(broker, message, store, job_id, token, isolated=True)

        if claim.verdict is ClaimVerdict.RUN:
            limit.restart(broker, message)
            set_current_job(
                JobContext(
                    job_id=job_id,
                    token=token,
                    store=store,
                    attempt=claim.attempts,
                    # The render child is stopped a little before Dramatiq's TimeLimit fires,
                    # so the limit ends in a clean RenderTimeout with the child killed.
                    deadline=time.monotonic() + settings.time_limit_ms / 1000 * 0.97,
                    progress_interval=settings.progress_interval_ms / 1000,
                    overruns=claim.overruns,
                )
            )
            emit("running", job_id=job_id, attempt=claim.attempts, queue=message.queue_name)
            return

        if claim.verdict is ClaimVerdict.BUSY:
            # Look again soon (the holder usually finishes first and this copy is then
            # skipped as done), backing off, and never later than just after the lease ends.
            tries = int(message.options.get(BUSY_TRIES, 0))
            delay = max(250, min(500 * 2**tries, claim.lease_until - now_ms() + 1000))
            self._put_back(broker, message, delay, tries + 1)
            logger.info("job %s is being rendered elsewhere; retrying in %d ms", job_id, delay)
            raise SkipMessage(f"job {job_id} is leased by another delivery")

        if claim.webhook_due:
            # Queued by JobStatus.before_ack/before_nack, before this copy is acknowledged.
            owe(message, job_id, claim.webhook_due)

        if claim.verdict is ClaimVerdict.LOST:
            message.fail()
            emit("worker_lost", job_id=job_id, attempt=claim.attempts)
            raise SkipMessage(f"job {job_id} failed as worker_lost")

        if claim.verdict in (ClaimVerdict.CANCELLED_NOW, ClaimVerdict.CANCELLED_WAITING):
            # Ended here, or cancelled while it waited (the web process or the CLI that
            # cancelled it counts nothing): count it once, now.
            emit("cancelled", job_id=job_id, attempt=claim.attempts)
        elif claim.verdict is ClaimVerdict.CANCELLED:
            # Counted already (by the delivery that saw it first); only a copy arriving.
            emit("skipped", job_id=job_id, state=claim.state)
        else:
            emit("duplicate_skipped", job_id=job_id, state=claim.state)
        raise SkipMessage(f"job {job_id} is already {claim.state}")

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        # After JobStatus recorded the end (after_* hooks run in reverse order).
        if is_preview_message(message):
            self._gate.leave()

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if is_preview_message(message):
            self._gate.leave()

    def _claim(
        self,
        broker: dramatiq.Broker,
        message: Any,
        store: JobStore,
        job_id: str,
        token: str,
        *,
        company: list[tuple[str, str]] | None = None,
        isolated: bool = False,
    ) -> Claim:
        """Claim the delivery (:meth:`JobStore.claim`), creating a missing record first,
        and waiting for Redis meanwhile (:func:`.patience.until_answered`)."""
        settings = self.settings
        lease_ms = settings.time_limit_ms + LEASE_GRACE_MS
        kept = self._copy(message, 0).encode().decode()

        def claim_once() -> Claim:
            return store.claim(
                job_id,
                token=token,
                lease_ms=lease_ms,
                max_deliveries=settings.max_deliveries,
                isolated=isolated,
                company=company or (),
                message=kept,
            )

        def attempt() -> Claim:
            claim = claim_once()
            if claim.verdict is ClaimVerdict.MISSING:
                # The record expired, or the message was enqueued by a broker without our
                # middleware: re-create it from the message, then claim as usual.
                self._record(store, message, job_id)
                claim = claim_once()
            return claim

        return until_answered(
            attempt, seconds=settings.store_retry_seconds, what=f"claim job {job_id}"
        )

    @staticmethod
    def _record(store: JobStore, message: Any, job_id: str) -> CreateOutcome:
        """Record the job of a (validated) message as ``queued``; returns the outcome."""
        normalized = normalize(dict(payload_of(message), jobId=job_id))
        outcome, _state = store.record(normalized, queue=canonical_queue(message.queue_name))
        return outcome

    @staticmethod
    def _copy(message: Any, tries: int) -> dramatiq.Message[Any]:
        """The message to enqueue again: on its lane (not a delay queue), recorded, without
        the options of its broker delivery."""
        options = {k: v for k, v in message.options.items() if k not in {"eta", "redis_message_id"}}
        options[RECORDED] = True
        options[BUSY_TRIES] = tries
        return dataclasses.replace(
            message._message, queue_name=canonical_queue(message.queue_name), options=options
        )

    @classmethod
    def _put_back(cls, broker: dramatiq.Broker, message: Any, delay: int, tries: int) -> None:
        broker.enqueue(cls._copy(message, tries), delay=delay)

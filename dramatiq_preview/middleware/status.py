"""JobStatus: records how each delivery of a job ended, and each attempt at its webhook."""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from typing import Any

import dramatiq
import redis
from dramatiq.middleware.time_limit import TimeLimitExceeded

from ..config import Settings, get_settings
from ..delivery import current_job, set_current_job
from ..errors import PreviewError, RenderOverrun, StateStoreUnavailable, WebhookRefused
from ..events import emit
from ..messages import is_preview_message, job_id_of, payload_of
from ..models import JobResult
from ..names import ACTOR_NAME, WEBHOOK_ACTOR_NAME, canonical_queue
from ..notify import Attempt, is_webhook_message, owe, settle, webhook_of
from ..state import Finished, FinishVerdict, WebhookOp, get_store, now_ms
from ..storage import remove_outputs
from .patience import TimeLimitPause, until_answered

logger = logging.getLogger("dramatiq_preview.status")


class _ResultIsRecorded(logging.Filter):
    """Drops the warning Dramatiq's worker logs when an actor returns a value and the broker
    has no ``Results`` middleware: the values of ``render_preview`` and
    ``deliver_preview_webhook`` are not discarded, this middleware records them."""

    _texts = tuple(
        f"Actor '{name}' returned a value that is not None"
        for name in (ACTOR_NAME, WEBHOOK_ACTOR_NAME)
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._texts)


_RESULT_FILTER = _ResultIsRecorded()


def error_dict(exception: BaseException, settings: Settings) -> dict[str, Any]:
    """The public ``error`` object for an exception (never a stack trace)."""
    if isinstance(exception, PreviewError):
        return exception.to_dict()
    if isinstance(exception, TimeLimitExceeded):
        return {
            "type": "time_limit",
            "message": f"the render exceeded the time limit of {settings.time_limit_ms} ms",
            "retryable": True,
        }
    if isinstance(exception, redis.RedisError):
        return StateStoreUnavailable(
            f"the state store (Redis) is unavailable: {type(exception).__name__}"
        ).to_dict()
    return {
        "type": "internal_error",
        "message": f"unexpected {type(exception).__name__}; see the worker log",
        "retryable": True,
    }


def webhook_error(exception: BaseException, settings: Settings) -> dict[str, Any]:
    """The ``error`` of a failed webhook attempt (its ``message`` becomes ``lastError``)."""
    if isinstance(exception, TimeLimitExceeded):
        return {
            "type": "time_limit",
            "message": "the webhook delivery exceeded its time limit "
            f"(3 x PREVIEW_WEBHOOK_TIMEOUT_MS of {settings.webhook_timeout_ms} ms)",
            "retryable": True,
        }
    if isinstance(exception, PreviewError):
        return exception.to_dict()
    return error_dict(exception, settings)


class JobStatus(dramatiq.Middleware):
    """Write ``succeeded``, ``failed``, ``retrying`` and ``cancelled`` from Dramatiq's hooks.

    ``queued`` is written when the job is recorded (submit or ``before_enqueue``) and
    ``running`` when a delivery claims it (:class:`Idempotency`); this middleware writes how
    the delivery ended, after ``Retries`` has decided between a retry and the dead-letter
    queue.  The actor never writes a state.

    Webhooks: a final state that arms a webhook delivery (or a claim that finds one still
    due) is owed by the render message, and queued from its ``before_ack``/``before_nack``
    hook: a broker that refuses keeps the message unacknowledged (:mod:`..notify`).

    Redis down: a render that ends while the store does not answer must not be left
    ``running`` with its message acknowledged.  The write of how it ended is tried again,
    backing off, for up to ``PREVIEW_STORE_RETRY_SECONDS`` (:mod:`.patience`), holding the
    message unacknowledged meanwhile (Dramatiq acknowledges after this hook, and retries an
    acknowledgement that fails every 5 s).  Past that bound the delivery is given up, and
    the sweep of overdue jobs (:class:`~.orphans.Orphans`) puts the job's message back.  For a
    ``deliver_preview_webhook`` message it records how the attempt ended (delivered, to be
    retried, failed for good), also after ``Retries`` has decided.

    Parameters:
      settings: the settings to use; by default the process-wide ones, read at use time.
    """

    def __init__(self, *, settings: Settings | None = None) -> None:
        self._settings = settings
        self._retry_delays = threading.local()
        # The logger of Dramatiq's worker threads (dramatiq.worker.WorkerThread).
        logging.getLogger("dramatiq.worker.WorkerThread").addFilter(_RESULT_FILTER)

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    def after_enqueue(self, broker: dramatiq.Broker, message: Any, delay: Any) -> None:
        # Retries re-enqueues from inside after_process_message, on this same thread, just
        # before our after_process_message runs: remember the delay for the next attempt.
        if is_preview_message(message) and message.options.get("retries") and delay:
            self._retry_delays.value = (message.message_id, int(delay))

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if is_preview_message(message):
            set_current_job(None)

    def before_ack(self, broker: dramatiq.Broker, message: Any) -> None:
        # The webhook delivery this message owes goes on the broker before the message is
        # acknowledged; WebhookNotQueued makes Dramatiq retry (and call this again).
        settle(broker, get_store(self.settings), message)

    before_nack = before_ack

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if is_webhook_message(message):
            self._webhook_attempt_ended(message, result, exception)
            return
        if not is_preview_message(message):
            return
        # The render is over: what is left is bookkeeping, which may wait for Redis and must
        # not be interrupted by the render's time limit.
        TimeLimitPause(broker).pause()
        ctx = current_job()
        set_current_job(None)
        settings = self.settings
        job_id = ctx.job_id if ctx else job_id_of(message)
        token = ctx.token if ctx else ""
        attempt = ctx.attempt if ctx else 0
        duration = time.monotonic() - ctx.started if ctx else 0.0
        fields: dict[str, Any] = {"job_id": job_id, "attempt": attempt, "duration": duration}

        if exception is None and ctx is not None and ctx.lease_lost:
            self._finish(job_id, token, "release")
            return
        if exception is None and ctx is not None and ctx.cancelled:
            self._owe(message, job_id, self._finish(job_id, token, "cancelled"))
            remove_outputs(settings.output_dir, job_id)
            emit("cancelled", **fields)
            return
        if exception is None and result is None:
            # Only a cancellation or a lost lease (both seen above) end without a result;
            # recording "succeeded" with no outputs would be a lie.
            logger.error("render_preview returned no result for job %s", job_id)
            error = {
                "type": "internal_error",
                "message": "the render returned no result; see the worker log",
                "retryable": False,
            }
            self._owe(message, job_id, self._finish(job_id, token, "failed", data=error))
            emit("failed", error=error, **fields)
            return
        if exception is None:
            # The actor's return value: ``{"outputs": [...]}`` with render facts in .stats.
            finished = self._finish(job_id, token, "succeeded", data=result)
            self._owe(message, job_id, finished)
            state = finished.state
            if state == "cancelled":
                remove_outputs(settings.output_dir, job_id)
                emit("cancelled", **fields)
            elif state == "succeeded":
                stats = result.stats if isinstance(result, JobResult) else {}
                emit("succeeded", result=result, **stats, **fields)
            return

        error = error_dict(exception, settings)
        if message.failed:
            finished = self._finish(job_id, token, "failed", data=error)
            if finished.verdict is FinishVerdict.MISSING:
                # Refused before it was recorded (e.g. an invalid payload from a producer
                # without our middleware): record it so that its failure can be looked up.
                self._record(message, job_id)
                finished = self._finish(job_id, token, "failed", data=error)
            self._owe(message, job_id, finished)
            emit("failed", error=error, **fields)
            return
        delay = 0
        stashed = getattr(self._retry_delays, "value", None)
        if stashed and stashed[0] == message.message_id:
            delay = stashed[1]
        self._retry_delays.value = None
        finished = self._finish(
            job_id,
            token,
            "retrying",
            data=error,
            next_attempt_at=now_ms() + delay,
            # A render that ran past the time limit by itself: a second time fails the job
            # as too_complex (dramatiq_preview.jobs).
            overrun=isinstance(exception, RenderOverrun),
        )
        # A job whose cancellation was asked for while it ran ends cancelled here, not
        # retrying (the retry's message then finds it cancelled): its webhook is due now.
        self._owe(message, job_id, finished)
        if finished.state == "cancelled":
            remove_outputs(settings.output_dir, job_id)
            emit("cancelled", **fields)
            return
        emit("retrying", error=error, delay_ms=delay, **fields)

    @staticmethod
    def _owe(message: Any, job_id: str, finished: Finished) -> None:
        if finished.webhook_due:
            owe(message, job_id, finished.webhook_due)

    def _webhook_attempt_ended(
        self, message: Any, result: Any, exception: BaseException | None
    ) -> None:
        """Record one attempt of a webhook delivery: delivered, retried or failed."""
        found = webhook_of(message)
        if found is None:
            return
        job_id, seq = found
        retries = int(message.options.get("retries", 0))
        if exception is None:
            if isinstance(result, Attempt) and not result.delivered:
                logger.info("webhook of job %s (event %d) dropped: %s", job_id, seq, result.reason)
                return
            op, event, error, attempt = WebhookOp.DELIVERED, "webhook_delivered", None, retries + 1
        else:
            error = webhook_error(exception, self.settings)
            # Retries counted the attempt already, unless the error ended it without retry.
            attempt = retries + 1 if isinstance(exception, WebhookRefused) else retries
            if message.failed:
                op, event = WebhookOp.FAILED, "webhook_failed"
            else:
                op, event = WebhookOp.RETRY, "webhook_retried"
        seconds = result.seconds if isinstance(result, Attempt) else None
        seconds = getattr(exception, "seconds", seconds)
        try:
            answer = get_store(self.settings).webhook(
                job_id, op, seq, error["message"] if error else ""
            )
        except StateStoreUnavailable:
            logger.error(
                "could not record the webhook attempt of job %s: Redis unavailable", job_id
            )
        else:
            if answer != "ok":
                logger.info(
                    "webhook attempt of job %s (event %d) not recorded: %s", job_id, seq, answer
                )
        emit(event, job_id=job_id, attempt=attempt, duration=seconds, error=error)

    def _record(self, message: Any, job_id: str) -> None:
        payload = payload_of(message)
        get_store(self.settings).record_refused(
            job_id,
            priority=payload.get("priority") if isinstance(payload, dict) else None,
            queue=canonical_queue(message.queue_name),
        )

    def _finish(self, job_id: str, token: str, outcome: str, **kwargs: Any) -> Finished:
        """:meth:`JobStore.finish`, waiting for Redis (:func:`.patience.until_answered`).

        Raises:
          StateStoreUnavailable: Redis did not answer for ``PREVIEW_STORE_RETRY_SECONDS``
            (logged: ``could not record {outcome} for job {job_id}``).
        """
        store = get_store(self.settings)
        return until_answered(
            partial(store.finish, job_id, token=token, outcome=outcome, **kwargs),
            seconds=self.settings.store_retry_seconds,
            what=f"record {outcome} for job {job_id}",
        )

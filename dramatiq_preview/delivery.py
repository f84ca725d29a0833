"""The delivery of a job that the current worker thread is processing.

The idempotency middleware opens a :class:`JobContext` when it claims a delivery (its lease
token, attempt and deadline); the actor reads it to report progress and to notice
cancellation; the status middleware closes it.  It is the job's counterpart of Dramatiq's
``CurrentMessage``: Dramatiq runs ``before_process_message``, the actor and
``after_process_message`` of one message on one worker thread, so a thread-local is the
right scope.  The render's result does not travel here: the actor returns it, and Dramatiq
hands it to ``after_process_message``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from .errors import JobCancelled, StateStoreUnavailable
from .state import JobStore, ProgressVerdict

logger = logging.getLogger("dramatiq_preview.delivery")


class LeaseLost(JobCancelled):
    """This delivery no longer holds the job: another delivery finished or took it over."""

    type = "lease_lost"


@dataclass
class JobContext:
    """State of one delivery of one job on this thread."""

    job_id: str
    token: str
    store: JobStore
    attempt: int
    deadline: float
    progress_interval: float
    #: How many earlier deliveries of the job ran past the time limit (a second overrun
    #: fails it as ``too_complex``: :mod:`dramatiq_preview.jobs`).
    overruns: int = 0
    #: Set when the store answered that cancellation was requested.
    cancelled: bool = False
    #: Set when the store answered that another delivery holds the job now.
    lease_lost: bool = False
    started: float = field(default_factory=time.monotonic)
    # The first progress write waits one interval: a fast job costs no progress round trip.
    _last_write: float = field(default_factory=time.monotonic)
    _last_percent: int = -1

    def checkpoint(self, percent: int | None = None) -> None:
        """Report progress and check for cancellation, at most once per interval.

        A store that does not answer is no reason to stop a render: the checkpoint is
        skipped (progress and cancellation are seen at the next one that gets through),
        and the render's end is recorded once the store answers again
        (:class:`~dramatiq_preview.middleware.JobStatus`).

        Raises:
          JobCancelled: cancellation was requested for this job.
          LeaseLost: the job was taken over by another delivery.
        """
        now = time.monotonic()
        if percent is not None and percent <= self._last_percent:
            percent = None
        if now - self._last_write < self.progress_interval:
            return
        self._last_write = now
        if percent is not None:
            self._last_percent = percent
        try:
            verdict = self.store.progress(self.job_id, token=self.token, percent=percent)
        except StateStoreUnavailable:
            logger.debug("progress of job %s not recorded: Redis unavailable", self.job_id)
            return
        if verdict is ProgressVerdict.CANCEL_REQUESTED:
            self.cancelled = True
            raise JobCancelled("cancelled while rendering")
        if verdict is ProgressVerdict.LEASE_LOST:
            self.lease_lost = True
            raise LeaseLost("this delivery no longer holds the job")


_local = threading.local()


def current_job() -> JobContext | None:
    """The context of the job this thread is processing, or None outside a delivery."""
    return getattr(_local, "job", None)


def set_current_job(ctx: JobContext | None) -> None:
    _local.job = ctx

"""The error taxonomy of dramatiq-preview.

Every error the library raises on purpose hangs from :class:`PreviewError`.  Each class
carries a stable ``type`` (the string that appears in a job's ``error.type``), a human
``message`` and whether a retry could succeed (``retryable``).  Permanent errors fail a job
at once; transient ones are retried by Dramatiq's ``Retries`` middleware with backoff.

Messages are written for people: they never contain a stack trace, file contents, or a
path outside ``PREVIEW_SOURCE_ROOT``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from dramatiq.errors import BrokerConnectionError, Retry
from dramatiq.middleware import MiddlewareError


class PreviewError(Exception):
    """Root of every error raised on purpose by dramatiq-preview.

    Parameters:
      message: A sentence for humans.  Never include stack traces or private paths.
      type: Overrides the class's default error type string.
    """

    type: ClassVar[str] = "internal_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if type is not None:
            # An instance attribute shadows the ClassVar on purpose.
            self.type = type  # type: ignore[misc]

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object of a job's status."""
        return {"type": self.type, "message": self.message, "retryable": self.retryable}


class ConfigError(PreviewError):
    """A ``PREVIEW_*`` setting is missing or malformed.  The message names the variable."""

    type = "config_error"

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name


class PermanentError(PreviewError):
    """A job cannot succeed however often it is retried; it fails at once."""

    type = "permanent_error"
    retryable = False


class TransientError(PreviewError):
    """A job may succeed later; Dramatiq's ``Retries`` retries it with backoff."""

    type = "transient_error"
    retryable = True


@dataclass(frozen=True)
class ValidationIssue:
    """One schema violation: a JSON-pointer-like ``path`` (``outputs/0/width``) and a message."""

    path: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class InvalidPayload(PermanentError, MiddlewareError):
    """A job payload does not match ``schemas/preview-job.schema.json``.

    It derives from Dramatiq's ``MiddlewareError`` so that raising it from a ``before_enqueue``
    hook reaches the caller of ``render_preview.send()`` instead of being logged and ignored.
    """

    type = "invalid_payload"

    def __init__(self, issues: list[ValidationIssue]) -> None:
        self.issues = issues
        summary = "; ".join(f"{i.path or '(root)'}: {i.message}" for i in issues[:5])
        more = f" (and {len(issues) - 5} more)" if len(issues) > 5 else ""
        super().__init__(f"invalid payload: {summary}{more}")

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["details"] = [i.to_dict() for i in self.issues]
        return data


# --- permanent failures of a job -------------------------------------------------------


class SourceNotFound(PermanentError):
    type = "source_not_found"


class SourceForbidden(PermanentError):
    """The source path leaves ``PREVIEW_SOURCE_ROOT`` or the URL's host is not allowed."""

    type = "source_forbidden"


class SourceTooLarge(PermanentError):
    type = "source_too_large"


class TooManyPixels(PermanentError):
    type = "too_many_pixels"


class UnsupportedFormat(PermanentError):
    type = "unsupported_format"


class CorruptSource(PermanentError):
    type = "corrupt_source"


class PageOutOfRange(PermanentError):
    type = "page_out_of_range"


class OutputTooLarge(PermanentError):
    """The job's outputs together would exceed ``PREVIEW_MAX_OUTPUT_BYTES``.

    Raised before the write that would cross the cap; the outputs already written for the
    job are deleted first, so none of them is kept.
    """

    type = "output_too_large"


class RenderMemoryExceeded(PermanentError):
    type = "memory_limit"


class RenderCrashed(PermanentError):
    """The render child died while decoding this source; retrying would crash it again."""

    type = "render_crashed"


class StorageForbidden(PermanentError):
    """Storage refused the credentials or a permission, or its bucket does not exist.

    The message names the bucket and the refusal (``s3:GetObject`` denied, a signature that
    does not match the secret key...); retrying would be refused the same way.
    """

    type = "storage_forbidden"


class WorkerLost(PermanentError):
    """The worker process died ``PREVIEW_MAX_DELIVERIES`` times while rendering this job."""

    type = "worker_lost"


class TooComplex(PermanentError):
    """The render of this source ran past the time limit a second time: it is deterministic
    (a drawing too costly to render), so it is not retried again (:class:`RenderOverrun`)."""

    type = "too_complex"


# --- transient failures of a job -------------------------------------------------------


class SourceUnavailable(TransientError):
    """A URL source timed out, answered 5xx, or the connection failed; or a source file
    changed while it was being rendered."""

    type = "source_unavailable"


class StorageError(TransientError):
    """Storage did not answer, answered 5xx or throttled, or the disk refused a write."""

    type = "storage_error"


class RenderTimeout(TransientError):
    type = "time_limit"


class RenderOverrun(RenderTimeout):
    """The render itself (not a wait for a renderer, nor a slow source) ran past the time
    limit.  Retried once like any time limit; a second one of the same job is
    :class:`TooComplex`."""


class StateStoreUnavailable(TransientError, MiddlewareError):
    """Redis (the state store) did not answer.

    Raised from middleware hooks too, hence ``MiddlewareError``: Dramatiq then treats it as a
    failure of the message (retried) instead of logging it and rendering without a lease.
    """

    type = "state_store_unavailable"


class BrokerUnavailable(TransientError):
    type = "broker_unavailable"


# --- webhook deliveries -----------------------------------------------------------------


class WebhookFailed(TransientError, Retry):
    """One webhook attempt failed (non-2xx answer, redirect, timeout, refused connection,
    DNS failure); Dramatiq's ``Retries`` tries again with backoff until the last attempt.

    A ``dramatiq.Retry``, so the worker does not log each failed attempt with a traceback;
    the status middleware records it (``webhook.lastError``).

    Parameters:
      message: what went wrong, for ``lastError``.
      seconds: how long the POST took (None when none was sent).
    """

    type = "webhook_failed"

    def __init__(self, message: str, *, seconds: float | None = None) -> None:
        super().__init__(message)
        self.seconds = seconds


class WebhookRefused(PermanentError):
    """A webhook that must not be attempted again: its host is no longer allowed (or
    resolves to a forbidden address), or the receiver answered 410 Gone.  The delivery
    fails at once and is dead-lettered."""

    type = "webhook_refused"

    def __init__(self, message: str, *, seconds: float | None = None) -> None:
        super().__init__(message)
        self.seconds = seconds


class WebhookNotQueued(BrokerUnavailable, MiddlewareError, BrokerConnectionError):
    """The delivery message of a job's webhook could not be put on the broker.

    Raised from the ``before_ack``/``before_nack`` hook of the job's render message: a
    ``MiddlewareError`` gets through Dramatiq's hook dispatch, and as a
    ``BrokerConnectionError`` it makes the worker retry the acknowledgement (every 5 s,
    running the hook again) instead of acknowledging the message.  So the render message
    stays unacknowledged until the delivery is queued, and a worker that dies meanwhile
    leaves it to be redelivered, whose claim queues the delivery.
    """

    type = "webhook_not_queued"


# --- errors of the job API (not job failures) --------------------------------------------


class JobNotFound(PreviewError):
    type = "not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class WaitTimeout(PreviewError, TimeoutError):
    """A wait for a job's final state ran out (:meth:`PreviewClient.wait`); the job goes on.

    A :class:`TimeoutError` too, so ``except TimeoutError`` catches it.
    """

    type = "wait_timeout"

    def __init__(self, message: str, *, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobConflict(PreviewError, MiddlewareError):
    """A jobId was reused with a different payload, or a finished job was cancelled."""

    type = "conflict"


class JobCancelled(PreviewError):
    """Raised inside a render when the job's cancel flag is seen at a checkpoint."""

    type = "cancelled"


__all__ = [
    "BrokerUnavailable",
    "ConfigError",
    "CorruptSource",
    "InvalidPayload",
    "JobCancelled",
    "JobConflict",
    "JobNotFound",
    "OutputTooLarge",
    "PageOutOfRange",
    "PermanentError",
    "PreviewError",
    "RenderCrashed",
    "RenderMemoryExceeded",
    "RenderOverrun",
    "RenderTimeout",
    "SourceForbidden",
    "SourceNotFound",
    "SourceTooLarge",
    "SourceUnavailable",
    "StateStoreUnavailable",
    "StorageError",
    "TooComplex",
    "TooManyPixels",
    "TransientError",
    "UnsupportedFormat",
    "ValidationIssue",
    "WebhookFailed",
    "WebhookNotQueued",
    "WebhookRefused",
    "WorkerLost",
]

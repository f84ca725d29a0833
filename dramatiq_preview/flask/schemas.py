"""marshmallow schemas of what the HTTP API sends out: every response body.

They shape the answers (``dump``) and feed apispec for the OpenAPI document.  Requests are
validated by the JSON Schema alone (``schemas/preview-job.schema.json``, through
:mod:`dramatiq_preview.validation`), which the OpenAPI document embeds as it is; enums shared
with it (formats, priorities) and the jobId pattern are read from it here.
"""

from __future__ import annotations

from marshmallow import INCLUDE, Schema, fields

from ..state import STATES
from ..validation import load_schema

_PROPS = load_schema()["properties"]
_OUTPUT = _PROPS["outputs"]["items"]["properties"]

#: The jobId pattern of the JSON Schema (path parameters are checked against it as well).
JOB_ID_PATTERN: str = _PROPS["jobId"]["pattern"]


# --- responses (dumped; ``required`` documents that a key is always present) --------------

_STATE = {"enum": list(STATES)}
_TIME = {"format": "date-time"}


class SubmitResponseSchema(Schema):
    """The answer to ``POST /job``: 202 for a new job, 200 with ``duplicate`` for a repeat."""

    jobId = fields.String(required=True)
    state = fields.String(required=True, metadata=_STATE)
    statusUrl = fields.String(required=True, metadata={"format": "uri-reference"})
    duplicate = fields.Boolean(
        metadata={"description": "Present (true) when the job existed with the same payload."}
    )


class IssueSchema(Schema):
    """One schema violation: a slash-separated path (``outputs/0/width``) and a message."""

    path = fields.String(required=True)
    message = fields.String(required=True)


class JobErrorSchema(Schema):
    """Why a job failed (or why its last attempt failed, while it is ``retrying``)."""

    type = fields.String(required=True)
    message = fields.String(required=True)
    retryable = fields.Boolean(required=True)
    details = fields.List(fields.Nested(IssueSchema))


class OutputResultSchema(Schema):
    """One rendered file.  ``path`` is relative to ``PREVIEW_OUTPUT_DIR``."""

    path = fields.String(required=True)
    width = fields.Integer(required=True)
    height = fields.Integer(required=True)
    format = fields.String(required=True, metadata={"enum": _OUTPUT["format"]["enum"]})
    bytes = fields.Integer(required=True)
    url = fields.String(
        required=True,
        metadata={"format": "uri-reference", "description": "Where to download the file."},
    )


class PlaceholderSchema(Schema):
    """What a page can paint while the first output loads (the job asked with
    ``placeholder: true``)."""

    blurhash = fields.String(
        required=True,
        metadata={
            "description": "BlurHash of the first output, 4x3 components (28 characters).",
            "pattern": "^L[0-9A-Za-z#$%*+,\\-.:;=?@\\[\\]^_{|}~]{27}$",
        },
    )
    color = fields.String(
        required=True,
        metadata={
            "description": (
                "Average colour of the first output, over white, averaged in linear light "
                "(the BlurHash's DC term)."
            ),
            "pattern": "^#[0-9a-f]{6}$",
        },
    )


class ResultSchema(Schema):
    outputs = fields.List(fields.Nested(OutputResultSchema), required=True)
    placeholder = fields.Nested(
        PlaceholderSchema,
        metadata={"description": "Present only when the job asked for it (`placeholder: true`)."},
    )


class WebhookStatusSchema(Schema):
    """Where the webhook of a job's final state stands (jobs submitted with ``webhook``)."""

    state = fields.String(
        required=True,
        metadata={
            "enum": ["pending", "delivered", "failed"],
            "description": (
                "`pending` until the final state's delivery answered 2xx (`delivered`) or "
                "its last attempt failed (`failed`)."
            ),
        },
    )
    attempts = fields.Integer(
        required=True, metadata={"minimum": 0, "description": "Delivery attempts made."}
    )
    lastError = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Why the last attempt failed (null when none did)."},
    )


class StatusSchema(Schema):
    """The body of ``GET /job/{jobId}/status``, and the ``data`` of each event of
    ``GET /job/{jobId}/events``."""

    jobId = fields.String(required=True)
    state = fields.String(required=True, metadata=_STATE)
    priority = fields.String(required=True, metadata={"enum": _PROPS["priority"]["enum"]})
    attempts = fields.Integer(required=True)
    progress = fields.Integer(required=True, metadata={"minimum": 0, "maximum": 100})
    createdAt = fields.String(required=True, allow_none=True, metadata=_TIME)
    startedAt = fields.String(required=True, allow_none=True, metadata=_TIME)
    finishedAt = fields.String(required=True, allow_none=True, metadata=_TIME)
    nextAttemptAt = fields.String(
        required=True,
        allow_none=True,
        metadata={**_TIME, "description": "When a retrying job runs again."},
    )
    error = fields.Nested(JobErrorSchema, required=True, allow_none=True)
    result = fields.Nested(
        ResultSchema,
        required=True,
        allow_none=True,
        metadata={"description": "The rendered files once the job succeeded, else null."},
    )
    metadata = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    webhook = fields.Nested(
        WebhookStatusSchema,
        required=True,
        allow_none=True,
        metadata={"description": "The delivery of the job's webhook; null without one."},
    )


class CancelResponseSchema(Schema):
    """The answer to ``POST /job/{jobId}/cancel``.

    ``state`` is ``cancelled``, or ``running`` while a running job is on its way there.
    """

    jobId = fields.String(required=True)
    state = fields.String(required=True, metadata={"enum": ["cancelled", "running"]})


class ErrorSchema(Schema):
    """Every error response: a stable code and a sentence for humans."""

    error = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.List(fields.Nested(IssueSchema))
    limit = fields.Integer(metadata={"description": "The byte limit a 413 refers to."})


class ValidationErrorSchema(ErrorSchema):
    """A 422 ``validation_error``: one detail per schema violation."""

    details = fields.List(fields.Nested(IssueSchema), required=True)


class StorageHealthSchema(Schema):
    """One storage root in the health body."""

    ok = fields.Boolean(required=True)
    kind = fields.String(required=True, metadata={"enum": ["local", "s3"]})
    latencyMs = fields.Float(required=True, allow_none=True)
    error = fields.String(required=True, allow_none=True)


class HealthSchema(Schema):
    """The body of ``GET /worker/health``; see docs/http-api.md for every key."""

    class Meta:
        unknown = INCLUDE

    status = fields.String(required=True, metadata={"enum": ["ok", "degraded", "down"]})
    storage = fields.Nested(
        StorageHealthSchema, metadata={"description": "The output root (PREVIEW_OUTPUT_DIR)."}
    )
    sourceStorage = fields.Nested(
        StorageHealthSchema,
        metadata={"description": "The source root, when it is set and another root."},
    )


class JobListSchema(Schema):
    """The answer to ``GET /jobs``: status objects, newest first."""

    jobs = fields.List(fields.Nested(StatusSchema), required=True)


class DeadLetterSchema(Schema):
    """One dead message: a job that failed for good, or its webhook delivery that did."""

    jobId = fields.String(required=True)
    kind = fields.String(
        required=True,
        metadata={
            "enum": ["render", "webhook"],
            "description": "`render`: the job failed; `webhook`: its webhook delivery failed.",
        },
    )
    queue = fields.String(required=True, metadata={"description": "The lane it died on."})
    messageId = fields.String(required=True)
    failedAt = fields.String(required=True, allow_none=True, metadata=_TIME)
    error = fields.Nested(JobErrorSchema, required=True, allow_none=True)
    attempts = fields.Integer(required=True)


class DeadLetterListSchema(Schema):
    """The answer to ``GET /dlq``: the newest dead messages of our lanes (at most
    ``limit``), oldest failure first, and how many there are in all."""

    deadLetters = fields.List(fields.Nested(DeadLetterSchema), required=True)
    total = fields.Integer(
        required=True,
        metadata={
            "description": (
                "How many dead messages our lanes hold; more than the list's length when "
                "`limit` cut it."
            )
        },
    )


class RequeueResponseSchema(Schema):
    """The answer to ``POST /dlq/{jobId}/requeue``: the job's state once its dead messages
    are back on their lanes (``queued`` for a failed job; a job whose webhook delivery died
    keeps its final state)."""

    jobId = fields.String(required=True)
    state = fields.String(required=True, allow_none=True, metadata=_STATE)
    requeued = fields.Integer(
        required=True, metadata={"description": "How many dead messages of the job went back."}
    )


class PurgeResponseSchema(Schema):
    """The answer to ``POST /dlq/purge``."""

    purged = fields.Integer(required=True, metadata={"description": "Dead messages deleted."})


SUBMIT_RESPONSE = SubmitResponseSchema()
STATUS = StatusSchema()
CANCEL_RESPONSE = CancelResponseSchema()
JOB_LIST = JobListSchema()
DEAD_LETTERS = DeadLetterListSchema()
REQUEUE_RESPONSE = RequeueResponseSchema()
PURGE_RESPONSE = PurgeResponseSchema()


__all__ = [
    "JOB_ID_PATTERN",
    "CancelResponseSchema",
    "DeadLetterListSchema",
    "DeadLetterSchema",
    "ErrorSchema",
    "HealthSchema",
    "JobListSchema",
    "PlaceholderSchema",
    "PurgeResponseSchema",
    "RequeueResponseSchema",
    "StatusSchema",
    "StorageHealthSchema",
    "SubmitResponseSchema",
    "ValidationErrorSchema",
    "WebhookStatusSchema",
]

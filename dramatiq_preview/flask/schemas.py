"""marshmallow schemas of the HTTP API: the request body and every response body.

The JSON Schema (``schemas/preview-job.schema.json``) stays the wire contract; the request
schemas here restate it in marshmallow so that the OpenAPI document can be generated from
them, and ``tests/flask/test_flask_schemas.py`` proves that both accept and reject the same
payloads.  Bounds and patterns are read from the JSON Schema itself so the two cannot drift
apart on a number.

Two details keep marshmallow as strict as the JSON Schema:

* :class:`JsonInteger` accepts JSON integers only: no ``"64"``, no ``64.0``, no ``true``.
* :class:`SearchRegexp` matches like the JSON Schema validator does (ECMA-262 semantics,
  anywhere in the string), not like marshmallow's ``Regexp`` (``re.match``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from marshmallow import INCLUDE, RAISE, Schema, ValidationError, fields, pre_load, validate

from ..state import STATES
from ..validation import ecma_regex, load_schema, text_and_nesting_issues

_SCHEMA = load_schema()
_PROPS = _SCHEMA["properties"]
_SOURCES = _PROPS["source"]["oneOf"]
_PATH_SOURCE = _SOURCES[0]["properties"]["path"]
_URL_SOURCE = _SOURCES[1]["properties"]["url"]
_OUTPUT = _PROPS["outputs"]["items"]["properties"]
_METADATA = _PROPS["metadata"]

#: The jobId pattern of the JSON Schema (path parameters are checked against it as well).
JOB_ID_PATTERN: str = _PROPS["jobId"]["pattern"]


class SearchRegexp(validate.Validator):
    """A ``pattern`` check with JSON Schema semantics: the regex may match anywhere.

    The patterns we use are anchored; what matters is that we agree with the validator of
    :mod:`dramatiq_preview.validation`, which uses ``re.search`` (marshmallow's ``Regexp``
    uses ``re.match``).  apispec reads the ``regex`` attribute into ``pattern``.
    """

    def __init__(self, pattern: str) -> None:
        # ``regex`` (the pattern as written) is what apispec publishes; matching uses the
        # ECMA-262 reading of it, like the JSON Schema validator.
        self.regex = re.compile(pattern)
        self._ecma = ecma_regex(pattern)
        self.message = f"must match the pattern {pattern}"

    def __call__(self, value: str) -> str:
        if self._ecma.search(value) is None:
            raise ValidationError(self.message)
        return value


class JsonInteger(fields.Integer):
    """An integer that must already be a JSON integer (``strict``, booleans rejected)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


def _integer(spec: Mapping[str, Any], **kwargs: Any) -> JsonInteger:
    return JsonInteger(
        validate=validate.Range(min=spec.get("minimum"), max=spec.get("maximum")), **kwargs
    )


def _string(spec: Mapping[str, Any], **kwargs: Any) -> fields.String:
    validators: list[Any] = []
    if "minLength" in spec or "maxLength" in spec:
        validators.append(validate.Length(min=spec.get("minLength"), max=spec.get("maxLength")))
    if "pattern" in spec:
        validators.append(SearchRegexp(spec["pattern"]))
    return fields.String(validate=validators, **kwargs)


def _choice(spec: Mapping[str, Any], **kwargs: Any) -> fields.String:
    metadata = {"default": spec["default"]} if "default" in spec else {}
    return fields.String(validate=validate.OneOf(spec["enum"]), metadata=metadata, **kwargs)


class StrictSchema(Schema):
    """Unknown keys are errors (``additionalProperties: false``) and nothing is coerced."""

    class Meta:
        unknown = RAISE


class PathSourceSchema(StrictSchema):
    """A source file relative to ``PREVIEW_SOURCE_ROOT``."""

    path = _string(_PATH_SOURCE, required=True)


class UrlSourceSchema(StrictSchema):
    """A source fetched over http(s) from a host in ``PREVIEW_ALLOWED_URL_HOSTS``."""

    url = _string(_URL_SOURCE, required=True)


if TYPE_CHECKING:
    _ObjectField = fields.Field[dict[str, Any]]
else:  # marshmallow 3's Field is not generic
    _ObjectField = fields.Field


class OneOfNested(_ObjectField):
    """Exactly one of several object shapes, told apart by their (required) keys.

    It is the marshmallow form of the JSON Schema's ``oneOf`` for ``source``; the OpenAPI
    generator renders it as a ``oneOf`` of the nested schemas (see :mod:`.openapi`).
    """

    default_error_messages = {  # noqa: RUF012 - marshmallow's own convention
        "type": "must be an object with either {names}",
        "none": "must have either {names}",
        "both": "must have exactly one of {names}, not both",
    }

    def __init__(self, *schemas: type[Schema], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.schemas = schemas
        self._keys = [next(iter(s._declared_fields)) for s in schemas]

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> dict[str, Any]:
        names = " or ".join(self._keys)
        if not isinstance(value, dict):
            raise self.make_error("type", names=names)
        present = [i for i, key in enumerate(self._keys) if key in value]
        if not present:
            raise self.make_error("none", names=names)
        if len(present) > 1:
            raise self.make_error("both", names=names)
        loaded: dict[str, Any] = self.schemas[present[0]]().load(value)
        return loaded

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


class OutputRequestSchema(StrictSchema):
    """One requested preview: the pixel box, the format and how the image fits it."""

    width = _integer(_OUTPUT["width"], required=True)
    height = _integer(_OUTPUT["height"], required=True)
    format = _choice(_OUTPUT["format"], required=True)
    fit = _choice(_OUTPUT["fit"])
    quality = _integer(_OUTPUT["quality"], metadata={"default": _OUTPUT["quality"]["default"]})


class JobRequestSchema(StrictSchema):
    """The body of ``POST /job``: the job payload of ``schemas/preview-job.schema.json``."""

    @pre_load
    def _refuse_bad_text_and_nesting(self, data: Any, **kwargs: Any) -> Any:
        # What the JSON Schema path checks first (lone surrogates, absurd nesting), so that
        # both validators give one verdict.
        issues = text_and_nesting_issues(data)
        if issues:
            messages: dict[str, list[str]] = {}
            for issue in issues:
                messages.setdefault(issue.path or "_schema", []).append(issue.message)
            raise ValidationError(messages)
        return data

    jobId = _string(_PROPS["jobId"], metadata={"description": _PROPS["jobId"]["description"]})
    source = OneOfNested(
        PathSourceSchema,
        UrlSourceSchema,
        required=True,
        metadata={"description": _PROPS["source"]["description"]},
    )
    outputs = fields.List(
        fields.Nested(OutputRequestSchema),
        required=True,
        validate=validate.Length(
            min=_PROPS["outputs"]["minItems"], max=_PROPS["outputs"]["maxItems"]
        ),
    )
    page = _integer(
        _PROPS["page"],
        metadata={
            "default": _PROPS["page"]["default"],
            "description": _PROPS["page"]["description"],
        },
    )
    priority = _choice(_PROPS["priority"])
    metadata = fields.Dict(
        keys=fields.String(validate=validate.Length(max=_METADATA["propertyNames"]["maxLength"])),
        values=_string(_METADATA["additionalProperties"]),
        validate=validate.Length(max=_METADATA["maxProperties"]),
        metadata={"description": _METADATA["description"]},
    )


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


class ResultSchema(Schema):
    outputs = fields.List(fields.Nested(OutputResultSchema), required=True)


class StatusSchema(Schema):
    """The body of ``GET /job/{jobId}/status``."""

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


class HealthSchema(Schema):
    """The body of ``GET /worker/health``; see docs/http-api.md for every key."""

    class Meta:
        unknown = INCLUDE

    status = fields.String(required=True, metadata={"enum": ["ok", "degraded", "down"]})


JOB_REQUEST = JobRequestSchema()
SUBMIT_RESPONSE = SubmitResponseSchema()
STATUS = StatusSchema()
CANCEL_RESPONSE = CancelResponseSchema()
ERROR = ErrorSchema()


def issues_from_messages(messages: Any, prefix: str = "") -> list[dict[str, str]]:
    """Flatten marshmallow's nested error messages into ``[{"path", "message"}]``."""
    if isinstance(messages, str):
        return [{"path": prefix, "message": messages}]
    if isinstance(messages, list):
        if all(isinstance(m, str) for m in messages):
            return [{"path": prefix, "message": m} for m in messages]
        return [i for m in messages for i in issues_from_messages(m, prefix)]
    if isinstance(messages, dict):
        found = []
        for key, value in messages.items():
            name = "" if key == "_schema" else str(key)
            path = f"{prefix}/{name}" if prefix and name else prefix or name
            found.extend(issues_from_messages(value, path))
        return found
    return [{"path": prefix, "message": str(messages)}]


def request_issues(payload: Any) -> list[dict[str, str]]:
    """The marshmallow verdict on a request body (empty when it is a valid job payload)."""
    try:
        JOB_REQUEST.load(payload)
    except ValidationError as err:
        return issues_from_messages(err.messages) or [{"path": "", "message": "is invalid"}]
    return []


__all__ = [
    "JOB_ID_PATTERN",
    "CancelResponseSchema",
    "ErrorSchema",
    "HealthSchema",
    "JobRequestSchema",
    "OneOfNested",
    "StatusSchema",
    "SubmitResponseSchema",
    "ValidationErrorSchema",
]

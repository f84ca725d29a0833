"""The OpenAPI 3.1 document of the HTTP API.

Paths come from the app's URL map (the rules of the mounted blueprint).  The request body is
the JSON Schema of the job payload (``schemas/preview-job.schema.json``), embedded as it is
under ``components/schemas/JobRequest``: OpenAPI 3.1 schemas are JSON Schema 2020-12, so the
document states exactly the rules the server validates with.  Response bodies are generated
with apispec from the marshmallow schemas of :mod:`.schemas`; only summaries and the list of
answers per route are written here.  The document describes the app it is served by: the
security scheme appears when ``PREVIEW_API_TOKEN`` is set, 403 answers when an ``authorize``
hook is installed, the 307 of a download when outputs are in S3 and served by presigned URLs
(``PREVIEW_OUTPUT_URL_TTL_SECONDS`` > 0), and the server URL includes ``SCRIPT_NAME`` and
the mount prefix.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask

from .._version import __version__
from ..config import S3Location
from ..models import CONTENT_TYPES
from ..state import STATES
from ..validation import load_schema
from .appstate import AppState
from .schemas import (
    JOB_ID_PATTERN,
    CancelResponseSchema,
    DeadLetterListSchema,
    ErrorSchema,
    HealthSchema,
    JobListSchema,
    PurgeResponseSchema,
    RequeueResponseSchema,
    StatusSchema,
    SubmitResponseSchema,
    ValidationErrorSchema,
)

#: The name of the job payload's JSON Schema under ``components/schemas``.
JOB_REQUEST = "JobRequest"
#: Keywords whose values are data, not schemas: a ``$ref`` key in them is not a reference.
_DATA_KEYWORDS = frozenset({"const", "default", "enum", "examples", "example"})
#: Keywords whose values map names (which may look like keywords) to schemas.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "dependentSchemas", "$defs"})

_PARAMETER_NAMES = {"job_id": "jobId"}
_RULE_ARG = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_JSON = "application/json"


def _error(description: str, schema: Any = ErrorSchema) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


_UNAVAILABLE = {
    **_error("Redis or the broker is unreachable (`unavailable`)."),
    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
}
_NOT_FOUND = _error("No job with this id (`not_found`).")
#: The 307 of a download from S3 by presigned URL (added when the app serves outputs so).
_REDIRECT = {
    "description": (
        "The output is in S3: follow `Location`, a presigned URL valid for "
        "PREVIEW_OUTPUT_URL_TTL_SECONDS, to get the file with its image content type "
        "(`Range` may be sent there). Not cacheable: the URL expires."
    ),
    "headers": {
        "Location": {"required": True, "schema": {"type": "string", "format": "uri"}},
        "ETag": {"schema": {"type": "string"}},
        "Cache-Control": {"schema": {"type": "string", "const": "private, no-store"}},
    },
    "content": {
        _JSON: {
            "schema": {
                "type": "object",
                "required": ["url", "expiresInSeconds"],
                "properties": {
                    "url": {"type": "string", "format": "uri"},
                    "expiresInSeconds": {"type": "integer", "minimum": 1},
                },
            }
        }
    },
}
#: Links from a submit answer to the routes that take its jobId (clients and fuzzers follow them).
_LINKS = {
    name: {"operationId": op, "parameters": {"jobId": "$response.body#/jobId"}}
    for name, op in (("status", "getJobStatus"), ("cancel", "cancelJob"))
}
_JOB_ID = {
    "in": "path",
    "name": "jobId",
    "required": True,
    "schema": {"type": "string", "pattern": JOB_ID_PATTERN},
}
_EVENT_ID = {"type": "string", "examples": ["3f9c0a1b2d4e-7"]}
_LAST_EVENT_ID = [
    {
        "in": "header",
        "name": "Last-Event-ID",
        "description": (
            "The `id` of the last event the client has (an EventSource sends it when it "
            "reconnects): the stream resumes after it. An id of another record of the same "
            "jobId (deleted and submitted again), or anything but `<incarnation>-<seq>` "
            "(the plain `<seq>` ids of earlier releases included), gets the current status."
        ),
        "schema": _EVENT_ID,
    },
    {
        "in": "query",
        "name": "lastEventId",
        "description": (
            "As `Last-Event-ID`, for a client that cannot send headers; the header wins."
        ),
        "schema": _EVENT_ID,
    },
]
#: One event of ``GET /job/{jobId}/events``.  OpenAPI 3.1 has no keyword for the items of a
#: stream (3.2 adds ``itemSchema``); as tools read 3.1 documents (schemathesis among them),
#: the ``schema`` of ``text/event-stream`` describes each event, parsed per the SSE spec.
_SSE_EVENT = {
    "type": "object",
    "description": (
        "Each event of the stream. `data` is the status object of `GET /job/{jobId}/status` "
        "as JSON on one line. The stream also carries a `retry:` line first and comment "
        "lines (`: keep-alive`), which are not events."
    ),
    "required": ["event", "id", "data"],
    "properties": {
        "event": {"type": "string", "const": "status"},
        "id": {
            "type": "string",
            "pattern": "^[0-9a-f]{1,32}-[0-9]{1,18}$",
            "description": (
                "The event id, `<incarnation>-<seq>`: the job record's incarnation (it "
                "changes when the record is deleted and the jobId submitted again) and its "
                "change counter (rises by one per change). Send it back as `Last-Event-ID` "
                "to resume after it."
            ),
        },
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/Status"},
        },
    },
}
_SSE_EXAMPLE = (
    "retry: 2000\n\nid: 3f9c0a1b2d4e-3\nevent: status\n"
    'data: {"jobId": "cat-42", "state": "running", "progress": 40, ...}\n\n'
    ": keep-alive\n\n"
)
_INDEX = {
    "in": "path",
    "name": "index",
    "required": True,
    "description": "Position of the output in the job's `outputs` (from 0).",
    "schema": {"type": "integer", "minimum": 0},
}

#: Per endpoint (the view names of the blueprint): method, parameters, operation.
OPERATIONS: dict[str, tuple[str, list[dict[str, Any]], dict[str, Any]]] = {
    "submit_job": (
        "post",
        [],
        {
            "operationId": "submitJob",
            "summary": "Submit a preview job",
            "description": (
                "Validates the payload, records the job as `queued` and enqueues it. The "
                "same `jobId` with the same payload again answers 200 with "
                "`duplicate: true` and the existing job's current state."
            ),
            "requestBody": {
                "required": True,
                "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{JOB_REQUEST}"}}},
            },
            "responses": {
                "202": {
                    "description": "The job was recorded and enqueued.",
                    "headers": {"Location": {"schema": {"type": "string"}}},
                    "content": {_JSON: {"schema": SubmitResponseSchema}},
                    "links": _LINKS,
                },
                "200": {
                    "description": "The job already existed with this payload (`duplicate`).",
                    "headers": {"Location": {"schema": {"type": "string"}}},
                    "content": {_JSON: {"schema": SubmitResponseSchema}},
                    "links": _LINKS,
                },
                "400": _error("The body is not valid JSON (`invalid_json`)."),
                "409": _error("The jobId exists with a different payload (`conflict`)."),
                "413": _error("The body exceeds PREVIEW_MAX_PAYLOAD_BYTES (`payload_too_large`)."),
                "415": _error("The body is not JSON (`unsupported_media_type`)."),
                "422": _error(
                    "The payload breaks the job schema (`validation_error`).",
                    ValidationErrorSchema,
                ),
                "503": _UNAVAILABLE,
            },
        },
    ),
    "job_status": (
        "get",
        [_JOB_ID],
        {
            "operationId": "getJobStatus",
            "summary": "The status of a job",
            "responses": {
                "200": {
                    "description": "The job's status.",
                    "content": {_JSON: {"schema": StatusSchema}},
                },
                "404": _NOT_FOUND,
                "503": _UNAVAILABLE,
            },
        },
    ),
    "cancel_job": (
        "post",
        [_JOB_ID],
        {
            "operationId": "cancelJob",
            "summary": "Cancel a job",
            "description": (
                "A waiting job becomes `cancelled` at once and is never rendered; a running "
                "job stops at its next checkpoint (`state` is `running` until then). "
                "Cancelling a cancelled job answers 202 again."
            ),
            "responses": {
                "202": {
                    "description": "Cancelled, or on its way there.",
                    "content": {_JSON: {"schema": CancelResponseSchema}},
                },
                "404": _NOT_FOUND,
                "409": _error("The job already succeeded or failed (`conflict`)."),
                "503": _UNAVAILABLE,
            },
        },
    ),
    "job_events": (
        "get",
        [_JOB_ID],
        {
            "operationId": "getJobEvents",
            "summary": "The job's status as a live stream (Server-Sent Events)",
            "description": (
                "A `text/event-stream`: `retry:` first, then one event per status, the "
                "current one at once (`id:` the event id `<incarnation>-<seq>`, `event: "
                "status`, `data:` the status object, as `GET /job/{jobId}/status` answers "
                "it), then one per change of state or progress. A comment line "
                "(`: keep-alive`) comes after every PREVIEW_EVENTS_KEEPALIVE_SECONDS (at most "
                "15) without an event. The stream ends after the event of a final state "
                "(`succeeded`, `failed`, `cancelled`), or PREVIEW_EVENTS_MAX_SECONDS after "
                "the request: reconnect with `Last-Event-ID` to resume without missing the "
                "final state."
            ),
            "parameters": _LAST_EVENT_ID,
            "responses": {
                "200": {
                    "description": (
                        "The event stream. Each event's `data` is a status object "
                        "(`#/components/schemas/Status`)."
                    ),
                    "headers": {
                        "Cache-Control": {"schema": {"type": "string", "const": "no-cache"}},
                        "X-Accel-Buffering": {"schema": {"type": "string", "const": "no"}},
                    },
                    "content": {
                        "text/event-stream": {"schema": _SSE_EVENT, "example": _SSE_EXAMPLE}
                    },
                },
                "204": {
                    "description": (
                        "The job is final and `Last-Event-ID` is its final event: nothing "
                        "more will come (an EventSource stops reconnecting)."
                    )
                },
                "404": _NOT_FOUND,
                "503": _UNAVAILABLE,
            },
        },
    ),
    "job_output": (
        "get",
        [_JOB_ID, _INDEX],
        {
            "operationId": "getJobOutput",
            "summary": "Download a rendered file",
            "responses": {
                "200": {
                    "description": "The file, with its image content type.",
                    "headers": {
                        "ETag": {"schema": {"type": "string"}},
                        "Cache-Control": {"schema": {"type": "string"}},
                    },
                    "content": {
                        ct: {"schema": {"type": "string", "contentMediaType": ct}}
                        for ct in CONTENT_TYPES.values()
                    },
                },
                "206": {
                    "description": "The requested byte range of the file (`Range`).",
                    "headers": {"Content-Range": {"schema": {"type": "string"}}},
                    "content": {
                        ct: {"schema": {"type": "string", "contentMediaType": ct}}
                        for ct in CONTENT_TYPES.values()
                    },
                },
                "304": {
                    "description": (
                        "Not modified (`If-None-Match` matched the ETag, or the file did not "
                        "change since `If-Modified-Since`)."
                    ),
                    "headers": {"ETag": {"schema": {"type": "string"}}},
                },
                "404": _error(
                    "No such job, the job has not succeeded, no output at this index, or "
                    "its file is missing (`not_found`)."
                ),
                "412": _error(
                    "`If-Match` does not match the ETag, or the file changed after "
                    "`If-Unmodified-Since` (`precondition_failed`)."
                ),
                "416": _error("The `Range` cannot be served (`requested_range_not_satisfiable`)."),
                "503": {
                    **_error(
                        "Redis or the broker is unreachable, or the output storage (S3) did "
                        "not answer or refused the credentials (`unavailable`)."
                    ),
                    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                },
            },
        },
    ),
    "list_jobs": (
        "get",
        [
            {
                "in": "query",
                "name": "state",
                "description": "Only jobs in this state.",
                "schema": {"type": "string", "enum": list(STATES)},
            },
            {
                "in": "query",
                "name": "limit",
                "description": "At most this many jobs.",
                "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
            },
        ],
        {
            "operationId": "listJobs",
            "summary": "The newest jobs, optionally in one state",
            "description": (
                "Newest first by creation time, from an index of the last 10,000 jobs "
                "created within PREVIEW_JOB_TTL_SECONDS."
            ),
            "responses": {
                "200": {
                    "description": "Status objects, newest first.",
                    "content": {_JSON: {"schema": JobListSchema}},
                },
                "422": _error(
                    "An unknown `state` or a `limit` out of range (`validation_error`).",
                    ValidationErrorSchema,
                ),
                "503": _UNAVAILABLE,
            },
        },
    ),
    "dead_letters": (
        "get",
        [
            {
                "in": "query",
                "name": "limit",
                "description": "At most this many dead letters: the newest failures.",
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 200},
            },
        ],
        {
            "operationId": "listDeadLetters",
            "summary": "The dead-letter queues: failed jobs and failed webhook deliveries",
            "description": (
                "The newest `limit` dead messages of our lanes, listed oldest failure first, "
                "and `total`, how many there are in all."
            ),
            "responses": {
                "200": {
                    "description": "The newest dead messages, oldest failure first.",
                    "content": {_JSON: {"schema": DeadLetterListSchema}},
                },
                "422": _error(
                    "A `limit` out of range (`validation_error`).", ValidationErrorSchema
                ),
                "503": _UNAVAILABLE,
            },
        },
    ),
    "requeue_dead_letter": (
        "post",
        [_JOB_ID],
        {
            "operationId": "requeueDeadLetter",
            "summary": "Put a job's dead messages back on their lanes",
            "description": (
                "A failed job goes back to `queued` (same jobId, attempts counted afresh); "
                "a dead webhook delivery is tried again with a fresh set of attempts."
            ),
            "responses": {
                "202": {
                    "description": "Requeued.",
                    "content": {_JSON: {"schema": RequeueResponseSchema}},
                },
                "404": _error("The job has no dead letter (`not_found`)."),
                "409": _error(
                    "The dead letter cannot be requeued: its jobId was reused with another "
                    "payload, or its record expired and the payload is no longer valid "
                    "(`conflict`)."
                ),
                "503": _UNAVAILABLE,
            },
        },
    ),
    "purge_dead_letters": (
        "post",
        [],
        {
            "operationId": "purgeDeadLetters",
            "summary": "Delete every dead message of our lanes",
            "responses": {
                "200": {
                    "description": "How many were deleted.",
                    "content": {_JSON: {"schema": PurgeResponseSchema}},
                },
                "503": _UNAVAILABLE,
            },
        },
    ),
    "worker_health": (
        "get",
        [],
        {
            "operationId": "getHealth",
            "summary": "Health of Redis, the broker and the workers",
            "description": "Open even when PREVIEW_API_TOKEN is set.",
            "security": [],
            "responses": {
                "200": {
                    "description": "`ok` or `degraded`.",
                    "content": {_JSON: {"schema": HealthSchema}},
                },
                "503": {
                    "description": "`down`: Redis or the broker is unreachable.",
                    "content": {_JSON: {"schema": HealthSchema}},
                },
            },
        },
    ),
    "metrics": (
        "get",
        [],
        {
            "operationId": "getMetrics",
            "summary": "Prometheus metrics of the web process",
            "responses": {
                "200": {
                    "description": (
                        "Prometheus text format, or OpenMetrics when the Accept header asks "
                        "for application/openmetrics-text."
                    ),
                    "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        "application/openmetrics-text": {"schema": {"type": "string"}},
                    },
                }
            },
        },
    ),
    "openapi": (
        "get",
        [],
        {
            "operationId": "getOpenApi",
            "summary": "This document",
            "responses": {
                "200": {
                    "description": "The OpenAPI document.",
                    "content": {_JSON: {"schema": {"type": "object"}}},
                }
            },
        },
    ),
}


def _redirects(state: AppState) -> bool:
    """Whether downloads answer 307 to presigned URLs (outputs in S3, a URL lifetime)."""
    settings = state.settings
    return isinstance(settings.output_dir, S3Location) and settings.output_url_ttl_seconds > 0


def embedded_json_schema(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """A standalone JSON Schema as it goes under ``components/schemas/{name}``.

    Only what ties it to its own file changes: ``$id`` and ``$schema`` go (inside the
    document, the base of a ``#...`` reference is the document, and the dialect is OpenAPI
    3.1's, which is JSON Schema 2020-12), and each internal reference ``#/...`` (into
    ``$defs`` or anywhere else) is rebased onto ``#/components/schemas/{name}/...``.
    ``$defs`` stay where they are.

    Parameters:
      schema: the JSON Schema (not modified).
      name: its name under ``components/schemas``.
    """
    base = f"#/components/schemas/{name}"

    def rebase(node: Any) -> Any:
        if isinstance(node, list):
            return [rebase(item) for item in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#"):
                out[key] = base + value[1:]
            elif key in _DATA_KEYWORDS:
                out[key] = copy.deepcopy(value)
            elif key in _SCHEMA_MAPS and isinstance(value, dict):
                out[key] = {prop: rebase(sub) for prop, sub in value.items()}
            else:
                out[key] = rebase(value)
        return out

    embedded: dict[str, Any] = rebase(schema)
    embedded.pop("$id", None)
    embedded.pop("$schema", None)
    return embedded


def openapi_document(app: Flask, state: AppState, *, server_url: str = "") -> dict[str, Any]:
    """The OpenAPI document of the API mounted on ``app``.

    Parameters:
      app: the app the blueprint is mounted on.
      state: its dramatiq-preview state (settings, authorize hook, mount point).
      server_url: the ``SCRIPT_NAME`` the app is served under (``request.script_root``).
    """
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="dramatiq-preview",
        version=__version__,
        openapi_version="3.1.0",
        plugins=[plugin],
        info={
            "description": (
                "Image and PDF previews rendered in Dramatiq background jobs. Every answer "
                'is JSON, errors included: `{"error": CODE, "message": ...}`.'
            )
        },
        servers=[{"url": f"{server_url}{state.url_prefix or ''}"}],
    )
    protected = state.settings.api_token is not None
    if protected:
        spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})

    prefix = state.url_prefix or ""
    rules = sorted(
        (r for r in app.url_map.iter_rules() if r.endpoint.startswith(state.endpoint_prefix)),
        key=lambda r: r.rule,
    )
    for rule in rules:
        name = rule.endpoint[len(state.endpoint_prefix) :]
        if name not in OPERATIONS:
            continue
        # apispec resolves schemas in place: work on a copy of the module-level templates.
        method, parameters, template = copy.deepcopy(OPERATIONS[name])
        operation = template
        if name != "worker_health":
            if protected:
                operation["security"] = [{"bearerAuth": []}]
                operation["responses"]["401"] = {
                    **_error("Missing or wrong bearer token (`unauthorized`)."),
                    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
                }
            if state.authorize is not None:
                operation["responses"]["403"] = _error("The host refused access (`forbidden`).")
        if name == "job_output" and _redirects(state):
            operation["responses"]["307"] = copy.deepcopy(_REDIRECT)
        path = _RULE_ARG.sub(
            lambda m: "{" + _PARAMETER_NAMES.get(m.group(1), m.group(1)) + "}",
            rule.rule[len(prefix) :],
        )
        spec.path(path=path, operations={method: operation}, parameters=parameters)
    document = spec.to_dict()
    # Added after apispec, which would otherwise walk the schema looking for marshmallow.
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    if JOB_REQUEST in schemas:  # pragma: no cover - a marshmallow schema of the same name
        raise RuntimeError(f"components/schemas/{JOB_REQUEST} is taken")
    schemas[JOB_REQUEST] = embedded_json_schema(_job_schema(state), JOB_REQUEST)
    return document


def _job_schema(state: AppState) -> dict[str, Any]:
    """The payload schema as this deployment takes it: without ``webhook`` when webhooks are
    off (``PREVIEW_WEBHOOK_ALLOWED_HOSTS`` unset), where a payload with one is a 422."""
    schema = load_schema()
    webhook = schema["properties"].get("webhook")
    if webhook is not None and not state.settings.webhook_allowed_hosts:
        del schema["properties"]["webhook"]
    elif webhook is not None:
        hosts = ", ".join(sorted(state.settings.webhook_allowed_hosts))
        webhook["description"] += f" Allowed hosts here: {hosts}."
    return schema

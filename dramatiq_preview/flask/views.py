"""The views of the HTTP API (contract §5): routes, authentication and JSON errors.

Every response under the prefix is JSON, errors included (``{"error", "message", ...}``),
except the rendered files and the Prometheus exposition.  Unmatched URLs under the prefix
(404, 405) never reach blueprint error handlers, so an app-level ``before_request`` hook,
filtered by path, answers them; the host's own URLs are left alone.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, NoReturn

from flask import Blueprint, Response, current_app, g, request, send_file, url_for
from werkzeug.exceptions import ClientDisconnected, HTTPException, default_exceptions
from werkzeug.routing import RequestRedirect

from ..errors import (
    BrokerUnavailable,
    InvalidPayload,
    JobConflict,
    JobNotFound,
    PreviewError,
    StateStoreUnavailable,
)
from ..health import check_health
from ..models import CONTENT_TYPES
from ..validation import ecma_regex
from .appstate import AppState, get_state
from .openapi import openapi_document
from .schemas import CANCEL_RESPONSE, JOB_ID_PATTERN, STATUS, SUBMIT_RESPONSE

logger = logging.getLogger("dramatiq_preview.flask")

#: How long clients may reuse a rendered file before revalidating it with its ETag.
OUTPUT_MAX_AGE = 3600
#: Seconds a client should wait after a 503 before trying again.
RETRY_AFTER = 5

_JOB_ID_RE = ecma_regex(JOB_ID_PATTERN)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answer of the API: HTTP status, stable code, message and extra keys."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra


def add_routes(bp: Blueprint) -> None:
    """Add the routes, hooks and error handlers of the API to ``bp``.

    :func:`~.extension.create_blueprint` makes the blueprint (and its registration hook);
    the rest of the API is here.
    """
    bp.add_url_rule("/job", "submit_job", submit_job, methods=["POST"])
    bp.add_url_rule("/job/<job_id>/status", "job_status", job_status, methods=["GET"])
    bp.add_url_rule("/job/<job_id>/cancel", "cancel_job", cancel_job, methods=["POST"])
    bp.add_url_rule("/job/<job_id>/outputs/<int:index>", "job_output", job_output, methods=["GET"])
    bp.add_url_rule("/worker/health", "worker_health", worker_health, methods=["GET"])
    bp.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])
    bp.add_url_rule("/openapi.json", "openapi", openapi, methods=["GET"])
    bp.before_request(_authenticate)
    bp.before_app_request(_before_app_request)
    bp.after_app_request(_after_app_request)
    # Code-specific handlers, because Flask looks up handlers by code (blueprint, then app)
    # before it looks them up by class: a host's app-level 404 handler would otherwise win.
    for code in default_exceptions:
        bp.register_error_handler(code, _on_http_exception)
    bp.register_error_handler(HTTPException, _on_http_exception)
    bp.register_error_handler(ApiError, _on_api_error)
    bp.register_error_handler(PreviewError, _on_preview_error)
    bp.register_error_handler(Exception, _on_unexpected_error)


# --- helpers ------------------------------------------------------------------------------


def _state() -> AppState:
    state = get_state(current_app._get_current_object())  # type: ignore[attr-defined]
    if state is None:  # pragma: no cover - the blueprint always creates it
        raise RuntimeError("dramatiq-preview is not initialised on this app")
    return state


def json_response(body: Any, status: int = 200, headers: Any = None) -> Response:
    """A JSON response independent of the host's JSON provider settings."""
    return current_app.response_class(
        json.dumps(body), status=status, headers=headers, mimetype="application/json"
    )


def error_response(
    status: int, code: str, message: str, headers: Any = None, **extra: Any
) -> Response:
    return json_response({"error": code, "message": message, **extra}, status, headers)


def _short(job_id: str) -> str:
    return repr(job_id if len(job_id) <= 80 else job_id[:80] + "...")


def _checked_job_id(job_id: str) -> str:
    # A jobId the schema refuses cannot exist; answer without asking Redis.
    if not _JOB_ID_RE.search(job_id):
        raise ApiError(404, "not_found", f"no job with id {_short(job_id)}")
    return job_id


def _endpoint_name() -> str:
    rule = request.url_rule
    if rule is None or rule.endpoint is None:
        return "unmatched"
    return str(rule.endpoint).rsplit(".", 1)[-1]


# --- hooks --------------------------------------------------------------------------------


def _before_app_request() -> Response | None:
    state = get_state(current_app._get_current_object())  # type: ignore[attr-defined]
    if state is None or not state.under_prefix(request.path):
        return None
    g._preview_started = time.perf_counter()
    exc = request.routing_exception
    if isinstance(exc, HTTPException):
        # 404, 405, and the 308 werkzeug answers for "//" or a missing slash: all JSON.
        return _on_http_exception(exc)
    return None


def _after_app_request(response: Response) -> Response:
    started = g.pop("_preview_started", None)
    if started is None:
        return response
    if request.method == "OPTIONS" and response.status_code == 200 and not response.get_data():
        # Flask's automatic OPTIONS answer: the same Allow list, as JSON like every answer.
        allow = [m.strip() for m in response.headers.get("Allow", "").split(",") if m.strip()]
        response.set_data(json.dumps({"allow": allow}))
        response.mimetype = "application/json"
    method = request.method if request.method in _METHODS else "OTHER"
    try:
        _state().metrics.observe(
            endpoint=_endpoint_name(),
            method=method,
            status=response.status_code,
            seconds=time.perf_counter() - started,
        )
    except Exception:
        # Metrics must never break an answer; the failure still shows in the log.
        logger.exception("recording request metrics failed")
    return response


def _authenticate() -> None:
    if request.method == "OPTIONS" or _endpoint_name() == "worker_health":
        return
    state = _state()
    token = state.settings.api_token
    if token is not None:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        given = credentials.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, token.encode("utf-8")):
            challenge = 'Bearer realm="dramatiq-preview"'
            if credentials:
                challenge += ', error="invalid_token"'
            raise ApiError(
                401,
                "unauthorized",
                "this API needs an 'Authorization: Bearer <token>' header with a valid token",
                headers={"WWW-Authenticate": challenge},
            )
    if state.authorize is not None and not state.authorize(request):
        raise ApiError(403, "forbidden", "you are not allowed to use this API")


# --- error handlers -----------------------------------------------------------------------


def _on_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _ERROR_CODES.get(status) or re.sub(r"\W+", "_", (exc.name or "error").lower())
    headers = [(k, v) for k, v in exc.get_headers(request.environ) if k.lower() != "content-type"]
    message = exc.description or exc.name
    if isinstance(exc, RequestRedirect):
        headers.append(("Location", exc.new_url))
        message = f"this resource lives at {exc.new_url}"
    if status == 503:
        headers.append(("Retry-After", str(RETRY_AFTER)))
    return error_response(status, code, message, headers)


def _on_api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.headers, **exc.extra)


def _on_preview_error(exc: PreviewError) -> Response:
    if isinstance(exc, JobNotFound):
        return error_response(404, "not_found", f"no job with id {_short(exc.job_id)}")
    if isinstance(exc, JobConflict):
        return error_response(409, "conflict", exc.message)
    if isinstance(exc, InvalidPayload):
        details = [i.to_dict() for i in exc.issues]
        return error_response(422, "validation_error", _INVALID, details=details)
    if isinstance(exc, (StateStoreUnavailable, BrokerUnavailable)):
        logger.warning("answering 503: %s", exc.message)
        headers = {"Retry-After": str(RETRY_AFTER)}
        return error_response(503, "unavailable", exc.message, headers)
    return _on_unexpected_error(exc)


def _on_unexpected_error(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):  # pragma: no cover - handled by code above
        return _on_http_exception(exc)
    logger.error("unexpected error in %s %s", request.method, request.path, exc_info=exc)
    return error_response(
        500, "internal_error", "an unexpected error occurred; the server log has the details"
    )


_INVALID = "the job payload does not match schemas/preview-job.schema.json"


# --- views --------------------------------------------------------------------------------


def _read_body(limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes whatever Content-Length says."""
    stream = request.stream
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            chunk = stream.read(min(65536, limit + 1 - total))
        except (OSError, ClientDisconnected):  # a malformed chunked body, a client gone
            raise ApiError(400, "invalid_json", "the request body could not be read") from None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            _too_large(limit)


def _too_large(limit: int) -> NoReturn:
    raise ApiError(
        413, "payload_too_large", f"the request body is larger than {limit} bytes", limit=limit
    )


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def submit_job() -> Response:
    """POST /job: validate, de-duplicate, record and enqueue one job."""
    state = _state()
    limit = state.settings.max_payload_bytes
    # Size first, before anything reads or parses the body.
    if request.content_length is not None and request.content_length > limit:
        _too_large(limit)
    if not request.is_json:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the job as JSON with 'Content-Type: application/json'",
        )
    body = _read_body(limit)
    try:
        payload = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
        raise ApiError(
            400, "invalid_json", f"the request body is not valid JSON: {reason[:200]}"
        ) from None
    # Validation is the JSON Schema's, inside submit(): the check the CLI and the worker
    # make, with the same messages.  The OpenAPI document embeds that same schema.
    submission = state.client.submit(payload)
    status_url = url_for(".job_status", job_id=submission.job_id)
    body_out: dict[str, Any] = {
        "jobId": submission.job_id,
        "state": submission.state,
        "statusUrl": status_url,
    }
    if submission.duplicate:
        body_out["duplicate"] = True
    return json_response(
        SUBMIT_RESPONSE.dump(body_out),
        200 if submission.duplicate else 202,
        {"Location": status_url},
    )


def job_status(job_id: str) -> Response:
    """GET /job/{jobId}/status."""
    status = _state().client.status(_checked_job_id(job_id))
    result = status.get("result")
    if result:
        for index, output in enumerate(result.get("outputs") or []):
            output["url"] = url_for(".job_output", job_id=job_id, index=index)
    return json_response(STATUS.dump(status))


def cancel_job(job_id: str) -> Response:
    """POST /job/{jobId}/cancel."""
    answer = _state().client.cancel(_checked_job_id(job_id))
    return json_response(CANCEL_RESPONSE.dump(answer), 202)


def job_output(job_id: str, index: int) -> Response:
    """GET /job/{jobId}/outputs/{index}: a rendered file, only from PREVIEW_OUTPUT_DIR."""
    state = _state()
    status = state.client.status(_checked_job_id(job_id))
    if status["state"] != "succeeded":
        raise ApiError(
            404,
            "not_found",
            f"job {_short(job_id)} has no outputs: it is {status['state']}, not succeeded",
        )
    outputs = (status.get("result") or {}).get("outputs") or []
    if index >= len(outputs):
        raise ApiError(404, "not_found", f"job {_short(job_id)} has {len(outputs)} output(s)")
    entry = outputs[index]
    missing = ApiError(404, "not_found", f"output {index} of job {_short(job_id)} is missing")
    path = entry.get("path") if isinstance(entry, dict) else None
    if not isinstance(path, str) or "\0" in path:
        raise missing
    root = Path(os.path.realpath(state.settings.output_dir))
    target = Path(os.path.realpath(root / path))
    # realpath resolves "..", absolute paths and symlinks: whatever the record says, only
    # a regular file inside this job's directory of PREVIEW_OUTPUT_DIR is ever served.
    if not target.is_relative_to(root / job_id) or not target.is_file():
        raise missing
    kind = entry.get("format")
    mimetype = CONTENT_TYPES.get(kind if isinstance(kind, str) else "", "application/octet-stream")
    response = send_file(target, mimetype=mimetype, conditional=True, etag=True)
    if response.status_code == 412:
        # Werkzeug sets 412 for a failed If-Match but keeps the file as the body.
        response.close()
        raise ApiError(
            412, "precondition_failed", "If-Match does not match the output's current ETag"
        )
    response.cache_control.no_cache = None
    response.cache_control.public = False
    response.cache_control.private = True
    response.cache_control.max_age = OUTPUT_MAX_AGE
    return response


def worker_health() -> Response:
    """GET /worker/health: open even when a token is configured."""
    state = _state()
    try:
        report = check_health(state.settings, state.client.broker, timeout=1.0)
    except Exception as exc:
        logger.error("the health check failed", exc_info=exc)
        body = {"status": "down", "message": f"the health check failed: {type(exc).__name__}"}
        return json_response(body, 503)
    return json_response(report.body, report.http_status)


def metrics() -> Response:
    """GET /metrics: the Prometheus exposition of the web process (OpenMetrics on request)."""
    body, content_type = _state().metrics.exposition(request.headers.get("Accept"))
    return current_app.response_class(body, content_type=content_type)


def openapi() -> Response:
    """GET /openapi.json: the OpenAPI document (cached per ``SCRIPT_NAME`` and mount point)."""
    state = _state()
    key = (request.script_root, state.url_prefix or "")
    document = state.openapi_cache.get(key)
    if document is None:
        document = openapi_document(current_app, state, server_url=request.script_root)
        state.openapi_cache[key] = document
    return json_response(document)

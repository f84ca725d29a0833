"""The views of the HTTP API (contract §5 and §10): routes, authentication and JSON errors.

Every response under the prefix is JSON, errors included (``{"error", "message", ...}``),
except the rendered files, the event stream and the Prometheus exposition.  Unmatched URLs
under the prefix (404, 405) never reach blueprint error handlers, so an app-level
``before_request`` hook, filtered by path, answers them; the host's own URLs are left alone.

Nothing a client sends decides where a URL we answer with points: the URLs we build are
paths that start with one ``/`` (``SCRIPT_NAME`` may come from a request header), and a URL
werkzeug would redirect (``//`` in the path) is a 404 instead of a redirect to the ``Host``
the client named.  The one absolute URL we answer with, the presigned S3 URL of an output's
307, is built from the AWS configuration (endpoint, bucket) and the job's own key.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    request,
    send_file,
    stream_with_context,
    url_for,
)
from werkzeug.datastructures import ContentRange
from werkzeug.exceptions import (
    ClientDisconnected,
    HTTPException,
    RequestedRangeNotSatisfiable,
    default_exceptions,
)
from werkzeug.http import parse_date, parse_etags, quote_etag
from werkzeug.routing import RequestRedirect

from ..dlq import DeadLetters, dead_letters
from ..errors import (
    BrokerUnavailable,
    InvalidPayload,
    JobConflict,
    JobNotFound,
    PreviewError,
    StateStoreUnavailable,
    StorageError,
    StorageForbidden,
)
from ..health import check_health
from ..models import CONTENT_TYPES
from ..state import STATES
from ..storage import Storage, StoredObject, open_storage
from ..validation import ecma_regex
from ..watch import JobWatch, KeepAlive, Version
from .appstate import AppState, get_state
from .openapi import openapi_document
from .schemas import (
    CANCEL_RESPONSE,
    DEAD_LETTERS,
    JOB_ID_PATTERN,
    JOB_LIST,
    PURGE_RESPONSE,
    REQUEUE_RESPONSE,
    STATUS,
)
from .session import CSRF_HEADER, DASHBOARD_ENDPOINTS, SAFE_METHODS, csrf_ok, signed_in

logger = logging.getLogger("dramatiq_preview.flask")

#: How long clients may reuse a rendered file before revalidating it with its ETag.
OUTPUT_MAX_AGE = 3600
#: ``GET /jobs``: how many jobs without ``limit``, and the most one request may ask for.
JOBS_DEFAULT_LIMIT = 50
JOBS_MAX_LIMIT = 200
#: ``GET /dlq``: how many dead letters (the newest failures) without ``limit``, and the most
#: one request may ask for.
DLQ_DEFAULT_LIMIT = 200
DLQ_MAX_LIMIT = 1000
#: Seconds a client should wait after a 503 before trying again.
RETRY_AFTER = 5
#: The ``retry:`` of the event stream: milliseconds a browser waits before reconnecting.
EVENTS_RETRY_MS = 2000
#: Whether this process warned that a sync worker serves event streams (once per process).
_sync_worker_warned = False

_JOB_ID_RE = ecma_regex(JOB_ID_PATTERN)
#: More digits than any output index can have (a job has at most 8 outputs).
_MAX_INDEX_DIGITS = 6
#: Characters kept as they are in the ``SCRIPT_NAME`` part of the URLs we build: RFC 3986's
#: ``pchar`` and ``/``, and ``%``, because proxies send prefixes already percent-encoded.
_PATH_SAFE = "/%!$&'()*+,;=:@-._~"
#: One byte range, the only kind we serve (RFC 9110 14.1.1; the unit is case-insensitive).
_BYTE_RANGE = re.compile(r"bytes=[ \t]*(?:([0-9]+)-([0-9]*)|-([0-9]+))[ \t]*", re.IGNORECASE)
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
    bp.add_url_rule("/job/<job_id>/events", "job_events", job_events, methods=["GET"])
    # A string, not <int:>: werkzeug's int converter also takes fullwidth or Arabic-Indic digits.
    bp.add_url_rule("/job/<job_id>/outputs/<index>", "job_output", job_output, methods=["GET"])
    bp.add_url_rule("/jobs", "list_jobs", list_jobs, methods=["GET"])
    bp.add_url_rule("/dlq", "dead_letters", list_dead_letters, methods=["GET"])
    bp.add_url_rule(
        "/dlq/<job_id>/requeue", "requeue_dead_letter", requeue_dead_letter, methods=["POST"]
    )
    bp.add_url_rule("/dlq/purge", "purge_dead_letters", purge_dead_letters, methods=["POST"])
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
    # Looked up once per request (by the before-request hook, for requests under the prefix).
    state: AppState | None = g.get("_preview_state")
    if state is None:
        state = get_state(current_app._get_current_object())  # type: ignore[attr-defined]
        if state is None:  # pragma: no cover - the blueprint always creates it
            raise RuntimeError("dramatiq-preview is not initialised on this app")
        g._preview_state = state
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


def _script_root() -> str:
    """``SCRIPT_NAME`` as the start of a path on this host: ``""`` or ``"/a/b"``.

    SCRIPT_NAME can come from the client (a ``SCRIPT_NAME`` header under gunicorn,
    ``X-Forwarded-Prefix`` through ProxyFix).  Leading slashes collapse into one and
    backslashes, spaces and control characters are percent-encoded, so it can never start
    a URL like ``//evil.example/...`` or ``/\\evil.example/...``, which clients read as
    another host.
    """
    root = quote(request.script_root, safe=_PATH_SAFE).strip("/")
    return "/" + root if root else ""


def local_url(endpoint: str, **values: Any) -> str:
    """``url_for(endpoint, **values)`` as a path on this host, whatever SCRIPT_NAME says."""
    url = url_for(endpoint, **values)
    root = request.script_root
    # url_for puts SCRIPT_NAME in front as it is; put the safe one there instead.
    if url.startswith(root + "/"):
        url = _script_root() + url[len(root) :]
    return url


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
    g._preview_state = state
    exc = request.routing_exception
    if isinstance(exc, HTTPException):
        # 404, 405, and the 308 werkzeug answers for "//" (a 404 here): all JSON.
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
    if g.pop("_preview_cookie_auth", False):
        # Read with the session cookie: no cache may keep the answer, nor give it to a
        # request without that cookie.
        response.vary.add("Cookie")
        if response.mimetype == "application/json":
            response.headers["Cache-Control"] = "no-store"
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
    """Who may use the API: the bearer token, or the dashboard's session cookie (§11).

    With ``PREVIEW_API_TOKEN`` set, a request whose ``Authorization`` header has the
    ``Bearer`` scheme is judged by that header alone.  Any other request (no header, or
    another scheme, such as the ``Basic`` credentials a browser resends to a proxy that asked
    for them) may present the dashboard's session cookie (when the dashboard is on), and a
    state-changing one must then also carry its page's CSRF token in ``X-CSRF-Token``
    (session.py).  A state-changing request that no valid bearer token authenticates must
    also come from this origin, as browsers tell (:func:`_refuse_cross_origin`).  The host's
    ``authorize`` hook decides after that.  The health check is open, and the dashboard's
    pages answer for themselves (they show the sign-in form and no job data until the
    operator signs in: dashboard.py).
    """
    endpoint = _endpoint_name()
    if request.method == "OPTIONS" or endpoint == "worker_health":
        return
    state = _state()
    token = state.settings.api_token
    header = request.headers.get("Authorization")
    scheme, _, credentials = (header or "").partition(" ")
    bearer = header is not None and scheme.lower() == "bearer"
    if endpoint in DASHBOARD_ENDPOINTS:
        if request.method not in SAFE_METHODS:
            _refuse_cross_origin()
        return
    if token is not None and not bearer and state.settings.dashboard and signed_in(request):
        if request.method not in SAFE_METHODS:
            _refuse_cross_origin()
            if not csrf_ok(request):
                raise ApiError(
                    403,
                    "forbidden",
                    "a request signed in with the dashboard's session cookie that changes "
                    f"something needs the page's CSRF token in the {CSRF_HEADER} header",
                )
        g._preview_cookie_auth = True
    elif token is not None:
        # Only the spaces and tabs of RFC 9110's OWS go: str.strip() would also drop a
        # non-breaking space or other Unicode whitespace after a right token.
        given = credentials.strip(" \t").encode("utf-8", "surrogateescape")
        if not bearer or not hmac.compare_digest(given, token.encode("utf-8")):
            challenge = 'Bearer realm="dramatiq-preview"'
            if bearer and credentials:
                challenge += ', error="invalid_token"'
            raise ApiError(
                401,
                "unauthorized",
                "this API needs an 'Authorization: Bearer <token>' header with a valid token",
                headers={"WWW-Authenticate": challenge},
            )
    elif request.method not in SAFE_METHODS:
        # No token configured: nothing authenticates the request, so a browser must at
        # least not be sending it on behalf of another site's page.
        _refuse_cross_origin()
    if state.authorize is not None and not state.authorize(request):
        raise ApiError(403, "forbidden", "you are not allowed to use this API")


#: The ``Sec-Fetch-Site`` values of a request this origin's own pages (or the user, typing
#: a URL or using a bookmark) made.
_SAME_ORIGIN_SITES = frozenset({"same-origin", "none"})


def _refuse_cross_origin() -> None:
    """Refuse a state-changing request another site's page made a browser send (CSRF).

    The approach of Go 1.25's ``http.CrossOriginProtection``: a browser says where a
    request comes from in ``Sec-Fetch-Site`` (every current browser), else in ``Origin``.
    ``Sec-Fetch-Site`` present and not ``same-origin`` or ``none``: refused.  Without it,
    an ``Origin`` whose host is not the request's ``Host`` (``null`` included): refused.
    A request with neither header (curl, scripts, server-side clients) is not a browser's
    and goes through.  Only the host is compared, not the scheme, as Go does: behind a
    TLS-terminating proxy the app may see ``http`` while the browser's origin is ``https``.

    Raises:
      ApiError: 403 ``forbidden``.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        if site.strip(" \t").lower() in _SAME_ORIGIN_SITES:
            return
        raise ApiError(
            403,
            "forbidden",
            f"a cross-origin request (Sec-Fetch-Site: {site[:40]}) may not change anything",
        )
    origin = request.headers.get("Origin")
    if origin is None:
        return
    parsed = urlsplit(origin.strip(" \t"))
    if parsed.scheme in ("http", "https") and parsed.netloc.lower() == request.host.lower():
        return
    raise ApiError(
        403,
        "forbidden",
        f"a cross-origin request (Origin: {origin[:100]}) may not change anything",
    )


# --- error handlers -----------------------------------------------------------------------


def _on_http_exception(exc: HTTPException) -> Response:
    if isinstance(exc, RequestRedirect):
        # werkzeug redirects "/api/preview//job" to an absolute URL built from the Host
        # header, before any authentication: answer without sending anybody anywhere.
        return error_response(
            404,
            "not_found",
            "no route at this URL; paths under this API take single slashes and no "
            "trailing slash, and are never redirected",
        )
    status = exc.code or 500
    code = _ERROR_CODES.get(status) or re.sub(r"\W+", "_", (exc.name or "error").lower())
    headers = [(k, v) for k, v in exc.get_headers(request.environ) if k.lower() != "content-type"]
    message = exc.description or exc.name
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
        except ClientDisconnected:
            raise ApiError(400, "invalid_json", "the request body could not be read") from None
        except HTTPException:
            raise  # 413 for a chunked body over the host's MAX_CONTENT_LENGTH
        except Exception as exc:
            # A malformed chunked body: werkzeug's server raises OSError, gunicorn its own
            # InvalidChunkSize, ChunkMissingTerminator..., which are not OSErrors.  Whatever
            # the server raises, the body could not be read: the client's error, not ours.
            logger.info("unreadable request body (%s)", type(exc).__name__)
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


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 8259 leaves duplicate names to the parser (Python keeps the last, others the
    # first): refused, so that a proxy or WAF in front never reads another payload than ours.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r} in an object")
            seen.add(key)
    return obj


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
        payload = json.loads(
            body.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique_keys
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
        raise ApiError(
            400, "invalid_json", f"the request body is not valid JSON: {reason[:200]}"
        ) from None
    # Validation is the JSON Schema's, inside submit(): the check the CLI and the worker
    # make, with the same messages.  The OpenAPI document embeds that same schema.
    submission = state.client.submit(payload)
    status_url = local_url(".job_status", job_id=submission.job_id)
    # Already the shape of SUBMIT_RESPONSE (the OpenAPI document's), strings and a bool:
    # its dump would give the same dict back.
    body_out: dict[str, Any] = {
        "jobId": submission.job_id,
        "state": submission.state,
        "statusUrl": status_url,
    }
    if submission.duplicate:
        body_out["duplicate"] = True
    return json_response(body_out, 200 if submission.duplicate else 202, {"Location": status_url})


def job_status(job_id: str) -> Response:
    """GET /job/{jobId}/status."""
    status = _state().client.status(_checked_job_id(job_id))
    return json_response(_public_status(job_id, status))


def _public_status(job_id: str, status: dict[str, Any]) -> Any:
    """The status object as the API sends it: each output with its download ``url``."""
    result = status.get("result")
    if result:
        for index, output in enumerate(result.get("outputs") or []):
            output["url"] = local_url(".job_output", job_id=job_id, index=index)
    return STATUS.dump(status)


def job_events(job_id: str) -> Response:
    """GET /job/{jobId}/events: the job's status as Server-Sent Events (contract §10).

    The job's events are followed with :class:`~dramatiq_preview.watch.JobWatch`, opened
    here, before the response starts, so that an unknown job is a real 404 and Redis down a
    real 503.  The stream sends ``retry:``, then one ``status`` event per change (the
    current status first, unless ``Last-Event-ID`` says the client has it), a comment every
    ``PREVIEW_EVENTS_KEEPALIVE_SECONDS`` without one, and ends after a final state's event
    or after ``PREVIEW_EVENTS_MAX_SECONDS`` from the request (a browser then reconnects
    with ``Last-Event-ID``).  A client that already has the final event gets 204, which
    stops an EventSource from reconnecting.
    """
    _warn_if_sync_worker()
    state = _state()
    settings = state.settings
    watch = JobWatch(
        state.client.store,
        _checked_job_id(job_id),
        last_seen=_last_event_id(),
        max_seconds=settings.events_max_seconds,
        keepalive_seconds=settings.events_keepalive_seconds,
    )
    try:
        watch.open()
    except TimeoutError:
        # The stream's whole lifetime went by without Redis confirming the subscription.
        raise StateStoreUnavailable(
            "the state store (Redis) is unavailable: no answer to SUBSCRIBE"
        ) from None
    try:
        if watch.done:
            watch.close()
            nothing = current_app.response_class(status=204)
            del nothing.headers["Content-Type"]
            return nothing
        response = current_app.response_class(
            stream_with_context(_event_stream(watch)),
            mimetype="text/event-stream",
            # X-Accel-Buffering: nginx would otherwise hold events back in its buffer.
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        # Also when the server never starts the body (the client left at once).
        response.call_on_close(watch.close)
        return response
    except BaseException:
        watch.close()
        raise


def _warn_if_sync_worker() -> None:
    """Log once per process that a sync worker (one request at a time per process, e.g.
    gunicorn's default worker class) serves event streams: one stream pins the process for
    up to ``PREVIEW_EVENTS_MAX_SECONDS``, and gunicorn's ``--timeout`` kills it mid-stream."""
    global _sync_worker_warned
    environ = request.environ
    if _sync_worker_warned or environ.get("wsgi.multithread", True):
        return
    if not environ.get("wsgi.multiprocess", False):
        return
    _sync_worker_warned = True
    logger.warning(
        "event streams (GET .../job/{jobId}/events) are served by a single-threaded worker "
        "process (%s): each open stream pins a whole worker, and a sync worker's timeout "
        "may kill it mid-stream; use threaded or gevent workers (docs/events.md, "
        "'Web servers: what one stream holds')",
        environ.get("SERVER_SOFTWARE", "unknown server"),
    )


def _last_event_id() -> Version | None:
    """The version of the last event the client has, or None.

    The ``Last-Event-ID`` header (an EventSource sends it when it reconnects) wins over the
    ``lastEventId`` query parameter (for a page that resumes a stream itself: its URL keeps
    the parameter on reconnects, while the header is the newer id).  An event id is
    ``<incarnation>-<seq>``; anything else (the plain ``<seq>`` ids of earlier releases
    included) names no event of the current record: the client gets the current status.
    """
    text = request.headers.get("Last-Event-ID")
    if text is None:
        text = request.args.get("lastEventId")
    if text is None:
        return None
    return Version.parse(text.strip(" \t"))


def _event_stream(watch: JobWatch) -> Iterator[str]:
    """The body of :func:`job_events`: ``text/event-stream`` lines for ``watch``'s items."""
    job_id = watch.job_id
    try:
        yield f"retry: {EVENTS_RETRY_MS}\n\n"
        for item in watch:
            if isinstance(item, KeepAlive):
                yield ": keep-alive\n\n"
                continue
            data = json.dumps(_public_status(job_id, item.status))
            yield f"id: {item.id}\nevent: status\ndata: {data}\n\n"
    except JobNotFound:
        # The record expired or was deleted: the stream ends, and a reconnect gets a 404.
        return
    except StateStoreUnavailable as exc:
        # Too late for a 503: end the stream; the client's reconnect gets one.
        logger.warning("ending the event stream of job %s: %s", job_id, exc.message)
    finally:
        watch.close()


def cancel_job(job_id: str) -> Response:
    """POST /job/{jobId}/cancel."""
    answer = _state().client.cancel(_checked_job_id(job_id))
    return json_response(CANCEL_RESPONSE.dump(answer), 202)


def list_jobs() -> Response:
    """GET /jobs?state=S&limit=N: the newest jobs (contract §11)."""
    state = request.args.get("state")
    limit_text = request.args.get("limit", str(JOBS_DEFAULT_LIMIT))
    issues = []
    if state is not None and state not in STATES:
        issues.append({"path": "query/state", "message": f"must be one of {', '.join(STATES)}"})
    limit = _bounded_int(limit_text) if limit_text.isascii() and limit_text.isdigit() else 0
    if not 1 <= limit <= JOBS_MAX_LIMIT:
        issues.append(
            {"path": "query/limit", "message": f"must be an integer from 1 to {JOBS_MAX_LIMIT}"}
        )
    if issues:
        raise ApiError(422, "validation_error", "the query parameters are invalid", details=issues)
    jobs = _state().client.recent_jobs(state=state, limit=limit)
    return json_response(JOB_LIST.dump({"jobs": [_public_status(j["jobId"], j) for j in jobs]}))


def _dead_letters() -> DeadLetters:
    client = _state().client
    return dead_letters(client.broker, client.store)


def list_dead_letters() -> Response:
    """GET /dlq?limit=N: the newest ``N`` dead messages of our lanes, oldest failure first,
    and how many there are in all (contract §11)."""
    limit_text = request.args.get("limit", str(DLQ_DEFAULT_LIMIT))
    limit = _bounded_int(limit_text) if limit_text.isascii() and limit_text.isdigit() else 0
    if not 1 <= limit <= DLQ_MAX_LIMIT:
        message = f"must be an integer from 1 to {DLQ_MAX_LIMIT}"
        raise ApiError(
            422,
            "validation_error",
            "the query parameters are invalid",
            details=[{"path": "query/limit", "message": message}],
        )
    listing = _dead_letters().listing(limit)
    letters = [letter.to_dict() for letter in listing.letters]
    return json_response(DEAD_LETTERS.dump({"deadLetters": letters, "total": listing.total}))


def requeue_dead_letter(job_id: str) -> Response:
    """POST /dlq/{jobId}/requeue: the job's dead messages back on their lanes; 404 when it
    has none."""
    try:
        replayed = _dead_letters().requeue(_checked_job_id(job_id))
    except JobNotFound:
        raise ApiError(404, "not_found", f"job {_short(job_id)} has no dead letter") from None
    except InvalidPayload as exc:
        # Its record expired and the payload is not valid any more: it stays dead.
        raise ApiError(409, "conflict", f"the dead letter cannot be requeued: {exc}") from None
    status = _state().client.store.get(job_id)
    body = {"jobId": job_id, "state": status["state"] if status else None}
    return json_response(REQUEUE_RESPONSE.dump({**body, "requeued": len(replayed)}), 202)


def purge_dead_letters() -> Response:
    """POST /dlq/purge: delete every dead message of our lanes."""
    return json_response(PURGE_RESPONSE.dump({"purged": _dead_letters().purge()}))


def _checked_index(job_id: str, text: str) -> int:
    # Only ASCII digits: str.isdigit() and int() also take fullwidth or Arabic-Indic ones.
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_INDEX_DIGITS:
        raise ApiError(404, "not_found", f"job {_short(job_id)} has no output {_short(text)}")
    return int(text)


def job_output(job_id: str, index: str) -> Response:
    """GET /job/{jobId}/outputs/{index}: a rendered file, only from PREVIEW_OUTPUT_DIR.

    Only the job's own outputs are ever served, whatever its record says: on disk, the
    record's ``path`` must resolve (``realpath``) to a regular file inside
    ``PREVIEW_OUTPUT_DIR/{jobId}/``; in S3 it must be exactly ``{jobId}/{name}`` (no ``..``,
    no leading ``/``, no NUL), the key ``prefix/{jobId}/{name}``.  Anything else is a 404.

    Preconditions are answered first, against the file's (or the object's) ETag and
    modification time, as RFC 9110 13.2.2 orders them: a failed If-Match or
    If-Unmodified-Since is a 412, a matching If-None-Match or If-Modified-Since a 304.
    Then an S3 output is answered in one of two ways:

    * ``PREVIEW_OUTPUT_URL_TTL_SECONDS`` > 0: a 307 to a presigned URL valid that long,
      with ``Cache-Control: private, no-store`` (the URL expires; the Range, if any, goes
      to S3 with the redirected request).  HEAD answers the same.
    * ``PREVIEW_OUTPUT_URL_TTL_SECONDS`` = 0: the bytes, streamed from S3 through this
      process chunk by chunk, with the headers and Range handling (206, 416) of a local file.

    An S3 that does not answer, or that refuses our credentials or permissions, is a 503
    ``unavailable`` whose message names the bucket and the refusal.
    """
    state = _state()
    number = _checked_index(_checked_job_id(job_id), index)
    status = state.client.status(job_id)
    if status["state"] != "succeeded":
        raise ApiError(
            404,
            "not_found",
            f"job {_short(job_id)} has no outputs: it is {status['state']}, not succeeded",
        )
    outputs = (status.get("result") or {}).get("outputs") or []
    if number >= len(outputs):
        raise ApiError(404, "not_found", f"job {_short(job_id)} has {len(outputs)} output(s)")
    entry = outputs[number]
    missing = ApiError(404, "not_found", f"output {number} of job {_short(job_id)} is missing")
    path = entry.get("path") if isinstance(entry, dict) else None
    if not isinstance(path, str) or "\0" in path:
        raise missing
    kind = entry.get("format")
    mimetype = CONTENT_TYPES.get(kind if isinstance(kind, str) else "", "application/octet-stream")
    output_dir = state.settings.output_dir
    if not isinstance(output_dir, Path):
        if not _is_own_key(job_id, path):
            raise missing
        try:
            return _s3_output(open_storage(output_dir, state.settings), path, mimetype, missing)
        except StorageForbidden as exc:
            # Retrying will not help until an operator fixes the credentials or the bucket.
            logger.error("answering 503 for output %s: %s", path, exc.message)
            raise ApiError(503, "unavailable", exc.message) from None
        except StorageError as exc:
            logger.warning("answering 503 for output %s: %s", path, exc.message)
            headers = {"Retry-After": str(RETRY_AFTER)}
            raise ApiError(503, "unavailable", exc.message, headers=headers) from None
    root = Path(os.path.realpath(output_dir))
    target = Path(os.path.realpath(root / path))
    # realpath resolves "..", absolute paths and symlinks: whatever the record says, only
    # a regular file inside this job's directory of PREVIEW_OUTPUT_DIR is ever served.
    if not target.is_relative_to(root / job_id) or not target.is_file():
        raise missing
    # Not conditional=True: werkzeug serves a Range before it checks If-Match and
    # If-None-Match, and answers 416 for ranges RFC 9110 says to ignore.
    response = send_file(target, mimetype=mimetype, conditional=False, etag=True)
    response.cache_control.no_cache = None
    response.cache_control.public = False
    response.cache_control.private = True
    response.cache_control.max_age = OUTPUT_MAX_AGE
    try:
        return _conditional(response, target.stat().st_size)
    except BaseException:
        response.close()
        raise


def _is_own_key(job_id: str, path: str) -> bool:
    """Whether ``path`` is exactly ``{job_id}/{name}``: one name inside this job's prefix.

    S3 has no realpath to resolve a record's path with, and keys are plain strings
    (``a/../b`` is a key of its own to S3 but not to every proxy or copy tool), so the path
    must already be the only shape a worker writes.
    """
    head, slash, name = path.partition("/")
    return (
        head == job_id
        and bool(slash)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\0" not in name
    )


def _s3_output(storage: Storage, key: str, mimetype: str, missing: ApiError) -> Response:
    """Answer for the output stored under ``key`` (see :func:`job_output`).

    Raises:
      ApiError: 404 ``missing``, 412, or 503 when the object changed while being read.
      RequestedRangeNotSatisfiable: 416.
      StorageError, StorageForbidden: from storage.
    """
    info = storage.head(key)
    if info is None:
        raise missing
    etag = info.etag
    # HTTP dates have whole seconds: a listing's milliseconds would defeat If-Modified-Since.
    modified = info.modified.replace(microsecond=0) if info.modified is not None else None
    ttl = _state().settings.output_url_ttl_seconds
    location = storage.presigned_url(key, ttl) if ttl > 0 else None
    response = current_app.response_class(status=200)
    if etag is not None:
        response.set_etag(etag)
    response.cache_control.private = True
    if location is not None:
        # The URL expires: neither the client nor a shared cache may keep this answer.
        response.cache_control.no_store = True
    else:
        response.cache_control.max_age = OUTPUT_MAX_AGE
    if _not_modified(etag, modified):
        response.status_code = 304
        return response
    if location is not None:
        response.status_code = 307
        response.headers["Location"] = location
        response.mimetype = "application/json"
        response.set_data(json.dumps({"url": location, "expiresInSeconds": ttl}))
        return response
    response.last_modified = modified
    response.accept_ranges = "bytes"
    response.mimetype = mimetype
    if request.method == "HEAD":
        response.content_length = info.size
        return response
    span = _requested_span(etag, modified, info.size)
    stored = storage.get(key, span)
    if stored is None:
        raise missing
    if stored.info.etag != etag:
        # Rewritten between HEAD and GET (a retried delivery): the checks above and the
        # range were for the old object.  Rare enough to let the client ask again.
        stored.close()
        raise ApiError(
            503,
            "unavailable",
            "the output changed while it was being read; try again",
            headers={"Retry-After": "1"},
        )
    response.response = _chunks_of(stored)
    response.call_on_close(stored.close)  # also when no chunk is ever asked for
    if span is None:
        response.content_length = stored.info.size
    else:
        start, stop = span
        response.status_code = 206
        response.content_length = stop - start
        response.content_range = ContentRange("bytes", start, stop, stored.info.size)
    return response


def _chunks_of(stored: StoredObject) -> Iterator[bytes]:
    # One chunk in memory at a time; the connection to S3 goes back to the pool at the end.
    try:
        yield from stored.chunks
    finally:
        stored.close()


def _conditional(response: Response, size: int) -> Response:
    """Answer a file's preconditions, then its Range, in RFC 9110's order (13.2.2).

    See :func:`_not_modified` and :func:`_requested_span`.  HEAD answers as GET would
    without a Range.

    Raises:
      ApiError: 412 ``precondition_failed``.
      RequestedRangeNotSatisfiable: 416 (its ``Content-Range`` says the size).
    """
    etag, _ = response.get_etag()
    modified = response.last_modified
    if _not_modified(etag, modified):
        _drop_body(response)
        response.status_code = 304
        return response
    response.accept_ranges = "bytes"
    if request.method == "HEAD":
        _drop_body(response)
        return response
    span = _requested_span(etag, modified, size)
    if span is None:
        return response
    start, stop = span
    # werkzeug wraps the file for the range; the only header it sees is the range checked here.
    environ = {"REQUEST_METHOD": "GET", "HTTP_RANGE": f"bytes={start}-{stop - 1}"}
    response.make_conditional(environ, accept_ranges=True, complete_length=size)
    return response


def _not_modified(etag: str | None, modified: datetime | None) -> bool:
    """The preconditions of a file with this ETag and modification time: whether the client
    has it already (304).

    If-Match (or else If-Unmodified-Since) that fails: 412.  If-None-Match (or else
    If-Modified-Since) that matches: True.

    Raises:
      ApiError: 412 ``precondition_failed``.
    """
    headers = request.headers
    if_match = headers.get("If-Match")
    if if_match is not None:
        # Strong comparison; "*" matches any existing file.
        if etag is None or not parse_etags(if_match).contains(etag):
            raise ApiError(
                412, "precondition_failed", "If-Match does not match the output's current ETag"
            )
    elif _later(modified, headers.get("If-Unmodified-Since")):
        raise ApiError(412, "precondition_failed", "the output changed after If-Unmodified-Since")
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        # Weak comparison; "*" matches any existing file.
        return etag is not None and parse_etags(if_none_match).contains_weak(etag)
    since = parse_date(headers.get("If-Modified-Since"))
    return since is not None and modified is not None and modified <= since


def _requested_span(
    etag: str | None, modified: datetime | None, size: int
) -> tuple[int, int] | None:
    """The ``(start, stop)`` to serve of a file of ``size`` bytes, or None for all of it.

    One byte range of a GET, when If-Range (if any) names the current file.  Other units,
    invalid ranges and several ranges are ignored.

    Raises:
      RequestedRangeNotSatisfiable: 416, the range starts past the end (its
        ``Content-Range`` says the size).
    """
    headers = request.headers
    value = headers.get("Range")
    if request.method != "GET" or value is None or size == 0:
        return None
    if not _if_range_holds(headers.get("If-Range"), etag, modified):
        return None
    span = _byte_range(value, size)
    if span is not None and span[0] >= span[1]:
        raise RequestedRangeNotSatisfiable(length=size)
    return span


def _drop_body(response: Response) -> None:
    # No body goes out (304, HEAD) and werkzeug never closes a body it does not send:
    # close the file now, and leave an empty body for after_request hooks that read it.
    body, response.response = response.response, []
    close = getattr(body, "close", None)
    if close is not None:
        close()


def _later(modified: datetime | None, header: str | None) -> bool:
    """Whether the file changed after the HTTP-date ``header`` (an invalid date: no)."""
    date = parse_date(header)
    return date is not None and modified is not None and modified > date


def _if_range_holds(value: str | None, etag: str | None, modified: datetime | None) -> bool:
    """Whether If-Range, if any, names the current file (an ETag compared strongly, or the
    exact Last-Modified date); when it does not, the Range is ignored."""
    if value is None:
        return True
    value = value.strip(" \t")
    if value.startswith(('"', "W/")):
        return etag is not None and value == quote_etag(etag)
    date = parse_date(value)
    return date is not None and modified is not None and date == modified


def _byte_range(value: str, size: int) -> tuple[int, int] | None:
    """The ``(start, stop)`` of a single byte range over ``size`` bytes, or None to ignore it.

    ``start >= stop`` means unsatisfiable: it starts past the end, or asks for no bytes.
    """
    match = _BYTE_RANGE.fullmatch(value)
    if match is None:
        return None
    first, last, suffix = match.groups()
    if suffix is not None:
        length = _bounded_int(suffix)
        return (max(size - length, 0), size) if length else (size, size)
    start = _bounded_int(first)
    if last:
        end = _bounded_int(last)
        if end < start:
            return None  # "2-1" is not a valid range: ignored, like any invalid one
        return (start, min(end + 1, size)) if start < size else (size, size)
    return (start, size) if start < size else (size, size)


def _bounded_int(digits: str) -> int:
    # int() refuses more than 4300 digits; any number this long is past the end of a file.
    return int(digits) if len(digits) <= 18 else 10**18


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
    """GET /openapi.json: the OpenAPI document, whose server URL is this request's.

    The document is built once per app; its JSON is kept for the last few server URLs
    (``SCRIPT_NAME`` + prefix), a bounded cache, because clients can choose SCRIPT_NAME.
    """
    state = _state()
    server_url = _script_root() + (state.url_prefix or "")
    text = state.openapi_cache.get(server_url)
    if text is None:
        base = state.openapi_base
        if base is None:
            base = state.openapi_base = openapi_document(current_app, state)
        text = json.dumps({**base, "servers": [{"url": server_url}]})
        state.openapi_cache.put(server_url, text)
    return current_app.response_class(text, mimetype="application/json")

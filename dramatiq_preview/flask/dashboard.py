"""The operator dashboard (contract §11): HTML pages over the JSON API, on when
``PREVIEW_DASHBOARD`` is true.

``GET {prefix}/dashboard/`` shows the lanes, the live workers, the recent jobs (filter by
state, find by jobId) and the dead letters (requeue, purge); ``GET {prefix}/dashboard/job/ID``
one job.  The pages are rendered here with their data, so they are complete without a script;
``static/dramatiq_preview/dashboard.js`` then keeps them current (the overview polls the JSON
routes, a job's page follows its event stream) and drives requeue and purge through the JSON
routes, with the page's CSRF token.

What keeps job data from being read as markup or script:

* The templates are rendered by an environment of our own (:data:`_templates`), with
  autoescape always on and a loader that sees only our templates, whatever the host app
  configures for its own (a host template of the same name cannot replace ours).
* The script writes job data with ``textContent`` only, never ``innerHTML``.
* Every page is sent with a Content-Security-Policy that allows scripts from this origin only
  (``script-src 'self'``: no inline script, so injected markup cannot run any), and may not be
  framed (``frame-ancestors 'none'``, ``X-Frame-Options: DENY``).

The routes exist only when the dashboard is on: otherwise ``/dashboard/`` is the JSON 404
of any unknown URL under the prefix.  With ``PREVIEW_API_TOKEN`` set, a visitor who has not
signed in sees the sign-in form and nothing else (session.py has the cookie and the CSRF
token); the host's ``authorize(request)`` hook applies to every page (not to the static files,
which hold no data).
"""

from __future__ import annotations

import json
import logging
import mimetypes
from datetime import datetime
from importlib import resources
from typing import Any, cast

import jinja2
from flask import Blueprint, Flask, Response, current_app, request, send_file
from flask.blueprints import BlueprintSetupState

from .._version import __version__
from ..dlq import dead_letters
from ..errors import BrokerUnavailable, JobNotFound, PreviewError, StateStoreUnavailable
from ..health import check_health
from ..state import FINAL_STATES, STATES
from ..validation import ecma_regex
from . import views
from .appstate import AppState, get_state
from .schemas import JOB_ID_PATTERN
from .session import (
    CSRF_HEADER,
    check_secret_key,
    csrf_ok,
    csrf_token,
    end_session,
    signed_in,
    start_session,
    token_matches,
)

logger = logging.getLogger("dramatiq_preview.flask")

#: How many recent jobs the overview shows.
RECENT_LIMIT = 50
#: How often the overview asks the JSON routes for news, in milliseconds.
POLL_INTERVAL_MS = 4000
#: How many dead letters the overview shows (the newest failures).
DLQ_LIMIT = 100
#: The overview reads the dead letters again when the health's dead counts change, after a
#: requeue or purge, and at least this often (milliseconds): listing a RabbitMQ dead-letter
#: queue takes its messages and puts them back, so it is asked as seldom as possible.
DLQ_REFRESH_MS = 60000
#: The health check's deadline when a page is rendered, in seconds.
HEALTH_TIMEOUT = 1.0
#: How long browsers may keep the static files (their URLs carry the version).
STATIC_MAX_AGE = 86400

#: The policy of every page: scripts and styles of this origin only, no plugins, no framing.
#: Images may also come from https: an output in S3 can be a redirect to a presigned URL.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https: data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

_JOB_ID_RE = ecma_regex(JOB_ID_PATTERN)
_STATIC = resources.files(__package__) / "static" / "dramatiq_preview"
#: The files the static route serves: exactly those shipped, nothing a URL can name besides.
_STATIC_FILES = frozenset(p.name for p in _STATIC.iterdir() if p.is_file())
_templates = jinja2.Environment(
    loader=jinja2.PackageLoader(__package__, "templates/dramatiq_preview"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def add_routes(bp: Blueprint) -> None:
    """Add the dashboard's routes to ``bp``, on the apps whose settings turn it on.

    Called by :func:`~.extension.create_blueprint` after the API's routes: the routes are
    added when the blueprint is registered, once the app's settings are known.
    """
    bp.record(_register)


def _register(setup: BlueprintSetupState) -> None:
    app = cast(Flask, setup.app)
    state = get_state(app)
    if state is None or not state.settings.dashboard:
        return
    check_secret_key(app, dashboard=True, api_token=state.settings.api_token)
    if state.settings.api_token is None:
        logger.warning(
            "the dashboard (PREVIEW_DASHBOARD) is on without PREVIEW_API_TOKEN: anyone who "
            "can reach %s/dashboard/ can see every job and requeue or purge dead letters",
            state.url_prefix,
        )
    setup.add_url_rule("/dashboard", "dashboard_home", home, methods=["GET"])
    setup.add_url_rule("/dashboard/", "dashboard_overview", overview, methods=["GET"])
    setup.add_url_rule("/dashboard/job/<job_id>", "dashboard_job", job_page, methods=["GET"])
    setup.add_url_rule("/dashboard/login", "dashboard_login", login, methods=["POST"])
    setup.add_url_rule("/dashboard/logout", "dashboard_logout", logout, methods=["POST"])
    setup.add_url_rule("/dashboard/static/<name>", "dashboard_static", static_file, methods=["GET"])


# --- helpers ------------------------------------------------------------------------------


def _state() -> AppState:
    state = get_state(current_app._get_current_object())  # type: ignore[attr-defined]
    if state is None:  # pragma: no cover - the blueprint always creates it
        raise RuntimeError("dramatiq-preview is not initialised on this app")
    return state


def _api_base() -> str:
    """The path of the API's root as the browser sees it (``SCRIPT_NAME`` + prefix)."""
    return views.local_url(".worker_health").removesuffix("/worker/health")


def _page(template: str, status: int = 200, **context: Any) -> Response:
    """Render one of our templates, with the headers every page gets."""
    state = _state()
    token_set = state.settings.api_token is not None
    shown = signed_in(request) if token_set else False
    base = {
        "version": __version__,
        "api": _api_base(),
        "overview_url": views.local_url(".dashboard_overview"),
        "login_url": views.local_url(".dashboard_login"),
        "logout_url": views.local_url(".dashboard_logout"),
        "css_url": _static_url("dashboard.css"),
        "js_url": _static_url("dashboard.js"),
        "token_set": token_set,
        "signed_in": shown,
        "csrf": (csrf_token(request) or "") if shown else "",
        "csrf_header": CSRF_HEADER,
        "page": template.removesuffix(".html"),
    }
    body = _templates.get_template(template).render(**base, **context)
    response = current_app.response_class(body, status=status, mimetype="text/html")
    _protect(response)
    return response


def _protect(response: Response) -> None:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    # Job data: neither the browser's cache nor a shared one may keep a page.
    response.headers["Cache-Control"] = "no-store"


def _static_url(name: str) -> str:
    return views.local_url(".dashboard_static", name=name, v=__version__)


def _see_other(location: str) -> Response:
    # A path on this host (local_url): never an absolute URL a request could choose.
    response = current_app.response_class(status=303, headers={"Location": location})
    _protect(response)
    return response


def _refusal(next_job: str = "") -> Response | None:
    """The page to answer instead when the visitor may not see job data, else None.

    The host's hook first (403), then the sign-in form when a token is set and the visitor
    has not signed in (after which ``next_job``'s page, if any, is shown).
    """
    state = _state()
    if state.authorize is not None and not state.authorize(request):
        return _page("error.html", 403, title="Forbidden", message=_FORBIDDEN)
    if state.settings.api_token is not None and not signed_in(request):
        return _page("login.html", 200, title="Sign in", error=None, next_job=next_job)
    return None


_FORBIDDEN = "You are not allowed to use the dashboard."


def _valid_job_id(text: str) -> bool:
    return bool(_JOB_ID_RE.search(text))


def _when(value: Any) -> str:
    """An ISO 8601 UTC time as ``YYYY-MM-DD HH:MM:SS UTC`` (``-`` for none)."""
    if not isinstance(value, str) or not value:
        return "-"
    return value.replace("T", " ").split(".")[0].removesuffix("Z") + " UTC"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _between(start: Any, end: Any) -> float | None:
    if not isinstance(start, str) or not isinstance(end, str):
        return None
    try:
        a = datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (b - a).total_seconds())


def _text(value: Any) -> str:
    """A metadata value as text: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _outputs(job_id: str, status: dict[str, Any]) -> list[dict[str, Any]]:
    result = status.get("result") or {}
    outputs = result.get("outputs") if isinstance(result, dict) else None
    shown = []
    for index, output in enumerate(outputs or []):
        if not isinstance(output, dict):
            continue
        shown.append(
            {
                **output,
                "name": str(output.get("path") or "").rsplit("/", 1)[-1],
                "url": views.local_url(".job_output", job_id=job_id, index=index),
            }
        )
    return shown


def _job_row(status: dict[str, Any]) -> dict[str, Any]:
    job_id = str(status.get("jobId"))
    outputs = _outputs(job_id, status)
    error = status.get("error") or None
    return {
        "jobId": job_id,
        "state": status.get("state"),
        "priority": status.get("priority"),
        "attempts": status.get("attempts"),
        "progress": status.get("progress"),
        "createdAt": status.get("createdAt"),
        "finishedAt": status.get("finishedAt"),
        "created": _when(status.get("createdAt")),
        "finished": _when(status.get("finishedAt")),
        "error": _error_text(error),
        "thumbnail": outputs[0]["url"] if outputs else None,
        "url": views.local_url(".dashboard_job", job_id=job_id),
    }


def _error_text(error: Any) -> str:
    if not isinstance(error, dict):
        return ""
    kind, message = error.get("type"), error.get("message")
    return ": ".join(str(part) for part in (kind, message) if part)


def _unavailable(what: str, exc: Exception) -> str:
    logger.warning("the dashboard could not read %s", what, exc_info=exc)
    message = getattr(exc, "message", None)
    return f"{what} could not be read: {message or type(exc).__name__}"


def _unavailable_page(exc: PreviewError) -> Response:
    """The 503 page for Redis or the broker not answering (anything else is re-raised)."""
    if not isinstance(exc, (StateStoreUnavailable, BrokerUnavailable)):
        raise exc
    logger.warning("the dashboard answers 503: %s", exc.message)
    response = _page(
        "error.html",
        503,
        title="Unavailable",
        message=f"{exc.message}. Try again in a few seconds.",
    )
    response.headers["Retry-After"] = str(views.RETRY_AFTER)
    return response


# --- views --------------------------------------------------------------------------------


def home() -> Response:
    """GET /dashboard: to the overview, whose URL ends with a slash."""
    return _see_other(views.local_url(".dashboard_overview"))


def overview() -> Response:
    """GET /dashboard/: lanes, workers, recent jobs and dead letters.

    Query: ``state`` filters the recent jobs; ``job`` finds a job by its id (a redirect to
    its page, or a notice when there is none).
    """
    refusal = _refusal()
    if refusal is not None:
        return refusal
    state = _state()
    notice = None
    wanted = request.args.get("job", "").strip()
    if wanted:
        try:
            known = _valid_job_id(wanted) and state.client.store.get(wanted) is not None
        except PreviewError as exc:
            return _unavailable_page(exc)
        if known:
            return _see_other(views.local_url(".dashboard_job", job_id=wanted))
        notice = f"No job with id {wanted[:130]}"
    filter_state = request.args.get("state", "")
    if filter_state not in STATES:
        filter_state = ""
    health: dict[str, Any] | None = None
    health_error = None
    try:
        health = check_health(state.settings, state.client.broker, timeout=HEALTH_TIMEOUT).body
    except Exception as exc:
        health_error = _unavailable("the health of the lanes", exc)
    jobs: list[dict[str, Any]] = []
    jobs_error = None
    try:
        recent = state.client.recent_jobs(state=filter_state or None, limit=RECENT_LIMIT)
        jobs = [_job_row(status) for status in recent]
    except Exception as exc:
        jobs_error = _unavailable("the recent jobs", exc)
    letters: list[dict[str, Any]] = []
    letters_total = 0
    letters_error = None
    try:
        listing = dead_letters(state.client.broker, state.client.store).listing(DLQ_LIMIT)
        found, letters_total = listing.letters, listing.total
        letters = [
            {
                **letter.to_dict(),
                "failed": _when(letter.failed_at),
                "errorText": _error_text(letter.error),
                "url": views.local_url(".dashboard_job", job_id=letter.job_id),
            }
            for letter in reversed(found)  # newest failure first
        ]
    except Exception as exc:
        letters_error = _unavailable("the dead letters", exc)
    lanes = []
    if health is not None:
        for queue, lane in health["queues"].items():
            age = lane.get("oldestJobAgeSeconds")
            lanes.append({**lane, "queue": queue, "oldest": _duration(age)})
    return _page(
        "overview.html",
        title="Overview",
        health=health,
        health_error=health_error,
        lanes=lanes,
        jobs=jobs,
        jobs_error=jobs_error,
        letters=letters,
        letters_total=letters_total,
        letters_error=letters_error,
        dlq_limit=DLQ_LIMIT,
        dlq_every_ms=DLQ_REFRESH_MS,
        states=STATES,
        filter_state=filter_state,
        wanted=wanted,
        notice=notice,
        poll_ms=POLL_INTERVAL_MS,
        recent_limit=RECENT_LIMIT,
        job_page_base=views.local_url(".dashboard_job", job_id="_").removesuffix("_"),
    )


def job_page(job_id: str) -> Response:
    """GET /dashboard/job/{jobId}: one job's status, error, timings and outputs."""
    refusal = _refusal(job_id if _valid_job_id(job_id) else "")
    if refusal is not None:
        return refusal
    state = _state()
    missing = {"title": "No such job", "message": f"No job with id {job_id[:130]}."}
    if not _valid_job_id(job_id):
        return _page("error.html", 404, **missing)
    try:
        status = state.client.status(job_id)
    except JobNotFound:
        return _page("error.html", 404, **missing)
    except PreviewError as exc:
        return _unavailable_page(exc)
    metadata = status.get("metadata") or {}
    return _page(
        "job.html",
        title=f"Job {job_id}",
        job=status,
        job_id=job_id,
        row=_job_row(status),
        metadata=[(str(k), _text(v)) for k, v in sorted(metadata.items())],
        error=status.get("error") if isinstance(status.get("error"), dict) else None,
        outputs=_outputs(job_id, status),
        times={
            "created": _when(status.get("createdAt")),
            "started": _when(status.get("startedAt")),
            "finished": _when(status.get("finishedAt")),
            "next": _when(status.get("nextAttemptAt")),
            "waited": _duration(_between(status.get("createdAt"), status.get("startedAt"))),
            "ran": _duration(_between(status.get("startedAt"), status.get("finishedAt"))),
        },
        final=status.get("state") in FINAL_STATES,
        events_url=views.local_url(".job_events", job_id=job_id),
        status_url=views.local_url(".job_status", job_id=job_id),
    )


def login() -> Response:
    """POST /dashboard/login: the form field ``token``; a right one starts a session.

    A wrong token is a 401 with the form again, and no cookie.
    """
    state = _state()
    if state.authorize is not None and not state.authorize(request):
        return _page("error.html", 403, title="Forbidden", message=_FORBIDDEN)
    token = state.settings.api_token
    next_job = request.form.get("next", "")
    target = views.local_url(".dashboard_overview")
    if next_job and _valid_job_id(next_job):
        target = views.local_url(".dashboard_job", job_id=next_job)
    if token is None:
        return _see_other(target)
    if not token_matches(request.form.get("token", ""), token):
        return _page(
            "login.html",
            401,
            title="Sign in",
            error="That token is not the API token.",
            next_job=next_job if _valid_job_id(next_job) else "",
        )
    response = _see_other(target)
    start_session(request, response, _api_base() or "/")
    return response


def logout() -> Response:
    """POST /dashboard/logout: end the session (the form carries the page's CSRF token)."""
    if signed_in(request) and not csrf_ok(request, request.form.get("csrf_token", "")):
        return _page(
            "error.html",
            403,
            title="Forbidden",
            message="Signing out needs the page's CSRF token: reload the page and try again.",
        )
    response = _see_other(views.local_url(".dashboard_overview"))
    end_session(request, response, _api_base() or "/")
    return response


def static_file(name: str) -> Response:
    """GET /dashboard/static/{name}: the dashboard's CSS and script (no data, no sign-in)."""
    if name not in _STATIC_FILES:
        raise views.ApiError(404, "not_found", "no such file")
    resource = _STATIC / name
    with resources.as_file(resource) as path:
        mimetype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        response = send_file(path, mimetype=mimetype, max_age=STATIC_MAX_AGE, conditional=True)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


__all__ = ["CONTENT_SECURITY_POLICY", "add_routes"]

"""The operator dashboard's sign-in: its session cookie and its CSRF token (contract §11).

With ``PREVIEW_API_TOKEN`` set, an operator signs in once with the token
(``POST {prefix}/dashboard/login``); the answer sets a session cookie, and every route of the
API accepts that cookie as it accepts the bearer token.  What the cookie is:

* **Signed, not encrypted.**  Its value is ``{"sid": <random id>}`` signed with itsdangerous
  (HMAC-SHA256 over a key derived from the app's ``SECRET_KEY``, salted with a string of ours
  and a digest of ``PREVIEW_API_TOKEN``).  It holds no secret: the signature is what makes
  it a proof of sign-in.  Changing ``SECRET_KEY`` or the API token signs everybody out;
  Flask's ``SECRET_KEY_FALLBACKS`` keep older keys valid while a new one rolls out.
* **Bounded.**  The signature carries its time; a cookie older than
  :data:`SESSION_MAX_AGE_SECONDS` (8 hours, one shift) is refused whatever the browser sends,
  and the browser drops it then too (``Max-Age``).  There is no server-side session store:
  signing out deletes the cookie in that browser, and a copied cookie stays valid until it
  expires (rotate ``SECRET_KEY`` to cut every session short).
* **Kept to our pages.**  ``HttpOnly`` (scripts cannot read it), ``SameSite=Strict`` (no
  other site's page or link sends it), ``Secure`` when the request came over HTTPS (behind
  a TLS-terminating proxy: werkzeug's ProxyFix makes ``request.is_secure`` say so), and
  ``Path`` = the blueprint's prefix, so the host's own routes never receive it (with
  ``PREVIEW_URL_PREFIX=""`` the path is ``/`` and they do: docs/dashboard.md says so).

The CSRF token of a page is an HMAC-SHA256 of the session id under another key derived from
``SECRET_KEY``: it cannot be computed without the key, and it is only good with its own
session.  A state-changing request authenticated by the cookie must carry it in the
``X-CSRF-Token`` header (compared in constant time); ``SameSite=Strict`` already stops
cross-site requests in current browsers, the token covers the rest (older browsers,
sibling subdomains, a same-site page that is not ours), and ``views._refuse_cross_origin``
refuses what the browser says came from another origin (``Sec-Fetch-Site``, ``Origin``).

Without ``SECRET_KEY`` there is nothing to sign with: the dashboard refuses to start
(:func:`check_secret_key`, a :class:`~dramatiq_preview.errors.ConfigError` at ``init_app``)
when ``PREVIEW_DASHBOARD`` and ``PREVIEW_API_TOKEN`` are both set.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from flask import Flask, Request, Response, current_app
from itsdangerous import BadSignature, URLSafeTimedSerializer

from ..errors import ConfigError
from .appstate import get_state

#: The cookie's name.
SESSION_COOKIE = "dramatiq_preview_session"
#: How long a sign-in lasts, in seconds: 8 hours, one shift.
SESSION_MAX_AGE_SECONDS = 8 * 3600
#: The header that carries the CSRF token of a page.
CSRF_HEADER = "X-CSRF-Token"
#: Our salt: a signature made for anything else with the same SECRET_KEY is not a session.
_SALT = "dramatiq-preview.dashboard.session"
_CSRF_CONTEXT = b"dramatiq-preview.dashboard.csrf"
#: Methods that change nothing: they need no CSRF token.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The endpoints of the dashboard's pages (``dashboard.py``), which answer for themselves:
#: a visitor who is not signed in gets the sign-in form and no job data.  Listed here so that
#: the API's authentication (``views._authenticate``) can leave them alone without importing
#: the layer above it.
DASHBOARD_ENDPOINTS = frozenset(
    {
        "dashboard_home",
        "dashboard_overview",
        "dashboard_job",
        "dashboard_login",
        "dashboard_logout",
        "dashboard_static",
    }
)


def check_secret_key(app: Flask, *, dashboard: bool, api_token: str | None) -> None:
    """Refuse a dashboard with a token but no ``SECRET_KEY`` to sign its cookie with.

    Raises:
      ConfigError: ``dashboard`` and ``api_token`` are set and the app has no secret key.
    """
    if dashboard and api_token is not None and not app.secret_key:
        raise ConfigError(
            "SECRET_KEY",
            "PREVIEW_DASHBOARD with PREVIEW_API_TOKEN signs the dashboard's session cookie "
            "with the app's secret key: set app.config['SECRET_KEY'] to a long random value "
            "before the extension is initialised",
        )


def _settings_token(app: Flask) -> str | None:
    state = get_state(app)
    return None if state is None else state.settings.api_token


def _keys(app: Flask) -> list[Any]:
    """The app's secret keys, oldest first (itsdangerous signs with the last one)."""
    fallbacks = app.config.get("SECRET_KEY_FALLBACKS") or []
    return [*fallbacks, app.secret_key]


def _serializer(app: Flask, api_token: str) -> URLSafeTimedSerializer:
    # The token's digest in the salt: a new PREVIEW_API_TOKEN ends the old sessions.
    digest = hashlib.sha256(api_token.encode("utf-8")).hexdigest()
    return URLSafeTimedSerializer(
        _keys(app), salt=f"{_SALT}:{digest}", signer_kwargs={"digest_method": hashlib.sha256}
    )


def _session_id(request: Request, app: Flask) -> str | None:
    """The id of the request's valid session, or None."""
    token = _settings_token(app)
    value = request.cookies.get(SESSION_COOKIE)
    if token is None or not value or not app.secret_key:
        return None
    try:
        data = _serializer(app, token).loads(value, max_age=SESSION_MAX_AGE_SECONDS)
    except BadSignature:  # also SignatureExpired
        return None
    sid = data.get("sid") if isinstance(data, dict) else None
    return sid if isinstance(sid, str) and sid else None


def _app() -> Flask:
    return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]


def signed_in(request: Request) -> bool:
    """Whether ``request`` carries a valid, unexpired dashboard session cookie."""
    return _session_id(request, _app()) is not None


def _csrf_for(app: Flask, sid: str) -> str:
    secret = app.secret_key
    key_material = secret if isinstance(secret, bytes) else str(secret).encode("utf-8")
    key = hmac.new(key_material, _CSRF_CONTEXT, hashlib.sha256).digest()
    return hmac.new(key, sid.encode("utf-8"), hashlib.sha256).hexdigest()


def csrf_token(request: Request) -> str | None:
    """The CSRF token for the pages of ``request``'s session (None without a session)."""
    app = _app()
    sid = _session_id(request, app)
    return None if sid is None else _csrf_for(app, sid)


def csrf_ok(request: Request, given: str | None = None) -> bool:
    """Whether the request carries its session's CSRF token.

    Parameters:
      request: a request with a session cookie.
      given: the token to check; by default the ``X-CSRF-Token`` header (a form field, for
        the dashboard's own HTML forms).
    """
    expected = csrf_token(request)
    if given is None:
        given = request.headers.get(CSRF_HEADER)
    if expected is None or not given:
        return False
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def token_matches(given: str, api_token: str) -> bool:
    """Whether ``given`` is the API token (a constant-time comparison)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), api_token.encode("utf-8", "surrogateescape")
    )


def start_session(request: Request, response: Response, path: str) -> None:
    """Sign in: set a new session cookie on ``response``, for URLs under ``path``.

    Raises:
      ConfigError: the app has no ``SECRET_KEY`` (or no token is configured).
    """
    app = _app()
    token = _settings_token(app)
    check_secret_key(app, dashboard=True, api_token=token)
    if token is None:
        raise ConfigError("PREVIEW_API_TOKEN", "there is no token to sign in with")
    value = _serializer(app, token).dumps({"sid": secrets.token_urlsafe(32)})
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=SESSION_MAX_AGE_SECONDS,
        path=path,
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )


def end_session(request: Request, response: Response, path: str) -> None:
    """Sign out: delete the session cookie in the browser (same path and flags)."""
    response.delete_cookie(
        SESSION_COOKIE, path=path, secure=request.is_secure, httponly=True, samesite="Strict"
    )


__all__ = [
    "CSRF_HEADER",
    "DASHBOARD_ENDPOINTS",
    "SAFE_METHODS",
    "SESSION_COOKIE",
    "SESSION_MAX_AGE_SECONDS",
    "check_secret_key",
    "csrf_ok",
    "csrf_token",
    "end_session",
    "signed_in",
    "start_session",
    "token_matches",
]

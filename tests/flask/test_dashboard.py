"""The operator dashboard's routes, sign-in and CSRF (contract §11), with Flask's test client.

Each app uses a namespace of its own on the test session's private Redis, which no worker
consumes: jobs stay where the test puts them (through the real JobStore scripts), and a
purge only ever empties this test's dead letters.  The browser tests are in tests/browser.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
from flask import Flask
from flask.testing import FlaskClient
from preview_http import PREFIX, TOKEN, bearer, job, make_app, new_job_id

from dramatiq_preview.errors import ConfigError
from dramatiq_preview.flask import session
from dramatiq_preview.flask.appstate import get_state
from dramatiq_preview.names import ACTOR_NAME, QUEUES
from dramatiq_preview.state import JobStore
from dramatiq_preview.testing import RedisServer

SECRET = "a-secret-key-for-the-dashboard-tests-0123456789"
DASH = f"{PREFIX}/dashboard/"
XSS_SCRIPT = "<script>window.__xss = 1</script>"
XSS_IMG = '<img src=x onerror="window.__xss = 2">'


def dashboard_app(*, token: str | None = TOKEN, **config: Any) -> Flask:
    settings: dict[str, Any] = {
        "PREVIEW_NAMESPACE": "dpdash-" + uuid.uuid4().hex[:10],
        "PREVIEW_DASHBOARD": "true",
        "SECRET_KEY": SECRET,
    }
    if token is not None:
        settings["PREVIEW_API_TOKEN"] = token
    return make_app(**{**settings, **config})


def store_of(app: Flask) -> JobStore:
    state = get_state(app)
    assert state is not None
    return state.client.store


def submitted(client: FlaskClient, **payload: Any) -> str:
    """A job submitted with the bearer token: it stays queued (no worker on this namespace)."""
    body = job(**payload)
    response = client.post(f"{PREFIX}/job", json=body, headers=bearer())
    assert response.status_code == 202, response.json
    return str(body["jobId"])


def failed(app: Flask, error: dict[str, Any], **metadata: str) -> str:
    """A job that failed with ``error`` (its delivery run through the real scripts)."""
    store = store_of(app)
    job_id = new_job_id()
    store.create(job_id, fp="fp", priority="normal", queue=QUEUES["normal"], metadata=metadata)
    assert store.claim(job_id, token="t", lease_ms=60_000, max_deliveries=3).verdict == "run"
    assert store.finish(job_id, token="t", outcome="failed", data=error).state == "failed"
    return job_id


def bury(app: Flask, job_id: str) -> None:
    """Put the job's message into its lane's dead letters, as a worker's nack would."""
    state = get_state(app)
    assert state is not None
    broker: Any = state.client.broker
    redis_id = str(uuid.uuid4())
    message = dramatiq.Message(
        queue_name=QUEUES["normal"],
        actor_name=ACTOR_NAME,
        args=(job(jobId=job_id),),
        kwargs={},
        options={"redis_message_id": redis_id, "retries": 2},
    )
    base = f"{broker.namespace}:{QUEUES['normal']}.XQ"
    broker.client.zadd(base, {redis_id: int(time.time() * 1000)})
    broker.client.hset(base + ".msgs", redis_id, message.encode())


def signed_in(app: Flask, **kwargs: Any) -> FlaskClient:
    client = app.test_client(**kwargs)
    response = client.post(f"{DASH}login", data={"token": TOKEN})
    assert response.status_code == 303
    return client


def csrf_of(client: FlaskClient) -> str:
    page = client.get(DASH).get_data(as_text=True)
    found = re.search(r'<meta name="dp-csrf" content="([0-9a-f]*)">', page)
    assert found is not None and found.group(1), "the page has no CSRF token"
    return found.group(1)


def set_cookie_of(response: Any) -> dict[str, str]:
    """The session cookie's attributes (lower-case names) from a Set-Cookie header."""
    [header] = [
        h for h in response.headers.getlist("Set-Cookie") if h.startswith(session.SESSION_COOKIE)
    ]
    attributes: dict[str, str] = {}
    for part in header.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        attributes[name.lower()] = value
    return attributes


# --- on and off ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/dashboard/", "/dashboard", "/dashboard/job/x", "/dashboard/static/dashboard.js"]
)
def test_the_dashboard_is_off_by_default_and_its_urls_are_json_404s(path: str) -> None:
    app = make_app(PREVIEW_NAMESPACE="dpdash-off", SECRET_KEY=SECRET)
    response = app.test_client().get(PREFIX + path)
    assert response.status_code == 404
    assert response.json is not None and response.json["error"] == "not_found"
    login = app.test_client().post(f"{PREFIX}/dashboard/login", data={"token": TOKEN})
    assert login.status_code == 404 and login.mimetype == "application/json"


def test_on_without_a_token_the_overview_is_html_with_the_jobs_and_protective_headers() -> None:
    # Given a dashboard without a token and a job
    app = dashboard_app(token=None)
    client = app.test_client()
    body = job()
    assert client.post(f"{PREFIX}/job", json=body).status_code == 202
    # When the overview is asked for
    response = client.get(DASH)
    # Then it is an HTML page listing the job, its lanes, and the page may not be framed or
    # run scripts from elsewhere
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert f'data-job-id="{body["jobId"]}"' in page
    assert 'data-queue="preview-normal"' in page
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "default-src 'none'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    assert "<script>" not in page.replace("<script src=", "")  # no inline script
    # and the address without its slash leads there
    bare = client.get(f"{PREFIX}/dashboard")
    assert (bare.status_code, bare.headers["Location"]) == (303, DASH)


def test_the_static_files_are_served_and_nothing_else() -> None:
    client = dashboard_app().test_client()
    with client.get(f"{PREFIX}/dashboard/static/dashboard.css") as css:
        assert css.status_code == 200 and css.mimetype == "text/css"
        assert b"prefers-color-scheme: dark" in css.data
    with client.get(f"{PREFIX}/dashboard/static/dashboard.js") as script:
        assert script.status_code == 200 and "javascript" in script.mimetype
        assert script.headers["X-Content-Type-Options"] == "nosniff"
        assert b"innerHTML" not in script.data.replace(b"never through innerHTML", b"")
    for name in ("missing.js", "..%2Fdashboard.py", "%2E%2E"):
        answer = client.get(f"{PREFIX}/dashboard/static/{name}")
        assert answer.status_code == 404, name
        assert answer.mimetype == "application/json"


# --- sign-in ------------------------------------------------------------------------------


def test_with_a_token_the_pages_show_the_sign_in_form_and_no_job_data() -> None:
    # Given a protected dashboard and a job with metadata
    app = dashboard_app()
    client = app.test_client()
    job_id = submitted(client, metadata={"customer": "visible-only-after-sign-in"})
    for path in (DASH, f"{DASH}job/{job_id}", f"{DASH}?state=queued"):
        # When a visitor who has not signed in asks for a page
        response = client.get(path)
        page = response.get_data(as_text=True)
        # Then it is the sign-in form, with nothing of the job
        assert response.status_code == 200 and response.mimetype == "text/html"
        assert f'action="{DASH}login"' in page and 'name="token"' in page
        assert 'type="password"' in page
        assert "visible-only-after-sign-in" not in page
        assert f'data-job-id="{job_id}"' not in page
        assert "Recent jobs" not in page and "Dead letters" not in page
    # and the JSON routes still need a credential
    assert client.get(f"{PREFIX}/jobs").status_code == 401


def test_a_wrong_token_is_a_401_without_a_cookie() -> None:
    app = dashboard_app()
    client = app.test_client()
    response = client.post(f"{DASH}login", data={"token": TOKEN + "x"})
    assert response.status_code == 401
    assert "Set-Cookie" not in response.headers
    assert "That token is not the API token" in response.get_data(as_text=True)
    assert client.post(f"{DASH}login", data={}).status_code == 401
    assert client.get(f"{PREFIX}/jobs").status_code == 401


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_right_token_sets_a_strict_http_only_cookie_secure_under_https(scheme: str) -> None:
    app = dashboard_app()
    client = app.test_client()
    response = client.post(f"{DASH}login", data={"token": TOKEN}, base_url=f"{scheme}://localhost")
    assert response.status_code == 303 and response.headers["Location"] == DASH
    cookie = set_cookie_of(response)
    assert "httponly" in cookie
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == PREFIX
    assert cookie["max-age"] == str(session.SESSION_MAX_AGE_SECONDS)
    assert ("secure" in cookie) is (scheme == "https")


def test_signing_in_from_a_job_page_leads_back_to_it() -> None:
    app = dashboard_app()
    client = app.test_client()
    job_id = submitted(client)
    form = client.get(f"{DASH}job/{job_id}").get_data(as_text=True)
    assert f'name="next" value="{job_id}"' in form
    response = client.post(f"{DASH}login", data={"token": TOKEN, "next": job_id})
    assert response.headers["Location"] == f"{DASH}job/{job_id}"
    # a next that is no jobId leads to the overview, never elsewhere
    other = client.post(f"{DASH}login", data={"token": TOKEN, "next": "//evil.example/"})
    assert other.headers["Location"] == DASH


def test_signed_in_the_overview_and_the_json_routes_answer_with_the_cookie() -> None:
    # Given a job and an operator signed in
    app = dashboard_app()
    client = signed_in(app)
    job_id = submitted(client)
    # Then the overview shows the job and the JSON routes read with the cookie alone
    assert f'data-job-id="{job_id}"' in client.get(DASH).get_data(as_text=True)
    jobs = client.get(f"{PREFIX}/jobs")
    assert jobs.status_code == 200 and jobs.json is not None
    assert [j["jobId"] for j in jobs.json["jobs"]] == [job_id]
    assert client.get(f"{PREFIX}/job/{job_id}/status").status_code == 200
    assert client.get(f"{PREFIX}/dlq").status_code == 200


def test_a_cookie_post_needs_the_csrf_token_of_its_page() -> None:
    # Given an operator signed in and a queued job
    app = dashboard_app()
    client = signed_in(app)
    job_id = submitted(client)
    url = f"{PREFIX}/job/{job_id}/cancel"
    # When the cookie comes without the CSRF token, or with another one
    for headers in ({}, {"X-CSRF-Token": ""}, {"X-CSRF-Token": "0" * 64}):
        refused = client.post(url, headers=headers)
        # Then the request is refused, and changes nothing
        assert refused.status_code == 403, headers
        assert refused.json is not None and refused.json["error"] == "forbidden"
        assert "X-CSRF-Token" in refused.json["message"]
    assert client.get(f"{PREFIX}/job/{job_id}/status").json["state"] == "queued"  # type: ignore[index]
    # When it carries the page's token, the request goes through
    done = client.post(url, headers={"X-CSRF-Token": csrf_of(client)})
    assert done.status_code == 202
    assert client.get(f"{PREFIX}/job/{job_id}/status").json["state"] == "cancelled"  # type: ignore[index]


def test_a_csrf_token_is_good_only_with_its_own_session() -> None:
    app = dashboard_app()
    first, second = signed_in(app), signed_in(app)
    token = csrf_of(first)
    assert token != csrf_of(second)
    answer = second.post(f"{PREFIX}/dlq/purge", headers={"X-CSRF-Token": token})
    assert answer.status_code == 403
    assert second.post(f"{PREFIX}/dlq/purge", headers={"X-CSRF-Token": csrf_of(second)}).json == {
        "purged": 0
    }


def test_a_bearer_request_needs_no_csrf_token_and_a_wrong_header_is_not_rescued_by_the_cookie() -> (
    None
):
    app = dashboard_app()
    client = app.test_client()
    job_id = submitted(client)
    assert client.post(f"{PREFIX}/job/{job_id}/cancel", headers=bearer()).status_code == 202
    # A signed-in browser whose request carries a wrong Authorization header: judged by it
    browser = signed_in(app)
    wrong = browser.get(f"{PREFIX}/jobs", headers=bearer("not-the-token"))
    assert wrong.status_code == 401


def test_requeue_and_purge_with_the_cookie_and_the_csrf_token() -> None:
    # Given two dead jobs and an operator signed in
    app = dashboard_app()
    client = signed_in(app)
    first = failed(app, {"type": "source_not_found", "message": "gone", "retryable": False})
    second = failed(app, {"type": "source_not_found", "message": "gone", "retryable": False})
    bury(app, first)
    bury(app, second)
    csrf = {"X-CSRF-Token": csrf_of(client)}
    page = client.get(DASH).get_data(as_text=True)
    assert page.count('class="requeue"') == 2
    # When one is requeued, then the rest purged
    assert client.post(f"{PREFIX}/dlq/{first}/requeue", headers=csrf).status_code == 202
    assert client.post(f"{PREFIX}/dlq/{first}/requeue", headers=csrf).status_code == 404
    assert client.get(f"{PREFIX}/job/{first}/status").json["state"] == "queued"  # type: ignore[index]
    assert client.post(f"{PREFIX}/dlq/purge", headers=csrf).json == {"purged": 1}
    # Then the page shows no dead letter any more
    page = client.get(DASH).get_data(as_text=True)
    assert 'class="requeue"' not in page and "No dead letters." in page


def test_signing_out_needs_the_csrf_token_and_deletes_the_cookie() -> None:
    app = dashboard_app()
    client = signed_in(app)
    assert client.post(f"{DASH}logout", data={}).status_code == 403
    assert client.get(f"{PREFIX}/jobs").status_code == 200
    response = client.post(f"{DASH}logout", data={"csrf_token": csrf_of(client)})
    assert response.status_code == 303
    cookie = set_cookie_of(response)
    assert cookie["max-age"] == "0" and cookie["path"] == PREFIX
    assert client.get(f"{PREFIX}/jobs").status_code == 401
    assert 'name="token"' in client.get(DASH).get_data(as_text=True)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"SECRET_KEY": SECRET + "-rotated"}, id="another SECRET_KEY"),
        pytest.param({"PREVIEW_API_TOKEN": TOKEN + "-rotated"}, id="another API token"),
        pytest.param({"PREVIEW_DASHBOARD": "false"}, id="the dashboard turned off"),
    ],
)
def test_a_cookie_stops_working_when_the_key_the_token_or_the_dashboard_changes(
    change: dict[str, str],
) -> None:
    # Given a cookie of one app
    namespace = "dpdash-" + uuid.uuid4().hex[:10]
    before = signed_in(dashboard_app(PREVIEW_NAMESPACE=namespace))
    cookie = before.get_cookie(session.SESSION_COOKIE, path=PREFIX)
    assert cookie is not None
    # When it is presented to the same deployment with one setting changed
    after_app = dashboard_app(**{"PREVIEW_NAMESPACE": namespace, **change})
    after = after_app.test_client()
    after.set_cookie(session.SESSION_COOKIE, cookie.value, path=PREFIX)
    # Then it signs nobody in
    assert after.get(f"{PREFIX}/jobs").status_code == 401


def test_an_expired_or_tampered_cookie_signs_nobody_in(monkeypatch: pytest.MonkeyPatch) -> None:
    app = dashboard_app()
    client = signed_in(app)
    cookie = client.get_cookie(session.SESSION_COOKIE, path=PREFIX)
    assert cookie is not None
    assert client.get(f"{PREFIX}/jobs").status_code == 200
    tampered = app.test_client()
    tampered.set_cookie(session.SESSION_COOKIE, cookie.value[:-2] + "AA", path=PREFIX)
    assert tampered.get(f"{PREFIX}/jobs").status_code == 401
    # A sign-in older than the session's lifetime is refused whatever the browser sends
    monkeypatch.setattr(session, "SESSION_MAX_AGE_SECONDS", -1)
    assert client.get(f"{PREFIX}/jobs").status_code == 401
    assert 'name="token"' in client.get(DASH).get_data(as_text=True)


def test_a_token_without_a_secret_key_is_refused_at_init() -> None:
    with pytest.raises(ConfigError) as raised:
        make_app(PREVIEW_DASHBOARD="true", PREVIEW_API_TOKEN=TOKEN)
    assert raised.value.name == "SECRET_KEY"
    assert "PREVIEW_DASHBOARD" in str(raised.value)
    # Without the token, or without the dashboard, there is nothing to sign
    make_app(PREVIEW_DASHBOARD="true")
    make_app(PREVIEW_API_TOKEN=TOKEN)


# --- the host's hook ----------------------------------------------------------------------


def test_the_authorize_hook_applies_to_the_pages_the_sign_in_and_the_cookie() -> None:
    # Given a host hook that lets nobody in but requests marked by its header
    allowed: Callable[[Any], bool] = lambda request: request.headers.get("X-Host-User") == "ops"  # noqa: E731
    app = make_app(
        authorize=allowed,
        PREVIEW_NAMESPACE="dpdash-" + uuid.uuid4().hex[:10],
        PREVIEW_DASHBOARD="true",
        PREVIEW_API_TOKEN=TOKEN,
        SECRET_KEY=SECRET,
    )
    client = app.test_client()
    ops = {"X-Host-User": "ops"}
    # Then the pages and the sign-in are refused without the host's mark
    page = client.get(DASH)
    assert page.status_code == 403 and page.mimetype == "text/html"
    assert client.post(f"{DASH}login", data={"token": TOKEN}).status_code == 403
    # and a session cookie alone does not get past the hook either
    assert client.post(f"{DASH}login", data={"token": TOKEN}, headers=ops).status_code == 303
    denied = client.get(f"{PREFIX}/jobs")
    assert denied.status_code == 403 and denied.json is not None
    assert denied.json["error"] == "forbidden"
    assert client.get(f"{PREFIX}/jobs", headers=ops).status_code == 200
    assert client.get(DASH, headers=ops).status_code == 200
    # the static files hold no data: served whatever the hook says
    with client.get(f"{PREFIX}/dashboard/static/dashboard.css") as css:
        assert css.status_code == 200


# --- the views ----------------------------------------------------------------------------


def test_the_state_filter_and_the_find_box() -> None:
    app = dashboard_app(token=None)
    client = app.test_client()
    queued = submitted(client)
    cancelled = submitted(client)
    assert client.post(f"{PREFIX}/job/{cancelled}/cancel").status_code == 202
    page = client.get(DASH, query_string={"state": "cancelled"}).get_data(as_text=True)
    assert f'data-job-id="{cancelled}"' in page and f'data-job-id="{queued}"' not in page
    assert '<option value="cancelled" selected>' in page
    # An unknown state shows every job
    page = client.get(DASH, query_string={"state": "nope"}).get_data(as_text=True)
    assert f'data-job-id="{cancelled}"' in page and f'data-job-id="{queued}"' in page
    # Finding a job by its id opens its page; an unknown id says so
    found = client.get(DASH, query_string={"job": f" {queued} "})
    assert (found.status_code, found.headers["Location"]) == (303, f"{DASH}job/{queued}")
    missing = client.get(DASH, query_string={"job": "nope-" + uuid.uuid4().hex})
    assert missing.status_code == 200 and "No job with id nope-" in missing.get_data(as_text=True)


def test_the_job_page_shows_status_timings_and_output_thumbnails() -> None:
    # Given a job that succeeded with two outputs
    app = dashboard_app(token=None)
    store = store_of(app)
    job_id = new_job_id()
    store.create(job_id, fp="fp", priority="high", queue=QUEUES["high"], metadata={"page": "7"})
    assert store.claim(job_id, token="t", lease_ms=60_000, max_deliveries=3).verdict == "run"
    outputs = [
        {"path": f"{job_id}/0.png", "width": 64, "height": 48, "format": "png", "bytes": 321},
        {"path": f"{job_id}/1.webp", "width": 32, "height": 24, "format": "webp", "bytes": 99},
    ]
    store.finish(job_id, token="t", outcome="succeeded", data={"outputs": outputs})
    # When its page is asked for
    response = app.test_client().get(f"{DASH}job/{job_id}")
    page = response.get_data(as_text=True)
    # Then it shows the state, the timings, the metadata and a thumbnail per output
    assert response.status_code == 200
    assert 'data-state="succeeded"' in page
    assert f'data-events-url="{PREFIX}/job/{job_id}/events"' in page
    for index in (0, 1):
        assert f'<img src="{PREFIX}/job/{job_id}/outputs/{index}"' in page
    assert "64\N{MULTIPLICATION SIGN}48 png, 321 bytes" in page and "1.webp" in page
    assert re.search(r'id="job-started" datetime="\d{4}-\d\d-\d\dT', page)
    assert re.search(r'id="job-ran">[0-9.]+ (ms|s)<', page)
    assert '<dt class="mono">page</dt><dd class="mono">7</dd>' in page
    assert 'id="job-requeue"' in page and "hidden>Requeue" in page


def test_an_unknown_job_page_is_an_html_404() -> None:
    client = dashboard_app(token=None).test_client()
    for job_id in ("nope-" + uuid.uuid4().hex, "-not-a-job-id"):
        response = client.get(f"{DASH}job/{job_id}")
        assert response.status_code == 404 and response.mimetype == "text/html"
        assert "No such job" in response.get_data(as_text=True)


def test_job_data_is_escaped_on_every_page() -> None:
    # Given a failed, dead job whose metadata and error hold markup
    app = dashboard_app(token=None)
    client = app.test_client()
    job_id = failed(
        app,
        {"type": "corrupt_source", "message": f"bad {XSS_SCRIPT} {XSS_IMG}", "retryable": False},
        note=XSS_SCRIPT,
        **{XSS_IMG: "key with markup"},
    )
    bury(app, job_id)
    pages = {
        "overview": client.get(DASH).get_data(as_text=True),
        "failed filter": client.get(DASH, query_string={"state": "failed"}).get_data(as_text=True),
        "job": client.get(f"{DASH}job/{job_id}").get_data(as_text=True),
        "find": client.get(DASH, query_string={"job": XSS_SCRIPT}).get_data(as_text=True),
    }
    for name, page in pages.items():
        # Then the markup is never in a page as markup, and is there as text
        assert XSS_SCRIPT not in page, name
        assert XSS_IMG not in page, name
        assert "onerror=" not in page.replace("onerror=&#34;", ""), name
        assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in page, name
    assert "&lt;img src=x onerror=&#34;window.__xss = 2&#34;&gt;" in pages["job"]
    # and the JSON the page's script reads carries it as a plain string
    jobs = client.get(f"{PREFIX}/jobs").json
    assert jobs is not None and jobs["jobs"][0]["metadata"]["note"] == XSS_SCRIPT


# --- behind a proxy with its own credentials ----------------------------------------------

BASIC = {"Authorization": "Basic b3BzOnByb3h5LXBhc3N3b3Jk"}  # ops:proxy-password


def test_a_browser_resending_a_proxys_basic_credentials_is_read_by_its_cookie() -> None:
    # Given an operator signed in behind a proxy that asked for Basic credentials, which
    # the browser now sends with every request to the site
    app = dashboard_app()
    client = signed_in(app)
    job_id = submitted(client)
    # Then the JSON routes the page polls answer by the cookie, not 401 (which made the
    # page reload in a loop)
    assert client.get(f"{PREFIX}/jobs", headers=BASIC).status_code == 200
    assert client.get(f"{PREFIX}/dlq", headers=BASIC).status_code == 200
    # and a change still needs the page's CSRF token
    url = f"{PREFIX}/job/{job_id}/cancel"
    assert client.post(url, headers=BASIC).status_code == 403
    done = client.post(url, headers={**BASIC, "X-CSRF-Token": csrf_of(client)})
    assert done.status_code == 202
    # Without the cookie, Basic credentials are no credential of ours
    stranger = app.test_client()
    refused = stranger.get(f"{PREFIX}/jobs", headers=BASIC)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="dramatiq-preview"'


def test_the_script_reloads_on_a_401_at_most_once() -> None:
    with dashboard_app().test_client().get(f"{PREFIX}/dashboard/static/dashboard.js") as answer:
        script = answer.data.decode()
    # Every 401 goes through signedOut(), which reloads only when it has not just done so
    assert script.count("window.location.reload()") == 1
    assert "sessionStorage" in script and "store.getItem(RELOADED)" in script


# --- cross-origin requests (CSRF without a token) -----------------------------------------

CROSS_SITE = [
    pytest.param({"Sec-Fetch-Site": "cross-site"}, id="Sec-Fetch-Site cross-site"),
    pytest.param({"Sec-Fetch-Site": "same-site"}, id="Sec-Fetch-Site same-site"),
    pytest.param(
        {"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost"},
        id="Sec-Fetch-Site wins over Origin",
    ),
    pytest.param({"Origin": "https://evil.example"}, id="another Origin"),
    pytest.param({"Origin": "http://localhost.evil.example"}, id="an Origin that starts alike"),
    pytest.param({"Origin": "null"}, id="Origin null"),
]
SAME_ORIGIN = [
    pytest.param({}, id="no browser headers (curl, scripts)"),
    pytest.param({"Sec-Fetch-Site": "same-origin"}, id="Sec-Fetch-Site same-origin"),
    pytest.param({"Sec-Fetch-Site": "none"}, id="Sec-Fetch-Site none"),
    pytest.param({"Origin": "http://localhost"}, id="our own Origin"),
    pytest.param({"Origin": "http://LOCALHOST"}, id="our own Origin, other case"),
]


@pytest.mark.parametrize("headers", CROSS_SITE)
def test_without_a_token_a_cross_origin_browser_request_changes_nothing(
    headers: dict[str, str],
) -> None:
    # Given an API without a token, a queued job and a dead one
    app = dashboard_app(token=None)
    client = app.test_client()
    queued = submitted(client)
    dead = failed(app, {"type": "source_not_found", "message": "gone", "retryable": False})
    bury(app, dead)
    # When another site's page makes the operator's browser post (a plain HTML form)
    for path in (
        f"/job/{queued}/cancel",
        f"/dlq/{dead}/requeue",
        "/dlq/purge",
        "/dashboard/logout",
    ):
        refused = client.post(PREFIX + path, headers=headers)
        # Then it is refused
        assert refused.status_code == 403, path
        assert refused.json is not None and refused.json["error"] == "forbidden"
        assert "cross-origin" in refused.json["message"]
    refused = client.post(f"{PREFIX}/job", json=job(), headers=headers)
    assert refused.status_code == 403
    # and nothing changed; reading is still allowed
    assert client.get(f"{PREFIX}/job/{queued}/status", headers=headers).json["state"] == "queued"  # type: ignore[index]
    assert [d["jobId"] for d in client.get(f"{PREFIX}/dlq").json["deadLetters"]] == [dead]  # type: ignore[index]


@pytest.mark.parametrize("headers", SAME_ORIGIN)
def test_without_a_token_same_origin_and_non_browser_requests_go_through(
    headers: dict[str, str],
) -> None:
    app = dashboard_app(token=None)
    client = app.test_client()
    queued = submitted(client)
    assert client.post(f"{PREFIX}/job/{queued}/cancel", headers=headers).status_code == 202
    assert client.post(f"{PREFIX}/dlq/purge", headers=headers).json == {"purged": 0}
    assert client.post(f"{PREFIX}/job", json=job(), headers=headers).status_code == 202


def test_with_a_token_a_cross_origin_cookie_request_is_refused_even_with_the_csrf_token() -> None:
    app = dashboard_app()
    client = signed_in(app)
    job_id = submitted(client)
    csrf = {"X-CSRF-Token": csrf_of(client)}
    url = f"{PREFIX}/job/{job_id}/cancel"
    refused = client.post(url, headers={**csrf, "Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403 and "cross-origin" in refused.json["message"]  # type: ignore[index]
    refused = client.post(url, headers={**csrf, "Origin": "https://evil.example"})
    assert refused.status_code == 403
    # A bearer token is no browser's: the origin does not matter
    assert client.post(url, headers={**bearer(), "Sec-Fetch-Site": "cross-site"}).status_code == 202


# --- Redis down -------------------------------------------------------------------------


def test_redis_down_on_a_page_that_needs_it_is_an_html_503() -> None:
    server = RedisServer()  # never started: nothing listens on its port
    try:
        client = dashboard_app(token=None, PREVIEW_REDIS_URL=server.url).test_client()
        for path in (f"{DASH}?job=abc", f"{DASH}job/abc"):
            response = client.get(path)
            assert response.status_code == 503, path
            assert response.mimetype == "text/html", path
            page = response.get_data(as_text=True)
            assert "Unavailable" in page and "Redis" in page, path
            assert response.headers["Retry-After"]
            assert response.headers["Content-Security-Policy"]
        # the overview itself shows what it could not read, in the page
        overview = client.get(DASH)
        assert overview.status_code == 200 and "could not be read" in overview.get_data(
            as_text=True
        )
    finally:
        server.close()


# --- caching ----------------------------------------------------------------------------


def test_json_read_with_the_cookie_is_never_cached() -> None:
    app = dashboard_app()
    client = signed_in(app)
    submitted(client)
    for path in ("/jobs", "/dlq", "/openapi.json"):
        response = client.get(PREFIX + path)
        assert response.status_code == 200, path
        assert response.headers["Cache-Control"] == "no-store", path
        assert "Cookie" in response.headers["Vary"], path
    # A bearer request is no concern of the cookie's
    plain = app.test_client().get(f"{PREFIX}/jobs", headers=bearer())
    assert "Cookie" not in plain.headers.get("Vary", "")

"""The HTTP API against hostile requests (issue 19): what a probe as an attacker found.

Each test here failed before its fix.  tests/flask/test_flask_live.py holds the ones that
need a real gunicorn (malformed chunked bodies, a ``SCRIPT_NAME`` header).
"""

from __future__ import annotations

import io
import json
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from preview_http import IDLE_NAMESPACE, PREFIX, TOKEN, bearer, job, make_app, new_job_id
from test_flask_api import assert_error, succeeded_with, write_output
from werkzeug.http import http_date
from werkzeug.middleware.proxy_fix import ProxyFix

from dramatiq_preview.flask.appstate import OPENAPI_CACHE_SIZE, get_state


def assert_local(url: str) -> None:
    """``url`` is a path on the host that answered, whatever a browser makes of it."""
    assert url.startswith("/"), url
    # "//host" is protocol-relative; browsers read "\" as "/" and drop tabs and newlines.
    assert not url.startswith("//") and "\\" not in url, url
    assert not any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url), url
    assert urlsplit(urljoin("https://api.example/x/y", url)).netloc == "api.example", url


# --- 1. the OpenAPI cache is bounded ------------------------------------------------------


def test_the_openapi_cache_stays_bounded_whatever_prefix_clients_send(app: Flask) -> None:
    # Given the API behind ProxyFix, which trusts X-Forwarded-Prefix (as the example app can)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_prefix=1)  # type: ignore[method-assign]
    client = app.test_client()
    state = get_state(app)
    assert state is not None
    # When thousands of requests each come with a prefix of their own
    for n in range(2000):
        headers = {"X-Forwarded-Prefix": f"/p{n}"}
        response = client.get(f"{PREFIX}/openapi.json", headers=headers)
        # Then each document names its own server URL
        assert response.json["servers"] == [{"url": f"/p{n}{PREFIX}"}]
    # and the cache holds no more than its bound
    assert len(state.openapi_cache) <= OPENAPI_CACHE_SIZE
    # and a prefix seen again still gets its own document
    again = client.get(f"{PREFIX}/openapi.json", headers={"X-Forwarded-Prefix": "/p7"})
    assert again.json["servers"] == [{"url": f"/p7{PREFIX}"}]


def test_the_openapi_cache_is_bounded_for_script_names_too(client: FlaskClient) -> None:
    for n in range(200):
        response = client.get(
            f"{PREFIX}/openapi.json", environ_overrides={"SCRIPT_NAME": f"/mount{n}"}
        )
        assert response.json["servers"] == [{"url": f"/mount{n}{PREFIX}"}]
    state = get_state(client.application)
    assert state is not None and len(state.openapi_cache) <= OPENAPI_CACHE_SIZE


# --- 2. no URL takes its authority from the client ----------------------------------------

HOSTILE_ROOTS = [
    "//evil.example",
    "///evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "/\t/evil.example",
    "//evil.example/",
    "/ok//evil.example",
]


@pytest.mark.parametrize("script_name", HOSTILE_ROOTS)
def test_a_hostile_script_name_never_makes_a_url_to_another_host(
    app: Flask, client: FlaskClient, script_name: str
) -> None:
    # Given a SCRIPT_NAME a client chose (gunicorn takes it from a request header)
    environ = {"SCRIPT_NAME": script_name}
    # When a job is submitted, its status read and the OpenAPI document fetched
    submitted = client.post(f"{PREFIX}/job", json=job(), environ_overrides=environ)
    assert submitted.status_code == 202
    job_id = new_job_id()
    succeeded_with(app, job_id, [write_output(job_id, "0.png", b"a")])
    status = client.get(f"{PREFIX}/job/{job_id}/status", environ_overrides=environ)
    document = client.get(f"{PREFIX}/openapi.json", environ_overrides=environ)
    # Then every URL in them is a path on this host
    assert_local(submitted.json["statusUrl"])
    assert_local(submitted.headers["Location"])
    assert submitted.json["statusUrl"].endswith(f"{PREFIX}/job/{submitted.json['jobId']}/status")
    assert_local(status.json["result"]["outputs"][0]["url"])
    assert_local(document.json["servers"][0]["url"])
    assert document.json["servers"][0]["url"].endswith(PREFIX)


def test_a_hostile_forwarded_prefix_never_makes_a_url_to_another_host(app: Flask) -> None:
    # Given the example app's ProxyFix, and a client that sends X-Forwarded-Prefix itself
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_prefix=1)  # type: ignore[method-assign]
    client = app.test_client()
    for prefix in HOSTILE_ROOTS:
        headers = {"X-Forwarded-Prefix": prefix}
        # When it submits a job / Then the status URL and Location stay on this host
        response = client.post(f"{PREFIX}/job", json=job(), headers=headers)
        assert response.status_code == 202
        assert_local(response.json["statusUrl"])
        assert_local(response.headers["Location"])
        document = client.get(f"{PREFIX}/openapi.json", headers=headers).json
        assert_local(document["servers"][0]["url"])


def test_an_ordinary_script_name_is_kept_and_quoted() -> None:
    client = make_app(PREVIEW_NAMESPACE=IDLE_NAMESPACE).test_client()
    environ = {"SCRIPT_NAME": "/my app/v1"}
    response = client.post(f"{PREFIX}/job", json=job(), environ_overrides=environ)
    assert response.json["statusUrl"].startswith(f"/my%20app/v1{PREFIX}/job/")


# --- 3. conditional requests and ranges on outputs ----------------------------------------

DATA = b"png bytes"


@pytest.fixture
def output_url(app: Flask) -> str:
    job_id = new_job_id()
    succeeded_with(app, job_id, [write_output(job_id, "0.png", DATA)])
    return f"{PREFIX}/job/{job_id}/outputs/0"


def validators(client: FlaskClient, url: str) -> tuple[str, str]:
    with client.get(url) as response:
        return response.headers["ETag"], response.headers["Last-Modified"]


def test_a_failed_if_match_wins_over_a_range(client: FlaskClient, output_url: str) -> None:
    response = client.get(output_url, headers={"If-Match": '"nope"', "Range": "bytes=0-2"})
    assert_error(response, 412, "precondition_failed")
    assert DATA[:3] not in response.data


def test_a_matching_if_none_match_wins_over_a_range(client: FlaskClient, output_url: str) -> None:
    etag, _ = validators(client, output_url)
    with client.get(output_url, headers={"If-None-Match": etag, "Range": "bytes=0-2"}) as r:
        assert r.status_code == 304 and r.data == b""
        assert r.headers["ETag"] == etag


def test_if_match_star_matches_an_existing_output(client: FlaskClient, output_url: str) -> None:
    with client.get(output_url, headers={"If-Match": "*"}) as response:
        assert response.status_code == 200 and response.data == DATA
    with client.get(output_url, headers={"If-Match": "*", "Range": "bytes=0-2"}) as response:
        assert response.status_code == 206 and response.data == DATA[:3]


def test_if_match_uses_the_strong_comparison(client: FlaskClient, output_url: str) -> None:
    etag, _ = validators(client, output_url)
    with client.get(output_url, headers={"If-Match": f'"other", {etag}'}) as response:
        assert response.status_code == 200
    assert_error(
        client.get(output_url, headers={"If-Match": f"W/{etag}"}), 412, "precondition_failed"
    )


def test_if_unmodified_since_in_the_past_is_a_412(client: FlaskClient, output_url: str) -> None:
    headers = {"If-Unmodified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"}
    assert_error(client.get(output_url, headers=headers), 412, "precondition_failed")
    _, modified = validators(client, output_url)
    with client.get(output_url, headers={"If-Unmodified-Since": modified}) as response:
        assert response.status_code == 200


def test_if_modified_since_answers_304_unless_if_none_match_is_there(
    client: FlaskClient, output_url: str
) -> None:
    _, modified = validators(client, output_url)
    with client.get(output_url, headers={"If-Modified-Since": modified}) as response:
        assert response.status_code == 304
    # If-None-Match, when present, decides alone (RFC 9110 13.1.3)
    headers = {"If-Modified-Since": modified, "If-None-Match": '"other"'}
    with client.get(output_url, headers=headers) as response:
        assert response.status_code == 200 and response.data == DATA


@pytest.mark.parametrize(
    "value",
    [
        "items=0-2",
        "bytes=abc",
        "bytes=0-2,4-5",
        "bytes=0-1, 3-",
        "bytes=2-1",
        "bytes=",
        "bytes=-",
        "bytes=0x1-2",
        "bytes=\uff11-\uff12",
        "0-2",
    ],
)
def test_a_range_we_cannot_read_is_ignored(
    client: FlaskClient, output_url: str, value: str
) -> None:
    """RFC 9110 14.2: unknown units and invalid or multiple ranges may be ignored: 200."""
    with client.get(output_url, headers={"Range": value}) as response:
        assert response.status_code == 200, (value, response.status_code, response.data[:200])
        assert response.data == DATA
        assert response.headers["Accept-Ranges"] == "bytes"


@pytest.mark.parametrize(
    ("value", "expected", "content_range"),
    [
        ("bytes=0-2", DATA[:3], "bytes 0-2/9"),
        ("BYTES=0-2", DATA[:3], "bytes 0-2/9"),
        ("bytes=4-", DATA[4:], "bytes 4-8/9"),
        ("bytes=-5", DATA[-5:], "bytes 4-8/9"),
        ("bytes=-50", DATA, "bytes 0-8/9"),
        ("bytes=8-99999999999999999999999", DATA[8:], "bytes 8-8/9"),
        ("bytes= 1-1 ", DATA[1:2], "bytes 1-1/9"),
    ],
)
def test_a_single_satisfiable_range_is_a_206(
    client: FlaskClient, output_url: str, value: str, expected: bytes, content_range: str
) -> None:
    with client.get(output_url, headers={"Range": value}) as response:
        assert response.status_code == 206, (value, response.status_code)
        assert response.data == expected
        assert response.headers["Content-Range"] == content_range
        assert response.headers["Content-Length"] == str(len(expected))


@pytest.mark.parametrize(
    "value", ["bytes=9-", "bytes=999-1000", "bytes=-0", "bytes=" + "9" * 5000 + "-"]
)
def test_an_unsatisfiable_range_is_a_416(client: FlaskClient, output_url: str, value: str) -> None:
    response = client.get(output_url, headers={"Range": value})
    assert_error(response, 416, "requested_range_not_satisfiable")
    assert response.headers["Content-Range"] == "bytes */9"


def test_if_range_serves_the_part_only_for_the_current_file(
    client: FlaskClient, output_url: str
) -> None:
    etag, modified = validators(client, output_url)
    for current in (etag, modified):
        with client.get(output_url, headers={"Range": "bytes=0-2", "If-Range": current}) as r:
            assert (r.status_code, r.data) == (206, DATA[:3])
    for stale in ('"other"', f"W/{etag}", http_date(0)):
        with client.get(output_url, headers={"Range": "bytes=0-2", "If-Range": stale}) as r:
            assert (r.status_code, r.data) == (200, DATA)


def test_head_ignores_the_range(client: FlaskClient, output_url: str) -> None:
    response = client.head(output_url, headers={"Range": "bytes=0-2"})
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(DATA))


# --- 4. no redirect built from the Host header --------------------------------------------


@pytest.mark.parametrize(
    "path", ["//worker/health", "//metrics", "/job//x/status", "///openapi.json"]
)
def test_a_doubled_slash_under_the_prefix_is_a_json_404_not_a_redirect(
    client: FlaskClient, path: str
) -> None:
    # Given a URL with a doubled slash and a Host header an attacker chose
    response = client.get(f"{PREFIX}{path}", headers={"Host": "evil.example"})
    # Then the answer is a JSON 404 that sends nobody anywhere
    body = assert_error(response, 404, "not_found")
    assert "Location" not in response.headers
    assert "evil.example" not in json.dumps(body)


def test_a_doubled_slash_is_a_404_before_and_after_the_token() -> None:
    client = make_app(PREVIEW_API_TOKEN=TOKEN, PREVIEW_NAMESPACE=IDLE_NAMESPACE).test_client()
    for headers in ({}, bearer()):
        response = client.post(f"{PREFIX}//job", json=job(), headers=headers)
        assert_error(response, 404, "not_found")
        assert "Location" not in response.headers


# --- 6. quirks: digits, tokens, duplicate keys --------------------------------------------


@pytest.mark.parametrize("index", ["\uff10", "\u0660", "\u06f0", "\u0966", "0\uff10", "²"])
def test_only_ascii_digits_are_an_output_index(
    client: FlaskClient, output_url: str, index: str
) -> None:
    url = output_url.rsplit("/", 1)[0] + "/" + index
    assert_error(client.get(url), 404, "not_found")


def test_ascii_indexes_still_work(client: FlaskClient, output_url: str) -> None:
    with client.get(output_url) as response:
        assert response.status_code == 200
    assert_error(client.get(output_url[:-1] + "9" * 5000), 404, "not_found")


@pytest.mark.parametrize("suffix", ["\xa0", "\u2003", "\x0b", "\x0c", "\x1c", "\x85"])
def test_a_token_followed_by_other_whitespace_is_refused(suffix: str) -> None:
    client = make_app(PREVIEW_API_TOKEN=TOKEN, PREVIEW_NAMESPACE=IDLE_NAMESPACE).test_client()
    headers = {"Authorization": f"Bearer {TOKEN}{suffix}"}
    assert_error(client.get(f"{PREFIX}/openapi.json", headers=headers), 401, "unauthorized")


@pytest.mark.parametrize("padding", [" ", "\t", "  ", " \t "])
def test_a_token_with_ascii_spaces_or_tabs_around_it_is_accepted(padding: str) -> None:
    client = make_app(PREVIEW_API_TOKEN=TOKEN, PREVIEW_NAMESPACE=IDLE_NAMESPACE).test_client()
    headers = {"Authorization": f"Bearer {padding}{TOKEN}{padding}"}
    assert client.get(f"{PREFIX}/openapi.json", headers=headers).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        '{"jobId": "a", "jobId": "b", "source": {"path": "a.png"}, '
        '"outputs": [{"width": 8, "height": 8, "format": "png"}]}',
        '{"source": {"path": "a.png", "path": "b.png"}, '
        '"outputs": [{"width": 8, "height": 8, "format": "png"}]}',
        '{"source": {"path": "a.png"}, "metadata": {"k": "1", "k": "2"}, '
        '"outputs": [{"width": 8, "width": 9, "height": 8, "format": "png"}]}',
    ],
    ids=["top", "nested", "in an array"],
)
def test_duplicate_keys_are_invalid_json(client: FlaskClient, body: str) -> None:
    response = client.post(f"{PREFIX}/job", data=body, content_type="application/json")
    error = assert_error(response, 400, "invalid_json")
    assert "duplicate" in error["message"]


def test_keys_that_differ_only_by_escapes_are_duplicates_too(client: FlaskClient) -> None:
    body: dict[str, Any] = job()
    text = json.dumps(body)[:-1] + ', "job\\u0049d": "other"}'
    response = client.post(f"{PREFIX}/job", data=text, content_type="application/json")
    assert_error(response, 400, "invalid_json")


# --- 5. unreadable bodies (gunicorn's own errors: tests/flask/test_flask_live.py) ---------


def test_a_server_error_type_on_read_is_invalid_json_but_the_hosts_limit_stays_413() -> None:
    """gunicorn raises its own exceptions (not OSErrors) for a malformed chunked body."""

    class InvalidChunkSize(Exception):  # gunicorn.http.errors.ParseException's shape
        pass

    class Broken:
        def read(self, *args: object) -> bytes:
            raise InvalidChunkSize("zz")

    app = make_app(PREVIEW_NAMESPACE=IDLE_NAMESPACE, MAX_CONTENT_LENGTH=100)
    client = app.test_client()
    chunked = {"wsgi.input_terminated": True}
    response = client.post(
        f"{PREFIX}/job",
        content_type="application/json",
        environ_overrides={"wsgi.input": Broken(), **chunked},
    )
    assert_error(response, 400, "invalid_json")
    # while a chunked body (no Content-Length) over the host's MAX_CONTENT_LENGTH, which
    # werkzeug's stream refuses while it is read, is still a 413
    body = json.dumps(job(metadata={"k": "x" * 200})).encode()
    response = client.post(
        f"{PREFIX}/job",
        content_type="application/json",
        environ_overrides={"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": "", **chunked},
    )
    assert_error(response, 413, "payload_too_large")

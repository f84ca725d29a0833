"""The HTTP API through Flask's test client: every route, every error code, auth on and off.

Jobs here go to a namespace no worker consumes (they stay queued); finished jobs are made
with the real state store's own transitions.  tests/flask/test_flask_live.py covers jobs a
real worker rendered, over a real HTTP server.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from preview_http import IDLE_NAMESPACE, PREFIX, TOKEN, bearer, job, make_app, new_job_id
from werkzeug.middleware.proxy_fix import ProxyFix

from dramatiq_preview.flask.appstate import get_state
from dramatiq_preview.state import JobStore
from dramatiq_preview.testing import free_port

CONTRACT_STATUS_KEYS = {
    "jobId",
    "state",
    "priority",
    "attempts",
    "progress",
    "createdAt",
    "startedAt",
    "finishedAt",
    "error",
    "result",
    "metadata",
    "webhook",
}


def store_of(app: Flask) -> JobStore:
    state = get_state(app)
    assert state is not None
    return state.client.store


def submitted(client: FlaskClient, **overrides: Any) -> str:
    response = client.post(f"{PREFIX}/job", json=job(**overrides))
    assert response.status_code == 202, response.json
    return str(response.json["jobId"])


def finish(app: Flask, job_id: str, outcome: str, data: dict[str, Any] | None = None) -> None:
    """Drive a job through the store's real transitions: create, claim, finish."""
    store = store_of(app)
    store.create(job_id, fp="fp", priority="normal", queue="preview-normal", metadata={})
    claim = store.claim(job_id, token="tok", lease_ms=60_000, max_deliveries=3)
    assert claim.verdict == "run"
    verdict, _ = store.finish(job_id, token="tok", outcome=outcome, data=data)
    assert verdict == "ok"


def succeeded_with(app: Flask, job_id: str, outputs: list[dict[str, Any]]) -> None:
    finish(app, job_id, "succeeded", {"outputs": outputs})


def write_output(job_id: str, name: str, data: bytes) -> dict[str, Any]:
    path = Path(os.environ["PREVIEW_OUTPUT_DIR"]) / job_id / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    fmt = {"webp": "webp", "jpg": "jpeg", "png": "png"}[name.rsplit(".", 1)[1]]
    return {"path": f"{job_id}/{name}", "width": 1, "height": 1, "format": fmt, "bytes": len(data)}


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.data[:500])
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.json
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    return body


# --- POST /job ----------------------------------------------------------------------------


def test_a_new_job_is_accepted_with_its_id_state_and_status_url(client: FlaskClient) -> None:
    # Given a valid payload with a client-chosen jobId
    payload = job()
    # When it is submitted
    response = client.post(f"{PREFIX}/job", json=payload)
    # Then it is accepted and queued, and the status URL points at the status route
    assert response.status_code == 202
    status_url = f"{PREFIX}/job/{payload['jobId']}/status"
    assert response.json == {"jobId": payload["jobId"], "state": "queued", "statusUrl": status_url}
    assert response.headers["Location"] == status_url
    assert client.get(status_url).json["state"] == "queued"


def test_a_job_without_a_job_id_gets_a_generated_one(client: FlaskClient) -> None:
    response = client.post(f"{PREFIX}/job", json=job(jobId=None))
    assert response.status_code == 202
    job_id = response.json["jobId"]
    assert len(job_id) == 32 and int(job_id, 16) >= 0
    assert response.json["statusUrl"] == f"{PREFIX}/job/{job_id}/status"


def test_the_same_job_again_is_a_duplicate_with_its_current_state(client: FlaskClient) -> None:
    # Given a job that was submitted and then cancelled
    payload = job(metadata={"owner": "ada"})
    client.post(f"{PREFIX}/job", json=payload)
    client.post(f"{PREFIX}/job/{payload['jobId']}/cancel")
    # When the same payload is submitted again (defaults spelled out this time)
    again = {**payload, "priority": "normal", "page": 0}
    response = client.post(f"{PREFIX}/job", json=again)
    # Then the answer is 200 with the existing job, its current state and duplicate: true
    assert response.status_code == 200
    assert response.json == {
        "jobId": payload["jobId"],
        "state": "cancelled",
        "statusUrl": f"{PREFIX}/job/{payload['jobId']}/status",
        "duplicate": True,
    }


def test_a_job_id_reused_with_another_payload_is_a_conflict(client: FlaskClient) -> None:
    payload = job()
    client.post(f"{PREFIX}/job", json=payload)
    other = {**payload, "outputs": [{"width": 64, "height": 64, "format": "png"}]}
    body = assert_error(client.post(f"{PREFIX}/job", json=other), 409, "conflict")
    assert payload["jobId"] in body["message"]


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"{'a': 1}", b"\xff\xfe{}", b'{"a": NaN}', b"[Infinity]", b"[" * 50_000],
    ids=["empty", "truncated", "single quotes", "not utf-8", "NaN", "Infinity", "deep"],
)
def test_a_body_that_is_not_json_is_invalid_json(client: FlaskClient, body: bytes) -> None:
    response = client.post(f"{PREFIX}/job", data=body, content_type="application/json")
    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_a_body_that_is_not_declared_as_json_is_unsupported(
    client: FlaskClient, content_type: str | None
) -> None:
    body = json.dumps(job()).encode()
    response = client.post(f"{PREFIX}/job", data=body, content_type=content_type)
    assert_error(response, 415, "unsupported_media_type")


def test_json_media_types_with_parameters_and_suffixes_are_accepted(client: FlaskClient) -> None:
    for content_type in ("application/json; charset=utf-8", "application/vnd.preview+json"):
        body = json.dumps(job()).encode()
        response = client.post(f"{PREFIX}/job", data=body, content_type=content_type)
        assert response.status_code == 202, response.json


def test_a_body_over_the_limit_is_refused_before_it_is_parsed(client: FlaskClient) -> None:
    # Given a body over 64 KiB that is not even JSON
    body = b"x" * 65_537
    # When it is posted / Then the size is the error, not the syntax
    response = client.post(f"{PREFIX}/job", data=body, content_type="application/json")
    assert_error(response, 413, "payload_too_large")
    # and the size is checked before the media type too
    response = client.post(f"{PREFIX}/job", data=body, content_type="text/plain")
    assert_error(response, 413, "payload_too_large")


def test_the_payload_limit_comes_from_the_config_and_is_inclusive() -> None:
    client = make_app(PREVIEW_NAMESPACE=IDLE_NAMESPACE, PREVIEW_MAX_PAYLOAD_BYTES=300).test_client()
    payload = job()
    text = json.dumps(payload)
    padded = text + " " * (300 - len(text))
    ok = client.post(f"{PREFIX}/job", data=padded, content_type="application/json")
    assert ok.status_code == 202, ok.json
    over = client.post(f"{PREFIX}/job", data=padded + " ", content_type="application/json")
    assert_error(over, 413, "payload_too_large")


@pytest.mark.parametrize(
    ("payload", "paths"),
    [
        ({"source": {"path": "a.png"}, "outputs": [{"width": "64"}]}, {"outputs/0/width"}),
        (
            {
                "source": {"path": "a.png"},
                "outputs": [{"width": 64.0, "height": 1, "format": "png"}],
            },
            {"outputs/0/width"},
        ),
        ({"outputs": [{"width": 1, "height": 1, "format": "gif"}]}, {"source", "outputs/0/format"}),
        ([], {""}),
        (
            {"source": {"path": "a", "url": "http://x.example"}, "outputs": []},
            {"source", "outputs"},
        ),
        ({**job(), "extra": True}, {"extra"}),
    ],
    ids=["string width", "float width", "missing source, bad format", "array", "both", "extra"],
)
def test_a_payload_that_breaks_the_schema_lists_every_violation(
    client: FlaskClient, payload: Any, paths: set[str]
) -> None:
    body = assert_error(client.post(f"{PREFIX}/job", json=payload), 422, "validation_error")
    assert {d["path"] for d in body["details"]} >= paths
    assert all(set(d) == {"path", "message"} and d["message"] for d in body["details"])


def test_a_422_detail_names_the_field_like_the_contract(client: FlaskClient) -> None:
    payload = job(outputs=[{"width": 0, "height": 10, "format": "png"}])
    body = assert_error(client.post(f"{PREFIX}/job", json=payload), 422, "validation_error")
    assert body["details"] == [{"path": "outputs/0/width", "message": "must be >= 1"}]


# --- Redis or the broker down -------------------------------------------------------------


@pytest.fixture
def dead_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def test_every_job_route_answers_503_when_redis_is_down(dead_redis_url: str) -> None:
    client = make_app(PREVIEW_REDIS_URL=dead_redis_url).test_client()
    for response in (
        client.post(f"{PREFIX}/job", json=job()),
        client.get(f"{PREFIX}/job/abc/status"),
        client.post(f"{PREFIX}/job/abc/cancel"),
        client.get(f"{PREFIX}/job/abc/outputs/0"),
    ):
        body = assert_error(response, 503, "unavailable")
        assert "Redis" in body["message"]
        assert response.headers["Retry-After"] == "5"


def test_health_is_down_with_503_when_redis_is_down(dead_redis_url: str) -> None:
    client = make_app(PREVIEW_REDIS_URL=dead_redis_url).test_client()
    response = client.get(f"{PREFIX}/worker/health")
    assert response.status_code == 503
    assert response.json["status"] == "down"


def test_a_broker_outage_is_503_and_leaves_no_job_behind(dead_redis_url: str) -> None:
    # Given a state store that works and a broker that does not
    app = make_app(PREVIEW_NAMESPACE=IDLE_NAMESPACE, PREVIEW_BROKER_URL=dead_redis_url)
    client = app.test_client()
    payload = job()
    # When a job is submitted / Then it is refused and not recorded
    assert_error(client.post(f"{PREFIX}/job", json=payload), 503, "unavailable")
    assert_error(client.get(f"{PREFIX}/job/{payload['jobId']}/status"), 404, "not_found")


# --- GET /job/{jobId}/status --------------------------------------------------------------


def test_the_status_has_every_contract_field(client: FlaskClient) -> None:
    job_id = submitted(client, metadata={"k": "v"}, priority="high")
    response = client.get(f"{PREFIX}/job/{job_id}/status")
    assert response.status_code == 200
    status = response.json
    assert set(status) == CONTRACT_STATUS_KEYS | {"nextAttemptAt"}
    assert status["jobId"] == job_id and status["state"] == "queued"
    assert status["priority"] == "high" and status["metadata"] == {"k": "v"}
    assert status["attempts"] == 0 and status["progress"] == 0
    assert status["createdAt"].endswith("Z") and status["startedAt"] is None
    assert status["error"] is None and status["result"] is None


def test_a_succeeded_status_links_every_output(app: Flask, client: FlaskClient) -> None:
    job_id = new_job_id()
    outputs = [write_output(job_id, "0.png", b"a"), write_output(job_id, "1.webp", b"b")]
    succeeded_with(app, job_id, outputs)
    status = client.get(f"{PREFIX}/job/{job_id}/status").json
    assert status["state"] == "succeeded" and status["progress"] == 100
    assert status["result"]["outputs"] == [
        {**outputs[0], "url": f"{PREFIX}/job/{job_id}/outputs/0"},
        {**outputs[1], "url": f"{PREFIX}/job/{job_id}/outputs/1"},
    ]


def test_a_failed_status_carries_the_error(app: Flask, client: FlaskClient) -> None:
    job_id = new_job_id()
    error = {"type": "source_not_found", "message": "no such file: a.png", "retryable": False}
    finish(app, job_id, "failed", error)
    status = client.get(f"{PREFIX}/job/{job_id}/status").json
    assert status["state"] == "failed" and status["error"] == error and status["result"] is None


@pytest.mark.parametrize("job_id", ["nope", "-dash-first", "x" * 129, "a%20b"])
def test_an_unknown_or_impossible_job_id_is_not_found(client: FlaskClient, job_id: str) -> None:
    assert_error(client.get(f"{PREFIX}/job/{job_id}/status"), 404, "not_found")


# --- POST /job/{jobId}/cancel -------------------------------------------------------------


def test_a_queued_job_is_cancelled_and_cancelling_again_is_a_conflict(
    client: FlaskClient,
) -> None:
    job_id = submitted(client)
    first = client.post(f"{PREFIX}/job/{job_id}/cancel")
    assert first.status_code == 202
    assert first.json == {"jobId": job_id, "state": "cancelled"}
    # cancelled is a final state: contract §5 answers 409 for a finished job
    assert_error(client.post(f"{PREFIX}/job/{job_id}/cancel"), 409, "conflict")
    assert client.get(f"{PREFIX}/job/{job_id}/status").json["state"] == "cancelled"


def test_a_running_job_is_on_its_way_to_cancelled(app: Flask, client: FlaskClient) -> None:
    job_id = new_job_id()
    store = store_of(app)
    store.create(job_id, fp="fp", priority="normal", queue="preview-normal", metadata={})
    store.claim(job_id, token="tok", lease_ms=60_000, max_deliveries=3)
    response = client.post(f"{PREFIX}/job/{job_id}/cancel")
    assert (response.status_code, response.json) == (202, {"jobId": job_id, "state": "running"})
    # the render sees the flag at its next checkpoint
    assert store.progress(job_id, token="tok", percent=50) == 1


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_a_finished_job_cannot_be_cancelled(app: Flask, client: FlaskClient, outcome: str) -> None:
    job_id = new_job_id()
    finish(app, job_id, outcome, {"outputs": []} if outcome == "succeeded" else {"type": "x"})
    body = assert_error(client.post(f"{PREFIX}/job/{job_id}/cancel"), 409, "conflict")
    assert outcome in body["message"]


def test_cancelling_an_unknown_job_is_not_found(client: FlaskClient) -> None:
    assert_error(client.post(f"{PREFIX}/job/{new_job_id()}/cancel"), 404, "not_found")


# --- GET /job/{jobId}/outputs/{index} -----------------------------------------------------


def test_an_output_is_served_with_its_type_etag_and_cache_control(
    app: Flask, client: FlaskClient
) -> None:
    job_id = new_job_id()
    outputs = [write_output(job_id, "0.png", b"png bytes"), write_output(job_id, "1.jpg", b"jpg")]
    succeeded_with(app, job_id, outputs)
    with client.get(f"{PREFIX}/job/{job_id}/outputs/0") as response:
        assert response.status_code == 200
        assert response.data == b"png bytes"
        assert response.mimetype == "image/png"
        assert response.headers["ETag"]
        assert response.cache_control.private and response.cache_control.max_age == 3600
        assert not response.cache_control.public
    with client.get(f"{PREFIX}/job/{job_id}/outputs/1") as jpeg:
        assert jpeg.mimetype == "image/jpeg"
    # and a client that has it already gets a 304
    etag = response.headers["ETag"]
    headers = {"If-None-Match": etag}
    with client.get(f"{PREFIX}/job/{job_id}/outputs/0", headers=headers) as cached:
        assert cached.status_code == 304 and cached.data == b""


def test_output_ranges_and_preconditions_answer_as_documented(
    app: Flask, client: FlaskClient
) -> None:
    """A byte range gets 206, an impossible one a JSON 416, and a failed If-Match a JSON 412
    without the file (found by hand-made requests: werkzeug kept the file as the body)."""
    job_id = new_job_id()
    succeeded_with(app, job_id, [write_output(job_id, "0.png", b"png bytes")])
    url = f"{PREFIX}/job/{job_id}/outputs/0"
    with client.get(url, headers={"Range": "bytes=0-2"}) as partial:
        assert partial.status_code == 206 and partial.data == b"png"
        assert partial.headers["Content-Range"] == "bytes 0-2/9"
    assert_error(
        client.get(url, headers={"Range": "bytes=999-"}), 416, "requested_range_not_satisfiable"
    )
    failed = client.get(url, headers={"If-Match": '"not-the-etag"'})
    body = assert_error(failed, 412, "precondition_failed")
    assert b"png bytes" not in failed.data and "ETag" in body["message"]


def test_an_unreadable_body_is_a_400_not_a_server_error(client: FlaskClient) -> None:
    """Given a body stream that fails mid-read (a malformed chunked body, a client gone),
    then the answer is a JSON 400."""

    class Broken:
        def read(self, *args: object) -> bytes:
            raise OSError("Invalid chunk header")

    for length in ({"wsgi.input_terminated": True}, {"CONTENT_LENGTH": "10"}):
        response = client.post(
            f"{PREFIX}/job",
            content_type="application/json",
            environ_overrides={"wsgi.input": Broken(), **length},
        )
        assert_error(response, 400, "invalid_json")


def test_outputs_are_not_found_until_the_job_succeeded(client: FlaskClient) -> None:
    job_id = submitted(client)
    body = assert_error(client.get(f"{PREFIX}/job/{job_id}/outputs/0"), 404, "not_found")
    assert "queued" in body["message"]


@pytest.mark.parametrize("index", ["2", "99999999999999999999", "-1", "x"])
def test_an_index_out_of_range_is_not_found(app: Flask, client: FlaskClient, index: str) -> None:
    job_id = new_job_id()
    succeeded_with(
        app, job_id, [write_output(job_id, "0.png", b"a"), write_output(job_id, "1.png", b"b")]
    )
    assert_error(client.get(f"{PREFIX}/job/{job_id}/outputs/{index}"), 404, "not_found")


def test_only_files_inside_the_jobs_output_directory_are_served(
    app: Flask, client: FlaskClient, tmp_path: Path
) -> None:
    # Given a succeeded job whose record points outside its directory in every way possible
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    job_id = new_job_id()
    other = new_job_id()
    real = write_output(job_id, "0.png", b"mine")
    write_output(other, "0.png", b"not mine")
    link = Path(os.environ["PREVIEW_OUTPUT_DIR"]) / job_id / "1.png"
    link.symlink_to(secret)
    (Path(os.environ["PREVIEW_OUTPUT_DIR"]) / job_id / "dir.png").mkdir()
    hostile = ["../../../../../../" + str(secret), str(secret), f"{job_id}/1.png", f"{other}/0.png"]
    hostile += [f"{job_id}/../{other}/0.png", f"{job_id}/dir.png", f"{job_id}/missing.png"]
    hostile += [f"{job_id}/0.png\0.txt", None, 7]  # a NUL, no path, not text
    outputs: list[Any] = [real] + [{**real, "path": path} for path in hostile]
    outputs += ["not an object"]
    succeeded_with(app, job_id, outputs)
    # When each is requested / Then only the job's own regular file is served
    with client.get(f"{PREFIX}/job/{job_id}/outputs/0") as response:
        assert response.data == b"mine"
    for index in range(1, len(outputs)):
        response = client.get(f"{PREFIX}/job/{job_id}/outputs/{index}")
        assert_error(response, 404, "not_found")
        assert b"secret" not in response.data
    # and a format that is not a name is served as bytes, not a server error
    third = new_job_id()
    succeeded_with(app, third, [{**write_output(third, "0.png", b"odd"), "format": ["png"]}])
    with client.get(f"{PREFIX}/job/{third}/outputs/0") as odd:
        assert (odd.status_code, odd.mimetype) == (200, "application/octet-stream")


# --- GET /worker/health, /metrics, /openapi.json ------------------------------------------


def test_health_reports_ok_or_degraded_with_200(client: FlaskClient) -> None:
    response = client.get(f"{PREFIX}/worker/health")
    assert response.status_code == 200
    assert response.json["status"] in ("ok", "degraded")


def test_metrics_count_the_requests_under_the_prefix(client: FlaskClient) -> None:
    client.post(f"{PREFIX}/job", json=job())
    client.get(f"{PREFIX}/nowhere")
    client.get("/")
    response = client.get(f"{PREFIX}/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert 'endpoint="submit_job",method="POST",status="202"} 1.0' in text
    assert 'endpoint="unmatched",method="GET",status="404"} 1.0' in text
    assert 'endpoint="index"' not in text
    assert "preview_queue_depth" in text


@pytest.mark.parametrize("version", ["abc", "1.x", ""])
def test_metrics_survive_a_malformed_accept_version(client: FlaskClient, version: str) -> None:
    """prometheus_client raised on "version=abc" (a 500): such scrapers get plain text."""
    headers = {"Accept": f"text/plain; version={version}"}
    response = client.get(f"{PREFIX}/metrics", headers=headers)
    assert response.status_code == 200 and response.mimetype == "text/plain"
    assert "preview_queue_depth" in response.get_data(as_text=True)


# --- JSON errors for unmatched URLs, host URLs untouched ----------------------------------


@pytest.mark.parametrize(
    "path", ["", "/", "/nope", "/job/abc", "/job/abc/status/more", "/job/abc/outputs/0/x"]
)
def test_unmatched_urls_under_the_prefix_are_json_404s(client: FlaskClient, path: str) -> None:
    assert_error(client.get(f"{PREFIX}{path}"), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/job", {"POST"}),
        ("DELETE", "/job/abc/status", {"GET"}),
        ("GET", "/job/abc/cancel", {"POST"}),
        ("PUT", "/openapi.json", {"GET"}),
    ],
)
def test_wrong_methods_under_the_prefix_are_json_405s_with_allow(
    client: FlaskClient, method: str, path: str, allowed: set[str]
) -> None:
    response = client.open(f"{PREFIX}{path}", method=method)
    assert_error(response, 405, "method_not_allowed")
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}


def test_a_url_werkzeug_would_redirect_is_a_json_404_under_the_prefix(
    client: FlaskClient,
) -> None:
    # werkzeug answers "//" with a 308 to an absolute URL built from the Host header
    # (issue 19); under the prefix it is a 404 instead, with no Location.
    response = client.get(f"{PREFIX}//worker/health")
    assert_error(response, 404, "not_found")
    assert "Location" not in response.headers


def test_the_hosts_own_404s_and_handlers_are_left_alone() -> None:
    # Given a host with its own 404 handler, registered before and after the extension
    for order in ("before", "after"):
        app = Flask("host")

        def not_found(error: Exception) -> tuple[str, int]:
            return "host says no", 404

        if order == "before":
            app.register_error_handler(404, not_found)
        from dramatiq_preview.flask import PreviewExtension

        PreviewExtension(app)
        if order == "after":
            app.register_error_handler(404, not_found)
        client = app.test_client()
        # Then the host's URLs get the host's answer, and ours stay JSON
        assert client.get("/missing").data == b"host says no"
        assert client.get(f"{PREFIX}x").data == b"host says no"  # /api/previewx is not ours
        assert_error(client.get(f"{PREFIX}/missing"), 404, "not_found")
        assert_error(client.get(f"{PREFIX}/job/nope/status"), 404, "not_found")


def test_a_host_without_handlers_keeps_flasks_html_404(client: FlaskClient) -> None:
    response = client.get("/missing")
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert client.get("/").data == b"host index"


def test_an_unexpected_error_is_a_json_500_without_a_stack_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an authorize hook that crashes
    def authorize(request: Any) -> bool:
        raise ZeroDivisionError("secret detail")

    client = make_app(authorize=authorize, PREVIEW_NAMESPACE=IDLE_NAMESPACE).test_client()
    # When a request comes in
    with caplog.at_level(logging.ERROR, logger="dramatiq_preview.flask"):
        response = client.post(f"{PREFIX}/job", json=job())
    # Then the client sees a JSON 500 without details, and the log has them
    body = assert_error(response, 500, "internal_error")
    assert "secret detail" not in json.dumps(body) and "ZeroDivisionError" not in json.dumps(body)
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


# --- authentication -----------------------------------------------------------------------

#: Each protected route with the answer it gives a good request: ``{queued}`` is a queued
#: job, ``{succeeded}`` one that succeeded with one output.
OPENED = [
    ("POST", "/job", 202),
    ("GET", "/job/{queued}/status", 200),
    ("POST", "/job/{queued}/cancel", 202),
    ("GET", "/job/{succeeded}/outputs/0", 200),
    ("GET", "/metrics", 200),
    ("GET", "/openapi.json", 200),
]
#: The same routes for the refusals (nothing is looked up before the token is checked).
PROTECTED = [(method, path.format(queued="abc", succeeded="abc")) for method, path, _ in OPENED]


@pytest.fixture
def token_client() -> FlaskClient:
    return make_app(PREVIEW_API_TOKEN=TOKEN, PREVIEW_NAMESPACE=IDLE_NAMESPACE).test_client()


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        TOKEN,
        "Bearer ",
        "Bearer é",
    ],
)
def test_with_a_token_every_route_but_health_needs_it(
    token_client: FlaskClient, method: str, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = token_client.open(f"{PREFIX}{path}", method=method, headers=headers, json=job())
    assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="dramatiq-preview"')


def test_a_wrong_token_is_called_invalid_in_the_challenge(token_client: FlaskClient) -> None:
    missing = token_client.get(f"{PREFIX}/openapi.json")
    wrong = token_client.get(f"{PREFIX}/openapi.json", headers=bearer("wrong-token-123456"))
    assert "invalid_token" not in missing.headers["WWW-Authenticate"]
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]


@pytest.mark.parametrize(("method", "path", "expected"), OPENED)
def test_the_right_token_opens_every_route(method: str, path: str, expected: int) -> None:
    # Given a protected API, a queued job and a job that succeeded with one output
    app = make_app(PREVIEW_API_TOKEN=TOKEN, PREVIEW_NAMESPACE=IDLE_NAMESPACE)
    client = app.test_client()
    queued = client.post(f"{PREFIX}/job", json=job(), headers=bearer()).json["jobId"]
    succeeded = new_job_id()
    succeeded_with(app, succeeded, [write_output(succeeded, "0.png", b"png bytes")])
    # When a good request comes with the right token
    url = PREFIX + path.format(queued=queued, succeeded=succeeded)
    body = job() if path == "/job" else None
    with client.open(url, method=method, headers=bearer(), json=body) as response:
        # Then the route does its work: its success answer, not a refusal, an error or a 500
        assert response.status_code == expected, (response.status_code, response.data[:300])


def test_health_stays_open_with_a_token(token_client: FlaskClient) -> None:
    assert token_client.get(f"{PREFIX}/worker/health").status_code == 200


def test_the_authorize_hook_decides_after_the_token() -> None:
    # Given a host that only lets requests with an X-User header in
    seen: list[str] = []

    def authorize(request: Any) -> bool:
        seen.append(request.path)
        return bool(request.headers.get("X-User"))

    app = make_app(authorize=authorize, PREVIEW_API_TOKEN=TOKEN, PREVIEW_NAMESPACE=IDLE_NAMESPACE)
    client = app.test_client()
    # Then: no token is 401 before the hook runs, a refusal is 403, a yes goes through
    assert_error(client.post(f"{PREFIX}/job", json=job()), 401, "unauthorized")
    assert seen == []
    assert_error(client.post(f"{PREFIX}/job", json=job(), headers=bearer()), 403, "forbidden")
    ok = client.post(f"{PREFIX}/job", json=job(), headers={**bearer(), "X-User": "ada"})
    assert ok.status_code == 202
    assert seen == [f"{PREFIX}/job", f"{PREFIX}/job"]
    # and health never asks the hook
    assert client.get(f"{PREFIX}/worker/health").status_code == 200
    assert len(seen) == 2


def test_without_a_token_the_api_is_open(client: FlaskClient) -> None:
    assert client.get(f"{PREFIX}/openapi.json").status_code == 200
    assert client.post(f"{PREFIX}/job", json=job()).status_code == 202


def test_cors_preflights_are_not_asked_for_a_token(token_client: FlaskClient) -> None:
    response = token_client.options(f"{PREFIX}/job")
    assert response.status_code == 200
    assert "POST" in response.headers["Allow"]
    # JSON like every answer under the prefix, naming the same methods.
    assert response.is_json
    assert set(response.get_json()["allow"]) == set(response.headers["Allow"].split(", "))


# --- URLs: prefix, SCRIPT_NAME, proxies ---------------------------------------------------


def test_a_changed_prefix_moves_every_route_and_url() -> None:
    app = make_app(PREVIEW_URL_PREFIX="/v2/previews/", PREVIEW_NAMESPACE=IDLE_NAMESPACE)
    client = app.test_client()
    response = client.post("/v2/previews/job", json=job())
    assert response.status_code == 202
    assert response.json["statusUrl"].startswith("/v2/previews/job/")
    assert client.get(response.json["statusUrl"]).status_code == 200
    assert client.get(f"{PREFIX}/worker/health").mimetype == "text/html"  # not ours any more
    assert_error(client.get("/v2/previews/nope"), 404, "not_found")
    assert client.get("/v2/previews/openapi.json").json["servers"] == [{"url": "/v2/previews"}]


def test_urls_include_the_script_name(client: FlaskClient) -> None:
    base = "http://localhost/mounted/here/"
    response = client.post(f"{PREFIX}/job", json=job(), base_url=base)
    assert response.json["statusUrl"].startswith(f"/mounted/here{PREFIX}/job/")
    document = client.get(f"{PREFIX}/openapi.json", base_url=base).json
    assert document["servers"] == [{"url": f"/mounted/here{PREFIX}"}]


def test_urls_follow_a_proxy_prefix_through_proxyfix(app: Flask) -> None:
    app.wsgi_app = ProxyFix(app.wsgi_app, x_prefix=1)  # type: ignore[method-assign]
    client = app.test_client()
    response = client.post(f"{PREFIX}/job", json=job(), headers={"X-Forwarded-Prefix": "/edge"})
    assert response.json["statusUrl"].startswith(f"/edge{PREFIX}/job/")
    job_id = new_job_id()
    succeeded_with(app, job_id, [write_output(job_id, "0.png", b"a")])
    status = client.get(f"{PREFIX}/job/{job_id}/status", headers={"X-Forwarded-Prefix": "/edge"})
    assert status.json["result"]["outputs"][0]["url"] == f"/edge{PREFIX}/job/{job_id}/outputs/0"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        # nesting a JSON parser accepts, far deeper than any payload of ours
        (
            '{"source": {"path": "a.png"}, "outputs": [], "metadata": {"k": '
            + "[" * 600
            + "]" * 600
            + "}}",
            "metadata/k",
        ),
        # a lone surrogate, valid JSON escape but not Unicode text
        (
            '{"jobId": "a\\ud800", "source": {"path": "a.png"}, '
            '"outputs": [{"width": 8, "height": 8, "format": "png"}]}',
            "jobId",
        ),
    ],
)
def test_hostile_but_parsable_bodies_are_422_not_500(
    client: FlaskClient, body: str, path: str
) -> None:
    response = client.post(f"{PREFIX}/job", data=body, content_type="application/json")
    error = assert_error(response, 422, "validation_error")
    assert any(d["path"].startswith(path) for d in error["details"]), error

"""GET /job/{jobId}/outputs/{index} when PREVIEW_OUTPUT_DIR is an S3 prefix (contract §9).

Against a real S3-compatible server (SeaweedFS, ``s3_server``) and the private Redis: jobs
are finished with the state store's own transitions and their outputs stored with the
library's own S3 storage, as a worker would.  Two ways of answering: a 307 to a presigned
URL (``PREVIEW_OUTPUT_URL_TTL_SECONDS`` > 0) or the bytes streamed through the web process
(``= 0``).
"""

from __future__ import annotations

import os
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from preview_http import IDLE_NAMESPACE, PREFIX, make_app, new_job_id

from dramatiq_preview.flask.appstate import get_state
from dramatiq_preview.storage import Storage, open_storage
from dramatiq_preview.testing import S3Server

OUTPUT_PREFIX = "outs"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


class S3Outputs:
    """An app whose PREVIEW_OUTPUT_DIR is a fresh bucket, and ways to make succeeded jobs."""

    def __init__(self, app: Flask, bucket: str) -> None:
        self.app = app
        self.bucket = bucket
        self.client: FlaskClient = app.test_client()

    @property
    def storage(self) -> Storage:
        state = get_state(self.app)
        assert state is not None
        return open_storage(state.settings.output_dir, state.settings)

    def put(self, key: str, data: bytes, content_type: str = "image/png") -> None:
        self.storage.put(key, data, content_type)

    def succeeded(self, job_id: str, outputs: list[Any]) -> None:
        """Record ``job_id`` as succeeded with ``outputs`` through the real state store."""
        state = get_state(self.app)
        assert state is not None
        store = state.client.store
        store.create(job_id, fp="fp", priority="normal", queue="preview-normal", metadata={})
        claim = store.claim(job_id, token="tok", lease_ms=60_000, max_deliveries=3)
        assert claim.verdict == "run"
        verdict, _ = store.finish(
            job_id, token="tok", outcome="succeeded", data={"outputs": outputs}
        )
        assert verdict == "ok"

    def job_with(self, data: bytes, name: str = "0.png", fmt: str = "png") -> str:
        """A succeeded job whose output 0 is ``data``, stored where a worker puts it."""
        job_id = new_job_id()
        self.put(f"{job_id}/{name}", data, f"image/{fmt}")
        self.succeeded(job_id, [entry(job_id, name, fmt, len(data))])
        return job_id


def entry(job_id: str, name: str, fmt: str = "png", size: int = 1) -> dict[str, Any]:
    return {"path": f"{job_id}/{name}", "width": 1, "height": 1, "format": fmt, "bytes": size}


def s3_app(bucket: str, ttl: int, **config: Any) -> Flask:
    return make_app(
        PREVIEW_NAMESPACE=IDLE_NAMESPACE,
        PREVIEW_OUTPUT_DIR=f"s3://{bucket}/{OUTPUT_PREFIX}",
        PREVIEW_OUTPUT_URL_TTL_SECONDS=ttl,
        **config,
    )


@pytest.fixture
def streaming(s3_env: S3Server) -> S3Outputs:
    bucket = s3_env.create_bucket()
    return S3Outputs(s3_app(bucket, 0), bucket)


@pytest.fixture
def redirecting(s3_env: S3Server) -> S3Outputs:
    bucket = s3_env.create_bucket()
    return S3Outputs(s3_app(bucket, 900), bucket)


def url_of(job_id: str, index: int = 0) -> str:
    return f"{PREFIX}/job/{job_id}/outputs/{index}"


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.json
    assert body["error"] == code and body["message"], body
    return body


# --- redirect mode (PREVIEW_OUTPUT_URL_TTL_SECONDS > 0) -------------------------------------


def test_a_download_redirects_to_a_presigned_url_that_serves_the_image(
    redirecting: S3Outputs, s3_server: S3Server
) -> None:
    # Given a succeeded job whose output is in S3, served by presigned URLs
    job_id = redirecting.job_with(PNG)
    # When the output is requested
    response = redirecting.client.get(url_of(job_id))
    # Then the answer is a 307 to S3 that nobody may cache (the URL expires)
    assert response.status_code == 307
    location = response.headers["Location"]
    assert location.startswith(s3_server.endpoint_url + "/")
    assert response.headers["Cache-Control"] == "private, no-store"
    assert response.headers["ETag"].startswith('"')
    assert response.json["url"] == location and response.json["expiresInSeconds"] == 900
    # and a plain HTTP client following it, without any credentials, gets the exact image
    with urllib.request.urlopen(location, timeout=30) as followed:
        assert followed.read() == PNG
        assert followed.headers["Content-Type"] == "image/png"


def test_head_of_a_redirected_download_answers_the_same_redirect(redirecting: S3Outputs) -> None:
    # Given a succeeded job whose output is in S3
    job_id = redirecting.job_with(PNG)
    # When its output is asked for with HEAD
    response = redirecting.client.head(url_of(job_id))
    # Then it is the same 307 without a body
    assert response.status_code == 307 and response.data == b""
    assert "X-Amz-Signature=" in response.headers["Location"]
    assert response.headers["Cache-Control"] == "private, no-store"


def test_a_client_that_has_the_image_gets_a_304_instead_of_a_redirect(
    redirecting: S3Outputs,
) -> None:
    # Given the ETag a first download gave
    job_id = redirecting.job_with(PNG)
    etag = redirecting.client.get(url_of(job_id)).headers["ETag"]
    # When the client revalidates with it
    response = redirecting.client.get(url_of(job_id), headers={"If-None-Match": etag})
    # Then nothing is sent again and no new URL is handed out
    assert response.status_code == 304 and response.data == b""
    assert response.headers["ETag"] == etag and "Location" not in response.headers


def test_the_openapi_document_of_a_redirecting_app_documents_the_307(
    redirecting: S3Outputs, streaming: S3Outputs
) -> None:
    # Given an app that redirects downloads to S3 and one that streams them
    def answers(app: S3Outputs) -> dict[str, Any]:
        doc = app.client.get(f"{PREFIX}/openapi.json").json
        responses: dict[str, Any] = doc["paths"]["/job/{jobId}/outputs/{index}"]["get"]["responses"]
        return responses

    # Then only the redirecting app's document says a download may be a 307 with Location
    assert "Location" in answers(redirecting)["307"]["headers"]
    assert "307" not in answers(streaming)


# --- streaming mode (PREVIEW_OUTPUT_URL_TTL_SECONDS = 0) ------------------------------------


def test_a_streamed_download_is_the_exact_file_with_its_type_and_validators(
    streaming: S3Outputs,
) -> None:
    # Given a succeeded job with a PNG and a WebP larger than one read from S3 (1 MiB)
    job_id = new_job_id()
    big = os.urandom(3 * 1024 * 1024 + 17)
    streaming.put(f"{job_id}/0.png", PNG)
    streaming.put(f"{job_id}/1.webp", big, "image/webp")
    streaming.succeeded(
        job_id, [entry(job_id, "0.png", "png", len(PNG)), entry(job_id, "1.webp", "webp")]
    )
    # When each output is downloaded
    with streaming.client.get(url_of(job_id)) as response:
        # Then the bytes come through the web process with the headers of a local file
        assert response.status_code == 200 and response.data == PNG
        assert response.mimetype == "image/png"
        assert response.headers["Content-Length"] == str(len(PNG))
        assert response.headers["ETag"].startswith('"')
        assert response.headers["Last-Modified"]
        assert response.headers["Accept-Ranges"] == "bytes"
        assert response.cache_control.private and response.cache_control.max_age == 3600
        assert "Location" not in response.headers
    with streaming.client.get(url_of(job_id, 1)) as webp:
        assert webp.status_code == 200 and webp.mimetype == "image/webp"
        assert webp.data == big


def test_a_streamed_download_answers_conditional_requests(streaming: S3Outputs) -> None:
    # Given a downloaded output and its validators
    job_id = streaming.job_with(PNG)
    first = streaming.client.get(url_of(job_id))
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    # When the client revalidates by ETag or by date / Then it gets a 304 with the ETag
    for headers in ({"If-None-Match": etag}, {"If-Modified-Since": modified}):
        cached = streaming.client.get(url_of(job_id), headers=headers)
        assert cached.status_code == 304 and cached.data == b""
        assert cached.headers["ETag"] == etag
    # and If-Match with its ETag is served
    assert streaming.client.get(url_of(job_id), headers={"If-Match": etag}).data == PNG


def test_a_failed_if_match_is_a_412_without_the_file(streaming: S3Outputs) -> None:
    # Given a succeeded job whose output is in S3
    job_id = streaming.job_with(PNG)
    # When the client asks on the condition of an ETag it does not have
    response = streaming.client.get(url_of(job_id), headers={"If-Match": '"not-the-etag"'})
    # Then the answer is a JSON 412 and the file is not sent
    body = assert_error(response, 412, "precondition_failed")
    assert "ETag" in body["message"] and PNG not in response.data


def test_a_byte_range_of_a_streamed_download_is_a_206(streaming: S3Outputs) -> None:
    # Given a succeeded job whose output is in S3
    job_id = streaming.job_with(PNG)
    size = len(PNG)
    # When parts of it are asked for / Then each is a 206 with its Content-Range
    for header, start, stop in (("bytes=0-7", 0, 8), ("bytes=-4", size - 4, size)):
        with streaming.client.get(url_of(job_id), headers={"Range": header}) as partial:
            assert partial.status_code == 206 and partial.data == PNG[start:stop]
            assert partial.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}"
            assert partial.headers["Content-Length"] == str(stop - start)
            assert partial.mimetype == "image/png"


def test_a_range_past_the_end_is_a_416(streaming: S3Outputs) -> None:
    # Given a succeeded job whose output is in S3
    job_id = streaming.job_with(PNG)
    # When a range past its end is asked for
    response = streaming.client.get(url_of(job_id), headers={"Range": "bytes=99999-"})
    # Then the answer is a JSON 416 that says the size
    assert_error(response, 416, "requested_range_not_satisfiable")
    assert response.headers["Content-Range"] == f"bytes */{len(PNG)}"


def test_a_range_with_a_stale_if_range_gets_the_whole_file(streaming: S3Outputs) -> None:
    # Given a succeeded job whose output is in S3
    job_id = streaming.job_with(PNG)
    # When a range is asked for only if the file is still an older version
    headers = {"Range": "bytes=0-7", "If-Range": '"an-older-etag"'}
    with streaming.client.get(url_of(job_id), headers=headers) as response:
        # Then the whole current file comes back
        assert response.status_code == 200 and response.data == PNG


def test_head_of_a_streamed_download_has_the_headers_without_the_body(
    streaming: S3Outputs,
) -> None:
    # Given a succeeded job whose output is in S3
    job_id = streaming.job_with(PNG)
    # When its output is asked for with HEAD
    response = streaming.client.head(url_of(job_id))
    # Then the headers are those of the GET, without a body
    assert response.status_code == 200 and response.data == b""
    assert response.headers["Content-Length"] == str(len(PNG))
    assert response.mimetype == "image/png" and response.headers["ETag"]


# --- what is never served ------------------------------------------------------------------


def test_a_missing_object_is_a_404(streaming: S3Outputs, redirecting: S3Outputs) -> None:
    for app in (streaming, redirecting):
        # Given a job that succeeded but whose object is gone from the bucket
        job_id = new_job_id()
        app.succeeded(job_id, [entry(job_id, "0.png")])
        # When its output is requested
        response = app.client.get(url_of(job_id))
        # Then the answer says the output is missing, and sends nobody to S3
        body = assert_error(response, 404, "not_found")
        assert body["message"] == f"output 0 of job {job_id!r} is missing"
        assert "Location" not in response.headers


@pytest.mark.parametrize("mode", ["streaming", "redirecting"])
def test_only_the_jobs_own_objects_are_served(mode: str, request: pytest.FixtureRequest) -> None:
    app: S3Outputs = request.getfixturevalue(mode)
    # Given another job's output, an object above the job prefixes, and a job whose record
    # points at them in every way a key can
    other = app.job_with(b"not mine")
    job_id = new_job_id()
    app.put(f"{job_id}/0.png", b"mine")
    app.put("secret.png", b"secret")
    hostile = [
        f"{other}/0.png",
        f"{job_id}/../{other}/0.png",
        f"{job_id}/../secret.png",
        "../secret.png",
        f"/{job_id}/0.png",
        f"{job_id}//0.png",
        f"{job_id}/0.png\0",
        f"{job_id}/..",
        f"{job_id}/",
        job_id,
    ]
    outputs = [entry(job_id, "0.png")] + [{**entry(job_id, "0.png"), "path": p} for p in hostile]
    app.succeeded(job_id, outputs)
    # When each is requested / Then only the job's own object is served
    served = app.client.get(url_of(job_id))
    assert served.status_code in (200, 307)
    for index in range(1, len(outputs)):
        response = app.client.get(url_of(job_id, index))
        assert_error(response, 404, "not_found")
        assert "Location" not in response.headers
        assert b"not mine" not in response.data and b"secret" not in response.data


# --- S3 unusable ---------------------------------------------------------------------------


@pytest.fixture
def stopped_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[S3Server, str]]:
    """A private S3 server with a bucket, stopped: the AWS_* variables point at it."""
    server = S3Server().start()
    try:
        bucket = server.create_bucket()
        for name, value in server.environment().items():
            monkeypatch.setenv(name, value)
        yield server, bucket
    finally:
        server.close()


@pytest.mark.parametrize("ttl", [0, 900])
def test_an_unreachable_s3_is_a_503(stopped_s3: tuple[S3Server, str], ttl: int) -> None:
    # Given a succeeded job whose output was stored in an S3 that then went down
    server, bucket = stopped_s3
    app = S3Outputs(s3_app(bucket, ttl, PREVIEW_FETCH_CONNECT_TIMEOUT_MS=500), bucket)
    job_id = app.job_with(PNG)
    server.stop()
    # When its output is requested
    response = app.client.get(url_of(job_id))
    # Then the answer is a JSON 503 to retry later, naming the bucket
    body = assert_error(response, 503, "unavailable")
    assert bucket in body["message"]
    assert response.headers["Retry-After"] == "5"
    assert "Location" not in response.headers


def test_refused_credentials_are_a_503_that_names_the_bucket_not_the_secret(
    streaming: S3Outputs, redirecting: S3Outputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given succeeded jobs whose outputs are in S3, and a web process with a wrong secret key
    jobs = [(app, app.job_with(PNG)) for app in (streaming, redirecting)]
    wrong = "wrong-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    for app, job_id in jobs:
        # When the output is requested
        response = app.client.get(url_of(job_id))
        # Then the answer is a JSON 503 that names the bucket and the refusal, and no URL
        body = assert_error(response, 503, "unavailable")
        assert app.bucket in body["message"] and "refused" in body["message"]
        assert wrong not in response.get_data(as_text=True)
        assert "Location" not in response.headers

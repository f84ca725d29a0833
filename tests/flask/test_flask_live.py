"""The HTTP API over real HTTP servers, with a real `dramatiq dramatiq_preview` worker.

werkzeug's threaded server runs in this process; the example app also runs under gunicorn.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import imagegen
import pytest
from flask import Flask
from preview_http import (
    PREFIX,
    TOKEN,
    LiveServer,
    bearer,
    job,
    make_app,
    new_job_id,
    raw_request,
    source_root,
)
from support import wait_until
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from dramatiq_preview.testing import free_port

pytestmark = pytest.mark.usefixtures("worker")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def picture() -> str:
    """A 300x200 PNG in the source root."""
    path = source_root() / "http-live" / "picture.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(imagegen.png(imagegen.quadrants(300, 200)))
    return "http-live/picture.png"


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with LiveServer(make_app()) as server:
        yield server


def wait_final(http: httpx.Client, status_url: str, timeout: float = 60) -> dict[str, Any]:
    status: dict[str, Any] = wait_until(
        lambda: http.get(status_url).json(),
        lambda status: status["state"] in ("succeeded", "failed", "cancelled"),
        timeout=timeout,
        interval=0.05,
        what=f"a final state at {status_url}",
    )
    return status


def image_info(data: bytes) -> tuple[str, int, int]:
    from wand.image import Image

    with Image(blob=data) as img:
        return str(img.format).lower(), int(img.width), int(img.height)


def test_a_job_submitted_over_http_is_rendered_and_downloaded(
    live: LiveServer, picture: str
) -> None:
    with httpx.Client(base_url=live.url) as http:
        # Given a job with two outputs, submitted over HTTP
        payload = job(
            source={"path": picture},
            outputs=[
                {"width": 150, "height": 150, "format": "webp"},
                {"width": 64, "height": 64, "format": "jpeg", "fit": "cover"},
            ],
        )
        submitted = http.post(f"{PREFIX}/job", json=payload)
        assert submitted.status_code == 202
        # When the worker renders it
        status = wait_final(http, submitted.json()["statusUrl"])
        # Then both files can be downloaded with their types, sizes and caching headers
        assert status["state"] == "succeeded", status
        assert status["attempts"] == 1 and status["progress"] == 100
        expected = [("image/webp", ("webp", 150, 100)), ("image/jpeg", ("jpeg", 64, 64))]
        for output, (content_type, info) in zip(status["result"]["outputs"], expected, strict=True):
            response = http.get(output["url"])
            assert response.status_code == 200
            assert response.headers["Content-Type"] == content_type
            assert image_info(response.content) == info
            assert len(response.content) == output["bytes"]
            assert "private" in response.headers["Cache-Control"]
            etag = response.headers["ETag"]
            again = http.get(output["url"], headers={"If-None-Match": etag})
            assert again.status_code == 304
        # and the job cannot be cancelled any more, while submitting it again is a duplicate
        cancel = http.post(f"{PREFIX}/job/{payload['jobId']}/cancel")
        assert (cancel.status_code, cancel.json()["error"]) == (409, "conflict")
        duplicate = http.post(f"{PREFIX}/job", json=payload)
        assert duplicate.status_code == 200
        assert duplicate.json()["state"] == "succeeded" and duplicate.json()["duplicate"] is True
        assert http.get(f"{PREFIX}/job/{payload['jobId']}/outputs/2").status_code == 404


def test_a_job_that_fails_in_the_worker_reports_its_error_over_http(live: LiveServer) -> None:
    with httpx.Client(base_url=live.url) as http:
        submitted = http.post(f"{PREFIX}/job", json=job(source={"path": "http-live/none.png"}))
        status = wait_final(http, submitted.json()["statusUrl"])
        assert status["state"] == "failed"
        assert status["error"]["type"] == "source_not_found"
        assert status["error"]["retryable"] is False
        job_id = submitted.json()["jobId"]
        assert http.get(f"{PREFIX}/job/{job_id}/outputs/0").status_code == 404


def test_a_chunked_upload_is_cut_off_at_the_limit(live: LiveServer) -> None:
    # Given a body without Content-Length, streamed in chunks past the 64 KiB limit
    chunks = [b'{"metadata": "' + b"x" * 16_000] + [b"x" * 16_000] * 4
    response = raw_request(
        live.port,
        "POST",
        f"{PREFIX}/job",
        headers={"Content-Type": "application/json"},
        body=chunks,
        chunked=True,
    )
    # Then it is refused as too large
    assert response.status == 413
    assert response.json()["error"] == "payload_too_large"


def test_a_small_chunked_upload_is_accepted(live: LiveServer) -> None:
    body = json.dumps(job()).encode()
    response = raw_request(
        live.port,
        "POST",
        f"{PREFIX}/job",
        headers={"Content-Type": "application/json"},
        body=[body[:10], body[10:]],
        chunked=True,
    )
    assert response.status == 202, response.body


def test_a_declared_length_over_the_limit_is_refused_without_reading_the_body(
    live: LiveServer,
) -> None:
    response = raw_request(
        live.port,
        "POST",
        f"{PREFIX}/job",
        headers={"Content-Type": "application/json", "Content-Length": "1048576"},
        body=b"{" * 1024,
    )
    assert response.status == 413
    assert response.json()["error"] == "payload_too_large"


def test_every_answer_is_json_over_http(live: LiveServer) -> None:
    for method, path in [
        ("GET", f"{PREFIX}/nowhere"),
        ("PATCH", f"{PREFIX}/job"),
        ("POST", f"{PREFIX}/job"),
        ("GET", f"{PREFIX}/job/{new_job_id()}/status"),
    ]:
        response = raw_request(live.port, method, path)
        assert response.headers["Content-Type"] == "application/json", (method, path)
        assert set(response.json()) >= {"error", "message"}


def test_the_token_guards_the_api_over_http() -> None:
    server = LiveServer(make_app(PREVIEW_API_TOKEN=TOKEN))
    with server, httpx.Client(base_url=server.url) as http:
        refused = http.post(f"{PREFIX}/job", json=job())
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        accepted = http.post(f"{PREFIX}/job", json=job(), headers=bearer())
        assert accepted.status_code == 202
        status_url = accepted.json()["statusUrl"]
        assert http.get(status_url, headers=bearer()).status_code == 200
        assert http.get(f"{PREFIX}/worker/health").status_code == 200


def test_urls_include_the_mount_point_of_a_dispatcher() -> None:
    # Given the host app mounted under /sub by a WSGI dispatcher (SCRIPT_NAME=/sub)
    host = make_app()
    outer = Flask("outer")
    outer.wsgi_app = DispatcherMiddleware(outer.wsgi_app, {"/sub": host})  # type: ignore[method-assign]
    with LiveServer(outer) as server, httpx.Client(base_url=server.url) as http:
        response = http.post(f"/sub{PREFIX}/job", json=job())
        assert response.status_code == 202
        assert response.json()["statusUrl"].startswith(f"/sub{PREFIX}/job/")
        assert http.get(response.json()["statusUrl"]).status_code == 200
        assert http.get(f"/sub{PREFIX}/openapi.json").json()["servers"][0]["url"] == (
            f"/sub{PREFIX}"
        )


# --- the example app under gunicorn -------------------------------------------------------


@pytest.fixture(scope="module")
def gunicorn_example() -> Iterator[str]:
    """examples/flask_app under gunicorn (2 workers x 2 threads), sharing the test worker."""
    if shutil.which("gunicorn", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("gunicorn is not installed")
    port = free_port()
    process = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "gunicorn"),
            "--workers=2",
            "--threads=2",
            f"--bind=127.0.0.1:{port}",
            "examples.flask_app:create_app()",
        ],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}{PREFIX}/worker/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start: {process.communicate()[1]!r}")
            time.sleep(0.1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        assert process.stderr is not None
        process.stderr.close()


@pytest.mark.slow
def test_the_example_app_serves_the_api_under_gunicorn(gunicorn_example: str) -> None:
    with httpx.Client(base_url=gunicorn_example) as http:
        index = http.get("/").json()
        assert index["submit"] == f"{PREFIX}/job"
        assert http.get(index["openapi"]).json()["openapi"] == "3.1.0"
        submitted = http.post(index["submit"], json=job())
        assert submitted.status_code == 202
        assert wait_final(http, submitted.json()["statusUrl"])["state"] == "failed"


@pytest.mark.slow
def test_submit_samples_renders_every_sample_over_http(
    gunicorn_example: str, tmp_path: Path
) -> None:
    # Given the sample images inside the source root
    samples = source_root() / "samples"
    shutil.copytree(REPO / "examples" / "images", samples, dirs_exist_ok=True)
    # When the demo script submits them over HTTP and downloads the outputs
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "flask_app" / "submit_samples.py"),
            "--url",
            f"{gunicorn_example}{PREFIX}",
            "--images",
            str(samples),
            "--download",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    # Then every job succeeded and every output was downloaded
    assert result.returncode == 0, result.stdout + result.stderr
    count = len([p for p in samples.iterdir() if p.is_file() and p.suffix != ".md"])
    assert result.stdout.count(" succeeded ") == count
    assert len(list(tmp_path.rglob("*.webp"))) == count
    assert len(list(tmp_path.rglob("*.jpg"))) == count


def raw_exchange(url: str, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` byte for byte over one connection; the status and the whole answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), answer


@pytest.mark.slow
@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\n{}\r\n0\r\n\r\n",  # not a hex chunk size
        b"2\r\n{}xxxxxxxx\r\n0\r\n\r\n",  # a chunk longer than its size
        b"-2\r\n{}\r\n0\r\n\r\n",  # a negative size
        b"1" * 200 + b"\r\n{}\r\n0\r\n\r\n",  # a size no reader can take
        b"2;\x00\r\n{}\r\n0\r\n\r\n",  # a NUL in a chunk extension
        b"5\r\n{}",  # cut off mid-chunk
    ],
    ids=["bad size", "overlong chunk", "negative size", "huge size", "bad extension", "cut off"],
)
def test_a_malformed_chunked_body_is_invalid_json_under_gunicorn(
    gunicorn_example: str, body: bytes
) -> None:
    # Given a POST /job whose chunked body breaks the chunked coding, sent byte for byte
    head = (
        f"POST {PREFIX}/job HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    # When gunicorn hands it to the app
    status, answer = raw_exchange(gunicorn_example, head + body)
    # Then the answer is the documented JSON 400, never a 500 or a traceback
    assert status == 400, answer[:500]
    assert b'"invalid_json"' in answer and b"Traceback" not in answer


@pytest.mark.slow
def test_a_script_name_header_never_makes_a_url_to_another_host_under_gunicorn(
    gunicorn_example: str,
) -> None:
    # Given gunicorn, which takes SCRIPT_NAME from a request header (from 127.0.0.1)
    payload = json.dumps(job()).encode()
    request = (
        f"POST //evil.example{PREFIX}/job HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "SCRIPT_NAME: //evil.example\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode() + payload
    # When a job is submitted with SCRIPT_NAME set to "//evil.example"
    status, answer = raw_exchange(gunicorn_example, request)
    # Then the status URL and Location are paths on this host, not protocol-relative URLs
    assert status == 202, answer[:500]
    head, _, body = answer.partition(b"\r\n\r\n")
    location = [line for line in head.split(b"\r\n") if line.lower().startswith(b"location:")]
    assert location and location[0].split(b":", 1)[1].strip().startswith(b"/evil.example/")
    assert json.loads(body)["statusUrl"].startswith(f"/evil.example{PREFIX}/job/")

"""End to end with both roots in S3 (contract §9, issue 12 "Tests that must exist").

Real `dramatiq dramatiq_preview` workers, the session's private Redis, a real S3-compatible
server (SeaweedFS) and a Flask app with the extension: PREVIEW_SOURCE_ROOT is
``s3://bucket/sources`` and PREVIEW_OUTPUT_DIR ``s3://bucket/previews``.  Each test (or this
module) uses a namespace of its own, so the session's workers never see these jobs.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagegen
import pytest
from flask import Flask
from flask.testing import FlaskClient
from s3support import (
    aws_environment,
    bucket_keys,
    files_under,
    metric,
    read_object,
)
from support import image_info, wait_until

from dramatiq_preview import PreviewClient, Settings
from dramatiq_preview.flask import PreviewExtension
from dramatiq_preview.testing import S3Server, WorkerProcess, free_port, wait_for_state

PREFIX = "/api/preview"
QUAD = (imagegen.RED, imagegen.GREEN, imagegen.BLUE, imagegen.YELLOW)
#: Three outputs of a 64x32 source: contain, cover and fill, one per output format.
OUTPUTS = [
    {"width": 40, "height": 40, "format": "webp"},
    {"width": 30, "height": 30, "format": "jpeg", "fit": "cover", "quality": 70},
    {"width": 20, "height": 10, "format": "png", "fit": "fill"},
]
EXPECTED = [("webp", 40, 20), ("jpeg", 30, 30), ("png", 20, 10)]
CONTENT_TYPES = {"webp": "image/webp", "jpeg": "image/jpeg", "png": "image/png"}
EXTENSIONS = {"webp": "webp", "jpeg": "jpg", "png": "png"}


def _inputs() -> dict[str, tuple[str, bytes, int]]:
    """name -> (source key, bytes, page): every input format, a 64x32 four-colour image;
    the GIF and the PDF have a plain blue first frame/page and the quadrants on page 1."""
    quad = imagegen.quadrants(64, 32)
    blue = imagegen.solid(64, 32, imagegen.BLUE)
    return {
        "jpeg": ("formats/q.jpg", imagegen.jpeg(quad), 0),
        "png": ("formats/q.png", imagegen.png(quad), 0),
        "webp": ("formats/q.webp", imagegen.webp(quad), 0),
        "gif": ("formats/two-frames.gif", imagegen.gif([blue, quad]), 1),
        "tiff": ("formats/q.tiff", imagegen.tiff([quad]), 0),
        "bmp": ("formats/q.bmp", imagegen.bmp(quad), 0),
        "pdf": ("formats/two-pages.pdf", imagegen.pdf([imagegen.BLUE, QUAD], size=(64, 32)), 1),
    }


INPUTS = _inputs()


@dataclass
class S3Roots:
    """A bucket with ``sources/`` and ``previews/``, and the settings of a worker on it."""

    server: S3Server
    bucket: str
    env: dict[str, str]

    def source(self, name: str, data: bytes) -> str:
        """Upload a source; its path in a payload."""
        self.server.client().put_object(Bucket=self.bucket, Key=f"sources/{name}", Body=data)
        return name

    def outputs(self, job_id: str) -> list[str]:
        return bucket_keys(self.server, self.bucket, f"previews/{job_id}/")

    def client(self) -> PreviewClient:
        return PreviewClient(Settings.from_mapping(self.env))


def s3_settings(
    server: S3Server, bucket: str, namespace: str, prom_dir: Path, **extra: str
) -> dict[str, str]:
    """A worker's environment: both roots in ``bucket``, ``server``'s AWS variables, its
    own namespace and Prometheus exposition."""
    return {
        "PREVIEW_NAMESPACE": namespace,
        "PREVIEW_SOURCE_ROOT": f"s3://{bucket}/sources",
        "PREVIEW_OUTPUT_DIR": f"s3://{bucket}/previews",
        **server.environment(),
        "dramatiq_prom_port": str(free_port()),
        "dramatiq_prom_db": str(prom_dir),
        **extra,
    }


def make_app(env: dict[str, str], **config: Any) -> Flask:
    """A host app with the extension, configured from a worker's ``PREVIEW_*`` settings;
    downloads streamed through the app (no presigned URL) unless ``config`` says otherwise."""
    app = Flask("s3host")
    app.config.update({k: v for k, v in env.items() if k.startswith("PREVIEW_")})
    app.config["PREVIEW_OUTPUT_URL_TTL_SECONDS"] = 0
    app.config.update(config)
    PreviewExtension(app)
    return app


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- the module's bucket, worker and web app -------------------------------------------------


@pytest.fixture(scope="module")
def roots(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Roots]:
    """A fresh bucket, and the session S3 server's AWS variables in this (web) process."""
    bucket = s3_server.create_bucket()
    env = s3_settings(s3_server, bucket, unique("s3e2e"), tmp_path_factory.mktemp("s3e2e-prom"))
    with aws_environment(s3_server):
        yield S3Roots(s3_server, bucket, env)


@pytest.fixture(scope="module")
def worker(roots: S3Roots, redis_server: Any) -> Iterator[WorkerProcess]:
    with WorkerProcess(env=roots.env, processes=1, threads=2) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(roots: S3Roots, worker: WorkerProcess) -> Iterator[PreviewClient]:
    with roots.client() as preview:
        yield preview


@pytest.fixture(scope="module")
def web(roots: S3Roots) -> FlaskClient:
    return make_app(roots.env).test_client()


@pytest.fixture(scope="module")
def uploaded(roots: S3Roots) -> dict[str, str]:
    return {name: roots.source(key, data) for name, (key, data, _) in INPUTS.items()}


def colour_at(data: bytes, x: int, y: int) -> tuple[int, int, int]:
    from wand.image import Image

    with Image(blob=data) as image:
        colour = image[x, y]
        return int(colour.red_int8), int(colour.green_int8), int(colour.blue_int8)


def close_to(got: tuple[int, ...], want: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(got, want, strict=False))


# --- a. every input format, both roots in S3 --------------------------------------------------


@pytest.mark.parametrize("source_format", list(INPUTS))
def test_every_input_format_renders_from_s3_into_s3_and_is_served(
    source_format: str,
    roots: S3Roots,
    uploaded: dict[str, str],
    client: PreviewClient,
    web: FlaskClient,
) -> None:
    # Given a 64x32 four-colour source in the S3 source root (page 1 of a GIF or PDF)
    _, _, page = INPUTS[source_format]
    job_id = unique(f"fmt-{source_format}")
    payload: dict[str, Any] = {
        "jobId": job_id,
        "source": {"path": uploaded[source_format]},
        "outputs": OUTPUTS,
    }
    if page:
        payload["page"] = page
    # When it is submitted and a worker renders it
    client.submit(payload)
    status = wait_for_state(client.status, job_id, timeout=60)
    # Then it succeeded at the first attempt
    assert status["state"] == "succeeded", status
    assert status["attempts"] == 1 and status["error"] is None
    # and each output is an S3 object under the output prefix, of its image type, decoding
    # to the requested size, that the API serves byte for byte
    names = [f"{i}.{EXTENSIONS[fmt]}" for i, (fmt, _, _) in enumerate(EXPECTED)]
    assert roots.outputs(job_id) == sorted(f"previews/{job_id}/{n}" for n in names)
    for index, (fmt, width, height) in enumerate(EXPECTED):
        entry = status["result"]["outputs"][index]
        assert entry["path"] == f"{job_id}/{names[index]}"
        data, answer = read_object(roots.server, roots.bucket, f"previews/{entry['path']}")
        assert answer["ContentType"] == CONTENT_TYPES[fmt]
        assert image_info(data) == (fmt, width, height)
        assert (entry["format"], entry["width"], entry["height"]) == (fmt, width, height)
        assert entry["bytes"] == len(data)
        served = web.get(f"{PREFIX}/job/{job_id}/outputs/{index}")
        assert served.status_code == 200, (served.status_code, served.data[:300])
        assert served.mimetype == CONTENT_TYPES[fmt]
        assert served.data == data
    # and the pixels are the source's (page 1 of a GIF or PDF, not its blue page 0)
    png, _ = read_object(roots.server, roots.bucket, f"previews/{job_id}/2.png")
    assert close_to(colour_at(png, 2, 2), (255, 0, 0)), colour_at(png, 2, 2)
    assert close_to(colour_at(png, 17, 2), (0, 255, 0)), colour_at(png, 17, 2)
    assert close_to(colour_at(png, 2, 7), (0, 0, 255)), colour_at(png, 2, 7)


def test_a_download_redirected_to_s3_serves_the_same_bytes(
    roots: S3Roots, uploaded: dict[str, str], client: PreviewClient
) -> None:
    # Given a rendered job, and an app that hands out presigned URLs
    import urllib.request

    job_id = unique("redirect")
    client.submit({"jobId": job_id, "source": {"path": uploaded["png"]}, "outputs": OUTPUTS})
    assert wait_for_state(client.status, job_id, timeout=60)["state"] == "succeeded"
    web = make_app(roots.env, PREVIEW_OUTPUT_URL_TTL_SECONDS=300).test_client()
    # When an output is downloaded, following the redirect with a plain HTTP client
    answer = web.get(f"{PREFIX}/job/{job_id}/outputs/0")
    assert answer.status_code in (302, 307), (answer.status_code, answer.data[:300])
    with urllib.request.urlopen(answer.headers["Location"], timeout=30) as followed:
        body, content_type = followed.read(), followed.headers["Content-Type"]
    # Then it gets the S3 object, with its image type
    data, _ = read_object(roots.server, roots.bucket, f"previews/{job_id}/0.webp")
    assert (body, content_type) == (data, "image/webp")


# --- c. traversal out of the source prefix ------------------------------------------------


@pytest.mark.parametrize("path", ["../canary.png", "/canary.png", "sources/../canary.png"])
def test_a_path_leaving_the_source_prefix_fails_forbidden_and_reads_nothing(
    path: str, roots: S3Roots, client: PreviewClient
) -> None:
    # Given a valid PNG "canary.png" at the top of the bucket, beside the source prefix
    # (read, it would render: the job would succeed or fail otherwise than forbidden)
    canary = imagegen.png(imagegen.solid(8, 8, imagegen.RED))
    roots.server.client().put_object(Bucket=roots.bucket, Key="canary.png", Body=canary)
    # When a job names it by a path that climbs or is absolute
    job_id = unique("climb")
    outputs = [{"width": 8, "height": 8, "format": "png"}]
    client.submit({"jobId": job_id, "source": {"path": path}, "outputs": outputs})
    status = wait_for_state(client.status, job_id, timeout=60)
    # Then it failed at once as forbidden by the key guard, before any read
    assert status["state"] == "failed", status
    assert status["error"]["type"] == "source_forbidden", status["error"]
    assert status["error"]["retryable"] is False
    assert status["attempts"] == 1, "a permanent error is not retried"
    assert status["result"] is None
    # and nothing was written for it
    assert roots.outputs(job_id) == []
    assert roots.bucket not in status["error"]["message"]


# --- e. a wrong secret key ----------------------------------------------------------------


def test_a_worker_with_a_wrong_secret_fails_the_job_permanently(
    roots: S3Roots,
    uploaded: dict[str, str],
    start_worker: Any,
    tmp_path: Path,
) -> None:
    # Given a worker whose AWS_SECRET_ACCESS_KEY is not the access key's secret
    env = {
        **roots.env,
        "PREVIEW_NAMESPACE": unique("s3secret"),
        "AWS_SECRET_ACCESS_KEY": "not-the-secret-" + uuid.uuid4().hex,
        "dramatiq_prom_port": str(free_port()),
        "dramatiq_prom_db": str(tmp_path / "prom"),
    }
    start_worker(env=env, threads=1)
    job_id = unique("secret")
    # When a job with an S3 source is submitted to it
    with PreviewClient(Settings.from_mapping(env)) as preview:
        preview.submit(
            {"jobId": job_id, "source": {"path": uploaded["png"]}, "outputs": OUTPUTS[:1]}
        )
        status = wait_for_state(preview.status, job_id, timeout=60)
    # Then the job failed permanently on its first attempt, saying why
    assert status["state"] == "failed", status
    error = status["error"]
    assert (error["type"], error["retryable"]) == ("storage_forbidden", False), error
    assert "signature does not match" in error["message"], error["message"]
    assert "AWS_SECRET_ACCESS_KEY" in error["message"], error["message"]
    assert repr(roots.bucket) in error["message"], error["message"]
    assert status["attempts"] == 1, "refused credentials are not retried"
    assert roots.outputs(job_id) == []


# --- b. two hosts sharing only Redis and S3 ---------------------------------------------------


def test_a_worker_and_a_web_app_on_different_hosts_share_only_redis_and_s3(
    roots: S3Roots,
    uploaded: dict[str, str],
    start_worker: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a worker "host" and a web "host": each its own working directory and its own
    # empty TMPDIR, sharing nothing but Redis and the bucket
    dirs = {name: tmp_path / name for name in ("worker-cwd", "worker-tmp", "web-cwd", "web-tmp")}
    for path in dirs.values():
        path.mkdir()
    env = {
        **roots.env,
        "PREVIEW_NAMESPACE": unique("s3hosts"),
        "TMPDIR": str(dirs["worker-tmp"]),
        "dramatiq_prom_port": str(free_port()),
        "dramatiq_prom_db": str(tmp_path / "worker-prom"),
    }
    monkeypatch.chdir(dirs["worker-cwd"])
    worker = start_worker(env=env, threads=1)
    monkeypatch.chdir(dirs["web-cwd"])
    monkeypatch.setenv("TMPDIR", str(dirs["web-tmp"]))
    monkeypatch.setattr(tempfile, "tempdir", str(dirs["web-tmp"]))
    web = make_app(env).test_client()
    # When a JPEG and a PDF job are submitted to the web app, rendered by the worker and
    # downloaded from the web app
    jobs = {unique("hosts-jpeg"): ("jpeg", 0), unique("hosts-pdf"): ("pdf", 1)}
    for job_id, (name, page) in jobs.items():
        payload = {
            "jobId": job_id,
            "source": {"path": uploaded[name]},
            "outputs": OUTPUTS,
            "page": page,
        }
        answer = web.post(f"{PREFIX}/job", json=payload)
        assert answer.status_code == 202, answer.json
    for job_id in jobs:
        status = wait_until(
            lambda job_id=job_id: api_json(web, f"/job/{job_id}/status"),  # type: ignore[misc]
            lambda body: body["state"] in ("succeeded", "failed", "cancelled"),
            timeout=60,
            what=f"{job_id} to finish",
        )
        # Then each job succeeded and the web app serves what the worker stored
        assert status["state"] == "succeeded", status
        for index, (fmt, width, height) in enumerate(EXPECTED):
            served = web.get(f"{PREFIX}/job/{job_id}/outputs/{index}")
            assert served.status_code == 200, served.data[:300]
            path = status["result"]["outputs"][index]["path"]
            data, _ = read_object(roots.server, roots.bucket, f"previews/{path}")
            assert served.data == data and image_info(data) == (fmt, width, height)
    # and neither host wrote anything to its working directory or temp dir (S3 sources
    # were spooled into unlinked files), while the worker runs and after it stopped
    assert {name: files_under(path) for name, path in dirs.items()} == {n: [] for n in dirs}
    worker.stop()
    assert {name: files_under(path) for name, path in dirs.items()} == {n: [] for n in dirs}


# --- d. S3 stopped while jobs run, then started again ----------------------------------------


@pytest.fixture
def own_s3() -> Iterator[S3Server]:
    """An S3 server of this test alone, to stop and start."""
    server = S3Server().start()
    try:
        yield server
    finally:
        server.close()


def test_jobs_running_while_s3_stops_all_succeed_once_it_is_back(
    own_s3: S3Server,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    # Given a worker on a private S3 server (short backoffs, retries enough for an outage)
    bucket = own_s3.create_bucket()
    env = s3_settings(
        own_s3,
        bucket,
        unique("s3outage"),
        tmp_path / "prom",
        PREVIEW_MIN_BACKOFF_MS="200",
        PREVIEW_MAX_BACKOFF_MS="1000",
        PREVIEW_MAX_RETRIES="40",
        PREVIEW_FETCH_CONNECT_TIMEOUT_MS="1000",
        PREVIEW_FETCH_READ_TIMEOUT_MS="3000",
    )
    roots = S3Roots(own_s3, bucket, env)
    source = roots.source("outage/noise.png", imagegen.png(imagegen.noise(480, 360)))
    start_worker(env=env, threads=1)
    outputs = [
        {"width": 400, "height": 400, "format": "webp"},
        {"width": 120, "height": 120, "format": "png"},
    ]
    with aws_environment(own_s3):
        web = make_app(env).test_client()
        # (the process's first S3 check also loads boto3: on a loaded machine it may miss
        # the one-second health deadline, so wait for the storage to be seen up)
        wait_until(
            lambda: health(web)["storage"],
            lambda storage: storage["ok"] is True,
            timeout=15,
            what="health to see S3 up",
        )
        ids = [unique(f"outage{i}") for i in range(10)]
        with roots.client() as preview:
            # When ten jobs are submitted, and S3 stops as soon as one is running
            for job_id in ids:
                preview.submit({"jobId": job_id, "source": {"path": source}, "outputs": outputs})
            wait_until(
                lambda: [preview.status(j)["state"] for j in ids],
                lambda states: "running" in states or "succeeded" in states,
                timeout=60,
                interval=0.005,
                what="a job to start",
            )
            own_s3.stop()
            stopped_at = time.monotonic()
            # Then health says degraded while S3 is down, naming storage
            down = wait_until(
                lambda: health(web),
                lambda body: body["status"] == "degraded" and not body["storage"]["ok"],
                timeout=15,
                what="health to report S3 down",
            )
            assert down["storage"]["kind"] == "s3" and down["storage"]["error"]
            # and jobs wait for a retry rather than fail
            wait_until(
                lambda: [preview.status(j)["state"] for j in ids],
                lambda states: "retrying" in states,
                timeout=30,
                what="a job to be retrying while S3 is down",
            )
            time.sleep(max(0.0, 3 - (time.monotonic() - stopped_at)))
            assert not any(preview.status(j)["state"] == "failed" for j in ids)
            # When S3 is started again
            own_s3.start()
            # Then every job ends succeeded, none lost
            finals = {j: wait_for_state(preview.status, j, timeout=120) for j in ids}
        assert {j: s["state"] for j, s in finals.items()} == dict.fromkeys(ids, "succeeded")
        assert health(web)["storage"]["ok"] is True
    # and each job's outputs are exactly the two it asked for, as its result says
    for job_id, status in finals.items():
        assert roots.outputs(job_id) == [f"previews/{job_id}/0.webp", f"previews/{job_id}/1.png"]
        sizes = [(o["width"], o["height"]) for o in status["result"]["outputs"]]
        assert sizes == [(400, 300), (120, 90)]
        assert status["attempts"] >= 1 and status["error"] is None
    # and the outage cost retries, yet each job was rendered to success exactly once
    assert sum(s["attempts"] for s in finals.values()) > len(ids), finals
    port = int(env["dramatiq_prom_port"])
    wait_until(
        lambda: metric(port, "preview_jobs_total", outcome="succeeded"),
        lambda count: count >= len(ids),
        timeout=20,
        ignore=(OSError,),
        what="the worker's metrics to count the successes",
    )
    assert metric(port, "preview_jobs_total", outcome="succeeded") == len(ids)
    assert metric(port, "preview_render_seconds_count", stage="total") == len(ids)
    assert metric(port, "preview_jobs_total", outcome="retried") >= 1


def api_json(web: FlaskClient, path: str) -> dict[str, Any]:
    """The JSON body of a 200 answer to GET ``{PREFIX}{path}``."""
    answer = web.get(PREFIX + path)
    body = answer.get_json()
    assert answer.status_code == 200 and isinstance(body, dict), (answer.status_code, body)
    return body


def health(web: FlaskClient) -> dict[str, Any]:
    return api_json(web, "/worker/health")

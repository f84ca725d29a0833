"""Storage metrics: every storage call timed by backend and operation, failures counted by
error type, against a real S3 server (SeaweedFS) and the disk, in the worker's metrics, the
web app's /metrics and a real ``dramatiq`` worker's exposition."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imagegen
import pytest
from flask import Flask
from prometheus_client import CollectorRegistry, generate_latest
from support import SOURCE_ROOT, Samples, parse, value, wait_until

from dramatiq_preview import PreviewClient, Settings
from dramatiq_preview.broker import build_broker
from dramatiq_preview.config import S3Location
from dramatiq_preview.errors import SourceNotFound, StorageForbidden
from dramatiq_preview.events import emit
from dramatiq_preview.flask import PreviewExtension
from dramatiq_preview.metrics import PREVIEW_METRICS, JobMetrics
from dramatiq_preview.storage import open_storage
from dramatiq_preview.testing import free_port, wait_for_state


def namespace() -> str:
    return "stmetrics-" + uuid.uuid4().hex[:8]


@pytest.fixture
def job_metrics() -> Iterator[tuple[JobMetrics, CollectorRegistry]]:
    """A worker's job metrics in a registry of their own (held for the test's duration)."""
    registry = CollectorRegistry()
    metrics = JobMetrics(registry)
    yield metrics, registry
    del metrics


def test_an_s3_put_and_a_failed_get_are_timed_and_the_failure_counted(
    s3_env: Any, job_metrics: tuple[JobMetrics, CollectorRegistry], tmp_path: Path
) -> None:
    # Given a worker's metrics and an S3 root whose bucket exists
    _, registry = job_metrics
    bucket = s3_env.create_bucket()
    storage = open_storage(S3Location(bucket, "v1"))
    # When an output is put, and a source that is not there is read
    storage.put("job-1/0.png", imagegen.png_solid_fast(4, 4), "image/png")
    with pytest.raises(SourceNotFound):
        storage.open_source(
            "uploads/none.png", max_bytes=1 << 20, spool_dir=tmp_path, deadline=1e18
        )
    # Then the exposition times both and counts the failed read by its error type
    text = generate_latest(registry).decode()
    assert 'preview_storage_seconds_count{backend="s3",operation="put"} 1.0' in text
    assert 'preview_storage_seconds_count{backend="s3",operation="get"} 1.0' in text
    lines = text.splitlines()
    [error_line] = [line for line in lines if line.startswith("preview_storage_errors_total{")]
    assert error_line.endswith(" 1.0")
    for label in ('backend="s3"', 'operation="get"', 'error="source_not_found"'):
        assert label in error_line
    # And the successful put is not an error
    samples = parse(text)
    assert value(samples, "preview_storage_errors_total", operation="put") == 0
    # And no label names the bucket, a key or a job
    assert bucket not in text and "job-1" not in text and "none.png" not in text


def test_a_refused_s3_call_is_counted_as_storage_forbidden(
    s3_env: Any, job_metrics: tuple[JobMetrics, CollectorRegistry], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker's metrics and an S3 root, with a secret key that is not the access key's
    _, registry = job_metrics
    bucket = s3_env.create_bucket()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-" + uuid.uuid4().hex)
    storage = open_storage(S3Location(bucket))
    # When an output is written there
    with pytest.raises(StorageForbidden):
        storage.put("job-2/0.png", b"x", "image/png")
    # Then the put is timed and counted as refused
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "preview_storage_seconds_count", backend="s3", operation="put") == 1
    assert (
        value(
            samples,
            "preview_storage_errors_total",
            backend="s3",
            operation="put",
            error="storage_forbidden",
        )
        == 1
    )


def test_local_storage_calls_are_timed_under_the_local_backend(
    job_metrics: tuple[JobMetrics, CollectorRegistry], tmp_path: Path
) -> None:
    # Given a worker's metrics and a local root
    _, registry = job_metrics
    storage = open_storage(tmp_path / "root")
    # When an output is written and deleted, and a missing source is read
    storage.put("job-3/0.png", b"png", "image/png")
    assert storage.remove_job("job-3") == 1
    with pytest.raises(SourceNotFound):
        storage.open_source("none.png", max_bytes=1 << 20, spool_dir=tmp_path, deadline=1e18)
    # Then each call is timed under backend="local", and only the read is an error
    samples = parse(generate_latest(registry).decode())
    for operation in ("put", "delete", "get"):
        count = value(
            samples, "preview_storage_seconds_count", backend="local", operation=operation
        )
        assert count == 1, operation
    assert value(samples, "preview_storage_errors_total") == 1
    assert (
        value(
            samples,
            "preview_storage_errors_total",
            backend="local",
            operation="get",
            error="source_not_found",
        )
        == 1
    )


def test_storage_labels_stay_low_cardinality_whatever_the_events_say(
    job_metrics: tuple[JobMetrics, CollectorRegistry],
) -> None:
    # Given a worker's metrics / When storage events carry odd backends, operations, outcomes
    _, registry = job_metrics
    for i in range(30):
        emit(
            "storage",
            backend=f"backend{i}",
            operation=f"op{i}",
            seconds=0.01,
            outcome=f"weird_{i}",
            job_id=f"job-{i}",
        )
    # Then backends, operations and errors outside the known sets are "other"
    labels: dict[str, set[str]] = {}
    for family in registry.collect():
        if family.name.startswith("preview_storage"):
            for sample in family.samples:
                for key, val in sample.labels.items():
                    labels.setdefault(key, set()).add(val)
    assert labels["backend"] == {"other"}
    assert labels["operation"] == {"other"}
    assert labels["error"] == {"other"}
    assert not any("job-" in v for vals in labels.values() for v in vals)


def web_app(redis_url: str, output_dir: str) -> Any:
    """A web app's test client that has answered a first request (its metrics exist)."""
    app = Flask("host")
    app.config.update(
        PREVIEW_REDIS_URL=redis_url, PREVIEW_NAMESPACE=namespace(), PREVIEW_OUTPUT_DIR=output_dir
    )
    PreviewExtension(app)
    client = app.test_client()
    assert client.get("/api/preview/metrics").status_code == 200
    return client


def test_the_web_metrics_time_the_storage_check_of_health(redis_server: Any, s3_env: Any) -> None:
    # Given a web app whose output root is an S3 bucket that exists
    bucket = s3_env.create_bucket()
    http = web_app(redis_server.url, f"s3://{bucket}")
    # When its health is checked (twice: on a loaded machine the process's first S3 check,
    # which also loads boto3 and builds its client, may outlast the health deadline)
    http.get("/api/preview/worker/health")
    storage = http.get("/api/preview/worker/health").get_json()["storage"]
    assert storage["ok"] is True, storage
    # Then its /metrics times the storage ping
    text = http.get("/api/preview/metrics").get_data(as_text=True)
    assert 'preview_storage_seconds_count{backend="s3",operation="ping"}' in text
    assert value(parse(text), "preview_storage_seconds_count", operation="ping") >= 1
    assert bucket not in text


def test_the_web_metrics_count_a_refused_storage_check(redis_server: Any, s3_env: Any) -> None:
    # Given a web app whose output root is an S3 bucket that does not exist
    missing = "preview-missing-" + uuid.uuid4().hex[:8]
    http = web_app(redis_server.url, f"s3://{missing}")
    # When its health is checked
    assert http.get("/api/preview/worker/health").get_json()["storage"]["ok"] is False
    # Then its /metrics counts the refused ping by its error type, without naming the bucket
    text = http.get("/api/preview/metrics").get_data(as_text=True)
    errors = value(
        parse(text),
        "preview_storage_errors_total",
        backend="s3",
        operation="ping",
        error="storage_forbidden",
    )
    assert errors >= 1
    assert missing not in text


@pytest.mark.slow
def test_a_dramatiq_worker_exports_the_storage_metrics_of_its_renders(
    redis_server: Any, s3_server: Any, start_worker: Any, tmp_path: Path
) -> None:
    # Given `dramatiq dramatiq_preview --processes 2` writing its outputs to an S3 bucket,
    # with its metrics on a port of its own
    ns, port = namespace(), free_port()
    bucket = s3_server.create_bucket()
    start_worker(
        {
            **s3_server.environment(),
            "PREVIEW_NAMESPACE": ns,
            "PREVIEW_OUTPUT_DIR": f"s3://{bucket}/out",
            "dramatiq_prom_host": "127.0.0.1",
            "dramatiq_prom_port": str(port),
            "dramatiq_prom_db": str(tmp_path / "prom"),
        },
        processes=2,
    )
    (SOURCE_ROOT / "stmetrics").mkdir(exist_ok=True)
    source = SOURCE_ROOT / "stmetrics" / f"{ns}.png"
    source.write_bytes(imagegen.png_solid_fast(32, 32))
    settings = Settings.from_mapping(
        {"PREVIEW_REDIS_URL": redis_server.url, "PREVIEW_NAMESPACE": ns}
    )
    broker = build_broker(settings)
    try:
        client = PreviewClient(settings, broker=broker)
        # When a job with two outputs is rendered
        job = client.submit(
            {
                "source": {"path": f"stmetrics/{ns}.png"},
                "outputs": [
                    {"width": 8, "height": 8, "format": "png"},
                    {"width": 4, "height": 4, "format": "webp"},
                ],
            }
        )
        status = wait_for_state(client.status, job.job_id, ("succeeded", "failed"), timeout=60)
        assert status["state"] == "succeeded", status
    finally:
        broker.client.close()

    # Then the worker's exposition times its two S3 puts (summed over its processes)
    def scrape() -> Samples:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return parse(r.read().decode())

    samples = wait_until(
        scrape,
        lambda s: value(s, "preview_storage_seconds_count", backend="s3", operation="put") == 2,
        timeout=30,
        interval=0.1,
        ignore=(OSError,),
        what="two S3 puts in the worker's exposition",
    )
    assert value(samples, "preview_storage_seconds_count", backend="local", operation="get") == 1
    assert value(samples, "preview_storage_errors_total") == 0
    assert {name for name, _ in samples if name.startswith("preview_storage")} <= {
        f"{name}{suffix}"
        for name in PREVIEW_METRICS
        for suffix in ("", "_count", "_sum", "_bucket", "_created", "_total")
    }

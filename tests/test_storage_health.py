"""Health reports storage: the output root (and a separate source root) on disk or in a real
S3 server (SeaweedFS), reachable, stopped, frozen, refusing credentials or missing its bucket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from support import wait_until

from dramatiq_preview import Settings
from dramatiq_preview.flask import PreviewExtension
from dramatiq_preview.health import check_health, presence_key
from dramatiq_preview.testing import RedisServer, S3Server, free_port


def namespace() -> str:
    return "sthealth-" + uuid.uuid4().hex[:8]


def settings_for(redis_url: str, ns: str, **extra: str) -> Settings:
    """Settings from these values alone (not the test environment's PREVIEW_* roots)."""
    values = {"PREVIEW_REDIS_URL": redis_url, "PREVIEW_NAMESPACE": ns, **extra}
    return Settings.from_mapping(values, {})


@pytest.fixture
def own_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """An S3 server of this test alone (to stop or freeze), its ``AWS_*`` variables set."""
    server = S3Server().start()
    for name, value in server.environment().items():
        monkeypatch.setenv(name, value)
    yield server
    if server.process is not None and server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGCONT)
    server.close()


def storage_reasons(body: dict[str, Any]) -> list[dict[str, str]]:
    return [r for r in body["reasons"] if "storage" in r["code"]]


def test_a_local_output_dir_is_ok_and_timed(
    make_broker: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given a local output directory (not created yet) and no source root
    ns = namespace()
    settings = settings_for(redis_server.url, ns, PREVIEW_OUTPUT_DIR=str(tmp_path / "out"))
    # When health is checked
    report = check_health(settings, make_broker(settings))
    # Then storage is ok, local, with its latency, and there is no source storage to report
    storage = report.body["storage"]
    assert storage == {
        "ok": True,
        "kind": "local",
        "latencyMs": storage["latencyMs"],
        "error": None,
    }
    assert isinstance(storage["latencyMs"], float) and storage["latencyMs"] >= 0
    assert "sourceStorage" not in report.body
    assert storage_reasons(report.body) == []
    json.dumps(report.body)


def test_an_output_dir_that_is_a_file_degrades_without_showing_its_path(
    make_broker: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given PREVIEW_OUTPUT_DIR naming a regular file
    target = tmp_path / "not-a-dir"
    target.write_text("x")
    ns = namespace()
    settings = settings_for(redis_server.url, ns, PREVIEW_OUTPUT_DIR=str(target))
    # When health is checked
    report = check_health(settings, make_broker(settings))
    # Then storage is not ok, the error names the variable, not the server's path
    assert report.body["storage"] == {
        "ok": False,
        "kind": "local",
        "latencyMs": None,
        "error": "PREVIEW_OUTPUT_DIR is not a directory",
    }
    assert (report.status, report.http_status) == ("degraded", 200)
    assert [r["code"] for r in storage_reasons(report.body)] == ["storage_unavailable"]
    assert str(tmp_path) not in json.dumps(report.body)


def test_a_missing_local_source_root_is_reported_as_source_storage(
    make_broker: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given a usable output directory and a source root that does not exist
    ns = namespace()
    settings = settings_for(
        redis_server.url,
        ns,
        PREVIEW_OUTPUT_DIR=str(tmp_path / "out"),
        PREVIEW_SOURCE_ROOT=str(tmp_path / "gone"),
    )
    # When health is checked
    report = check_health(settings, make_broker(settings))
    # Then the output storage is ok and the source storage is not, which degrades
    assert report.body["storage"]["ok"] is True
    assert report.body["sourceStorage"] == {
        "ok": False,
        "kind": "local",
        "latencyMs": None,
        "error": "PREVIEW_SOURCE_ROOT does not exist",
    }
    assert report.status == "degraded"
    reasons = storage_reasons(report.body)
    assert [r["code"] for r in reasons] == ["source_storage_unavailable"]
    assert "PREVIEW_SOURCE_ROOT" in reasons[0]["message"]
    assert str(tmp_path) not in json.dumps(report.body)


def test_a_source_root_that_is_the_output_root_is_reported_once(
    make_broker: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given the same directory as source root and output dir
    ns = namespace()
    settings = settings_for(
        redis_server.url,
        ns,
        PREVIEW_OUTPUT_DIR=str(tmp_path),
        PREVIEW_SOURCE_ROOT=str(tmp_path / "." / ""),
    )
    # When health is checked / Then only `storage` is reported
    report = check_health(settings, make_broker(settings))
    assert report.body["storage"]["ok"] is True
    assert "sourceStorage" not in report.body


def test_an_s3_output_root_that_answers_is_ok_with_its_latency(
    make_broker: Any, redis_server: RedisServer, s3_env: Any
) -> None:
    # Given an S3 output root whose bucket exists, and a separate local source root
    bucket = s3_env.create_bucket()
    ns = namespace()
    settings = settings_for(redis_server.url, ns, PREVIEW_OUTPUT_DIR=f"s3://{bucket}/previews")
    broker = make_broker(settings)
    # When health is checked (the first check in a process also loads boto3)
    check_health(settings, broker, timeout=5.0)
    report = check_health(settings, broker)
    # Then storage is ok, s3, with its latency
    storage = report.body["storage"]
    assert storage == {"ok": True, "kind": "s3", "latencyMs": storage["latencyMs"], "error": None}
    assert isinstance(storage["latencyMs"], float) and 0 <= storage["latencyMs"] < 1000
    assert storage_reasons(report.body) == []


@pytest.mark.slow
def test_a_stopped_s3_degrades_a_healthy_deployment_and_the_route_still_answers_200(
    redis_server: RedisServer, start_worker: Any, own_s3: S3Server, tmp_path: Path
) -> None:
    # Given a live worker (health is ok) and a web app whose output root is in an S3 bucket
    ns = namespace()
    bucket = own_s3.create_bucket()
    start_worker(
        {
            "PREVIEW_NAMESPACE": ns,
            "dramatiq_prom_port": str(free_port()),
            "dramatiq_prom_db": str(tmp_path / "prom"),
        }
    )
    with redis_server.client() as client:
        wait_until(
            lambda: client.zcard(presence_key(ns)),
            timeout=30,
            what="the worker's presence mark",
        )
    app = Flask("host")
    app.config.update(
        PREVIEW_REDIS_URL=redis_server.url,
        PREVIEW_NAMESPACE=ns,
        PREVIEW_OUTPUT_DIR=f"s3://{bucket}",
    )
    PreviewExtension(app)
    http = app.test_client()
    wait_until(
        lambda: http.get("/api/preview/worker/health").get_json(),
        lambda body: body["status"] == "ok",
        timeout=30,
        what="health ok with a live worker and S3 up",
    )
    # When S3 stops
    own_s3.stop()
    started = time.monotonic()
    response = http.get("/api/preview/worker/health")
    elapsed = time.monotonic() - started
    # Then the route answers 200 within its second, degraded for the storage alone
    body = response.get_json()
    assert response.status_code == 200
    assert elapsed < 1.5
    assert body["status"] == "degraded"
    assert [r["code"] for r in body["reasons"]] == ["storage_unavailable"]
    assert body["storage"] == {
        "ok": False,
        "kind": "s3",
        "latencyMs": None,
        "error": body["storage"]["error"],
    }
    assert "did not answer" in body["storage"]["error"]
    assert repr(bucket) in body["storage"]["error"]
    assert "is unreachable" in body["reasons"][0]["message"]
    # And neither the endpoint nor a credential shows
    text = json.dumps(body)
    assert str(own_s3.port) not in text and own_s3.secret_key not in text


def test_a_frozen_s3_is_reported_within_the_health_timeout_and_recovers(
    make_broker: Any, redis_server: RedisServer, own_s3: S3Server
) -> None:
    # Given an S3 output root that answered once, with short S3 timeouts
    bucket = own_s3.create_bucket()
    ns = namespace()
    settings = settings_for(
        redis_server.url,
        ns,
        PREVIEW_OUTPUT_DIR=f"s3://{bucket}",
        PREVIEW_FETCH_CONNECT_TIMEOUT_MS="2000",
        PREVIEW_FETCH_READ_TIMEOUT_MS="2000",
    )
    broker = make_broker(settings)
    assert check_health(settings, broker, timeout=5.0).body["storage"]["ok"]
    # When the S3 server freezes (it accepts connections but never answers)
    assert own_s3.process is not None
    os.killpg(own_s3.process.pid, signal.SIGSTOP)
    try:
        for _ in range(3):
            started = time.monotonic()
            report = check_health(settings, broker, timeout=0.5)
            # Then every check ends within its timeout, saying nothing came back
            assert time.monotonic() - started < 0.9
            assert report.body["storage"]["ok"] is False
            assert report.body["storage"]["error"] == "no answer within 500 ms"
            assert report.status == "degraded"
            assert report.body["redis"]["ok"] is True
    finally:
        os.killpg(own_s3.process.pid, signal.SIGCONT)
    # When it thaws / Then storage is ok again
    wait_until(
        lambda: check_health(settings, broker).body["storage"],
        lambda storage: storage["ok"],
        timeout=15,
        what="storage ok once S3 answers again",
    )


def test_a_wrong_secret_is_refused_and_says_the_credentials_were_refused(
    make_broker: Any, redis_server: RedisServer, s3_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an existing bucket and a secret key that is not the access key's
    bucket = s3_env.create_bucket()
    wrong = "not-the-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    ns = namespace()
    settings = settings_for(redis_server.url, ns, PREVIEW_OUTPUT_DIR=f"s3://{bucket}")
    # When health is checked
    report = check_health(settings, make_broker(settings), timeout=5.0)
    # Then storage is refused, with a message about the credentials and the bucket
    storage = report.body["storage"]
    assert (storage["ok"], storage["kind"], storage["latencyMs"]) == (False, "s3", None)
    assert "SignatureDoesNotMatch" in storage["error"]
    assert "AWS_SECRET_ACCESS_KEY" in storage["error"]
    assert repr(bucket) in storage["error"]
    assert report.status == "degraded"
    [reason] = storage_reasons(report.body)
    assert reason["code"] == "storage_unavailable"
    assert "refused access" in reason["message"]
    assert wrong not in json.dumps(report.body)
    assert s3_env.secret_key not in json.dumps(report.body)


def test_a_missing_bucket_is_refused_and_named(
    make_broker: Any, redis_server: RedisServer, s3_env: Any
) -> None:
    # Given an S3 output root whose bucket was never created
    bucket = "preview-missing-" + uuid.uuid4().hex[:8]
    ns = namespace()
    settings = settings_for(redis_server.url, ns, PREVIEW_OUTPUT_DIR=f"s3://{bucket}/v1")
    # When health is checked
    report = check_health(settings, make_broker(settings), timeout=5.0)
    # Then storage is refused, naming the bucket and saying it does not exist
    storage = report.body["storage"]
    assert (storage["ok"], storage["kind"]) == (False, "s3")
    assert repr(bucket) in storage["error"]
    assert "does not exist" in storage["error"]
    assert report.status == "degraded"
    assert [r["code"] for r in storage_reasons(report.body)] == ["storage_unavailable"]


def test_an_s3_source_root_is_reported_next_to_a_local_output_dir(
    make_broker: Any, redis_server: RedisServer, s3_env: Any, tmp_path: Path
) -> None:
    # Given a local output dir and a source root in a bucket that does not exist
    bucket = "preview-nosrc-" + uuid.uuid4().hex[:8]
    ns = namespace()
    settings = settings_for(
        redis_server.url,
        ns,
        PREVIEW_OUTPUT_DIR=str(tmp_path),
        PREVIEW_SOURCE_ROOT=f"s3://{bucket}/uploads",
    )
    # When health is checked
    report = check_health(settings, make_broker(settings), timeout=5.0)
    # Then both are reported, and the source storage degrades
    assert report.body["storage"]["ok"] is True and report.body["storage"]["kind"] == "local"
    source = report.body["sourceStorage"]
    assert (source["ok"], source["kind"], source["latencyMs"]) == (False, "s3", None)
    assert repr(bucket) in source["error"]
    assert report.status == "degraded"
    assert [r["code"] for r in storage_reasons(report.body)] == ["source_storage_unavailable"]


def test_redis_down_stays_down_and_storage_problems_are_listed_too(
    make_broker: Any, own_s3: S3Server
) -> None:
    # Given Redis stopped and S3 stopped
    redis = RedisServer().start()
    bucket = own_s3.create_bucket()
    ns = namespace()
    settings = settings_for(redis.url, ns, PREVIEW_OUTPUT_DIR=f"s3://{bucket}")
    broker = make_broker(settings)
    redis.close()
    own_s3.stop()
    # When health is checked
    report = check_health(settings, broker, timeout=5.0)
    # Then it is down (503), and the storage failure is one of the reasons
    assert (report.status, report.http_status) == ("down", 503)
    assert [r["code"] for r in report.body["reasons"]] == [
        "redis_unreachable",
        "broker_unreachable",
        "storage_unavailable",
    ]
    assert report.body["storage"]["ok"] is False


def test_the_first_s3_check_of_a_process_does_not_count_the_client_set_up(
    redis_server: RedisServer, s3_server: Any, tmp_path: Path
) -> None:
    # Given a fresh process (boto3 not imported yet) whose output root is a reachable bucket,
    # and a health deadline shorter than loading boto3 and building a client takes
    bucket = s3_server.create_bucket()
    code = f"""
import json, os, sys
from dramatiq_preview import Settings
from dramatiq_preview.broker import build_broker
from dramatiq_preview.health import check_health
assert "boto3" not in sys.modules
settings = Settings.from_mapping({{
    "PREVIEW_REDIS_URL": {redis_server.url!r},
    "PREVIEW_NAMESPACE": {namespace()!r},
    "PREVIEW_OUTPUT_DIR": "s3://{bucket}",
}}, {{}})
report = check_health(settings, build_broker(settings), timeout=0.1)
print(json.dumps(report.body["storage"]))
"""
    env = {**os.environ, **s3_server.environment()}
    # When its first health check runs
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    # Then storage is ok: the set-up happened before the deadline started
    assert done.returncode == 0, done.stderr
    storage = json.loads(done.stdout.strip().splitlines()[-1])
    assert storage["ok"] is True and storage["kind"] == "s3", storage

"""Health: ok / degraded / down against a real Redis, real workers, and a Redis that hangs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from support import delete_amqp_queues, wait_until

from dramatiq_preview import PreviewClient, Settings, render_preview
from dramatiq_preview.broker import build_broker
from dramatiq_preview.health import check_health, presence_key
from dramatiq_preview.testing import RedisServer, free_port, wait_for_state

MISSING = {
    "source": {"path": "health/none.png"},
    "outputs": [{"width": 8, "height": 8, "format": "png"}],
}


def live_workers(redis_server: RedisServer, ns: str) -> set[str]:
    """The worker ids with both a presence mark and a broker heartbeat in Redis: what the
    health check counts as live (each process marks itself a moment after "ready")."""
    with redis_server.client() as client:
        present = set(client.zrange(presence_key(ns), 0, -1))
        return present & set(client.zrange(f"{ns}:__heartbeats__", 0, -1))


def wait_for_live_workers(redis_server: RedisServer, ns: str, count: int) -> None:
    wait_until(
        lambda: live_workers(redis_server, ns),
        lambda live: len(live) == count,
        timeout=30,
        what=f"{count} live worker process(es) in {ns}",
    )


def namespace() -> str:
    return "health-" + uuid.uuid4().hex[:8]


def settings_for(redis_url: str, ns: str, **extra: str) -> Settings:
    return Settings.from_mapping({"PREVIEW_REDIS_URL": redis_url, "PREVIEW_NAMESPACE": ns, **extra})


def worker_env(ns: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "PREVIEW_NAMESPACE": ns,
        "dramatiq_prom_host": "127.0.0.1",
        "dramatiq_prom_port": str(free_port()),
        "dramatiq_prom_db": str(tmp_path / "prom"),
        **extra,
    }


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone, to stop or freeze."""
    server = RedisServer().start()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.close()


@pytest.mark.slow
def test_a_live_worker_and_empty_lanes_are_ok_then_dead_letters_and_a_stopped_worker_degrade(
    make_broker: Any, redis_server: RedisServer, start_worker: Any, tmp_path: Path, wait_for: Any
) -> None:
    # Given a worker (2 processes) on a namespace of its own
    ns = namespace()
    worker = start_worker(worker_env(ns, tmp_path), processes=2)
    settings = settings_for(redis_server.url, ns)
    broker = make_broker(settings)
    wait_for_live_workers(redis_server, ns, 2)
    # When health is checked / Then it is ok, with both worker processes live
    report = check_health(settings, broker)
    assert (report.status, report.http_status, report.body["reasons"]) == ("ok", 200, [])
    body = report.body
    assert body["workers"]["live"] == 2
    assert body["redis"]["ok"] and body["redis"]["latencyMs"] >= 0
    assert body["broker"] == {
        "ok": True,
        "kind": "redis",
        "latencyMs": body["broker"]["latencyMs"],
        "error": None,
    }
    assert set(body["queues"]) == {"preview-high", "preview-normal", "preview-low"}
    for lane in body["queues"].values():
        assert (lane["depth"], lane["delayed"], lane["dead"]) == (0, 0, 0)
        assert lane["oldestJobAgeSeconds"] == 0
    json.dumps(body)  # JSON-ready as it is

    # When a job fails permanently and is dead-lettered
    client = PreviewClient(settings, broker=broker)
    job = client.submit(dict(MISSING, jobId="dead-" + ns))
    wait_for_state(client.status, job.job_id, ("failed",), timeout=30)
    # (the worker writes the state first, then moves the message to the dead letters)
    with redis_server.client() as redis_client:
        wait_until(
            lambda: redis_client.zcard(f"{ns}:preview-normal.XQ"),
            what="the failed job's message in the dead letters",
        )
    # Then health is degraded (still 200) and says why
    report = check_health(settings, broker)
    assert (report.status, report.http_status) == ("degraded", 200)
    assert [r["code"] for r in report.body["reasons"]] == ["dead_letters"]
    assert "1 dead-lettered job(s) (preview-normal: 1)" in report.body["reasons"][0]["message"]
    assert report.body["queues"]["preview-normal"]["dead"] == 1

    # When the worker stops / Then no worker is live any more, at once
    worker.stop()
    report = check_health(settings, broker)
    assert report.body["workers"]["live"] == 0
    assert {r["code"] for r in report.body["reasons"]} == {"dead_letters", "no_live_workers"}


def test_a_dead_lettered_webhook_delivery_degrades_and_the_queue_is_reported(
    make_broker: Any, redis_server: RedisServer
) -> None:
    # Given a namespace whose webhook queue has a dead delivery, a waiting one and a retry
    ns = namespace()
    settings = settings_for(redis_server.url, ns)
    broker = make_broker(settings)
    with redis_server.client() as client:
        client.zadd(f"{ns}:preview-webhooks.XQ", {"m1": time.time() * 1000})
        client.rpush(f"{ns}:preview-webhooks", "m2")
        client.hset(f"{ns}:preview-webhooks.DQ.msgs", "m3", "{}")
    # When health is checked
    report = check_health(settings, broker)
    # Then it is degraded, not down, says why, and shows the webhook queue apart
    assert (report.status, report.http_status) == ("degraded", 200)
    (reason,) = [r for r in report.body["reasons"] if r["code"] == "webhook_dead_letters"]
    assert reason["message"].startswith("1 webhook delivery(ies) failed for good")
    assert report.body["webhooks"] == {
        "queue": "preview-webhooks",
        "depth": 1,
        "delayed": 1,
        "dead": 1,
    }
    assert "preview-webhooks" not in report.body["queues"]


def test_a_process_that_only_sends_jobs_is_not_a_live_worker(
    make_broker: Any, redis_server: RedisServer
) -> None:
    # Given no worker, and a producer whose broker has just sent a heartbeat by enqueuing
    # (RedisBroker.enqueue does; PreviewClient.submit, one script on the same Redis, not)
    ns = namespace()
    settings = settings_for(redis_server.url, ns)
    broker = make_broker(settings)
    broker.enqueue(render_preview.message(dict(MISSING, priority="low")))
    with redis_server.client() as client:
        heartbeats = client.zrange(f"{ns}:__heartbeats__", 0, -1)
    assert heartbeats == [broker.broker_id]
    # When health is checked
    report = check_health(settings, broker)
    # Then no worker is live, and the job is counted in the lane's depth
    assert report.status == "degraded"
    assert report.body["workers"]["live"] == 0
    assert [r["code"] for r in report.body["reasons"]] == ["no_live_workers"]
    assert report.body["queues"]["preview-low"]["depth"] == 1
    assert report.body["queues"]["preview-low"]["oldestJobAgeSeconds"] >= 0


def test_a_stale_presence_mark_does_not_count(make_broker: Any, redis_server: RedisServer) -> None:
    # Given a worker id with a fresh broker heartbeat but a presence mark older than the
    # heartbeat timeout (a worker that died without saying goodbye)
    ns = namespace()
    settings = settings_for(redis_server.url, ns)
    broker = make_broker(settings)
    now = int(time.time() * 1000)
    with redis_server.client() as client:
        client.zadd(f"{ns}:__heartbeats__", {"w1": now, "w2": now})
        client.zadd(presence_key(ns), {"w1": now - broker.heartbeat_timeout - 1000, "w2": now})
    # When health is checked / Then only the worker with both marks fresh is live
    assert check_health(settings, broker).body["workers"]["live"] == 1


@pytest.mark.slow
def test_a_job_waiting_longer_than_the_limit_degrades(
    make_broker: Any, redis_server: RedisServer, start_worker: Any, tmp_path: Path
) -> None:
    # Given a worker that does not consume the low lane, and a 1 s age limit
    ns = namespace()
    start_worker(worker_env(ns, tmp_path), queues=["preview-high", "preview-normal"])
    settings = settings_for(redis_server.url, ns, PREVIEW_HEALTH_MAX_AGE_SECONDS="1")
    broker = make_broker(settings)
    wait_for_live_workers(redis_server, ns, 1)
    # When a low job waits for more than a second
    PreviewClient(settings, broker=broker).submit(dict(MISSING, priority="low"))
    # Only time makes a job old: rather than sleep a fixed margin past the limit, check
    # until the job's measured age is past it.
    report = wait_until(
        lambda: check_health(settings, broker),
        lambda r: (r.body["queues"]["preview-low"]["oldestJobAgeSeconds"] or 0) > 1,
        timeout=10,
        what="the low job measured older than 1 s",
    )
    # Then health is degraded because of that job only
    assert report.status == "degraded"
    assert [r["code"] for r in report.body["reasons"]] == ["oldest_job_too_old"]
    assert "preview-low" in report.body["reasons"][0]["message"]
    low = report.body["queues"]["preview-low"]
    assert low["depth"] == 1 and low["oldestJobAgeSeconds"] > 1
    assert report.body["queues"]["preview-normal"]["oldestJobAgeSeconds"] == 0
    assert report.body["limits"] == {"maxOldestJobAgeSeconds": 1}


def test_redis_down_is_down_with_503_at_once(make_broker: Any, own_redis: RedisServer) -> None:
    # Given Redis (state store and broker) stopped
    ns = namespace()
    settings = settings_for(own_redis.url, ns)
    broker = make_broker(settings)
    own_redis.stop()
    # When health is checked
    started = time.monotonic()
    report = check_health(settings, broker)
    # Then it is down, quickly, naming both, without leaking the address
    assert time.monotonic() - started < 1.0
    assert (report.status, report.http_status) == ("down", 503)
    assert [r["code"] for r in report.body["reasons"]] == [
        "redis_unreachable",
        "broker_unreachable",
    ]
    assert report.body["redis"] == {
        "ok": False,
        "latencyMs": None,
        "error": "connection refused or lost",
    }
    assert str(own_redis.port) not in json.dumps(report.body)
    assert report.body["queues"]["preview-normal"]["depth"] is None
    assert report.body["workers"]["live"] is None


def test_a_hanging_redis_is_down_within_the_timeout_and_recovers(
    make_broker: Any, own_redis: RedisServer
) -> None:
    # Given a Redis that accepts connections but never answers (SIGSTOP)
    ns = namespace()
    settings = settings_for(own_redis.url, ns)
    broker = make_broker(settings)
    assert own_redis.process is not None
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        # When health is checked with the default 1 s budget
        started = time.monotonic()
        report = check_health(settings, broker)
        elapsed = time.monotonic() - started
        # Then it answers down within about a second
        assert elapsed < 1.5, elapsed  # 1 s budget, with room for a loaded machine
        assert report.status == "down"
        assert report.body["redis"]["error"] == "no answer within 1000 ms"
        # And a shorter budget is honoured too
        started = time.monotonic()
        assert check_health(settings, broker, timeout=0.3).status == "down"
        assert time.monotonic() - started < 0.8
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
    # When Redis answers again / Then health comes back (degraded: no worker here)
    report = check_health(settings, broker)
    assert report.status == "degraded", report.body
    assert report.body["redis"]["ok"] and report.body["broker"]["ok"]


def test_a_broker_down_while_the_state_store_is_up_is_down(
    make_broker: Any, redis_server: RedisServer, own_redis: RedisServer
) -> None:
    # Given the state store up and the broker's Redis stopped
    ns = namespace()
    settings = settings_for(redis_server.url, ns, PREVIEW_BROKER_URL=own_redis.url)
    broker = make_broker(settings)
    own_redis.stop()
    # When health is checked / Then it is down because of the broker only
    report = check_health(settings, broker)
    assert report.status == "down"
    assert [r["code"] for r in report.body["reasons"]] == ["broker_unreachable"]
    assert report.body["redis"]["ok"] is True
    # And what the state store knows is still reported
    assert report.body["queues"]["preview-normal"]["oldestJobAgeSeconds"] == 0


def test_a_host_broker_is_read_under_its_own_namespace(
    redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    # Given a host-built Redis broker whose namespace is not PREVIEW_NAMESPACE
    ns = namespace()
    settings = settings_for(redis_server.url, ns)
    host = RedisBroker(url=redis_server.url, namespace=ns + "-host", middleware=[])
    request.addfinalizer(host.client.close)
    with redis_server.client() as client:
        client.zadd(f"{ns}-host:preview-high.XQ", {"m1": 1, "m2": 2})
    # When health is checked / Then the dead letters under the host's namespace count
    report = check_health(settings, host)
    assert report.body["queues"]["preview-high"]["dead"] == 2
    assert report.body["queues"]["preview-normal"]["dead"] == 0


def _rabbitmq_url() -> str | None:
    import pika

    url = os.environ.get("PREVIEW_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    try:
        params = pika.URLParameters(url)
        params.socket_timeout = 2
        params.connection_attempts = 1
        pika.BlockingConnection(params).close()
    except Exception:
        return None
    return url


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_a_rabbitmq_broker_reports_counts_and_consumers(
    redis_server: RedisServer, start_worker: Any, tmp_path: Path
) -> None:
    url = _rabbitmq_url()
    if url is None:
        pytest.skip("no RabbitMQ at PREVIEW_TEST_AMQP_URL")
    # Given a worker consuming from RabbitMQ (its lanes carry its namespace: this test's own)
    ns = namespace()
    worker = start_worker(worker_env(ns, tmp_path, PREVIEW_BROKER_URL=url), processes=2)
    settings = settings_for(redis_server.url, ns, PREVIEW_BROKER_URL=url)
    broker = build_broker(settings)
    try:
        # When health is checked / Then the broker answers and its consumers count as live
        report = wait_until(
            lambda: check_health(settings, broker),
            lambda r: (r.body["workers"]["live"] or 0) >= 2,
            what="2 RabbitMQ consumers counted as live workers",
        )
        assert report.body["broker"]["ok"] and report.body["broker"]["kind"] == "rabbitmq"
        assert report.body["workers"]["live"] >= 2
        for lane in report.body["queues"].values():
            assert all(isinstance(lane[k], int) for k in ("depth", "delayed", "dead"))
        assert report.status in {"ok", "degraded"}
        assert set(report.body["queues"]) == {
            f"preview.{ns}.{p}" for p in ("high", "normal", "low")
        }
    finally:
        broker.close()
        worker.stop()  # before its queues go: a live consumer would declare them again
        delete_amqp_queues(url, ns)


def test_an_unreachable_rabbitmq_is_down_quickly(redis_server: RedisServer) -> None:
    settings = settings_for(
        redis_server.url,
        namespace(),
        PREVIEW_BROKER_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
    )
    started = time.monotonic()
    report = check_health(settings, build_broker(settings))
    assert time.monotonic() - started < 1.5
    assert [r["code"] for r in report.body["reasons"]] == ["broker_unreachable"]
    assert report.body["broker"]["kind"] == "rabbitmq"


@pytest.fixture
def password_redis() -> Iterator[tuple[int, str]]:
    """``(port, password)`` of a redis-server of this test alone started with
    ``--requirepass`` (``testing.RedisServer`` has no option for it); stopped by its pid."""
    executable = shutil.which("redis-server")
    assert executable, "the tests need redis-server"
    port, password = free_port(), "Pw-" + uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="preview-redis-auth-") as data:
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        process = subprocess.Popen(
            [executable, *args, "--dir", data, "--requirepass", password],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with redis.Redis(host="127.0.0.1", port=port, password=password) as client:
                wait_until(client.ping, ignore=(redis.ConnectionError,), what="redis-server")
            yield port, password
        finally:
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=10)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("a wrong password", "authentication failed: wrong user name or password"),
        ("no password", "authentication failed: the server requires a password"),
    ],
)
def test_a_refused_password_is_reported_as_an_authentication_failure(
    make_broker: Any, password_redis: tuple[int, str], given: str, expected: str
) -> None:
    # Given Redis (state store and broker) that wants a password, and settings with a
    # wrong one or none
    port, password = password_redis
    wrong = "Wr0ng-" + uuid.uuid4().hex
    userinfo = f":{wrong}@" if given == "a wrong password" else ""
    settings = settings_for(f"redis://{userinfo}127.0.0.1:{port}/0", namespace())
    # When health is checked
    report = check_health(settings, make_broker(settings))
    # Then it is down, and says that the password was refused, not that the connection was
    assert (report.status, report.http_status) == ("down", 503)
    assert report.body["redis"]["error"] == expected
    assert report.body["broker"]["error"] == expected
    assert expected in report.body["reasons"][0]["message"]
    # And neither password shows
    text = json.dumps(report.body)
    assert wrong not in text and password not in text
    # And with the right password the same server is reachable
    right = settings_for(f"redis://:{password}@127.0.0.1:{port}/0", namespace())
    report = check_health(right, make_broker(right))
    assert report.body["redis"]["ok"] and report.body["broker"]["ok"], report.body


@pytest.mark.rabbitmq
def test_a_refused_rabbitmq_login_is_reported_as_an_authentication_failure(
    redis_server: RedisServer,
) -> None:
    url = _rabbitmq_url()
    if url is None:
        pytest.skip("no RabbitMQ at PREVIEW_TEST_AMQP_URL")
    # Given a RabbitMQ broker URL with a wrong password
    parts = urlsplit(url)
    wrong = "Wr0ng-" + uuid.uuid4().hex
    netloc = f"{parts.username or 'guest'}:{wrong}@{parts.hostname}:{parts.port or 5672}"
    bad = urlunsplit(parts._replace(netloc=netloc))
    settings = settings_for(redis_server.url, namespace(), PREVIEW_BROKER_URL=bad)
    # When health is checked / Then the broker is down because the login was refused
    report = check_health(settings, build_broker(settings))
    assert [r["code"] for r in report.body["reasons"]] == ["broker_unreachable"]
    assert report.body["broker"]["error"].startswith("authentication failed")
    assert wrong not in json.dumps(report.body)


def test_a_user_without_the_permissions_the_check_needs_is_reported_as_such(
    make_broker: Any, password_redis: tuple[int, str]
) -> None:
    # Given a Redis user that may connect and PING but run nothing else (an ACL)
    port, password = password_redis
    limited = "Lim-" + uuid.uuid4().hex
    with redis.Redis(host="127.0.0.1", port=port, password=password) as admin:
        admin.acl_setuser(
            "limited",
            enabled=True,
            passwords=[f"+{limited}"],
            keys=["*"],
            commands=["+@connection"],
        )
    settings = settings_for(f"redis://limited:{limited}@127.0.0.1:{port}/0", namespace())
    # When health is checked / Then it is down, saying that permission was denied
    report = check_health(settings, make_broker(settings))
    assert report.status == "down"
    expected = "permission denied: the user may not run what the health check needs"
    assert report.body["redis"]["error"] == expected
    assert limited not in json.dumps(report.body)


@pytest.mark.parametrize("timeout", [float("inf"), float("nan"), 0.0, -1.0, 1e308])
def test_a_timeout_that_is_not_a_positive_number_of_seconds_is_refused(
    make_broker: Any, redis_server: RedisServer, timeout: float
) -> None:
    settings = settings_for(redis_server.url, namespace())
    with pytest.raises(ValueError, match="timeout must be a finite number of seconds"):
        check_health(settings, make_broker(settings), timeout=timeout)

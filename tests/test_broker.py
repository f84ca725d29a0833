"""Broker set-up: which broker the actor joins, lanes, middleware, import-time behaviour."""

from __future__ import annotations

import subprocess
import textwrap

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries, TimeLimit
from support import PYTHON, python_env

from dramatiq_preview import (
    InvalidPayload,
    JobConflict,
    PreviewClient,
    render_preview,
    setup_broker,
)
from dramatiq_preview.broker import actor_broker
from dramatiq_preview.fused_enqueue import shared_redis_namespace
from dramatiq_preview.middleware import Idempotency, JobStatus, PayloadValidation
from dramatiq_preview.names import ALL_QUEUES, QUEUES, RECORDED

GOOD = {"source": {"path": "a.png"}, "outputs": [{"width": 8, "height": 8, "format": "png"}]}


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-c", textwrap.dedent(code)],
        env=python_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_import_builds_a_redis_broker_from_the_environment_without_connecting() -> None:
    # Given a broker URL where nothing listens / When the package is imported
    result = run_python(
        """
        import dramatiq.broker
        assert dramatiq.broker.global_broker is None
        import dramatiq_preview
        b = dramatiq.broker.global_broker
        print(type(b).__name__, b.namespace, dramatiq_preview.render_preview.broker is b)
        print(sorted(b.get_declared_queues()))
        """,
        PREVIEW_REDIS_URL="redis://127.0.0.1:1/0",
        PREVIEW_NAMESPACE="imp",
    )
    # Then it succeeds (no connection was attempted) and our actor is on that broker
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "RedisBroker imp True"
    assert lines[1] == str(sorted(ALL_QUEUES))


def test_import_joins_the_broker_the_host_already_set() -> None:
    result = run_python(
        """
        import dramatiq
        from dramatiq.brokers.stub import StubBroker
        host = StubBroker()
        dramatiq.set_broker(host)
        import dramatiq_preview
        names = [type(m).__name__ for m in host.middleware]
        print(dramatiq_preview.render_preview.broker is host, dramatiq.broker.global_broker is host)
        print(names.index("JobStatus") < names.index("Retries"), "render_preview" in host.actors)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True", "True"]


def test_amqp_url_gives_a_rabbitmq_broker_without_connecting() -> None:
    result = run_python(
        """
        import dramatiq_preview
        print(type(dramatiq_preview.render_preview.broker).__name__)
        """,
        PREVIEW_BROKER_URL="amqp://guest:guest@127.0.0.1:1/%2F",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "RabbitmqBroker"


def test_on_rabbitmq_every_queue_of_ours_carries_the_namespace() -> None:
    # Given a RabbitMQ broker URL (nothing listens) and a namespace of one deployment
    result = run_python(
        """
        import dramatiq_preview as dp
        from dramatiq_preview.dlq import dead_letters
        from dramatiq_preview.client import PreviewClient
        broker = dp.render_preview.broker
        print(sorted(broker.get_declared_queues()))
        print(dp.render_preview.queue_name, dp.deliver_preview_webhook.queue_name)
        print(dp.render_preview.message({"priority": "high"}).queue_name)
        print(dead_letters(broker, PreviewClient().store).queues)
        """,
        PREVIEW_BROKER_URL="amqp://guest:guest@127.0.0.1:1/%2F",
        PREVIEW_NAMESPACE="acme:staging",
    )
    # When the package is imported / Then the lanes, the actors and the dead letters use
    # the namespaced queues, and only those
    assert result.returncode == 0, result.stderr
    ns = "preview.acme..staging"
    lines = result.stdout.splitlines()
    ours = [f"{ns}.{q}" for q in ("high", "normal", "low", "webhooks")]
    assert lines[0] == str(sorted(ours))
    assert lines[1] == f"{ns}.normal {ns}.webhooks"
    assert lines[2] == f"{ns}.high"
    assert lines[3] == str(tuple(ours))


def test_setup_broker_names_the_lanes_for_the_broker_it_is_given() -> None:
    # Given a process on Redis under a custom namespace, moved to a RabbitMQ broker
    result = run_python(
        """
        import dramatiq_preview as dp
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
        print(dp.render_preview.queue_name, dp.deliver_preview_webhook.queue_name)
        host = RabbitmqBroker(url="amqp://guest:guest@127.0.0.1:1/%2F")
        dp.setup_broker(host)
        print(dp.render_preview.queue_name, dp.deliver_preview_webhook.queue_name)
        print(dp.render_preview.message({"priority": "low"}).queue_name)
        """,
        PREVIEW_REDIS_URL="redis://127.0.0.1:1/0",
        PREVIEW_NAMESPACE="tenant-a",
    )
    # Then the Redis broker keeps the historical names and the RabbitMQ one gets the
    # namespaced ones (PREVIEW_NAMESPACE applies to a host's broker too)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "preview-normal preview-webhooks",
        "preview.tenant-a.normal preview.tenant-a.webhooks",
        "preview.tenant-a.low",
    ]


def test_a_bad_environment_value_stops_import_naming_the_variable() -> None:
    result = run_python("import dramatiq_preview", PREVIEW_MAX_RETRIES="lots")
    assert result.returncode != 0
    assert "ConfigError: PREVIEW_MAX_RETRIES: expected an integer, got 'lots'" in result.stderr


def test_setup_broker_moves_the_actor_and_is_safe_twice() -> None:
    # Given a broker the host built itself, with a bare middleware list
    original = render_preview.broker
    host = StubBroker(middleware=[])
    try:
        # When setup_broker runs twice
        setup_broker(host)
        setup_broker(host)
        # Then each middleware is there once, state middleware before Retries
        names = [type(m).__name__ for m in host.middleware]
        for name in ("TimeLimit", "Retries", "PayloadValidation", "Idempotency", "JobStatus"):
            assert names.count(name) == 1, names
        assert names.index("JobStatus") < names.index("Retries")
        assert render_preview.broker is host
        assert host.actors["render_preview"] is render_preview
        assert set(QUEUES.values()) <= host.get_declared_queues()
    finally:
        setup_broker(original)
    assert render_preview.broker is original


def test_clients_and_the_command_use_the_broker_setup_broker_moved_the_actor_to() -> None:
    # Given a host that installs a global broker of its own, then moves our actor to another
    original = render_preview.broker
    previous_global = dramatiq.broker.global_broker
    theirs, host = StubBroker(middleware=[]), StubBroker(middleware=[])
    dramatiq.set_broker(theirs)
    try:
        setup_broker(host)
        # When a client (and the command, through the same function) asks for the broker
        client = PreviewClient()
        # Then it is the broker the actor is on, and the other broker was left alone
        assert client.broker is host is actor_broker()
        assert theirs.middleware == []
    finally:
        setup_broker(original)
        dramatiq.set_broker(previous_global)


def test_the_actor_carries_retry_and_time_limit_options_from_settings() -> None:
    options = render_preview.options
    assert options["max_retries"] == 2
    assert (options["min_backoff"], options["max_backoff"]) == (100, 400)
    assert options["time_limit"] == 20000
    assert any(isinstance(m, TimeLimit) for m in render_preview.broker.middleware)
    assert any(isinstance(m, Retries) for m in render_preview.broker.middleware)


@pytest.mark.parametrize(
    ("priority", "queue"),
    [
        ("high", "preview-high"),
        ("low", "preview-low"),
        ("normal", "preview-normal"),
        (None, "preview-normal"),
    ],
)
def test_messages_go_to_their_priority_lane(priority: str | None, queue: str) -> None:
    payload = dict(GOOD) if priority is None else dict(GOOD, priority=priority)
    message = render_preview.message(payload)
    assert message.queue_name == queue
    assert len(message.args[0]["jobId"]) == 32
    assert "jobId" not in payload


def test_send_of_an_invalid_payload_raises_in_the_caller(redis_client: object) -> None:
    # When an invalid payload is sent / Then the caller gets InvalidPayload and nothing is queued
    broker = render_preview.broker
    assert isinstance(broker, RedisBroker)
    before = broker.client.llen(f"{broker.namespace}:preview-normal")
    with pytest.raises(InvalidPayload) as info:
        render_preview.send({"source": {"path": "a.png"}, "outputs": [{"width": "8"}]})
    assert [d["path"] for d in info.value.to_dict()["details"]] == [
        "outputs/0/format",
        "outputs/0/height",
        "outputs/0/width",
    ]
    with pytest.raises(InvalidPayload, match="exactly one argument"):
        render_preview.send(GOOD, GOOD)
    assert broker.client.llen(f"{broker.namespace}:preview-normal") == before


def test_send_records_the_job_and_refuses_a_different_payload_under_the_same_id(
    job_id: str,
) -> None:
    from dramatiq_preview import get_status

    broker = render_preview.broker
    worker_free_queue = "preview-low"  # enqueue only; the assertion is about the record
    message = render_preview.send(dict(GOOD, jobId=job_id, priority="low"))
    assert message.queue_name == worker_free_queue
    assert message.options[RECORDED] is True
    assert get_status(job_id)["state"] in {"queued", "running", "succeeded", "failed"}
    with pytest.raises(JobConflict, match="different payload"):
        render_preview.send(dict(GOOD, jobId=job_id, priority="low", page=3))
    del broker


def test_middleware_classes_follow_dramatiq_conventions() -> None:
    for cls in (PayloadValidation, Idempotency, JobStatus):
        assert issubclass(cls, dramatiq.Middleware)
        assert not cls.__name__.endswith("Middleware")
        with pytest.raises(TypeError):
            cls(None)  # type: ignore[misc]  # keyword-only arguments


def test_submits_fuse_record_and_enqueue_only_for_a_plain_redis_broker_on_the_same_db() -> None:
    store = redis.Redis.from_url("redis://127.0.0.1:7/0")  # never connected
    same = RedisBroker(url="redis://127.0.0.1:7/0", namespace="ns")  # type: ignore[no-untyped-call]
    other_db = RedisBroker(url="redis://127.0.0.1:7/2")  # type: ignore[no-untyped-call]
    other_port = RedisBroker(url="redis://127.0.0.1:8/0")  # type: ignore[no-untyped-call]
    other_user = RedisBroker(url="redis://broker:pw@127.0.0.1:7/0")  # type: ignore[no-untyped-call]

    class OwnRedisBroker(RedisBroker):
        pass

    subclass = OwnRedisBroker(url="redis://127.0.0.1:7/0")  # type: ignore[no-untyped-call]
    assert shared_redis_namespace(same, store) == "ns"
    for broker in (other_db, other_port, other_user, subclass, StubBroker()):
        assert shared_redis_namespace(broker, store) is None


def test_an_amqp_url_without_pika_names_the_extra_to_install() -> None:
    # Given a process where pika cannot be imported (a Redis-only install)
    script = textwrap.dedent(
        """
        import sys
        sys.modules["pika"] = None  # `import pika` now raises ImportError
        from dramatiq_preview.broker import build_broker
        from dramatiq_preview.config import Settings
        from dramatiq_preview.errors import ConfigError
        try:
            build_broker(Settings.from_mapping({"PREVIEW_BROKER_URL": "amqp://mq:5672/"}, {}))
        except ConfigError as exc:
            print(exc.message)
        """
    )
    # When it builds a broker for an amqp:// URL
    result = subprocess.run(
        [PYTHON, "-c", script], env=python_env(), capture_output=True, text=True, timeout=60
    )
    # Then the error names the setting and the extra, not a bare ImportError
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("PREVIEW_BROKER_URL: an amqp:// broker needs pika")
    assert 'pip install "dramatiq-preview[rabbitmq]"' in result.stdout

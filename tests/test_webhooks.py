"""Signed webhooks, end to end: real workers (``dramatiq dramatiq_preview``), a real receiver
on 127.0.0.1 (tests/webhookreceiver.py), real Redis and RabbitMQ.

Signatures are checked with the ``standardwebhooks`` package itself.  Waits are failure
guards only: no test asserts an absolute duration (the trickle test compares an attempt
with the trickle it is given, both measured in the same run).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import imagegen
import pytest
from standardwebhooks import Webhook
from support import SOURCE_ROOT, delete_amqp_queues, wait_for_log, wait_until
from webhookreceiver import HANG, TRICKLE, TRICKLED, Received, Receiver

from dramatiq_preview import PreviewClient, Settings, render_preview
from dramatiq_preview.broker import build_broker
from dramatiq_preview.dlq import dead_letters
from dramatiq_preview.errors import ConfigError, InvalidPayload, WebhookFailed, WebhookRefused
from dramatiq_preview.health import check_health
from dramatiq_preview.names import ACTOR_NAME, RECORDED, WEBHOOK_ACTOR_NAME, queue_for
from dramatiq_preview.notify import Attempt
from dramatiq_preview.state import WebhookOp
from dramatiq_preview.testing import RedisServer, WorkerProcess, free_port, wait_for_state
from dramatiq_preview.validation import normalize
from dramatiq_preview.webhooks import deliver, webhook_id

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
OUT = [{"width": 8, "height": 8, "format": "png"}]
SOURCE = {"path": "hooks/a.png"}


def hook_env(**extra: str) -> dict[str, str]:
    """Worker and client settings: webhooks to 127.0.0.1, small attempts and backoffs."""
    return {
        "PREVIEW_NAMESPACE": "hooks-" + uuid.uuid4().hex[:8],
        "PREVIEW_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "PREVIEW_WEBHOOK_SECRET": SECRET,
        "PREVIEW_WEBHOOK_MIN_BACKOFF_MS": "50",
        "PREVIEW_WEBHOOK_MAX_BACKOFF_MS": "200",
        "PREVIEW_WEBHOOK_MAX_ATTEMPTS": "3",
        "PREVIEW_WEBHOOK_TIMEOUT_MS": "1000",
        "dramatiq_prom_port": str(free_port()),
        **extra,
    }


def job(job_id: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"jobId": job_id, "source": SOURCE, "outputs": OUT, "webhook": {"url": url}, **extra}


def verified(request: Received) -> dict[str, Any]:
    """The event of a request, after standardwebhooks verified its signature."""
    event: dict[str, Any] = Webhook(SECRET).verify(request.body, request.headers)
    return event


def webhook_of(client: PreviewClient, job_id: str) -> dict[str, Any]:
    webhook: dict[str, Any] = client.status(job_id)["webhook"]
    return webhook


def wait_webhook(client: PreviewClient, job_id: str, state: str, timeout: float = 60) -> Any:
    return wait_until(
        lambda: webhook_of(client, job_id),
        lambda hook: hook["state"] == state,
        timeout=timeout,
        what=f"webhook of {job_id} {state}",
    )


@pytest.fixture(scope="module", autouse=True)
def source() -> None:
    (SOURCE_ROOT / "hooks").mkdir(exist_ok=True)
    (SOURCE_ROOT / "hooks" / "a.png").write_bytes(imagegen.png(imagegen.quadrants(16, 16)))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


@pytest.fixture(scope="module")
def hooks() -> Iterator[PreviewClient]:
    """A client of a namespace of its own with webhook settings, and a worker (2 threads)."""
    env = hook_env()
    proc = WorkerProcess(env=env, threads=2).start()
    client = PreviewClient(Settings.from_mapping(env))
    yield client
    client.close()
    proc.stop()


@pytest.fixture
def clients() -> Iterator[Any]:
    """``clients(env)``: a PreviewClient for ``env``, closed after the test."""
    made: list[PreviewClient] = []

    def make(env: dict[str, str]) -> PreviewClient:
        made.append(PreviewClient(Settings.from_mapping(env)))
        return made[-1]

    yield make
    for client in made:
        client.close()


# -- the package ------------------------------------------------------------------------------


def test_the_worker_command_consumes_the_delivery_queue() -> None:
    # Given the module `dramatiq dramatiq_preview` imports / Then the delivery actor and its
    # queue are declared on the package's broker, next to render_preview
    code = (
        "import dramatiq_preview, dramatiq.broker as b; g = b.global_broker; "
        f"print('{WEBHOOK_ACTOR_NAME}' in g.actors, 'preview-webhooks' in g.get_declared_queues())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["True", "True"], out.stderr


# -- delivery ---------------------------------------------------------------------------------


def test_a_delivery_is_signed_per_standard_webhooks_and_records_its_state(
    hooks: PreviewClient, receiver: Receiver, job_id: str
) -> None:
    client = hooks
    url = receiver.script("/signed?token=abc", 200)
    # When a job with a webhook succeeds
    client.submit(job(job_id, url, metadata={"user": "42"}))
    (request,) = receiver.wait_for("/signed?token=abc", 1)
    # Then the request verifies with standardwebhooks and carries the final status
    event = verified(request)
    assert event["type"] == "preview.job.succeeded"
    data = event["data"]
    assert (data["jobId"], data["state"], data["metadata"]) == (job_id, "succeeded", {"user": "42"})
    assert data["result"]["outputs"][0]["format"] == "png"
    assert event["timestamp"] == data["finishedAt"]
    headers = request.headers
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("dramatiq-preview/")
    assert headers["webhook-id"].startswith("msg_") and "." not in headers["webhook-id"]
    assert request.body == json.dumps(event, separators=(",", ":")).encode()
    # And the status says delivered, after one attempt
    assert wait_webhook(client, job_id, "delivered") == {
        "state": "delivered",
        "attempts": 1,
        "lastError": None,
    }


def test_a_receiver_failing_twice_gets_three_attempts_with_one_webhook_id(
    hooks: PreviewClient, receiver: Receiver, job_id: str
) -> None:
    client = hooks
    url = receiver.script("/flaky", 500, 500, 200)
    client.submit(job(job_id, url))
    requests = receiver.wait_for("/flaky", 3)
    assert wait_webhook(client, job_id, "delivered") == {
        "state": "delivered",
        "attempts": 3,
        "lastError": None,
    }
    assert len(receiver.requests("/flaky")) == 3
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert [verified(r)["type"] for r in requests] == ["preview.job.succeeded"] * 3


def test_a_receiver_that_never_answers_is_given_up_after_the_cap_and_dead_lettered(
    hooks: PreviewClient, receiver: Receiver, job_id: str
) -> None:
    client = hooks
    url = receiver.script("/silent", HANG)
    client.submit(job(job_id, url))
    hook = wait_webhook(client, job_id, "failed")
    # Then every attempt was made (PREVIEW_WEBHOOK_MAX_ATTEMPTS=3), and no more
    assert hook["attempts"] == 3
    assert "did not answer within 1000 ms" in hook["lastError"]
    assert len(receiver.requests("/silent")) == 3
    assert client.status(job_id)["state"] == "succeeded"  # the job itself is not touched
    # And the delivery is in the dead letters, listed with the job's id
    dlq = dead_letters(client.broker, client.store)
    letter = wait_until(
        lambda: [d for d in dlq.list() if d.job_id == job_id],
        what="the delivery in the dead letters",
    )[0]
    assert letter.kind == "webhook" and letter.queue == "preview-webhooks"
    assert letter.line().startswith(f"{job_id}\twebhook_failed\tattempts=3\t")
    # And health is degraded (not down) and says why
    report = check_health(client.settings, client.broker)
    assert report.status == "degraded" and report.http_status == 200
    assert "webhook_dead_letters" in [r["code"] for r in report.body["reasons"]]
    assert report.body["webhooks"]["dead"] >= 1


def test_a_redirect_is_not_followed(hooks: PreviewClient, receiver: Receiver, job_id: str) -> None:
    client = hooks
    with Receiver() as elsewhere:
        target = elsewhere.script("/catch", 200)
        url = receiver.script("/moved", ("redirect", target.replace("127.0.0.1", "localhost")))
        client.submit(job(job_id, url))
        hook = wait_webhook(client, job_id, "failed")
        assert hook["attempts"] == 3
        assert "answered HTTP 302, a redirect to http://localhost:" in hook["lastError"]
        assert "not followed" in hook["lastError"]
        assert elsewhere.requests("/catch") == []


def test_a_webhook_job_cancelled_while_waiting_gets_a_cancelled_event(
    receiver: Receiver, start_worker: Any, clients: Any, job_id: str
) -> None:
    # Given a job waiting in a namespace no worker consumes yet
    env = hook_env()
    client = clients(env)
    url = receiver.script("/cancelled", 200)
    client.submit(job(job_id, url))
    # When it is cancelled, and a worker comes
    assert client.cancel(job_id)["state"] == "cancelled"
    start_worker(env=env)
    # Then the receiver is told, once
    (request,) = receiver.wait_for("/cancelled", 1)
    event = verified(request)
    assert (event["type"], event["data"]["state"]) == ("preview.job.cancelled", "cancelled")
    assert wait_webhook(client, job_id, "delivered")["attempts"] == 1


@pytest.mark.slow
def test_hanging_receivers_do_not_take_every_worker_thread(
    receiver: Receiver, start_worker: Any, clients: Any, job_id: str
) -> None:
    # Given a worker with two threads, so one delivery slot, and two receivers that hang
    env = hook_env(PREVIEW_WEBHOOK_TIMEOUT_MS="60000", PREVIEW_WEBHOOK_MAX_ATTEMPTS="1")
    client = clients(env)
    start_worker(env=env, threads=2)
    hooked = [f"{job_id}-hook{i}" for i in range(2)]
    paths = [f"/stuck{i}" for i in range(2)]
    for hook_job, path in zip(hooked, paths, strict=True):
        client.submit(job(hook_job, receiver.script(path, HANG)))
    for hook_job in hooked:
        assert wait_for_state(client.status, hook_job, timeout=60)["state"] == "succeeded"
    wait_until(
        lambda: sum(receiver.hanging(p) for p in paths), lambda n: n == 1, what="a held delivery"
    )
    # When plain jobs are submitted while both deliveries are due
    others = [f"{job_id}-{i}" for i in range(3)]
    for other in others:
        client.submit({"jobId": other, "source": SOURCE, "outputs": OUT})
    # Then they are rendered: the second delivery waits for the slot instead of a thread
    for other in others:
        assert wait_for_state(client.status, other, timeout=60)["state"] == "succeeded"
    assert sum(receiver.hanging(p) for p in paths) == 1
    for hook_job in hooked:
        assert webhook_of(client, hook_job) == {
            "state": "pending",
            "attempts": 0,
            "lastError": None,
        }
    # And waiting for the slot was no attempt: each delivery makes its one attempt
    receiver.release()
    for hook_job in hooked:
        assert wait_webhook(client, hook_job, "failed")["attempts"] == 1
    assert [len(receiver.requests(p)) for p in paths] == [1, 1]


# -- not losing a delivery -------------------------------------------------------------------


@pytest.mark.slow
def test_a_delivery_survives_a_killed_worker_with_the_same_webhook_id(
    receiver: Receiver, start_worker: Any, clients: Any, job_id: str
) -> None:
    # Given a receiver that fails the first attempt, and a retry waiting for its backoff
    env = hook_env(PREVIEW_WEBHOOK_MIN_BACKOFF_MS="2000", PREVIEW_WEBHOOK_MAX_BACKOFF_MS="2000")
    client = clients(env)
    url = receiver.script("/survivor", 500, 200)
    first: WorkerProcess = start_worker(env=env, threads=1)
    client.submit(job(job_id, url))
    receiver.wait_for("/survivor", 1)
    wait_until(lambda: webhook_of(client, job_id)["attempts"] == 1, what="the failed attempt")
    # When the worker is killed (SIGKILL, the whole group) and another one starts
    assert first.process is not None
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait(timeout=30)
    start_worker(env=env, threads=1)
    # Then the delivery completes, with the same webhook-id
    requests = receiver.wait_for("/survivor", 2, timeout=90)
    assert requests[0].headers["webhook-id"] == requests[1].headers["webhook-id"]
    verified(requests[1])
    assert wait_webhook(client, job_id, "delivered")["attempts"] == 2


def test_a_final_state_whose_delivery_was_never_queued_is_delivered_on_redelivery(
    hooks: PreviewClient, receiver: Receiver, job_id: str
) -> None:
    # Given a job recorded as succeeded by a worker that died before queueing its webhook
    # (the state store's own transitions, as that worker made them)
    client = hooks
    url = receiver.script("/late", 200)
    normalized = normalize(job(job_id, url))
    client.store.record(normalized, queue=queue_for("normal"))
    client.store.claim(job_id, token="dead", lease_ms=60000, max_deliveries=3)
    finished = client.store.finish(job_id, token="dead", outcome="succeeded", data={"outputs": []})
    assert finished.webhook_due
    assert receiver.requests("/late") == []
    # When its render message, never acknowledged, comes back to a worker
    client.broker.enqueue(
        dramatiq.Message(
            queue_name=queue_for("normal"),
            actor_name=ACTOR_NAME,
            args=(normalized,),
            kwargs={},
            options={RECORDED: True},
        )
    )
    # Then the claim queues the delivery, and the receiver gets the event that was due
    (request,) = receiver.wait_for("/late", 1)
    event = verified(request)
    assert (event["type"], event["data"]["result"]) == ("preview.job.succeeded", {"outputs": []})
    assert wait_webhook(client, job_id, "delivered")["attempts"] == 1


@pytest.mark.slow
def test_a_broker_that_refuses_the_delivery_keeps_the_render_message_until_it_takes_it(
    receiver: Receiver,
    start_worker: Any,
    clients: Any,
    source_server: Any,
    redis_server: RedisServer,
    job_id: str,
) -> None:
    # Given a worker whose broker is a Redis of its own, rendering a job with a webhook
    broker_redis = RedisServer().start()
    try:
        env = hook_env(PREVIEW_BROKER_URL=broker_redis.url)
        client = clients(env)
        worker: WorkerProcess = start_worker(env=env, threads=1)
        png = imagegen.png(imagegen.quadrants(8, 8))
        src = source_server.add(f"/{job_id}.png", png, stall=60)
        url = receiver.script("/patient", 200)
        client.submit({**job(job_id, url), "source": {"url": src}})
        source_server.wait_for_hits(f"/{job_id}.png", 1)
        # When the broker goes away before the render ends
        broker_redis.stop()
        source_server.release(f"/{job_id}.png")
        assert wait_for_state(client.status, job_id, timeout=60)["state"] == "succeeded"
        # Then the worker keeps the render message unacknowledged, retrying the enqueue
        wait_for_log(worker, "Failed to post_process_message", timeout=60)
        assert receiver.requests("/patient") == []
        assert webhook_of(client, job_id) == {"state": "pending", "attempts": 0, "lastError": None}
        # And once the broker is back, the delivery is queued and made
        broker_redis.start()
        (request,) = receiver.wait_for("/patient", 1, timeout=90)
        assert verified(request)["data"]["jobId"] == job_id
        assert wait_webhook(client, job_id, "delivered")["attempts"] == 1
    finally:
        broker_redis.close()


# -- one attempt, in this process --------------------------------------------------------------


@pytest.fixture
def recorded(hooks: PreviewClient) -> Any:
    """``recorded(job_id, url)``: a job ended as ``failed`` with its webhook due; returns
    ``(settings, store, seq)`` for :func:`deliver`."""
    client = hooks

    def make(job_id: str, url: str) -> tuple[Settings, Any, int]:
        store = client.store
        store.record(normalize(job(job_id, url)), queue=queue_for("normal"))
        error = {"type": "source_not_found", "message": "gone", "retryable": False}
        finished = store.finish(job_id, token="", outcome="failed", data=error)
        return client.settings, store, finished.webhook_due

    return make


def test_a_receiver_trickling_its_headers_is_cut_at_the_timeout(
    recorded: Any, receiver: Receiver, job_id: str
) -> None:
    # Given a receiver that sends its status line and headers a byte at a time, each byte
    # long before any read timeout; how long its whole answer takes, measured here
    url = receiver.script("/trickle", TRICKLE)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=30) as sock:
        sock.sendall(b"POST /trickle HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        answer = b""
        while not answer.endswith(b"\r\n\r\n") and (chunk := sock.recv(1024)):
            answer += chunk
    trickle = time.monotonic() - started
    assert answer == TRICKLED
    settings, store, seq = recorded(job_id, url)
    short = Settings.from_mapping(
        {"PREVIEW_WEBHOOK_TIMEOUT_MS": "300", "PREVIEW_ALLOW_PRIVATE_NETWORKS": "true"},
        {**hook_env(), "PREVIEW_REDIS_URL": settings.redis_url},
    )
    # When an attempt with a 300 ms timeout meets it
    started = time.monotonic()
    with pytest.raises(WebhookFailed, match="did not answer within 300 ms") as caught:
        deliver(job_id, seq, short, store)
    # Then it fails as a timeout, before the trickle would have ended
    assert time.monotonic() - started < trickle
    assert caught.value.seconds is not None and caught.value.seconds < trickle
    assert len(receiver.requests("/trickle")) == 2


def test_an_event_delivered_already_or_superseded_is_dropped_without_a_request(
    recorded: Any, receiver: Receiver, job_id: str
) -> None:
    url = receiver.script("/once", 200)
    settings, store, seq = recorded(job_id, url)
    # A stale event (not the one armed) is dropped
    assert deliver(job_id, seq - 1, settings, store) == Attempt(
        False, reason="the job has changed state since this event"
    )
    attempt = deliver(job_id, seq, settings, store)
    assert (attempt.delivered, attempt.status) == (True, 200)
    assert verified(receiver.requests("/once")[0])["type"] == "preview.job.failed"
    store.webhook(job_id, WebhookOp.DELIVERED, seq)
    # A copy of a delivered event is dropped
    assert not deliver(job_id, seq, settings, store).delivered
    assert len(receiver.requests("/once")) == 1
    # A record that expired: dropped
    assert not deliver("t-no-such-job", 1, settings, store).delivered


@pytest.mark.parametrize(
    ("step", "error", "text"),
    [
        (410, WebhookRefused, "410 Gone"),
        (503, WebhookFailed, "answered HTTP 503"),
        (("redirect", "http://127.0.0.1:9/x?t=1"), WebhookFailed, "302, a redirect to http"),
    ],
)
def test_one_attempt_maps_the_receiver_s_answer(
    recorded: Any, receiver: Receiver, job_id: str, step: Any, error: type[Exception], text: str
) -> None:
    url = receiver.script("/answer", step)
    settings, store, seq = recorded(job_id, url)
    with pytest.raises(error, match=text) as caught:
        deliver(job_id, seq, settings, store)
    assert getattr(caught.value, "seconds", None) is not None


def test_a_host_no_longer_allowed_is_refused_at_once_without_a_request(
    recorded: Any, receiver: Receiver, job_id: str
) -> None:
    url = receiver.script("/moved-away", 200)
    settings, store, seq = recorded(job_id, url)
    narrower = Settings.from_mapping(
        {"PREVIEW_WEBHOOK_ALLOWED_HOSTS": "hooks.example", "PREVIEW_WEBHOOK_SECRET": SECRET},
        {"PREVIEW_REDIS_URL": settings.redis_url, "PREVIEW_NAMESPACE": settings.namespace},
    )
    with pytest.raises(WebhookRefused, match="not in PREVIEW_WEBHOOK_ALLOWED_HOSTS"):
        deliver(job_id, seq, narrower, store)
    private_off = Settings.from_mapping(
        {"PREVIEW_ALLOW_PRIVATE_NETWORKS": "false"},
        {**hook_env(), "PREVIEW_REDIS_URL": settings.redis_url},
    )
    with pytest.raises(WebhookRefused, match="loopback"):
        deliver(job_id, seq, private_off, store)
    assert receiver.requests("/moved-away") == []


def test_a_refused_connection_and_an_unknown_host_are_failed_attempts(
    recorded: Any, job_id: str
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/hook"
    settings, store, seq = recorded(job_id, closed)
    with pytest.raises(WebhookFailed, match="could not be reached"):
        deliver(job_id, seq, settings, store)
    other = job_id + "-dns"
    settings, store, seq = recorded(other, "http://nothing.invalid/hook")
    dns = Settings.from_mapping(
        {"PREVIEW_WEBHOOK_ALLOWED_HOSTS": "nothing.invalid", "PREVIEW_WEBHOOK_SECRET": SECRET},
        {"PREVIEW_REDIS_URL": settings.redis_url, "PREVIEW_NAMESPACE": settings.namespace},
    )
    with pytest.raises(WebhookFailed, match="could not be resolved"):
        deliver(other, seq, dns, store)


@pytest.mark.parametrize("secret", [None, "whsec_c2hvcnQ=", "s3cr3t-but-not-whsec"])
def test_webhooks_cannot_be_configured_unsigned(secret: str | None) -> None:
    env = {"PREVIEW_WEBHOOK_ALLOWED_HOSTS": "hooks.example"}
    if secret is not None:
        env["PREVIEW_WEBHOOK_SECRET"] = secret
    with pytest.raises(ConfigError, match="PREVIEW_WEBHOOK_SECRET"):
        Settings.from_mapping({}, env)


def test_the_webhook_id_is_stable_per_event_and_free_of_separators() -> None:
    assert webhook_id("ns", "a.b:c", 7) == webhook_id("ns", "a.b:c", 7)
    assert webhook_id("ns", "a.b:c", 7) != webhook_id("ns", "a.b:c", 8)
    assert webhook_id("ns", "a", 7) != webhook_id("other", "a", 7)
    # A record created again under the same jobId reaches seq 7 again: another event.
    assert webhook_id("ns", "a", 7, "0f3a") != webhook_id("ns", "a", 7, "9b1c")
    assert all(c.isalnum() or c == "_" for c in webhook_id("ns", "a.b:c", 7))


# -- refused at submit --------------------------------------------------------------------------


FORBIDDEN = [
    ("http://elsewhere.example/hook", "not in PREVIEW_WEBHOOK_ALLOWED_HOSTS"),
    ("http://127.0.0.1:9/hook", "loopback"),
    ("http://user:pw@hooks.example/hook", "credentials"),
    ("http://169.254.169.254/latest", "not in PREVIEW_WEBHOOK_ALLOWED_HOSTS"),
]


@pytest.mark.parametrize(("url", "why"), FORBIDDEN)
def test_a_forbidden_webhook_is_a_422_at_submit(url: str, why: str, job_id: str) -> None:
    from flask import Flask

    from dramatiq_preview.flask import PreviewExtension

    app = Flask("hooks")
    app.config.update(
        PREVIEW_NAMESPACE="hooks-submit",
        PREVIEW_WEBHOOK_ALLOWED_HOSTS="hooks.example,127.0.0.1",
        PREVIEW_WEBHOOK_SECRET=SECRET,
        PREVIEW_ALLOW_PRIVATE_NETWORKS=False,
    )
    PreviewExtension(app)
    response = app.test_client().post("/api/preview/job", json=job(job_id, url))
    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert body["error"] == "validation_error"
    (detail,) = body["details"]
    assert detail["path"] == "webhook/url" and why in detail["message"]


@pytest.fixture
def webhook_broker() -> Iterator[dramatiq.Broker]:
    """A broker built by the library for webhooks to hooks.example and 127.0.0.1, private
    networks off: its middleware checks what ``send()`` enqueues on it."""
    broker = build_broker(
        Settings.from_mapping(
            {
                "PREVIEW_NAMESPACE": "hooks-send",
                "PREVIEW_WEBHOOK_ALLOWED_HOSTS": "hooks.example,127.0.0.1",
                "PREVIEW_WEBHOOK_SECRET": SECRET,
                "PREVIEW_ALLOW_PRIVATE_NETWORKS": "false",
            }
        )
    )
    yield broker
    broker.close()


@pytest.mark.parametrize(("url", "why"), FORBIDDEN)
def test_a_forbidden_webhook_raises_in_the_sender(
    url: str, why: str, job_id: str, webhook_broker: dramatiq.Broker, redis_client: Any
) -> None:
    # render_preview.send() is broker.enqueue(render_preview.message(...)) on its broker
    with pytest.raises(InvalidPayload, match=why) as caught:
        webhook_broker.enqueue(render_preview.message(job(job_id, url)))
    assert [issue.path for issue in caught.value.issues] == ["webhook/url"]
    assert redis_client.exists(f"hooks-send:job:{job_id}") == 0  # nothing recorded


def test_webhooks_are_refused_in_the_sender_when_disabled(job_id: str) -> None:
    # The test process has no PREVIEW_WEBHOOK_ALLOWED_HOSTS
    with pytest.raises(InvalidPayload, match="webhooks are disabled"):
        render_preview.send(job(job_id, "https://hooks.example/h"))


# -- RabbitMQ ---------------------------------------------------------------------------------


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_deliveries_retry_and_dead_letter_through_rabbitmq(
    receiver: Receiver, start_worker: Any, clients: Any, job_id: str
) -> None:
    from test_rabbitmq import AMQP_URL, _why_not

    if _why_not is not None:
        pytest.skip(_why_not)
    env = hook_env(PREVIEW_BROKER_URL=AMQP_URL, PREVIEW_WEBHOOK_MAX_ATTEMPTS="2")
    client = clients(env)
    worker = start_worker(env=env, threads=2)
    try:
        ok = receiver.script("/amqp-ok", 500, 200)
        down = receiver.script("/amqp-down", 503)
        client.submit(job(job_id, ok))
        client.submit(job(job_id + "-down", down))
        requests = receiver.wait_for("/amqp-ok", 2, timeout=60)
        assert len({r.headers["webhook-id"] for r in requests}) == 1
        assert wait_webhook(client, job_id, "delivered")["attempts"] == 2
        failed = wait_webhook(client, job_id + "-down", "failed")
        assert (failed["attempts"], failed["lastError"]) == (2, f"{down} answered HTTP 503")
        dlq = dead_letters(client.broker, client.store)
        letters = wait_until(
            lambda: [d for d in dlq.list() if d.job_id == job_id + "-down"],
            what="the delivery in RabbitMQ's dead letters",
        )
        assert letters[0].kind == "webhook"
        assert dlq.requeue(job_id + "-down") == [job_id + "-down"]
        receiver.wait_for("/amqp-down", 3, timeout=60)
    finally:
        worker.stop()  # before its queues go: a live consumer would declare them again
        # The queues carry this test's namespace: they are its own.
        delete_amqp_queues(AMQP_URL, env["PREVIEW_NAMESPACE"])

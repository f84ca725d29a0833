"""Key audit (issue #16; contract §7: every key this library writes expires, nothing grows
without bound) after a mixed workload, on the Redis broker and on RabbitMQ.

The workload touches every writer of the library: jobs cancelled while queued and while
running, succeeded (with a webhook delivered, and without one), retried then succeeded,
failed permanently (one with a webhook that fails every attempt), dead-lettered after their
retries, one requeued from the dead letters that then succeeds, a duplicate submit; through
the HTTP API (the Flask app in-process: submit, status, cancel, events, outputs, jobs,
dead letters, health, metrics) and the client; with the retention sweep on (its lock), and
two worker hosts (their presence entries, heartbeats, acks).

Then the hosts stop (SIGTERM) once every job, webhook and message is done, and every key of
the deployment's Redis is sorted (``loadtools.audit_namespace``):

* keys of the library without a TTL, or with one above ``PREVIEW_JOB_TTL_SECONDS``: 0,
  each offender named; keys outside the namespace: 0;
* ``MEMORY USAGE`` of every retained job record (mean, max, and by final state), and of
  all the library's keys per record;
* Dramatiq's own keys "back to empty" (``loadtools.NamespaceAudit``): on the Redis broker
  no queue, delay queue, message body or ``__acks__`` set left, dead letters exactly the
  dead jobs, and no ``__heartbeats__`` entry left after one maintenance pass run once the
  heartbeat timeout has passed; on RabbitMQ no message in any queue of the vhost but the
  dead letters, and no Dramatiq key in Redis.
"""

from __future__ import annotations

import base64
import os
import statistics
import time
import uuid
from typing import Any

import pytest
from dramatiq.brokers.redis import RedisBroker
from flask import Flask
from webhookreceiver import Receiver

from dramatiq_preview.flask import PreviewExtension

from .harness import HEARTBEAT_TIMEOUT_MS, Deployment, Sampler, report, scaled, wait_until
from .loadtools import PREFIX, TtlWatch, audit_namespace

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
MAX_RETRIES = 3
WEBHOOK_ATTEMPTS = 3


def count(values: Any) -> dict[str, int]:
    found: dict[str, int] = {}
    for value in values:
        found[str(value)] = found.get(str(value), 0) + 1
    return dict(sorted(found.items()))


def test_key_audit(broker: str) -> None:
    n = scaled(6)
    run = uuid.uuid4().hex[:6]
    receiver = Receiver().start()
    try:
        with Deployment(
            "key-audit",
            broker,
            PREVIEW_MAX_RETRIES=str(MAX_RETRIES),
            PREVIEW_WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
            PREVIEW_WEBHOOK_SECRET=SECRET,
            PREVIEW_WEBHOOK_MIN_BACKOFF_MS="100",
            PREVIEW_WEBHOOK_MAX_BACKOFF_MS="400",
            PREVIEW_WEBHOOK_MAX_ATTEMPTS=str(WEBHOOK_ATTEMPTS),
            PREVIEW_WEBHOOK_TIMEOUT_MS="2000",
            # The retention sweep runs (and takes its lock) while the workload does.
            PREVIEW_GC_INTERVAL_SECONDS="2",
        ) as d:
            audit_run(d, broker, receiver, n, run)
    finally:
        receiver.stop()


def audit_run(d: Deployment, broker: str, receiver: Receiver, n: int, run: str) -> None:
    # Every key of ours is also checked while the workload runs, every 0.2 s.
    watch = TtlWatch(d.raw, d.namespace, redis_broker=broker == "redis")
    sampler = Sampler(watch.probe, interval=0.2)
    sampler.start()
    try:
        workload_and_audit(d, broker, receiver, n, run, watch, sampler)
    finally:
        sampler.stop()


def workload_and_audit(
    d: Deployment,
    broker: str,
    receiver: Receiver,
    n: int,
    run: str,
    watch: TtlWatch,
    sampler: Sampler,
) -> None:
    app = Flask("faults-key-audit")
    app.config.update(d.env)
    extension = PreviewExtension(app)
    http = app.test_client()
    kinds: dict[str, list[str]] = {}

    def ids(kind: str, count_: int = n) -> list[str]:
        kinds[kind] = [f"audit-{run}-{kind}-{i:03d}" for i in range(count_)]
        return kinds[kind]

    def hook(path: str, *steps: int | str) -> dict[str, Any]:
        return {"webhook": {"url": receiver.script(f"/{run}/{path}", *steps)}}

    def submit(payload: dict[str, Any]) -> None:
        answer = http.post(f"{PREFIX}/job", json=payload)
        assert answer.status_code == 202, answer.get_json()

    # Given jobs cancelled while queued (no worker runs yet), one with a webhook
    for i, job_id in enumerate(ids("cancelled-queued")):
        submit({**d.payload(job_id), **(hook(job_id, 200) if i == 0 else {})})
        answer = http.post(f"{PREFIX}/job/{job_id}/cancel")
        assert answer.status_code == 202 and answer.get_json()["state"] == "cancelled"

    # and two worker hosts, and every other kind of job
    d.start_host("a")
    d.start_host("b")
    for job_id in ids("succeeded-webhook"):
        submit({**d.payload(job_id), **hook(job_id, 200)})
    for job_id in ids("succeeded"):
        d.client.submit(d.payload(job_id))
    duplicate = d.payload(kinds["succeeded"][0])
    assert d.client.submit(duplicate).duplicate
    for job_id in ids("retried"):
        d.client.submit({**d.payload(job_id), "source": {"url": flaky(d, job_id, 2)}})
    for i, job_id in enumerate(ids("failed")):
        missing = {"source": {"url": d.sources.url(f"/missing/{job_id}.jpg")}}
        webhook = hook(job_id, 500) if i == 0 else {}
        submit({**d.payload(job_id), **missing, **webhook})
    for job_id in ids("dead"):
        url = d.sources.add(f"/down/{job_id}.jpg", b"", fail=[503] * 100)
        d.client.submit({**d.payload(job_id), "source": {"url": url}})
    (comeback,) = ids("requeued", 1)
    d.client.submit({**d.payload(comeback), "source": {"url": flaky(d, comeback, 1 + MAX_RETRIES)}})
    (stopped,) = ids("cancelled-running", 1)
    d.client.submit(d.payload(stopped, stall=30))
    wait_until(lambda: d.client.status(stopped)["state"] == "running", timeout=60, what="a render")
    assert http.post(f"{PREFIX}/job/{stopped}/cancel").status_code == 202
    d.sources.release(f"/src/{stopped}.jpg")

    # When they have all run: the dead one requeued from the dead letters, and the API read
    wait_until(
        lambda: d.client.status(comeback)["state"] == "failed", timeout=60, what="dead letter"
    )
    assert http.post(f"{PREFIX}/dlq/{comeback}/requeue").status_code == 202
    every = [job_id for group in kinds.values() for job_id in group]
    statuses = d.wait_final(every, timeout=90)
    hooked = [j for j, s in statuses.items() if s and s.get("webhook")]
    wait_until(
        lambda: all(
            d.client.status(j)["webhook"]["state"] in ("delivered", "failed") for j in hooked
        ),
        timeout=60,
        what="every webhook delivered or given up",
    )
    statuses = d.statuses(every)
    for path in ("/jobs?limit=200", "/dlq", "/worker/health", "/metrics"):
        assert http.get(f"{PREFIX}{path}").status_code == 200, path
    first = kinds["succeeded"][0]
    with http.get(f"{PREFIX}/job/{first}/outputs/0") as output:
        assert output.status_code == 200
    with http.get(f"{PREFIX}/job/{first}/events") as events:
        assert events.status_code == 200 and b"succeeded" in events.get_data()
    wait_until(d.broker_idle, timeout=60, interval=0.5, what="the broker idle")
    sampler.stop()
    d.stop_hosts()
    stopped_at = time.monotonic()
    extension.state(app).client.close()

    # Then every key of ours expires, and Dramatiq's keys are back to empty
    ttl = int(d.env["PREVIEW_JOB_TTL_SECONDS"])
    maintenance = None
    if broker == "redis":
        # The heartbeats of the stopped workers must be older than the timeout first.
        time.sleep(max(0.0, HEARTBEAT_TIMEOUT_MS / 1000 + 1 - (time.monotonic() - stopped_at)))
        maintenance = RedisBroker(
            url=d.redis.url,
            namespace=d.namespace,
            heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
            dead_message_ttl=ttl * 1000,
            middleware=[],
        )
    try:
        audit = audit_namespace(
            d.raw,
            d.namespace,
            ttl_max=ttl,
            redis_broker=broker == "redis",
            maintenance=maintenance,
            amqp_queues=d.vhost.queue_depths() if d.vhost is not None else None,
        )
    finally:
        if maintenance is not None:
            maintenance.close()
    by_state: dict[str, list[int]] = {}
    pipe = d.raw.pipeline(transaction=False)
    for job_id in every:
        pipe.memory_usage(d.client.store.job_key(job_id), samples=0)
    for job_id, size in zip(every, pipe.execute(), strict=True):
        status = statuses[job_id]
        by_state.setdefault(status["state"] if status else "missing", []).append(int(size or 0))
    states = {
        kind: count((statuses[j] or {}).get("state") for j in group)
        for kind, group in kinds.items()
    }
    webhooks = count(statuses[j]["webhook"]["state"] for j in hooked)
    # Dead letters: every job failed (permanently at once, or after its retries) and every
    # webhook given up (docs/observability.md, preview_jobs_total and preview_webhooks_total).
    expected_dead = len(kinds["failed"]) + len(kinds["dead"]) + webhooks.get("failed", 0)
    report(
        f"key-audit[{broker}]",
        f"{len(every)} jobs ({', '.join(f'{k} {len(v)}' for k, v in kinds.items())}), "
        f"webhooks {webhooks}; while they ran ({watch.samples} samples): key patterns of "
        f"ours {sorted(watch.seen)}, keys seen without TTL {len(watch.without_ttl)}; at the "
        f"end: {audit.summary()}; record MEMORY USAGE by state "
        + ", ".join(f"{s} {statistics.fmean(v):.0f} B" for s, v in sorted(by_state.items())),
        keys_without_ttl=len(audit.without_ttl),
        record_bytes_mean=statistics.fmean(audit.record_bytes) if audit.record_bytes else 0,
        dead_letters=audit.dead_letters(),
        heartbeats_after=audit.heartbeats_after,
    )
    assert states == {
        "cancelled-queued": {"cancelled": n},
        "succeeded-webhook": {"succeeded": n},
        "succeeded": {"succeeded": n},
        "retried": {"succeeded": n},
        "failed": {"failed": n},
        "dead": {"failed": n},
        "requeued": {"succeeded": 1},
        "cancelled-running": {"cancelled": 1},
    }, states
    assert all(statuses[j]["attempts"] == 1 + MAX_RETRIES for j in kinds["dead"])
    assert all(statuses[j]["attempts"] == 3 for j in kinds["retried"])
    assert webhooks == {"delivered": n + 1, "failed": 1}, webhooks
    assert sorted(watch.without_ttl) == [], watch.without_ttl
    assert audit.without_ttl == [], audit.without_ttl
    assert audit.ttl_too_long == [], audit.ttl_too_long
    assert audit.outside_namespace == [], audit.outside_namespace
    assert audit.records == len(every), audit.summary()
    assert audit.broker_left() == {}, audit.broker_left()
    assert audit.dead_letters() == expected_dead, audit.summary()
    if broker == "redis":
        assert audit.heartbeats_after == 0, audit.summary()
    else:
        assert audit.broker_keys == {}
        assert audit.amqp_queues is not None
        live = {q: m for q, m in audit.amqp_queues.items() if m and not q.endswith(".XQ")}
        assert live == {}, audit.amqp_queues


def flaky(d: Deployment, job_id: str, failures: int) -> str:
    """A URL source of the photo that answers 503 to its first ``failures`` requests."""
    path = f"/flaky/{job_id}.jpg"
    d.url_source(job_id)  # registers the photo under the job's own path
    body = d.sources.routes[f"/src/{job_id}.jpg"].body
    return d.sources.add(path, body, content_type="image/jpeg", fail=[503] * failures)

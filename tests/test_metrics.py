"""Metrics: job counters from events, scrape-time gauges, web metrics, and real workers
(``dramatiq dramatiq_preview --processes 2``) whose exposition is scraped over HTTP."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imagegen
import pytest
from dramatiq.brokers.stub import StubBroker
from prometheus_client import CollectorRegistry
from support import (
    PYTHON,
    REPO,
    Samples,
    parse,
    python_env,
    value,
    wait_for_log,
    wait_until,
)

from dramatiq_preview import PreviewClient, Settings, render_preview
from dramatiq_preview.broker import build_broker
from dramatiq_preview.events import emit
from dramatiq_preview.metrics import (
    DRAMATIQ_METRICS,
    PREVIEW_METRICS,
    WEBHOOK_OUTCOMES,
    JobMetrics,
    WebMetrics,
    prepare_run_directory,
    run_name,
)
from dramatiq_preview.middleware import Metrics
from dramatiq_preview.state import get_store
from dramatiq_preview.testing import RedisServer, free_port, wait_for_state
from dramatiq_preview.validation import fingerprint, normalize

OUTCOMES = ("succeeded", "failed", "cancelled", "retried", "duplicate_skipped", "worker_lost")


def has(samples: Samples, name: str) -> bool:
    return any(n == name for n, _ in samples)


def scrape(port: int, timeout: float = 20) -> Samples:
    """The samples of the exposition on ``port``, once it accepts connections."""

    def get() -> Samples:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return parse(r.read().decode())

    return wait_until(
        get,
        lambda _: True,
        timeout=timeout,
        interval=0.05,
        ignore=(OSError,),
        what=f"an exposition on port {port}",
    )


def namespace() -> str:
    return "metrics-" + uuid.uuid4().hex[:8]


def worker_env(ns: str, prom_db: Path, port: int, **extra: str) -> dict[str, str]:
    return {
        "PREVIEW_NAMESPACE": ns,
        "dramatiq_prom_host": "127.0.0.1",
        "dramatiq_prom_port": str(port),
        "dramatiq_prom_db": str(prom_db),
        **extra,
    }


def small_job(**fields: Any) -> dict[str, Any]:
    return {"outputs": [{"width": 16, "height": 16, "format": "png"}], **fields}


@pytest.fixture
def clients(redis_server: RedisServer) -> Iterator[Any]:
    """``clients(ns)``: a PreviewClient on its own broker for namespace ``ns``."""
    brokers: list[Any] = []

    def make(ns: str) -> PreviewClient:
        settings = Settings.from_mapping(
            {"PREVIEW_REDIS_URL": redis_server.url, "PREVIEW_NAMESPACE": ns}
        )
        brokers.append(build_broker(settings))
        return PreviewClient(settings, broker=brokers[-1])

    yield make
    for broker in brokers:
        broker.client.close()


def wait_state(
    client: PreviewClient, job_id: str, states: tuple[str, ...], timeout: float = 30
) -> dict[str, Any]:
    return wait_for_state(client.status, job_id, states, timeout=timeout)


# -- job metrics from events -----------------------------------------------------------------


def test_job_events_count_by_outcome_and_time_successful_renders() -> None:
    # Given job metrics in a registry of their own
    registry = CollectorRegistry()
    metrics = JobMetrics(registry)  # observers are held weakly: keep a reference

    def get(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    # Then every outcome exists at zero before anything happens
    for outcome in OUTCOMES:
        assert registry.get_sample_value("preview_jobs_total", {"outcome": outcome}) == 0.0
    # When one event of each kind is emitted (as the middleware does)
    emit("running", job_id="j1", attempt=1)
    emit(
        "succeeded",
        job_id="j1",
        attempt=1,
        duration=0.4,
        result={"outputs": []},
        input_format="JPEG",
        source_bytes=2048,
        stages={"fetch": 0.1, "encode": 0.2},
    )
    emit("failed", job_id="j2", attempt=1, duration=0.1, error={"type": "source_not_found"})
    emit("retrying", job_id="j3", attempt=1, duration=0.2, error={"type": "source_unavailable"})
    emit("cancelled", job_id="j4", attempt=1, duration=0.3)
    emit("duplicate_skipped", job_id="j1", state="succeeded")
    emit("worker_lost", job_id="j5", attempt=3)
    emit("duplicate", job_id="j1")
    emit("succeeded", job_id="j6", attempt=2, duration=1.5, result=None, input_format="xcf")
    # Then each outcome is counted once (twice for succeeded)
    assert {o: get("preview_jobs_total", outcome=o) for o in OUTCOMES} == {
        "succeeded": 2,
        "failed": 1,
        "cancelled": 1,
        "retried": 1,
        "duplicate_skipped": 1,
        "worker_lost": 1,
    }
    assert get("preview_duplicates_total") == 1
    # And only successful renders are timed, by input format and stage
    assert get("preview_render_seconds_count", input_format="jpeg", stage="total") == 1
    assert get("preview_render_seconds_sum", input_format="jpeg", stage="total") == 0.4
    assert get("preview_render_seconds_count", input_format="jpeg", stage="fetch") == 1
    assert get("preview_render_seconds_count", input_format="jpeg", stage="encode") == 1
    # An unknown format is "other", never its raw value
    assert get("preview_render_seconds_count", input_format="other", stage="total") == 1
    assert get("preview_source_bytes_count", input_format="jpeg") == 1
    assert get("preview_source_bytes_sum", input_format="jpeg") == 2048
    del metrics


def test_labels_stay_low_cardinality_whatever_the_events_say() -> None:
    # Given job metrics / When many jobs with odd formats and stages succeed
    registry = CollectorRegistry()
    metrics = JobMetrics(registry)  # observers are held weakly: keep a reference
    for i in range(50):
        emit(
            "succeeded",
            job_id=f"job-{i}",
            attempt=1,
            duration=0.01,
            input_format=f"fmt{i}",
            stages={f"stage{i}": 0.01, "decode": 0.01},
        )
    # Then no label carries a job id, and formats and stages come from fixed sets
    labels: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            for key, val in sample.labels.items():
                labels.setdefault(key, set()).add(val)
    assert set(labels) == {"outcome", "input_format", "stage", "le"}
    assert labels["input_format"] == {"other"}
    assert labels["stage"] == {"total", "decode", "other"}
    assert not any("job-" in v for vals in labels.values() for v in vals)
    del metrics


def test_webhook_attempts_are_counted_by_outcome_and_their_posts_timed() -> None:
    # Given job metrics in a registry of their own
    registry = CollectorRegistry()
    metrics = JobMetrics(registry)  # observers are held weakly: keep a reference

    def get(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    assert {o: get("preview_webhooks_total", outcome=o) for o in WEBHOOK_OUTCOMES.values()} == {
        "delivered": 0,
        "retried": 0,
        "failed": 0,
    }
    # When attempts end as the status middleware reports them
    emit("webhook_retried", job_id="w1", attempt=1, duration=0.25, error={"type": "x"})
    emit("webhook_delivered", job_id="w1", attempt=2, duration=0.05, error=None)
    # (a refused host: failed without a request, so nothing to time)
    emit("webhook_failed", job_id="w2", attempt=1, duration=None, error={"type": "y"})
    # Then each outcome is counted, and only the POSTs made are timed
    assert get("preview_webhooks_total", outcome="retried") == 1
    assert get("preview_webhooks_total", outcome="delivered") == 1
    assert get("preview_webhooks_total", outcome="failed") == 1
    assert get("preview_webhook_seconds_count") == 2
    assert get("preview_webhook_seconds_sum") == pytest.approx(0.3)
    # And webhook events are not job outcomes
    assert sum(get("preview_jobs_total", outcome=o) for o in OUTCOMES) == 0
    del metrics


def test_the_webhook_queue_has_its_gauges(redis_server: RedisServer, clients: Any) -> None:
    # Given a namespace with a dead-lettered webhook delivery and one waiting
    ns = namespace()
    client = clients(ns)
    web = WebMetrics(client.settings, client.broker)
    with redis_server.client() as redis_client:
        redis_client.zadd(f"{ns}:preview-webhooks.XQ", {"m1": time.time() * 1000})
        redis_client.rpush(f"{ns}:preview-webhooks", "m2")
    # When the app is scraped / Then the webhook queue is there under its own label
    samples = parse(web.exposition()[0].decode())
    assert value(samples, "preview_dead_letters", queue="preview-webhooks") == 1
    assert value(samples, "preview_queue_depth", queue="preview-webhooks") == 1
    assert value(samples, "preview_delayed_messages", queue="preview-webhooks") == 0


def test_our_middleware_is_inert_in_a_process_that_never_booted_a_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a broker with Metrics, in a process that only sends (like a web process)
    broker = StubBroker(middleware=[Metrics()])
    broker.declare_queue("q")
    from dramatiq import Message

    message = Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={"retries": 1})
    # When messages go through Dramatiq's hooks / Then nothing fails
    broker.enqueue(message)
    broker.emit_after("nack", message)
    assert not [r for r in caplog.records if r.levelname == "CRITICAL"]


def test_a_host_broker_with_its_own_prometheus_middleware_keeps_it() -> None:
    from dramatiq.middleware.prometheus import Prometheus

    from dramatiq_preview.broker import attach_middleware

    theirs = Prometheus()
    broker = StubBroker(middleware=[theirs])
    attach_middleware(broker)
    attach_middleware(broker)
    prometheus = [m for m in broker.middleware if isinstance(m, Prometheus)]
    assert prometheus == [theirs]
    names = [type(m).__name__ for m in broker.middleware]
    assert names.count("Presence") == names.count("LogFormat") == 1


# -- run directories -------------------------------------------------------------------------


def test_run_directories_of_ended_runs_are_removed_and_live_ones_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a base with a live run (this process), ended runs and a file that is not ours
    monkeypatch.setenv("dramatiq_prom_db", str(tmp_path))
    live = tmp_path / run_name(os.getppid())
    live.mkdir()
    (live / "counter_1.db").write_bytes(b"x")
    boot = run_name(os.getpid()).split("-")[1]
    ended = [
        tmp_path / f"run-{boot}-999999999-1",
        tmp_path / f"run-otherboot-{os.getpid()}-1",
        tmp_path / f"run-{boot}-{os.getpid()}-1",
    ]
    for path in ended:
        path.mkdir()
        (path / "counter_42.db").write_bytes(b"stale")
    (tmp_path / "counter_7.db").write_bytes(b"dramatiq's own")
    # When this process prepares its run directory
    mine = Path(prepare_run_directory(os.getpid()))
    # Then it exists and is empty, the other live run is intact, ended runs are gone
    assert mine.is_dir() and not any(mine.iterdir())
    assert (live / "counter_1.db").exists()
    assert not any(path.exists() for path in ended)
    assert (tmp_path / "counter_7.db").exists()


# -- web metrics -----------------------------------------------------------------------------


def test_web_metrics_count_requests_and_read_gauges_from_redis_at_scrape_time(
    redis_server: RedisServer, clients: Any
) -> None:
    # Given a web app's metrics for a namespace with two low jobs waiting and one dead letter
    ns = namespace()
    client = clients(ns)
    started = time.monotonic()
    web = WebMetrics(client.settings, client.broker)
    assert time.monotonic() - started < 0.5, "creating the metrics must not touch Redis"
    for _ in range(2):
        client.submit(small_job(source={"path": "metrics/none.png"}, priority="low"))
    with redis_server.client() as redis_client:
        redis_client.zadd(f"{ns}:preview-normal.XQ", {"m1": time.time() * 1000})
    # When requests are observed and the app is scraped
    web.observe(endpoint="preview.submit", method="post", status=202, seconds=0.012)
    web.observe(endpoint="preview.submit", method="POST", status=422, seconds=0.003)
    web.observe(endpoint="preview.status", method="GET", status=200, seconds=0.001)
    body, content_type = web.exposition()
    samples = parse(body.decode())
    # Then request counters and latency are there by endpoint, method and status
    assert content_type.startswith("text/plain")
    assert value(samples, "preview_http_requests_total", endpoint="preview.submit") == 2
    assert value(samples, "preview_http_requests_total", method="POST", status="422") == 1
    assert (
        value(samples, "preview_http_request_duration_seconds_count", endpoint="preview.status")
        == 1
    )
    # And the gauges reflect Redis right now
    assert value(samples, "preview_queue_depth", queue="preview-low") == 2
    assert value(samples, "preview_queue_depth", queue="preview-normal") == 0
    assert value(samples, "preview_dead_letters", queue="preview-normal") == 1
    assert value(samples, "preview_oldest_job_age_seconds", queue="preview-low") > 0
    assert value(samples, "preview_live_workers") == 0
    assert value(samples, "preview_redis_up") == value(samples, "preview_broker_up") == 1
    # And every name is one we document
    assert {name for name, _ in samples} <= _expanded(PREVIEW_METRICS)


def test_duplicate_submissions_are_counted(clients: Any) -> None:
    client = clients(namespace())
    web = WebMetrics(client.settings, client.broker)
    payload = small_job(
        jobId="dup-" + uuid.uuid4().hex, source={"path": "metrics/none.png"}, priority="low"
    )
    client.submit(payload)
    assert client.submit(payload).duplicate
    assert client.submit(payload).duplicate
    assert value(parse(web.exposition()[0].decode()), "preview_duplicates_total") == 2


def test_web_metrics_answer_quickly_without_gauges_when_redis_is_down() -> None:
    server = RedisServer()  # never started: nothing listens on its port
    settings = Settings.from_mapping({"PREVIEW_REDIS_URL": server.url, "PREVIEW_NAMESPACE": "x"})
    broker = build_broker(settings)
    web = WebMetrics(settings, broker)
    web.observe(endpoint="preview.health", method="GET", status=503, seconds=0.9)
    started = time.monotonic()
    samples = parse(web.exposition()[0].decode())
    assert time.monotonic() - started < 1.5
    assert value(samples, "preview_redis_up") == 0 and value(samples, "preview_broker_up") == 0
    assert not has(samples, "preview_queue_depth")
    assert value(samples, "preview_http_requests_total", status="503") == 1
    server.close()


def test_web_metrics_speak_openmetrics_when_asked(clients: Any) -> None:
    client = clients(namespace())
    web = WebMetrics(client.settings, client.broker)
    body, content_type = web.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF")


def _expanded(names: frozenset[str]) -> set[str]:
    out = set(names)
    for name in names:
        out |= {name + s for s in ("_bucket", "_count", "_sum", "_created")}
        if name.endswith("_total"):
            out.add(name[: -len("_total")] + "_created")
    return out


# -- real workers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images() -> dict[str, Any]:
    from support import SOURCE_ROOT

    pixels = imagegen.quadrants(64, 48)
    (SOURCE_ROOT / "metrics").mkdir(exist_ok=True)
    (SOURCE_ROOT / "metrics/a.png").write_bytes(imagegen.png(pixels))
    (SOURCE_ROOT / "metrics/b.jpg").write_bytes(imagegen.jpeg(pixels))
    return {"png": "metrics/a.png", "jpeg": "metrics/b.jpg", "bytes": imagegen.png(pixels)}


@pytest.mark.slow
def test_a_two_process_worker_exports_counters_histograms_and_gauges_that_add_up(
    redis_server: RedisServer,
    start_worker: Any,
    clients: Any,
    images: dict[str, Any],
    source_server: Any,
    tmp_path: Path,
) -> None:
    # Given `dramatiq dramatiq_preview --processes 2` on its own namespace, not consuming
    # the low lane, with its metrics on a port of its own
    ns, port, prom_db = namespace(), free_port(), tmp_path / "prom"
    worker = start_worker(
        worker_env(ns, prom_db, port), processes=2, queues=["preview-high", "preview-normal"]
    )
    client = clients(ns)
    store = get_store(client.settings)

    def run(
        payload: dict[str, Any], states: tuple[str, ...] = ("succeeded", "failed", "cancelled")
    ) -> dict[str, Any]:
        return wait_state(client, client.submit(payload).job_id, states)

    # When jobs of every outcome run
    for source in (images["png"], images["png"], images["jpeg"]):  # 3 succeeded
        assert run(small_job(source={"path": source}))["state"] == "succeeded"
    for _ in range(2):  # 2 failed
        assert run(small_job(source={"path": "metrics/none.png"}))["state"] == "failed"
    flaky = source_server.add("/flaky.png", images["bytes"], fail=[500], content_type="image/png")
    assert run(small_job(source={"url": flaky}))["state"] == "succeeded"  # 1 retried, 1 succeeded
    down = source_server.add("/down.png", b"", fail=[503] * 10)
    assert run(small_job(source={"url": down}))["state"] == "failed"  # 2 retried, 1 failed
    slow = source_server.add("/slow.png", images["bytes"], stall=10, content_type="image/png")
    job = client.submit(small_job(source={"url": slow}))  # 1 cancelled
    wait_state(client, job.job_id, ("running",))
    client.cancel(job.job_id)
    source_server.routes["/slow.png"].release.set()
    assert wait_state(client, job.job_id, ("cancelled",))["state"] == "cancelled"
    twice = small_job(jobId="twice-" + ns, source={"path": images["png"]})  # 1 succeeded,
    client.broker.enqueue(render_preview.message(twice))  # 1 duplicate_skipped
    wait_state(client, twice["jobId"], ("succeeded",))
    client.broker.enqueue(render_preview.message(twice))
    lost = normalize(small_job(jobId="lost-" + ns, source={"path": images["png"]}))
    store.create(
        lost["jobId"],
        fp=fingerprint(lost),
        priority="normal",  # 1 worker_lost
        queue="preview-normal",
        metadata={},
    )
    # Its deliveries died as many times as allowed, one of them alone in its process
    store.client.hset(
        store.job_key(lost["jobId"]),
        mapping={"deliveries": client.settings.max_deliveries, "lone_deaths": 1},
    )
    client.broker.enqueue(render_preview.message(lost))
    assert wait_state(client, lost["jobId"], ("failed",))["error"]["type"] == "worker_lost"
    waiting = normalize(small_job(jobId="waiting-" + ns, source={"path": images["png"]}))
    store.record(waiting, queue="preview-normal")  # 1 cancelled while it waited: counted
    assert client.cancel(waiting["jobId"])["state"] == "cancelled"  # once, by the first of
    for _ in range(2):  # its two deliveries (this process, like the web, counts nothing)
        client.broker.enqueue(render_preview.message(waiting))
    for _ in range(2):  # 2 waiting (low)
        client.submit(small_job(source={"path": images["png"]}, priority="low"))

    expected = {
        "succeeded": 5,
        "failed": 3,
        "retried": 3,
        "cancelled": 2,
        "duplicate_skipped": 1,
        "worker_lost": 1,
    }

    def settled(samples: Samples) -> dict[str, Any]:
        return {
            "jobs": {o: value(samples, "preview_jobs_total", outcome=o) for o in OUTCOMES},
            "live": value(samples, "preview_live_workers"),
            # the last copy of the cancelled job, skipped without changing a counter
            "inprogress": value(samples, "dramatiq_messages_inprogress"),
        }

    # The counters move after the states waited for above, and the skipped copies leave
    # no state to wait for: wait until the worker's metrics show every message through.
    wait_until(
        lambda: settled(scrape(port)),
        lambda seen: seen == {"jobs": expected, "live": 2, "inprogress": 0},
        interval=0.1,
        what="the worker's metrics to count every job",
    )
    samples = scrape(port)
    got = {o: value(samples, "preview_jobs_total", outcome=o) for o in OUTCOMES}
    # Then the job counters, summed over both processes, match what ran
    assert got == expected
    # And successful renders were timed once each
    assert value(samples, "preview_render_seconds_count", stage="total") == 5
    assert value(samples, "preview_render_seconds_sum", stage="total") > 0
    assert value(samples, "preview_render_seconds_bucket", stage="total", le="+Inf") == 5
    # And each one's source size, and its fetch / decode / encode stages
    assert value(samples, "preview_source_bytes_count") == 5
    assert value(samples, "preview_source_bytes_sum") > 0
    for stage in ("fetch", "decode", "encode"):
        assert value(samples, "preview_render_seconds_count", stage=stage) == 5
    # And Dramatiq's own metrics agree: every raised error, every dead letter
    assert value(samples, "dramatiq_message_errors_total") == 6  # 3 failed + 3 retried
    assert value(samples, "dramatiq_message_rejects_total") == 4  # 3 failed + 1 worker_lost
    # (Dramatiq counts a delayed retry twice: into the delay queue, then back to the lane)
    assert value(samples, "dramatiq_message_retries_total") == 2 * 3
    assert value(samples, "dramatiq_message_duration_milliseconds_count") == value(
        samples, "dramatiq_messages_total"
    )
    assert value(samples, "dramatiq_messages_inprogress") == 0
    # And the scrape-time gauges read Redis
    assert value(samples, "preview_live_workers") == 2
    assert value(samples, "preview_dead_letters", queue="preview-normal") == 4
    assert value(samples, "preview_queue_depth", queue="preview-low") == 2
    assert value(samples, "preview_queue_depth", queue="preview-normal") == 0
    assert value(samples, "preview_delayed_messages") == 0
    assert value(samples, "preview_oldest_job_age_seconds", queue="preview-low") > 0
    assert value(samples, "preview_oldest_job_age_seconds", queue="preview-normal") == 0
    # (duplicates are counted where they are submitted: here, the test process)
    assert value(samples, "preview_duplicates_total") == 0
    assert {name for name, _ in samples} <= _expanded(PREVIEW_METRICS | DRAMATIQ_METRICS)
    # And the multiprocess files are those of the two worker processes, in this run's dir
    runs = [p for p in prom_db.iterdir() if p.name.startswith("run-")]
    assert [p.name for p in runs] == [run_name(worker.process.pid)]
    pids = {
        int(m.group(1))
        for f in runs[0].iterdir()
        if (m := re.fullmatch(r"counter_(\d+)\.db", f.name))
    }
    assert len(pids) == 2 and pids <= set(worker.worker_pids())

    # When the worker group restarts
    old_run = runs[0]
    worker.stop()
    again = start_worker(
        worker_env(ns, prom_db, port), processes=2, queues=["preview-high", "preview-normal"]
    )
    samples = scrape(port)
    # Then it starts from zero in a clean directory; the gauges still read Redis
    assert not old_run.exists()
    assert [p.name for p in prom_db.iterdir()] == [run_name(again.process.pid)]
    assert all(value(samples, "preview_jobs_total", outcome=o) == 0 for o in OUTCOMES)
    assert value(samples, "dramatiq_messages_total") == 0
    assert value(samples, "preview_dead_letters", queue="preview-normal") == 4


@pytest.mark.slow
def test_two_worker_groups_on_one_host_keep_apart_and_a_port_clash_is_explained(
    start_worker: Any, clients: Any, tmp_path: Path
) -> None:
    # Given two worker groups sharing dramatiq_prom_db, each with its own port and namespace
    prom_db = tmp_path / "prom"
    ns_a, ns_b, port_a, port_b = namespace(), namespace(), free_port(), free_port()
    a = start_worker(worker_env(ns_a, prom_db, port_a), processes=1)
    b = start_worker(worker_env(ns_b, prom_db, port_b), processes=1)
    # When each runs one failing job
    for ns in (ns_a, ns_a, ns_b):
        client = clients(ns)
        wait_state(
            client,
            client.submit(small_job(source={"path": "metrics/none.png"})).job_id,
            ("failed",),
        )
    # Then each exposition counts its own group's jobs only, and both run dirs exist
    assert value(scrape(port_a), "preview_jobs_total", outcome="failed") == 2
    assert value(scrape(port_b), "preview_jobs_total", outcome="failed") == 1
    assert {p.name for p in prom_db.iterdir()} == {run_name(a.process.pid), run_name(b.process.pid)}
    # When a third group reuses group a's port
    c = start_worker(worker_env(namespace(), prom_db, port_a), processes=1)
    # Then it says why it has no exposition, keeps working, and a's metrics are untouched
    wait_for_log(c, "give each worker group on this host its own dramatiq_prom_port")
    assert c.process.poll() is None
    assert value(scrape(port_a), "preview_jobs_total", outcome="failed") == 2


@pytest.mark.slow
def test_a_worker_started_in_process_serves_its_metrics_from_a_thread(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given a host process that starts a dramatiq Worker itself (no `dramatiq` command)
    ns, port = namespace(), free_port()
    code = f"""
        import os, urllib.request
        import dramatiq
        import dramatiq_preview
        from dramatiq_preview import PreviewClient, get_settings
        from dramatiq_preview.testing import wait_for_state

        broker = dramatiq.get_broker()
        worker = dramatiq.Worker(broker, worker_threads=1)
        worker.start()
        client = PreviewClient(get_settings(), broker=broker)
        job = client.submit({{"source": {{"path": "metrics/none.png"}},
                             "outputs": [{{"width": 8, "height": 8, "format": "png"}}]}})
        wait_for_state(client.status, job.job_id, ("failed",), timeout=30)
        # The state is written from a hook of the message; its counters move in the hooks
        # after it.  join() returns once every message taken has been through them all.
        worker.join()
        print(urllib.request.urlopen("http://127.0.0.1:{port}/metrics").read().decode())
        print("ENV", "PROMETHEUS_MULTIPROC_DIR" in os.environ)
        worker.stop()
    """
    result = subprocess.run(
        [PYTHON, "-c", textwrap.dedent(code)],
        env=python_env(**worker_env(ns, tmp_path / "prom", port)),
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    text, _, env_line = result.stdout.rpartition("ENV ")
    samples = parse(text)
    # Then its job and Dramatiq metrics are served, in memory, without touching the env
    assert value(samples, "preview_jobs_total", outcome="failed") == 1
    assert value(samples, "dramatiq_messages_total") == 1
    assert value(samples, "preview_live_workers") == 1
    assert env_line.strip() == "False"


# -- dashboard and alert rules ---------------------------------------------------------------

MONITORING = REPO / "examples" / "monitoring"
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "and",
    "or",
    "unless",
    "bool",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, labels and keywords removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\w+", "", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group(0)
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function
        if name.lower() not in PROMQL_WORDS:
            names.add(name)
    return names


def test_the_promql_name_finder_finds_metrics_only() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, queue) (rate(x_bucket{stage="a b"}[5m])))'
        " / on(queue) group_left max without (job) (y) > bool 2 or vector(0)"
    )
    assert metric_names(expr) == {"x_bucket", "y"}


def test_the_grafana_dashboard_is_valid_and_reads_only_metrics_we_export() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    # Grafana's dashboard model: identity, schema version, panels with a grid position
    assert dashboard["uid"] and dashboard["title"] == "dramatiq-preview"
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    ids, used = set(), set()
    for panel in dashboard["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        assert panel["type"] in {"row", "stat", "timeseries"} and panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"]
        for target in panel["targets"]:
            assert target["refId"] and target["expr"]
            used |= metric_names(target["expr"])
    exported = _expanded(PREVIEW_METRICS | DRAMATIQ_METRICS)
    assert used <= exported, used - exported
    # And every metric of the contract has a panel
    contract = {
        "preview_jobs_total",
        "preview_render_seconds_bucket",
        "preview_source_bytes_bucket",
        "preview_duplicates_total",
        "preview_queue_depth",
        "preview_dead_letters",
        "preview_oldest_job_age_seconds",
        "preview_live_workers",
    }
    assert contract <= used


def test_the_alert_rules_cover_the_documented_alerts_with_exported_metrics() -> None:
    yaml = pytest.importorskip("yaml")
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    (group,) = rules["groups"]
    alerts = {rule["alert"]: rule for rule in group["rules"]}
    assert set(alerts) == {
        "PreviewDeadLettersGrowing",
        "PreviewOldestJobTooOld",
        "PreviewNoLiveWorkers",
        "PreviewRedisOrBrokerDown",
        "PreviewHighErrorRatio",
    }
    exported = _expanded(PREVIEW_METRICS | DRAMATIQ_METRICS)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        assert metric_names(rule["expr"]) <= exported, (name, metric_names(rule["expr"]))
    # Each alert is explained in the docs
    docs = (REPO / "docs" / "observability.md").read_text()
    assert all(f"`{name}`" in docs for name in alerts)


def test_every_exported_metric_is_documented() -> None:
    docs = (REPO / "docs" / "observability.md").read_text()
    missing = [name for name in sorted(PREVIEW_METRICS) if f"`{name}" not in docs]
    assert not missing

"""Job events: what publishing them costs Redis, and how fast a browser hears of the end.

Run either way (from the repository root)::

    python -m pytest tests/benchmarks/bench_events.py -m benchmark -s
    python tests/benchmarks/bench_events.py [--jobs 3000] [--e2e-jobs 200]

1. **Pub/sub or streams** (issue 13: "measure and choose").  Every transition script ends
   with ``changed(job, ttl)`` (``lua/_shared.lua``): bump ``seq``, renew the TTL, and
   publish the record when the job's channel has a subscriber.  The same scripts run with
   ``changed`` as shipped (with and without a subscriber on every job's channel), without
   any event (the cost of a transition alone: no ``seq``, no ``incarnation``, no check for
   subscribers), publishing unconditionally, and appending the record to a per-job stream
   with ``XADD`` + ``EXPIRE`` (the alternative, which keeps a history a reader could
   replay).  Each variant runs the same create, claim, progress,
   finish cycles on a fresh private redis-server; the server time per script call comes
   from ``INFO commandstats`` (``evalsha``), the memory per job from ``MEMORY USAGE`` of
   the record and, for streams, of the stream.
2. **Notification latency.**  A real worker renders a small PNG for each job, and a client
   follows the job on ``GET /job/{jobId}/events`` served by gunicorn (gthread).  The job is
   recorded first, the client reads its first event, and only then is the job enqueued, so
   every stream is open before the job starts.  Latency is the time from the record's
   ``finishedAt`` (written by the worker, millisecond resolution) to the final event read
   by the client; it is printed next to the job's render time (``startedAt`` to
   ``finishedAt``).  The figures are printed, never asserted: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# One gunicorn start-up check with bench_submit.py, also when run as a script.
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_submit import _wait_for  # noqa: E402

#: ``changed(job, ttl)`` of ``lua/_shared.lua``: the function every transition ends with.
CHANGED = re.compile(r"^local function changed\(job, ttl\)\n.*?^end\n", re.MULTILINE | re.DOTALL)
_BUMP = """local function changed(job, ttl)
  local seq = redis.call('hincrby', job, 'seq', 1)
  redis.call('expire', job, ttl)
"""
#: What ``changed`` does in each variant (None: as shipped).  The baseline has no event at
#: all: it renews the TTL and nothing else (create.lua then writes no ``incarnation``).
BASELINE = """local function changed(job, ttl)
  redis.call('expire', job, ttl)
  return 0
end
"""
#: The ``incarnation`` create.lua writes, which only events need.
INCARNATION = ", 'incarnation', incarnation)"
PUBLISH_ALWAYS = (
    _BUMP
    + "  redis.call('publish', job .. ':events', cjson.encode(redis.call('hgetall', job)))\n"
    + "  return seq\nend\n"
)
#: The alternative: the record appended to a per-job stream that expires with the record.
STREAM = (
    _BUMP
    + "  redis.call('xadd', job .. ':events', 'MAXLEN', '~', '32', '*',\n"
    + "    'record', cjson.encode(redis.call('hgetall', job)))\n"
    + "  redis.call('expire', job .. ':events', ttl)\n"
    + "  return seq\nend\n"
)
#: (name, changed() of the variant, one subscriber on every job's channel)
VARIANTS: list[tuple[str, str | None, bool]] = [
    ("no event (baseline)", BASELINE, False),
    ("shipped, no subscriber", None, False),
    ("shipped, 1 subscriber", None, True),
    ("PUBLISH always, no sub.", PUBLISH_ALWAYS, False),
    ("XADD + EXPIRE (stream)", STREAM, False),
]


def create_app() -> Any:
    """The app gunicorn serves for the latency figures: the extension and nothing else."""
    from flask import Flask

    from dramatiq_preview.flask import PreviewExtension

    app = Flask("bench-events")
    PreviewExtension(app)
    return app


# --- 1. pub/sub or streams ------------------------------------------------------------------


def _variant_store(client: Any, changed: str | None) -> Any:
    """A JobStore whose scripts end their transitions with ``changed`` (None: as shipped)."""
    from dramatiq_preview.state import SCRIPTS, JobStore, load_script

    store = JobStore(client, namespace="bench", ttl_seconds=3600)
    if changed is None:
        return store
    for name in SCRIPTS:
        source, found = CHANGED.subn(lambda _: changed, load_script(name))
        if found != 1:
            raise RuntimeError("lua/_shared.lua has no changed(job, ttl) to compare with")
        if changed is BASELINE and name == "create":
            if INCARNATION not in source:
                raise RuntimeError("lua/create.lua writes no incarnation to leave out")
            source = source.replace(INCARNATION, ")")
        setattr(store, f"_{name}", client.register_script(source))
    return store


class Subscriber:
    """One connection subscribed to every job's channel, reading what is published."""

    def __init__(self, client: Any, channels: list[str]) -> None:
        self.pubsub = client.pubsub()
        self.received = 0
        confirmed = 0
        for start in range(0, len(channels), 500):
            self.pubsub.subscribe(*channels[start : start + 500])
        while confirmed < len(channels):
            message = self.pubsub.get_message(timeout=10)
            if message is None:
                raise RuntimeError("subscriptions not confirmed")
            confirmed += message["type"] == "subscribe"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if message is not None and message["type"] == "message":
                self.received += 1

    def close(self, expected: int) -> int:
        deadline = time.monotonic() + 30
        while self.received < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(timeout=10)
        self.pubsub.close()
        return self.received


def _cycle(store: Any, job_id: str) -> None:
    store.create(job_id, fp="fp", priority="normal", queue="preview-normal", metadata={"k": "v"})
    store.claim(job_id, token="t", lease_ms=60_000, max_deliveries=3)
    store.progress(job_id, token="t", percent=50)
    result = {"outputs": [{"path": f"{job_id}/0.webp", "width": 256, "height": 171}]}
    store.finish(job_id, token="t", outcome="succeeded", data=result)


def measure_variant(changed: str | None, subscribed: bool, jobs: int) -> dict[str, float]:
    """Server time per script call and memory per job of one variant, on a fresh server."""
    from dramatiq_preview.testing import RedisServer

    with RedisServer() as server:
        client = server.client()
        store = _variant_store(client, changed)
        ids = [f"job-{i:06d}-{uuid.uuid4().hex[:8]}" for i in range(jobs)]
        _cycle(store, "warm-up")  # loads the scripts
        subscriber = (
            Subscriber(client, [store.events_channel(i) for i in ids]) if subscribed else None
        )
        client.config_resetstat()
        started = time.perf_counter()
        for job_id in ids:
            _cycle(store, job_id)
        elapsed = time.perf_counter() - started
        stats = client.info("commandstats")
        delivered = subscriber.close(4 * jobs) if subscriber is not None else 0
        sample = ids[:: max(1, jobs // 200)]
        # SAMPLES 0: every field, not an estimate from a few of them.
        record = statistics.mean(client.memory_usage(store.job_key(i), samples=0) for i in sample)
        stream = statistics.mean(
            client.memory_usage(store.events_channel(i), samples=0) or 0 for i in sample
        )
        client.close()
    evalsha = stats["cmdstat_evalsha"]
    return {
        "usec_per_script": float(evalsha["usec_per_call"]),
        "client_usec_per_script": elapsed / (4 * jobs) * 1e6,
        "record_bytes": float(record),
        "stream_bytes": float(stream),
        "delivered": float(delivered),
    }


def run_cost(jobs: int = 3000, rounds: int = 5) -> dict[str, dict[str, float]]:
    """Every variant in ``rounds`` rounds of ``jobs / rounds`` jobs, in a rotating order (a
    drift in the machine's load then falls on every variant); medians over rounds."""
    figures: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in VARIANTS}
    for round_ in range(rounds):
        order = VARIANTS[round_ % len(VARIANTS) :] + VARIANTS[: round_ % len(VARIANTS)]
        for name, changed, subscribed in order:
            figures[name].append(measure_variant(changed, subscribed, jobs // rounds))
    result: dict[str, dict[str, float]] = {}
    for name, runs in figures.items():
        merged = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        merged["delivered"] = sum(run["delivered"] for run in runs)
        result[name] = merged
    return result


def report_cost(result: dict[str, dict[str, float]], jobs: int) -> str:
    base = result["no event (baseline)"]["usec_per_script"]
    lines = [
        "",
        f"job events: cost per transition script on the Redis server ({jobs} jobs x 4 "
        "scripts: create, claim, progress, finish; INFO commandstats)",
        f"  {'variant':<26}{'us/script':>10}{'vs none':>9}{'client us':>11}"
        f"{'record B':>10}{'stream B':>10}{'B/job':>8}",
    ]
    for name, figures in result.items():
        lines.append(
            f"  {name:<26}{figures['usec_per_script']:>10.2f}"
            f"{figures['usec_per_script'] / base:>8.2f}x"
            f"{figures['client_usec_per_script']:>11.1f}"
            f"{figures['record_bytes']:>10.0f}{figures['stream_bytes']:>10.0f}"
            f"{figures['record_bytes'] + figures['stream_bytes']:>8.0f}"
        )
    quiet = result["shipped, no subscriber"]
    watched = result["shipped, 1 subscriber"]
    stream = result["XADD + EXPIRE (stream)"]
    memory_ratio = (stream["record_bytes"] + stream["stream_bytes"]) / quiet["record_bytes"]
    lines += [
        f"  stream vs shipped: {stream['usec_per_script'] / quiet['usec_per_script']:.2f}x "
        f"server time of an unwatched job, "
        f"{stream['usec_per_script'] / watched['usec_per_script']:.2f}x of a watched one, "
        f"{memory_ratio:.2f}x memory per job (kept for PREVIEW_JOB_TTL_SECONDS)",
        f"  the subscriber got {watched['delivered']:.0f} of {4 * jobs} messages",
    ]
    return "\n".join(lines)


# --- 2. notification latency ----------------------------------------------------------------


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def _follow(
    base_url: str, store: Any, enqueue: Callable[[dict[str, Any]], None], source: str
) -> tuple[float, float, float]:
    """Record a job, open its event stream and a direct watch, then enqueue it.

    Returns (SSE latency, direct watch latency, render time) of its end, in seconds.
    """
    import httpx

    from dramatiq_preview.validation import normalize
    from dramatiq_preview.watch import Event, watch

    payload = normalize(
        {
            "jobId": "e2e-" + uuid.uuid4().hex,
            "source": {"path": source},
            "outputs": [{"width": 32, "height": 32, "format": "webp"}],
        }
    )
    job_id = payload["jobId"]
    store.record(payload, queue="preview-normal")
    # The same notification read straight from Redis by a JobWatch in this process.
    direct: list[float] = []
    follower = watch(store, job_id, max_seconds=120)

    def read_directly() -> None:
        for item in follower:
            if isinstance(item, Event) and item.final:
                direct.append(time.time())

    reader = threading.Thread(target=read_directly)
    reader.start()
    url = f"{base_url}/api/preview/job/{job_id}/events"
    with httpx.Client(timeout=httpx.Timeout(60)) as http, http.stream("GET", url) as response:
        enqueued = False
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            received = time.time()
            status = _json(line[6:])
            if not enqueued:
                enqueue(payload)
                enqueued = True
            if status["state"] in ("succeeded", "failed", "cancelled"):
                if status["state"] != "succeeded":
                    raise RuntimeError(f"job {job_id} {status['state']}: {status}")
                reader.join(timeout=60)
                finished, started = _epoch(status["finishedAt"]), _epoch(status["startedAt"])
                return received - finished, direct[0] - finished, finished - started
    raise RuntimeError(f"the stream of {job_id} ended without a final state")


def _json(text: str) -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads(text)
    return data


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def run_latency(jobs: int = 200, concurrency: int = 4) -> dict[str, Any]:
    """Start redis-server, a worker and gunicorn; follow ``jobs`` rendered jobs."""
    sys.path.insert(0, str(ROOT))
    import dramatiq

    from dramatiq_preview.broker import build_broker
    from dramatiq_preview.config import Settings
    from dramatiq_preview.names import ACTOR_NAME, RECORDED
    from dramatiq_preview.state import JobStore, redis_client
    from dramatiq_preview.testing import RedisServer, WorkerProcess, free_port

    sys.path.insert(0, str(ROOT / "tests"))
    import imagegen

    tmp = Path(tempfile.mkdtemp(prefix="bench-events-"))
    (tmp / "sources").mkdir()
    (tmp / "outputs").mkdir()
    (tmp / "sources" / "small.png").write_bytes(imagegen.png(imagegen.quadrants(64, 48)))
    gunicorn = Path(sys.executable).with_name("gunicorn")
    port = free_port()
    with RedisServer() as redis_server:
        env = {
            "PREVIEW_REDIS_URL": redis_server.url,
            "PREVIEW_BROKER_URL": redis_server.url,
            "PREVIEW_NAMESPACE": "bench-events",
            "PREVIEW_SOURCE_ROOT": str(tmp / "sources"),
            "PREVIEW_OUTPUT_DIR": str(tmp / "outputs"),
            "PREVIEW_GC_INTERVAL_SECONDS": "0",
            "dramatiq_prom_port": str(free_port()),
            "dramatiq_prom_host": "127.0.0.1",
        }
        settings = Settings.from_mapping(env)
        store = JobStore(redis_client(redis_server.url), namespace="bench-events", ttl_seconds=3600)
        broker = build_broker(settings)

        def enqueue(payload: dict[str, Any]) -> None:
            broker.enqueue(
                dramatiq.Message(
                    queue_name="preview-normal",
                    actor_name=ACTOR_NAME,
                    args=(payload,),
                    kwargs={},
                    options={RECORDED: True},
                )
            )

        server = subprocess.Popen(
            [
                str(gunicorn),
                "--workers=2",
                f"--threads={concurrency * 2}",
                "--worker-class=gthread",
                f"--bind=127.0.0.1:{port}",
                "--log-level=warning",
                "bench_events:create_app()",
            ],
            cwd=ROOT,
            env={
                **os.environ,
                **env,
                "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)]),
            },
        )
        worker = WorkerProcess(env=env, processes=1, threads=concurrency)
        try:
            worker.start()
            _wait_for(port, server)
            base_url = f"http://127.0.0.1:{port}"
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(lambda _: _follow(base_url, store, enqueue, "small.png"), range(8)))
                results = list(
                    pool.map(lambda _: _follow(base_url, store, enqueue, "small.png"), range(jobs))
                )
        finally:
            worker.stop()
            server.terminate()
            server.wait(timeout=30)
            broker.close()
    latencies = [r[0] * 1000 for r in results]
    direct = [r[1] * 1000 for r in results]
    renders = [r[2] * 1000 for r in results]
    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "latency_p50": _percentile(latencies, 0.50),
        "latency_p95": _percentile(latencies, 0.95),
        "direct_p50": _percentile(direct, 0.50),
        "direct_p95": _percentile(direct, 0.95),
        "render_p50": _percentile(renders, 0.50),
        "render_p95": _percentile(renders, 0.95),
        "share_p50": statistics.median(
            lat / max(ren, 1.0) for lat, ren in zip(latencies, renders, strict=True)
        ),
    }


def report_latency(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            "",
            f"job events: final state written -> SSE event read by a client ({result['jobs']} "
            f"jobs, {result['concurrency']} at a time, gunicorn gthread, 2 worker processes "
            f"x {result['concurrency'] * 2} threads, {os.cpu_count()} CPUs for everything)",
            f"  {'':<28}{'p50 ms':>9}{'p95 ms':>9}",
            f"  {'SSE event (gunicorn)':<28}{result['latency_p50']:>9.1f}"
            f"{result['latency_p95']:>9.1f}",
            f"  {'JobWatch (Redis pub/sub)':<28}{result['direct_p50']:>9.1f}"
            f"{result['direct_p95']:>9.1f}",
            f"  {'render (started->finished)':<28}{result['render_p50']:>9.1f}"
            f"{result['render_p95']:>9.1f}",
            f"  SSE latency / render time of the same job, median: {result['share_p50']:.2f}",
            "  (finishedAt has millisecond resolution: latencies are +-1 ms)",
        ]
    )


@pytest.mark.benchmark
def test_events_benchmark(request: pytest.FixtureRequest) -> None:
    if "benchmark" not in (request.config.option.markexpr or ""):
        pytest.skip("run with -m benchmark")
    jobs = 3000
    cost = run_cost(jobs)
    print(report_cost(cost, jobs))
    latency = run_latency()
    print(report_latency(latency))
    # Figures are printed, not asserted; what must hold is that every variant and job ran
    # and that the subscriber heard every transition.
    assert cost["shipped, 1 subscriber"]["delivered"] == 4 * jobs
    assert latency["jobs"] == 200


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--e2e-jobs", type=int, default=200)
    args = parser.parse_args()
    print(report_cost(run_cost(args.jobs), args.jobs))
    print(report_latency(run_latency(args.e2e_jobs)))
    sys.exit(0)

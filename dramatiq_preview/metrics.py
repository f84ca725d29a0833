"""Prometheus metrics of dramatiq-preview (docs/observability.md explains each one).

* Job metrics, updated from job events in the worker processes: ``preview_jobs_total{outcome}``,
  ``preview_render_seconds{input_format,stage}``, ``preview_source_bytes{input_format}`` and
  ``preview_duplicates_total``; webhook deliveries: ``preview_webhooks_total{outcome}`` and
  ``preview_webhook_seconds``.
* Scrape-time gauges, read from Redis by :class:`QueueCollector` when Prometheus scrapes:
  ``preview_queue_depth{queue}``, ``preview_delayed_messages{queue}``,
  ``preview_dead_letters{queue}``, ``preview_oldest_job_age_seconds{queue}``,
  ``preview_live_workers``, ``preview_redis_up`` and ``preview_broker_up``.
* Web metrics (:class:`WebMetrics`, one per Flask app): ``preview_http_requests_total`` and
  ``preview_http_request_duration_seconds`` by endpoint, method and status.
* Storage metrics (:class:`StorageMetrics`), updated from ``storage`` events in workers and web
  processes alike: ``preview_storage_seconds{backend,operation}`` and
  ``preview_storage_errors_total{backend,operation,error}``.

Workers expose the job metrics next to Dramatiq's own through the
:class:`~dramatiq_preview.middleware.prometheus.Metrics` middleware.  ``prometheus_client`` is
imported late on purpose: in a worker it must first see ``PROMETHEUS_MULTIPROC_DIR``, which
is only set at process boot.

Labels are low-cardinality by construction: a job id never becomes a label, and input
formats, stages, storage backends, operations and error types outside known sets are
reported as ``other``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import dramatiq

from .config import Settings
from .errors import PreviewError
from .events import subscribe
from .health import probe

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

#: ``preview_jobs_total`` outcome for each job event.
JOB_OUTCOMES = {
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
    "retrying": "retried",
    "duplicate_skipped": "duplicate_skipped",
    "worker_lost": "worker_lost",
}
#: ``preview_webhooks_total`` outcome for each webhook event: one per attempt that was made.
WEBHOOK_OUTCOMES = {
    "webhook_delivered": "delivered",
    "webhook_retried": "retried",
    "webhook_failed": "failed",
}
INPUT_FORMATS = frozenset(
    {"jpeg", "png", "webp", "gif", "tiff", "bmp", "heic", "avif", "pdf", "svg"}
)
STAGES = frozenset({"fetch", "decode", "resize", "encode", "write", "total"})

RENDER_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SOURCE_BYTES_BUCKETS = (
    16_384,
    65_536,
    262_144,
    1_048_576,
    4_194_304,
    16_777_216,
    52_428_800,
    104_857_600,
)
#: From a receiver on the same network to one at the default 10 s timeout and beyond.
WEBHOOK_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HTTP_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: From a local write (well under a millisecond) to an S3 call at its read timeout.
STORAGE_SECONDS_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    15.0,
    30.0,
)
STORAGE_BACKENDS = frozenset({"local", "s3"})
STORAGE_OPERATIONS = frozenset({"get", "put", "delete", "list", "head", "ping"})

#: Every metric name this library exports (the dashboard and alert tests check against it).
PREVIEW_METRICS = frozenset(
    {
        "preview_jobs_total",
        "preview_render_seconds",
        "preview_source_bytes",
        "preview_duplicates_total",
        "preview_queue_depth",
        "preview_delayed_messages",
        "preview_dead_letters",
        "preview_oldest_job_age_seconds",
        "preview_live_workers",
        "preview_redis_up",
        "preview_broker_up",
        "preview_http_requests_total",
        "preview_http_request_duration_seconds",
        "preview_storage_seconds",
        "preview_storage_errors_total",
        "preview_webhooks_total",
        "preview_webhook_seconds",
    }
)
#: The metrics of Dramatiq's ``Prometheus`` middleware, exported by workers next to ours.
DRAMATIQ_METRICS = frozenset(
    {
        "dramatiq_messages_total",
        "dramatiq_message_errors_total",
        "dramatiq_message_retries_total",
        "dramatiq_message_rejects_total",
        "dramatiq_messages_inprogress",
        "dramatiq_delayed_messages_inprogress",
        "dramatiq_message_duration_milliseconds",
    }
)


# -- job metrics -----------------------------------------------------------------------------


class JobMetrics:
    """The job counters and histograms, updated from job events.

    The instance is subscribed to job events for as long as it is referenced
    (:func:`~dramatiq_preview.events.subscribe` holds it weakly, so a discarded instance
    stops counting).

    Parameters:
      registry: where to register them (a worker's private registry: in multiprocess mode
        the values live in files and are exposed by a ``MultiProcessCollector``).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Histogram

        self.jobs = Counter(
            "preview_jobs_total",
            "Job deliveries by how they ended.",
            ["outcome"],
            registry=registry,
        )
        self.render_seconds = Histogram(
            "preview_render_seconds",
            "Time to render a job that succeeded, by input format and stage.",
            ["input_format", "stage"],
            buckets=RENDER_SECONDS_BUCKETS,
            registry=registry,
        )
        self.source_bytes = Histogram(
            "preview_source_bytes",
            "Size of the sources of jobs that succeeded, by input format.",
            ["input_format"],
            buckets=SOURCE_BYTES_BUCKETS,
            registry=registry,
        )
        self.duplicates = Counter(
            "preview_duplicates_total",
            "Submissions of a jobId that was already recorded (same payload).",
            registry=registry,
        )
        self.webhooks = Counter(
            "preview_webhooks_total",
            "Webhook delivery attempts by how they ended: delivered, retried (another "
            "attempt follows) or failed (the last attempt, or a refused webhook).",
            ["outcome"],
            registry=registry,
        )
        self.webhook_seconds = Histogram(
            "preview_webhook_seconds",
            "Time of one webhook POST, until the receiver's answer or the timeout.",
            buckets=WEBHOOK_SECONDS_BUCKETS,
            registry=registry,
        )
        # Every outcome exists from the start, so rate() and ratios work before it happens.
        for outcome in JOB_OUTCOMES.values():
            self.jobs.labels(outcome)
        for outcome in WEBHOOK_OUTCOMES.values():
            self.webhooks.labels(outcome)
        self._storage = StorageMetrics(registry)
        # Attributes of their own, so that the in-process exposition finds them too.
        self.storage_seconds = self._storage.seconds
        self.storage_errors = self._storage.errors
        subscribe(self.observe)

    def observe(self, event: str, fields: dict[str, Any]) -> None:
        """Count one job event (see :mod:`dramatiq_preview.events`)."""
        if event == "duplicate":
            self.duplicates.inc()
            return
        if event in WEBHOOK_OUTCOMES:
            self.webhooks.labels(WEBHOOK_OUTCOMES[event]).inc()
            seconds = fields.get("duration")
            # None when no request was sent (a refused host, a DNS failure).
            if isinstance(seconds, (int, float)) and seconds >= 0:
                self.webhook_seconds.observe(seconds)
            return
        outcome = JOB_OUTCOMES.get(event)
        if outcome is None:
            return
        self.jobs.labels(outcome).inc()
        if event != "succeeded":
            return
        fmt = _bounded(fields.get("input_format"), INPUT_FORMATS)
        duration = fields.get("duration")
        if isinstance(duration, (int, float)) and duration >= 0:
            self.render_seconds.labels(fmt, "total").observe(duration)
        stages = fields.get("stages")
        if isinstance(stages, dict):
            for stage, seconds in stages.items():
                if stage != "total" and isinstance(seconds, (int, float)) and seconds >= 0:
                    self.render_seconds.labels(fmt, _bounded(stage, STAGES)).observe(seconds)
        size = fields.get("source_bytes")
        if isinstance(size, int) and size >= 0:
            self.source_bytes.labels(fmt).observe(size)


# -- storage metrics -------------------------------------------------------------------------


class StorageMetrics:
    """``preview_storage_seconds`` and ``preview_storage_errors_total``, from ``storage``
    events (one per storage call, see :meth:`dramatiq_preview.storage.Storage.timed`).

    Every call is timed, whatever its outcome; a call that raised is also counted in
    ``preview_storage_errors_total`` under its error type (``storage_error``,
    ``storage_forbidden``, ``source_not_found``...; ``other`` for an error type this library
    does not define).  Subscribed for as long as the instance is referenced.

    Parameters:
      registry: where to register them.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Histogram

        self.seconds = Histogram(
            "preview_storage_seconds",
            "Time of a storage call (every outcome), by backend and operation.",
            ["backend", "operation"],
            buckets=STORAGE_SECONDS_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "preview_storage_errors_total",
            "Storage calls that failed, by backend, operation and error type.",
            ["backend", "operation", "error"],
            registry=registry,
        )
        subscribe(self.observe)

    def observe(self, event: str, fields: dict[str, Any]) -> None:
        """Time (and, when it failed, count) one storage call."""
        if event != "storage":
            return
        backend = _bounded(fields.get("backend"), STORAGE_BACKENDS)
        operation = _bounded(fields.get("operation"), STORAGE_OPERATIONS)
        seconds = fields.get("seconds")
        if isinstance(seconds, (int, float)) and seconds >= 0:
            self.seconds.labels(backend, operation).observe(seconds)
        outcome = fields.get("outcome", "ok")
        if outcome != "ok":
            self.errors.labels(backend, operation, _bounded(outcome, _error_types())).inc()


def _error_types() -> frozenset[str]:
    """Every error type of :mod:`dramatiq_preview.errors`, and ``error`` (any other exception)."""
    global _ERROR_TYPES
    if _ERROR_TYPES is None:
        found = {"error"}
        pending: list[type[PreviewError]] = [PreviewError]
        while pending:
            cls = pending.pop()
            found.add(cls.type)
            pending.extend(cls.__subclasses__())
        _ERROR_TYPES = frozenset(found)
    return _ERROR_TYPES


_ERROR_TYPES: frozenset[str] | None = None


def _bounded(value: Any, known: frozenset[str]) -> str:
    if not isinstance(value, str) or not value:
        return "unknown"
    value = value.lower()
    return value if value in known else "other"


# -- scrape-time gauges ----------------------------------------------------------------------


class QueueCollector:
    """A Prometheus collector that reads the lanes, dead letters and workers at scrape time.

    A scrape takes at most ``timeout`` seconds (see :func:`dramatiq_preview.health.probe`);
    numbers whose source did not answer are left out rather than reported as zero, and
    ``preview_redis_up`` / ``preview_broker_up`` say which source failed.

    Parameters:
      settings: where the state store is.
      broker: the broker the workers consume.
      timeout: the most a scrape may wait for Redis and the broker, in seconds.
    """

    def __init__(self, settings: Settings, broker: dramatiq.Broker, *, timeout: float = 1.0):
        self.settings = settings
        self.broker = broker
        self.timeout = timeout

    def describe(self) -> list[Metric]:
        # Registering must not probe Redis (CollectorRegistry calls collect() otherwise).
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        snap = probe(self.settings, self.broker, timeout=self.timeout)
        families = self._families()
        redis_up, broker_up, live = families[:3]
        redis_up.add_metric([], 1.0 if snap.redis_ok else 0.0)
        broker_up.add_metric([snap.broker_kind], 1.0 if snap.broker_ok else 0.0)
        yield redis_up
        yield broker_up
        if snap.live_workers is not None:
            live.add_metric([], float(snap.live_workers))
            yield live
        depth, delayed, dead, oldest = families[3:]
        for queue, lane in snap.lanes.items():
            if lane.depth is not None:
                depth.add_metric([queue], float(lane.depth))
            if lane.delayed is not None:
                delayed.add_metric([queue], float(lane.delayed))
            if lane.dead is not None:
                dead.add_metric([queue], float(lane.dead))
            if lane.oldest_job_age is not None:
                oldest.add_metric([queue], lane.oldest_job_age)
        # The webhook delivery queue, under its own queue label (it has no waiting jobs).
        hooks = snap.webhooks
        for family, number in ((depth, hooks.depth), (delayed, hooks.delayed), (dead, hooks.dead)):
            if number is not None:
                family.add_metric([hooks.queue], float(number))
        if snap.broker_ok:
            yield depth
            yield delayed
            yield dead
        if snap.redis_ok:
            yield oldest

    @staticmethod
    def _families() -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        return [
            GaugeMetricFamily("preview_redis_up", "1 when the state store (Redis) answered."),
            GaugeMetricFamily("preview_broker_up", "1 when the broker answered.", labels=["kind"]),
            GaugeMetricFamily(
                "preview_live_workers",
                "Worker processes with a fresh broker heartbeat.",
            ),
            GaugeMetricFamily(
                "preview_queue_depth",
                "Messages ready in the broker and not yet fetched by a worker.",
                labels=["queue"],
            ),
            GaugeMetricFamily(
                "preview_delayed_messages",
                "Messages waiting for a retry backoff or a re-check.",
                labels=["queue"],
            ),
            GaugeMetricFamily("preview_dead_letters", "Dead-lettered messages.", labels=["queue"]),
            GaugeMetricFamily(
                "preview_oldest_job_age_seconds",
                "How long the oldest job waiting to start has waited (0 when none).",
                labels=["queue"],
            ),
        ]


# -- web metrics -----------------------------------------------------------------------------


class WebMetrics:
    """Metrics of one web app: its requests, duplicates submitted, its storage calls (serving
    outputs, the health check) and the scrape-time gauges.

    Each instance has its own ``CollectorRegistry``, so several apps in one process (or in
    one test session) never clash.  When the web server runs several processes with
    ``PROMETHEUS_MULTIPROC_DIR`` set, request counters are summed over the processes.

    Parameters:
      settings: where the state store is.
      broker: the broker the workers consume (for the scrape-time gauges).
    """

    def __init__(self, settings: Settings, broker: dramatiq.Broker) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.settings = settings
        self.broker = broker
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "preview_http_requests_total",
            "HTTP requests answered, by endpoint, method and status.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "preview_http_request_duration_seconds",
            "Time to answer an HTTP request, by endpoint and method.",
            ["endpoint", "method"],
            buckets=HTTP_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.duplicates = _DuplicateCounter(self.registry)
        self.storage = StorageMetrics(self.registry)
        self.queues = QueueCollector(settings, broker)
        self.registry.register(self.queues)

    def observe(self, *, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request (``endpoint`` is the route's name, never its URL)."""
        self.requests.labels(endpoint, method.upper(), str(int(status))).inc()
        self.latency.labels(endpoint, method.upper()).observe(max(0.0, seconds))

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type.

        Parameters:
          accept: the request's ``Accept`` header; OpenMetrics is used when it asks for it.
        """
        from prometheus_client import exposition

        registry = self.registry
        if _multiprocess():
            from prometheus_client import CollectorRegistry
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            registry.register(self.queues)
        try:
            encoder, content_type = exposition.choose_encoder(accept or "")
        except (TypeError, ValueError):
            # prometheus_client trips over a malformed version parameter
            # ("version=abc"): a scraper that sends one gets the plain text format.
            encoder, content_type = exposition.generate_latest, exposition.CONTENT_TYPE_LATEST
        return encoder(registry), content_type


class _DuplicateCounter:
    """``preview_duplicates_total`` of a web app, counted from ``duplicate`` events."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter

        self.counter = Counter(
            "preview_duplicates_total",
            "Submissions of a jobId that was already recorded (same payload).",
            registry=registry,
        )
        subscribe(self.observe)

    def observe(self, event: str, fields: dict[str, Any]) -> None:
        if event == "duplicate":
            self.counter.inc()


def _multiprocess() -> bool:
    from prometheus_client import values

    return bool(getattr(values.ValueClass, "_multiprocess", False))


# -- worker exposition -----------------------------------------------------------------------


def multiprocess_base() -> str:
    """Where run directories live: ``dramatiq_prom_db``, as for Dramatiq, or a temp dir."""
    configured = os.getenv("dramatiq_prom_db")  # noqa: SIM112 - Dramatiq's name
    return configured or os.path.join(tempfile.gettempdir(), "dramatiq-prometheus")


def run_name(pid: int) -> str:
    """The directory name of the run whose main process is ``pid``.

    Boot id, pid and the process's start time together name one run: a pid reused after a
    restart (pid 1 in a container) gets a new directory.
    """
    return f"run-{_boot_id()}-{pid}-{_start_time(pid)}"


def run_directory(pid: int) -> str:
    return os.path.join(multiprocess_base(), run_name(pid))


def prepare_run_directory(pid: int) -> str:
    """Create the multiprocess directory of the run of ``pid`` and remove stale ones.

    A run directory is stale when its main process is gone (or is another process with the
    same pid).  Runs of other worker groups that are still alive are left alone.
    """
    base = multiprocess_base()
    os.makedirs(base, exist_ok=True)
    mine = run_name(pid)
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            if entry.name != mine and entry.name.startswith("run-") and not _run_alive(entry.name):
                shutil.rmtree(entry.path, ignore_errors=True)
    path = os.path.join(base, mine)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def worker_registry(
    settings: Settings,
    broker: dramatiq.Broker | None,
    *,
    path: str | None = None,
    collectors: Iterable[Any] = (),
) -> CollectorRegistry:
    """The registry a worker exposition serves.

    Parameters:
      settings: for the scrape-time gauges.
      broker: the workers' broker; without one, no scrape-time gauges.
      path: a multiprocess directory to aggregate, or None for in-process metrics.
      collectors: in-process metrics to serve (when ``path`` is None).
    """
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    if path is not None:
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    for collector in collectors:
        registry.register(collector)
    if broker is not None:
        registry.register(QueueCollector(settings, broker))
    return registry


def start_server(registry: CollectorRegistry, host: str, port: int) -> Any:
    """Serve ``registry`` over HTTP from a daemon thread; returns the server.

    Raises:
      OSError: the address is in use or cannot be bound.
    """
    from prometheus_client.exposition import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip().replace("-", "")[:12]
    except OSError:
        return "0"


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name may contain spaces and parentheses: split after the last ')'.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def _run_alive(name: str) -> bool:
    parts = name.split("-")
    if len(parts) != 4 or not parts[2].isdigit():
        return False
    _, boot, pid_text, start = parts
    if boot != _boot_id():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start == _start_time(pid)


__all__ = [
    "DRAMATIQ_METRICS",
    "JOB_OUTCOMES",
    "PREVIEW_METRICS",
    "WEBHOOK_OUTCOMES",
    "JobMetrics",
    "QueueCollector",
    "StorageMetrics",
    "WebMetrics",
    "multiprocess_base",
    "prepare_run_directory",
    "run_directory",
    "worker_registry",
]

"""Health of a dramatiq-preview deployment: Redis, the broker, the lanes, the workers, storage.

:func:`check_health` answers ``GET {prefix}/worker/health``; :func:`probe` gathers the same
numbers for the scrape-time gauges of :mod:`dramatiq_preview.metrics`.

Every probe uses its own Redis clients with short socket timeouts and no retries, and runs
in daemon threads joined against one deadline, so a Redis that hangs (or a broker that does
not answer) gives ``down`` within ``timeout`` seconds instead of a stuck request.

Live workers are counted from the broker's heartbeats.  A Redis broker records a heartbeat
for every broker instance that talks to it, producers (the web process sending jobs)
included, so each worker process also keeps a presence entry (``{ns}:workers``, written by
:class:`~dramatiq_preview.middleware.presence.Presence`); a worker is live when both are
fresh.  For RabbitMQ the count is
the number of consumers on the busiest lane.

Webhook deliveries have their own queue (``preview-webhooks``), reported apart from the
lanes (``webhooks``): deliveries waiting, retries waiting for their backoff, and deliveries
that failed for good (dead-lettered), which make the status ``degraded``.

Storage (the output root, and the source root when it is another one) is checked by
:meth:`~dramatiq_preview.storage.Storage.ping` in a daemon thread of its own, waited for
against the same deadline.  At most one check per root is in flight: a check that outlives
one deadline (an S3 endpoint that does not answer, held by boto3's own connect and read
timeouts) is joined by the next health check instead of being started again, so a hung
storage never piles up threads.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from copy import copy as shallow_copy
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from redis.backoff import NoBackoff
from redis.retry import Retry

from .config import S3Location, Settings, StorageRoot
from .errors import PreviewError, StorageError, StorageForbidden
from .names import WEBHOOK_QUEUE, Queues, broker_queues, presence_key
from .storage import LocalStorage, Storage, open_storage

logger = logging.getLogger("dramatiq_preview.health")

Status = Literal["ok", "degraded", "down"]

#: The share of the deadline a single socket operation may take, leaving time to report.
_SOCKET_SHARE = 0.85


@dataclass(frozen=True)
class LaneStats:
    """What is known about one priority lane; ``None`` where its source did not answer.

    ``depth`` counts messages ready in the broker and not yet fetched by a worker (messages
    a worker prefetched are not in it); ``delayed`` counts messages waiting for a retry
    backoff or a re-check; ``dead`` counts dead-lettered messages; ``oldest_job_age`` is how
    long the oldest job recorded as waiting to start has waited, in seconds (0 when none).
    """

    queue: str
    priority: str
    depth: int | None = None
    delayed: int | None = None
    dead: int | None = None
    oldest_job_age: float | None = None


@dataclass(frozen=True)
class QueueStats:
    """The webhook delivery queue (``preview-webhooks``); ``None`` where the broker did not
    answer.  ``depth``: deliveries ready and not yet fetched; ``delayed``: retries waiting
    for their backoff (and deliveries a worker fetched early); ``dead``: deliveries that
    failed for good (every attempt, or a refused webhook) and were dead-lettered."""

    queue: str
    depth: int | None = None
    delayed: int | None = None
    dead: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The ``webhooks`` object of the health body."""
        return {
            "queue": self.queue,
            "depth": self.depth,
            "delayed": self.delayed,
            "dead": self.dead,
        }


@dataclass(frozen=True)
class StorageCheck:
    """One check of a storage root (see :func:`probe`).

    ``kind`` is ``local`` or ``s3``; ``latency_ms`` is how long the check took when it
    succeeded (``None`` otherwise); ``error`` says what went wrong, in words safe to show on
    a public route (a local path is replaced by the name of its variable); ``refused`` is
    true when storage answered but refused (credentials, permissions, a missing bucket).
    """

    kind: str
    ok: bool
    latency_ms: float | None
    error: str | None
    refused: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of the health body: ``{"ok", "kind", "latencyMs", "error"}``."""
        return {"ok": self.ok, "kind": self.kind, "latencyMs": self.latency_ms, "error": self.error}


@dataclass(frozen=True)
class Snapshot:
    """One reading of the state store, the broker and the workers (see :func:`probe`)."""

    redis_ok: bool
    redis_latency_ms: float | None
    redis_error: str | None
    broker_kind: str
    broker_ok: bool
    broker_latency_ms: float | None
    broker_error: str | None
    lanes: dict[str, LaneStats]
    live_workers: int | None
    heartbeat_timeout_ms: int
    checked_at: float = field(default_factory=time.time)
    #: The output root (``PREVIEW_OUTPUT_DIR``), when :func:`probe` was asked to check storage.
    storage: StorageCheck | None = None
    #: The source root (``PREVIEW_SOURCE_ROOT``) when it is set and another root.
    source_storage: StorageCheck | None = None
    #: The webhook delivery queue.
    webhooks: QueueStats = field(default_factory=lambda: QueueStats(WEBHOOK_QUEUE))


@dataclass(frozen=True)
class HealthReport:
    """The answer of :func:`check_health`.

    ``status`` is ``ok``, ``degraded`` (a problem that does not stop jobs from being
    accepted: no live worker, dead letters, webhook deliveries that failed for good, an old
    waiting job, output or source storage unreachable or refused) or ``down`` (Redis or the
    broker unreachable).  ``http_status`` is 503 when down, else 200.  ``body`` is the JSON
    object the health route returns.
    """

    status: Status
    http_status: int
    body: dict[str, Any]


class ProbeTimeout(Exception):
    """A probe did not finish before the deadline."""


def check_health(
    settings: Settings, broker: dramatiq.Broker, *, timeout: float = 1.0
) -> HealthReport:
    """Check Redis, the broker, the lanes, the workers and storage, within ``timeout`` seconds.

    Parameters:
      settings: where the state store and the storage roots are, and the
        ``PREVIEW_HEALTH_MAX_AGE_SECONDS`` limit.
      broker: the broker the workers consume (Redis or RabbitMQ).
      timeout: the most this call may take, in seconds; a backend that has not answered by
        then counts as unreachable.

    Never raises for an unreachable backend (or one that refuses our password): that is
    reported as ``down`` (Redis, the broker) or ``degraded`` (storage).

    Raises:
      ValueError: ``timeout`` is not a finite number of seconds greater than 0.
    """
    snap = probe(settings, broker, timeout=timeout, storage=True)
    reasons: list[dict[str, str]] = []
    if not snap.redis_ok:
        reasons.append(
            _reason(
                "redis_unreachable", f"the state store (Redis) is unreachable: {snap.redis_error}"
            )
        )
    if not snap.broker_ok:
        reasons.append(
            _reason(
                "broker_unreachable",
                f"the {snap.broker_kind} broker is unreachable: {snap.broker_error}",
            )
        )
    status: Status = "down" if reasons else "ok"
    # Storage does not depend on Redis: its problems are reported whatever the status.
    for code, role, variable, check in (
        ("storage_unavailable", "output", "PREVIEW_OUTPUT_DIR", snap.storage),
        ("source_storage_unavailable", "source", "PREVIEW_SOURCE_ROOT", snap.source_storage),
    ):
        if check is not None and not check.ok:
            what = "refused access" if check.refused else "is unreachable"
            reasons.append(
                _reason(
                    code, f"the {role} storage ({variable}, {check.kind}) {what}: {check.error}"
                )
            )
    if status == "ok":
        if snap.live_workers == 0:
            reasons.append(_reason("no_live_workers", "no worker has sent a heartbeat recently"))
        dead = {q: s.dead for q, s in snap.lanes.items() if s.dead}
        if dead:
            listed = ", ".join(f"{q}: {n}" for q, n in dead.items())
            reasons.append(
                _reason(
                    "dead_letters",
                    f"{sum(dead.values())} dead-lettered job(s) ({listed})",
                )
            )
        if snap.webhooks.dead:
            reasons.append(
                _reason(
                    "webhook_dead_letters",
                    f"{snap.webhooks.dead} webhook delivery(ies) failed for good and were "
                    f"dead-lettered ({snap.webhooks.queue}; dramatiq-preview dlq list)",
                )
            )
        limit = settings.health_max_age_seconds
        old = {
            q: s.oldest_job_age
            for q, s in snap.lanes.items()
            if s.oldest_job_age is not None and s.oldest_job_age > limit
        }
        if old:
            listed = ", ".join(f"{q}: {age:.0f} s" for q, age in old.items())
            reasons.append(
                _reason(
                    "oldest_job_too_old",
                    f"a job has waited longer than {limit} s to start ({listed})",
                )
            )
        if reasons:
            status = "degraded"
    body = {
        "status": status,
        "reasons": reasons,
        "checkedAt": _iso(snap.checked_at),
        "redis": {
            "ok": snap.redis_ok,
            "latencyMs": snap.redis_latency_ms,
            "error": snap.redis_error,
        },
        "broker": {
            "ok": snap.broker_ok,
            "kind": snap.broker_kind,
            "latencyMs": snap.broker_latency_ms,
            "error": snap.broker_error,
        },
        "queues": {
            queue: {
                "priority": lane.priority,
                "depth": lane.depth,
                "delayed": lane.delayed,
                "dead": lane.dead,
                "oldestJobAgeSeconds": (
                    None if lane.oldest_job_age is None else round(lane.oldest_job_age, 3)
                ),
            }
            for queue, lane in snap.lanes.items()
        },
        "webhooks": snap.webhooks.as_dict(),
        "workers": {"live": snap.live_workers, "heartbeatTimeoutMs": snap.heartbeat_timeout_ms},
        "limits": {"maxOldestJobAgeSeconds": settings.health_max_age_seconds},
    }
    if snap.storage is not None:
        body["storage"] = snap.storage.as_dict()
    if snap.source_storage is not None:
        body["sourceStorage"] = snap.source_storage.as_dict()
    return HealthReport(status=status, http_status=503 if status == "down" else 200, body=body)


def probe(
    settings: Settings, broker: dramatiq.Broker, *, timeout: float = 1.0, storage: bool = False
) -> Snapshot:
    """Read the state store, the broker and the workers concurrently, within ``timeout``.

    A source that fails or does not answer in time is reported as not ok, with a
    description of the error (never its text, which may name hosts or credentials); the
    numbers it would have given are ``None``.

    With ``storage``, the output root and (when set and another root) the source root are
    checked too, against the same deadline (the scrape-time gauges leave them out).

    Raises:
      ValueError: ``timeout`` is not a finite number of seconds greater than 0.
    """
    # NaN fails both comparisons; beyond TIMEOUT_MAX the joins below overflow.
    if not 0 < timeout <= threading.TIMEOUT_MAX:
        raise ValueError(
            f"timeout must be a finite number of seconds greater than 0, got {timeout}"
        )
    kind = _broker_kind(broker)
    ours = broker_queues(broker, settings.namespace)
    hb_timeout = int(getattr(broker, "heartbeat_timeout", settings.broker_heartbeat_timeout_ms))
    sock_timeout = max(0.05, timeout * _SOCKET_SHARE)
    now_ms = int(time.time() * 1000)
    # Storage checks start first: a process's first S3 check loads boto3 and builds its
    # client (local work, a few hundred ms) before the deadline starts counting.
    storage_pings = _start_storage_pings(settings) if storage else {}
    deadline = time.monotonic() + timeout

    state_client = _url_client(settings.redis_url, sock_timeout)
    tasks: dict[str, Callable[[], Any]] = {
        "redis": lambda: _probe_state(state_client, settings.namespace, ours, now_ms, hb_timeout),
    }
    if kind == "redis":
        broker_client = _broker_client(broker, sock_timeout)
        namespace = str(getattr(broker, "namespace", settings.namespace))
        tasks["broker"] = lambda: _probe_redis_broker(
            broker_client, namespace, ours, now_ms, hb_timeout
        )
    elif kind == "rabbitmq":
        tasks["broker"] = lambda: _probe_rabbitmq(broker, ours, sock_timeout)
    results = _run_all(tasks, deadline)
    storage_checks = {
        name: _storage_check(ping, deadline, timeout) for name, ping in storage_pings.items()
    }

    state: Any = results["redis"]
    redis_ok = not isinstance(state, BaseException)
    raw_broker: Any = results.get("broker")
    broker_ok = raw_broker is not None and not isinstance(raw_broker, BaseException)

    lanes: dict[str, LaneStats] = {}
    for priority, queue in ours.lanes.items():
        counts = raw_broker["queues"].get(queue, {}) if broker_ok else {}
        lanes[queue] = LaneStats(
            queue=queue,
            priority=priority,
            depth=counts.get("depth"),
            delayed=counts.get("delayed"),
            dead=counts.get("dead"),
            oldest_job_age=state["oldest"].get(queue) if redis_ok else None,
        )
    counts = raw_broker["queues"].get(ours.webhooks, {}) if broker_ok else {}
    webhooks = QueueStats(
        ours.webhooks, counts.get("depth"), counts.get("delayed"), counts.get("dead")
    )

    live: int | None = None
    if kind == "redis":
        if redis_ok and broker_ok:
            live = len(state["present"] & raw_broker["heartbeats"])
    elif broker_ok:
        live = int(raw_broker["consumers"])

    return Snapshot(
        redis_ok=redis_ok,
        redis_latency_ms=state["latency_ms"] if redis_ok else None,
        redis_error=None if redis_ok else _describe(state, timeout),
        broker_kind=kind,
        broker_ok=broker_ok,
        broker_latency_ms=raw_broker["latency_ms"] if broker_ok else None,
        broker_error=None
        if broker_ok
        else (
            _describe(raw_broker, timeout)
            if raw_broker is not None
            else f"no health probe for {type(broker).__name__}"
        ),
        lanes=lanes,
        live_workers=live,
        heartbeat_timeout_ms=hb_timeout,
        storage=storage_checks.get("storage"),
        source_storage=storage_checks.get("sourceStorage"),
        webhooks=webhooks,
    )


# -- probes ------------------------------------------------------------------------------


def _ping_ms(client: redis.Redis) -> float:
    started = time.perf_counter()
    client.ping()
    return (time.perf_counter() - started) * 1000


def _probe_state(
    client: redis.Redis, namespace: str, ours: Queues, now_ms: int, hb_timeout: int
) -> dict[str, Any]:
    latency = _ping_ms(client)
    pipe = client.pipeline(transaction=False)
    # The waiting sets are keyed by the queue a job was recorded with: its lane's name.
    queues = list(ours.lanes.values())
    for queue in queues:
        pipe.zrange(f"{namespace}:waiting:{queue}", 0, 0, withscores=True)
    pipe.zrangebyscore(presence_key(namespace), now_ms - hb_timeout, "+inf")
    replies = pipe.execute()
    oldest: dict[str, float] = {}
    for queue, entries in zip(queues, replies[: len(queues)], strict=True):
        oldest[queue] = max(0.0, now_ms / 1000 - float(entries[0][1]) / 1000) if entries else 0.0
    return {"latency_ms": round(latency, 3), "oldest": oldest, "present": set(replies[-1])}


def _probe_redis_broker(
    client: redis.Redis, namespace: str, ours: Queues, now_ms: int, hb_timeout: int
) -> dict[str, Any]:
    latency = _ping_ms(client)
    pipe = client.pipeline(transaction=False)
    queues = list(ours.all)
    for queue in queues:
        base = f"{namespace}:{queue}"
        pipe.llen(base)
        # Delayed messages are fetched into worker memory as soon as they arrive; the
        # hash holds every one not yet moved to its lane, fetched or not.
        pipe.hlen(f"{base}.DQ.msgs")
        pipe.zcard(f"{base}.XQ")
    pipe.zrangebyscore(f"{namespace}:__heartbeats__", now_ms - hb_timeout, "+inf")
    replies = pipe.execute()
    counts = {
        queue: {
            "depth": int(replies[3 * i]),
            "delayed": int(replies[3 * i + 1]),
            "dead": int(replies[3 * i + 2]),
        }
        for i, queue in enumerate(queues)
    }
    return {"latency_ms": round(latency, 3), "queues": counts, "heartbeats": set(replies[-1])}


def _probe_rabbitmq(broker: dramatiq.Broker, ours: Queues, sock_timeout: float) -> dict[str, Any]:
    # optional: pika comes with the rabbitmq extra (this probe runs only for RabbitMQ)
    import pika
    import pika.exceptions

    params = broker.parameters  # type: ignore[attr-defined]
    candidates = params if isinstance(params, list) else [params]
    tuned = []
    for candidate in candidates:
        copy = shallow_copy(candidate)  # never change the broker's own parameters
        copy.socket_timeout = sock_timeout
        copy.stack_timeout = sock_timeout
        copy.blocked_connection_timeout = sock_timeout
        copy.connection_attempts = 1
        copy.retry_delay = 0
        tuned.append(copy)
    started = time.perf_counter()
    connection = pika.BlockingConnection(tuned)
    latency = (time.perf_counter() - started) * 1000
    try:
        channel = connection.channel()
        counts: dict[str, dict[str, int]] = {}
        consumers = 0
        for queue in ours.all:
            numbers = {}
            for key, name in (
                ("depth", queue),
                ("delayed", queue + ".DQ"),
                ("dead", queue + ".XQ"),
            ):
                try:
                    frame = channel.queue_declare(name, passive=True)
                except pika.exceptions.ChannelClosedByBroker:
                    # Not declared yet (no worker or sender has used it): empty.
                    channel = connection.channel()
                    numbers[key] = 0
                    continue
                numbers[key] = int(frame.method.message_count)
                # Live workers: consumers of the render lanes (not of the webhook queue).
                if key != "dead" and queue != ours.webhooks:
                    consumers = max(consumers, int(frame.method.consumer_count))
            counts[queue] = numbers
    finally:
        connection.close()
    return {"latency_ms": round(latency, 3), "queues": counts, "consumers": consumers}


def _run_all(tasks: Mapping[str, Callable[[], Any]], deadline: float) -> dict[str, Any]:
    """Run each task in a daemon thread; a task unfinished at the deadline gets ProbeTimeout.

    Daemon threads, not an executor: a hung socket must never hold up the caller (or the
    interpreter's exit); it ends by itself at its socket timeout.
    """
    results: dict[str, Any] = {}

    def run(name: str, fn: Callable[[], Any]) -> None:
        try:
            results[name] = fn()
        except Exception as exc:
            results[name] = exc

    threads = [
        threading.Thread(target=run, args=(name, fn), name=f"preview-health-{name}", daemon=True)
        for name, fn in tasks.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {name: results.get(name, ProbeTimeout()) for name in tasks}


# -- storage -------------------------------------------------------------------------------


class _StoragePing:
    """One storage check running in a daemon thread; ``done`` is set when it has ended."""

    def __init__(
        self, kind: str, variable: str, storage: Storage | None, check: Callable[[], None]
    ) -> None:
        self.kind = kind
        self.variable = variable
        self.storage = storage
        self.check = check
        self.done = threading.Event()
        self.latency_ms: float | None = None
        self.error: BaseException | None = None
        self.key: Any = None

    @classmethod
    def failed(cls, kind: str, variable: str, error: BaseException) -> _StoragePing:
        """A check that could not even start (the root cannot be opened)."""
        ping = cls(kind, variable, None, lambda: None)
        ping.error = error
        ping.done.set()
        return ping

    def start(self) -> _StoragePing:
        name = f"preview-health-{self.variable.lower()}"
        threading.Thread(target=self._run, name=name, daemon=True).start()
        return self

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            self.check()
        except Exception as exc:
            self.error = exc
        else:
            self.latency_ms = round((time.perf_counter() - started) * 1000, 3)
        finally:
            with _pings_lock:
                if _pings.get(self.key) is self:
                    del _pings[self.key]
            self.done.set()


#: The storage checks in flight, by storage and check: one at a time per root.
_pings: dict[Any, _StoragePing] = {}
_pings_lock = threading.Lock()


def _forget_pings() -> None:
    # A forked child has none of its parent's threads: their checks would never end.
    global _pings_lock
    _pings.clear()
    _pings_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pings)


def _start_storage_pings(settings: Settings) -> dict[str, _StoragePing]:
    """Start (or join) the checks of the output root and, if it is another one, the source
    root; keys are the names of the health body (``storage``, ``sourceStorage``)."""
    roots: dict[str, tuple[str, StorageRoot, bool]] = {
        "storage": ("PREVIEW_OUTPUT_DIR", settings.output_dir, True),
    }
    source = settings.source_root
    if source is not None and not _same_root(source, settings.output_dir):
        roots["sourceStorage"] = ("PREVIEW_SOURCE_ROOT", source, False)
    pings: dict[str, _StoragePing] = {}
    for name, (variable, root, writable) in roots.items():
        kind = "s3" if isinstance(root, S3Location) else "local"
        try:
            storage = open_storage(root, settings)
            storage.prepare()
        except Exception as exc:
            pings[name] = _StoragePing.failed(kind, variable, exc)
            continue
        key = (storage, writable)
        with _pings_lock:
            ping = _pings.get(key)
            if ping is None:
                check = storage.ping
                if not writable and isinstance(storage, LocalStorage):
                    check = _readable_check(storage)
                ping = _StoragePing(storage.kind, variable, storage, check)
                ping.key = key
                _pings[key] = ping.start()
        pings[name] = ping
    return pings


def _readable_check(storage: LocalStorage) -> Callable[[], None]:
    """The check of a local source root: sources are only read, so it need not be writable
    (``Storage.ping`` checks that outputs can be written)."""

    def check() -> None:
        with storage.timed("ping"):
            root = storage.root
            if not root.exists():
                raise StorageError(f"{root} does not exist")
            if not root.is_dir():
                raise StorageError(f"{root} is not a directory")
            if not os.access(root, os.R_OK | os.X_OK):
                raise StorageError(f"{root} is not readable by this process")

    return check


def _same_root(a: StorageRoot, b: StorageRoot) -> bool:
    if isinstance(a, S3Location) or isinstance(b, S3Location):
        return a == b
    return os.path.abspath(a) == os.path.abspath(b)


def _storage_check(ping: _StoragePing, deadline: float, timeout: float) -> StorageCheck:
    if not ping.done.wait(max(0.0, deadline - time.monotonic())):
        error: BaseException = ProbeTimeout()
    elif ping.error is None:
        return StorageCheck(kind=ping.kind, ok=True, latency_ms=ping.latency_ms, error=None)
    else:
        error = ping.error
    return StorageCheck(
        kind=ping.kind,
        ok=False,
        latency_ms=None,
        error=_describe_storage(error, timeout, ping),
        refused=isinstance(error, StorageForbidden),
    )


#: An absolute path in an error message (it would show the server's layout on a public route).
_PATH_RE = re.compile(r"(?<![\w.~])/[^\s'\"]*")


def _describe_storage(error: BaseException, timeout: float, ping: _StoragePing) -> str:
    """What went wrong with a storage check, safe for a public route.

    Our storage errors are written for people and name the bucket and what S3 refused, never
    an endpoint or a credential; a local directory is named by its variable.  Other errors
    are named by their class only.
    """
    if isinstance(error, ProbeTimeout):
        return f"no answer within {timeout * 1000:.0f} ms"
    if isinstance(error, PreviewError):
        message = error.message
        if isinstance(ping.storage, LocalStorage):
            message = message.replace(str(ping.storage.root), ping.variable)
            message = _PATH_RE.sub(f"the nearest existing parent of {ping.variable}", message)
        return message
    if isinstance(error, ImportError):
        return "boto3 is not installed: install dramatiq-preview[s3] for s3:// roots"
    return type(error).__name__


# -- clients -----------------------------------------------------------------------------

# Clients live as long as the process (one per Redis server and timeout): dropping a client
# with open connections in a garbage cycle can leave its sockets unclosed.
_clients: dict[Any, redis.Redis] = {}
_clients_lock = threading.Lock()


def _fast_options(sock_timeout: float) -> dict[str, Any]:
    # redis-py retries a timed-out command three times by default: one try is all the
    # deadline allows.
    return {
        "socket_timeout": sock_timeout,
        "socket_connect_timeout": sock_timeout,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": True,
        "health_check_interval": 0,
    }


def _url_client(url: str, sock_timeout: float) -> redis.Redis:
    key = ("url", url, sock_timeout)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = redis.Redis.from_url(url, **_fast_options(sock_timeout))
        return client


def _broker_client(broker: dramatiq.Broker, sock_timeout: float) -> redis.Redis:
    """A client for the Redis a ``RedisBroker`` uses, with our timeouts (not the broker's)."""
    pool = broker.client.connection_pool  # type: ignore[attr-defined]
    kwargs = dict(pool.connection_kwargs)
    kwargs.update(_fast_options(sock_timeout))
    ignored = {"retry", "decode_responses", "health_check_interval"}
    key = (
        "broker",
        pool.connection_class,
        tuple(sorted((k, repr(v)) for k, v in kwargs.items() if k not in ignored)),
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = redis.Redis(
                connection_pool=redis.ConnectionPool(
                    connection_class=pool.connection_class, **kwargs
                )
            )
        return client


# -- helpers -------------------------------------------------------------------------------


def _broker_kind(broker: dramatiq.Broker) -> str:
    if isinstance(broker, RedisBroker):
        return "redis"
    try:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
    except ImportError:  # optional: pika comes with the rabbitmq extra
        return type(broker).__name__
    if isinstance(broker, RabbitmqBroker):
        return "rabbitmq"
    return type(broker).__name__


def _describe(error: BaseException, timeout: float) -> str:
    """What went wrong, in words that never quote the error's text (it may name hosts)."""
    if isinstance(error, (ProbeTimeout, redis.TimeoutError)):
        return f"no answer within {timeout * 1000:.0f} ms"
    # Before ConnectionError: redis-py's AuthenticationError is one.  Redis answers
    # WRONGPASS "invalid username-password pair" (or "invalid password" before Redis 6) to
    # a refused password, NOAUTH to a command sent without one.  pika's class is looked up
    # by name, pika being optional; it is raised when RabbitMQ refuses the login.
    names = {cls.__name__ for cls in type(error).__mro__}
    if isinstance(error, redis.AuthenticationError) and "invalid" not in str(error).lower():
        return "authentication failed: the server requires a password"
    if isinstance(error, redis.AuthenticationError) or "ProbableAuthenticationError" in names:
        return "authentication failed: wrong user name or password"
    if (
        isinstance(error, redis.exceptions.NoPermissionError)
        or "ProbableAccessDeniedError" in names
    ):
        return "permission denied: the user may not run what the health check needs"
    if isinstance(error, redis.ConnectionError):
        return "connection refused or lost"
    return type(error).__name__


def _reason(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def _iso(seconds: float) -> str:
    dt = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


__all__ = [
    "HealthReport",
    "LaneStats",
    "ProbeTimeout",
    "QueueStats",
    "Snapshot",
    "StorageCheck",
    "check_health",
    "probe",
]

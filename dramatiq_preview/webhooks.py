"""The ``deliver_preview_webhook`` actor: POST a job's final state to its webhook, signed.

One message per final event of a job (``args``: the jobId and the event's ``seq``), on its
own queue (``preview-webhooks``), put there by :mod:`dramatiq_preview.notify`.  Each run is
one attempt:

1. Read the job record.  A message whose event is no longer the one to deliver (the job
   ended again since, or was put back to ``queued``), whose event was delivered already, or
   whose record expired is dropped without a request.
2. Check the URL with the guard URL sources use (:mod:`dramatiq_preview.netguard`, with
   ``PREVIEW_WEBHOOK_ALLOWED_HOSTS``): a host no longer allowed, or resolving to a
   forbidden address, fails the delivery at once (no retry).
3. POST ``{"type": "preview.job.<state>", "timestamp": <finishedAt>, "data": <status>}``
   to the checked address, signed per Standard Webhooks with ``PREVIEW_WEBHOOK_SECRET``
   (``webhook-id`` is the same on every attempt of one event).  A redirect is not followed.
   The attempt has one deadline, ``PREVIEW_WEBHOOK_TIMEOUT_MS`` after it starts, for DNS,
   connect, TLS, sending and the answer's status line and headers (:class:`_Deadline`):
   httpx's own timeouts bound each socket operation, not their sum, so a receiver that
   trickles a byte now and then would otherwise hold the attempt for ever.
4. 2xx: delivered.  410 Gone: failed at once.  Anything else (another status, a redirect,
   a timeout, a refused connection, a DNS failure): :class:`~dramatiq_preview.errors.
   WebhookFailed`, and Dramatiq's ``Retries`` tries again after an exponential backoff
   between ``PREVIEW_WEBHOOK_MIN_BACKOFF_MS`` and ``PREVIEW_WEBHOOK_MAX_BACKOFF_MS``, up to
   ``PREVIEW_WEBHOOK_MAX_ATTEMPTS`` attempts in all; after the last one the message is
   dead-lettered.

The actor writes nothing: the status middleware records each attempt from Dramatiq's hooks
(:class:`~dramatiq_preview.middleware.JobStatus`), after ``Retries`` has decided.

Deliveries share the worker's thread pool with renders (``dramatiq dramatiq_preview``
consumes every queue with one pool), so at most half of a worker's threads (at least one)
make attempts at once (:class:`DeliverySlots`); a delivery that finds them all taken is put
back on the broker for about a second, which is not an attempt.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import random
import socket
import ssl
import threading
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urljoin

import dramatiq
import httpx
import redis
from dramatiq.middleware import SkipMessage
from standardwebhooks import Webhook

from . import netguard
from ._version import __version__
from .broker import actor_broker, follow_actor_broker
from .config import Settings, get_settings
from .errors import StateStoreUnavailable, WebhookFailed, WebhookRefused
from .names import WEBHOOK_ACTOR_NAME, broker_queues, canonical_queue
from .notify import Attempt, is_webhook_message
from .state import FINAL_STATES, JobStore, get_store, iso, status_from_record, version_of

USER_AGENT = f"dramatiq-preview/{__version__} (webhooks)"

logger = logging.getLogger("dramatiq_preview.webhooks")


def webhook_id(namespace: str, job_id: str, seq: int, incarnation: str = "") -> str:
    """The ``webhook-id`` of event ``seq`` of a job's record ``incarnation``: the same on
    every attempt, another for another event of the job, or for a record of the same jobId
    created again after the first one expired or was deleted.

    A digest, not the jobId itself: a jobId may hold ``.``, which the signed text
    ``{id}.{timestamp}.{body}`` uses as its separator (the spec asks for ids without it).
    """
    text = f"{namespace}\0{job_id}\0{int(seq)}\0{incarnation}"
    digest = hashlib.sha256(text.encode()).digest()
    return "msg_" + base64.b32encode(digest[:20]).decode("ascii").lower()


def event_body(job_id: str, record: dict[str, str]) -> str:
    """The JSON body of the event of a final job record (compact; the bytes signed and sent)."""
    status = status_from_record(job_id, record)
    body = {
        "type": f"preview.job.{status['state']}",
        "timestamp": status["finishedAt"] or iso(int(time.time() * 1000)),
        "data": status,
    }
    return json.dumps(body, separators=(",", ":"))


def deliver(job_id: str, seq: int, settings: Settings, store: JobStore | None = None) -> Attempt:
    """Make one attempt at delivering event ``seq`` of ``job_id`` (see the module docstring).

    Returns:
      :class:`~dramatiq_preview.notify.Attempt`: delivered, or dropped without a request.

    Raises:
      WebhookFailed: this attempt failed; another may succeed.
      WebhookRefused: the webhook must not be attempted again.
      StateStoreUnavailable: the record could not be read (retried like a failed attempt).
    """
    store = store or get_store(settings)
    record = _record(store, job_id)
    if record is None:
        return Attempt(False, reason="the job's record has expired")
    if record.get("webhook_seq") != str(seq) or record.get("state") not in FINAL_STATES:
        return Attempt(False, reason="the job has changed state since this event")
    if record.get("webhook_state") == "delivered":
        return Attempt(False, reason="the event was delivered already")
    url = record.get("webhook_url") or ""
    if not url:
        return Attempt(False, reason="the job has no webhook")
    shown = netguard.shown(url, "the webhook URL")
    if settings.webhook_secret is None:  # pragma: no cover - config refuses hosts without it
        raise WebhookRefused("PREVIEW_WEBHOOK_SECRET is not set on this worker")
    with _Deadline(settings.webhook_timeout_ms) as deadline:
        target = _resolve(url, shown, settings, deadline)
        return _post(target, shown, _headers(job_id, seq, record, store, settings), deadline)


def _headers(
    job_id: str, seq: int, record: dict[str, str], store: JobStore, settings: Settings
) -> tuple[dict[str, str], bytes]:
    assert settings.webhook_secret is not None
    body = event_body(job_id, record)
    message_id = webhook_id(store.namespace, job_id, seq, version_of(record).incarnation)
    # The signature covers whole seconds: sign the very second the header says.
    now = datetime.fromtimestamp(int(time.time()), tz=timezone.utc)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": _signer(settings.webhook_secret).sign(message_id, now, body),
    }
    return headers, body.encode("utf-8")


class _Expired(Exception):
    """Raised into httpcore (from its ``trace`` hook) when a step starts past the deadline."""


class _Deadline:
    """The one deadline of an attempt, ``limit_ms`` after it is entered.

    httpx's timeouts bound each connect, write and read, not the request: a receiver that
    sends a byte of its headers every little while resets the read timeout each time.  At
    the deadline a timer shuts the request's socket down (``shutdown``, not ``close``: it
    wakes a thread blocked reading it), so the read returns at once; a step of httpcore that
    starts after the deadline (another connection, another address) raises :class:`_Expired`
    from the ``trace`` hook.  A connect in progress is not interrupted, but the connect
    timeout is set to what remains (:meth:`remaining`).
    """

    def __init__(self, limit_ms: int) -> None:
        self.limit_ms = limit_ms
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(limit_ms / 1000, self._expire)
        self._timer.daemon = True
        self._ends = 0.0
        self.started = 0.0

    def __enter__(self) -> _Deadline:
        self.started = time.monotonic()
        self._ends = self.started + self.limit_ms / 1000
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def remaining(self) -> float:
        """Seconds left (never below 1 ms: httpx takes 0 for "no timeout")."""
        return max(0.001, self._ends - time.monotonic())

    def install(self, request: httpx.Request) -> None:
        """httpx ``request`` event hook: watch the request through httpcore's tracing."""
        request.extensions["trace"] = self._trace

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        if event.endswith(".started") and self.expired:
            raise _Expired(event)
        stream = info.get("return_value") if event.endswith(".complete") else None
        sock = getattr(stream, "get_extra_info", lambda _name: None)("socket")
        if isinstance(sock, socket.socket):
            with self._lock:
                self._sockets.append(sock)
                expired = self.expired
            if expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    # Closed already, or a TCP socket that TLS has taken over (detached): nothing to do.
    with contextlib.suppress(OSError):
        # The plain socket's shutdown, even for TLS: ssl.SSLSocket.shutdown would drop its
        # SSL object under the thread that is reading through it.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _resolve(url: str, shown: str, settings: Settings, deadline: _Deadline) -> netguard.Target:
    """:func:`netguard.resolve_url` within the deadline.

    ``getaddrinfo`` takes no timeout: it runs on a daemon thread of its own, left to end
    by the system resolver's own timeouts when the deadline passes first.
    """
    found: list[netguard.Target | netguard.GuardError] = []

    def run() -> None:
        try:
            found.append(netguard.resolve_url(url, netguard.Policy.for_webhooks(settings)))
        except netguard.GuardError as exc:
            found.append(exc)

    resolver = threading.Thread(target=run, name="webhook-dns", daemon=True)
    resolver.start()
    resolver.join(deadline.remaining())
    if not found:
        raise WebhookFailed(
            f"the host of {shown} was not resolved within {deadline.limit_ms} ms "
            "(PREVIEW_WEBHOOK_TIMEOUT_MS)",
            seconds=_since(deadline.started),
        )
    result = found[0]
    if isinstance(result, netguard.Forbidden):
        raise WebhookRefused(result.message)
    if isinstance(result, netguard.GuardError):
        raise WebhookFailed(result.message)
    return result


def _post(
    target: netguard.Target,
    shown: str,
    request: tuple[dict[str, str], bytes],
    deadline: _Deadline,
) -> Attempt:
    headers, content = request
    limit = deadline.limit_ms
    started = deadline.started
    try:
        verify = netguard.tls_context()
    except (OSError, ssl.SSLError) as exc:
        raise WebhookFailed(
            "the CA certificates for https webhooks cannot be loaded (SSL_CERT_FILE, "
            f"SSL_CERT_DIR): {type(exc).__name__}"
        ) from None
    # No environment proxies and no redirects: see netguard.send.
    with httpx.Client(
        timeout=httpx.Timeout(deadline.remaining()),
        follow_redirects=False,
        trust_env=False,
        verify=verify,
        event_hooks={"request": [deadline.install]},
    ) as client:
        try:
            try:
                # Streamed and closed unread: the receiver's body is never needed, and an
                # endless one must not hold the attempt.
                response = netguard.send(
                    client, target, "POST", headers=headers, content=content, stream=True
                )
            except (httpx.HTTPError, netguard.GuardError):
                # Whatever the socket shut down at the deadline made of the request.
                if deadline.expired:
                    raise _Expired("the deadline passed") from None
                raise
        except (_Expired, httpx.TimeoutException):
            raise WebhookFailed(
                f"{shown} did not answer within {limit} ms (PREVIEW_WEBHOOK_TIMEOUT_MS)",
                seconds=_since(started),
            ) from None
        except netguard.CertificateRefused as exc:
            raise WebhookFailed(f"{shown}: {exc.message}", seconds=_since(started)) from None
        except netguard.Unreachable:
            raise WebhookFailed(
                f"{shown} could not be reached (connection refused or failed)",
                seconds=_since(started),
            ) from None
        except httpx.HTTPError as exc:
            raise WebhookFailed(
                f"{shown} could not be sent to ({type(exc).__name__})", seconds=_since(started)
            ) from None
        seconds = _since(started)
        status = response.status_code
        location = response.headers.get("location")
        response.close()
    if 200 <= status < 300:
        return Attempt(True, seconds=seconds, status=status)
    if status == 410:
        raise WebhookRefused(
            f"{shown} answered HTTP 410 Gone: the receiver wants no more deliveries",
            seconds=seconds,
        )
    if 300 <= status < 400:
        where = f" to {netguard.shown(urljoin(target.url, location))}" if location else ""
        raise WebhookFailed(
            f"{shown} answered HTTP {status}, a redirect{where}; redirects are not followed "
            "(point the webhook at the final URL)",
            seconds=seconds,
        )
    raise WebhookFailed(f"{shown} answered HTTP {status}", seconds=seconds)


def _since(started: float) -> float:
    return time.monotonic() - started


@functools.lru_cache(maxsize=4)
def _signer(secret: str) -> Webhook:
    return Webhook(secret)


def _record(store: JobStore, job_id: str) -> dict[str, str] | None:
    try:
        found = store.client.hgetall(store.job_key(job_id))
    except redis.RedisError as exc:
        raise StateStoreUnavailable(
            f"the state store (Redis) is unavailable: {type(exc).__name__}"
        ) from exc
    record = {str(k): str(v) for k, v in found.items()}
    return record if "state" in record else None


#: Dramatiq's default of 8 worker threads, halved: the cap until a worker boots.
DEFAULT_SLOTS = 4


class DeliverySlots(dramatiq.Middleware):
    """At most ``max(1, threads // 2)`` webhook attempts at once in a worker process.

    A receiver may hold an attempt for ``PREVIEW_WEBHOOK_TIMEOUT_MS``, and deliveries share
    the worker's threads with renders: without a cap, as many hanging receivers as there
    are threads stall every render.  A delivery message that finds every slot taken is put
    back on the broker with a delay of 0.5-1.5 s (a copy, its ``retries`` kept) and
    skipped: ``Retries`` and the status middleware never see it, so it is not an attempt.

    Added to the actor's broker by this module (it sizes itself from the worker in
    ``before_worker_boot``, the one place the thread count is known).
    """

    def __init__(self) -> None:
        self.size = DEFAULT_SLOTS
        self._slots = threading.BoundedSemaphore(self.size)
        self._held = threading.local()

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self.size = max(1, int(worker.worker_threads) // 2)
        self._slots = threading.BoundedSemaphore(self.size)

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if not is_webhook_message(message):
            return
        slots = self._slots
        if slots.acquire(blocking=False):
            self._held.value = (slots, message.message_id)
            return
        delay = random.randint(500, 1500)  # noqa: S311 - jitter, not a secret
        try:
            _put_back(broker, message, delay)
        except Exception as exc:
            # Better one attempt over the cap than one lost or counted for nothing.
            logger.warning("could not put back webhook delivery %s: %r", message, exc)
            return
        logger.info(
            "all %d webhook slots are busy; %s put back for %d ms", self.size, message, delay
        )
        raise SkipMessage("all webhook delivery slots are busy")

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        held = getattr(self._held, "value", None)
        if held is not None and held[1] == message.message_id:
            self._held.value = None
            held[0].release()

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        # Skipped by a middleware after this one took its slot.
        self.after_process_message(broker, message)


def _put_back(broker: dramatiq.Broker, message: Any, delay: int) -> None:
    options = {k: v for k, v in message.options.items() if k not in {"eta", "redis_message_id"}}
    copy = dataclasses.replace(
        message._message, queue_name=canonical_queue(message.queue_name), options=options
    )
    broker.enqueue(copy, delay=delay)


_settings = get_settings()
_broker = actor_broker()


@dramatiq.actor(
    actor_name=WEBHOOK_ACTOR_NAME,
    # The webhook queue of this deployment on that broker (namespaced on RabbitMQ).
    queue_name=broker_queues(_broker, _settings.namespace).webhooks,
    # The broker render_preview is on (never Dramatiq's implicit default); it follows
    # render_preview when setup_broker moves it (_declare_on below).
    broker=_broker,
    max_retries=_settings.webhook_max_attempts - 1,
    min_backoff=_settings.webhook_min_backoff_ms,
    max_backoff=_settings.webhook_max_backoff_ms,
    # An attempt ends at its deadline (PREVIEW_WEBHOOK_TIMEOUT_MS), or a connect begun
    # just before it ends at most that much later; the rest is margin.
    time_limit=3 * _settings.webhook_timeout_ms,
    throws=(WebhookRefused,),
)
def deliver_preview_webhook(job_id: str, seq: int) -> Attempt:
    """Make one attempt at delivering event ``seq`` of job ``job_id`` (see :func:`deliver`).

    Returns what the attempt did; the status middleware records it.
    """
    return deliver(job_id, int(seq), get_settings())


def _declare_on(broker: dramatiq.Broker) -> None:
    if broker.actors.get(WEBHOOK_ACTOR_NAME) is not deliver_preview_webhook:
        deliver_preview_webhook.broker = broker
        # Its queue depends on the broker too (namespaced on RabbitMQ, not on Redis).
        ours = broker_queues(broker, get_settings().namespace)
        deliver_preview_webhook.queue_name = ours.webhooks
        broker.declare_actor(deliver_preview_webhook)
    if not any(isinstance(m, DeliverySlots) for m in broker.middleware):
        broker.add_middleware(DeliverySlots())


follow_actor_broker(_declare_on)


__all__ = [
    "DEFAULT_SLOTS",
    "USER_AGENT",
    "DeliverySlots",
    "deliver",
    "deliver_preview_webhook",
    "event_body",
    "webhook_id",
]

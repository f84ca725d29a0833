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
   (``webhook-id`` is the same on every attempt of one event), with connect and read
   timeouts of ``PREVIEW_WEBHOOK_TIMEOUT_MS``.  A redirect is not followed.
4. 2xx: delivered.  410 Gone: failed at once.  Anything else (another status, a redirect,
   a timeout, a refused connection, a DNS failure): :class:`~dramatiq_preview.errors.
   WebhookFailed`, and Dramatiq's ``Retries`` tries again after an exponential backoff
   between ``PREVIEW_WEBHOOK_MIN_BACKOFF_MS`` and ``PREVIEW_WEBHOOK_MAX_BACKOFF_MS``, up to
   ``PREVIEW_WEBHOOK_MAX_ATTEMPTS`` attempts in all; after the last one the message is
   dead-lettered.

The actor writes nothing: the status middleware records each attempt from Dramatiq's hooks
(:class:`~dramatiq_preview.middleware.JobStatus`), after ``Retries`` has decided.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import ssl
import time
from datetime import datetime, timezone
from urllib.parse import urljoin

import dramatiq
import httpx
import redis
from standardwebhooks import Webhook

from . import netguard
from ._version import __version__
from .broker import actor_broker, follow_actor_broker
from .config import Settings, get_settings
from .errors import StateStoreUnavailable, WebhookFailed, WebhookRefused
from .names import WEBHOOK_ACTOR_NAME, broker_queues
from .notify import Attempt
from .state import FINAL_STATES, JobStore, get_store, iso, status_from_record, version_of

USER_AGENT = f"dramatiq-preview/{__version__} (webhooks)"


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
    try:
        target = netguard.resolve_url(url, netguard.Policy.for_webhooks(settings))
    except netguard.Forbidden as exc:
        raise WebhookRefused(exc.message) from None
    except netguard.Unresolved as exc:
        raise WebhookFailed(exc.message) from None
    if settings.webhook_secret is None:  # pragma: no cover - config refuses hosts without it
        raise WebhookRefused("PREVIEW_WEBHOOK_SECRET is not set on this worker")
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
    return _post(target, shown, headers, body.encode("utf-8"), settings)


def _post(
    target: netguard.Target,
    shown: str,
    headers: dict[str, str],
    content: bytes,
    settings: Settings,
) -> Attempt:
    limit = settings.webhook_timeout_ms
    try:
        verify = netguard.tls_context()
    except (OSError, ssl.SSLError) as exc:
        raise WebhookFailed(
            "the CA certificates for https webhooks cannot be loaded (SSL_CERT_FILE, "
            f"SSL_CERT_DIR): {type(exc).__name__}"
        ) from None
    started = time.monotonic()
    # No environment proxies and no redirects: see netguard.send.
    with httpx.Client(
        timeout=httpx.Timeout(limit / 1000),
        follow_redirects=False,
        trust_env=False,
        verify=verify,
    ) as client:
        try:
            # Streamed and closed unread: the receiver's body is never needed, and an
            # endless one must not hold the attempt.
            response = netguard.send(
                client, target, "POST", headers=headers, content=content, stream=True
            )
        except netguard.CertificateRefused as exc:
            raise WebhookFailed(f"{shown}: {exc.message}", seconds=_since(started)) from None
        except netguard.Unreachable:
            raise WebhookFailed(
                f"{shown} could not be reached (connection refused or failed)",
                seconds=_since(started),
            ) from None
        except httpx.TimeoutException:
            raise WebhookFailed(
                f"{shown} did not answer within {limit} ms (PREVIEW_WEBHOOK_TIMEOUT_MS)",
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
    # A POST waits at most a connect and a read timeout; the rest is margin.
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


follow_actor_broker(_declare_on)


__all__ = ["USER_AGENT", "deliver", "deliver_preview_webhook", "event_body", "webhook_id"]

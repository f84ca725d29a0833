"""Broker assembly: which broker dramatiq-preview uses, and the middleware it needs there.

Two ways to wire dramatiq-preview into a process (see docs/broker.md):

1. **Automatic.** ``import dramatiq_preview`` uses the broker the host already installed with
   ``dramatiq.set_broker``; when there is none, it builds one from ``PREVIEW_BROKER_URL``
   (Redis or RabbitMQ) and installs it as the global broker (:func:`default_broker`).
   Either way our middleware is attached and ``render_preview`` is declared on that broker.
2. **Explicit.** A host that builds its broker after importing us calls
   ``dramatiq_preview.setup_broker`` (:mod:`.actors`) on it.

We never call ``dramatiq.get_broker()`` while no broker is installed: that would silently
create Dramatiq's implicit default (RabbitMQ on localhost) and bind our actor to it.
This module sits above the middleware it assembles and below the actor, as Dramatiq's own
``broker.py`` does: no middleware imports it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import dramatiq
import dramatiq.broker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Retries, TimeLimit
from dramatiq.middleware.prometheus import Prometheus

from .config import Settings, get_settings
from .errors import ConfigError
from .middleware import (
    Idempotency,
    JobStatus,
    LogFormat,
    Metrics,
    Orphans,
    PayloadValidation,
    Presence,
    Recovery,
    RenderPool,
)
from .middleware.retention import Retention
from .names import broker_queues

logger = logging.getLogger("dramatiq_preview.broker")


def build_broker(settings: Settings) -> dramatiq.Broker:
    """A new Redis or RabbitMQ broker for ``settings.broker_url`` with our middleware.

    No connection is opened until the broker is first used.
    """
    broker: dramatiq.Broker
    if settings.broker_kind == "rabbitmq":
        try:
            # optional: pika comes with the rabbitmq extra
            from dramatiq.brokers.rabbitmq import RabbitmqBroker
        except ImportError as exc:
            raise ConfigError(
                "PREVIEW_BROKER_URL",
                f"an amqp:// broker needs pika ({exc}); "
                'install it with: pip install "dramatiq-preview[rabbitmq]"',
            ) from None

        # Publisher confirms: a publish returns once RabbitMQ holds the message, so a submit
        # answered 202 (or a retry, a put-back, a webhook delivery) is never lost to a
        # broker that was shutting down (fault scenario "RabbitMQ restart").
        broker = RabbitmqBroker(url=settings.broker_url, confirm_delivery=True)
    else:
        broker = RedisBroker(  # type: ignore[no-untyped-call]
            url=settings.broker_url,
            namespace=settings.namespace,
            heartbeat_timeout=settings.broker_heartbeat_timeout_ms,
            maintenance_chance=settings.broker_maintenance_chance,
            dead_message_ttl=settings.job_ttl_seconds * 1000,
        )
    attach_middleware(broker, settings)
    return broker


def attach_middleware(broker: dramatiq.Broker, settings: Settings | None = None) -> None:
    """Add Retries, TimeLimit and our middleware to ``broker`` unless already there
    (:class:`Recovery` on a ``RedisBroker`` only), and declare our queues on it, named for
    ``settings.namespace`` (the process settings when None; :func:`~.names.broker_queues`).

    Our state middleware sits just before ``Retries`` so that, when a message fails,
    ``Retries`` has already decided between retry and dead-letter by the time we record it
    (Dramatiq runs ``after_*`` hooks in reverse order).
    """
    ours = broker_queues(broker, (settings or get_settings()).namespace)
    present = {type(m) for m in broker.middleware}
    if TimeLimit not in present:
        broker.add_middleware(TimeLimit())
    if Retries not in present:
        broker.add_middleware(Retries())
    for middleware_class in (PayloadValidation, Idempotency, JobStatus):
        if middleware_class not in present:
            broker.add_middleware(middleware_class(settings=settings), before=Retries)
    if RenderPool not in present:
        broker.add_middleware(RenderPool(settings=settings))
    if Retention not in present:
        # Its hooks run only in worker processes: a web process never sweeps.
        broker.add_middleware(Retention(settings=settings))
    if Orphans not in present:
        # Its hooks run only in worker processes: a web process never sweeps.
        broker.add_middleware(Orphans(settings=settings))
    if isinstance(broker, RedisBroker) and Recovery not in present:
        # Only Redis needs it: RabbitMQ gives a dead connection's messages back by itself.
        broker.add_middleware(Recovery(queues=ours.all))
    if HighLane not in present:
        broker.add_middleware(HighLane(settings=settings))
    _attach_observability(broker, settings)
    for queue_name in ours.all:
        broker.declare_queue(queue_name)


class HighLane(dramatiq.Middleware):
    """Lets a ``high`` job overtake what a worker process already holds (docs/broker.md,
    "Priority lanes").

    Dramatiq gives each queue its own consumer thread, and every consumer puts what it
    prefetched (up to twice the thread count) into the worker's one work queue, first in,
    first out for messages of one actor.  Two things held a ``high`` job back: on a Redis
    broker its consumer, idle, polled with a backoff growing to the worker timeout (1 s by
    default), and once fetched it queued behind the ``normal`` messages prefetched before it.
    When the high lane's consumer thread boots, this caps its poll interval at
    ``PREVIEW_HIGH_LANE_POLL_MS`` on a Redis broker (the consumer's ``timeout`` bounds only
    that backoff; 0 leaves it alone), and, on any broker, makes that thread put its messages
    ahead of the other lanes' in the work queue (:class:`_Ahead`).  RabbitMQ pushes
    messages: its consumers do not poll.

    Parameters:
      settings: the namespace and ``high_lane_poll_ms`` (the process settings when None).
    """

    def __init__(self, *, settings: Settings | None = None) -> None:
        self.settings = settings

    def after_consumer_thread_boot(self, broker: dramatiq.Broker, thread: Any) -> None:
        settings = self.settings or get_settings()
        high = broker_queues(broker, settings.namespace).lanes["high"]
        if getattr(thread, "queue_name", None) != high:
            return
        poll_ms = settings.high_lane_poll_ms
        timeout = getattr(thread, "worker_timeout", None)
        if isinstance(broker, RedisBroker) and poll_ms and isinstance(timeout, int):
            thread.worker_timeout = min(timeout, poll_ms)
        queue = getattr(thread, "work_queue", None)
        if queue is not None and not isinstance(queue, _Ahead):
            thread.work_queue = _Ahead(queue)


class _Ahead:
    """The worker's work queue as the high lane's consumer thread sees it: what it puts
    there goes ahead of every message of the same actor priority.

    The queue orders Dramatiq's work items by ``priority`` (the actor's, lower first), then
    by arrival; an item of that shape is put with ``priority - 1``, anything else as it
    is.  The worker threads take from the queue itself, unchanged.
    """

    def __init__(self, queue: Any) -> None:
        self._queue = queue

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        priority = getattr(item, "priority", None)
        if isinstance(priority, int) and dataclasses.is_dataclass(item):
            item = dataclasses.replace(item, priority=priority - 1)  # type: ignore[type-var]
        self._queue.put(item, block, timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


def default_broker() -> dramatiq.Broker:
    """The host's global broker if one is installed, else a new one from the environment."""
    existing = dramatiq.broker.global_broker
    if existing is not None:
        attach_middleware(existing)
        return existing
    broker = build_broker(get_settings())
    dramatiq.set_broker(broker)
    return broker


#: The broker ``render_preview`` is declared on (recorded by :mod:`.actors`).
_actor_broker: dramatiq.Broker | None = None
#: Called with the broker whenever ``render_preview`` moves to another one.
_followers: list[Callable[[dramatiq.Broker], None]] = []


def use_for_actor(broker: dramatiq.Broker) -> None:
    """Record ``broker`` as the one ``render_preview`` is declared on (``setup_broker``),
    and move the actors that follow it there (:func:`follow_actor_broker`)."""
    global _actor_broker
    _actor_broker = broker
    for follow in list(_followers):
        follow(broker)


def follow_actor_broker(declare: Callable[[dramatiq.Broker], None]) -> None:
    """Keep another actor of ours on the broker of ``render_preview``: ``declare(broker)``
    is called now with :func:`actor_broker`, and again whenever ``setup_broker`` moves
    ``render_preview`` (the webhook actor uses it; ``actors`` and ``webhooks`` sit side by
    side and do not import each other).

    Raises:
      ConfigError: as :func:`actor_broker`.
    """
    _followers.append(declare)
    declare(actor_broker())


def actor_broker() -> dramatiq.Broker:
    """The broker ``render_preview`` is declared on: the one :func:`default_broker` gave
    when the package was imported, or the host's broker that ``setup_broker`` moved it to.

    Raises:
      ConfigError: the package was imported without its actor (the command, with a
        malformed setting) and the settings to build a broker are malformed.
    """
    return _actor_broker if _actor_broker is not None else default_broker()


def _attach_observability(broker: dramatiq.Broker, settings: Settings | None) -> None:
    """Add :class:`Metrics`, :class:`Presence` and :class:`LogFormat` (docs/observability.md).

    A broker that already has Dramatiq's ``Prometheus`` middleware keeps it (two of them
    would count every message twice); it then lacks our job metrics and per-run
    directories.
    """
    present = {type(m) for m in broker.middleware}
    if not any(isinstance(m, Prometheus) for m in broker.middleware):
        # First in line: its before_process_message must see every message that its
        # after_skip_message will (a message skipped by an earlier middleware would drive
        # dramatiq_messages_inprogress below zero).
        first = type(broker.middleware[0]) if broker.middleware else None
        broker.add_middleware(Metrics(settings=settings), before=first)
    elif Metrics not in present:
        logger.info("the broker already has a Prometheus middleware; leaving it as it is")
    if Presence not in present:
        broker.add_middleware(Presence(settings=settings))
    if LogFormat not in present:
        broker.add_middleware(LogFormat(settings=settings))

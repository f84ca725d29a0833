"""Broker set-up: priority lanes, our middleware, and which broker the actor joins.

Two ways to wire dramatiq-preview into a process (see docs/broker.md):

1. **Automatic.** ``import dramatiq_preview`` uses the broker the host already installed with
   ``dramatiq.set_broker``; when there is none, it builds one from ``PREVIEW_BROKER_URL``
   (Redis or RabbitMQ) and installs it as the global broker.  Either way our middleware is
   attached and ``render_preview`` is declared on that broker.
2. **Explicit.** A host that builds its broker after importing us calls
   :func:`setup_broker` on it, which attaches the middleware, declares the priority lanes and
   moves ``render_preview`` onto that broker.  Calling it twice changes nothing.

We never call ``dramatiq.get_broker()`` while no broker is installed: that would silently
create Dramatiq's implicit default (RabbitMQ on localhost) and bind our actor to it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import dramatiq
import dramatiq.broker
from dramatiq.middleware import Retries, TimeLimit

from .config import Settings, get_settings

ACTOR_NAME = "render_preview"

#: One broker queue per priority lane.  A worker consumes all three unless ``--queues``
#: narrows it, and takes from them in turn, so a high job waits only for the few messages
#: already prefetched, never for a lane's backlog, and low work is never starved.
QUEUES = {"high": "preview-high", "normal": "preview-normal", "low": "preview-low"}
DEFAULT_QUEUE = QUEUES["normal"]

#: Message option set on messages whose job record already exists (submit, retry, replay).
RECORDED = "preview_recorded"


def queue_for(priority: object) -> str:
    """The broker queue of a priority lane (unknown values fall back to normal)."""
    return QUEUES.get(priority, DEFAULT_QUEUE) if isinstance(priority, str) else DEFAULT_QUEUE


def canonical_queue(queue_name: str) -> str:
    """Strip Dramatiq's delay/dead-letter suffix (``.DQ``/``.XQ``) from a queue name."""
    for suffix in (".DQ", ".XQ"):
        if queue_name.endswith(suffix):
            return queue_name[: -len(suffix)]
    return queue_name


class PreviewActor(dramatiq.Actor[Any, Any]):
    """The actor class of ``render_preview``: routes each message to its priority lane.

    It also gives a payload without ``jobId`` a fresh one (on a copy: the caller's dict is
    left alone), so the id can be read back from the returned message's ``args[0]``.
    """

    def message_with_options(
        self, *, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> dramatiq.Message[Any]:
        queue_name = self.queue_name
        if len(args) == 1 and isinstance(args[0], dict) and not kwargs:
            from .validation import new_job_id

            payload = dict(args[0])
            if "jobId" not in payload:
                payload["jobId"] = new_job_id()
            args = (payload,)
            queue_name = queue_for(payload.get("priority", "normal"))
        message = super().message_with_options(args=args, kwargs=kwargs, **options)
        return dataclasses.replace(message, queue_name=queue_name)


def build_broker(settings: Settings) -> dramatiq.Broker:
    """A new Redis or RabbitMQ broker for ``settings.broker_url`` with our middleware.

    No connection is opened until the broker is first used.
    """
    broker: dramatiq.Broker
    if settings.broker_kind == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=settings.broker_url)
    else:
        from dramatiq.brokers.redis import RedisBroker

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
    """Add Retries, TimeLimit and our middleware to ``broker`` unless already there.

    Our state middleware sits just before ``Retries`` so that, when a message fails,
    ``Retries`` has already decided between retry and dead-letter by the time we record it
    (Dramatiq runs ``after_*`` hooks in reverse order).
    """
    from .middleware import Idempotency, JobStatus, PayloadValidation, RenderPool

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
    # Metrics (Dramatiq's Prometheus), worker presence and log format: docs/observability.md.
    from .middleware.metrics import attach_observability

    attach_observability(broker, settings)
    for queue_name in QUEUES.values():
        broker.declare_queue(queue_name)


def default_broker() -> dramatiq.Broker:
    """The host's global broker if one is installed, else a new one from the environment."""
    existing = dramatiq.broker.global_broker
    if existing is not None:
        attach_middleware(existing)
        return existing
    broker = build_broker(get_settings())
    dramatiq.set_broker(broker)
    return broker


def setup_broker(broker: dramatiq.Broker) -> dramatiq.Broker:
    """Attach dramatiq-preview to a broker the host built itself.

    Adds our middleware (and Dramatiq's ``Retries``/``TimeLimit`` if missing), declares the
    priority lanes, and declares ``render_preview`` on ``broker``.  Safe to call twice.
    Call it after building the broker and before starting workers or sending jobs; calling
    ``dramatiq.set_broker(broker)`` as well is up to the host.

    Returns:
      The same broker.
    """
    from .actors import render_preview

    attach_middleware(broker)
    render_preview.broker = broker
    if broker.actors.get(ACTOR_NAME) is not render_preview:
        broker.declare_actor(render_preview)
    return broker


def shared_redis_namespace(broker: dramatiq.Broker, client: Any) -> str | None:
    """The namespace of ``broker`` when it is a Dramatiq ``RedisBroker`` on the same Redis
    server and database as ``client`` (a ``redis.Redis``), else None.

    A submit then records the job and enqueues its message in one atomic script
    (``JobStore.create``), one round trip instead of two.
    """
    try:
        from dramatiq.brokers.redis import RedisBroker
    except ImportError:  # pragma: no cover - redis is a dependency
        return None
    if type(broker) is not RedisBroker:
        # A subclass may store or enqueue messages its own way: use its enqueue().
        return None
    namespace = getattr(broker, "namespace", None)
    broker_client = getattr(broker, "client", None)
    if not isinstance(namespace, str) or broker_client is None:
        return None
    if _server_of(broker_client) != _server_of(client):
        return None
    return namespace


def _server_of(client: Any) -> tuple[Any, ...]:
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    return (
        pool.connection_class,
        kwargs.get("host"),
        kwargs.get("port"),
        kwargs.get("path"),
        int(kwargs.get("db") or 0),
        # Other credentials may have other rights (ACLs): then each client writes its keys.
        kwargs.get("username"),
        kwargs.get("password"),
    )

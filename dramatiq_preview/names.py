"""The names every layer shares: the actor, the priority lanes, message options, Redis keys.

This module imports nothing of ours, so any module may use it.  Every queue name comes from
:func:`queue_name`, through :func:`broker_queues` wherever a broker is at hand.  Broker
assembly lives in :mod:`dramatiq_preview.broker`; this is only what the pieces must agree on.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

#: The Dramatiq actor name of ``render_preview`` (contract §1).
ACTOR_NAME = "render_preview"

#: The namespace under which the queues keep their historical names on every broker
#: (PREVIEW_NAMESPACE's default).
DEFAULT_NAMESPACE = "dramatiq_preview"

#: The priority lanes.  Each has its own broker queue: a worker consumes all three unless
#: ``--queues`` narrows it, and takes from them in turn, so a high job waits only for the few
#: messages already prefetched, never for a lane's backlog, and low work is never starved.
LANES = ("high", "normal", "low")

#: The actor that POSTs a job's final state to its webhook (:mod:`dramatiq_preview.webhooks`).
#: It has a queue of its own: deliveries never wait behind renders in a lane, nor renders
#: behind them.
WEBHOOK_ACTOR_NAME = "deliver_preview_webhook"


def queue_name(lane: str, namespace: str | None = None) -> str:
    """The broker queue of ``lane`` (a priority of :data:`LANES`, or ``"webhooks"``) for a
    deployment whose queues carry ``namespace`` (see :func:`broker_queues`).

    ``None`` and :data:`DEFAULT_NAMESPACE` give the historical names (``preview-high``,
    ``preview-webhooks``); any other namespace gives ``preview.{ns}.{lane}``, where ``{ns}``
    is the namespace with ``.`` written ``.-`` and ``:`` written ``..`` (Dramatiq's queue names
    allow letters, digits, ``_``, ``.`` and ``-``; PREVIEW_NAMESPACE allows ``:`` too).  The
    mapping is injective: ``.`` begins every escape and no escape is a prefix of another, the
    lane after the last ``.`` contains none, and a historical name never starts with
    ``preview.``; it never ends with ``.DQ``/``.XQ`` (Dramatiq's suffixes) either.
    """
    if namespace is None or namespace == DEFAULT_NAMESPACE:
        return f"preview-{lane}"
    escaped = namespace.replace(".", ".-").replace(":", "..")
    return f"preview.{escaped}.{lane}"


@dataclass(frozen=True)
class Queues:
    """The broker queues of one deployment: its priority lanes and its webhook queue."""

    #: priority → queue, in :data:`LANES` order.
    lanes: Mapping[str, str]
    webhooks: str

    @property
    def default(self) -> str:
        """The lane of ``normal`` jobs (and of payloads with an unknown priority)."""
        return self.lanes["normal"]

    @property
    def all(self) -> tuple[str, ...]:
        """Every queue of our actors: the lanes, then the webhook deliveries."""
        return (*self.lanes.values(), self.webhooks)

    def for_priority(self, priority: object) -> str:
        """The lane of a priority (unknown values fall back to normal)."""
        return self.lanes.get(priority, self.default) if isinstance(priority, str) else self.default


@functools.lru_cache(maxsize=32)
def queues(namespace: str | None = None) -> Queues:
    """The queues whose names carry ``namespace`` (:func:`queue_name`)."""
    lanes = MappingProxyType({lane: queue_name(lane, namespace) for lane in LANES})
    return Queues(lanes=lanes, webhooks=queue_name("webhooks", namespace))


def broker_queues(broker: object, namespace: str) -> Queues:
    """The queues of the deployment whose state store uses ``namespace`` on ``broker``.

    On a Redis broker (Dramatiq's ``RedisBroker`` or a subclass) the queues keep their
    historical names: the broker's own key namespace (PREVIEW_NAMESPACE when we build it)
    already keeps deployments apart, and renaming them would strand the messages in flight of
    a deployment that upgrades.  A ``StubBroker`` lives in one process and shares nothing, so
    it keeps them too.  On any other broker (RabbitMQ, where queue names are global to a
    virtual host) they carry ``namespace``, so deployments sharing it never take each other's
    jobs.
    """
    shares_names = not isinstance(broker, (RedisBroker, StubBroker))
    return queues(namespace if shares_names else None)


#: The queues under the default namespace, and on every Redis or stub broker.
QUEUES = dict(queues().lanes)
DEFAULT_QUEUE = queues().default
WEBHOOK_QUEUE = queues().webhooks
ALL_QUEUES = queues().all

#: Message option set on messages whose job record already exists (submit, retry, replay).
RECORDED = "preview_recorded"
#: Message option counting how often a delivery found its job leased elsewhere.
BUSY_TRIES = "preview_busy_tries"


def queue_for(priority: object, namespace: str | None = None) -> str:
    """The broker queue of a priority lane (unknown values fall back to normal), as
    :meth:`Queues.for_priority` of :func:`queues`."""
    return queues(namespace).for_priority(priority)


def canonical_queue(queue_name: str) -> str:
    """Strip Dramatiq's delay/dead-letter suffix (``.DQ``/``.XQ``) from a queue name."""
    for suffix in (".DQ", ".XQ"):
        if queue_name.endswith(suffix):
            return queue_name[: -len(suffix)]
    return queue_name


def presence_key(namespace: str) -> str:
    """The sorted set of live worker ids scored by their last presence beat (ms): written
    by the ``Presence`` middleware, read by the health check."""
    return f"{namespace}:workers"


def gc_lock_key(namespace: str) -> str:
    """The lock a worker takes (``SET NX EX interval``) before a retention sweep: whoever
    sets it sweeps, and no other worker does until it expires."""
    return f"{namespace}:gc:lock"


__all__ = [
    "ACTOR_NAME",
    "ALL_QUEUES",
    "BUSY_TRIES",
    "DEFAULT_NAMESPACE",
    "DEFAULT_QUEUE",
    "LANES",
    "QUEUES",
    "RECORDED",
    "WEBHOOK_ACTOR_NAME",
    "WEBHOOK_QUEUE",
    "Queues",
    "broker_queues",
    "canonical_queue",
    "gc_lock_key",
    "presence_key",
    "queue_for",
    "queue_name",
    "queues",
]

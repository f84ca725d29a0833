"""The names every layer shares: the actor, the priority lanes, message options, Redis keys.

This module imports nothing of ours, so any module may use it.  Broker assembly lives in
:mod:`dramatiq_preview.broker`; this is only what the pieces must agree on.
"""

from __future__ import annotations

#: The Dramatiq actor name of ``render_preview`` (contract §1).
ACTOR_NAME = "render_preview"

#: One broker queue per priority lane.  A worker consumes all three unless ``--queues``
#: narrows it, and takes from them in turn, so a high job waits only for the few messages
#: already prefetched, never for a lane's backlog, and low work is never starved.
QUEUES = {"high": "preview-high", "normal": "preview-normal", "low": "preview-low"}
DEFAULT_QUEUE = QUEUES["normal"]

#: The actor that POSTs a job's final state to its webhook (:mod:`dramatiq_preview.webhooks`),
#: and its queue: deliveries never wait behind renders in a lane, nor renders behind them.
WEBHOOK_ACTOR_NAME = "deliver_preview_webhook"
WEBHOOK_QUEUE = "preview-webhooks"

#: Every queue of our actors: the lanes, then the webhook deliveries.
ALL_QUEUES = (*QUEUES.values(), WEBHOOK_QUEUE)

#: Message option set on messages whose job record already exists (submit, retry, replay).
RECORDED = "preview_recorded"
#: Message option counting how often a delivery found its job leased elsewhere.
BUSY_TRIES = "preview_busy_tries"


def queue_for(priority: object) -> str:
    """The broker queue of a priority lane (unknown values fall back to normal)."""
    return QUEUES.get(priority, DEFAULT_QUEUE) if isinstance(priority, str) else DEFAULT_QUEUE


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
    "DEFAULT_QUEUE",
    "QUEUES",
    "RECORDED",
    "WEBHOOK_ACTOR_NAME",
    "WEBHOOK_QUEUE",
    "canonical_queue",
    "gc_lock_key",
    "presence_key",
    "queue_for",
]

"""A host that builds its own Dramatiq broker and has actors of its own.

The host's ``tasks`` module is what its workers import (``dramatiq examples.own_broker.tasks``).
It builds the broker, installs dramatiq-preview on it with ``setup_broker`` (our middleware,
the three priority lanes and ``render_preview``), makes it the default broker, and declares
its own actors on it.  One worker process then runs both.

Run it from the repository root (see README.md next to this file)::

    dramatiq examples.own_broker.tasks --processes 1 --threads 2
    python -m examples.own_broker.send

``HOST_REDIS_URL`` is the broker's Redis (default: ``PREVIEW_REDIS_URL``); the job records
stay where ``PREVIEW_REDIS_URL`` says.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

import dramatiq_preview

logger = logging.getLogger("examples.own_broker")

redis_url = os.environ.get(
    "HOST_REDIS_URL", os.environ.get("PREVIEW_REDIS_URL", "redis://localhost:6379/0")
)
#: The host's broker, with a namespace of its own in Redis.
broker = RedisBroker(url=redis_url, namespace="host-app")
# Our middleware, lanes and actor go onto the host's broker (safe to call twice) ...
dramatiq_preview.setup_broker(broker)
# ... and it becomes the default broker for the host's own actors below.
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="host-default")
def thumbnail_ready(job_id: str) -> None:
    """The host's own work once a preview exists (here: log where its outputs are)."""
    status = dramatiq_preview.get_status(job_id)
    outputs = [o["path"] for o in (status["result"] or {}).get("outputs", [])]
    logger.warning("host actor: job %s is %s: %s", job_id, status["state"], " ".join(outputs))


def preview_and_notify(payload: dict[str, Any]) -> str:
    """Submit a preview, then chain the host's actor after it with a Dramatiq pipeline."""
    pipeline = dramatiq.pipeline(
        [
            dramatiq_preview.render_preview.message(payload),
            thumbnail_ready.message_with_options(args=(payload["jobId"],), pipe_ignore=True),
        ]
    )
    pipeline.run()
    return str(payload["jobId"])

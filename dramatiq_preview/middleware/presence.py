"""Presence: the registry of live worker processes that the health check reads.

A Redis broker records a heartbeat for every broker instance that talks to it, producers
(the web process sending jobs) included, so each worker process also keeps an entry in
``{ns}:workers`` (:func:`~dramatiq_preview.names.presence_key`), refreshed from a daemon
thread; :func:`dramatiq_preview.health.probe` counts a worker as live when both are fresh.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import dramatiq
import redis

from ..config import Settings, get_settings
from ..names import presence_key
from ..state import redis_client
from .periodic import PeriodicThread

logger = logging.getLogger("dramatiq_preview.health")


class Presence(dramatiq.Middleware):
    """Keep each worker process marked live in ``{ns}:workers`` while it runs.

    The health check counts a worker as live when this mark and its broker heartbeat are
    both fresh, so a web process that only sends jobs is never taken for a worker.

    Parameters:
      settings: the settings to use; by default the process-wide ones, read at boot.
    """

    def __init__(self, *, settings: Settings | None = None) -> None:
        self._settings = settings
        self._presence: WorkerPresence | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        settings = self._settings or get_settings()
        self._presence = WorkerPresence(
            redis_client(settings.redis_url),
            namespace=settings.namespace,
            worker_id=getattr(broker, "broker_id", None),
            heartbeat_timeout_ms=int(
                getattr(broker, "heartbeat_timeout", settings.broker_heartbeat_timeout_ms)
            ),
        ).start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._presence is not None:
            self._presence.stop()
            self._presence = None


class WorkerPresence(PeriodicThread):
    """Keep one worker process's entry in ``{ns}:workers`` fresh from a daemon thread.

    Parameters:
      client: the state store's Redis client.
      namespace: ``PREVIEW_NAMESPACE``.
      worker_id: the id the broker heartbeats under (``RedisBroker.broker_id``).
      heartbeat_timeout_ms: how old a beat may be for the worker to count as live; beats
        are sent four times per period, and entries older than ten periods are dropped.
    """

    name = "preview-presence"

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str,
        worker_id: str | None = None,
        heartbeat_timeout_ms: int = 60000,
    ) -> None:
        self.client = client
        self.key = presence_key(namespace)
        self.worker_id = worker_id or uuid.uuid4().hex
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        super().__init__()

    def beat(self) -> None:
        now = int(time.time() * 1000)
        keep = self.heartbeat_timeout_ms * 10
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self.key, {self.worker_id: now})
        pipe.zremrangebyscore(self.key, "-inf", now - keep)
        pipe.pexpire(self.key, keep)
        pipe.execute()

    def next_delay(self) -> float:
        return min(15.0, max(0.2, self.heartbeat_timeout_ms / 4000))

    def tick(self) -> None:
        try:
            self.beat()
        except redis.RedisError as exc:
            logger.debug("worker presence beat failed: %s", type(exc).__name__)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop beating and remove the entry, so a stopped worker stops counting at once."""
        super().stop(timeout)
        try:
            self.client.zrem(self.key, self.worker_id)
        except redis.RedisError as exc:
            logger.debug("could not remove worker presence: %s", type(exc).__name__)


__all__ = ["Presence", "WorkerPresence"]

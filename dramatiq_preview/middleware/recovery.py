"""Recovery: each worker process gives a dead worker's messages back to our queues, on time.

Dramatiq's ``RedisBroker`` gives back the unacked messages of a worker whose heartbeat is
older than ``heartbeat_timeout`` only during "maintenance", which runs inside a broker
command that draws it (``PREVIEW_BROKER_MAINTENANCE_CHANCE`` in a million) and only for that
command's queue: on an idle system, or with a low chance, a dead worker's jobs could wait
minutes.  So each worker process runs that maintenance itself, from a daemon thread, for
every lane and its delay queue (a dead worker's unacked messages are kept per queue), about
every half heartbeat timeout: a dead worker's messages are back in their queue at most
about 1.5 heartbeat timeouts after its last beat.  The call rides on a command that only
reads (:func:`~dramatiq_preview.fused_enqueue.run_maintenance`); other commands keep their
chance.  Each call also refreshes the worker's own heartbeat, so a worker whose consumers
are all busy is not taken for dead.

RabbitMQ needs none of this: it gives a consumer's unacknowledged messages back when its
connection closes.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterable
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name

from ..fused_enqueue import fused_enqueue_supported, run_maintenance
from ..names import QUEUES
from .periodic import PeriodicThread

logger = logging.getLogger("dramatiq_preview.recovery")

#: Bounds of the time between two maintenance rounds, in seconds.
MIN_INTERVAL = 1.0
MAX_INTERVAL = 30.0
#: Each wait is the interval shortened by up to this share, so that processes booted
#: together drift apart while no wait is ever longer than the interval.
JITTER = 0.2


class Recovery(dramatiq.Middleware):
    """Run the Redis broker's maintenance for our queues from a daemon thread of each worker
    process (see the module docstring).

    A no-op on any broker that is not a ``RedisBroker``, and on a Dramatiq major version
    whose broker layout we have not tested (it logs a warning once).

    Parameters:
      queues: the lanes to maintain, each with its delay queue; by default our three lanes.
    """

    def __init__(self, *, queues: Iterable[str] | None = None) -> None:
        lanes = QUEUES.values() if queues is None else queues
        self.queues = tuple(name for lane in lanes for name in (lane, dq_name(lane)))
        self._maintenance: PeriodicMaintenance | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        if not isinstance(broker, RedisBroker):
            # RabbitMQ gives a dead connection's messages back by itself.
            return
        if not fused_enqueue_supported():
            _warn_untested(dramatiq.__version__)
            return
        self._maintenance = PeriodicMaintenance(broker, self.queues).start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._maintenance is not None:
            self._maintenance.stop()
            self._maintenance = None


@functools.cache
def _warn_untested(version: str) -> None:
    logger.warning(
        "Dramatiq %s is not a version the broker maintenance was tested with: a dead "
        "worker's jobs come back only when Dramatiq's own maintenance runs",
        version,
    )


def maintenance_interval(heartbeat_timeout_ms: float) -> float:
    """Seconds between two maintenance rounds: half the heartbeat timeout, within
    :data:`MIN_INTERVAL` and :data:`MAX_INTERVAL`."""
    return min(MAX_INTERVAL, max(MIN_INTERVAL, heartbeat_timeout_ms / 2000))


class PeriodicMaintenance(PeriodicThread):
    """Run :func:`~dramatiq_preview.fused_enqueue.run_maintenance` on each of ``queues``
    from a daemon thread: first after a random part of the interval, then every interval
    (:func:`maintenance_interval` of the broker's heartbeat timeout) less a little jitter.

    Errors are logged (a warning when a run of failures starts, then at debug level until
    a round succeeds again); the thread carries on.

    Parameters:
      broker: the worker's ``RedisBroker``.
      queues: the queue names to maintain, delay queues included.
    """

    name = "preview-recovery"

    def __init__(self, broker: RedisBroker, queues: Iterable[str]) -> None:
        self.broker = broker
        self.queues = tuple(queues)
        self.interval = maintenance_interval(broker.heartbeat_timeout)
        self._failing = False
        super().__init__()

    def first_delay(self) -> float:
        return random.uniform(0, self.interval)  # noqa: S311

    def next_delay(self) -> float:
        return max(MIN_INTERVAL, self.interval * random.uniform(1 - JITTER, 1))  # noqa: S311

    def tick(self) -> None:
        self.run_once()

    def run_once(self) -> bool:
        """One round over every queue; whether it went through."""
        try:
            for queue_name in self.queues:
                run_maintenance(self.broker, queue_name)
        except Exception as exc:
            # Redis down or restarting: the next round tries again.  Anything else is a bug,
            # shown with its traceback once.
            if self._failing:
                logger.debug("broker maintenance failed again: %s", type(exc).__name__)
            else:
                logger.warning(
                    "broker maintenance failed: %s: %s; trying again every %g s",
                    type(exc).__name__,
                    exc,
                    self.interval,
                    exc_info=not isinstance(exc, redis.RedisError),
                )
            self._failing = True
            return False
        if self._failing:
            logger.info("broker maintenance works again")
            self._failing = False
        return True


__all__ = ["PeriodicMaintenance", "Recovery", "maintenance_interval"]

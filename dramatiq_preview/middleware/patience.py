"""Patience with the state store: the writes that start and end a delivery wait for Redis.

A delivery that cannot claim its job, or cannot record how it ended, must not be settled
as if it had: an acknowledged message whose record says ``running`` is a job lost for good
(issue #16).  So :func:`until_answered` tries such a write again, backing off from 0.2 s to
:data:`MAX_PAUSE`, for up to ``PREVIEW_STORE_RETRY_SECONDS`` in all, holding the worker
thread (and so the message, unacknowledged) meanwhile; only then does it give up and raise.

Dramatiq's ``TimeLimit`` would interrupt that wait with ``TimeLimitExceeded``: it limits the
actor, and its hooks run around ours.  :class:`TimeLimitPause` takes the current thread off
its watch while we wait (and gives the render its whole limit back after a claim that had
to wait).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import dramatiq
from dramatiq.middleware import TimeLimit

from ..errors import StateStoreUnavailable

logger = logging.getLogger("dramatiq_preview.patience")

_T = TypeVar("_T")

#: First pause after a failed try, and the longest one (the backoff doubles in between).
FIRST_PAUSE = 0.2
MAX_PAUSE = 2.0


def until_answered(
    call: Callable[[], _T],
    *,
    seconds: float,
    what: str,
    on_first_failure: Callable[[], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> _T:
    """``call()``, tried again while it raises :class:`StateStoreUnavailable`, for up to
    ``seconds`` from the first try (at least one try, whatever ``seconds``).

    Parameters:
      what: what the call does, for the log lines (``record succeeded for job x``).
      on_first_failure: called once, after the first failed try (before the first pause).
      sleep: how to pause (tests).

    Raises:
      StateStoreUnavailable: the store did not answer for ``seconds``; logged as an error
        (``could not {what}: Redis unavailable ...``).
    """
    deadline = time.monotonic() + seconds
    pause = FIRST_PAUSE
    tries = 0
    while True:
        try:
            result = call()
        except StateStoreUnavailable:
            tries += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.error(
                    "could not %s: Redis unavailable (%d tries over %g s)", what, tries, seconds
                )
                raise
            if tries == 1:
                logger.warning("%s: Redis unavailable; trying again for up to %g s", what, seconds)
                if on_first_failure is not None:
                    on_first_failure()
            sleep(min(pause, remaining))
            pause = min(pause * 2, MAX_PAUSE)
            continue
        if tries:
            logger.info("%s: done after %d failed tries", what, tries)
        return result


class TimeLimitPause:
    """Take the current worker thread off Dramatiq's ``TimeLimit`` watch, and put it back.

    A no-op on a broker without ``TimeLimit`` (or with one whose timeout manager this
    Dramatiq version does not have).

    Parameters:
      broker: the worker's broker.
    """

    def __init__(self, broker: dramatiq.Broker) -> None:
        limits = [m for m in broker.middleware if isinstance(m, TimeLimit)]
        self._limit: TimeLimit | None = limits[0] if limits else None

    def pause(self) -> None:
        """Stop watching the current thread (its ``TimeLimitExceeded`` will not come)."""
        manager = getattr(self._limit, "manager", None)
        if manager is not None:
            manager.remove_timeout(threading.get_ident())

    def restart(self, broker: dramatiq.Broker, message: Any) -> None:
        """Watch the current thread again with the message's whole time limit, as
        ``TimeLimit.before_process_message`` does."""
        limit = self._limit
        manager = getattr(limit, "manager", None)
        if limit is None or manager is None:
            return
        actor = broker.get_actor(message.actor_name)
        ms = message.options.get("time_limit") or actor.options.get("time_limit", limit.time_limit)
        manager.add_timeout(threading.get_ident(), ms)


__all__ = ["FIRST_PAUSE", "MAX_PAUSE", "TimeLimitPause", "until_answered"]

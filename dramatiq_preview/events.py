"""Job events: the one place where transitions become log lines and metric updates.

Middleware and the client call :func:`emit` on each transition; listeners (the logger below,
the Prometheus metrics of :mod:`dramatiq_preview.metrics`) subscribe with :func:`subscribe`.
A listener that is a bound method is held weakly, so a discarded metrics object stops
counting.  A failing listener is logged and never breaks job processing.
"""

from __future__ import annotations

import inspect
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

Listener = Callable[[str, dict[str, Any]], None]

_listeners: list[Callable[[], Listener | None]] = []
_lock = threading.Lock()
logger = logging.getLogger("dramatiq_preview.jobs")


def subscribe(listener: Listener) -> None:
    """Call ``listener(event, fields)`` on every job event (idempotent per listener).

    A bound method is held weakly: it is dropped when its object is garbage.
    """
    ref: Callable[[], Listener | None] = (
        weakref.WeakMethod(listener) if inspect.ismethod(listener) else _Strong(listener)
    )
    with _lock:
        if all(existing() != listener for existing in _listeners):
            _listeners.append(ref)


def emit(event: str, **fields: Any) -> None:
    """Publish a job event.  ``fields`` always include ``job_id`` when there is a job."""
    dead = False
    for ref in list(_listeners):
        listener = ref()
        if listener is None:
            dead = True
            continue
        try:
            listener(event, fields)
        except Exception:
            logger.exception("job event listener %r failed on %s", listener, event)
    if dead:
        with _lock:
            _listeners[:] = [ref for ref in _listeners if ref() is not None]


class _Strong:
    """A strong reference with the call shape of a weak one."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener

    def __call__(self) -> Listener:
        return self._listener


def _log(event: str, fields: dict[str, Any]) -> None:
    if event in ("duplicate", "storage"):
        return
    extra = {
        "job_id": fields.get("job_id"),
        "state": event,
        "attempt": fields.get("attempt"),
        "duration": round(float(fields.get("duration") or 0.0), 4),
    }
    error = fields.get("error")
    if error:
        extra["error_type"] = error.get("type")
        logger.info(
            "job %s %s (attempt %s, %.3fs): %s: %s",
            extra["job_id"],
            event,
            extra["attempt"],
            extra["duration"],
            error.get("type"),
            error.get("message"),
            extra={"preview": extra},
        )
        return
    logger.info(
        "job %s %s (attempt %s, %.3fs)",
        extra["job_id"],
        event,
        extra["attempt"],
        extra["duration"],
        extra={"preview": extra},
    )


subscribe(_log)

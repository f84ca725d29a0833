"""Job events: one place where transitions become log lines and metric updates.

Middleware call :func:`emit` on each transition; listeners (the logger below, the Prometheus
metrics of :mod:`dramatiq_preview.metrics`) subscribe with :func:`subscribe`.  A failing
listener is logged and never breaks job processing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

Listener = Callable[[str, dict[str, Any]], None]

_listeners: list[Listener] = []
logger = logging.getLogger("dramatiq_preview.jobs")


def subscribe(listener: Listener) -> None:
    """Call ``listener(event, fields)`` on every job event (idempotent per listener)."""
    if listener not in _listeners:
        _listeners.append(listener)


def emit(event: str, **fields: Any) -> None:
    """Publish a job event.  ``fields`` always include ``job_id`` when there is a job."""
    for listener in list(_listeners):
        try:
            listener(event, fields)
        except Exception:
            logger.exception("job event listener %r failed on %s", listener, event)


def _log(event: str, fields: dict[str, Any]) -> None:
    if event == "duplicate":
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

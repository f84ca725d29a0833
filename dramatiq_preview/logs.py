"""Log formatting: ``PREVIEW_LOG_FORMAT=text`` (Dramatiq's lines) or ``json`` (one object a line).

Every job transition is logged once by :mod:`dramatiq_preview.events` through the
``dramatiq_preview.jobs`` logger, with the job's fields in ``record.preview``.  In text
format they are in the message (``job abc succeeded (attempt 1, 0.412s)``); in JSON format
they are also top-level keys (``jobId``, ``state``, ``attempt``, ``durationSeconds``,
``errorType``).

Workers started with ``dramatiq`` apply the format in every worker process through the
:class:`~dramatiq_preview.middleware.log_format.LogFormat` middleware.  A web process (or
a worker started programmatically) owns its logging: call :func:`configure_logging` after
its own logging set-up, or put :class:`JsonFormatter` in its ``dictConfig``.

Whatever the format, the same middleware keeps job payloads (signed source URLs, metadata)
out of Dramatiq's own lines in every worker, in-process ones included: a ``render_preview``
message is printed as ``render_preview(jobId=..., message_id=...)``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

from .config import Settings, get_settings

#: ``record.preview`` keys and the JSON keys they become.
_PREVIEW_KEYS = {
    "job_id": "jobId",
    "state": "state",
    "attempt": "attempt",
    "duration": "durationSeconds",
    "error_type": "errorType",
}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object on one line.

    Keys: ``time`` (ISO 8601 UTC), ``level``, ``logger``, ``message``, ``process``,
    ``thread``, the job fields of ``record.preview`` when present, and ``exception`` (the
    formatted traceback, newlines escaped) when the record carries one.
    """

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        preview = getattr(record, "preview", None)
        if isinstance(preview, dict):
            for key, name in _PREVIEW_KEYS.items():
                if preview.get(key) is not None:
                    data[name] = preview[key]
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def configure_logging(
    log_format: str | Settings | None = None, *, logger: logging.Logger | None = None
) -> None:
    """Apply a log format to the handlers of ``logger`` (default: the root logger).

    ``json`` puts a :class:`JsonFormatter` on every handler (adding a stderr handler when
    there is none); ``text`` leaves the handlers alone.

    Parameters:
      log_format: ``"text"``, ``"json"``, or settings to read ``PREVIEW_LOG_FORMAT`` from;
        by default the process-wide settings.
      logger: the logger whose handlers to change.
    """
    if log_format is None:
        log_format = get_settings()
    if isinstance(log_format, Settings):
        log_format = log_format.log_format
    if log_format != "json":
        return
    target = logger or logging.getLogger()
    if not target.handlers:
        target.addHandler(logging.StreamHandler(sys.stderr))
    for handler in target.handlers:
        if not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(JsonFormatter())


__all__ = ["JsonFormatter", "configure_logging"]

"""Dramatiq middleware of dramatiq-preview, one idea per module (as Dramatiq's own).

* :class:`PayloadValidation` — rejects bad payloads at ``send()`` time and again on receipt.
* :class:`Idempotency` — one record per jobId, at most one successful render, poison pills.
* :class:`JobStatus` — records how each delivery ended, with the actor's result.
* :class:`RenderPool` — sizes and shuts down the per-process pool of render children.
* :class:`Metrics` — Dramatiq's ``Prometheus`` plus our job metrics (docs/observability.md).
* :class:`Presence` — the registry of live worker processes, for the health check.
* :class:`LogFormat` — ``PREVIEW_LOG_FORMAT`` in every worker process.
* :class:`Retention` — the periodic sweep of expired jobs' outputs, one worker at a time.
* :class:`Recovery` — a dead worker's messages back in our Redis queues on time.
* :class:`Orphans` — the message of a job left ``running``/``retrying`` with no delivery, put
  back (a render whose end could not be recorded while Redis was down, a refused retry).

They import only the layers below them (state, storage, rendering, observability, names);
:mod:`dramatiq_preview.broker` assembles them, never the reverse.
"""

from .idempotency import Idempotency
from .log_format import LogFormat
from .orphans import Orphans
from .presence import Presence
from .prometheus import Metrics
from .recovery import Recovery
from .render_pool import RenderPool
from .retention import Retention
from .status import JobStatus
from .validation import PayloadValidation

__all__ = [
    "Idempotency",
    "JobStatus",
    "LogFormat",
    "Metrics",
    "Orphans",
    "PayloadValidation",
    "Presence",
    "Recovery",
    "RenderPool",
    "Retention",
]

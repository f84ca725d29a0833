"""Dramatiq middleware of dramatiq-preview.

* :class:`PayloadValidation` — rejects bad payloads at ``send()`` time and again on receipt.
* :class:`Idempotency` — one record per jobId, at most one successful render, poison pills.
* :class:`JobStatus` — writes each job's terminal and retry transitions.
* :class:`RenderPool` — sizes and shuts down the per-process pool of render children.
* :class:`Metrics` — Dramatiq's ``Prometheus`` plus our job metrics (docs/observability.md).
* :class:`Presence` — marks a live worker process for the health check.
"""

from .idempotency import Idempotency
from .metrics import Metrics, Presence
from .render_pool import RenderPool
from .status import JobStatus
from .validation import PayloadValidation

__all__ = ["Idempotency", "JobStatus", "Metrics", "PayloadValidation", "Presence", "RenderPool"]

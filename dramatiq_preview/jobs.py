"""What one delivery of ``render_preview`` does: fetch the source, render, report.

Progress is reported through the job context the middleware opened (fetched 10 %, decoded
30 %, each output up to 90 %, 100 % when recorded as succeeded); each report is also a
cancellation checkpoint.  States are written by middleware, never here.
"""

from __future__ import annotations

import time
from typing import Any

from .config import get_settings
from .errors import JobCancelled
from .middleware.context import LeaseLost, current_job
from .middleware.render_pool import pool_size
from .models import JobSpec
from .storage import destinations, remove_outputs
from .validation import normalize, validate

PROGRESS_FETCHED = 10


def run_job(payload: dict[str, Any]) -> dict[str, Any] | None:
    """Render every output of ``payload``.

    Returns ``{"outputs": [...]}`` when called outside a worker.  In a worker it returns
    None and leaves the result in the job context for the status middleware.

    Raises:
      PermanentError: the job cannot succeed (bad payload, forbidden or broken source...).
      TransientError: the job may succeed on a later attempt.
    """
    from .rendering import get_renderer
    from .sources import open_source

    settings = get_settings()
    ctx = current_job()
    if ctx is None:
        # Called synchronously (``render_preview(payload)``), outside a worker delivery.
        validate(payload)
    spec = JobSpec.from_payload(normalize(payload) if ctx is None else _with_id(payload, ctx))
    deadline = ctx.deadline if ctx else time.monotonic() + settings.time_limit_ms / 1000
    checkpoint = ctx.checkpoint if ctx else None
    try:
        with open_source(spec, settings) as source:
            if checkpoint:
                checkpoint(PROGRESS_FETCHED)
            renderer = get_renderer(settings, processes=pool_size(settings))
            outputs = renderer.render(
                spec,
                source,
                destinations(settings.output_dir, spec),
                deadline=deadline,
                checkpoint=checkpoint,
            )
    except LeaseLost:
        # Another delivery owns the job now; its outputs are the same files, leave them.
        if ctx is not None:
            ctx.lease_lost = True
        return None
    except JobCancelled:
        remove_outputs(settings.output_dir, spec.job_id)
        if ctx is not None:
            ctx.cancelled = True
        return None
    result = {"outputs": [o.to_dict() for o in outputs]}
    if ctx is None:
        return result
    # In a worker the result travels to the status middleware through the job context:
    # returning it would make Dramatiq warn that no Results backend stores it.
    ctx.result = result
    return None


def _with_id(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    data = normalize(payload)
    data["jobId"] = ctx.job_id
    return data

"""What one delivery of ``render_preview`` does: fetch the source, render, report.

Progress is reported through the job context the middleware opened (fetched 10 %, decoded
30 %, each output up to 90 %, 100 % when recorded as succeeded); each report is also a
cancellation checkpoint.  States are written by middleware, never here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .config import get_settings
from .errors import JobCancelled
from .middleware.context import LeaseLost, current_job
from .middleware.render_pool import pool_size
from .models import JobSpec
from .storage import destinations, remove_outputs
from .validation import normalize, validate

PROGRESS_FETCHED = 10
#: What the renderer reports once the source is decoded.
PROGRESS_DECODED = 30


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
    clock = _StageClock(ctx.checkpoint if ctx else None)
    try:
        with open_source(spec, settings, deadline=deadline) as source:
            clock.fetched(PROGRESS_FETCHED)
            renderer = get_renderer(settings, processes=pool_size(settings))
            outputs = renderer.render(
                spec,
                source,
                destinations(settings.output_dir, spec),
                deadline=deadline,
                checkpoint=clock,
            )
            stats = {
                "input_format": source.format,
                "source_bytes": source.size,
                "stages": clock.stages(),
            }
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
    ctx.stats = stats
    return None


class _StageClock:
    """Times the stages of a render from its progress reports (for the render metrics),
    passing every report on to the job's checkpoint."""

    def __init__(self, checkpoint: Callable[[int | None], None] | None) -> None:
        self._checkpoint = checkpoint
        self._start = time.monotonic()
        self._marks: dict[str, float] = {}

    def fetched(self, percent: int) -> None:
        self._marks["fetch"] = time.monotonic()
        if self._checkpoint:
            self._checkpoint(percent)

    def __call__(self, percent: int | None) -> None:
        if percent is not None and percent >= PROGRESS_DECODED and "decode" not in self._marks:
            self._marks["decode"] = time.monotonic()
        if self._checkpoint:
            self._checkpoint(percent)

    def stages(self) -> dict[str, float]:
        """Seconds spent fetching, decoding, and resizing + encoding + writing."""
        end = time.monotonic()
        fetched = self._marks.get("fetch", self._start)
        decoded = self._marks.get("decode", fetched)
        return {
            "fetch": fetched - self._start,
            "decode": decoded - fetched,
            "encode": end - decoded,
        }


def _with_id(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    data = normalize(payload)
    data["jobId"] = ctx.job_id
    return data

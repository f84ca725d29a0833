"""What one delivery of ``render_preview`` does: fetch the source, render, return the result.

Progress is reported through the delivery the middleware opened (:mod:`.delivery`: fetched
10 %, decoded 30 %, each output up to 90 %, 100 % when recorded as succeeded); each report
is also a cancellation checkpoint.  The result is returned, and Dramatiq hands it to the
status middleware's ``after_process_message``; states are written by middleware, never here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .config import get_settings
from .delivery import JobContext, LeaseLost, current_job
from .errors import JobCancelled, OutputTooLarge, RenderOverrun, RenderTimeout, TooComplex
from .models import JobResult, JobSpec
from .rendering import get_renderer
from .sources import open_source
from .storage import destinations, remove_outputs
from .validation import new_job_id, validate

PROGRESS_FETCHED = 10
#: What the renderer reports once the source is decoded.
PROGRESS_DECODED = 30
#: A time limit is the source's own doing (an overrun: :class:`RenderOverrun`) when the
#: render itself had at least this share of the limit; less, and the time went elsewhere
#: (a slow fetch, a wait for a renderer), which says nothing about the source.
OVERRUN_SHARE = 0.5


def run_job(payload: dict[str, Any]) -> JobResult | None:
    """Render every output of ``payload``.

    Returns the result, or None when the delivery ended without one: the job was cancelled
    (its outputs are removed) or another delivery took it over.  In a worker the payload
    was validated on receipt (``PayloadValidation``); called directly, it is validated here.

    Raises:
      PermanentError: the job cannot succeed (bad payload, forbidden or broken source...);
        :class:`TooComplex` when its render runs past the time limit a second time.
      TransientError: the job may succeed on a later attempt; :class:`RenderOverrun` when
        the render itself ran past the time limit (the first time).
    """
    settings = get_settings()
    ctx = current_job()
    if ctx is None:
        # Called synchronously (``render_preview(payload)``), outside a worker delivery.
        validate(payload)
    spec = JobSpec.from_payload(payload, job_id=_job_id(payload, ctx))
    deadline = ctx.deadline if ctx else time.monotonic() + settings.time_limit_ms / 1000
    clock = _StageClock(ctx.checkpoint if ctx else None)
    try:
        with open_source(spec, settings, deadline=deadline) as source:
            clock.fetched(PROGRESS_FETCHED)
            renderer = get_renderer(settings)
            targets = destinations(settings.output_dir, spec)
            rendering = time.monotonic()
            try:
                outputs = renderer.render(
                    spec, source, targets, deadline=deadline, checkpoint=clock
                )
            except RenderTimeout as exc:
                # Time spent writing outputs (a slow S3) says nothing about the source.
                spent = time.monotonic() - rendering - targets.write_seconds
                if spent < OVERRUN_SHARE * settings.time_limit_ms / 1000:
                    raise
                if ctx is not None and ctx.overruns > 0:
                    raise TooComplex(
                        "the render ran past the time limit of "
                        f"{settings.time_limit_ms} ms again: the source is too complex to "
                        "render within it"
                    ) from None
                raise RenderOverrun(exc.message) from None
            stats = {
                "input_format": source.format,
                "source_bytes": source.size,
                "stages": clock.stages(),
            }
    except LeaseLost:
        # Another delivery owns the job now; its outputs are the same files, leave them.
        return None
    except JobCancelled:
        remove_outputs(settings.output_dir, spec.job_id)
        return None
    except OutputTooLarge:
        # The renderer deleted what it wrote; this also takes what an earlier delivery
        # left (and the job's directory): a job over the cap keeps none of its outputs.
        remove_outputs(settings.output_dir, spec.job_id)
        raise
    # None unless the job asked for one: the result then has no placeholder key at all.
    return JobResult([o.to_dict() for o in outputs], stats, placeholder=outputs[0].placeholder)


def _job_id(payload: dict[str, Any], ctx: JobContext | None) -> str:
    if ctx is not None:
        return ctx.job_id
    job_id = payload.get("jobId")
    return job_id if isinstance(job_id, str) else new_job_id()


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

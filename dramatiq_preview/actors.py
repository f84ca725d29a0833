"""The ``render_preview`` actor."""

from __future__ import annotations

from typing import Any

import dramatiq

from .broker import ACTOR_NAME, DEFAULT_QUEUE, PreviewActor, default_broker
from .config import get_settings
from .errors import PermanentError
from .jobs import run_job

_settings = get_settings()


@dramatiq.actor(
    actor_class=PreviewActor,
    actor_name=ACTOR_NAME,
    queue_name=DEFAULT_QUEUE,
    broker=default_broker(),
    max_retries=_settings.max_retries,
    min_backoff=_settings.min_backoff_ms,
    max_backoff=_settings.max_backoff_ms,
    time_limit=_settings.time_limit_ms,
    throws=(PermanentError,),
)
def render_preview(payload: dict[str, Any]) -> dict[str, Any] | None:
    """Render the outputs of one job payload (see schemas/preview-job.schema.json).

    Called directly (not through a worker) it returns the result (``{"outputs": [...]}``);
    in a worker the result is recorded in the job's status instead.
    Permanent errors are raised at once and never retried; transient ones are retried by
    Dramatiq's ``Retries`` with exponential backoff.
    """
    return run_job(payload)

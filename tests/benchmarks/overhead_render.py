"""The render every system of the issue-17 benchmark runs: one job payload, in this process.

The bare Dramatiq actor (:mod:`overhead_bare`), Celery (:mod:`overhead_celery`) and RQ all
call :func:`render`; it is what ``render_preview`` does minus the library around it (no
status, no idempotency, no render child): the same path guard, the same Wand engine
(``render_in_process``), the same output files (``{PREVIEW_OUTPUT_DIR}/{jobId}/0.webp``).
The settings come from the ``PREVIEW_*`` environment, as the full stack's do.
"""

from __future__ import annotations

from typing import Any

from dramatiq_preview.config import get_settings
from dramatiq_preview.models import JobSpec
from dramatiq_preview.rendering import render_in_process
from dramatiq_preview.sources import open_source
from dramatiq_preview.storage import destinations


def render(payload: dict[str, Any]) -> int:
    """Render every output of ``payload`` in this process; the number of outputs."""
    settings = get_settings()
    spec = JobSpec.from_payload(payload)
    with open_source(spec, settings) as source:
        outputs = render_in_process(spec, source, destinations(settings.output_dir, spec))
    return len(outputs)

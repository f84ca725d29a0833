"""RenderPool: ties the per-process pool of render children to the worker's lifetime."""

from __future__ import annotations

from typing import Any

import dramatiq

from ..config import Settings
from ..rendering import set_worker_threads, shutdown_renderer


class RenderPool(dramatiq.Middleware):
    """Size the render pool from the worker and close it when the worker stops.

    With ``PREVIEW_RENDER_PROCESSES=0`` (the default) each worker process keeps at most one
    render child per worker thread, started on first use.

    Parameters:
      settings: unused; accepted so that all our middleware share one constructor shape.
    """

    def __init__(self, *, settings: Settings | None = None) -> None:
        self.settings = settings

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        set_worker_threads(int(getattr(worker, "worker_threads", 1) or 1))

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        shutdown_renderer()

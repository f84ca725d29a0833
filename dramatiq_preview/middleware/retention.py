"""Retention: each worker process tries a retention sweep every ``PREVIEW_GC_INTERVAL_SECONDS``.

The sweep itself is :func:`dramatiq_preview.retention.sweep`; the lock
(``{ns}:gc:lock``, ``SET NX EX interval``) makes one worker of the whole fleet sweep per
interval, whichever takes it first.  Only worker processes sweep: the hooks below run in
``dramatiq`` workers, never in a web process that only sends jobs.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import dramatiq

from ..config import Settings, get_settings
from ..errors import PreviewError
from ..retention import lock_owner, sweep_if_due
from .periodic import PeriodicThread

logger = logging.getLogger("dramatiq_preview.retention")

#: The longest wait before a worker's first attempt: workers booting together spread out,
#: and a restarted fleet sweeps soon after rather than one interval later.
FIRST_ATTEMPT_MAX_DELAY = 10.0
#: The longest extra wait added to the interval between attempts.
MAX_JITTER = 60.0


class Retention(dramatiq.Middleware):
    """Run the retention sweep from a daemon thread of each worker process.

    ``PREVIEW_GC_INTERVAL_SECONDS=0`` starts no thread.

    Parameters:
      settings: the settings to use; by default the process-wide ones, read at boot.
    """

    def __init__(self, *, settings: Settings | None = None) -> None:
        self._settings = settings
        self._sweeper: PeriodicSweep | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        settings = self._settings or get_settings()
        if settings.gc_interval_seconds > 0:
            self._sweeper = PeriodicSweep(settings).start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None


class PeriodicSweep(PeriodicThread):
    """Try :func:`~dramatiq_preview.retention.sweep_if_due` from a daemon thread: first
    after a short random delay, then every interval plus a little jitter.

    The jitter only ever lengthens the wait, so a lone worker's next attempt comes after
    its own lock has expired.  Errors are logged; the thread carries on.

    Parameters:
      settings: ``gc_interval_seconds`` (> 0) and where to sweep.
    """

    name = "preview-retention"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.interval = float(settings.gc_interval_seconds)
        super().__init__()

    def first_delay(self) -> float:
        return random.uniform(0, min(self.interval, FIRST_ATTEMPT_MAX_DELAY))  # noqa: S311

    def next_delay(self) -> float:
        return self.interval + random.uniform(0, min(self.interval / 10, MAX_JITTER))  # noqa: S311

    def tick(self) -> None:
        # A sweep under way ends after the job it is on once the thread is stopped.
        self.attempt(lock_owner())

    def attempt(self, owner: str) -> None:
        """One try: sweep if the lock is free, log what was removed or what went wrong."""
        try:
            report = sweep_if_due(self.settings, owner=owner, stop=self.stopping)
        except PreviewError as exc:
            # Storage or Redis unreachable: the next interval tries again.
            logger.warning("retention sweep failed: %s", exc.message)
            return
        except Exception:
            logger.exception("retention sweep failed")
            return
        if report is None:
            logger.debug("retention sweep skipped: another worker holds the lock")
        elif report.outputs:
            logger.info(
                "retention sweep %s (%d job(s) checked)", report.summary(), report.jobs_checked
            )
        else:
            logger.debug(
                "retention sweep: nothing expired (%d job(s) checked)", report.jobs_checked
            )


__all__ = ["PeriodicSweep", "Retention"]

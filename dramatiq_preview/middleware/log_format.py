"""LogFormat: applies ``PREVIEW_LOG_FORMAT`` in each worker process (see :mod:`..logs`)."""

from __future__ import annotations

import dramatiq

from ..config import Settings, get_settings
from ..logs import configure_logging


class LogFormat(dramatiq.Middleware):
    """Apply ``PREVIEW_LOG_FORMAT`` in each worker process, right after Dramatiq set up logging.

    Only processes booted by the ``dramatiq`` command are changed; a host that starts a
    ``Worker`` itself keeps its own logging (see :func:`~dramatiq_preview.logs.configure_logging`).

    Parameters:
      settings: the settings to use; by default the process-wide ones, read at boot.
    """

    def __init__(self, *, settings: Settings | None = None) -> None:
        self._settings = settings

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        configure_logging(self._settings or get_settings())

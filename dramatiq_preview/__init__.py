"""dramatiq-preview: image and PDF previews rendered in Dramatiq background jobs.

Importing this package installs the ``render_preview`` actor on the host's Dramatiq broker,
or, when the host installed none, on a broker built from ``PREVIEW_BROKER_URL``.  It never
connects to Redis or the broker at import time.
"""

from __future__ import annotations

__version__ = "0.1.0"

import os as _os
import sys as _sys

from .errors import ConfigError as _ConfigError


def _running_the_command() -> bool:
    """True in the ``dramatiq-preview`` command (``python -m dramatiq_preview`` included)."""
    if _os.path.basename(_sys.argv[0]) == "dramatiq-preview":
        return True
    argv = list(getattr(_sys, "orig_argv", []))
    commands = (["-m", "dramatiq_preview"], ["-m", "dramatiq_preview.cli"])
    return any(argv[i : i + 2] in commands for i in range(len(argv)))


try:
    from .actors import render_preview
except _ConfigError:
    # In the command, `validate` needs no settings; the other subcommands import the actor
    # again and report the bad setting in one line (exit status 4).
    if not _running_the_command():
        raise
    render_preview = None  # type: ignore[assignment]
from .broker import QUEUES, build_broker, setup_broker
from .client import PreviewClient, Submission, cancel_preview, get_status, submit_preview
from .config import Settings, get_settings
from .errors import (
    ConfigError,
    InvalidPayload,
    JobConflict,
    JobNotFound,
    PermanentError,
    PreviewError,
    TransientError,
)
from .validation import load_schema, validate

__all__ = [
    "QUEUES",
    "ConfigError",
    "InvalidPayload",
    "JobConflict",
    "JobNotFound",
    "PermanentError",
    "PreviewClient",
    "PreviewError",
    "Settings",
    "Submission",
    "TransientError",
    "__version__",
    "build_broker",
    "cancel_preview",
    "get_settings",
    "get_status",
    "load_schema",
    "render_preview",
    "setup_broker",
    "submit_preview",
    "validate",
]

"""dramatiq-preview: image and PDF previews rendered in Dramatiq background jobs.

Importing this package does what ``dramatiq dramatiq_preview`` needs and no more: it reads
the ``PREVIEW_*`` settings (a malformed one raises ``ConfigError`` naming the variable) and
installs the ``render_preview`` actor on the host's Dramatiq broker, or, when the host
installed none, on a broker built from ``PREVIEW_BROKER_URL``.  It never connects to Redis
or the broker, and never imports Flask, Wand, prometheus_client or the render engine.
docs/architecture.md shows the layers.
"""

from __future__ import annotations

import os as _os
import sys as _sys

from ._version import __version__
from .errors import ConfigError as _ConfigError


def _running_the_command() -> bool:
    """True in the ``dramatiq-preview`` command (``python -m dramatiq_preview`` included)."""
    if _os.path.basename(_sys.argv[0]) == "dramatiq-preview":
        return True
    argv = list(getattr(_sys, "orig_argv", []))
    commands = (["-m", "dramatiq_preview"], ["-m", "dramatiq_preview.cli"])
    return any(argv[i : i + 2] in commands for i in range(len(argv)))


try:
    from .actors import render_preview, setup_broker
    from .webhooks import deliver_preview_webhook
except _ConfigError:
    # The one place a bad setting does not stop the import: the command's `validate` needs
    # no settings (contract §1), and its other subcommands report the bad setting in one
    # line (exit status 4) when they first need the settings.  A console script imports
    # this package before its own module, so only the command line can tell.
    if not _running_the_command():
        raise
    render_preview = None  # type: ignore[assignment]
    setup_broker = None  # type: ignore[assignment]
    deliver_preview_webhook = None  # type: ignore[assignment]
from .broker import build_broker
from .client import (
    PreviewClient,
    Submission,
    cancel_preview,
    get_status,
    submit_preview,
    wait_for_preview,
)
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
from .names import QUEUES
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
    "wait_for_preview",
]

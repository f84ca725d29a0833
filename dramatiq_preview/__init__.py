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

try:
    from .actors import render_preview
except _ConfigError as _exc:
    # The `dramatiq-preview` command prints a bad setting as one line, not a traceback.
    if _os.path.basename(_sys.argv[0]) == "dramatiq-preview":
        _sys.stderr.write(f"dramatiq-preview: configuration error: {_exc}\n")
        raise SystemExit(4) from None
    raise
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

"""The per-app state of dramatiq-preview on a Flask app: the bottom of the flask package.

``app.extensions["dramatiq_preview"]`` is the :class:`~.extension.PreviewExtension`, which
keeps one :class:`AppState` per app (keyed by the app, never holding it).  The views and the
OpenAPI generator find that state with :func:`get_state`; this module imports neither of
them, nor the extension, so that the flask package imports one way: ``appstate`` <-
``openapi`` <- ``views`` <- ``extension``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from flask import Flask, Request

from ..client import PreviewClient
from ..config import Settings
from ..metrics import WebMetrics

#: The key of ``app.extensions``.
EXTENSION_KEY = "dramatiq_preview"

#: The host's hook: ``authorize(request) -> bool``; False answers 403.
Authorize = Callable[[Request], bool]


@dataclass
class AppState:
    """What the views of one app need: its settings, client, mount point and caches."""

    settings: Settings
    client: PreviewClient
    authorize: Authorize | None
    #: Where the blueprint is mounted (``None`` until it is registered).
    url_prefix: str | None = None
    #: The endpoint prefix of the mounted blueprint (``dramatiq_preview.``).
    endpoint_prefix: str = ""
    openapi_cache: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _metrics: WebMetrics | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def under_prefix(self, path: str) -> bool:
        """Whether a request path (without ``SCRIPT_NAME``) belongs to our API."""
        prefix = self.url_prefix
        return prefix is not None and (path == prefix or path.startswith(prefix + "/"))

    @property
    def metrics(self) -> WebMetrics:
        """The web process's request counters and scrape-time gauges (built on first use)."""
        if self._metrics is None:
            with self._lock:
                if self._metrics is None:
                    self._metrics = WebMetrics(self.settings, self.client.broker)
        return self._metrics


@runtime_checkable
class StateOwner(Protocol):
    """What ``app.extensions[EXTENSION_KEY]`` holds: the keeper of the per-app states."""

    def state_of(self, app: Flask) -> AppState | None:
        """The state on ``app``, or None when it was not initialised there."""


def read_settings(app: Flask) -> Settings:
    """Parse ``PREVIEW_*`` from ``app.config`` over the environment, and record the result.

    Each key missing from ``app.config`` is set to its effective value, so that the app's
    configuration shows what the extension runs with.

    Raises:
      ConfigError: a value is malformed; the message names the variable.
    """
    settings = Settings.from_mapping(app.config, os.environ)
    for name, env_name in settings.env_names().items():
        app.config.setdefault(env_name, getattr(settings, name))
    return settings


def get_state(app: Flask) -> AppState | None:
    """The state of dramatiq-preview on ``app``, or None when it is not registered there."""
    owner = app.extensions.get(EXTENSION_KEY)
    if not isinstance(owner, StateOwner):
        return None
    return owner.state_of(app)

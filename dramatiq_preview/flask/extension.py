"""``PreviewExtension``: mounts the HTTP API of dramatiq-preview on a Flask app.

>>> app = Flask(__name__)
>>> preview = PreviewExtension(app)           # or PreviewExtension() + preview.init_app(app)

The extension reads the ``PREVIEW_*`` settings once, when it is initialised on an app:
``app.config`` keys win over the environment, and every key is then ``setdefault`` in
``app.config`` with its effective value.  Per-app state lives in the extension, keyed by the
app (never ``self.app``), and ``app.extensions["dramatiq_preview"]`` is the extension.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

from ..client import PreviewClient
from ..config import Settings

if TYPE_CHECKING:
    from flask import Request

    from ..metrics import WebMetrics

#: The key of ``app.extensions``.
EXTENSION_KEY = "dramatiq_preview"

Authorize = Callable[["Request"], bool]


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
                    from ..metrics import WebMetrics

                    self._metrics = WebMetrics(self.settings, self.client.broker)
        return self._metrics


class PreviewExtension:
    """The dramatiq-preview HTTP API as a Flask extension.

    Parameters:
      app: initialise on this app at once (otherwise call :meth:`init_app` later).
      authorize: ``authorize(request) -> bool`` decides on every request but the health
        check (after the bearer token, when ``PREVIEW_API_TOKEN`` is set); False gives 403.
    """

    def __init__(self, app: Flask | None = None, *, authorize: Authorize | None = None) -> None:
        self.authorize = authorize
        self._states: weakref.WeakKeyDictionary[Flask, AppState] = weakref.WeakKeyDictionary()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, *, register_blueprint: bool = True) -> None:
        """Read the settings, create the job client and mount the blueprint on ``app``.

        Parameters:
          app: the Flask app.
          register_blueprint: False when the host registers :func:`create_blueprint` itself
            (at its own ``url_prefix``).

        Raises:
          RuntimeError: dramatiq-preview is already registered on this app.
          ConfigError: a ``PREVIEW_*`` setting is malformed; the message names it.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "dramatiq-preview is already registered on this app; a PreviewExtension "
                "(or the blueprint of create_blueprint()) can be set up only once per app"
            )
        settings = read_settings(app)
        self._states[app] = AppState(
            settings=settings, client=PreviewClient(settings), authorize=self.authorize
        )
        app.extensions[EXTENSION_KEY] = self
        if register_blueprint:
            from .views import create_blueprint

            app.register_blueprint(create_blueprint(), url_prefix=settings.url_prefix)

    def state(self, app: Flask | None = None) -> AppState:
        """The per-app state (of the current app by default).

        Raises:
          RuntimeError: the extension was not initialised on that app.
        """
        target = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            return self._states[target]
        except KeyError:
            raise RuntimeError(
                "PreviewExtension is not initialised on this app; call init_app(app) first"
            ) from None

    @property
    def settings(self) -> Settings:
        """The settings of the current app."""
        return self.state().settings

    @property
    def client(self) -> PreviewClient:
        """The job client of the current app (submit, status and cancel from Python)."""
        return self.state().client


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
    ext = app.extensions.get(EXTENSION_KEY)
    if not isinstance(ext, PreviewExtension):
        return None
    return ext._states.get(app)

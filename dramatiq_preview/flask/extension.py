"""``PreviewExtension`` and ``create_blueprint``: mount the HTTP API of dramatiq-preview on an app.

>>> app = Flask(__name__)
>>> preview = PreviewExtension(app)           # or PreviewExtension() + preview.init_app(app)

The extension reads the ``PREVIEW_*`` settings once, when it is initialised on an app:
``app.config`` keys win over the environment, and every key is then ``setdefault`` in
``app.config`` with its effective value.  Per-app state lives in the extension, keyed by the
app (never ``self.app``), and ``app.extensions["dramatiq_preview"]`` is the extension.

The blueprint is assembled here rather than in :mod:`.views` because registering it on an
app without an extension creates one: the views stay below the extension.
"""

from __future__ import annotations

import weakref
from typing import cast

from flask import Blueprint, Flask, current_app
from flask.blueprints import BlueprintSetupState

from ..client import PreviewClient
from ..config import Settings
from . import dashboard, views
from .appstate import EXTENSION_KEY, AppState, Authorize, get_state, read_settings


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
            app.register_blueprint(create_blueprint(), url_prefix=settings.url_prefix)

    def state_of(self, app: Flask) -> AppState | None:
        """The per-app state on ``app``, or None when the extension was not initialised there."""
        return self._states.get(app)

    def state(self, app: Flask | None = None) -> AppState:
        """The per-app state (of the current app by default).

        Raises:
          RuntimeError: the extension was not initialised on that app.
        """
        target = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
        state = self.state_of(target)
        if state is None:
            raise RuntimeError(
                "PreviewExtension is not initialised on this app; call init_app(app) first"
            )
        return state

    @property
    def settings(self) -> Settings:
        """The settings of the current app."""
        return self.state().settings

    @property
    def client(self) -> PreviewClient:
        """The job client of the current app (submit, status and cancel from Python)."""
        return self.state().client


def create_blueprint() -> Blueprint:
    """The blueprint of the HTTP API, for hosts that register it themselves.

    >>> app.register_blueprint(create_blueprint(), url_prefix="/previews")

    Registered on an app without a :class:`PreviewExtension`, it creates one (without an
    ``authorize`` hook) from ``app.config``; registered without ``url_prefix``, it mounts at
    ``PREVIEW_URL_PREFIX``.  It can be mounted once per app.
    """
    bp = Blueprint("dramatiq_preview", views.__name__)
    # Must run before the routes are added: it may fill in the url_prefix they use.
    bp.record_once(_on_register)
    views.add_routes(bp)
    # Added at registration, on apps whose PREVIEW_DASHBOARD is true.
    dashboard.add_routes(bp)
    return bp


def _on_register(setup: BlueprintSetupState) -> None:
    app = cast(Flask, setup.app)
    state = get_state(app)
    if state is None:
        PreviewExtension().init_app(app, register_blueprint=False)
        state = get_state(app)
        assert state is not None
    if state.url_prefix is not None:
        raise RuntimeError(
            f"the dramatiq-preview blueprint is already mounted at {state.url_prefix!r} on "
            "this app; it can be mounted only once"
        )
    prefix = (setup.url_prefix or state.settings.url_prefix).rstrip("/")
    if not prefix:
        raise ValueError("the dramatiq-preview blueprint needs a url_prefix other than '/'")
    setup.url_prefix = prefix
    state.url_prefix = prefix
    state.endpoint_prefix = f"{setup.name_prefix}.{setup.name}.".lstrip(".")

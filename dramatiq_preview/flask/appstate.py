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
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from flask import Flask, Request

from ..client import PreviewClient
from ..config import Settings
from ..metrics import WebMetrics

#: The key of ``app.extensions``.
EXTENSION_KEY = "dramatiq_preview"

#: The host's hook: ``authorize(request) -> bool``; False answers 403.
Authorize = Callable[[Request], bool]

#: How many serialised OpenAPI documents an app keeps, one per server URL.
OPENAPI_CACHE_SIZE = 8

K = TypeVar("K")
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """A thread-safe mapping that keeps its ``maxsize`` most recently used entries.

    For values keyed by what a client sends: however many keys come, it holds ``maxsize``.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now the most recently used), or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        """Store ``value`` under ``key``, dropping the least recently used entry if full."""
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


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
    #: The OpenAPI document, built once, without its server URL: that URL starts with
    #: ``SCRIPT_NAME``, which a client can choose (a header under gunicorn,
    #: ``X-Forwarded-Prefix`` behind ProxyFix), so it is filled in per request.
    openapi_base: dict[str, Any] | None = None
    #: The serialised documents of the last few server URLs: bounded, whatever clients send.
    openapi_cache: LruCache[str, str] = field(default_factory=lambda: LruCache(OPENAPI_CACHE_SIZE))
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

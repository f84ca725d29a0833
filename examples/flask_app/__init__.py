"""An example host app: an app factory that mounts the dramatiq-preview HTTP API.

Run it (see README.md next to this file)::

    flask --app examples.flask_app run
    gunicorn --workers 2 --threads 4 'examples.flask_app:create_app()'

Every ``PREVIEW_*`` setting comes from the environment unless ``config`` overrides it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, url_for
from werkzeug.middleware.proxy_fix import ProxyFix

from dramatiq_preview.flask import PreviewExtension

#: One extension object for every app the factory makes (it keeps no reference to them).
preview = PreviewExtension()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the host app.

    Parameters:
      config: extra ``app.config`` values, e.g. ``{"PREVIEW_URL_PREFIX": "/previews"}``;
        they win over the environment.  ``BEHIND_PROXY=True`` trusts one proxy's
        ``X-Forwarded-*`` headers (including ``X-Forwarded-Prefix``) for the URLs the API
        returns.
    """
    app = Flask(__name__)
    # FLASK_* variables (e.g. FLASK_BEHIND_PROXY=true) configure the host, as usual.
    app.config.from_prefixed_env()
    app.config.update(config or {})
    preview.init_app(app)
    if app.config.get("BEHIND_PROXY"):
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_prefix=1)  # type: ignore[method-assign]

    @app.get("/")
    def index() -> dict[str, str]:
        """The host's own page: where the preview API lives."""
        return {
            "openapi": url_for("dramatiq_preview.openapi"),
            "submit": url_for("dramatiq_preview.submit_job"),
            "health": url_for("dramatiq_preview.worker_health"),
        }

    return app

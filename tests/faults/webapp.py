"""The web process of the live-server scenarios: the app gunicorn serves.

    gunicorn --chdir tests/faults 'webapp:create_app()'

Its settings come from the environment (``PREVIEW_*``), as in a deployment.  It imports
nothing of the test-suite: ``support`` (which the harness imports) clears ``PREVIEW_*`` from
the environment of any process that imports it.
"""

from __future__ import annotations

import os

from flask import Flask

from dramatiq_preview.flask import PreviewExtension


def create_app() -> Flask:
    """A host app with the extension at its default prefix, configured from the environment
    (``FAULTS_SECRET_KEY``: the app's ``SECRET_KEY``, one for every gunicorn worker, which
    the dashboard's session cookie needs with ``PREVIEW_API_TOKEN``)."""
    app = Flask("faults-live")
    app.config["SECRET_KEY"] = os.environ["FAULTS_SECRET_KEY"]
    PreviewExtension(app)
    return app

"""The HTTP API of dramatiq-preview as a Flask extension (contract §1 and §5).

>>> from dramatiq_preview.flask import PreviewExtension
>>> preview = PreviewExtension()
>>> def create_app():
...     app = Flask(__name__)
...     preview.init_app(app)        # mounts the blueprint at PREVIEW_URL_PREFIX
...     return app

Importing this package never imports Wand: the web process does not need ImageMagick.
"""

from __future__ import annotations

from .extension import PreviewExtension, create_blueprint

__all__ = ["PreviewExtension", "create_blueprint"]

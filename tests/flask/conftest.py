"""Fixtures shared by the HTTP tests: an app on the idle namespace and its test client."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient
from preview_http import IDLE_NAMESPACE, make_app


@pytest.fixture
def app() -> Flask:
    return make_app(PREVIEW_NAMESPACE=IDLE_NAMESPACE)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()

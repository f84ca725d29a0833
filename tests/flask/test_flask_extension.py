"""Registering the extension: app factories, self-registered blueprints, configuration."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from flask import Blueprint, Flask
from preview_http import IDLE_NAMESPACE, PREFIX, job

from dramatiq_preview import ConfigError, PreviewClient, Settings
from dramatiq_preview.flask import PreviewExtension, create_blueprint
from dramatiq_preview.flask.appstate import get_state


def test_one_extension_serves_several_apps_made_by_a_factory() -> None:
    # Given one extension object and a factory that initialises it on each new app
    preview = PreviewExtension()

    def create_app(prefix: str) -> Flask:
        app = Flask("factory")
        app.config.update(PREVIEW_URL_PREFIX=prefix, PREVIEW_NAMESPACE=IDLE_NAMESPACE)
        preview.init_app(app)
        return app

    first, second = create_app("/one"), create_app("/two")
    # Then each app has its own mount point and settings, and the extension keeps no app
    assert first.extensions["dramatiq_preview"] is preview
    assert second.extensions["dramatiq_preview"] is preview
    assert not hasattr(preview, "app")
    assert first.test_client().post("/one/job", json=job()).status_code == 202
    assert second.test_client().post("/two/job", json=job()).status_code == 202
    assert first.test_client().post("/two/job", json=job()).status_code == 404
    with first.app_context():
        assert preview.settings.url_prefix == "/one"
        assert isinstance(preview.client, PreviewClient)
    with second.app_context():
        assert preview.settings.url_prefix == "/two"


def test_the_extension_can_be_given_the_app_directly() -> None:
    app = Flask("direct")
    preview = PreviewExtension(app)
    assert app.extensions["dramatiq_preview"] is preview
    assert app.test_client().get(f"{PREFIX}/worker/health").status_code == 200


def test_a_second_registration_on_the_same_app_is_a_clear_error() -> None:
    app = Flask("twice")
    preview = PreviewExtension(app)
    with pytest.raises(RuntimeError, match="already registered on this app"):
        preview.init_app(app)
    with pytest.raises(RuntimeError, match="already registered on this app"):
        PreviewExtension(app)


def test_the_blueprint_cannot_be_mounted_twice() -> None:
    app = Flask("twice")
    PreviewExtension(app)
    with pytest.raises(ValueError, match="already registered"):
        app.register_blueprint(create_blueprint(), url_prefix="/again")
    other = Flask("twice-renamed")
    PreviewExtension(other)
    with pytest.raises(RuntimeError, match="already mounted at '/api/preview'"):
        other.register_blueprint(create_blueprint(), url_prefix="/again", name="again")


def test_using_the_extension_on_an_app_it_was_not_initialised_on_is_an_error() -> None:
    preview = PreviewExtension()
    with Flask("bare").app_context(), pytest.raises(RuntimeError, match="init_app"):
        preview.settings  # noqa: B018


def test_a_host_can_register_the_blueprint_itself_at_its_own_prefix() -> None:
    # Given a host that registers the blueprint at its own prefix, without the extension
    app = Flask("self-registered")
    app.config["PREVIEW_NAMESPACE"] = IDLE_NAMESPACE
    app.register_blueprint(create_blueprint(), url_prefix="/previews/")
    client = app.test_client()
    # Then the API lives there, with URLs and JSON errors to match
    response = client.post("/previews/job", json=job())
    assert response.status_code == 202
    assert response.json["statusUrl"].startswith("/previews/job/")
    assert client.get("/previews/nothing").json["error"] == "not_found"
    assert client.get(f"{PREFIX}/worker/health").mimetype == "text/html"
    assert isinstance(app.extensions["dramatiq_preview"], PreviewExtension)


def test_a_self_registered_blueprint_takes_the_configured_prefix_by_default() -> None:
    app = Flask("self-registered")
    app.config["PREVIEW_URL_PREFIX"] = "/from-config"
    app.register_blueprint(create_blueprint())
    assert app.test_client().get("/from-config/worker/health").status_code == 200


def test_a_host_can_keep_its_authorize_hook_and_register_the_blueprint_itself() -> None:
    app = Flask("self-registered")
    app.config["PREVIEW_NAMESPACE"] = IDLE_NAMESPACE
    PreviewExtension(authorize=lambda request: False).init_app(app, register_blueprint=False)
    app.register_blueprint(create_blueprint(), url_prefix="/mine")
    assert app.test_client().post("/mine/job", json=job()).json["error"] == "forbidden"


def test_the_blueprint_can_be_nested_in_a_host_blueprint() -> None:
    app = Flask("nested")
    app.config["PREVIEW_NAMESPACE"] = IDLE_NAMESPACE
    api = Blueprint("api", __name__)
    api.register_blueprint(create_blueprint(), url_prefix="/preview")
    app.register_blueprint(api, url_prefix="/api/v1")
    client = app.test_client()
    response = client.post("/api/v1/preview/job", json=job())
    assert response.status_code == 202
    assert response.json["statusUrl"].startswith("/api/v1/preview/job/")
    assert client.get("/api/v1/preview/nope").json["error"] == "not_found"
    assert "/job" in client.get("/api/v1/preview/openapi.json").json["paths"]


def test_the_root_is_not_a_valid_mount_point() -> None:
    with pytest.raises(ValueError, match="other than '/'"):
        Flask("root").register_blueprint(create_blueprint(), url_prefix="/")


# --- configuration ------------------------------------------------------------------------


def test_app_config_wins_over_the_environment_which_fills_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a setting in both places and another only in the environment
    monkeypatch.setenv("PREVIEW_URL_PREFIX", "/from-env")
    monkeypatch.setenv("PREVIEW_MAX_PAYLOAD_BYTES", "1000")
    app = Flask("config")
    app.config["PREVIEW_URL_PREFIX"] = "/from-config"
    # When the extension is initialised
    PreviewExtension(app)
    state = get_state(app)
    assert state is not None
    # Then app.config won, the environment filled in, and app.config shows what is used
    assert state.settings.url_prefix == "/from-config"
    assert state.settings.max_payload_bytes == 1000
    assert app.config["PREVIEW_URL_PREFIX"] == "/from-config"
    assert app.config["PREVIEW_MAX_PAYLOAD_BYTES"] == 1000
    assert app.config["PREVIEW_REDIS_URL"] == os.environ["PREVIEW_REDIS_URL"]
    assert app.config["PREVIEW_API_TOKEN"] is None
    assert all(name in app.config for name in Settings().env_names().values())


def test_settings_are_read_once_at_init(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Flask("config")
    PreviewExtension(app)
    app.config["PREVIEW_URL_PREFIX"] = "/later"
    monkeypatch.setenv("PREVIEW_URL_PREFIX", "/later-too")
    assert app.test_client().get(f"{PREFIX}/worker/health").status_code == 200


def test_typed_values_in_app_config_are_accepted() -> None:
    app = Flask("config")
    app.config.update(
        PREVIEW_MAX_PAYLOAD_BYTES=4096,
        PREVIEW_ALLOW_PRIVATE_NETWORKS=True,
        PREVIEW_OUTPUT_DIR=Path("/tmp/previews-typed"),
        PREVIEW_ALLOWED_URL_HOSTS=["a.example", "b.example"],
    )
    PreviewExtension(app)
    state = get_state(app)
    assert state is not None
    assert state.settings.max_payload_bytes == 4096
    assert state.settings.allowed_url_hosts == {"a.example", "b.example"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PREVIEW_MAX_PAYLOAD_BYTES", "lots"),
        ("PREVIEW_URL_PREFIX", "no-slash"),
        ("PREVIEW_REDIS_URL", "http://x"),
        ("PREVIEW_API_TOKEN", "short"),
    ],
)
def test_a_bad_setting_stops_start_up_naming_the_variable(name: str, value: str) -> None:
    app = Flask("bad-config")
    app.config[name] = value
    with pytest.raises(ConfigError, match=f"^{name}: "):
        PreviewExtension(app)
    assert "dramatiq_preview" not in app.extensions


def test_importing_the_extension_never_loads_wand() -> None:
    # Given a fresh interpreter that builds an app and answers a request
    code = """
        import sys
        from flask import Flask
        from dramatiq_preview.flask import PreviewExtension, create_blueprint
        app = Flask("web")
        PreviewExtension(app)
        app.test_client().get("/api/preview/openapi.json")
        loaded = sorted(m for m in sys.modules if m == "wand" or m.startswith("wand."))
        print(loaded)
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    # Then Wand was never imported
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

"""The documentation site: it builds with no warning, and its generated references are whole.

`mkdocs build --strict` runs the hooks of scripts/docs_hooks.py, which write the configuration
reference from dramatiq_preview/config.py and the HTTP reference from the OpenAPI document;
these tests check the built pages against the code they come from.
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support import REPO

from dramatiq_preview.config import ENV_NAMES

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def load_script(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_loader(name, loader=None, origin=str(path))
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    # dataclasses look the module up by name while the script runs
    sys.modules[name] = module
    exec(compile(path.read_text(), str(path), "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as `make docs` builds it, into a temporary directory."""
    out = tmp_path_factory.mktemp("site")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREVIEW_")}
    env["NO_MKDOCS_2_WARNING"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Then it built with no warning (--strict turns each into a failure)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def document(site: Path) -> dict[str, Any]:
    """The OpenAPI document shipped with the site."""
    data: dict[str, Any] = json.loads((site / "reference" / "openapi.json").read_text())
    return data


def test_the_configuration_reference_lists_every_setting(site: Path) -> None:
    page = html.unescape((site / "configuration" / "index.html").read_text())
    # Every PREVIEW_* that config.py parses has its row, with an anchor to link to
    missing = [name for name in ENV_NAMES if f'id="{name}"' not in page]
    assert missing == []
    # and no row the code does not define
    rows = set(re.findall(r'<code id="(PREVIEW_\w+)">', page))
    assert rows == set(ENV_NAMES)


def test_the_http_reference_lists_every_route_of_the_openapi_document(
    site: Path, document: dict[str, Any]
) -> None:
    page = html.unescape((site / "reference" / "http-api" / "index.html").read_text())
    routes = [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    ]
    assert len(routes) >= 8
    missing = [f"{m} {p}" for m, p in routes if f"{m} {p}" not in page]
    assert missing == []
    # Every schema the routes refer to is described
    for name in document["components"]["schemas"]:
        assert f'id="schema-{name.lower()}"' in page, name


def test_the_shipped_document_is_the_one_the_app_serves(document: dict[str, Any]) -> None:
    # Given the routes the Flask extension registers
    from flask import Flask

    from dramatiq_preview.flask import PreviewExtension

    app = Flask("routes")
    app.config.update(PREVIEW_DASHBOARD=True, SECRET_KEY="x" * 32)
    PreviewExtension(app)
    with app.test_client() as client:
        served = client.get("/api/preview/openapi.json").get_json()
    # Then the site's document has each of them
    assert set(served["paths"]) <= set(document["paths"])


def test_a_setting_without_a_docstring_stops_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    from mkdocs.exceptions import PluginError

    hooks = load_script("docs_hooks", REPO / "scripts" / "docs_hooks.py")
    real = hooks.field_docstrings

    def without_one(source: str, class_name: str = "Settings") -> dict[str, str]:
        docs: dict[str, str] = real(source, class_name)
        docs.pop("max_retries")
        return docs

    # Given a setting whose Settings field has lost its docstring
    monkeypatch.setattr(hooks, "field_docstrings", without_one)
    # When the reference is generated, Then the build stops and names the setting
    with pytest.raises(PluginError, match="PREVIEW_MAX_RETRIES is not documented"):
        hooks.settings_reference()


def test_every_shell_block_of_the_site_is_run_tested_or_marked_not_run() -> None:
    # The markers only: `make docs-check` runs the blocks (it needs root for its namespaces)
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "docs-check"), "--list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    unmarked = [line for line in result.stdout.splitlines() if line.endswith("NO MARKER")]
    assert unmarked == []
    docs_check = load_script("docs_check", REPO / "scripts" / "docs-check")
    pages = [docs_check.read_page(p) for p in sorted((REPO / "docs").rglob("*.md"))]
    assert [problem for page in pages for problem in docs_check.problems(page)] == []

"""MkDocs hooks: the reference pages that are generated from the code when the site is built.

* The configuration reference: ``<!-- settings-reference -->`` in docs/configuration.md
  becomes a table of every ``PREVIEW_*`` setting of ``dramatiq_preview.config`` (its
  ``_SPECS``), with the type and bounds its parser accepts, its default (the ``Settings``
  field's, or the field docstring's ``Default:`` paragraph) and its effect (the rest of the
  field's docstring).  A setting whose field has no docstring stops the build.
* The HTTP API reference: ``reference/http-api.md`` is written from the OpenAPI document
  that ``dramatiq_preview.flask.openapi`` builds for an app with every option on, and that
  document is shipped beside it as ``reference/openapi.json``.
* The changelog: CHANGELOG.md at the repository root, as ``changelog.md``.
* Links from a page to files of the repository outside docs/ (``../examples/...``), which
  work where GitHub shows the Markdown, point at the file on GitHub (``repo_url``).

mkdocs.yml names this file under ``hooks:``; ``make docs`` builds the site with it.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
from collections.abc import Iterator
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_MARKER = "<!-- settings-reference -->"
#: A relative Markdown link that goes up: ``](../examples/x.py)``, ``](../schemas/)``.
_OUTSIDE_LINK = re.compile(r"\]\((\.\./[^)#\s]*)((?:#[^)\s]*)?)\)")
HTTP_REFERENCE = "reference/http-api.md"
OPENAPI_JSON = "reference/openapi.json"
#: The app whose OpenAPI document the reference shows: every option that adds to it is on.
DOCS_APP_CONFIG = {
    "PREVIEW_API_TOKEN": "documentation-token-0123456789",
    "PREVIEW_OUTPUT_DIR": "s3://example-previews",
    "PREVIEW_OUTPUT_URL_TTL_SECONDS": 900,
    "PREVIEW_WEBHOOK_ALLOWED_HOSTS": "hooks.example.com",
    "PREVIEW_WEBHOOK_SECRET": "whsec_" + "A" * 44,
    "PREVIEW_DASHBOARD": True,
    # The dashboard's session cookie is signed with it when a token is set.
    "SECRET_KEY": "documentation-secret-key-0123456789abcdef",
}
_URL_SCHEMES = ("redis", "rediss", "unix", "amqp", "amqps", "http", "https", "s3")
#: Types of the settings whose parser says nothing more than its name.
_PARSER_TYPES = {
    "_parse_bool": "boolean (`true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`)",
    "_parse_hosts": "comma-separated host names or IP literals",
    "_root": "directory or `s3://bucket[/prefix]`",
    "_path": "directory",
    "_namespace": "1 to 64 of `A-Z a-z 0-9 _ . : -`",
    "_prefix": "URL path",
    "_webhook_secret": "`whsec_` + base64 of 24 to 64 bytes",
    "_token": "string of 16 characters or more",
}


# -- The configuration reference -------------------------------------------------------------


def field_docstrings(source: str, class_name: str = "Settings") -> dict[str, str]:
    """The attribute docstrings of a class: the string literal right below each field."""
    tree = ast.parse(source)
    (cls,) = (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    docs: dict[str, str] = {}
    for stmt, after in zip(cls.body, [*cls.body[1:], None], strict=True):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        if (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _setting_type(env: str, parse: Any, annotation: str) -> str:
    """What the parser of a setting accepts, read from the parser itself."""
    code = getattr(parse, "__code__", None)
    names = set(code.co_names) if code else set()
    nonlocals = inspect.getclosurevars(parse).nonlocals if code else {}
    if "_parse_int" in names and "low" in nonlocals:
        low, high = nonlocals["low"], nonlocals.get("high")
        return f"integer, {low} to {high}" if high is not None else f"integer >= {low}"
    if "choices" in nonlocals:
        return "one of " + ", ".join(f"`{c}`" for c in nonlocals["choices"])
    if "_parse_url" in names:
        accepted = []
        for scheme in _URL_SCHEMES:
            try:
                parse(env, f"{scheme}://localhost/")
            except Exception:  # noqa: S112 - a refused scheme is what is being probed
                continue
            accepted.append(f"`{scheme}://`")
        return "URL: " + ", ".join(accepted)
    name = getattr(parse, "__name__", "")
    return _PARSER_TYPES.get(name, f"`{annotation}`")


def _humane(env: str, value: int) -> str:
    """A unit next to a large number: 52428800 bytes is 50 MiB, 604800 seconds 7 days."""
    units: list[tuple[int, str]] = []
    if env.endswith("_BYTES"):
        units = [(1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")]
    elif env.endswith("_SECONDS"):
        units = [(86400, "days"), (3600, "h"), (60, "min")]
    elif env.endswith("_MS"):
        units = [(3_600_000, "h"), (60_000, "min"), (1000, "s")]
    for size, unit in units:
        if value >= size and value % size == 0:
            amount = value // size
            if unit == "days" and amount == 1:
                unit = "day"
            return f" ({amount} {unit})"
    return ""


def _default(env: str, value: Any) -> str:
    if value is None or value == frozenset():
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int):
        return f"`{value}`{_humane(env, value)}"
    return f"`{value}`"


def settings_rows() -> Iterator[tuple[str, str, str, str]]:
    """``(name, type, default, effect)`` of every setting that ``dramatiq_preview.config``
    parses, in its order.

    Raises:
      PluginError: a setting has no ``Settings`` field, or its field no docstring.
    """
    from dramatiq_preview import config

    source = Path(config.__file__).read_text(encoding="utf-8")
    docs = field_docstrings(source)
    by_name = {f.name: f for f in fields(config.Settings)}
    for spec in config._SPECS:
        field = by_name.get(spec.field)
        if field is None:
            raise PluginError(f"{spec.env}: Settings in config.py has no field {spec.field!r}")
        doc = docs.get(spec.field)
        if not doc:
            raise PluginError(
                f"{spec.env} is not documented: add a docstring under the field "
                f"`{spec.field}` of Settings in dramatiq_preview/config.py (the configuration "
                "reference is generated from it)"
            )
        paragraphs = [p for p in doc.split("\n\n") if p.strip()]
        shown_default = None
        effect = []
        for paragraph in paragraphs:
            if paragraph.startswith("Default:"):
                shown_default = paragraph.removeprefix("Default:").strip().rstrip(".")
            else:
                effect.append(paragraph)
        if shown_default is None:
            value = field.default if field.default is not MISSING else None
            shown_default = _default(spec.env, value)
        yield (
            spec.env,
            _setting_type(spec.env, spec.parse, str(field.type)),
            _one_line(shown_default),
            _one_line(" ".join(effect)),
        )


def settings_reference() -> str:
    """The Markdown table of every setting (what replaces ``SETTINGS_MARKER``)."""
    lines = [
        "| name | type | default | effect |",
        "|---|---|---|---|",
    ]
    for env, kind, default, effect in settings_rows():
        lines.append(f'| <code id="{env}">{env}</code> | {kind} | {default} | {effect} |')
    return "\n".join(lines)


# -- The HTTP API reference ------------------------------------------------------------------


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document an app with every option on (``DOCS_APP_CONFIG``) serves."""
    from flask import Flask

    from dramatiq_preview.flask import PreviewExtension

    app = Flask("dramatiq_preview_docs")
    app.config.update(DOCS_APP_CONFIG)
    PreviewExtension(app, authorize=lambda request: True)
    token = DOCS_APP_CONFIG["PREVIEW_API_TOKEN"]
    with app.test_client() as client:
        answer = client.get(
            "/api/preview/openapi.json", headers={"Authorization": f"Bearer {token}"}
        )
    if answer.status_code != 200:
        raise PluginError(f"GET /api/preview/openapi.json answered {answer.status_code}")
    document: dict[str, Any] = answer.get_json()
    # The document describes the app it is served by; the reference names no server.
    document.pop("servers", None)
    return document


def _anchor(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def _schema_link(ref: str) -> str:
    name = ref.rsplit("/", 1)[-1]
    return f"[`{name}`](#schema-{_anchor(name)})"


def _schema_type(schema: dict[str, Any]) -> str:
    """A short type of a (sub)schema for a table cell."""
    if not isinstance(schema, dict):
        return "any"
    if "$ref" in schema:
        return _schema_link(schema["$ref"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return " or ".join(_schema_type(s) for s in schema[key])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        kind = " \\| ".join(kind)
    if kind == "array":
        return f"array of {_schema_type(schema.get('items', {}))}"
    extra = []
    if "format" in schema:
        extra.append(schema["format"])
    if "pattern" in schema:
        extra.append(f"`{schema['pattern']}`")
    if "minimum" in schema or "maximum" in schema:
        extra.append(f"{schema.get('minimum', '')}..{schema.get('maximum', '')}")
    if "maxLength" in schema:
        extra.append(f"<= {schema['maxLength']} chars")
    return f"{kind} ({', '.join(extra)})" if extra else str(kind)


def _cell(text: Any) -> str:
    return _one_line(str(text or ""))


def _content(content: dict[str, Any]) -> str:
    parts = []
    for media, body in content.items():
        schema = body.get("schema", {})
        parts.append(f"`{media}`: {_schema_type(schema)}")
    return "<br>".join(parts)


def _operation(path: str, method: str, op: dict[str, Any], shared: list[Any]) -> list[str]:
    lines = [
        f'<a id="{op.get("operationId", _anchor(method + path))}"></a>',
        "",
        f"### `{method.upper()} {path}`",
        "",
        f"**{op.get('summary', '')}**" if op.get("summary") else "",
        "",
    ]
    if op.get("description"):
        lines += [op["description"], ""]
    if op.get("security") == []:
        lines += ["No authentication: open even when `PREVIEW_API_TOKEN` is set.", ""]
    parameters = [*shared, *op.get("parameters", [])]
    if parameters:
        lines += [
            "Parameters:",
            "",
            "| name | in | required | type | description |",
            "|---|---|---|---|---|",
        ]
        for p in parameters:
            lines.append(
                f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} "
                f"| {_schema_type(p.get('schema', {}))} | {_cell(p.get('description'))} |"
            )
        lines.append("")
    body = op.get("requestBody")
    if body:
        required = "required" if body.get("required") else "optional"
        lines += [f"Request body ({required}): {_content(body.get('content', {}))}", ""]
    lines += ["Responses:", "", "| status | meaning | body |", "|---|---|---|"]
    for status, answer in sorted(op.get("responses", {}).items()):
        lines.append(
            f"| {status} | {_cell(answer.get('description'))} "
            f"| {_content(answer.get('content', {})) or '—'} |"
        )
    return [*lines, ""]


def _schema_section(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f'<a id="schema-{_anchor(name)}"></a>', "", f"### `{name}`", ""]
    if schema.get("description"):
        lines += [_one_line(schema["description"]), ""]
    properties = schema.get("properties", {})
    required = set(schema.get("required", []))
    if properties:
        lines += ["| field | type | required | description |", "|---|---|---|---|"]
        for prop, sub in properties.items():
            description = sub.get("description", "") if isinstance(sub, dict) else ""
            lines.append(
                f"| `{prop}` | {_schema_type(sub)} | {'yes' if prop in required else 'no'} "
                f"| {_cell(description)} |"
            )
        lines.append("")
    text = json.dumps(schema, indent=2, ensure_ascii=False)
    lines += ['??? note "The whole schema"', "", "    ```json"]
    lines += [f"    {line}" for line in text.splitlines()]
    return [*lines, "    ```", ""]


def http_reference(document: dict[str, Any]) -> str:
    """The Markdown page of every route, parameter, body and answer of ``document``."""
    info = document.get("info", {})
    options = ", ".join(f"`{k}`" for k in DOCS_APP_CONFIG if k.startswith("PREVIEW_"))
    lines = [
        "# HTTP API reference",
        "",
        "<!-- Generated by scripts/docs_hooks.py from dramatiq_preview.flask.openapi. -->",
        "",
        f"OpenAPI {document.get('openapi')} document of dramatiq-preview {info.get('version')}"
        f", as the app serves it at `GET {{PREVIEW_URL_PREFIX}}/openapi.json` "
        f"([download it](openapi.json)). {info.get('description', '')}",
        "",
        "Paths are relative to `PREVIEW_URL_PREFIX` (default `/api/preview`). This page "
        f"shows the document of an app with every option that adds to it on ({options}, "
        "and an `authorize` hook): 401 answers apply only when `PREVIEW_API_TOKEN` is set, "
        "403 only with an `authorize` hook, the 307 of a download only for outputs in S3, "
        "`webhook` in the payload only when `PREVIEW_WEBHOOK_ALLOWED_HOSTS` is set. Your "
        "app's own document lists what applies to it. The guide with examples is "
        "[HTTP API](../http-api.md).",
        "",
        "## Routes",
        "",
        "| method | path | summary |",
        "|---|---|---|",
    ]
    paths = document.get("paths", {})
    operations = []
    for path, item in paths.items():
        shared = item.get("parameters", [])
        for method, op in item.items():
            if method == "parameters":
                continue
            operations.append((path, method, op, shared))
            anchor = op.get("operationId", _anchor(method + path))
            lines.append(
                f"| {method.upper()} | [`{path}`](#{anchor}) | {_cell(op.get('summary'))} |"
            )
    lines.append("")
    for path, method, op, shared in operations:
        lines += _operation(path, method, op, shared)
    schemes = document.get("components", {}).get("securitySchemes", {})
    if schemes:
        lines += ["## Authentication", ""]
        for name, scheme in schemes.items():
            lines.append(f"- `{name}`: {scheme.get('type')} `{scheme.get('scheme', '')}`")
        lines.append("")
    lines += ["## Schemas", ""]
    for name, schema in sorted(document.get("components", {}).get("schemas", {}).items()):
        lines += _schema_section(name, schema)
    return "\n".join(lines)


# -- The hooks -------------------------------------------------------------------------------


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    # Settings come from DOCS_APP_CONFIG and defaults, never from the builder's environment.
    for name in [k for k in os.environ if k.startswith("PREVIEW_")]:
        del os.environ[name]
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    document = openapi_document()
    files.append(File.generated(config, HTTP_REFERENCE, content=http_reference(document)))
    files.append(
        File.generated(config, OPENAPI_JSON, content=json.dumps(document, indent=2) + "\n")
    )
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "changelog.md", content=changelog))
    return files


def repository_links(markdown: str, page_uri: str, repo_url: str) -> str:
    """``markdown`` with its links to repository files outside docs/ made absolute.

    Raises:
      PluginError: such a link names a file or folder that does not exist.
    """
    docs = ROOT / "docs"

    def absolute(match: re.Match[str]) -> str:
        target = ((docs / page_uri).parent / match.group(1)).resolve()
        if target.is_relative_to(docs):
            return match.group(0)  # a page of the site: MkDocs checks it
        if not target.is_relative_to(ROOT) or not target.exists():
            raise PluginError(f"{page_uri}: the link {match.group(1)} leads nowhere")
        kind = "tree" if target.is_dir() else "blob"
        relative = target.relative_to(ROOT).as_posix()
        return f"]({repo_url.rstrip('/')}/{kind}/main/{relative}{match.group(2)})"

    return _OUTSIDE_LINK.sub(absolute, markdown)


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, settings_reference())
    if page.file.src_uri != HTTP_REFERENCE:
        markdown = repository_links(markdown, page.file.src_uri, config.repo_url or "")
    return markdown

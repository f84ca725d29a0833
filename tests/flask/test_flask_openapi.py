"""The OpenAPI document: valid, complete, true to the JSON Schema, and to the live API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
from flask import Flask
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from preview_http import IDLE_NAMESPACE, PREFIX, TOKEN, LiveServer, bearer, make_app
from test_flask_schemas import EDGE_CASES

from dramatiq_preview.validation import pattern_keyword as ecma_pattern_keyword
from dramatiq_preview.validation import validation_issues

HERE = Path(__file__).resolve().parent

ROUTES = {
    "/job": {"post"},
    "/job/{jobId}/status": {"get"},
    "/job/{jobId}/cancel": {"post"},
    "/job/{jobId}/outputs/{index}": {"get"},
    "/worker/health": {"get"},
    "/metrics": {"get"},
    "/openapi.json": {"get"},
}


def document(app: Flask, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = app.test_client().get(f"{PREFIX}/openapi.json", headers=headers)
    assert response.status_code == 200
    body: dict[str, Any] = response.json
    return body


def test_the_document_is_valid_openapi_3_1() -> None:
    open_doc = document(make_app())
    validate(open_doc)
    assert open_doc["openapi"] == "3.1.0"
    closed = make_app(PREVIEW_API_TOKEN=TOKEN, authorize=lambda request: True)
    validate(document(closed, bearer()))


def test_every_route_is_documented_with_its_methods() -> None:
    paths = document(make_app())["paths"]
    assert {path: set(item) - {"parameters"} for path, item in paths.items()} == ROUTES


def test_every_error_answer_is_documented_with_the_error_schema() -> None:
    paths = document(make_app())["paths"]
    submit = paths["/job"]["post"]["responses"]
    assert set(submit) == {"200", "202", "400", "409", "413", "415", "422", "503"}
    assert set(paths["/job/{jobId}/cancel"]["post"]["responses"]) == {"202", "404", "409", "503"}
    output = paths["/job/{jobId}/outputs/{index}"]["get"]["responses"]
    assert set(output) == {"200", "206", "304", "404", "412", "416", "503"}
    # a 413 carries the limit it refers to
    assert "limit" in document(make_app())["components"]["schemas"]["Error"]["properties"]
    for path, item in paths.items():
        for operation in (v for k, v in item.items() if k != "parameters"):
            for code, answer in operation["responses"].items():
                if code.startswith(("4", "5")) and path != "/worker/health":
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith(("/Error", "/ValidationError")), (code, ref)


def test_security_and_403_appear_only_when_configured() -> None:
    open_doc = document(make_app())
    assert "securitySchemes" not in open_doc.get("components", {})
    assert all("401" not in op["responses"] for op in _operations(open_doc))
    assert all("403" not in op["responses"] for op in _operations(open_doc))

    closed = document(make_app(PREVIEW_API_TOKEN=TOKEN, authorize=lambda r: True), bearer())
    assert closed["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, item in closed["paths"].items():
        operation = next(v for k, v in item.items() if k != "parameters")
        if path == "/worker/health":
            assert operation["security"] == [] and "401" not in operation["responses"]
        else:
            assert operation["security"] == [{"bearerAuth": []}]
            assert {"401", "403"} <= set(operation["responses"])


def _operations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for item in doc["paths"].values() for k, v in item.items() if k != "parameters"]


def test_the_documented_request_body_agrees_with_the_json_schema() -> None:
    # Given the JobRequest schema as the document states it (generated from marshmallow)
    doc = document(make_app())
    # Read with ECMA-262 patterns, as the document means them (Python's ``re`` differs).
    ecma_validator = jsonschema.validators.extend(
        Draft202012Validator, validators={"pattern": ecma_pattern_keyword}
    )
    validator = ecma_validator(
        {"$ref": "#/components/schemas/JobRequest", "components": doc["components"]}
    )
    # Then it accepts and rejects the edge cases like the wire contract does, except that
    # JSON Schema cannot tell 64.0 from 64 (docs/http-api.md: integers are strict)
    for name, payload in EDGE_CASES.items():
        if name in ("width as float", "quality float", "page float"):
            continue
        assert validator.is_valid(payload) == (not validation_issues(payload)), name


def test_the_document_is_cached_per_mount_but_not_shared_between_apps() -> None:
    first, second = make_app(), make_app(PREVIEW_URL_PREFIX="/other")
    assert document(first) is not None
    assert second.test_client().get("/other/openapi.json").json["servers"] == [{"url": "/other"}]
    assert document(first)["servers"] == [{"url": PREFIX}]


def test_schemathesis_finds_no_server_error_and_no_answer_against_the_document(
    tmp_path: Path,
) -> None:
    # Given the live API with a token (so that the run also checks that auth is enforced;
    # jobs go to a namespace no worker consumes)
    app = make_app(PREVIEW_NAMESPACE=IDLE_NAMESPACE, PREVIEW_API_TOKEN=TOKEN)
    with LiveServer(app) as server:
        # When schemathesis runs every check on generated valid and invalid requests
        command = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{server.url}{PREFIX}/openapi.json",
            "--checks=all",
            "--phases=coverage,fuzzing,stateful",
            "--max-examples=25",
            "--seed=20261128",
            "--workers=1",  # concurrent workers trip a CPython 3.11 ast bug in hypothesis
            "--no-color",
            "-H",
            f"Authorization: Bearer {TOKEN}",
        ]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        }
        result = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
    # Then nothing failed: no 5xx, no status, header, content type or body the document
    # does not allow, no ignored authentication, no valid request refused
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "No issues found" in output or " passed" in output, output[-3000:]

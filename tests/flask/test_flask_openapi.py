"""The OpenAPI document: valid, complete, embedding the JSON Schema, true to the live API."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import jsonschema
from flask import Flask
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from preview_http import IDLE_NAMESPACE, PREFIX, TOKEN, LiveServer, bearer, make_app

from dramatiq_preview.flask.openapi import embedded_json_schema
from dramatiq_preview.validation import load_schema, validation_issues
from dramatiq_preview.validation import pattern_keyword as ecma_pattern_keyword

HERE = Path(__file__).resolve().parent

ROUTES = {
    "/job": {"post"},
    "/job/{jobId}/status": {"get"},
    "/job/{jobId}/cancel": {"post"},
    "/job/{jobId}/events": {"get"},
    "/job/{jobId}/outputs/{index}": {"get"},
    "/jobs": {"get"},
    "/dlq": {"get"},
    "/dlq/{jobId}/requeue": {"post"},
    "/dlq/purge": {"post"},
    "/worker/health": {"get"},
    "/metrics": {"get"},
    "/openapi.json": {"get"},
}


def document(app: Flask, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = app.test_client().get(f"{PREFIX}/openapi.json", headers=headers)
    assert response.status_code == 200
    body = response.json
    assert isinstance(body, dict)
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


# --- the request body: the JSON Schema itself ---------------------------------------------


def _request_schema(doc: dict[str, Any]) -> dict[str, Any]:
    body = doc["paths"]["/job"]["post"]["requestBody"]
    assert body["required"] is True
    ref = body["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/JobRequest"
    schema: dict[str, Any] = doc["components"]["schemas"]["JobRequest"]
    return schema


def _objects(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every object schema in ``schema`` with where it is (``properties`` and ``items``)."""
    if not isinstance(schema, dict):
        return []
    found = [(path, schema)] if schema.get("type") == "object" else []
    for name, sub in schema.get("properties", {}).items():
        found += _objects(sub, f"{path}/{name}")
    for index, sub in enumerate(schema.get("oneOf", [])):
        found += _objects(sub, f"{path}/oneOf/{index}")
    found += _objects(schema.get("items"), f"{path}/items")
    return found


def test_the_request_body_is_the_json_schema_as_it_is() -> None:
    # Given the request body of POST /job as the document states it, on an app with webhooks
    schema = _request_schema(
        document(
            make_app(
                PREVIEW_WEBHOOK_ALLOWED_HOSTS="hooks.example",
                PREVIEW_WEBHOOK_SECRET="whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            )
        )
    )
    contract = load_schema()
    # Then it is the wire contract, less the keys that tie it to its own file, with the
    # allowed webhook hosts in the webhook's description
    assert schema["properties"]["webhook"]["description"].endswith(
        "Allowed hosts here: hooks.example."
    )
    schema["properties"]["webhook"]["description"] = contract["properties"]["webhook"][
        "description"
    ]
    assert schema == {k: v for k, v in contract.items() if k not in ("$id", "$schema")}
    # and so it has the contract's required fields, enums and closed objects
    assert schema["required"] == ["source", "outputs"]
    output = schema["properties"]["outputs"]["items"]
    assert output["required"] == ["width", "height", "format"]
    assert output["properties"]["format"]["enum"] == ["webp", "jpeg", "png", "avif"]
    assert output["properties"]["fit"]["enum"] == ["contain", "cover", "fill"]
    assert schema["properties"]["priority"]["enum"] == ["high", "normal", "low"]
    assert [sorted(s["required"]) for s in schema["properties"]["source"]["oneOf"]] == [
        ["path"],
        ["url"],
    ]
    objects = _objects(schema)
    assert {path for path, _ in objects} >= {"", "/source/oneOf/0", "/outputs/items"}
    for path, obj in objects:
        # metadata is the one open map: its values are constrained instead
        assert obj["additionalProperties"] is False or path == "/metadata", path
    assert schema["properties"]["metadata"]["additionalProperties"] == {
        "type": "string",
        "maxLength": 256,
    }


def test_without_webhook_hosts_the_documented_request_body_has_no_webhook() -> None:
    # Given an app without PREVIEW_WEBHOOK_ALLOWED_HOSTS, where a webhook is a 422
    app = make_app()
    schema = _request_schema(document(app))
    # Then its document does not offer one, and a body with one is refused as documented
    assert "webhook" not in schema["properties"]
    assert schema["additionalProperties"] is False
    body = {
        "source": {"path": "a.png"},
        "outputs": [{"width": 8, "height": 8, "format": "png"}],
        "webhook": {"url": "https://hooks.example/x"},
    }
    response = app.test_client().post(f"{PREFIX}/job", json=body, headers=bearer())
    assert response.status_code == 422
    assert response.get_json()["details"][0]["path"] == "webhook/url"


def test_no_marshmallow_request_schema_is_left_in_the_document() -> None:
    schemas = document(make_app())["components"]["schemas"]
    assert not {"OutputRequest", "PathSource", "UrlSource"} & set(schemas)


def test_the_documented_request_body_judges_payloads_like_the_server() -> None:
    # Given the JobRequest schema as a client reads it from the document
    doc = document(make_app())
    # Read with ECMA-262 patterns, as the document means them (Python's ``re`` differs).
    ecma_validator = jsonschema.validators.extend(
        Draft202012Validator, validators={"pattern": ecma_pattern_keyword}
    )
    validator = ecma_validator(
        {"$ref": "#/components/schemas/JobRequest", "components": doc["components"]}
    )
    # Then it accepts and rejects the edge cases like the server does, except that JSON
    # Schema cannot tell 64.0 from 64 (docs/http-api.md: integers are strict)
    for name, payload in EDGE_CASES.items():
        if name in ("width as float", "quality float", "page float"):
            continue
        assert validator.is_valid(payload) == (not validation_issues(payload)), name


def test_the_edge_cases_cover_both_verdicts() -> None:
    verdicts = {name: not validation_issues(p) for name, p in EDGE_CASES.items()}
    assert verdicts["minimal"] and verdicts["everything"] and verdicts["path 1024"]
    assert not verdicts["width as float"] and not verdicts["width as string"]
    assert sum(verdicts.values()) >= 8 and sum(not v for v in verdicts.values()) >= 40


def test_internal_references_are_rebased_onto_the_component() -> None:
    # Given a JSON Schema with $defs, references into them and into itself, and data that
    # only looks like a reference
    side = {"type": "integer", "minimum": 1}
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://example.com/box.schema.json",
        "$defs": {"side": side, "box": {"$ref": "#/$defs/side"}},
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "width": {"$ref": "#/$defs/side"},
            "default": {"$ref": "#/$defs/box"},
            "next": {"$ref": "#"},
            "tag": {"const": {"$ref": "#/not/a/reference"}},
        },
    }
    # When it is embedded under a name
    embedded = embedded_json_schema(schema, "Box")
    # Then only the file's identity goes and every reference points into the component
    assert "$id" not in embedded and "$schema" not in embedded
    assert embedded["$defs"]["side"] == side
    assert embedded["$defs"]["box"] == {"$ref": "#/components/schemas/Box/$defs/side"}
    properties = embedded["properties"]
    assert properties["width"] == {"$ref": "#/components/schemas/Box/$defs/side"}
    assert properties["default"] == {"$ref": "#/components/schemas/Box/$defs/box"}
    assert properties["next"] == {"$ref": "#/components/schemas/Box"}
    assert properties["tag"] == {"const": {"$ref": "#/not/a/reference"}}
    assert schema["properties"]["width"] == {"$ref": "#/$defs/side"}  # the input is unchanged
    # and a document holding it is valid OpenAPI 3.1 whose references resolve
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "boxes", "version": "1"},
        "paths": {},
        "components": {"schemas": {"Box": embedded}},
    }
    validate(doc)
    validator = Draft202012Validator({"$ref": "#/components/schemas/Box", **doc})
    assert validator.is_valid({"width": 1, "default": 2, "next": {"width": 3}})
    assert not validator.is_valid({"next": {"default": 0}})


def _valid(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "source": {"path": "a.png"},
        "outputs": [{"width": 64, "height": 64, "format": "webp"}],
    }
    payload.update(changes)
    return payload


def _output_with(**changes: Any) -> dict[str, Any]:
    return _valid(outputs=[{"width": 64, "height": 64, "format": "webp", **changes}])


EDGE_CASES: dict[str, Any] = {
    "minimal": _valid(),
    "everything": _valid(
        jobId="A1_.:-z",
        source={"url": "https://example.com/a.png"},
        outputs=[{"width": 1, "height": 4096, "format": "png", "fit": "fill", "quality": 100}] * 8,
        page=0,
        priority="low",
        metadata={"k" * 64: "v" * 256, "": ""},
    ),
    "not an object": [],
    "a string": "{}",
    "null": None,
    "empty object": {},
    "width as string": _output_with(width="64"),
    "width as float": _output_with(width=64.0),
    "width as bool": _output_with(width=True),
    "width zero": _output_with(width=0),
    "width too big": _output_with(width=4097),
    "quality zero": _output_with(quality=0),
    "quality 101": _output_with(quality=101),
    "quality float": _output_with(quality=82.0),
    "fit unknown": _output_with(fit="scale"),
    "format gif": _output_with(format="gif"),
    "format null": _output_with(format=None),
    "output extra key": _output_with(crop=True),
    "output missing height": _valid(outputs=[{"width": 1, "format": "png"}]),
    "no outputs": _valid(outputs=[]),
    "nine outputs": _valid(outputs=[{"width": 1, "height": 1, "format": "png"}] * 9),
    "outputs not a list": _valid(outputs={"width": 1}),
    "source both": _valid(source={"path": "a", "url": "http://example.com"}),
    "source neither": _valid(source={}),
    "source extra": _valid(source={"path": "a", "x": 1}),
    "source list": _valid(source=["a"]),
    "empty path": _valid(source={"path": ""}),
    "path 1024": _valid(source={"path": "p" * 1024}),
    "path 1025": _valid(source={"path": "p" * 1025}),
    "path not a string": _valid(source={"path": 7}),
    "url ftp": _valid(source={"url": "ftp://example.com/a"}),
    "url with space": _valid(source={"url": "http://exa mple.com"}),
    "url upper case scheme": _valid(source={"url": "HTTP://EXAMPLE.COM"}),
    "url too short": _valid(source={"url": "http://"}),
    "url 2048": _valid(source={"url": "http://" + "x" * 2041}),
    "url 2049": _valid(source={"url": "http://" + "x" * 2042}),
    "url trailing newline": _valid(source={"url": "http://example.com\n"}),
    "jobId 128": _valid(jobId="j" * 128),
    "jobId 129": _valid(jobId="j" * 129),
    "jobId leading dash": _valid(jobId="-j"),
    "jobId slash": _valid(jobId="a/b"),
    "jobId empty": _valid(jobId=""),
    "jobId trailing newline": _valid(jobId="abc\n"),
    "jobId integer": _valid(jobId=5),
    "page negative": _valid(page=-1),
    "page huge": _valid(page=2**80),
    "page float": _valid(page=1.0),
    "page null": _valid(page=None),
    "priority unknown": _valid(priority="urgent"),
    "metadata 16": _valid(metadata={str(i): "" for i in range(16)}),
    "metadata 17": _valid(metadata={str(i): "" for i in range(17)}),
    "metadata long key": _valid(metadata={"k" * 65: "v"}),
    "metadata long value": _valid(metadata={"k": "v" * 257}),
    "metadata number value": _valid(metadata={"k": 1}),
    "metadata null value": _valid(metadata={"k": None}),
    "metadata list": _valid(metadata=[]),
    "unknown top-level key": _valid(callback="http://example.com"),
}


def test_the_document_is_cached_per_mount_but_not_shared_between_apps() -> None:
    first, second = make_app(), make_app(PREVIEW_URL_PREFIX="/other")
    assert document(first) is not None
    other = second.test_client().get("/other/openapi.json").json
    assert other is not None and other["servers"] == [{"url": "/other"}]
    assert document(first)["servers"] == [{"url": PREFIX}]


def test_schemathesis_finds_no_server_error_and_no_answer_against_the_document(
    tmp_path: Path,
) -> None:
    # Given the live API with a token (so that the run also checks that auth is enforced;
    # jobs go to a namespace of its own that no worker consumes: GET /jobs lists only what
    # this run made, not the hand-made records of other tests)
    # Streams opened on queued jobs end after 2 s (schemathesis reads each to its end).
    app = make_app(
        PREVIEW_NAMESPACE=f"{IDLE_NAMESPACE}-{uuid.uuid4().hex[:8]}",
        PREVIEW_API_TOKEN=TOKEN,
        PREVIEW_EVENTS_MAX_SECONDS=2,
        PREVIEW_EVENTS_KEEPALIVE_SECONDS=1,
    )
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

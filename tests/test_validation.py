"""Payload validation against the shipped JSON Schema: paths, messages, no coercion."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from dramatiq_preview.errors import InvalidPayload
from dramatiq_preview.validation import (
    fingerprint,
    load_schema,
    normalize,
    slow_validation_issues,
    validate,
    validation_issues,
)

JOB_ID_MESSAGE = (
    "must start with a letter or digit and contain only letters, digits and _.:- "
    "(at most 128 characters)"
)

VALID: dict[str, Any] = {
    "jobId": "order-42:thumb.v1",
    "source": {"path": "uploads/cat.jpg"},
    "outputs": [
        {"width": 256, "height": 256, "format": "webp"},
        {"width": 64, "height": 48, "format": "jpeg", "fit": "cover", "quality": 70},
    ],
    "page": 0,
    "priority": "high",
    "metadata": {"owner": "alice"},
}


def with_(path: str, value: Any) -> dict[str, Any]:
    """A copy of VALID with the value at a slash path replaced (or deleted when ...)."""
    data = copy.deepcopy(VALID)
    *parents, last = path.split("/")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return data


def issues_of(payload: Any) -> list[tuple[str, str]]:
    return [(i.path, i.message) for i in validation_issues(payload)]


def test_the_schema_is_draft_2020_12_and_closed_everywhere() -> None:
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    def objects(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("type") == "object":
                yield node
            for value in node.values():
                yield from objects(value)
        elif isinstance(node, list):
            for value in node:
                yield from objects(value)

    closed = list(objects(schema))
    assert len(closed) >= 5
    for obj in closed:
        assert obj.get("additionalProperties") is not True
        assert "additionalProperties" in obj


def test_a_valid_payload_passes() -> None:
    validate(VALID)
    validate(
        {
            "source": {"url": "https://img.example.com/a.png"},
            "outputs": [{"width": 1, "height": 4096, "format": "png"}],
        }
    )


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (with_("outputs/0/width", "64"), ("outputs/0/width", "must be an integer")),
        (with_("outputs/0/width", 64.0), ("outputs/0/width", "must be an integer")),
        (with_("outputs/0/width", True), ("outputs/0/width", "must be an integer")),
        (with_("outputs/0/width", 0), ("outputs/0/width", "must be >= 1")),
        (with_("outputs/1/height", 4097), ("outputs/1/height", "must be <= 4096")),
        (
            with_("outputs/0/format", "gif"),
            ("outputs/0/format", 'must be one of "webp", "jpeg", "png", "avif"'),
        ),
        (
            with_("outputs/1/fit", "stretch"),
            ("outputs/1/fit", 'must be one of "contain", "cover", "fill"'),
        ),
        (with_("outputs/1/quality", 101), ("outputs/1/quality", "must be <= 100")),
        (with_("outputs/0/extra", 1), ("outputs/0/extra", "is not allowed")),
        (with_("outputs/0/format", ...), ("outputs/0/format", "is required")),
        (with_("outputs", []), ("outputs", "must have at least 1 item(s)")),
        (
            with_("outputs", [{"width": 1, "height": 1, "format": "png"}] * 9),
            ("outputs", "must have at most 8 items"),
        ),
        (with_("page", -1), ("page", "must be >= 0")),
        (with_("page", "1"), ("page", "must be an integer")),
        (with_("priority", "urgent"), ("priority", 'must be one of "high", "normal", "low"')),
        (
            with_("jobId", "-starts-with-dash"),
            (
                "jobId",
                JOB_ID_MESSAGE,
            ),
        ),
        (
            with_("jobId", "a" * 129),
            (
                "jobId",
                JOB_ID_MESSAGE,
            ),
        ),
        (
            with_("jobId", "has/slash"),
            (
                "jobId",
                JOB_ID_MESSAGE,
            ),
        ),
        (with_("jobId", 42), ("jobId", "must be a string")),
        # JSON Schema patterns are ECMA-262: "$" does not match before a final newline
        (with_("jobId", "abc\n"), ("jobId", JOB_ID_MESSAGE)),
        (with_("jobId", "a" * 128 + "\n"), ("jobId", JOB_ID_MESSAGE)),
        (
            with_("source", {"url": "https://x.example/a.png\n"}),
            ("source/url", "must be an http:// or https:// URL without spaces"),
        ),
        (
            with_("source", {"url": "https://x.example/a\ufeffb.png"}),
            ("source/url", "must be an http:// or https:// URL without spaces"),
        ),
        (with_("source", {}), ("source", "must have either path or url")),
        (
            with_("source", {"path": "a", "url": "https://x.example/a"}),
            ("source", "must have exactly one of path or url, not both"),
        ),
        (with_("source", {"path": ""}), ("source/path", "must be at least 1 characters long")),
        (
            with_("source", {"path": "a" * 1025}),
            ("source/path", "must be at most 1024 characters long"),
        ),
        (
            with_("source", {"url": "ftp://x.example/a.png"}),
            ("source/url", "must be an http:// or https:// URL without spaces"),
        ),
        (
            with_("source", {"url": "https://x.example/" + "a" * 2040}),
            ("source/url", "must be at most 2048 characters long"),
        ),
        (with_("source", {"path": "a", "mode": "r"}), ("source/mode", "is not allowed")),
        (with_("source", "cat.jpg"), ("source", "must be an object with either path or url")),
        (with_("source", ...), ("source", "is required")),
        (
            with_("metadata", {f"k{i}": "v" for i in range(17)}),
            ("metadata", "must have at most 16 properties"),
        ),
        (
            with_("metadata", {"k" * 65: "v"}),
            ("metadata", "property names must be at most 64 characters long"),
        ),
        (
            with_("metadata", {"k": "v" * 257}),
            ("metadata/k", "must be at most 256 characters long"),
        ),
        (with_("metadata", {"k": 1}), ("metadata/k", "must be a string")),
        (with_("callback", "https://evil.example"), ("callback", "is not allowed")),
    ],
)
def test_each_violation_has_a_path_and_a_message(payload: Any, expected: tuple[str, str]) -> None:
    # Given a payload with one violation / When validated / Then exactly that is reported
    assert issues_of(payload) == [expected]
    with pytest.raises(InvalidPayload) as info:
        validate(payload)
    assert info.value.to_dict()["details"] == [{"path": expected[0], "message": expected[1]}]
    assert info.value.retryable is False


def test_several_violations_are_all_reported_sorted_by_path() -> None:
    payload = with_("outputs/0/width", "x")
    payload["priority"] = "urgent"
    payload["zzz"] = 1
    assert [p for p, _ in issues_of(payload)] == ["outputs/0/width", "priority", "zzz"]


@pytest.mark.parametrize("payload", [None, [], "text", 3, True])
def test_non_objects_are_rejected(payload: Any) -> None:
    assert issues_of(payload) == [("", "must be an object")]


def test_messages_never_echo_huge_values() -> None:
    payload = with_("priority", "x" * 60000)
    (issue,) = validation_issues(payload)
    assert len(issue.message) < 200


def test_normalize_fills_defaults_without_touching_the_input() -> None:
    payload = {"source": {"path": "a.png"}, "outputs": [{"width": 1, "height": 2, "format": "png"}]}
    before = json.dumps(payload)
    data = normalize(payload)
    assert json.dumps(payload) == before
    assert len(data["jobId"]) == 32
    assert data["page"] == 0 and data["priority"] == "normal" and data["metadata"] == {}
    assert data["outputs"][0]["fit"] == "contain" and data["outputs"][0]["quality"] == 82


def test_fingerprint_treats_defaults_and_key_order_as_the_same_job() -> None:
    a = {
        "jobId": "x1",
        "source": {"path": "a.png"},
        "outputs": [{"width": 1, "height": 2, "format": "png"}],
    }
    b = {
        "outputs": [{"format": "png", "height": 2, "width": 1, "fit": "contain", "quality": 82}],
        "priority": "normal",
        "source": {"path": "a.png"},
        "jobId": "x1",
        "page": 0,
    }
    c = dict(a, page=1)
    assert fingerprint(normalize(a)) == fingerprint(normalize(b))
    assert fingerprint(normalize(a)) != fingerprint(normalize(c))


# --- the fast path agrees with the reference validator -----------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
#: Strings near the pattern's edges: newlines, ECMA-only and Python-only white space.
tricky_text = st.sampled_from(
    [
        "abc",
        "abc\n",
        "a b",
        "a\ufeffb",
        "a\x85b",
        "a\x1cb",
        "-x",
        "a" * 128,
        "a" * 129,
        "https://x.example/a.png",
        "https://x.example/a.png\n",
        "ftp://x",
        "http://a\u2028b",
    ]
)
PATHS = [
    "jobId",
    "source",
    "source/path",
    "source/url",
    "outputs",
    "outputs/0",
    "outputs/0/width",
    "outputs/0/format",
    "outputs/1/fit",
    "page",
    "priority",
    "metadata",
    "metadata/k",
    "extra",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(PATHS), json_values | tricky_text), max_size=3))
def test_the_fast_path_never_disagrees_with_the_reference(edits: list[Any]) -> None:
    payload = copy.deepcopy(VALID)
    for path, value in edits:
        try:
            payload = with_path(payload, path, value)
        except (KeyError, IndexError, TypeError, ValueError):
            continue
    assert (validation_issues(payload) == []) == (slow_validation_issues(payload) == [])


def with_path(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    *parents, last = path.split("/")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if isinstance(node, list) else last] = value
    return data


def test_floats_always_take_the_reference_path() -> None:
    # JSON Schema (and jsonschema-rs) call 64.0 an integer; the contract does not
    payload = with_("outputs/0/width", 64.0)
    assert validation_issues(payload) == slow_validation_issues(payload) != []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("outputs", ({"width": 8, "height": 8, "format": "png"},)),
        ("metadata", {"k": b"bytes"}),
        ("outputs/0/width", Decimal(64)),
    ],
)
def test_values_json_has_no_type_for_get_the_reference_verdict(path: str, value: Any) -> None:
    # jsonschema-rs reads a tuple as an array; the reference validator (and JSON) do not.
    payload = with_path(VALID, path, value)
    issues = validation_issues(payload)
    assert issues == slow_validation_issues(payload) != []
    assert issues[0].path.startswith(path)


def test_normalize_copies_tuples_too() -> None:
    outputs = ({"width": 1, "height": 2, "format": "png"},)
    data = normalize({"source": {"path": "a.png"}, "outputs": outputs})
    assert outputs[0] == {"width": 1, "height": 2, "format": "png"}
    assert data["outputs"] == [
        {"width": 1, "height": 2, "format": "png", "fit": "contain", "quality": 82}
    ]


def test_deep_nesting_is_refused_without_recursion() -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    payload = with_("metadata", {"k": deep})
    (issue,) = validation_issues(payload)
    assert issue.message == "is nested more than 32 levels"
    assert issue.path.startswith("metadata/k/0/0/")
    with pytest.raises(InvalidPayload):
        validate(payload)


@pytest.mark.parametrize(
    ("where", "key", "kind"),
    [("metadata", 1, "int"), ("", ("jobId",), "tuple"), ("outputs/0", b"width", "bytes")],
)
def test_property_names_that_are_not_text_are_refused(where: str, key: Any, kind: str) -> None:
    """Given a Python payload with a non-string key (JSON would turn {1: "x"} into
    {"1": "x"} behind the caller's back), then it is refused with the object's path."""
    payload = copy.deepcopy(VALID)
    node: Any = payload
    for part in filter(None, where.split("/")):
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[key] = "x"

    assert (where, f"property names must be strings, not {kind}") in [
        (i.path, i.message) for i in validation_issues(payload)
    ]
    with pytest.raises(InvalidPayload):
        validate(payload)


@pytest.mark.parametrize("where", ["jobId", "source/path", "metadata/k", "outputs/0/format"])
def test_text_that_is_not_unicode_is_refused(where: str) -> None:
    payload = with_path(VALID, where, "a\ud800b") if where != "jobId" else with_("jobId", "a\ud800")
    assert (where, "must be valid Unicode text") in [
        (i.path, i.message) for i in validation_issues(payload)
    ]


def test_without_the_compiled_validator_the_reference_one_gives_the_same_answers() -> None:
    # Given a process without jsonschema-rs (an install without the flask or fast extra)
    script = textwrap.dedent(
        """
        import json, sys
        sys.modules["jsonschema_rs"] = None  # `import jsonschema_rs` now raises ImportError
        from dramatiq_preview.validation import _fast_validator, validation_issues
        src = {"path": "a.png"}
        good = {"source": src, "outputs": [{"width": 8, "height": 8, "format": "png"}]}
        bad = {"source": src, "outputs": [{"width": "8", "height": 8, "format": "gif"}]}
        print(json.dumps([_fast_validator() is None, validation_issues(good) == [],
                          [i.path for i in validation_issues(bad)]]))
        """
    )
    # When it validates a good and a bad payload
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    # Then the reference validator alone answers, with the same paths as with the fast one
    assert result.returncode == 0, result.stderr
    bad = {"source": {"path": "a.png"}, "outputs": [{"width": "8", "height": 8, "format": "gif"}]}
    expected = [i.path for i in validation_issues(bad)]
    assert json.loads(result.stdout) == [True, True, expected]

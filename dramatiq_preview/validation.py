"""Validation of job payloads against ``schemas/preview-job.schema.json``.

The JSON Schema is the wire contract.  It ships inside the wheel as
``dramatiq_preview.schemas`` and is read with :mod:`importlib.resources`.

Two deliberate choices:

* Types are never coerced and ``integer`` means a JSON integer: ``"64"``, ``64.0`` and
  ``true`` are all rejected for ``width`` (plain JSON Schema would accept ``64.0``).
* Error messages are our own short sentences keyed by the failing keyword, with a
  slash-separated path (``outputs/0/width``); they never echo a huge input back.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import uuid
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError

from .errors import InvalidPayload, ValidationIssue
from .models import DEFAULT_QUALITY

SCHEMA_FILE = "preview-job.schema.json"


def load_schema() -> dict[str, Any]:
    """Return the job payload JSON Schema (a fresh copy each call)."""
    return copy.deepcopy(_schema())


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    try:
        text = resources.files("dramatiq_preview.schemas").joinpath(SCHEMA_FILE).read_text("utf-8")
    except ModuleNotFoundError:
        # A source checkout on sys.path (not installed): the package_dir mapping that puts
        # schemas/ inside the package only exists in an installed distribution.
        text = (Path(__file__).resolve().parent.parent / "schemas" / SCHEMA_FILE).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _is_strict_integer(checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


#: ECMA-262's ``\s`` (JSON Schema patterns are ECMA-262 regular expressions).
_ECMA_SPACE = "\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"


@lru_cache(maxsize=64)
def ecma_regex(pattern: str) -> re.Pattern[str]:
    """Compile a JSON Schema (ECMA-262) pattern with Python's ``re``, keeping ECMA meaning.

    Two differences matter for our schema: ECMA's ``$`` (without the multiline flag) matches
    only at the very end, where Python's also matches before a final newline (so
    ``"abc\n"`` would pass ``^[a-z]+$``); and ECMA's ``\\s`` is a different set of
    characters.  ``$`` becomes ``\\Z`` and ``\\s`` the ECMA set; escapes and character
    classes are otherwise left as they are.
    """
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt == "s":
                out.append(_ECMA_SPACE if in_class else f"[{_ECMA_SPACE}]")
            else:
                out.append(ch + nxt)
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "$":
            ch = r"\Z"
        out.append(ch)
        i += 1
    return re.compile("".join(out))


def pattern_keyword(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """The ``pattern`` keyword for :mod:`jsonschema` validators, with ECMA-262 semantics."""
    if isinstance(instance, str) and not ecma_regex(pattern).search(instance):
        yield SchemaError(f"{instance[:64]!r} does not match {pattern!r}")


_TYPE_CHECKER = Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_strict_integer)
_StrictValidator = jsonschema.validators.extend(
    Draft202012Validator, validators={"pattern": pattern_keyword}, type_checker=_TYPE_CHECKER
)


@lru_cache(maxsize=1)
def _validator() -> Any:
    schema = _schema()
    Draft202012Validator.check_schema(schema)
    return _StrictValidator(schema)


def _path(parts: Any) -> str:
    return "/".join(str(p) for p in parts)


def _join(base: str, name: str) -> str:
    return f"{base}/{name}" if base else name


_TYPE_NAMES = {
    "integer": "an integer",
    "string": "a string",
    "object": "an object",
    "array": "an array",
    "boolean": "a boolean",
    "number": "a number",
}


def _describe(error: SchemaError) -> list[ValidationIssue]:
    where = _path(error.absolute_path)
    kw = error.validator
    value = error.validator_value
    instance = error.instance
    if "propertyNames" in error.absolute_schema_path:
        return [ValidationIssue(where, "property names must be at most 64 characters long")]
    if kw == "required":
        missing = [name for name in value if isinstance(instance, dict) and name not in instance]
        return [ValidationIssue(_join(where, name), "is required") for name in missing]
    if kw == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        extra = (
            sorted(k for k in instance if k not in allowed) if isinstance(instance, dict) else []
        )
        if value is False:
            return [ValidationIssue(_join(where, str(k)[:64]), "is not allowed") for k in extra]
    if kw == "type":
        return [ValidationIssue(where, f"must be {_TYPE_NAMES.get(value, value)}")]
    if kw == "enum":
        choices = ", ".join(json.dumps(v) for v in value)
        return [ValidationIssue(where, f"must be one of {choices}")]
    if kw == "minimum":
        return [ValidationIssue(where, f"must be >= {value}")]
    if kw == "maximum":
        return [ValidationIssue(where, f"must be <= {value}")]
    if kw == "minLength":
        return [ValidationIssue(where, f"must be at least {value} characters long")]
    if kw == "maxLength":
        return [ValidationIssue(where, f"must be at most {value} characters long")]
    if kw == "minItems":
        return [ValidationIssue(where, f"must have at least {value} item(s)")]
    if kw == "maxItems":
        return [ValidationIssue(where, f"must have at most {value} items")]
    if kw == "maxProperties":
        return [ValidationIssue(where, f"must have at most {value} properties")]
    if kw == "pattern":
        if where == "jobId":
            message = (
                "must start with a letter or digit and contain only letters, digits and _.:- "
                "(at most 128 characters)"
            )
        elif where == "source/url":
            message = "must be an http:// or https:// URL without spaces"
        else:
            message = f"must match the pattern {value}"
        return [ValidationIssue(where, message)]
    if kw == "oneOf" and where == "source":
        return _describe_source(instance, error)
    return [ValidationIssue(where, error.message[:200])]


def _describe_source(instance: Any, error: SchemaError) -> list[ValidationIssue]:
    if not isinstance(instance, dict):
        return [ValidationIssue("source", "must be an object with either path or url")]
    kinds = [k for k in ("path", "url") if k in instance]
    if len(kinds) == 2:
        return [ValidationIssue("source", "must have exactly one of path or url, not both")]
    if not kinds:
        missing = [ValidationIssue("source", "must have either path or url")]
        extra = sorted(str(k)[:64] for k in instance)
        return missing + [ValidationIssue(f"source/{k}", "is not allowed") for k in extra]
    branch = 0 if kinds[0] == "path" else 1
    issues: list[ValidationIssue] = []
    for sub in error.context or []:
        if sub.relative_schema_path and sub.relative_schema_path[0] == branch:
            issues.extend(_describe(sub))
    return issues or [ValidationIssue("source", error.message[:200])]


#: Payloads nested deeper than this are refused before schema validation (ours are 3 deep).
MAX_DEPTH = 32


def validation_issues(payload: Any) -> list[ValidationIssue]:
    """Every schema violation in ``payload``, sorted by path (empty when valid).

    A valid payload is recognised by jsonschema-rs in microseconds (a submit is dominated by
    validation otherwise); anything it does not accept, and any payload holding a float
    (which JSON Schema, unlike us, may count as an integer), goes through :mod:`jsonschema`
    for the exact issues.  Both read patterns as ECMA-262.  Text that is not valid Unicode
    (lone surrogates) and absurd nesting are refused first, by a walk without recursion.
    """
    reference, suspect = _scan(payload)
    if suspect:
        structural = text_and_nesting_issues(payload)
        if structural:
            return structural
        reference = True  # pragma: no cover - _scan suspects exactly what it reports
    fast = _fast_validator()
    if fast is not None and not reference:
        try:
            if fast.is_valid(payload):
                return []
        except Exception:  # noqa: S110 - any doubt goes to the reference validator
            pass
    return slow_validation_issues(payload)


def _scan(payload: Any) -> tuple[bool, bool]:
    """``(needs the reference validator, may hold text or nesting issues)``.

    The reference validator is needed for floats (JSON Schema may count ``1.0`` as an
    integer; we do not) and for values JSON has no type for (a tuple, bytes), which
    jsonschema-rs may read as JSON values where :mod:`jsonschema` refuses them.
    The second flag is :func:`text_and_nesting_issues` without the paths, for the common
    payload that has no such issue (it then costs a few microseconds).
    """
    reference = False
    stack: list[tuple[Any, int]] = [(payload, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and not _is_unicode(value):
                return reference, True
        elif isinstance(value, dict):
            if depth >= MAX_DEPTH:
                return reference, True
            for key, item in value.items():
                if not isinstance(key, str):
                    return reference, True
                if not key.isascii() and not _is_unicode(key):
                    return reference, True
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            if depth >= MAX_DEPTH:
                return reference, True
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, float) or not (value is None or isinstance(value, int)):
            reference = True
    return reference, False


def text_and_nesting_issues(payload: Any) -> list[ValidationIssue]:
    """The issues of text and nesting in ``payload``, with paths, walking it iteratively:
    text that is not valid Unicode (lone surrogates), property names that are not text
    (JSON would silently turn ``{1: "x"}`` into ``{"1": "x"}``) and nesting beyond
    :data:`MAX_DEPTH`.  JSON Schema says nothing of these; both validators of a payload
    check them first."""
    issues: list[ValidationIssue] = []
    stack: list[tuple[Any, str, int]] = [(payload, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            if not _is_unicode(value):
                issues.append(ValidationIssue(where, "must be valid Unicode text"))
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                issues.append(ValidationIssue(where, f"is nested more than {MAX_DEPTH} levels"))
                continue
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                name = str(key)
                if not isinstance(key, str) and isinstance(value, dict):
                    issues.append(
                        ValidationIssue(
                            where, f"property names must be strings, not {type(key).__name__}"
                        )
                    )
                    name = "?"
                elif isinstance(key, str) and not _is_unicode(key):
                    issues.append(ValidationIssue(where, "property names must be valid Unicode"))
                    name = "?"
                stack.append((item, _join(where, name[:64]), depth + 1))
    return sorted(issues, key=lambda i: (i.path, i.message))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def slow_validation_issues(payload: Any) -> list[ValidationIssue]:
    """:func:`validation_issues` without the fast path (the reference implementation)."""
    issues: list[ValidationIssue] = []
    for error in _validator().iter_errors(payload):
        issues.extend(_describe(error))
    unique = {(i.path, i.message): i for i in issues}
    return sorted(unique.values(), key=lambda i: (i.path, i.message))


@lru_cache(maxsize=1)
def _fast_validator() -> Any:
    try:
        import jsonschema_rs
    except ImportError:  # optional: the flask or fast extra; the reference validator answers alone
        return None
    return jsonschema_rs.validator_for(_schema())


def validate(payload: Any) -> None:
    """Check ``payload`` against the schema.

    Raises:
      InvalidPayload: with one :class:`ValidationIssue` per violation.
    """
    issues = validation_issues(payload)
    if issues:
        raise InvalidPayload(issues)


def new_job_id() -> str:
    """A fresh job id (UUID4 hex), used when a payload has no ``jobId``."""
    return uuid.uuid4().hex


def normalize(payload: dict[str, Any]) -> dict[str, Any]:
    """A copy of a valid payload with every default filled in (``jobId`` included), but
    ``placeholder``, which is left out unless true."""
    data: dict[str, Any] = _copy(payload)
    if "jobId" not in data:
        data["jobId"] = new_job_id()
    data.setdefault("page", 0)
    data.setdefault("priority", "normal")
    data.setdefault("metadata", {})
    if data.get("placeholder") is False:
        # Absent and false are one job (same fingerprint), and the message a worker of an
        # earlier version receives keeps to the schema it knows, where the key is unknown;
        # fingerprints recorded before the key existed stay valid.
        del data["placeholder"]
    for output in data["outputs"]:
        output.setdefault("fit", "contain")
        output.setdefault("quality", DEFAULT_QUALITY)
    return data


def _copy(value: Any) -> Any:
    """A deep copy of JSON-shaped data (dicts, lists, scalars), as plain dicts and lists."""
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy(item) for item in value]
    return value


def fingerprint(normalized: dict[str, Any]) -> str:
    """Identity of a payload for idempotency: equal for payloads that mean the same job."""
    canonical = json.dumps(normalized, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()

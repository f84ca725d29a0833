"""Schemathesis hooks for the runs against the live API (loaded through ``SCHEMATHESIS_HOOKS``).

Three places where schemathesis's reading of the document and the server's validator
(``dramatiq_preview.validation``) knowingly differ; see docs/http-api.md:

* JSON Schema calls ``64.0`` an integer; we do not (contract §8: no coercion).  No keyword
  can express that, so integral floats in generated bodies are written as integers.
* The schema's ``pattern`` is ECMA-262; Python's ``re`` differs on ``\\s`` (U+001C-U+001F
  and U+0085 are whitespace to Python, U+FEFF is to ECMA) and on ``$`` (Python also matches
  before a final newline).  Our validator reads patterns as ECMA-262, but schemathesis
  judges its generated bodies with Python's ``re``, so bodies whose ``jobId`` or
  ``source.url`` hit exactly these differences are left out of the run.
* A ``webhook`` is refused (422) unless its host is in ``PREVIEW_WEBHOOK_ALLOWED_HOSTS`` and
  resolves to an allowed address.  The document leaves ``webhook`` out where webhooks are
  off; where they are on, no schema can say which addresses a host resolves to, so bodies
  with a ``webhook`` are left out (tests/test_webhooks.py covers them against a receiver).
"""

from __future__ import annotations

from typing import Any

import schemathesis

_DIALECT_DIFFERENCES = frozenset("\x1c\x1d\x1e\x1f\x85\ufeff")


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral_floats_as_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    return value


def _hits_regex_dialect_difference(text: Any) -> bool:
    return isinstance(text, str) and (
        text.endswith("\n") or not _DIALECT_DIFFERENCES.isdisjoint(text)
    )


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    return _integral_floats_as_ints(body)


@schemathesis.hook
def filter_body(context: Any, body: Any) -> bool:
    if not isinstance(body, dict):
        return True
    source = body.get("source")
    url = source.get("url") if isinstance(source, dict) else None
    return not (
        "webhook" in body
        or _hits_regex_dialect_difference(body.get("jobId"))
        or _hits_regex_dialect_difference(url)
    )

"""The marshmallow request schema and the JSON Schema accept and reject the same payloads."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dramatiq_preview.flask.schemas import JOB_REQUEST, request_issues
from dramatiq_preview.validation import validation_issues

# --- strategies: mostly valid payloads, each value wrong now and then -------------------

_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _mostly(valid: st.SearchStrategy[Any], *invalid: st.SearchStrategy[Any]) -> Any:
    """``valid`` 24 times in 25, else one of ``invalid`` (or any JSON junk)."""
    wrong = st.one_of(*invalid, _junk)

    @st.composite
    def pick(draw: st.DrawFn) -> Any:
        return draw(valid if draw(st.integers(0, 24)) else wrong)

    return pick()


def _int(low: int, high: int) -> Any:
    edges = [low, high, low - 1, high + 1]
    return _mostly(
        st.integers(low, high) | st.sampled_from(edges[:2]),
        st.sampled_from(edges),
        st.sampled_from(edges).map(float),  # 64.0 is not an integer here
        st.sampled_from(edges).map(str),  # nor is "64"
    )


def _sized(low: int, high: int) -> Any:
    """Strings around the length bounds ``low``..``high``."""
    lengths = st.sampled_from([low, high, low + 1]) | st.integers(low, min(high, low + 8))
    bad_lengths = st.sampled_from([n for n in (low - 1, high + 1) if n >= 0])
    return _mostly(
        st.text(min_size=low, max_size=min(high, 12)) | lengths.map(lambda n: "p" * n),
        bad_lengths.map(lambda n: "p" * n),
    )


def _choice(choices: list[str], *wrong: str) -> Any:
    return _mostly(st.sampled_from(choices), st.sampled_from([*wrong, choices[0].upper()]))


_job_ids = _mostly(
    st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}\Z") | st.just("j" * 128),
    st.sampled_from(["j" * 129, "a\n", "j" * 128 + "\n", "-a", "a b", "a/b", "", "é"]),
)
_urls = _mostly(
    st.builds(
        lambda scheme, rest: scheme + rest,
        st.sampled_from(["http://", "https://", "HTTP://", "hTtPs://"]),
        st.text(st.characters(exclude_categories=["Zs", "Cc"]), min_size=1, max_size=10),
    )
    | st.just("http://" + "u" * 2041),
    st.sampled_from(["http://", "ftp://example.com", "http:/x/y", "http://a b", "http://ab\n"]),
    st.just("http://" + "u" * 2042),
    st.text(max_size=10).map(lambda rest: "http://" + rest),
)


@st.composite
def _source(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["path"] * 4 + ["url"] * 4 + ["both", "none", "extra", "junk"]))
    if kind == "junk":
        return draw(_junk)
    source: dict[str, Any] = {}
    if kind in ("path", "both", "extra"):
        source["path"] = draw(_path)
    if kind in ("url", "both"):
        source["url"] = draw(_urls)
    if kind in ("extra", "none") and draw(st.booleans()):
        source[draw(st.sampled_from(["file", "href", "URL"]))] = draw(_junk)
    return source


def _sometimes(draw: st.DrawFn, target: dict[str, Any], key: str, values: Any, p: float) -> None:
    if draw(st.integers(0, 99)) < p * 100:
        target[key] = draw(values)


# Built once: hypothesis inspects every new strategy, which is slow inside a draw.
_side = _int(1, 4096)
_format = _choice(["webp", "jpeg", "png"], "gif", "jpg")
_fit = _choice(["contain", "cover", "fill"], "stretch")
_quality = _int(1, 100)
_page = _int(0, 2**31)
_priority = _choice(["high", "normal", "low"], "urgent")
_path = _sized(1, 1024)


@st.composite
def _output(draw: st.DrawFn) -> Any:
    output: dict[str, Any] = {}
    _sometimes(draw, output, "width", _side, 0.98)
    _sometimes(draw, output, "height", _side, 0.98)
    _sometimes(draw, output, "format", _format, 0.98)
    _sometimes(draw, output, "fit", _fit, 0.4)
    _sometimes(draw, output, "quality", _quality, 0.4)
    _sometimes(draw, output, "extra", _junk, 0.02)
    return output


_metadata = _mostly(
    st.dictionaries(
        st.text(max_size=8) | st.sampled_from([64, 65]).map(lambda n: "k" * n),
        _sized(0, 256),
        max_size=17,
    )
)


_sources = _mostly(_source())
_outputs = _mostly(st.lists(_output(), min_size=1, max_size=3), st.lists(_output(), max_size=9))


@st.composite
def payloads(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 49)) == 0:
        return draw(_junk)
    payload: dict[str, Any] = {}
    _sometimes(draw, payload, "jobId", _job_ids, 0.5)
    _sometimes(draw, payload, "source", _sources, 0.98)
    _sometimes(draw, payload, "outputs", _outputs, 0.98)
    _sometimes(draw, payload, "page", _page, 0.3)
    _sometimes(draw, payload, "priority", _priority, 0.3)
    _sometimes(draw, payload, "metadata", _metadata, 0.3)
    _sometimes(draw, payload, draw(st.sampled_from(["extra", "job_id", "callback"])), _junk, 0.02)
    return payload


def assert_agree(payload: Any) -> None:
    by_json_schema = validation_issues(payload)
    by_marshmallow = request_issues(payload)
    assert (not by_json_schema) == (not by_marshmallow), (payload, by_json_schema, by_marshmallow)
    if not by_json_schema:
        # A valid payload goes through marshmallow unchanged (same fingerprint, same job).
        assert JOB_REQUEST.load(payload) == payload


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(payloads())
def test_marshmallow_and_the_json_schema_agree_on_generated_payloads(payload: Any) -> None:
    assert_agree(payload)


def _valid(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "source": {"path": "a.png"},
        "outputs": [{"width": 64, "height": 64, "format": "webp"}],
    }
    payload.update(changes)
    return payload


def _output_with(**changes: Any) -> dict[str, Any]:
    return _valid(outputs=[{"width": 64, "height": 64, "format": "webp", **changes}])


EDGE_CASES = {
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


@pytest.mark.parametrize("payload", list(EDGE_CASES.values()), ids=list(EDGE_CASES))
def test_marshmallow_and_the_json_schema_agree_on_edge_cases(payload: Any) -> None:
    assert_agree(payload)


def test_the_edge_cases_cover_both_verdicts() -> None:
    verdicts = {name: not validation_issues(p) for name, p in EDGE_CASES.items()}
    assert verdicts["minimal"] and verdicts["everything"] and verdicts["path 1024"]
    assert not verdicts["width as float"] and not verdicts["width as string"]
    assert sum(verdicts.values()) >= 8 and sum(not v for v in verdicts.values()) >= 40


@pytest.mark.parametrize("where", ["source/url", "jobId", "metadata/k"])
def test_both_validators_refuse_text_that_is_not_unicode(where: str) -> None:
    # Found by the generated run above: a lone surrogate ("\ud800" in JSON) in a URL.
    payload: dict[str, Any] = {
        "jobId": "job-1",
        "source": {"url": "http://img.example/a.png"},
        "outputs": [{"width": 1, "height": 1, "format": "webp"}],
        "metadata": {"k": "v"},
    }
    parent, _, key = where.rpartition("/")
    node = payload[parent] if parent else payload
    node[key] = "http://\ud800" if key == "url" else "a\ud800"
    assert_agree(payload)
    assert request_issues(payload) == [{"path": where, "message": "must be valid Unicode text"}]

"""GET /job/{jobId}/events: the live status stream (Server-Sent Events, contract §10).

Under Flask's test client, werkzeug's threaded (development) server and a real gunicorn with
sync and gthread workers.  Jobs are moved through the real JobStore scripts between reads
of the stream (recorded without a broker message, so no worker takes them), or rendered by
the session's real worker.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import imagegen
import pytest
from flask import Flask
from preview_http import PREFIX, TOKEN, LiveServer, bearer, make_app, new_job_id, source_root
from support import wait_until

from dramatiq_preview.config import get_settings
from dramatiq_preview.flask import views
from dramatiq_preview.flask.appstate import get_state
from dramatiq_preview.names import ACTOR_NAME, RECORDED, queue_for
from dramatiq_preview.state import JobStore, Version, get_store
from dramatiq_preview.testing import RedisServer, free_port
from dramatiq_preview.validation import normalize

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
#: Short enough to see keep-alives and the end of a stream's lifetime in a test.
KEEPALIVE = 1
MAX_SECONDS = 4
STREAM_SETTINGS = {
    "PREVIEW_EVENTS_KEEPALIVE_SECONDS": str(KEEPALIVE),
    "PREVIEW_EVENTS_MAX_SECONDS": str(MAX_SECONDS),
}


@dataclass
class Block:
    """One block of an event stream: its fields and comment lines."""

    fields: dict[str, str] = field(default_factory=dict)
    comments: list[str] = field(default_factory=list)

    @property
    def is_event(self) -> bool:
        return "data" in self.fields

    @property
    def id(self) -> str:
        return self.fields["id"]

    @property
    def version(self) -> Version:
        """The event id as the version it names (``<incarnation>-<seq>``)."""
        version = Version.parse(self.id)
        assert version is not None, f"not an event id: {self.id!r}"
        return version

    @property
    def seq(self) -> int:
        return self.version.seq

    @property
    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.fields["data"])
        return data


def blocks_of_lines(lines: Iterable[str]) -> Iterator[Block]:
    """Parse ``text/event-stream`` lines (as the SSE spec reads them) into blocks."""
    block = Block()
    for line in lines:
        if line == "":
            if block.fields or block.comments:
                yield block
            block = Block()
        elif line.startswith(":"):
            block.comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            block.fields[name] = (
                block.fields[name] + "\n" + value if name in block.fields else value
            )


def lines_of_chunks(chunks: Iterable[bytes]) -> Iterator[str]:
    buffer = ""
    for chunk in chunks:
        buffer += chunk.decode("utf-8")
        *lines, buffer = buffer.split("\n")
        yield from lines


def events(blocks: Iterable[Block]) -> list[Block]:
    return [b for b in blocks if b.is_event]


@pytest.fixture(scope="module")
def store() -> JobStore:
    """The test-suite's store: the apps below use the same settings."""
    return get_store(get_settings())


def recorded(store: JobStore, job_id: str | None = None) -> str:
    """A queued job that no worker will take (recorded without a broker message)."""
    job_id = job_id or new_job_id()
    outcome, _ = store.create(
        job_id, fp="fp", priority="normal", queue="preview-normal", metadata={"page": "7"}
    )
    assert outcome == "created"
    return job_id


def run_to_success(store: JobStore, job_id: str, percent: int | None = 50) -> None:
    assert store.claim(job_id, token="tok", lease_ms=60_000, max_deliveries=3).verdict == "run"
    if percent is not None:
        assert store.progress(job_id, token="tok", percent=percent) == 0
    result = {"outputs": [{"path": f"{job_id}/0.png", "width": 8, "height": 8, "format": "png"}]}
    assert store.finish(job_id, token="tok", outcome="succeeded", data=result).verdict == "ok"


def subscribers(store: JobStore, job_id: str) -> int:
    channel = store.events_channel(job_id)
    return int(dict(store.client.pubsub_numsub(channel))[channel])


def no_subscriber_left(store: JobStore, job_id: str) -> bool:
    """Whether the job's stream let go of Redis (the server notices a closed connection on
    its next turn of the event loop)."""
    wait_until(lambda: subscribers(store, job_id), lambda n: n == 0, what="the unsubscribe")
    return True


# --- Flask's test client --------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream_app() -> Flask:
    return make_app(**STREAM_SETTINGS)


class Stream:
    """A streamed answer of the test client, read block by block."""

    def __init__(self, app: Flask, job_id: str, headers: dict[str, str] | None = None) -> None:
        self.response = app.test_client().get(
            f"{PREFIX}/job/{job_id}/events", headers=headers, buffered=False
        )
        self.blocks = blocks_of_lines(lines_of_chunks(self.response.response))

    def next_event(self) -> Block:
        return next(b for b in self.blocks if b.is_event)

    def close(self) -> None:
        self.response.close()


def test_the_stream_sends_the_status_then_every_change_and_ends_after_the_final_one(
    stream_app: Flask, store: JobStore
) -> None:
    # Given a queued job and a client on its event stream
    job_id = recorded(store)
    stream = Stream(stream_app, job_id)
    response = stream.response
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    # Then it says how long to wait before reconnecting, and sends the current status at once
    assert next(stream.blocks).fields == {"retry": "2000"}
    first = stream.next_event()
    assert first.fields["event"] == "status"
    assert first.status["state"] == "queued" and first.status["metadata"] == {"page": "7"}
    # When the job runs, reports progress and succeeds
    run_to_success(store, job_id)
    rest = list(stream.blocks)
    # Then each change is an event, in order, the final one last, and the stream ends there
    changes = events(rest)
    assert [(b.status["state"], b.status["progress"]) for b in changes] == [
        ("running", 0),
        ("running", 50),
        ("succeeded", 100),
    ]
    assert [b.version for b in changes] == [
        Version(first.version.incarnation, first.seq + n) for n in (1, 2, 3)
    ]
    # and the final event's data is the status route's answer, download URLs included
    final = changes[-1].status
    status = stream_app.test_client().get(f"{PREFIX}/job/{job_id}/status").json
    assert final == status
    assert final["result"]["outputs"][0]["url"] == f"{PREFIX}/job/{job_id}/outputs/0"
    assert no_subscriber_left(store, job_id)


def test_a_quiet_stream_sends_keep_alive_comments(stream_app: Flask, store: JobStore) -> None:
    job_id = recorded(store)
    stream = Stream(stream_app, job_id)
    stream.next_event()
    # Nothing changes for longer than PREVIEW_EVENTS_KEEPALIVE_SECONDS
    quiet = next(stream.blocks)
    assert quiet.comments == ["keep-alive"] and not quiet.fields
    stream.close()


def test_the_stream_ends_after_its_lifetime(stream_app: Flask, store: JobStore) -> None:
    # Given a job that never changes
    job_id = recorded(store)
    stream = Stream(stream_app, job_id)
    # When PREVIEW_EVENTS_MAX_SECONDS pass, the stream ends on its own
    blocks = list(stream.blocks)
    assert [b.status["state"] for b in events(blocks)] == ["queued"]
    assert any(b.comments == ["keep-alive"] for b in blocks)
    assert no_subscriber_left(store, job_id)


def test_last_event_id_resumes_and_never_misses_the_final_state(
    stream_app: Flask, store: JobStore
) -> None:
    # Given a client that saw the queued event, then lost its connection
    job_id = recorded(store)
    stream = Stream(stream_app, job_id)
    seen = stream.next_event().version
    stream.close()
    # When the job ends meanwhile and the client reconnects with Last-Event-ID
    run_to_success(store, job_id, percent=None)
    again = Stream(stream_app, job_id, {"Last-Event-ID": str(seen)})
    # Then it gets the final state, and the stream ends
    assert [(b.status["state"], b.version) for b in events(again.blocks)] == [
        ("succeeded", Version(seen.incarnation, seen.seq + 2))
    ]


def test_last_event_id_of_the_current_status_skips_it(stream_app: Flask, store: JobStore) -> None:
    job_id = recorded(store)
    current = store.get_versioned(job_id)
    assert current is not None
    stream = Stream(stream_app, job_id, {"Last-Event-ID": str(current[0])})
    assert next(stream.blocks).fields == {"retry": "2000"}
    # The next block is a keep-alive, not the queued status again
    assert next(stream.blocks).comments == ["keep-alive"]
    run_to_success(store, job_id, percent=None)
    assert [b.status["state"] for b in events(stream.blocks)] == ["running", "succeeded"]


@pytest.mark.parametrize("how", ["header", "query"])
def test_a_client_that_has_the_final_event_gets_204(
    stream_app: Flask, store: JobStore, how: str
) -> None:
    # Given a finished job whose final event the client has
    job_id = recorded(store)
    run_to_success(store, job_id)
    final = store.get_versioned(job_id)
    assert final is not None
    url = f"{PREFIX}/job/{job_id}/events"
    client = stream_app.test_client()
    if how == "header":
        response = client.get(url, headers={"Last-Event-ID": str(final[0])})
    else:
        response = client.get(url, query_string={"lastEventId": str(final[0])})
    # Then the answer is 204 without a body, which stops an EventSource from reconnecting
    assert (response.status_code, response.data) == (204, b"")
    assert no_subscriber_left(store, job_id)


def test_a_last_event_id_that_is_no_event_id_is_ignored(stream_app: Flask, store: JobStore) -> None:
    job_id = recorded(store)
    store.cancel(job_id)
    stream = Stream(stream_app, job_id, {"Last-Event-ID": "99999999999999999999999"})
    assert [b.status["state"] for b in events(stream.blocks)] == ["cancelled"]


def test_a_plain_seq_id_of_earlier_releases_gets_the_current_status(
    stream_app: Flask, store: JobStore
) -> None:
    # Given a final job and a client resuming with an id of the old form (its seq alone)
    job_id = recorded(store)
    run_to_success(store, job_id)
    final = store.get_versioned(job_id)
    assert final is not None
    stream = Stream(stream_app, job_id, {"Last-Event-ID": str(final[0].seq)})
    # Then it gets the current status (not 204), with an id of the new form
    assert stream.response.status_code == 200
    assert [(b.status["state"], b.version) for b in events(stream.blocks)] == [
        ("succeeded", final[0])
    ]


def test_an_id_of_a_record_since_deleted_gets_the_new_records_status(
    stream_app: Flask, store: JobStore
) -> None:
    # Given a client that saw a job's final event
    job_id = recorded(store)
    run_to_success(store, job_id)
    old = events(Stream(stream_app, job_id).blocks)[-1]
    assert old.status["state"] == "succeeded"
    # When the record is deleted, the jobId submitted again, and the new record succeeds
    # at the same seq
    store.client.delete(store.job_key(job_id))  # the record goes (as when it expires)
    recorded(store, job_id)
    run_to_success(store, job_id)
    assert (store.get_with_seq(job_id) or (0, {}))[0] == old.seq
    # Then resuming with the old id gets the new record's status, not 204
    stream = Stream(stream_app, job_id, {"Last-Event-ID": old.id})
    assert stream.response.status_code == 200
    [event] = events(stream.blocks)
    assert event.status["state"] == "succeeded" and event.seq == old.seq
    assert event.version.incarnation != old.version.incarnation


def test_a_record_deleted_mid_stream_ends_the_stream_cleanly(
    stream_app: Flask, store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a client on the stream of a queued job
    job_id = recorded(store)
    stream = Stream(stream_app, job_id)
    stream.next_event()
    # When the record is deleted (as expiry would)
    with caplog.at_level(logging.WARNING):
        store.client.delete(store.job_key(job_id))
        # Then the stream just ends at the next keep-alive period (no event, no error)
        rest = list(stream.blocks)
    assert events(rest) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert no_subscriber_left(store, job_id)
    # and a reconnect gets the 404
    response = stream_app.test_client().get(f"{PREFIX}/job/{job_id}/events")
    assert response.status_code == 404


SYNC_WORKER = {"wsgi.multithread": False, "wsgi.multiprocess": True}


def test_streams_from_a_sync_worker_are_warned_about_once_per_process(
    stream_app: Flask,
    store: JobStore,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(views, "_sync_worker_warned", False)
    job_id = recorded(store)
    store.cancel(job_id)
    url = f"{PREFIX}/job/{job_id}/events"
    client = stream_app.test_client()

    def warnings() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "dramatiq_preview.flask" and "single-threaded" in r.getMessage()
        ]

    with caplog.at_level(logging.WARNING, logger="dramatiq_preview.flask"):
        # Given servers with threads, or a single process: no warning
        for environ in (
            {"wsgi.multithread": True, "wsgi.multiprocess": True},
            {"wsgi.multithread": False, "wsgi.multiprocess": False},
        ):
            assert client.get(url, environ_overrides=environ).status_code == 200
        assert warnings() == []
        # When sync worker processes serve streams
        for _ in range(2):
            assert client.get(url, environ_overrides=SYNC_WORKER).status_code == 200
    # Then the first stream logs a warning that points to the docs, once
    [warning] = warnings()
    assert "docs/events.md" in warning


def test_redis_that_confirms_no_subscription_within_the_lifetime_is_a_503() -> None:
    # Given a job on a Redis of our own that stops answering, and streams that may live 1 s
    with RedisServer() as server:
        app = make_app(
            PREVIEW_REDIS_URL=server.url,
            PREVIEW_EVENTS_MAX_SECONDS="1",
            PREVIEW_EVENTS_KEEPALIVE_SECONDS="1",
        )
        state = get_state(app)
        assert state is not None
        # Recording it leaves a connection in the pool: nothing is left to connect.
        job_id = recorded(state.client.store)
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            response = app.test_client().get(f"{PREFIX}/job/{job_id}/events")
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
    # Then the stream's lifetime bounds the wait for SUBSCRIBE, and the answer is a 503
    assert response.status_code == 503
    assert response.json is not None and response.json["error"] == "unavailable"


def test_head_answers_the_headers_and_holds_nothing_open(
    stream_app: Flask, store: JobStore
) -> None:
    job_id = recorded(store)
    response = stream_app.test_client().head(f"{PREFIX}/job/{job_id}/events")
    assert response.status_code == 200 and response.data == b""
    assert response.mimetype == "text/event-stream"
    response.close()  # what a WSGI server does once it sent the answer
    assert no_subscriber_left(store, job_id)


@pytest.mark.parametrize("job_id", ["never-submitted", "bad%20id"])
def test_an_unknown_job_is_a_json_404(stream_app: Flask, job_id: str) -> None:
    response = stream_app.test_client().get(f"{PREFIX}/job/{job_id}/events")
    assert response.status_code == 404
    assert response.mimetype == "application/json"
    assert response.json is not None and response.json["error"] == "not_found"


def test_the_stream_needs_the_token_like_every_route(store: JobStore) -> None:
    app = make_app(PREVIEW_API_TOKEN=TOKEN, **STREAM_SETTINGS)
    job_id = recorded(store)
    store.cancel(job_id)
    client = app.test_client()
    refused = client.get(f"{PREFIX}/job/{job_id}/events")
    assert refused.status_code == 401 and refused.json is not None
    assert refused.json["error"] == "unauthorized"
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    accepted = client.get(f"{PREFIX}/job/{job_id}/events", headers=bearer())
    assert accepted.status_code == 200 and b"event: status" in accepted.data


def test_the_host_authorize_hook_applies_to_the_stream(store: JobStore) -> None:
    app = make_app(authorize=lambda request: False, **STREAM_SETTINGS)
    response = app.test_client().get(f"{PREFIX}/job/{recorded(store)}/events")
    assert response.status_code == 403 and response.json is not None
    assert response.json["error"] == "forbidden"


def test_redis_down_before_the_stream_is_a_json_503() -> None:
    server = RedisServer()  # never started: nothing listens on its port
    app = make_app(PREVIEW_REDIS_URL=server.url, **STREAM_SETTINGS)
    response = app.test_client().get(f"{PREFIX}/job/{new_job_id()}/events")
    server.close()
    assert response.status_code == 503
    assert response.json is not None and response.json["error"] == "unavailable"
    assert response.headers["Retry-After"] == "5"


def test_the_openapi_document_lists_the_stream(stream_app: Flask) -> None:
    doc = stream_app.test_client().get(f"{PREFIX}/openapi.json").json
    assert doc is not None
    answers = doc["paths"]["/job/{jobId}/events"]["get"]["responses"]
    assert set(answers) == {"200", "204", "404", "503"}
    assert set(answers["200"]["content"]) == {"text/event-stream"}
    webhook = doc["components"]["schemas"]["Status"]["properties"]["webhook"]
    assert {"type": "null"} in webhook["anyOf"]
    assert "webhook" in doc["components"]["schemas"]["Status"]["required"]


# --- over HTTP: werkzeug's threaded server and gunicorn ---------------------------------


class Gunicorn:
    """``gunicorn`` serving the test app (``preview_http:make_app()``) in its own process
    group; the settings come from the environment."""

    def __init__(self, worker_class: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        threads = ["--threads=4"] if worker_class == "gthread" else []
        self.process = subprocess.Popen(
            [
                os.path.join(os.path.dirname(sys.executable), "gunicorn"),
                f"--worker-class={worker_class}",
                "--workers=2",
                *threads,
                "--graceful-timeout=5",
                f"--bind=127.0.0.1:{self.port}",
                "preview_http:make_app()",
            ],
            cwd=REPO,
            env={
                **os.environ,
                **env,
                "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            },
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{self.url}{PREFIX}/worker/health", timeout=10)
                return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"gunicorn did not start: {self.log.read()[-3000:]!r}")
            time.sleep(0.1)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module", params=["werkzeug", "gunicorn-sync", "gunicorn-gthread"])
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The API with a token and short stream settings, served over real HTTP."""
    settings = {"PREVIEW_API_TOKEN": TOKEN, **STREAM_SETTINGS}
    if request.param == "werkzeug":
        with LiveServer(make_app(**settings)) as live:
            yield live.url
        return
    gunicorn = Gunicorn(request.param.removeprefix("gunicorn-"), settings)
    try:
        gunicorn.wait_ready()
        yield gunicorn.url
    finally:
        gunicorn.stop()


@pytest.fixture
def http(server_url: str) -> Iterator[httpx.Client]:
    timeout = httpx.Timeout(30, read=MAX_SECONDS + 30)
    with httpx.Client(base_url=server_url, headers=bearer(), timeout=timeout) as client:
        yield client


def test_over_http_events_come_in_order_and_the_stream_closes_after_the_final_one(
    http: httpx.Client, store: JobStore
) -> None:
    # Given a client on the event stream of a queued job
    job_id = recorded(store)
    with http.stream("GET", f"{PREFIX}/job/{job_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        blocks = blocks_of_lines(response.iter_lines())
        first = next(b for b in blocks if b.is_event)
        assert first.status["state"] == "queued"
        # When the job runs to success
        run_to_success(store, job_id)
        # Then the changes come in order, the final one last, and the server ends the stream
        changes = events(blocks)
    assert [(b.status["state"], b.status["progress"]) for b in changes] == [
        ("running", 0),
        ("running", 50),
        ("succeeded", 100),
    ]
    assert [b.version for b in changes] == [
        Version(first.version.incarnation, first.seq + n) for n in (1, 2, 3)
    ]
    # and the client that has the final event gets 204 when it reconnects
    again = http.get(
        f"{PREFIX}/job/{job_id}/events", headers={"Last-Event-ID": str(changes[-1].id)}
    )
    assert (again.status_code, again.content) == (204, b"")


def test_over_http_a_quiet_stream_keeps_alive_and_ends_after_its_lifetime(
    http: httpx.Client, store: JobStore
) -> None:
    # Given a job that does not change while a client listens
    job_id = recorded(store)
    with http.stream("GET", f"{PREFIX}/job/{job_id}/events") as response:
        blocks = list(blocks_of_lines(response.iter_lines()))
    # Then the client got the status, keep-alive comments, and the end of the stream
    assert [b.status["state"] for b in events(blocks)] == ["queued"]
    assert any(b.comments == ["keep-alive"] for b in blocks)
    # When it reconnects with Last-Event-ID after the job was cancelled
    store.cancel(job_id)
    last = events(blocks)[-1].version
    with http.stream(
        "GET", f"{PREFIX}/job/{job_id}/events", headers={"Last-Event-ID": str(last)}
    ) as response:
        resumed = events(blocks_of_lines(response.iter_lines()))
    # Then it gets the final state, without the queued status again
    assert [(b.status["state"], b.version) for b in resumed] == [
        ("cancelled", Version(last.incarnation, last.seq + 1))
    ]


def test_over_http_404_is_json_and_the_token_is_required(
    http: httpx.Client, server_url: str, store: JobStore
) -> None:
    missing = http.get(f"{PREFIX}/job/{new_job_id()}/events")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert missing.headers["Content-Type"] == "application/json"
    job_id = recorded(store)
    store.cancel(job_id)
    refused = httpx.get(f"{server_url}{PREFIX}/job/{job_id}/events", timeout=30)
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"


@pytest.fixture(scope="module")
def picture() -> str:
    path = source_root() / "events" / "picture.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(imagegen.png(imagegen.quadrants(120, 80)))
    return "events/picture.png"


@pytest.mark.usefixtures("worker")
def test_over_http_a_rendered_job_streams_to_its_final_state(
    http: httpx.Client, store: JobStore, make_broker: Any, picture: str
) -> None:
    # Given a job recorded as a submit records it, but not on the broker yet: no worker can
    # start it before its stream is open
    payload = normalize(
        {
            "jobId": new_job_id(),
            "source": {"path": picture},
            "outputs": [{"width": 60, "height": 60, "format": "webp"}],
        }
    )
    job_id = payload["jobId"]
    queue = queue_for(payload["priority"])
    assert store.record(payload, queue=queue)[0] == "created"
    with http.stream("GET", f"{PREFIX}/job/{job_id}/events") as response:
        blocks = blocks_of_lines(response.iter_lines())
        first = next(b for b in blocks if b.is_event)
        # When the worker gets it, with the stream open
        make_broker(get_settings()).enqueue(
            dramatiq.Message(
                queue_name=queue,
                actor_name=ACTOR_NAME,
                args=(payload,),
                kwargs={},
                options={RECORDED: True},
            )
        )
        received = [first, *events(blocks)]
    # Then the stream went queued, running, succeeded, in that order, with rising ids and
    # progress that never goes back, and ended after the success
    states = [b.status["state"] for b in received]
    assert states[0] == "queued" and states[-1] == "succeeded"
    assert [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]] == [
        "queued",
        "running",
        "succeeded",
    ]
    seqs = [b.seq for b in received]
    assert seqs == sorted(set(seqs))
    assert len({b.version.incarnation for b in received}) == 1
    progress = [b.status["progress"] for b in received]
    assert progress == sorted(progress)
    output = received[-1].status["result"]["outputs"][0]
    assert http.get(output["url"]).headers["Content-Type"] == "image/webp"


def test_over_http_a_record_deleted_mid_stream_ends_the_response_cleanly(
    http: httpx.Client, store: JobStore
) -> None:
    # Given a client on the stream of a queued job
    job_id = recorded(store)
    with http.stream("GET", f"{PREFIX}/job/{job_id}/events") as response:
        blocks = blocks_of_lines(response.iter_lines())
        assert next(b for b in blocks if b.is_event).status["state"] == "queued"
        # When the record is deleted
        store.client.delete(store.job_key(job_id))
        # Then the response just ends: a complete chunked body (an error in the server's
        # iterator would cut it short, which httpx reports), with no event after the first
        assert events(blocks) == []
    assert no_subscriber_left(store, job_id)
    assert http.get(f"{PREFIX}/job/{job_id}/events").status_code == 404


@pytest.fixture(scope="module", params=["sync", "gthread"])
def long_stream_server(request: pytest.FixtureRequest) -> Iterator[Gunicorn]:
    """gunicorn whose streams outlive any test (only a client that leaves ends one), with
    the short keep-alive period."""
    gunicorn = Gunicorn(
        request.param,
        {
            "PREVIEW_API_TOKEN": TOKEN,
            "PREVIEW_EVENTS_KEEPALIVE_SECONDS": str(KEEPALIVE),
            "PREVIEW_EVENTS_MAX_SECONDS": "3600",
        },
    )
    try:
        gunicorn.wait_ready()
        yield gunicorn
    finally:
        gunicorn.stop()


def test_over_http_a_client_that_leaves_is_let_go_of(
    long_stream_server: Gunicorn, store: JobStore
) -> None:
    # Given a client on the stream of a job that does not change
    job_id = recorded(store)
    client = socket.create_connection(("127.0.0.1", long_stream_server.port), timeout=30)
    request = (
        f"GET {PREFIX}/job/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n"
    )
    client.sendall(request.encode())
    received = b""
    while b"event: status" not in received:
        chunk = client.recv(65536)
        assert chunk, f"the stream ended early: {received!r}"
        received += chunk
    assert subscribers(store, job_id) == 1
    # When the client drops the connection mid-stream
    client.close()
    # Then the server notices at a keep-alive it cannot send (the first write after the
    # client's FIN still succeeds; the second fails: within two keep-alive periods) and
    # lets go of the subscription
    assert no_subscriber_left(store, job_id)

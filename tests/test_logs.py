"""Logs: one line per job transition, with jobId/attempt/state/duration; JSON lines on demand."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from support import python_env, wait_for_log

from dramatiq_preview import PreviewClient, Settings
from dramatiq_preview.broker import build_broker
from dramatiq_preview.events import emit
from dramatiq_preview.logs import JsonFormatter, configure_logging
from dramatiq_preview.middleware import LogFormat
from dramatiq_preview.testing import RedisServer, WorkerProcess, free_port, wait_for_state

MISSING = {
    "source": {"path": "logs/none.png"},
    "outputs": [{"width": 8, "height": 8, "format": "png"}],
}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The ``dramatiq_preview.jobs`` logger, formatted as JSON into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    jobs = logging.getLogger("dramatiq_preview.jobs")
    jobs.addHandler(handler)
    old_level = jobs.level
    jobs.setLevel(logging.INFO)
    yield stream
    jobs.removeHandler(handler)
    jobs.setLevel(old_level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_transition_is_one_json_object_with_the_job_fields(captured: io.StringIO) -> None:
    # When a job runs, retries and fails
    emit("running", job_id="j1", attempt=1)
    emit(
        "retrying",
        job_id="j1",
        attempt=1,
        duration=0.25,
        error={"type": "source_unavailable", "message": "503"},
    )
    emit(
        "failed",
        job_id="j1",
        attempt=2,
        duration=1.5,
        error={"type": "source_unavailable", "message": "503 again"},
    )
    emit("duplicate", job_id="j1")  # a submit, not a transition: not logged
    # Then there is one JSON line per transition, carrying the job's fields
    records = lines(captured)
    assert [(r["jobId"], r["state"], r["attempt"]) for r in records] == [
        ("j1", "running", 1),
        ("j1", "retrying", 1),
        ("j1", "failed", 2),
    ]
    assert [r["durationSeconds"] for r in records] == [0.0, 0.25, 1.5]
    assert records[2]["errorType"] == "source_unavailable"
    assert (
        records[2]["message"] == "job j1 failed (attempt 2, 1.500s): source_unavailable: 503 again"
    )
    assert {r["level"] for r in records} == {"INFO"}
    assert all(r["logger"] == "dramatiq_preview.jobs" and r["time"].endswith("Z") for r in records)


def test_a_traceback_stays_on_one_line() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("boom\nwith a newline")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x",
            logging.ERROR,
            __file__,
            1,
            "failed: %s",
            ("it",),
            exc_info=sys.exc_info(),
        )
    text = formatter.format(record)
    assert "\n" not in text
    data = json.loads(text)
    assert data["message"] == "failed: it"
    assert "ValueError: boom" in data["exception"]


def test_configure_logging_switches_handlers_to_json_and_leaves_text_alone() -> None:
    logger = logging.getLogger("preview-test-" + uuid.uuid4().hex)
    handler = logging.StreamHandler(io.StringIO())
    logger.addHandler(handler)
    configure_logging("text", logger=logger)
    assert not isinstance(handler.formatter, JsonFormatter)
    configure_logging(Settings.from_mapping({"PREVIEW_LOG_FORMAT": "json"}), logger=logger)
    assert isinstance(handler.formatter, JsonFormatter)
    # A logger without handlers gets one on stderr
    bare = logging.getLogger("preview-test-" + uuid.uuid4().hex)
    configure_logging("json", logger=bare)
    assert len(bare.handlers) == 1 and isinstance(bare.handlers[0].formatter, JsonFormatter)


def run_failing_job(redis_server: RedisServer, ns: str) -> str:
    settings = Settings.from_mapping(
        {"PREVIEW_REDIS_URL": redis_server.url, "PREVIEW_NAMESPACE": ns}
    )
    broker = build_broker(settings)
    try:
        client = PreviewClient(settings, broker=broker)
        job_id = client.submit(dict(MISSING)).job_id
        wait_for_state(client.status, job_id, ("failed",), timeout=30)
        return job_id
    finally:
        broker.client.close()


@pytest.mark.slow
def test_a_json_worker_writes_json_lines_with_the_job_fields(
    redis_server: RedisServer, start_worker: Any, tmp_path: Path
) -> None:
    # Given a worker with PREVIEW_LOG_FORMAT=json
    ns = "logs-" + uuid.uuid4().hex[:8]
    env = {
        "PREVIEW_NAMESPACE": ns,
        "PREVIEW_LOG_FORMAT": "json",
        "dramatiq_prom_host": "127.0.0.1",
        "dramatiq_prom_port": str(free_port()),
        "dramatiq_prom_db": str(tmp_path / "prom"),
    }
    worker = start_worker(env, processes=2)
    # When a job runs and fails
    job_id = run_failing_job(redis_server, ns)
    wait_for_log(worker, f'"jobId": "{job_id}", "state": "failed"')
    # Then every line the worker processes write is a JSON object; the job's transitions
    # carry its fields.  (Dramatiq's main process writes a few lifecycle lines of its own.)
    records = []
    for line in worker.log.splitlines():
        if line.startswith("[") and ("MainProcess" in line or "ForkProcess" in line):
            continue
        records.append(json.loads(line))
    mine = [r for r in records if r.get("jobId") == job_id]
    assert [r["state"] for r in mine] == ["running", "failed"]
    assert mine[1]["attempt"] == 1 and mine[1]["durationSeconds"] >= 0
    assert mine[1]["errorType"] == "source_not_found"


def test_a_text_worker_logs_one_line_per_transition(
    worker: WorkerProcess, redis_server: RedisServer
) -> None:
    # Given the suite's worker (text format) / When a job fails
    job_id = run_failing_job(redis_server, "dptest")
    # Then its transitions are one line each, with attempt and duration
    wait_for_log(worker, f"job {job_id} failed (attempt 1, ")
    assert f"job {job_id} running (attempt 1, 0.000s)" in worker.log
    assert f"job {job_id} failed (attempt 1, " in worker.log
    assert "source_not_found" in worker.log


# -- payloads stay out of Dramatiq's own log lines (issue 19) ------------------------------


def secret_jobs(source_server: Any, sig: str, meta: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two payloads whose URL carries a signature and whose metadata carries a secret: one
    whose source answers 503 (retried, then dead) and one whose source is missing (404,
    failed at once)."""
    query = f"?X-Amz-Signature={sig}&X-Amz-Expires=60"
    # (the source server's routes include the query string)
    failing = source_server.add("/signed.png" + query, b"never served", fail=[503] * 20)
    outputs = [{"width": 8, "height": 8, "format": "png"}]
    transient = {
        "jobId": "t-" + uuid.uuid4().hex,
        "source": {"url": failing},
        "outputs": outputs,
        "metadata": {"secret": meta},
    }
    permanent = dict(
        transient,
        jobId="p-" + uuid.uuid4().hex,
        source={"url": source_server.url("/missing.png") + query},
    )
    return transient, permanent


@pytest.mark.slow
def test_dramatiq_log_lines_name_the_job_but_never_print_its_payload(
    redis_server: RedisServer, start_worker: Any, source_server: Any, tmp_path: Path
) -> None:
    # Given a `dramatiq dramatiq_preview` worker logging at debug level (-v)
    ns = "logs-" + uuid.uuid4().hex[:8]
    env = {
        "PREVIEW_NAMESPACE": ns,
        "dramatiq_prom_host": "127.0.0.1",
        "dramatiq_prom_port": str(free_port()),
        "dramatiq_prom_db": str(tmp_path / "prom"),
    }
    worker = start_worker(env, extra_args=["-v"])
    sig, meta = "SigSECRET" + uuid.uuid4().hex, "MetaSECRET" + uuid.uuid4().hex
    transient, permanent = secret_jobs(source_server, sig, meta)
    # When a job whose source fails (retried, then dead) and one whose source is missing run
    settings = Settings.from_mapping(
        {"PREVIEW_REDIS_URL": redis_server.url, "PREVIEW_NAMESPACE": ns}
    )
    broker: Any = build_broker(settings)
    try:
        client = PreviewClient(settings, broker=broker)
        for payload in (transient, permanent):
            client.submit(payload)
        for payload in (transient, permanent):
            wait_for_state(client.status, payload["jobId"], ("failed",), timeout=30)
    finally:
        broker.client.close()
    wait_for_log(worker, f"job {transient['jobId']} failed (attempt 3, ")
    log = worker.log
    # Then Dramatiq's lines name each job by its jobId and message id...
    short = f"Failed to process message render_preview(jobId={transient['jobId']}, message_id="
    assert short in log and "with unhandled exception" in log
    short = f"Failed to process message render_preview(jobId={permanent['jobId']}, message_id="
    assert short in log and "with expected exception SourceNotFound" in log
    assert f"Received message render_preview(jobId={permanent['jobId']}, message_id=" in log
    # ...and neither the signed URL nor the metadata shows anywhere in the worker's log
    assert sig not in log
    assert meta not in log


@pytest.mark.slow
def test_an_in_process_worker_keeps_payloads_out_of_dramatiq_log_lines(
    redis_server: RedisServer, source_server: Any, tmp_path: Path
) -> None:
    # Given a host process that logs everything at debug level and starts a Worker itself
    ns = "logs-" + uuid.uuid4().hex[:8]
    sig, meta = "SigSECRET" + uuid.uuid4().hex, "MetaSECRET" + uuid.uuid4().hex
    transient, permanent = secret_jobs(source_server, sig, meta)
    code = f"""
        import logging, sys
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
        import dramatiq
        import dramatiq_preview
        from dramatiq_preview import PreviewClient, get_settings
        from dramatiq_preview.testing import wait_for_state

        broker = dramatiq.get_broker()
        worker = dramatiq.Worker(broker, worker_threads=1)
        worker.start()
        client = PreviewClient(get_settings(), broker=broker)
        for payload in ({transient!r}, {permanent!r}):
            client.submit(payload)
        for payload in ({transient!r}, {permanent!r}):
            wait_for_state(client.status, payload["jobId"], ("failed",), timeout=30)
        worker.join()
        worker.stop()
    """
    env = {
        "PREVIEW_NAMESPACE": ns,
        "dramatiq_prom_host": "127.0.0.1",
        "dramatiq_prom_port": str(free_port()),
        "dramatiq_prom_db": str(tmp_path / "prom"),
    }
    # When both jobs run and fail
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=python_env(**env),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stderr
    # Then Dramatiq's lines name the jobs, and the secrets are nowhere
    short = f"Failed to process message render_preview(jobId={transient['jobId']}, message_id="
    assert short in log
    short = f"Received message render_preview(jobId={permanent['jobId']}, message_id="
    assert short in log
    assert sig not in log
    assert meta not in log


def test_only_render_preview_messages_are_shortened(redis_server: RedisServer) -> None:
    # Given the filters of a worker about to boot (not started: no thread, no connection)
    settings = Settings.from_mapping({"PREVIEW_REDIS_URL": redis_server.url})
    broker: Any = build_broker(settings)
    worker = dramatiq.Worker(broker, worker_threads=1)
    log_format = next(m for m in broker.middleware if isinstance(m, LogFormat))
    log_format.before_worker_boot(broker, worker)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("dramatiq.worker.WorkerThread")
    logger.addHandler(handler)
    try:
        # When Dramatiq's lines print our message, one without a jobId, and another actor's
        ours: dramatiq.Message[Any] = dramatiq.Message(
            queue_name="preview-normal",
            actor_name="render_preview",
            args=({"jobId": "j-1", "metadata": {"secret": "MetaSECRET"}},),
            kwargs={},
            options={},
        )
        no_id = ours._replace(args=({"source": {"url": "https://x/?sig=SECRET"}},))
        theirs = ours._replace(actor_name="other_actor", args=("their-arg",))
        for message in (ours, no_id, theirs):
            logger.warning("Message %s was skipped.", MessageProxy(message))
        logger.warning("Retrying message %r.", ours)
    finally:
        logger.removeHandler(handler)
        broker.client.close()
    # Then ours are named by jobId (else by message id), the other actor's as Dramatiq does
    assert stream.getvalue().splitlines() == [
        f"Message render_preview(jobId=j-1, message_id={ours.message_id}) was skipped.",
        f"Message render_preview(jobId={no_id.message_id.replace('-', '')}, "
        f"message_id={no_id.message_id}) was skipped.",
        "Message other_actor('their-arg') was skipped.",
        f"Retrying message render_preview(jobId=j-1, message_id={ours.message_id}).",
    ]

"""Logs: one line per job transition, with jobId/attempt/state/duration; JSON lines on demand."""

from __future__ import annotations

import io
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import wait_for_log

from dramatiq_preview import PreviewClient, Settings
from dramatiq_preview.broker import build_broker
from dramatiq_preview.events import emit
from dramatiq_preview.logs import JsonFormatter, configure_logging
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

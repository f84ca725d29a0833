"""The examples under examples/, run as a user runs them (the scripts themselves, not
copies), each against servers of its own."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import PYTHON, REPO, python_env

from dramatiq_preview.testing import RedisServer, WorkerProcess

IMAGES = REPO / "examples" / "images"


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def example_env(redis: RedisServer, tmp_path: Path) -> dict[str, str]:
    return {
        "PREVIEW_REDIS_URL": redis.url,
        "PREVIEW_BROKER_URL": redis.url,
        "PREVIEW_NAMESPACE": "examples-" + uuid.uuid4().hex[:8],
        "PREVIEW_SOURCE_ROOT": str(IMAGES),
        "PREVIEW_OUTPUT_DIR": str(tmp_path / "previews"),
        "PYTHONPATH": str(REPO),
    }


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=REPO, env=python_env(**env), capture_output=True, text=True, timeout=300
    )


def test_the_plain_python_producer(private_redis: RedisServer, tmp_path: Path) -> None:
    env = example_env(private_redis, tmp_path)
    with WorkerProcess(env=env):
        result = run([PYTHON, "examples/producer/produce.py", "--timeout", "120"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == "submitted it again: duplicate=True"
    assert lines[3].startswith("refused before enqueue: invalid payload: outputs")
    finished = [line.split() for line in lines[4:]]
    assert [(f[1], len(f)) for f in finished] == [("succeeded", 3), ("succeeded", 3)]
    for _job_id, _state, output in finished:
        assert (tmp_path / "previews" / output).stat().st_size > 0


def test_a_host_with_its_own_broker(private_redis: RedisServer, tmp_path: Path) -> None:
    env = example_env(private_redis, tmp_path)
    with WorkerProcess(env=env, module="examples.own_broker.tasks") as worker:
        result = run([PYTHON, "-m", "examples.own_broker.send", "--timeout", "120"], env)
        assert result.returncode == 0, result.stdout + result.stderr + worker.log
        job_id = result.stdout.split()[1]
        assert f"{job_id}: succeeded" in result.stdout
        assert "on the host's broker (host-app)" in result.stdout
        # The host's own actor ran after the preview, on the same worker
        _wait_for_log(worker, f"host actor: job {job_id} is succeeded: {job_id}/0.png")
    # Its messages went through the host's broker namespace, not Dramatiq's default one
    keys = private_redis.client().keys("host-app:*")
    assert keys, "the host's broker namespace was not used"


def test_the_multi_host_layout_runs_locally_with_s3() -> None:
    result = run(
        [PYTHON, "examples/multi_host/run_local.py", "--jobs-per-sample", "1"],
        {"PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    rows = [line.split("\t") for line in result.stdout.splitlines() if line.startswith("multi-")]
    samples = [p for p in IMAGES.iterdir() if p.suffix not in {".md", ".txt"}]
    assert len(rows) == len(samples)
    assert all(row[1] == "succeeded" and row[2] in {"host-a", "host-b"} for row in rows), rows
    assert all(int(row[3].split()[0]) > 0 for row in rows)


def _wait_for_log(worker: WorkerProcess, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in worker.log:
        assert time.monotonic() < deadline, f"not in the worker log: {text}\n{worker.log}"
        time.sleep(0.1)

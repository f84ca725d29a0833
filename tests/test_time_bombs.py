"""Time bombs (issue #16): a source whose render runs past the time limit every time costs at
most two time limits of worker time; the second overrun fails it as ``too_complex``
(permanent), not retried up to PREVIEW_MAX_RETRIES times.  A real worker, a real slow SVG
(blurred shapes drawn large by librsvg), nothing mocked."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import imagegen
import pytest
from support import wait_for_log

from dramatiq_preview import PreviewClient, Settings
from dramatiq_preview.testing import wait_for_state

TIME_LIMIT_MS = 2000


@pytest.mark.slow
def test_a_source_that_overruns_the_time_limit_twice_fails_as_too_complex(
    source_root: Path, start_worker: Any
) -> None:
    # Given a worker with a short time limit and room for five retries, and an SVG whose
    # render takes far longer than that limit
    ns = "bomb-" + uuid.uuid4().hex[:10]
    env = {
        "PREVIEW_NAMESPACE": ns,
        "PREVIEW_TIME_LIMIT_MS": str(TIME_LIMIT_MS),
        "PREVIEW_MAX_RETRIES": "5",
        "PREVIEW_MIN_BACKOFF_MS": "100",
        "PREVIEW_MAX_BACKOFF_MS": "200",
    }
    name = f"bombs/{uuid.uuid4().hex}.svg"
    (source_root / name).parent.mkdir(parents=True, exist_ok=True)
    (source_root / name).write_bytes(imagegen.time_bomb_svg())
    worker = start_worker(env=env, threads=1)
    job_id = "bomb-" + uuid.uuid4().hex
    with PreviewClient(Settings.from_mapping(env)) as client:
        # When it is submitted
        client.submit(
            {
                "jobId": job_id,
                "source": {"path": name},
                "outputs": [{"width": 2048, "height": 2048, "format": "png"}],
            }
        )
        # Then the first overrun is retried as a time limit ...
        wait_for_log(worker, f"job {job_id} retrying (attempt 1", timeout=60)
        assert f"job {job_id} retrying (attempt 1" in worker.log
        assert "time_limit" in worker.log.split(f"job {job_id} retrying (attempt 1", 1)[1][:400]
        # ... and the second fails it for good, as too_complex: two attempts, not six
        status = wait_for_state(client.status, job_id, ("failed", "succeeded"), timeout=60)
    assert status["state"] == "failed", status
    assert status["error"]["type"] == "too_complex"
    assert status["error"]["retryable"] is False
    assert "time limit of 2000 ms" in status["error"]["message"]
    assert status["attempts"] == 2
    wait_for_log(worker, f"job {job_id} failed (attempt 2")
    assert worker.log.count(f"job {job_id} running") == 2

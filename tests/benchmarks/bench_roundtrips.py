"""Redis round trips that dramatiq-preview adds per job, from submit to succeeded.

Run either way (from the repository root)::

    python -m pytest tests/benchmarks/bench_roundtrips.py -m benchmark -s
    python tests/benchmarks/bench_roundtrips.py [--jobs 200]

The broker and the state store run on two private redis-servers, so everything the library
adds shows up on the state store's server alone: a bare Dramatiq actor processing the same
messages makes no call there at all.  The count comes from the server's ``MONITOR``
stream: every command a client sent while the jobs ran (commands that our Lua scripts run
inside the server are not round trips and are left out), minus the status reads the
benchmark itself makes while it waits.  Target (issue 4): at most 4 per job.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = 4.0


class CommandCounter:
    """Counts the commands clients send to a Redis server, by name, through ``MONITOR``.

    Commands that Lua scripts run inside the server are reported by ``MONITOR`` with the
    client type ``lua``; they are not round trips and are left out.
    """

    def __init__(self, client: Any) -> None:
        self.counts: dict[str, int] = {}
        self._monitor = client.monitor()
        self._monitor.__enter__()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for entry in self._monitor.listen():
            if self._stop.is_set():
                break
            if entry.get("client_type") == "lua":
                continue
            name = str(entry["command"]).split(" ", 1)[0].lower()
            self.counts[name] = self.counts.get(name, 0) + 1

    def stop(self, client: Any) -> dict[str, int]:
        self._stop.set()
        client.ping()  # wakes the listener up so that it sees the stop flag
        self._thread.join(timeout=10)
        return dict(self.counts)


def measure(jobs: int) -> dict[str, float]:
    """Run ``jobs`` one-output jobs through a real worker; count state-store commands."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    import imagegen

    from dramatiq_preview.testing import RedisServer, WorkerProcess

    with RedisServer() as broker_redis, RedisServer() as state_redis:
        import tempfile

        work = Path(tempfile.mkdtemp(prefix="bench-rt-"))
        (work / "src").mkdir()
        (work / "src" / "a.png").write_bytes(imagegen.png(imagegen.quadrants(32, 32)))
        env = {
            "PREVIEW_REDIS_URL": state_redis.url,
            "PREVIEW_BROKER_URL": broker_redis.url,
            "PREVIEW_NAMESPACE": "bench",
            "PREVIEW_SOURCE_ROOT": str(work / "src"),
            "PREVIEW_OUTPUT_DIR": str(work / "out"),
            "PYTHONPATH": str(ROOT),
        }
        from dramatiq_preview import PreviewClient, Settings

        client = PreviewClient(Settings.from_mapping(env))
        payload = {
            "source": {"path": "a.png"},
            "outputs": [{"width": 16, "height": 16, "format": "png"}],
        }
        with WorkerProcess(env=env, processes=1, threads=2):
            # Warm up: load the scripts, start the render child.
            warm = client.submit(payload).job_id
            _wait_all(client, [warm])
            redis = state_redis.client()
            counter = CommandCounter(redis)
            time.sleep(0.2)
            started = time.monotonic()
            ids = [client.submit(payload).job_id for _ in range(jobs)]
            _wait_all(client, ids)
            elapsed = time.monotonic() - started
            delta = counter.stop(redis)
        client.close()
    # The waiting loop's status reads (HGETALL) and the counter's own PING are ours.
    delta.pop("hgetall", None)
    delta["ping"] = delta.get("ping", 0) - 1
    if os.environ.get("BENCH_DEBUG"):
        print({k: v for k, v in delta.items() if v})
    scripts = delta.get("evalsha", 0) + delta.get("eval", 0)
    other = sum(v for k, v in delta.items() if k not in {"evalsha", "eval"} and v > 0)
    return {
        "jobs": jobs,
        "per_job": (scripts + other) / jobs,
        "scripts_per_job": scripts / jobs,
        "other_per_job": other / jobs,
        "jobs_per_second": jobs / elapsed,
    }


def _wait_all(client: Any, ids: list[str], timeout: float = 300) -> int:
    pending, polls = set(ids), 0
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            polls += 1
            if client.status(job_id)["state"] == "succeeded":
                pending.discard(job_id)
        time.sleep(0.05)
    if pending:
        raise TimeoutError(f"{len(pending)} jobs did not succeed")
    return polls


def report(result: dict[str, float]) -> str:
    return (
        f"state-store round trips per job: {result['per_job']:.2f} "
        f"(scripts {result['scripts_per_job']:.2f}, other {result['other_per_job']:.2f}) "
        f"over {int(result['jobs'])} jobs; target <= {TARGET:.0f} -> "
        f"{'met' if result['per_job'] <= TARGET else 'MISSED'}; "
        f"{result['jobs_per_second']:.1f} jobs/s"
    )


@pytest.mark.benchmark
def test_round_trips_per_job() -> None:
    result = measure(int(os.environ.get("BENCH_JOBS", "100")))
    print("\n" + report(result))
    assert result["scripts_per_job"] > 0, "the state store saw no calls: nothing was measured"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    print(report(measure(parser.parse_args().jobs)))

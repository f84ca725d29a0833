"""Submit benchmark: ``POST /job`` against a bare Flask route doing one Redis ``SET``.

Run either way (from the repository root)::

    python -m pytest tests/benchmarks/bench_submit.py -m benchmark -s
    python tests/benchmarks/bench_submit.py [--seconds 3] [--rounds 6] [--connections 8]

Both routes live in one app served by one gunicorn (gthread workers), against one private
redis-server, so they see the same server set-up:

* ``POST /api/preview/job`` is the real extension: parse, validate against the JSON Schema,
  record the job in the state store and enqueue it on the Redis broker (one script, as the
  broker and the state store share the server: docs/broker.md);
* ``POST /bare/set`` reads the same body and does one ``SET`` of it.

A client process per connection keeps one HTTP/1.1 connection open and posts the same body
(a fresh jobId each time, so every submit is a new job) as fast as answers come back, for a
fixed time.  The two routes run in alternate rounds (which one goes first alternates too);
the figures per route are medians over rounds, and the ratio is the median of
``submit / bare`` over neighbouring rounds (target: at least 0.5, issue 5).  No worker runs,
so enqueued jobs simply wait.  The client runs on the same machine, which takes CPU from
the server; docs/http-api.md records the figures and the machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET_RATIO = 0.5
SUBMIT_PATH = "/api/preview/job"
BARE_PATH = "/bare/set"

#: A typical job: two outputs and a little metadata (about 300 bytes of JSON).
PAYLOAD: dict[str, Any] = {
    "jobId": "JOBID",
    "source": {"path": "uploads/2024/05/holiday-photo.jpg"},
    "outputs": [
        {"width": 256, "height": 256, "format": "webp"},
        {"width": 128, "height": 128, "format": "jpeg", "fit": "cover", "quality": 80},
    ],
    "priority": "normal",
    "metadata": {"owner": "user-1234", "album": "holidays"},
}


def create_app() -> Any:
    """The app gunicorn serves: the extension, plus the bare route to compare with."""
    import redis
    from flask import Flask, request

    from dramatiq_preview.flask import PreviewExtension

    app = Flask("bench")
    PreviewExtension(app)
    client = redis.Redis.from_url(os.environ["PREVIEW_REDIS_URL"])

    @app.post(BARE_PATH)
    def bare_set() -> tuple[dict[str, str], int]:
        key = "bench:bare:" + uuid.uuid4().hex
        client.set(key, request.get_data(), ex=600)
        return {"key": key}, 202

    return app


def _request(path: str, port: int) -> tuple[bytes, bytes]:
    body = json.dumps(PAYLOAD, separators=(",", ":")).encode()
    head, tail = body.split(b"JOBID")
    start = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\nConnection: keep-alive\r\n"
        f"Content-Length: {len(body) - 5 + 32}\r\n\r\n"
    ).encode()
    return start + head, tail


def _client(path: str, port: int, seconds: float, queue: Any) -> None:
    """Post as fast as answers come back on one keep-alive connection; report the counts."""
    prefix, suffix = _request(path, port)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")
    done, bad, latencies = 0, 0, []
    deadline = time.perf_counter() + seconds
    while (now := time.perf_counter()) < deadline:
        sock.sendall(prefix + uuid.uuid4().hex.encode() + suffix)
        status = int(reader.readline().split()[1])
        length = 0
        while (line := reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        reader.read(length)
        latencies.append(time.perf_counter() - now)
        done += status == 202
        bad += status != 202
    sock.close()
    queue.put((done, bad, latencies))


def measure(path: str, port: int, seconds: float, connections: int) -> dict[str, float]:
    """Requests per second (202 answers only) and latency percentiles of one round."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    procs = [
        context.Process(target=_client, args=(path, port, seconds, queue))
        for _ in range(connections)
    ]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=seconds + 60) for _ in procs]
    for proc in procs:
        proc.join()
    done = sum(r[0] for r in results)
    bad = sum(r[1] for r in results)
    latencies = sorted(x for r in results for x in r[2])
    if bad:
        raise RuntimeError(f"{path}: {bad} answers were not 202")
    return {
        "rps": done / seconds,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def run(seconds: float = 3.0, rounds: int = 6, connections: int = 8) -> dict[str, Any]:
    """Start redis-server and gunicorn, measure both routes in alternate rounds."""
    sys.path.insert(0, str(ROOT))
    from dramatiq_preview.testing import RedisServer, free_port

    gunicorn = Path(sys.executable).with_name("gunicorn")
    port = free_port()
    workers, threads = 2, 4
    with RedisServer() as redis_server:
        env = {
            **os.environ,
            "PREVIEW_REDIS_URL": redis_server.url,
            "PREVIEW_BROKER_URL": redis_server.url,
            "PREVIEW_NAMESPACE": "bench",
            "PREVIEW_SOURCE_ROOT": "/tmp",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)]),
        }
        server = subprocess.Popen(
            [
                str(gunicorn),
                f"--workers={workers}",
                f"--threads={threads}",
                "--worker-class=gthread",
                f"--bind=127.0.0.1:{port}",
                "--keep-alive=30",
                "--log-level=warning",
                "bench_submit:create_app()",
            ],
            cwd=ROOT,
            env=env,
        )
        try:
            _wait_for(port, server)
            for path in (SUBMIT_PATH, BARE_PATH):  # warm up: imports, script loading, pools
                measure(path, port, 1.0, connections)
            figures: dict[str, list[dict[str, float]]] = {SUBMIT_PATH: [], BARE_PATH: []}
            for round_ in range(rounds):
                # Alternate which route goes first, so that a drift in machine load does not
                # always favour the same one.
                order = (BARE_PATH, SUBMIT_PATH) if round_ % 2 == 0 else (SUBMIT_PATH, BARE_PATH)
                for path in order:
                    figures[path].append(measure(path, port, seconds, connections))
        finally:
            server.terminate()
            server.wait(timeout=30)

    def median(path: str, key: str) -> float:
        return statistics.median(r[key] for r in figures[path])

    result = {
        "submit_rps": median(SUBMIT_PATH, "rps"),
        "bare_rps": median(BARE_PATH, "rps"),
        "submit_p50_ms": median(SUBMIT_PATH, "p50_ms"),
        "submit_p99_ms": median(SUBMIT_PATH, "p99_ms"),
        "bare_p50_ms": median(BARE_PATH, "p50_ms"),
        "bare_p99_ms": median(BARE_PATH, "p99_ms"),
        "setup": (
            f"gunicorn {workers} workers x {threads} threads (gthread), {connections} "
            f"keep-alive connections, {rounds} alternate rounds of {seconds:g} s, "
            f"{os.cpu_count()} CPUs shared by client, server and redis-server"
        ),
    }
    # The ratio of each pair of neighbouring rounds, then the median: robust to load that
    # other processes put on the machine while the benchmark runs.
    pairs = zip(figures[SUBMIT_PATH], figures[BARE_PATH], strict=True)
    result["ratio"] = statistics.median(s["rps"] / b["rps"] for s, b in pairs)
    return result


def _wait_for(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {server.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("gunicorn did not start")


def report(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            "",
            "submit benchmark (POST /job vs a bare Flask route doing one Redis SET)",
            f"  {result['setup']}",
            f"  POST /job      {result['submit_rps']:8.0f} req/s   p50 "
            f"{result['submit_p50_ms']:6.2f} ms   p99 {result['submit_p99_ms']:6.2f} ms",
            f"  bare SET       {result['bare_rps']:8.0f} req/s   p50 "
            f"{result['bare_p50_ms']:6.2f} ms   p99 {result['bare_p99_ms']:6.2f} ms",
            f"  ratio          {result['ratio']:8.2f}   (median of paired rounds; target >= "
            f"{TARGET_RATIO}: {'met' if result['ratio'] >= TARGET_RATIO else 'NOT MET'})",
        ]
    )


@pytest.mark.benchmark
def test_submit_benchmark(request: pytest.FixtureRequest) -> None:
    if "benchmark" not in (request.config.option.markexpr or ""):
        pytest.skip("run with -m benchmark")
    result = run()
    print(report(result))
    # The verdict against the target is printed, not asserted: this machine is shared and
    # noisy (docs/http-api.md records the figures).  What must hold is that both ran.
    assert result["submit_rps"] > 0 and result["bare_rps"] > 0, report(result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    outcome = run(args.seconds, args.rounds, args.connections)
    print(report(outcome))
    sys.exit(0)

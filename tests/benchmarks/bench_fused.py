"""Fused enqueue vs record-then-enqueue: submits per second and Redis round trips per submit.

Run either way (from the repository root)::

    python -m pytest tests/benchmarks/bench_fused.py -m benchmark -s
    python tests/benchmarks/bench_fused.py [--submits 2000] [--rounds 5] [--threads 1,8]

One private redis-server holds both the state store and a Dramatiq ``RedisBroker`` (same
server, database and credentials: the case where ``PreviewClient.submit`` may fuse).  Two
clients on the same settings submit the same payload (a fresh jobId each time, so every
submit creates a job; no worker runs, so messages simply wait):

* **fused**: one script (``lua/create.lua``) records the job and pushes its message in
  Dramatiq's key layout;
* **plain**: ``PreviewClient(fused_enqueue=False)``: the record's script, then
  ``broker.enqueue`` (Dramatiq's ``dispatch.lua``).

Throughput: ``--submits`` submits per path and round, from ``--threads`` threads, in
alternate rounds (which path goes first alternates too; the database is flushed before each
run); figures are medians over rounds, the ratio is the median of ``fused / plain`` over
paired rounds.  Round trips: a separate pass counts, on the client side, every request
redis-py writes to a socket (one command or one pipeline is one round trip), and reads the
server's ``INFO commandstats`` for the scripts run (``EVALSHA``) and all commands executed
(those inside scripts included) per submit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: A typical job: two outputs and a little metadata (as in bench_submit.py).
PAYLOAD: dict[str, Any] = {
    "source": {"path": "uploads/2024/05/holiday-photo.jpg"},
    "outputs": [
        {"width": 256, "height": 256, "format": "webp"},
        {"width": 128, "height": 128, "format": "jpeg", "fit": "cover", "quality": 80},
    ],
    "priority": "normal",
    "metadata": {"owner": "user-1234", "album": "holidays"},
}
PATHS = ("fused", "plain")


class RoundTrips:
    """Counts the requests redis-py writes to its sockets, in this process, while active.

    ``send_packed_command`` is the one place a command or a whole pipeline leaves for the
    server, so each call is one round trip (a script that the server did not know costs
    three: EVALSHA, SCRIPT LOAD, EVALSHA; the warm-up loads them first).
    """

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    @contextmanager
    def active(self) -> Iterator[RoundTrips]:
        from redis.connection import AbstractConnection

        original = AbstractConnection.send_packed_command

        def counted(conn: Any, command: Any, check_health: bool = True) -> None:
            with self._lock:
                self.count += 1
            original(conn, command, check_health)

        AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
        try:
            yield self
        finally:
            AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


def _commandstats(client: Any) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _submit_many(submit: Callable[[Any], Any], count: int, threads: int) -> float:
    """Submit ``count`` fresh jobs from ``threads`` threads; the elapsed seconds."""
    per_thread = [count // threads + (i < count % threads) for i in range(threads)]
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        barrier.wait()
        try:
            for _ in range(n):
                submit(dict(PAYLOAD, jobId=uuid.uuid4().hex))
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(n,)) for n in per_thread]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


def measure(
    submits: int = 2000, rounds: int = 5, threads: tuple[int, ...] = (1, 8), counted: int = 500
) -> dict[str, Any]:
    """Start a redis-server, compare both paths; the figures as a dict."""
    sys.path.insert(0, str(ROOT))
    import dramatiq

    from dramatiq_preview import PreviewClient, Settings
    from dramatiq_preview.testing import RedisServer

    with RedisServer() as server:
        settings = Settings.from_mapping(
            {
                "PREVIEW_REDIS_URL": server.url,
                "PREVIEW_BROKER_URL": server.url,
                "PREVIEW_NAMESPACE": "bench",
                "PREVIEW_SOURCE_ROOT": "/tmp",
            }
        )
        clients = {
            "fused": PreviewClient(settings),
            "plain": PreviewClient(settings, fused_enqueue=False),
        }
        admin = server.client()
        try:
            redis_version = admin.info("server")["redis_version"]
            assert clients["fused"]._fused_namespace() == "bench", "the fused path is off"
            assert clients["plain"]._fused_namespace() is None
            for client in clients.values():  # warm up: scripts, pools, imports
                _submit_many(client.submit, 50, 1)

            # Round trips and server work per submit, one path at a time.
            per_submit: dict[str, dict[str, float]] = {}
            for path, client in clients.items():
                admin.flushdb()
                before = _commandstats(admin)
                with RoundTrips().active() as trips:
                    _submit_many(client.submit, counted, 1)
                after = _commandstats(admin)
                delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                delta["info"] = delta.get("info", 0) - 1  # our own INFO commandstats
                delta["flushdb"] = 0
                per_submit[path] = {
                    "round_trips": trips.count / counted,
                    "scripts": (delta.get("evalsha", 0) + delta.get("eval", 0)) / counted,
                    "commands": sum(v for v in delta.values() if v > 0) / counted,
                }

            # Throughput, uninstrumented, in alternate rounds.
            rates: dict[int, dict[str, list[float]]] = {}
            for n_threads in threads:
                rates[n_threads] = {path: [] for path in PATHS}
                for round_ in range(rounds):
                    order = PATHS if round_ % 2 == 0 else PATHS[::-1]
                    for path in order:
                        admin.flushdb()
                        elapsed = _submit_many(clients[path].submit, submits, n_threads)
                        rates[n_threads][path].append(submits / elapsed)
        finally:
            for client in clients.values():
                client.close()
            admin.close()

    result: dict[str, Any] = {
        "dramatiq": dramatiq.__version__,
        "redis": redis_version,
        "per_submit": per_submit,
        "setup": (
            f"{submits} submits x {rounds} alternate rounds per path; round trips over "
            f"{counted} sequential submits"
        ),
        "throughput": {},
    }
    for n_threads, by_path in rates.items():
        pairs = zip(by_path["fused"], by_path["plain"], strict=True)
        result["throughput"][n_threads] = {
            "fused": statistics.median(by_path["fused"]),
            "plain": statistics.median(by_path["plain"]),
            "ratio": statistics.median(f / p for f, p in pairs),
        }
    return result


def report(result: dict[str, Any]) -> str:
    lines = [
        "",
        f"fused enqueue vs record-then-enqueue (dramatiq {result['dramatiq']}, redis-server "
        f"{result['redis']}, {os.cpu_count()} CPUs; {result['setup']})",
    ]
    for path in PATHS:
        figures = result["per_submit"][path]
        lines.append(
            f"  {path:5}  round trips/submit {figures['round_trips']:5.2f}   scripts/submit "
            f"{figures['scripts']:5.2f}   commands executed/submit {figures['commands']:5.2f}"
        )
    for n_threads, figures in result["throughput"].items():
        lines.append(
            f"  {n_threads} thread(s): fused {figures['fused']:7.0f} submits/s   plain "
            f"{figures['plain']:7.0f} submits/s   ratio fused/plain {figures['ratio']:5.3f}"
        )
    return "\n".join(lines)


@pytest.mark.benchmark
def test_fused_enqueue_benchmark() -> None:
    result = measure(submits=1000, rounds=3, threads=(1, 8), counted=300)
    print(report(result))
    fused, plain = result["per_submit"]["fused"], result["per_submit"]["plain"]
    # What must hold whatever the machine's load: the fused path saves one round trip.
    assert fused["round_trips"] < plain["round_trips"], report(result)
    assert all(f["fused"] > 0 and f["plain"] > 0 for f in result["throughput"].values())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submits", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", default="1,8", help="comma-separated thread counts")
    parser.add_argument("--counted", type=int, default=500)
    args = parser.parse_args()
    print(
        report(
            measure(
                args.submits,
                args.rounds,
                tuple(int(t) for t in args.threads.split(",")),
                args.counted,
            )
        )
    )

"""Drives one system of the issue-17 pipeline benchmark: submit N jobs, wait until all done.

Run by ``bench_overhead.py`` (in the side venv for Celery and RQ, which our venv lacks)::

    python overhead_drive.py SYSTEM JOBS [--warm 8] [--stats]

``SYSTEM`` is ``full`` (``PreviewClient.submit``, the worker ``dramatiq dramatiq_preview``),
``bare`` (a message to :mod:`overhead_bare`), ``celery`` (``render.delay``) or ``rq``
(``Queue.enqueue``).  The Redis URL, source root and output directory come from the
``PREVIEW_*`` environment; the worker is already running.  Every job renders
``standard.jpg`` (640x480) to one 128 px WebP.  A job is done when its output file exists
and, for the systems that keep a record of it, the record says it succeeded (ours
``succeeded``, Celery's result ``SUCCESS``, RQ's ``finished``); files are watched, records
read once every file is there, so waiting costs Redis next to nothing.  ``--warm`` jobs
first (imports, render child, scripts), untimed.  With ``--stats``, the Redis server's
``INFO commandstats`` and ``used_memory`` are read around the timed jobs, and this process
counts its own round trips while it submits.  One JSON object is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

PAYLOAD: dict[str, Any] = {
    "source": {"path": "standard.jpg"},
    "outputs": [{"width": 128, "height": 128, "format": "webp"}],
}


class _Trips:
    """Counts this process's redis-py requests while ``active`` (cf. roundtrips/)."""

    def __init__(self) -> None:
        from redis.connection import AbstractConnection

        self.count = 0
        self.active = False
        self._lock = threading.Lock()
        original = AbstractConnection.send_packed_command

        def counted(conn: Any, command: Any, check_health: bool = True) -> None:
            if self.active:
                with self._lock:
                    self.count += 1
            original(conn, command, check_health)

        AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]


def _submitter(system: str, url: str) -> tuple[Callable[[dict[str, Any]], str], Any]:
    """``submit(payload) -> id`` for ``system``, and a ``records(ids) -> done?`` check."""
    import redis

    plain = redis.Redis.from_url(url)
    if system == "full":
        from dramatiq_preview import PreviewClient, Settings

        client = PreviewClient(Settings.from_mapping(os.environ))
        store = client.store

        def submit_full(payload: dict[str, Any]) -> str:
            return str(client.submit(payload).job_id)

        def full_done(ids: list[str]) -> list[bool]:
            pipe = store.client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(store.job_key(job_id), "state")
            states = [s.decode() if isinstance(s, bytes) else s for s in pipe.execute()]
            if bad := [s for s in states if s in ("failed", "cancelled")]:
                raise RuntimeError(f"{len(bad)} jobs ended {bad[0]}")
            return [s == "succeeded" for s in states]

        return submit_full, full_done
    if system == "bare":
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker

        broker = RedisBroker(url=url)
        broker.declare_queue("bare")

        def submit_bare(payload: dict[str, Any]) -> str:
            message = dramatiq.Message(
                queue_name="bare",
                actor_name="bare_render",
                args=(payload,),
                kwargs={},
                options={},
            )
            broker.enqueue(message)
            return str(payload["jobId"])

        return submit_bare, None
    if system == "celery":
        import overhead_celery

        def submit_celery(payload: dict[str, Any]) -> str:
            overhead_celery.render.apply_async((payload,), task_id=payload["jobId"])
            return str(payload["jobId"])

        def celery_done(ids: list[str]) -> list[bool]:
            pipe = plain.pipeline(transaction=False)
            for job_id in ids:
                pipe.get(f"celery-task-meta-{job_id}")
            return [bool(v) and json.loads(v)["status"] == "SUCCESS" for v in pipe.execute()]

        return submit_celery, celery_done
    if system == "rq":
        from rq import Queue

        queue = Queue("default", connection=plain)

        def submit_rq(payload: dict[str, Any]) -> str:
            queue.enqueue("overhead_render.render", payload, job_id=payload["jobId"])
            return str(payload["jobId"])

        def rq_done(ids: list[str]) -> list[bool]:
            pipe = plain.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(f"rq:job:{job_id}", "status")
            return [v in (b"finished", "finished") for v in pipe.execute()]

        return submit_rq, rq_done
    raise SystemExit(f"unknown system {system!r}")


def _run(
    submit: Callable[[dict[str, Any]], str],
    records: Any,
    out: Path,
    jobs: int,
    trips: _Trips | None = None,
) -> dict[str, Any]:
    """Submit ``jobs`` jobs, wait until each is done; the timings and our own reads."""
    started = time.perf_counter()
    if trips:
        trips.active = True
    ids = [submit(dict(PAYLOAD, jobId=uuid.uuid4().hex)) for _ in range(jobs)]
    if trips:
        trips.active = False
    submitted = time.perf_counter()
    pending = ids
    deadline = time.monotonic() + 60 + jobs * 0.5
    while pending:
        pending = [j for j in pending if not (out / j / "0.webp").exists()]
        if pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} of {jobs} jobs not done")
            time.sleep(0.02)
    reads = 0
    if records is not None:
        pending = ids
        while pending:
            reads += len(pending)
            pending = [j for j, ok in zip(pending, records(pending), strict=True) if not ok]
            if pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(pending)} of {jobs} jobs have no final record")
                time.sleep(0.01)
    finished = time.perf_counter()
    return {
        "ids": ids,
        "seconds": finished - started,
        "submit_seconds": submitted - started,
        "record_reads": reads,
    }


def _commandstats(client: Any) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _worker_trips(directory: Path) -> int:
    """The round trips the worker's processes counted so far (``roundtrips/``)."""
    if not directory.is_dir():
        return 0
    return sum(int(p.read_text() or 0) for p in directory.iterdir() if p.name.isdigit())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("system", choices=("full", "bare", "celery", "rq"))
    parser.add_argument("jobs", type=int)
    parser.add_argument("--warm", type=int, default=8)
    parser.add_argument("--stats", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import redis

    url = os.environ["PREVIEW_REDIS_URL"]
    out = Path(os.environ["PREVIEW_OUTPUT_DIR"])
    trips = _Trips() if args.stats else None
    submit, records = _submitter(args.system, url)
    _run(submit, records, out, args.warm)
    admin = redis.Redis.from_url(url, decode_responses=True)
    result: dict[str, Any] = {"system": args.system, "jobs": args.jobs}
    trips_dir = Path(os.environ.get("BENCH_WORKER_TRIPS_DIR", "/nonexistent"))
    if args.stats:
        time.sleep(0.5)  # the warm-up's last acks and writes
        before, memory_before = _commandstats(admin), admin.info("memory")["used_memory"]
        worker_trips_before = _worker_trips(trips_dir)
    timed = _run(submit, records, out, args.jobs, trips)
    result.update({k: v for k, v in timed.items() if k != "ids"})
    if args.stats:
        time.sleep(0.5)  # the last acks, after the final records were read
        after, memory_after = _commandstats(admin), admin.info("memory")["used_memory"]
        result["worker_round_trips"] = _worker_trips(trips_dir) - worker_trips_before
        delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        delta.pop("info", None)  # ours, around the run
        # Our own reads of the final records: one command per job and poll.
        read_command = {"full": "hget", "celery": "get", "rq": "hget"}.get(args.system)
        if read_command and timed["record_reads"]:
            delta[read_command] = delta.get(read_command, 0) - timed["record_reads"]
        result["commands"] = delta
        result["submit_round_trips"] = trips.count if trips else 0
        result["used_memory_delta"] = memory_after - memory_before
        if args.system == "full":
            from dramatiq_preview import PreviewClient, Settings

            store = PreviewClient(Settings.from_mapping(os.environ)).store
            sample = timed["ids"][:: max(1, args.jobs // 50)]
            usage = [admin.memory_usage(store.job_key(j)) or 0 for j in sample]
            result["job_record_bytes"] = sum(usage) / len(usage)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

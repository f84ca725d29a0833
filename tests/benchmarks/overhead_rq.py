"""One RQ worker for the issue-17 benchmark (peers), run in the side venv.

RQ forks a work horse per job.  As RQ's performance notes advise, the job's module (and
with it Wand and ImageMagick) is imported, and one job rendered, before the worker starts,
so that every fork inherits them instead of importing them again.
"""

from __future__ import annotations

import os

from overhead_render import render
from redis import Redis
from rq import Queue, Worker
from rq.worker import SimpleWorker


def main() -> None:
    render(
        {
            "jobId": f"rq-preload-{os.getpid()}",
            "source": {"path": "standard.jpg"},
            "outputs": [{"width": 16, "height": 16, "format": "webp"}],
        }
    )
    connection = Redis.from_url(os.environ["BENCH_BROKER_URL"])
    worker_class = SimpleWorker if os.environ.get("BENCH_RQ_SIMPLE") else Worker
    worker = worker_class([Queue("default", connection=connection)], connection=connection)
    worker.work(logging_level="WARNING")


if __name__ == "__main__":
    main()

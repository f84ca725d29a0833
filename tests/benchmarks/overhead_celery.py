"""The same render as a Celery task, Redis broker and Redis result backend (issue 17, peers).

Run in the side venv that ``bench_overhead.py`` builds (Celery is no dependency of ours):
``celery -A overhead_celery worker --concurrency 4``: Celery's default pool (prefork), four
jobs at a time as our worker's ``--processes 1 --threads 4``.  Celery's thread pool
(``--pool threads``) stalled for about 10 s whenever its prefetch window filled (100 jobs:
10.3 s, against 0.9 s with prefork; Celery 5.5.3, kombu 5.5.4), which would measure that,
not the job.  To compare like with like: ``task_acks_late`` (Dramatiq acknowledges after
the actor, so a killed worker loses no job) and ``task_track_started`` with the result
backend (a job's state can be read: PENDING → STARTED → SUCCESS, Celery's nearest to our
status record).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from overhead_render import render as _render

app = Celery(
    "overhead_celery",
    broker=os.environ["BENCH_BROKER_URL"],
    backend=os.environ["BENCH_BROKER_URL"],
)
app.conf.update(
    task_acks_late=True,
    task_track_started=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="render")
def render(payload: dict[str, Any]) -> int:
    return _render(payload)

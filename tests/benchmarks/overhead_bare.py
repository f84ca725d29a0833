"""A bare Dramatiq actor doing the same render in-process: issue 17's reference.

``dramatiq overhead_bare --processes 1 --threads 4`` runs it (``tests/benchmarks`` on
``PYTHONPATH``).  The broker is a plain ``RedisBroker`` on ``BENCH_BROKER_URL`` with
Dramatiq's default middleware and nothing of ours: importing :mod:`overhead_render` imports
``dramatiq_preview``, which installs its own broker as the global one, so this module
builds its broker afterwards and makes it the global one again; the worker consumes from
it alone.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from overhead_render import render

QUEUE = "bare"

broker = RedisBroker(url=os.environ["BENCH_BROKER_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0)
def bare_render(payload: dict[str, Any]) -> None:
    render(payload)

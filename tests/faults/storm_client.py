"""One process of the duplicate storm (test_duplicate_storm.py), run as a script.

    python storm_client.py START_AT THREADS < calls.json

``calls.json`` is a list of ``[method, payload]`` with method ``submit`` (``submit_preview``)
or ``send`` (``render_preview.send``).  The process imports ``dramatiq_preview`` (its
settings come from the environment), waits until the epoch time ``START_AT`` so that every
process fires at once, makes the calls from ``THREADS`` threads, and prints one JSON object:
``{"created": n, "duplicates": n, "sent": n, "errors": [...]}``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def main() -> None:
    start_at, threads = float(sys.argv[1]), int(sys.argv[2])
    calls: list[tuple[str, dict[str, Any]]] = json.load(sys.stdin)

    import dramatiq_preview

    counts = {"created": 0, "duplicates": 0, "sent": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def call(item: tuple[str, dict[str, Any]]) -> None:
        method, payload = item
        try:
            if method == "submit":
                answer = dramatiq_preview.submit_preview(payload)
                key = "duplicates" if answer.duplicate else "created"
            else:
                dramatiq_preview.render_preview.send(payload)
                key = "sent"
            with lock:
                counts[key] += 1
        except Exception as exc:
            with lock:
                errors.append(f"{method} {payload.get('jobId')}: {type(exc).__name__}: {exc}")

    time.sleep(max(0.0, start_at - time.time()))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(call, calls))
    print(json.dumps({**counts, "errors": errors}))


if __name__ == "__main__":
    main()

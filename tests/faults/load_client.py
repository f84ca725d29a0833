"""One process of the load scenario's clients (test_load.py), run as a script.

    python load_client.py PORT TOKEN START_AT CLIENTS POLL_SECONDS < payloads.json

``payloads.json`` is a list of job payloads.  The process waits until the epoch time
``START_AT`` (so that every process starts at once), then runs ``CLIENTS`` clients, one
thread and one keep-alive HTTP/1.1 connection each.  A client takes the next payload,
``POST /api/preview/job`` (timing the answer), then polls ``GET .../status`` every
``POLL_SECONDS`` until the job is final, and goes on with the next payload.  It prints one
JSON object: ``{"submits": [[jobId, seconds, status]], "polls": [seconds, ...],
"final": {jobId: state}, "errors": [...], "started": t, "ended": t}``.

Any answer but 202 to a submit or 200 to a poll, and any connection error, is an error
(a connection error is retried once on a new connection, and still counted).
It imports only the standard library: its timings are the client's view of the server.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from typing import Any

PREFIX = "/api/preview"
FINAL = {"succeeded", "failed", "cancelled"}
#: A job not final after this long is given up (and reported as not succeeded).
JOB_TIMEOUT = 300.0


class Client:
    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.conn: http.client.HTTPConnection | None = None

    def exchange(self, method: str, path: str, body: bytes | None) -> tuple[int, Any, float]:
        """One request on the kept-alive connection: (status, JSON body, seconds)."""
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            started = time.perf_counter()
            try:
                self.conn.request(method, path, body=body, headers=self.headers)
                response = self.conn.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
                continue
            took = time.perf_counter() - started
            if response.getheader("Connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
            try:
                return response.status, json.loads(raw), took
            except ValueError:
                return response.status, None, took
        raise AssertionError("unreachable")


def main() -> None:
    port, token = int(sys.argv[1]), sys.argv[2]
    start_at, clients, poll = float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    payloads: list[dict[str, Any]] = json.load(sys.stdin)
    lock = threading.Lock()
    todo = list(reversed(payloads))
    submits: list[list[Any]] = []
    polls: list[float] = []
    final: dict[str, str] = {}
    errors: list[str] = []

    def run() -> None:
        client = Client(port, token)
        while True:
            with lock:
                if not todo:
                    return
                payload = todo.pop()
            job_id = payload["jobId"]
            try:
                status, body, took = client.exchange(
                    "POST", f"{PREFIX}/job", json.dumps(payload).encode()
                )
                with lock:
                    submits.append([job_id, took, status])
                if status != 202:
                    with lock:
                        errors.append(f"POST /job {job_id}: {status} {body}")
                    continue
                deadline = time.monotonic() + JOB_TIMEOUT
                while time.monotonic() < deadline:
                    time.sleep(poll)
                    status, body, took = client.exchange(
                        "GET", f"{PREFIX}/job/{job_id}/status", None
                    )
                    with lock:
                        polls.append(took)
                    if status != 200:
                        with lock:
                            errors.append(f"GET status {job_id}: {status} {body}")
                        break
                    if body["state"] in FINAL:
                        with lock:
                            final[job_id] = body["state"]
                        break
            except Exception as exc:
                with lock:
                    errors.append(f"{job_id}: {type(exc).__name__}: {exc}")

    time.sleep(max(0.0, start_at - time.time()))
    started = time.time()
    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out = {
        "submits": submits,
        "polls": polls,
        "final": final,
        "errors": errors,
        "started": started,
        "ended": time.time(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""A plain-Python producer: submit previews without Flask, then wait for them.

Run it from the repository root with a Redis at ``PREVIEW_REDIS_URL`` and a worker running
(``dramatiq dramatiq_preview``), both with ``PREVIEW_SOURCE_ROOT=examples/images``::

    python examples/producer/produce.py [--timeout 120]

It shows the two ways a Python process starts a job:

* ``submit_preview(payload)``: validates the payload, records the job and enqueues it in
  one step, and tells a new job from a duplicate (same jobId, same payload) or a conflict
  (same jobId, another payload), as ``POST /job`` does;
* ``render_preview.send(payload)``: a plain Dramatiq send; our middleware on the broker
  validates and records it just the same (a bad payload raises ``InvalidPayload`` here).

and then ``wait_for_preview(job_id, timeout)``, which follows the job's events and returns
its final status.  Exit status: 0 when every job succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import uuid

from dramatiq_preview import InvalidPayload, render_preview, submit_preview, wait_for_preview

OUTPUTS = [{"width": 256, "height": 256, "format": "webp"}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait per job")
    args = parser.parse_args(argv)
    run = uuid.uuid4().hex[:8]  # jobIds of this run: a second run makes new jobs

    # 1. submit_preview: the job is recorded and enqueued before it returns.
    photo = {"jobId": f"producer-{run}-photo", "source": {"path": "rocket.jpg"}, "outputs": OUTPUTS}
    submission = submit_preview(photo)
    print(f"submitted {submission.job_id}: {submission.state}")
    again = submit_preview(photo)
    print(f"submitted it again: duplicate={again.duplicate}")

    # 2. render_preview.send: a Dramatiq message; the jobId is the payload's.
    pdf = {
        "jobId": f"producer-{run}-pdf",
        "source": {"path": "document.pdf"},
        "outputs": OUTPUTS,
        "page": 2,
        "metadata": {"sent-by": "render_preview.send"},
    }
    render_preview.send(pdf)
    print(f"sent {pdf['jobId']}")

    # A payload the schema refuses never reaches the queue.
    try:
        render_preview.send({"source": {"path": "rocket.jpg"}, "outputs": []})
    except InvalidPayload as exc:
        print(f"refused before enqueue: {exc}")

    ok = True
    for job_id in (photo["jobId"], pdf["jobId"]):
        status = wait_for_preview(job_id, timeout=args.timeout)
        outputs = [o["path"] for o in (status["result"] or {}).get("outputs", [])]
        print(f"{job_id}: {status['state']} {' '.join(outputs)}")
        ok = ok and status["state"] == "succeeded"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

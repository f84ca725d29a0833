"""Storage outage (contract §9: an unreachable S3 is transient, retried; §7: a job is never
lost, never rendered to success twice).

Sources and outputs in S3: a private SeaweedFS (``dramatiq_preview.testing.S3Server``) with
``PREVIEW_SOURCE_ROOT=s3://bucket/sources`` and ``PREVIEW_OUTPUT_DIR=s3://bucket/previews``.
Half the jobs read their source from the bucket, half from the harness's URL server (which
answers after half a second, so renders are in flight and their outputs are written while
S3 is away).  S3 is stopped mid-run (SIGTERM to ``weed mini``) and started again on the same
ports and data.  The retry budget is set so that it outlasts the outage
(``PREVIEW_MAX_RETRIES=20``, backoff 0.5-4 s: at least 37 s of retries): a job that ran out
of retries would measure this configuration, not the library.

Figures: every job's final state, renders to success per job (worker logs), the error
types of every failed delivery (worker logs: each must be a transient one, retried), the
time from S3 answering again to the last job finished, and the outputs in the bucket."""

from __future__ import annotations

import contextlib
import time
import uuid
from datetime import datetime
from typing import Any

import pytest

from .harness import (
    OUTPUTS,
    PHOTO,
    RECOVERY_BOUND,
    Deployment,
    report,
    run_stream,
    scaled,
    successes_per_job,
    wait_until,
)
from .outage import error_lines, in_flight_at, restartable_s3, tally

pytestmark = [pytest.mark.faults, pytest.mark.slow]

RATE = 5.0
FETCH_STALL = 0.5
#: How long S3 stays stopped before it is started again (its start adds a few seconds).
OUTAGE = 5.0
MIN_BACKOFF_MS = 500
MAX_BACKOFF_MS = 4000
MAX_RETRIES = 20
#: The failures an S3 outage may cause, all transient (retried): S3 refused the connection
#: or answered 5xx (``storage_error`` writing outputs, ``source_unavailable`` reading a
#: source), or, while it starts again, took a request and answered nothing until Dramatiq's
#: time limit interrupted the delivery (``time_limit``).
TRANSIENT = frozenset({"storage_error", "source_unavailable", "time_limit"})


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_storage_outage(broker: str) -> None:
    jobs = scaled(60)
    run = uuid.uuid4().hex[:6]
    ids = [f"s3out-{run}-{i:04d}" for i in range(jobs)]
    try:
        s3 = restartable_s3().start()
    except RuntimeError as exc:
        why = f"no private S3 server: {exc}"
        report(f"storage-outage[{broker}]", f"skipped: {why}")
        pytest.skip(why)
    try:
        bucket = s3.create_bucket()
        s3.client().put_object(Bucket=bucket, Key="sources/photo.jpg", Body=PHOTO)
        with Deployment(
            "storage-outage",
            broker,
            PREVIEW_SOURCE_ROOT=f"s3://{bucket}/sources",
            PREVIEW_OUTPUT_DIR=f"s3://{bucket}/previews",
            PREVIEW_MAX_RETRIES=str(MAX_RETRIES),
            PREVIEW_MIN_BACKOFF_MS=str(MIN_BACKOFF_MS),
            PREVIEW_MAX_BACKOFF_MS=str(MAX_BACKOFF_MS),
            **s3.environment(),
        ) as d:
            # Given two worker hosts with sources and outputs in S3
            d.start_host("a")
            d.start_host("b")

            def payload(i: int) -> dict[str, Any]:
                if i % 2:
                    return d.payload(ids[i], stall=FETCH_STALL)
                return {"jobId": ids[i], "source": {"path": "photo.jpg"}, "outputs": OUTPUTS}

            moments: dict[str, float] = {}

            def outage() -> None:
                wait_until(
                    lambda: sum(in_flight_at(d, time.time()).values()) >= 2,
                    timeout=15,
                    what="renders in flight",
                )
                moments["stop"] = time.time()
                s3.stop()
                moments["stopped"] = time.time()
                time.sleep(OUTAGE)
                moments["starting"] = time.time()
                s3.start()
                moments["back"] = time.time()

            # When S3 is stopped mid-run and started again OUTAGE s later
            run_stream(
                jobs, RATE, lambda i: d.client.submit(payload(i)), [(jobs / RATE / 3, outage)]
            )
            statuses = d.wait_final(ids, timeout=RECOVERY_BOUND + 60)
            wait_until(d.broker_idle, timeout=30, interval=0.5, what="the broker idle")

            # Then every job succeeded, once, every failure meanwhile was a transient one
            # that was retried, and the outputs are all in the bucket
            back, stop = moments["back"], moments["stop"]
            states: dict[str, int] = {}
            for s in statuses.values():
                key = s["state"] if s else "missing"
                states[key] = states.get(key, 0) + 1
            lost = sorted(j for j, s in statuses.items() if not s or s["state"] != "succeeded")
            events = d.events()
            twice = {j: n for j, n in successes_per_job(events).items() if n > 1}
            errors = error_lines(d)
            kinds = tally(errors)
            not_transient = [e for e in errors if e.type not in TRANSIENT or e.event != "retrying"]
            during = [e for e in errors if stop <= e.at <= back + MAX_BACKOFF_MS / 1000]
            finished = [
                seconds(s["finishedAt"]) for s in statuses.values() if s and s.get("finishedAt")
            ]
            drain = max(finished, default=back) - back
            attempts = [s["attempts"] for s in statuses.values() if s]
            retried = {e.job_id for e in errors}
            keys = set()
            with contextlib.suppress(Exception):
                paginator = s3.client().get_paginator("list_objects_v2")
                for page in paginator.paginate(Bucket=bucket, Prefix="previews/"):
                    keys |= {str(item["Key"]) for item in page.get("Contents") or []}
            missing_outputs = [
                (j, o["path"])
                for j, s in statuses.items()
                if s and s["state"] == "succeeded"
                for o in (s.get("result") or {}).get("outputs", [])
                if f"previews/{o['path']}" not in keys
            ]
            outputs = sum(
                len((s.get("result") or {}).get("outputs", []))
                for s in statuses.values()
                if s and s["state"] == "succeeded"
            )
            report(
                d.label,
                f"{jobs} jobs, succeeded {states.get('succeeded', 0)}, lost {len(lost)} "
                f"({ {k: v for k, v in states.items() if k != 'succeeded'} or 0 }), rendered "
                f"to success twice {len(twice)}; S3 down {back - stop:.1f} s (stopped "
                f"{OUTAGE:g} s, its start took {back - moments['starting']:.1f} s), "
                f"{sum(in_flight_at(d, stop).values())} renders in flight at the stop; "
                f"failed deliveries {len(errors)} ({kinds or 0}), {len(during)} during the "
                f"outage, not transient {len(not_transient)}; jobs retried {len(retried)}, "
                f"attempts max {max(attempts, default=0)}; drained {drain:.1f} s after S3 "
                f"answered again; outputs in the bucket {outputs - len(missing_outputs)}/{outputs}",
                lost=len(lost),
                twice=len(twice),
                failures=kinds,
                drain=drain,
            )
            for job_id in lost[:3]:
                print(f"--- what the workers logged about {job_id}: {statuses[job_id]}")
                print("\n".join(d.lines_about(job_id)))
            for e in not_transient[:5]:
                print(f"--- not a retried transient failure: {e}")
            assert during, "the outage failed no delivery: it proved nothing"
            assert lost == [], {j: statuses[j] for j in lost[:10]}
            assert twice == {}, twice
            assert not_transient == [], not_transient[:10]
            assert missing_outputs == [], missing_outputs[:10]
            # A job failing just before S3 answered waits at most one backoff, then renders.
            assert drain <= MAX_BACKOFF_MS / 1000 + 10, drain
            d.check_keys()
    finally:
        s3.close()

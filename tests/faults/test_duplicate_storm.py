"""Duplicate storm (contract §7: a job whose jobId was accepted is rendered at most once to
success, even when submitted many times concurrently or sent twice with ``.send()``).

Several processes fire at the same instant, from several threads each, half of their calls
through ``submit_preview`` and half through ``render_preview.send()``, over a few jobIds,
while two worker hosts consume.  Each job's source answers after 0.5 s, so copies of a job
arrive while it renders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from .harness import Deployment, report, scaled, successes_per_job, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow]

CLIENT = Path(__file__).with_name("storm_client.py")
PROCESSES = 4
THREADS = 10
FETCH_STALL = 0.5


def test_duplicate_storm(broker: str) -> None:
    calls_total = scaled(200)
    job_count = max(1, calls_total // 10)
    run = uuid.uuid4().hex[:6]
    with Deployment("duplicate-storm", broker) as d:
        # Given two worker hosts, and job_count payloads
        d.start_host("a")
        d.start_host("b")
        ids = [f"storm-{run}-{i:03d}" for i in range(job_count)]
        payloads = {job_id: d.payload(job_id, stall=FETCH_STALL) for job_id in ids}
        calls: list[list[Any]] = [
            ["submit" if i % 2 == 0 else "send", payloads[ids[i % job_count]]]
            for i in range(calls_total)
        ]

        # When PROCESSES processes make calls_total calls over them at the same instant
        start_at = time.time() + 4
        procs = []
        for p in range(PROCESSES):
            proc = subprocess.Popen(
                [sys.executable, str(CLIENT), str(start_at), str(THREADS)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, **d.env},
            )
            procs.append((proc, json.dumps(calls[p::PROCESSES])))
        answers = []
        for proc, mine in procs:
            out, err = proc.communicate(mine, timeout=120)
            assert proc.returncode == 0, err
            answers.append(json.loads(out.strip().splitlines()[-1]))
        fired = time.time()
        statuses = d.wait_final(ids, timeout=60)
        wait_until(d.broker_idle, timeout=60, interval=0.5, what="every copy handled")
        settled = time.time() - fired
        d.stop_hosts()

        # Then each jobId made one job, rendered once, succeeded once
        events = d.events()
        created = sum(a["created"] for a in answers)
        duplicates = sum(a["duplicates"] for a in answers)
        sent = sum(a["sent"] for a in answers)
        errors = [e for a in answers for e in a["errors"]]
        records = sum(1 for _ in d.raw.scan_iter(match=f"{d.namespace}:job:*", count=1000))
        renders = sum(1 for e in events if e.event == "running")
        skipped = sum(1 for e in events if e.event == "duplicate_skipped")
        busy = sum(host.log.count("is being rendered elsewhere") for host in d.hosts.values())
        fetches = sum(d.fetches(job_id) for job_id in ids)
        twice = sorted(j for j, n in successes_per_job(events).items() if n > 1)
        succeeded = sum(1 for s in statuses.values() if s and s["state"] == "succeeded")
        report(
            d.label,
            f"{calls_total} calls over {job_count} jobIds from {PROCESSES} processes x "
            f"{THREADS} threads ({created + duplicates} submits: {created} created, "
            f"{duplicates} duplicate; {sent} sends; errors {len(errors)}): job records "
            f"{records}, renders {renders}, source fetches {fetches}, succeeded {succeeded}, "
            f"rendered to success more than once {len(twice)}; copies skipped as done "
            f"{skipped}, put back while rendering {busy}; all handled {settled:.1f} s later",
            calls=calls_total,
            records=records,
            renders=renders,
        )
        assert errors == []
        assert created + duplicates + sent == calls_total
        assert records == job_count
        assert renders == job_count
        assert fetches == job_count
        assert succeeded == job_count
        assert twice == []
        assert all(s and s["attempts"] == 1 for s in statuses.values())
        d.check_keys()

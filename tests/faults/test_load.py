"""Load (issue #16): 32 concurrent clients submit and poll jobs through the HTTP API served
by gunicorn, while two worker processes render them (contract §5, §7: every accepted job
is rendered, once).

Clients are threads of a few client processes (``load_client.py``), one keep-alive
connection each: submit a job, poll its status every 0.25 s until it is final, next job.
Figures: submit latency p50/p99 (as the clients saw it), jobs per second from the first
submit to the last final answer, errors (any answer but 202/200, any connection error),
jobs succeeded, jobs rendered to success more than once.  Times are printed, never
asserted: this machine is shared.
"""

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

from .harness import Deployment, percentile, report, scaled, successes_per_job
from .loadtools import TOKEN, Gunicorn

pytestmark = [pytest.mark.faults, pytest.mark.slow]

CLIENT = Path(__file__).with_name("load_client.py")
CLIENTS = 32
PROCESSES = 4
POLL_SECONDS = 0.25
#: One output a job: the load is on the API, the broker and the state store more than on
#: ImageMagick (the other scenarios render three).
OUTPUTS = [{"width": 160, "height": 160, "format": "webp"}]


def test_load(broker: str) -> None:
    jobs = scaled(400)
    run = uuid.uuid4().hex[:6]
    ids = [f"load-{run}-{i:05d}" for i in range(jobs)]
    with Deployment("load", broker, PREVIEW_API_TOKEN=TOKEN) as d:
        # Given gunicorn (2 workers x 4 threads) and two worker processes
        d.start_host("a")
        d.start_host("b")
        payloads = [{**d.payload(job_id), "outputs": OUTPUTS} for job_id in ids]
        with Gunicorn(d.env, workers=2, threads=4) as web:
            # When 32 clients submit and poll every job at once
            start_at = time.time() + 3
            procs = []
            for p in range(PROCESSES):
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        str(CLIENT),
                        str(web.port),
                        TOKEN,
                        str(start_at),
                        str(CLIENTS // PROCESSES),
                        str(POLL_SECONDS),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "PYTHONPATH": ""},
                )
                procs.append((proc, json.dumps(payloads[p::PROCESSES])))
            answers: list[dict[str, Any]] = []
            for proc, mine in procs:
                out, err = proc.communicate(mine, timeout=900)
                assert proc.returncode == 0, err
                answers.append(json.loads(out.strip().splitlines()[-1]))
            web_log = web.log
        statuses = d.wait_final(ids, timeout=60)

        # Then every job was accepted and succeeded, once, with no error
        submits = [s for a in answers for s in a["submits"]]
        latencies = [s[1] for s in submits]
        polls = [t for a in answers for t in a["polls"]]
        errors = [e for a in answers for e in a["errors"]]
        seen_final = {j: s for a in answers for j, s in a["final"].items()}
        started = min(a["started"] for a in answers)
        ended = max(a["ended"] for a in answers)
        succeeded = sum(1 for s in statuses.values() if s and s["state"] == "succeeded")
        d.stop_hosts()
        twice = sorted(j for j, n in successes_per_job(d.events()).items() if n > 1)
        took = ended - started
        p50, p99, worst = (percentile(latencies, q) * 1000 for q in (0.5, 0.99, 1.0))
        report(
            d.label,
            f"{CLIENTS} clients, {jobs} jobs through gunicorn (2 x 4 gthread) and 2 worker "
            f"processes: submit latency p50 {p50:.0f} ms, p99 {p99:.0f} ms (max {worst:.0f} ms); "
            f"status polls {len(polls)}, p50 {percentile(polls, 0.5) * 1000:.0f} ms, p99 "
            f"{percentile(polls, 0.99) * 1000:.0f} ms; {jobs / took:.1f} jobs/s ({took:.0f} s); "
            f"errors {len(errors)}; succeeded {succeeded}/{jobs} "
            f"({100 * succeeded / jobs:.0f}%), rendered to success more than once {len(twice)}",
            jobs=jobs,
            submit_p50=percentile(latencies, 0.5),
            submit_p99=percentile(latencies, 0.99),
            jobs_per_second=jobs / took,
            errors=len(errors),
            succeeded=succeeded,
        )
        for line in errors[:10]:
            print("error:", line)
        if "Traceback" in web_log or "[ERROR]" in web_log:
            print(web_log[-4000:])
        assert errors == []
        assert len(submits) == jobs
        assert {j: s for j, s in seen_final.items() if s != "succeeded"} == {}
        assert succeeded == jobs, {j: s and s["state"] for j, s in statuses.items()}
        assert twice == []
        assert "Traceback" not in web_log, web_log[-4000:]
        d.check_keys()

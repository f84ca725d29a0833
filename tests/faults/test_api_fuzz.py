"""API fuzz (issue #16; contract §5, §11): schemathesis against the live API, stateful phase
on, while a real worker renders what it submits.

The deployment's API runs under gunicorn (2 workers x 4 gthread threads) with
``PREVIEW_API_TOKEN`` set; one worker host consumes, so jobs the fuzzer submits really run,
fail or are dead-lettered while it reads their status, cancels them, lists them, requeues
and purges dead letters.  Before the run, four jobs are made through the client (one
succeeded with its output, one failed permanently, one dead-lettered after its retries,
one cancelled); schemathesis draws path ``jobId`` values from them a third of the time
(a dictionary in its ``schemathesis.toml``), so ``GET .../outputs/{index}``, the event
stream, cancel and requeue also meet jobs in every final state, not only unknown ids.

Every operation of the OpenAPI document is run, whatever it lists (the dashboard's JSON
routes included); every check of schemathesis is on, with the hooks of the Flask tests
(``tests/flask/schemathesis_hooks.py``: where schemathesis's reading of the document and
the server's validator knowingly differ).  Figures, from schemathesis's NDJSON report:
requests made, answers by status class, 5xx answers, and failures of the document checks
(status code, content type, headers, body schema, auth, ...), each listed.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from dramatiq_preview.state import FINAL_STATES

from .harness import Deployment, report, scaled, wait_until
from .loadtools import PREFIX, TOKEN, Gunicorn, audit_namespace

pytestmark = [pytest.mark.faults, pytest.mark.slow]

FLASK_TESTS = Path(__file__).resolve().parents[1] / "flask"
#: Test cases per operation and phase (times FAULTS_SCALE).
MAX_EXAMPLES = 40
SEED = 20261204


def config_file(directory: Path, known: list[str], fresh: list[str]) -> Path:
    """A ``schemathesis.toml`` drawing path ``jobId`` values from ``known`` a third of the
    time, and a submitted body's ``jobId`` from ``fresh`` (ids never used) two times in
    three; the rest is generated from the document.  (Left to itself, hypothesis submits
    the same few small jobIds again and again: after the first, every submit is a 409
    conflict, and the stateful phase has no new job to follow its links to.)  The stateful
    phase sends valid requests only, so its links are followed from accepted jobs."""
    path = directory / "schemathesis.toml"
    path.write_text(
        f"[dictionaries.known-jobs]\nvalues = {json.dumps(known)}\n\n"
        f"[dictionaries.fresh-jobs]\nvalues = {json.dumps(fresh)}\n\n"
        "[parameters]\n"
        '"path.jobId" = { dictionary = "known-jobs", probability = 0.33 }\n'
        '"body.jobId" = { dictionary = "fresh-jobs", probability = 0.67 }\n\n'
        '[phases.stateful.generation]\nmode = "positive"\n',
        encoding="utf-8",
    )
    return path


#: The checks that compare an answer with the document: a failure is an answer the
#: OpenAPI document does not allow (status, content type, headers, body, Allow header).
DOCUMENT_CHECKS = frozenset(
    {
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "allow_header_conformance",
        "missing_required_header",
        "unsupported_method",
    }
)


@dataclasses.dataclass
class Fuzz:
    """What schemathesis's NDJSON report says of a run."""

    operations: int = 0
    requests: int = 0
    submitted: int = 0
    by_class: dict[str, int] = dataclasses.field(default_factory=dict)
    server_errors: list[str] = dataclasses.field(default_factory=list)
    failed_checks: dict[str, int] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)


def summarise(events: list[dict[str, Any]]) -> Fuzz:
    """Count the requests, answers and failed checks of every scenario of the report."""
    fuzz = Fuzz()
    labels: set[str] = set()
    for event in events:
        (kind, body), *_ = event.items()
        if kind != "ScenarioFinished":
            continue
        recorder = body.get("recorder") or {}
        if body.get("status") == "error":
            fuzz.errors.append(f"{recorder.get('label')}: {json.dumps(body)[:500]}")
        for case_id, interaction in (recorder.get("interactions") or {}).items():
            request, response = interaction.get("request") or {}, interaction.get("response")
            where = f"{request.get('method')} {request.get('uri')}"
            fuzz.requests += 1
            if response is None:
                fuzz.errors.append(f"{where}: no response")
                continue
            status = int(response["status_code"])
            labels.add(str(recorder.get("label")))
            name = f"{status // 100}xx"
            fuzz.by_class[name] = fuzz.by_class.get(name, 0) + 1
            if status >= 500:
                fuzz.server_errors.append(f"{where}: {status} {_content(response)[:300]}")
            if request.get("method") == "POST" and status == 202 and where.endswith("/job"):
                fuzz.submitted += 1
            for check in (recorder.get("checks") or {}).get(case_id, []):
                if check.get("status") == "failure":
                    check_name = str(check.get("name"))
                    fuzz.failed_checks[check_name] = fuzz.failed_checks.get(check_name, 0) + 1
                    fuzz.failures.append(
                        f"{check_name}: {where} -> {status}: "
                        f"{json.dumps(check.get('failure_info') or check)[:400]}"
                    )
    fuzz.operations = len(labels - {"Stateful tests"})
    return fuzz


def _content(response: dict[str, Any]) -> str:
    content = response.get("content")
    if isinstance(content, dict) and "$base64" in content:
        return base64.b64decode(content["$base64"]).decode(errors="replace")
    return str(content)


def wait_settled(d: Deployment, *, timeout: float = 60) -> bool:
    """Wait until every job record is final and the broker holds nothing but dead letters
    (False if not within ``timeout``)."""

    def settled() -> bool:
        ids = [k.split(":job:", 1)[1] for k in d.raw.scan_iter(f"{d.namespace}:job:*")]
        statuses = d.statuses(ids)
        final = all(s is None or s["state"] in FINAL_STATES for s in statuses.values())
        return final and d.broker_idle()

    try:
        wait_until(settled, timeout=timeout, interval=0.5, what="the fuzzed jobs done")
    except TimeoutError:
        return False
    return True


def read_events(directory: Path) -> list[dict[str, Any]]:
    found = sorted(directory.rglob("*.ndjson"))
    assert found, f"no NDJSON report in {directory}"
    events = []
    for line in found[0].read_text(encoding="utf-8").splitlines():
        if line.strip():
            events.append(json.loads(line))
    return events


def test_api_fuzz(broker: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:6]
    with Deployment(
        "api-fuzz",
        broker,
        PREVIEW_API_TOKEN=TOKEN,
        PREVIEW_DASHBOARD="true",
        # Event streams on jobs that stay queued end after 2 s (schemathesis reads each one
        # to its end), with a keep-alive comment every second.
        PREVIEW_EVENTS_MAX_SECONDS="2",
        PREVIEW_EVENTS_KEEPALIVE_SECONDS="1",
    ) as d:
        # Given the live API and a worker, and jobs in every final state
        d.start_host("a")
        known = {
            "ok": f"fuzz-{run}-ok",
            "failed": f"fuzz-{run}-failed",
            "dead": f"fuzz-{run}-dead",
            "cancelled": f"fuzz-{run}-cancelled",
        }
        d.client.submit(d.payload(known["ok"]))
        missing = d.sources.url(f"/missing/{run}.jpg")
        d.client.submit({**d.payload(known["failed"]), "source": {"url": missing}})
        dead_url = d.sources.add(f"/down/{run}.jpg", b"", fail=[503] * 100)
        d.client.submit({**d.payload(known["dead"]), "source": {"url": dead_url}})
        d.client.submit(d.payload(known["cancelled"], stall=30))
        wait_until(
            lambda: d.client.status(known["cancelled"])["state"] == "running",
            timeout=30,
            what="the job to cancel running",
        )
        d.client.cancel(known["cancelled"])
        d.sources.release(f"/src/{known['cancelled']}.jpg")
        seeded = d.wait_final(list(known.values()), timeout=60)
        states = {name: (seeded[job] or {}).get("state") for name, job in known.items()}
        assert states == {
            "ok": "succeeded",
            "failed": "failed",
            "dead": "failed",
            "cancelled": "cancelled",
        }, seeded

        fresh = [f"fuzz-{run}-{i:04d}" for i in range(1000)]
        with Gunicorn(d.env, workers=2, threads=4) as web:
            # When schemathesis runs every phase (stateful too) and every check on it
            command = [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(config_file(tmp_path, list(known.values()), fresh)),
                "run",
                f"{web.url}{PREFIX}/openapi.json",
                "--checks=all",
                "--phases=examples,coverage,fuzzing,stateful",
                f"--max-examples={scaled(MAX_EXAMPLES)}",
                f"--seed={SEED}",
                "--workers=1",  # concurrent workers trip a CPython 3.11 ast bug in hypothesis
                "--no-color",
                "--report=ndjson",
                f"--report-dir={tmp_path / 'report'}",
                "--request-timeout=30",
                "-H",
                f"Authorization: Bearer {TOKEN}",
            ]
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(FLASK_TESTS), os.environ.get("PYTHONPATH", "")]),
                "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
            }
            started = time.monotonic()
            result = subprocess.run(
                command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
            )
            took = time.monotonic() - started
            web_log = web.log
        output = result.stdout + result.stderr
        fuzz = summarise(read_events(tmp_path / "report"))
        links = re.search(r"API Links:\s+(\d+) covered / (\d+) selected", output)
        stateful = re.search(r"Stateful.*?Scenarios:\s+(\d+)", output, re.DOTALL)

        # and, once the jobs it submitted are done, the keys it left
        settled = wait_settled(d)
        d.stop_hosts()
        records: dict[str, int] = {}
        for key in d.raw.scan_iter(f"{d.namespace}:job:*"):
            state = str(d.raw.hget(key, "state"))
            records[state] = records.get(state, 0) + 1
        audit = audit_namespace(
            d.raw,
            d.namespace,
            ttl_max=int(d.env["PREVIEW_JOB_TTL_SECONDS"]),
            redis_broker=broker == "redis",
            amqp_queues=d.vhost.queue_depths() if d.vhost is not None else None,
        )

        # Then no 5xx, no answer the document does not allow, no failed check at all
        conformance = {k: v for k, v in fuzz.failed_checks.items() if k in DOCUMENT_CHECKS}
        others = {k: v for k, v in fuzz.failed_checks.items() if k not in DOCUMENT_CHECKS}
        report(
            d.label,
            f"schemathesis (all checks; phases examples, coverage, fuzzing, stateful: "
            f"{stateful[1] if stateful else '?'} stateful scenarios, API links "
            f"{links[1] + '/' + links[2] if links else '?'} covered) on gunicorn, "
            f"{fuzz.operations} operations, {fuzz.requests} requests "
            f"{dict(sorted(fuzz.by_class.items()))}, jobs submitted {fuzz.submitted}: 5xx "
            f"{len(fuzz.server_errors)}, answers contradicting the OpenAPI document "
            f"{sum(conformance.values())}{' ' + str(conformance) if conformance else ''}, "
            f"other failed checks {sum(others.values())}{' ' + str(others) if others else ''}, "
            f"errored scenarios {len(fuzz.errors)}, exit {result.returncode}, {took:.0f} s; "
            f"then job records by state {records}, keys without TTL "
            f"{len(audit.without_ttl)}, messages left {sum(audit.broker_left().values())}"
            f"{'' if settled else ' (jobs still running after 60 s)'}",
            requests=fuzz.requests,
            server_errors=len(fuzz.server_errors),
            conformance_failures=sum(conformance.values()),
            other_failures=sum(others.values()),
        )
        for line in fuzz.server_errors[:10]:
            print("5xx:", line)
        for line in fuzz.failures[:20]:
            print("failed check:", line)
        if result.returncode != 0:
            print(output[-6000:])
        assert fuzz.requests > 0 and fuzz.operations >= 11, output[-3000:]
        assert fuzz.server_errors == []
        assert fuzz.failed_checks == {}, fuzz.failures[:20]
        assert fuzz.errors == [], fuzz.errors[:10]
        assert result.returncode == 0, output[-6000:]
        assert stateful is not None and int(stateful[1]) > 0, output[-3000:]
        assert "Traceback" not in web_log, web_log[-4000:]
        assert audit.without_ttl == [] and audit.ttl_too_long == [], audit.summary()
        assert audit.outside_namespace == [], audit.outside_namespace
        assert settled and audit.broker_left() == {}, audit.summary()

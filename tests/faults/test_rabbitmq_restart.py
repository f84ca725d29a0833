"""RabbitMQ restart (contract §7: a job is never lost; §5: the HTTP API answers 503 JSON while
the broker is down, never 500; issue #16: workers and web reconnect by themselves).

RabbitMQ-only by nature (the Redis restart covers the Redis broker).  The RabbitMQ shared at
``PREVIEW_TEST_AMQP_URL`` must never be restarted (other test runs use it): the scenario
starts a private node (``tests/faults/rabbitserver.py``), stops it with SIGTERM mid-run,
renders in flight on both worker hosts, and starts it again on the same ports and database.
The HTTP API is the real Flask app driven in-process with its test client: jobs are
submitted through ``POST /job`` (a 503 is retried after 0.1 s, as a client honouring
``Retry-After`` would), and a probe calls ``POST /job`` and ``GET /worker/health`` every
0.25 s throughout.  Redis (the state store) stays up."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from flask import Flask

from dramatiq_preview.flask import PreviewExtension

from .harness import (
    RECOVERY_BOUND,
    DefectObserved,
    Deployment,
    Sampler,
    report,
    run_stream,
    scaled,
    successes_per_job,
    wait_until,
)
from .outage import Answers, by_route, in_flight_at
from .rabbitserver import PrivateVhost, RabbitServer

pytestmark = [
    pytest.mark.faults,
    pytest.mark.slow,
    pytest.mark.rabbitmq,
    # Timing: seen in 1 run of 6 before its fix, 0 in 5 since (docs/reliability.md, defect
    # 5); drop the mark once more runs have shown it gone.
    pytest.mark.xfail(
        strict=False,
        raises=DefectObserved,
        reason="docs/reliability.md, defect 5 (fixed, being confirmed): a job rendered to "
        "success by two deliveries after a RabbitMQ restart",
    ),
]

PREFIX = "/api/preview"
RATE = 5.0
#: The sources answer after half a second: renders are in flight when RabbitMQ stops.
FETCH_STALL = 0.5
#: How long RabbitMQ stays stopped before it is started again (its start takes 5-15 s
#: more on 2 busy cores): longer than the broker heartbeat timeout (4 s).
OUTAGE = 5.0
PROBE_INTERVAL = 0.25
#: A submit is retried this long at most (a client's patience).
SUBMIT_PATIENCE = 90.0


def test_rabbitmq_restart() -> None:
    label = "rabbitmq-restart[rabbitmq]"
    server: RabbitServer | None = None
    try:
        server = RabbitServer()
        server.start()
    except RuntimeError as exc:
        if server is not None:
            server.close()
        why = f"no private RabbitMQ node could be started: {exc}"
        report(label, f"skipped: {why}")
        pytest.skip(why)
    jobs = scaled(60)
    run = uuid.uuid4().hex[:6]
    ids = [f"rmq-{run}-{i:04d}" for i in range(jobs)]
    try:
        with Deployment("rabbitmq-restart", "rabbitmq", vhost=PrivateVhost(server)) as d:
            # Given two worker hosts and the Flask app on a private RabbitMQ node
            d.start_host("a")
            d.start_host("b")
            app = Flask("faults")
            app.config.update(d.env)
            extension = PreviewExtension(app)
            answers = Answers()
            accepted: list[str] = []
            #: When each accepted submit was sent and answered.
            accepted_at: dict[str, tuple[float, float]] = {}
            probe_http = app.test_client()
            #: Set when the restart failed: the clients stop waiting for the broker.
            gave_up = threading.Event()

            def submit_http(job_id: str, client: Any) -> None:
                body = d.payload(job_id, stall=FETCH_STALL)
                deadline = time.monotonic() + SUBMIT_PATIENCE
                while time.monotonic() < deadline and not gave_up.is_set():
                    asked = time.time()
                    response = client.post(f"{PREFIX}/job", json=body)
                    answers.add("POST /job", response)
                    if response.status_code in (200, 202):
                        accepted.append(job_id)
                        accepted_at[job_id] = (asked, time.time())
                        return
                    if response.status_code != 503:
                        return
                    time.sleep(0.1)

            def probe() -> tuple[int, int]:
                job_id = f"probe-{run}-{uuid.uuid4().hex[:8]}"
                asked = time.time()
                submit = probe_http.post(f"{PREFIX}/job", json=d.payload(job_id))
                answers.add("POST /job", submit)
                if submit.status_code in (200, 202):
                    accepted.append(job_id)
                    accepted_at[job_id] = (asked, time.time())
                health = probe_http.get(f"{PREFIX}/worker/health")
                answers.add("GET /worker/health", health)
                return submit.status_code, health.status_code

            moments: dict[str, float] = {}
            burst_client = app.test_client()

            def submit_burst(stopped: threading.Event) -> None:
                # Submits back to back while RabbitMQ shuts down: the moment a client is
                # most likely to be told "accepted" for a message the broker drops.
                while not stopped.is_set():
                    job_id = f"burst-{run}-{uuid.uuid4().hex[:8]}"
                    asked = time.time()
                    response = burst_client.post(f"{PREFIX}/job", json=d.payload(job_id))
                    answers.add("POST /job", response)
                    if response.status_code in (200, 202):
                        accepted.append(job_id)
                        accepted_at[job_id] = (asked, time.time())

            def restart_rabbitmq() -> None:
                try:
                    stop_and_start()
                except BaseException:
                    gave_up.set()
                    raise

            def stop_and_start() -> None:
                wait_until(
                    lambda: min(in_flight_at(d, time.time()).values()) >= 1,
                    timeout=15,
                    what="renders in flight on both hosts",
                )
                stopping = threading.Event()
                burst = threading.Thread(target=submit_burst, args=(stopping,), daemon=True)
                moments["stop"] = time.time()
                burst.start()
                try:
                    server.stop()
                finally:
                    stopping.set()
                    burst.join(timeout=60)
                moments["stopped"] = time.time()
                time.sleep(OUTAGE)
                moments["starting"] = time.time()
                server.start()
                moments["back"] = time.time()

            # When RabbitMQ is stopped (SIGTERM) mid-run and started again
            stream_client = app.test_client()
            sampler = Sampler(probe, interval=PROBE_INTERVAL)
            sampler.start()
            try:
                run_stream(
                    jobs,
                    RATE,
                    lambda i: submit_http(ids[i], stream_client),
                    [(jobs / RATE / 3, restart_rabbitmq)],
                )
                wait_until(lambda: "back" in moments, timeout=120, what="RabbitMQ back")
                time.sleep(2)
            finally:
                sampler.stop()
            statuses = d.wait_final(accepted, timeout=RECOVERY_BOUND + 30)
            idle = True
            try:
                wait_until(d.broker_idle, timeout=30, interval=0.5, what="the broker idle")
            except TimeoutError:
                idle = False
            extension.state(app).client.close()

            # Then: clients got 503 JSON (never a 500) while it was down, full service
            # came back by itself, every accepted job succeeded, none twice
            back, stop = moments["back"], moments["stop"]
            full = [
                t
                for t, (post, health) in sampler.samples
                if t >= back and (post, health) == (202, 200)
            ]
            to_service = (full[0] - back) if full else float("inf")
            everything = answers.all()
            # From the stop until it accepted connections again (its start included).
            down = answers.between(moments["stopped"], back)
            codes = by_route(down)
            errors_500 = [a for a in everything if a.status >= 500 and a.status != 503]
            not_json = [a for a in everything if not a.json]
            odd_503 = [
                a for a in everything if a.status == 503 and a.code not in ("unavailable", "down")
            ]
            other = [a for a in everything if a.status not in (200, 202, 503)]
            states: dict[str, int] = {}
            for s in statuses.values():
                key = s["state"] if s else "missing"
                states[key] = states.get(key, 0) + 1
            lost = sorted(j for j, s in statuses.items() if not s or s["state"] != "succeeded")
            events = d.events()
            twice = {j: n for j, n in successes_per_job(events).items() if n > 1}
            flying = in_flight_at(d, stop)
            after = {
                host: sum(
                    1 for e in events if e.host == host and e.event == "running" and e.at > back
                )
                for host in d.hosts
            }
            first_after = min(
                (e.at for e in events if e.event == "running" and e.at > back), default=None
            )
            resumed = (first_after - back) if first_after else float("inf")
            report(
                d.label,
                f"accepted {len(accepted)} jobs, succeeded {states.get('succeeded', 0)}, lost "
                f"{len(lost)} ({ {k: v for k, v in states.items() if k != 'succeeded'} or 0 }), "
                f"rendered to success twice {len(twice)}; {sum(flying.values())} renders in "
                f"flight at the stop {flying}; RabbitMQ down {back - stop:.1f} s (stopped "
                f"{OUTAGE:g} s, its start took {back - moments['starting']:.1f} s), answers "
                f"until it answered {codes}, 500s {len(errors_500)}, non-JSON "
                f"{len(not_json)}; full service {to_service:.1f} s after it answered again; "
                f"first render after it {resumed:.1f} s, renders after it per host {after}",
                accepted=len(accepted),
                lost=len(lost),
                twice=len(twice),
                to_service=to_service,
                answers=codes,
            )
            for job_id in lost[:3]:
                asked, answered = accepted_at[job_id]
                print(
                    f"--- {job_id} was submitted {asked - stop:+.3f} s from the stop, accepted "
                    f"{answered - stop:+.3f} s (RabbitMQ exited at "
                    f"{moments['stopped'] - stop:+.3f} s, answered again at {back - stop:+.3f} s)"
                )
                print(f"--- what the workers logged about {job_id}: {statuses[job_id]}")
                print("\n".join(d.lines_about(job_id)))
            assert errors_500 == [] and not_json == [] and odd_503 == [], (
                errors_500[:5],
                not_json[:5],
                odd_503[:5],
            )
            assert other == [], other[:5]
            assert codes.get("POST /job", {}).get(503), "submits while RabbitMQ is down get 503"
            assert codes.get("GET /worker/health", {}).get(503), "health is 503 while it is down"
            assert to_service <= 10, to_service
            assert all(after.values()), f"a worker host did not reconnect: {after}"
            for job_id in list(twice)[:3]:
                print(f"--- {job_id} was logged succeeded {twice[job_id]} times:")
                print("\n".join(d.lines_about(job_id)))
            if twice:
                raise DefectObserved(f"jobs logged succeeded more than once: {twice}")
            if lost:
                raise DefectObserved(
                    f"{len(lost)} of {len(accepted)} accepted jobs never ran after RabbitMQ "
                    f"came back: { {j: statuses[j] and statuses[j]['state'] for j in lost[:10]} }"
                )
            assert idle, d.vhost.queue_depths() if d.vhost else None
            d.check_keys()
    finally:
        server.close()

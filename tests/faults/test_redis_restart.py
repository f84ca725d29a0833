"""Redis restart (contract §7: a job whose render ends while Redis is briefly unreachable
still ends ``succeeded`` once Redis answers again, never stuck ``running``; §5: the HTTP API
answers 503 JSON while the store is down, never 500).

Redis runs with ``appendonly yes`` / ``appendfsync always`` and is stopped with SIGTERM
mid-run, renders in flight, then started again on the same port and directory.  The HTTP
API is the real Flask app (``PreviewExtension``) driven in-process with its test client:
jobs are submitted through ``POST /job`` (a 503 is retried, as a client honouring
``Retry-After`` would), and a probe thread calls ``POST /job`` and ``GET /worker/health``
every 0.25 s throughout."""

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
    PersistentRedis,
    Sampler,
    report,
    run_stream,
    scaled,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

PREFIX = "/api/preview"
RATE = 5.0
#: The sources answer after half a second: renders are in flight when Redis stops.
FETCH_STALL = 0.5
#: How long Redis stays down: longer than the broker heartbeat timeout (4 s), so workers
#: take each other for dead meanwhile, and well within PREVIEW_STORE_RETRY_SECONDS (120 s).
OUTAGE = 8.0
#: How often the probe submits a job and asks for health.
PROBE_INTERVAL = 0.25


class Answers:
    """Every HTTP answer the clients got: (time, route, status, JSON error code or None,
    whether the body was JSON)."""

    def __init__(self) -> None:
        self.items: list[tuple[float, str, int, str | None, bool]] = []
        # (the health check answers {"status": "down"} rather than an error code)
        self._lock = threading.Lock()

    def add(self, route: str, response: Any) -> None:
        body = response.get_json(silent=True)
        code = (body.get("error") or body.get("status")) if isinstance(body, dict) else None
        with self._lock:
            self.items.append((time.time(), route, response.status_code, code, body is not None))

    def between(self, start: float, end: float) -> list[tuple[float, str, int, str | None, bool]]:
        with self._lock:
            return [a for a in self.items if start <= a[0] <= end]


def in_flight_at(deployment: Deployment, moment: float) -> dict[str, int]:
    """Renders running at ``moment`` per host: a ``running`` line before it with no later
    line of the same job from the same process before it."""
    last: dict[tuple[str, int, str], str] = {}
    for e in deployment.events():
        if e.at <= moment:
            last[(e.host, e.pid, e.job_id)] = e.event
    counts = dict.fromkeys(deployment.hosts, 0)
    for (host, _pid, _job), event in last.items():
        counts[host] += event == "running"
    return counts


def test_redis_restart(broker: str) -> None:
    jobs = scaled(60)
    run = uuid.uuid4().hex[:6]
    ids = [f"restart-{run}-{i:04d}" for i in range(jobs)]
    with Deployment("redis-restart", broker, persistent=True) as d:
        assert isinstance(d.redis, PersistentRedis)
        # Given two worker hosts and the Flask app, on a Redis with AOF persistence
        d.start_host("a")
        d.start_host("b")
        app = Flask("faults")
        app.config.update(d.env)
        extension = PreviewExtension(app)
        answers = Answers()
        accepted: list[str] = []
        probe_http = app.test_client()

        def submit_http(job_id: str, client: Any) -> None:
            body = d.payload(job_id, stall=FETCH_STALL)
            for _ in range(300):  # 30 s at most
                response = client.post(f"{PREFIX}/job", json=body)
                answers.add("POST /job", response)
                if response.status_code in (200, 202):
                    accepted.append(job_id)
                    return
                if response.status_code != 503:
                    return
                time.sleep(0.1)

        def probe() -> tuple[int, int]:
            job_id = f"probe-{run}-{uuid.uuid4().hex[:8]}"
            submit = probe_http.post(f"{PREFIX}/job", json=d.payload(job_id, stall=0))
            answers.add("POST /job", submit)
            if submit.status_code in (200, 202):
                accepted.append(job_id)
            health = probe_http.get(f"{PREFIX}/worker/health")
            answers.add("GET /worker/health", health)
            return submit.status_code, health.status_code

        moments: dict[str, float] = {}

        def restart_redis() -> None:
            # Renders in flight on both hosts: after the outage, the first worker to run the
            # broker's maintenance takes the other for dead (its heartbeat is older than the
            # timeout) and gives its messages back, never its own.
            wait_until(
                lambda: min(in_flight_at(d, time.time()).values()) >= 1,
                timeout=10,
                what="renders in flight on both hosts",
            )
            moments["stop"] = time.time()
            d.redis.stop()
            moments["stopped"] = time.time()
            time.sleep(OUTAGE)
            moments["starting"] = time.time()
            d.redis.start()
            moments["back"] = time.time()

        # When Redis is stopped (SIGTERM) mid-run and started again OUTAGE s later
        stream_client = app.test_client()
        sampler = Sampler(probe, interval=PROBE_INTERVAL)
        sampler.start()
        try:
            run_stream(
                jobs,
                RATE,
                lambda i: submit_http(ids[i], stream_client),
                [(jobs / RATE / 3, restart_redis)],
            )
            wait_until(lambda: "back" in moments, timeout=60, what="Redis back")
            time.sleep(2)
        finally:
            sampler.stop()
        statuses = d.wait_final(accepted, timeout=RECOVERY_BOUND + 15)
        d.stop_hosts()
        extension.state(app).client.close()

        # Then: clients got 503 JSON (never a 500) while it was down, full service came
        # back, and every accepted job succeeded
        back, starting = moments["back"], moments["starting"]
        samples = sampler.samples
        full = [t for t, (post, health) in samples if t >= back and (post, health) == (202, 200)]
        to_service = (full[0] - starting) if full else float("inf")
        down = answers.between(moments["stopped"], moments["starting"])
        codes: dict[str, dict[int, int]] = {}
        for _, route, status, _code, _json in down:
            codes.setdefault(route, {})
            codes[route][status] = codes[route].get(status, 0) + 1
        errors_500 = [a for a in answers.items if a[2] >= 500 and a[2] != 503]
        not_json = [a for a in answers.items if not a[4]]
        unavailable_503 = [
            a for a in answers.items if a[2] == 503 and a[3] not in ("unavailable", "down")
        ]
        health_503 = [a for a in answers.items if a[2] == 503 and a[1] == "GET /worker/health"]
        states: dict[str, int] = {}
        for s in statuses.values():
            key = s["state"] if s else "missing"
            states[key] = states.get(key, 0) + 1
        lost = sorted(j for j, s in statuses.items() if not s or s["state"] != "succeeded")
        in_flight = sum(in_flight_at(d, moments["stop"]).values())
        unrecorded = sum(host.log.count("could not record") for host in d.hosts.values())
        report(
            d.label,
            f"accepted {len(accepted)} jobs, succeeded {states.get('succeeded', 0)}, lost "
            f"{len(lost)} ({ {k: v for k, v in states.items() if k != 'succeeded'} or 0 }); "
            f"{in_flight} renders in flight at the stop, {unrecorded} final writes given up; "
            f"Redis down {moments['starting'] - moments['stop']:.1f} s, answers meanwhile "
            f"{codes}, 500s "
            f"{len(errors_500)}, non-JSON {len(not_json)}; full service "
            f"{to_service:.1f} s after Redis was started again (it answered after "
            f"{back - starting:.1f} s)",
            accepted=len(accepted),
            lost=len(lost),
            to_service=to_service,
            answers=codes,
        )
        assert errors_500 == [] and not_json == [] and unavailable_503 == []
        assert codes.get("POST /job", {}).get(503), "submits while Redis is down get 503"
        assert health_503, "health is 503 while Redis is down"
        assert to_service <= 10, to_service
        if lost:
            for job_id in lost[:3]:
                print(f"--- what the workers logged about {job_id}:")
                print("\n".join(d.lines_about(job_id)))
            raise DefectObserved(
                f"{len(lost)} of {len(accepted)} jobs never succeeded after Redis came back: "
                f"{ {j: statuses[j] and statuses[j]['state'] for j in lost[:10]} }"
            )
        d.check_keys()

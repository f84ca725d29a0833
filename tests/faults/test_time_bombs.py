"""Time bombs (issue #16): a source whose render runs past the time limit every time (an SVG
of large blurred shapes, generated here) costs at most two time limits of worker time: its
first overrun is retried as a time limit, the second fails it for good as ``too_complex``
(``dramatiq_preview.jobs``), where it used to be retried PREVIEW_MAX_RETRIES times.

Two worker hosts render a steady stream of ordinary jobs; a few bombs arrive amid it.
Figures: each bomb's deliveries and the worker time they took, in time limits (from the
worker logs: ``running`` to the line that ended the delivery), its final state; the ordinary
jobs' latency (``finishedAt - createdAt``) before and while the bombs went off."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import imagegen
import pytest

from .harness import Deployment, percentile, report, run_stream, scaled, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow]

RATE = 4.0
FETCH_STALL = 0.2
BASELINE_SECONDS = 8.0
TIME_LIMIT_MS = 3000
BOMBS = 3
#: Ends of a delivery in the job lines of a worker log.
ENDS = frozenset({"retrying", "failed", "succeeded", "cancelled"})


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def latencies(statuses: dict[str, dict[str, Any] | None]) -> list[float]:
    return [
        seconds(s["finishedAt"]) - seconds(s["createdAt"])
        for s in statuses.values()
        if s and s["state"] == "succeeded"
    ]


def test_time_bombs(broker: str) -> None:
    run = uuid.uuid4().hex[:6]
    with Deployment(
        "time-bombs",
        broker,
        PREVIEW_TIME_LIMIT_MS=str(TIME_LIMIT_MS),
        PREVIEW_FETCH_READ_TIMEOUT_MS=str(TIME_LIMIT_MS),
        PREVIEW_MAX_RETRIES="5",
    ) as d:
        # Given two worker hosts rendering a steady stream of ordinary jobs
        d.start_host("a")
        d.start_host("b")
        baseline = [f"calm-{run}-{i:04d}" for i in range(scaled(int(BASELINE_SECONDS * RATE)))]
        d.run_stream(baseline, RATE, stall=FETCH_STALL)
        calm = d.wait_final(baseline, timeout=30)

        # When time bombs arrive amid the stream
        (d.root / "sources" / "bomb.svg").write_bytes(imagegen.time_bomb_svg())
        bombs = [f"bomb-{run}-{i}" for i in range(BOMBS)]
        during = [f"amid-{run}-{i:04d}" for i in range(scaled(int(RATE * 20)))]

        def submit(i: int) -> None:
            if i % 20 == 5 and i // 20 < BOMBS:
                d.client.submit(
                    {
                        "jobId": bombs[i // 20],
                        "source": {"path": "bomb.svg"},
                        "outputs": [{"width": 2048, "height": 2048, "format": "png"}],
                    }
                )
            d.client.submit(d.payload(during[i], stall=FETCH_STALL))

        run_stream(len(during), RATE, submit)
        final = d.wait_final(bombs + during, timeout=120)
        wait_until(d.broker_idle, timeout=60, interval=0.5, what="the broker idle")
        d.stop_hosts()

        # Then each bomb took two deliveries of at most a time limit each, and failed as
        # too_complex; every ordinary job succeeded
        events = d.events()
        limit = TIME_LIMIT_MS / 1000
        cost: dict[str, list[float]] = {}
        for bomb in bombs:
            started: dict[int, float] = {}
            for e in events:
                if e.job_id != bomb:
                    continue
                if e.event == "running":
                    started[e.pid] = e.at
                elif e.event in ENDS and e.pid in started:
                    cost.setdefault(bomb, []).append(e.at - started.pop(e.pid))
        amid = {j: final[j] for j in during}
        before, meanwhile = latencies(calm), latencies(amid)
        failures = {j: s for j, s in {**calm, **amid}.items() if not s or s["state"] != "succeeded"}
        outcomes = {}
        for b in bombs:
            status = final[b] or {}
            outcomes[b] = f"{status.get('state')}/{(status.get('error') or {}).get('type')}"
        worst = max((sum(c) / limit for c in cost.values()), default=0.0)
        report(
            d.label,
            f"{BOMBS} bombs: deliveries {[len(cost.get(b, [])) for b in bombs]}, worker time "
            f"{[round(sum(cost.get(b, [])) / limit, 2) for b in bombs]} time limits "
            f"(PREVIEW_MAX_RETRIES 5 would allow 6), ended {sorted(set(outcomes.values()))}; "
            f"other jobs: {len(calm) + len(amid)}, succeeded "
            f"{len(calm) + len(amid) - len(failures)}; latency p50/p95/max "
            f"{percentile(before, 0.5):.2f}/{percentile(before, 0.95):.2f}/"
            f"{max(before, default=0):.2f} s before, {percentile(meanwhile, 0.5):.2f}/"
            f"{percentile(meanwhile, 0.95):.2f}/{max(meanwhile, default=0):.2f} s meanwhile",
            bomb_cost=[sum(cost.get(b, [])) / limit for b in bombs],
            latency_before=before,
            latency_meanwhile=meanwhile,
        )
        for job_id in list(failures)[:3]:
            print(f"--- {job_id}: {failures[job_id]}")
            print("\n".join(d.lines_about(job_id)))
        for bomb in bombs:
            status = final[bomb]
            assert status and status["state"] == "failed", status
            assert status["error"]["type"] == "too_complex", status
            assert status["attempts"] == 2, status
            assert len(cost[bomb]) == 2, cost
        # Each delivery ends at the time limit, give or take the stop of the render child
        assert worst <= 2.2, cost
        assert failures == {}
        d.check_keys(dead_letters=BOMBS)

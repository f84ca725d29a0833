"""Worker crash and whole host lost (contract §7: never lost, rendered at most once to
success, a killed worker's jobs start again within heartbeat timeout + time limit + 5 s).

Jobs fetch a URL source that answers after 0.3 s, so a kill always finds renders in
flight; they arrive as a steady stream while one host is killed."""

from __future__ import annotations

import time
import uuid

import pytest

from .harness import (
    RECOVERY_BOUND,
    SCALE,
    Deployment,
    Host,
    Kill,
    in_flight_at,
    parse_events,
    recoveries,
    report,
    scaled,
    successes_per_job,
    wait_until,
)
from .harness import alive as process_alive

pytestmark = [pytest.mark.faults, pytest.mark.slow]

#: Jobs a second, and how long each one's source takes to answer.
RATE = 8.0
FETCH_STALL = 0.3


def rendering_now(host: Host) -> set[str]:
    """Jobs the host's current worker process is rendering, by its log so far."""
    proc = host.current
    if proc is None:
        return set()
    events = parse_events(proc.log, host.name)
    flying: set[str] = set()
    for pid in {e.pid for e in events}:
        flying |= in_flight_at(events, Kill(time.time(), host.name, pid))
    return flying


def kill_mid_render(deployment: Deployment, host: str, *, whole_host: bool) -> Kill:
    """Wait until ``host`` renders something, then SIGKILL it (its worker process, or the
    whole host)."""
    wait_until(lambda: rendering_now(deployment.hosts[host]), timeout=10, what="a render")
    return deployment.kill_host(host) if whole_host else deployment.kill_worker(host)


def test_worker_crash(broker: str) -> None:
    # Given two worker hosts and a stream of jobs
    jobs = scaled(200)
    kills = 3 if SCALE < 2.5 else 5
    run = uuid.uuid4().hex[:6]
    ids = [f"crash-{run}-{i:05d}" for i in range(jobs)]
    with Deployment("worker-crash", broker) as d:
        d.start_host("a")
        d.start_host("b")
        duration = jobs / RATE

        def kill_and_restart() -> None:
            kill_mid_render(d, "a", whole_host=False)
            d.hosts["a"].start()

        # When host a's worker process is SIGKILLed mid-render several times, restarted
        # each time
        actions = [(duration * (k + 1) / (kills + 1), kill_and_restart) for k in range(kills)]
        started = time.monotonic()
        d.run_stream(ids, RATE, actions, stall=FETCH_STALL)
        statuses = d.wait_final(ids, timeout=RECOVERY_BOUND + 60)
        took = time.monotonic() - started
        d.stop_hosts()

        # Then every job succeeded, none was rendered to success twice, and each job the
        # killed worker held started again within the bound
        events = d.events()
        succeeded = sum(1 for s in statuses.values() if s and s["state"] == "succeeded")
        twice = sorted(j for j, n in successes_per_job(events).items() if n > 1)
        redelivered = sum(1 for s in statuses.values() if s and s["attempts"] > 1)
        found = recoveries(events, d.kills, d.held)
        in_flight = sum(len(r.in_flight) for r in found)
        prefetched = sum(len(r.prefetched) for r in found)
        longest = max((r.longest for r in found), default=0.0)
        never = [j for r in found for j in r.never]
        held = f", prefetched {prefetched}" if broker == "redis" else ""
        report(
            d.label,
            f"succeeded {succeeded}/{jobs}, rendered to success more than once {len(twice)}, "
            f"{len(d.kills)} kills caught {in_flight} renders in flight{held}, "
            f"{redelivered} jobs rendered again, longest recovery {longest:.1f} s "
            f"(bound {RECOVERY_BOUND:.1f} s), never restarted {len(never)}, run {took:.0f} s",
            succeeded=succeeded,
            submitted=jobs,
            twice=len(twice),
            longest=longest,
            bound=RECOVERY_BOUND,
        )
        not_done = {j: s["state"] if s else None for j, s in statuses.items()}
        not_done = {j: s for j, s in not_done.items() if s != "succeeded"}
        assert not_done == {}
        assert twice == []
        # A kill waits for a render to start, but a small render may end before the signal
        # lands: the scenario needs one kill at least to have caught one.
        assert in_flight >= 1, "no kill caught a render in flight: recovery was not exercised"
        assert never == []
        assert longest <= RECOVERY_BOUND, [(r.kill, r.seconds) for r in found]
        d.check_keys()


def test_whole_host_lost(broker: str) -> None:
    # Given two worker hosts and a stream of jobs
    jobs = scaled(100)
    run = uuid.uuid4().hex[:6]
    ids = [f"lost-{run}-{i:05d}" for i in range(jobs)]
    with Deployment("host-lost", broker) as d:
        d.start_host("a")
        d.start_host("b")
        duration = jobs / RATE

        # When host a is lost for good mid-run: its process group and render children
        # SIGKILLed at once, never restarted
        started = time.monotonic()
        d.run_stream(ids, RATE, [(duration / 3, lambda: kill_mid_render(d, "a", whole_host=True))])
        statuses = d.wait_final(ids, timeout=RECOVERY_BOUND + 60)
        took = time.monotonic() - started
        (kill,) = d.kills
        time.sleep(0.5)
        survivors = [pid for pid in kill.descendants if process_alive(pid)]
        d.stop_hosts()

        # Then host b finished every job, a's held jobs within the bound
        events = d.events()
        succeeded = sum(1 for s in statuses.values() if s and s["state"] == "succeeded")
        after = sum(1 for e in events if e.event == "succeeded" and e.at > kill.at)
        twice = sorted(j for j, n in successes_per_job(events).items() if n > 1)
        (found,) = recoveries(events, d.kills, d.held)
        held = f", prefetched {len(found.prefetched)}" if broker == "redis" else ""
        report(
            d.label,
            f"succeeded {succeeded}/{jobs} ({after} by host b after the loss), rendered to "
            f"success more than once {len(twice)}, the lost host held {len(found.in_flight)} "
            f"renders in flight{held}, longest recovery {found.longest:.1f} s (bound "
            f"{RECOVERY_BOUND:.1f} s), processes of the lost host left {len(survivors)} of "
            f"{len(kill.descendants)}, run {took:.0f} s",
            succeeded=succeeded,
            submitted=jobs,
            longest=found.longest,
        )
        assert succeeded == jobs, {j: s and s["state"] for j, s in statuses.items()}
        assert twice == []
        # What the issue asks of this scenario is the other host finishing everything; a
        # render caught in flight (a small one may end before the signal lands) is reported.
        assert found.never == []
        assert found.longest <= RECOVERY_BOUND, found.seconds
        assert survivors == []
        d.check_keys()

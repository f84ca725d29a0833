"""Two deployments on one broker (contract §2: ``PREVIEW_NAMESPACE`` prefixes everything this
library writes; §7: a job is never lost).

Deployments ``x`` and ``y`` have their own namespaces, state stores (Redis servers) and
workers, and share one broker: a Redis server, or one RabbitMQ virtual host.  Each must
render its own jobs and only those."""

from __future__ import annotations

import uuid

import pytest

from .harness import RECOVERY_BOUND, DefectObserved, Deployment, report, scaled

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_deployments_sharing_a_broker(broker: str) -> None:
    jobs = scaled(20)
    run = uuid.uuid4().hex[:6]
    with Deployment("namespace-x", broker) as x:
        shared = {"PREVIEW_BROKER_URL": x.redis.url} if broker == "redis" else {}
        with Deployment("namespace-y", broker, vhost=x.vhost, **shared) as y:
            # Given two deployments on one broker, each with a worker host
            x.start_host("x")
            y.start_host("y")
            assert x.env["PREVIEW_BROKER_URL"] == y.env["PREVIEW_BROKER_URL"]
            assert x.env["PREVIEW_REDIS_URL"] != y.env["PREVIEW_REDIS_URL"]

            # When each submits its jobs
            own = {d: [f"{d.scenario}-{run}-{i:03d}" for i in range(jobs)] for d in (x, y)}
            for i in range(jobs):
                for d in (x, y):
                    d.client.submit(d.payload(own[d][i]))
            finals = {d: d.wait_final(own[d], timeout=RECOVERY_BOUND + 7) for d in (x, y)}
            x.stop_hosts()
            y.stop_hosts()

            # Then each deployment rendered all of its own jobs and none of the other's
            figures = []
            stolen_total = unfinished_total = 0
            for d, other in ((x, y), (y, x)):
                done = sum(1 for s in finals[d].values() if s and s["state"] == "succeeded")
                stolen = {e.job_id for e in other.events() if e.job_id in set(own[d])}
                stolen_total += len(stolen)
                unfinished_total += jobs - done
                figures.append(
                    f"{d.scenario[-1]}: {done}/{jobs} succeeded in its own store, "
                    f"{len(stolen)} rendered by the other's workers"
                )
            report(
                f"namespaces[{broker}]",
                f"two deployments (own namespaces and state stores) on one "
                f"{'Redis' if broker == 'redis' else 'RabbitMQ vhost'}: " + "; ".join(figures),
                stolen=stolen_total,
                unfinished=unfinished_total,
            )
            if stolen_total or unfinished_total:
                raise DefectObserved(
                    f"{stolen_total} jobs taken by the other deployment, "
                    f"{unfinished_total} never finished in their own store"
                )

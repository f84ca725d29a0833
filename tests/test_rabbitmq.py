"""The same job lifecycle with RabbitMQ as the broker (Redis stays the state store).

These tests use the RabbitMQ server at PREVIEW_TEST_AMQP_URL (default: guest@127.0.0.1) and
are skipped, with that reason, when none answers.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import imagegen
import pytest
from sourceserver import wait_until
from support import SOURCE_ROOT, delete_amqp_queues, rabbitmq_unavailable

from dramatiq_preview import JobNotFound, PreviewClient, Settings
from dramatiq_preview.dlq import dead_letters
from dramatiq_preview.testing import WorkerProcess, wait_for_state

AMQP_URL = os.environ.get("PREVIEW_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
OUT = [{"width": 8, "height": 8, "format": "png"}]


_why_not = rabbitmq_unavailable(AMQP_URL)
pytestmark = [
    pytest.mark.rabbitmq,
    pytest.mark.skipif(_why_not is not None, reason=_why_not or ""),
]


@pytest.fixture
def amqp() -> Iterator[tuple[dict[str, str], PreviewClient]]:
    env = {
        "PREVIEW_BROKER_URL": AMQP_URL,
        "PREVIEW_NAMESPACE": "amqp" + uuid.uuid4().hex[:8],
        "PREVIEW_TIME_LIMIT_MS": "3000",
    }
    client = PreviewClient(Settings.from_mapping(env))
    yield env, client
    client.close()
    # The deployment's queues carry its namespace: they are this test's alone.
    delete_amqp_queues(AMQP_URL, env["PREVIEW_NAMESPACE"])


@pytest.fixture(scope="module", autouse=True)
def source() -> None:
    (SOURCE_ROOT / "amqp").mkdir(exist_ok=True)
    (SOURCE_ROOT / "amqp" / "a.png").write_bytes(imagegen.png(imagegen.quadrants(16, 16)))


def test_the_client_enqueues_on_rabbitmq(amqp: tuple[dict[str, str], PreviewClient]) -> None:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    assert isinstance(amqp[1].broker, RabbitmqBroker)


def test_a_job_is_rendered_through_rabbitmq(
    amqp: tuple[dict[str, str], PreviewClient], start_worker: Any, job_id: str
) -> None:
    env, client = amqp
    start_worker(env=env, threads=2)
    client.submit({"jobId": job_id, "source": {"path": "amqp/a.png"}, "outputs": OUT})
    status = wait_for_state(client.status, job_id, timeout=60)
    assert status["state"] == "succeeded", status
    assert status["attempts"] == 1


def test_failed_jobs_are_dead_lettered_listed_and_replayed(
    amqp: tuple[dict[str, str], PreviewClient], start_worker: Any, job_id: str
) -> None:
    env, client = amqp
    start_worker(env=env, threads=2)
    client.submit({"jobId": job_id, "source": {"path": f"amqp/{job_id}.png"}, "outputs": OUT})
    assert wait_for_state(client.status, job_id, timeout=60)["state"] == "failed"
    dlq = dead_letters(client.broker, client.store)
    wait_until(lambda: job_id in {d.job_id for d in dlq.list()}, timeout=30)
    # Listing twice shows the same: listing does not consume dead letters
    assert job_id in {d.job_id for d in dlq.list()}
    (SOURCE_ROOT / "amqp" / f"{job_id}.png").write_bytes(
        imagegen.png(imagegen.solid(4, 4, imagegen.RED))
    )
    assert dlq.requeue(job_id) == [job_id]
    status = wait_for_state(client.status, job_id, timeout=60)
    assert status["state"] == "succeeded" and status["attempts"] == 2
    assert job_id not in {d.job_id for d in dlq.list()}


def test_the_lanes_carry_the_namespace(amqp: tuple[dict[str, str], PreviewClient]) -> None:
    env, client = amqp
    ns = env["PREVIEW_NAMESPACE"]
    assert f"preview.{ns}.high" in client.broker.get_declared_queues()
    assert f"preview.{ns}.webhooks" in client.broker.get_declared_queues()


def test_deployments_with_their_own_namespaces_on_one_vhost_keep_to_their_own_jobs(
    amqp: tuple[dict[str, str], PreviewClient], start_worker: Any, job_id: str
) -> None:
    # Given deployments a and b on one vhost, each with its own namespace (and so its own
    # state store), and a worker of b only
    env_a, client_a = amqp
    env_b = dict(env_a, PREVIEW_NAMESPACE=env_a["PREVIEW_NAMESPACE"] + "-b")
    client_b = PreviewClient(Settings.from_mapping(env_b))
    worker_b: WorkerProcess = start_worker(env=env_b, threads=2)
    try:
        # When a submits jobs (of every lane), then b submits one and it is rendered
        theirs = {f"{job_id}-a-{p}": p for p in ("high", "normal", "low")}
        for jid, priority in theirs.items():
            client_a.submit(
                {
                    "jobId": jid,
                    "priority": priority,
                    "source": {"path": "amqp/a.png"},
                    "outputs": OUT,
                }
            )
        mine = f"{job_id}-b"
        client_b.submit({"jobId": mine, "source": {"path": "amqp/a.png"}, "outputs": OUT})
        assert wait_for_state(client_b.status, mine, timeout=60)["state"] == "succeeded"
        # Then b's worker took none of a's jobs: they wait in a's store, unknown to b's
        for jid in theirs:
            assert client_a.status(jid)["state"] == "queued"
            with pytest.raises(JobNotFound):
                client_b.status(jid)
        # And a's own worker renders them
        start_worker(env=env_a, threads=2)
        for jid in theirs:
            assert wait_for_state(client_a.status, jid, timeout=60)["state"] == "succeeded"
    finally:
        worker_b.stop()  # before its queues go: a live consumer would declare them again
        client_b.close()
        delete_amqp_queues(AMQP_URL, env_b["PREVIEW_NAMESPACE"])


@pytest.mark.slow
def test_a_killed_worker_s_job_is_redelivered_at_once_and_finished_once(
    amqp: tuple[dict[str, str], PreviewClient],
    start_worker: Any,
    source_server: Any,
    job_id: str,
) -> None:
    env, client = amqp
    url = source_server.add("/amqp-hang.png", imagegen.png(imagegen.quadrants(8, 8)), stall=60)
    worker_a: WorkerProcess = start_worker(env=env, threads=1)
    client.submit({"jobId": job_id, "source": {"url": url}, "outputs": OUT})
    wait_until(lambda: source_server.hits("/amqp-hang.png") == 1, timeout=60)
    (pid,) = worker_a.worker_pids()
    os.kill(pid, signal.SIGKILL)
    assert worker_a.process is not None
    worker_a.process.wait(timeout=30)
    worker_b: WorkerProcess = start_worker(env=env, threads=1)
    status = wait_for_state(client.status, job_id, timeout=90)
    assert status["state"] == "succeeded", status
    assert status["attempts"] == 2
    # The status is written before the log line, and the log arrives through a pipe.
    wait_until(lambda: f"job {job_id} succeeded" in worker_b.log)
    assert worker_b.log.count(f"job {job_id} succeeded") == 1

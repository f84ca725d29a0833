"""Job lifecycle against a real Redis and real workers: states, duplicates, kills,
poison pills, priorities, cancellation, dead letters, expiry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dramatiq
import imagegen
import pytest
import redis
from support import PYTHON, SOURCE_ROOT, python_env, wait_for_log, wait_until

from dramatiq_preview import (
    JobConflict,
    JobNotFound,
    PreviewClient,
    Settings,
    cancel_preview,
    get_status,
    render_preview,
    submit_preview,
)
from dramatiq_preview.errors import BrokerUnavailable
from dramatiq_preview.names import QUEUES
from dramatiq_preview.testing import RedisServer, WorkerProcess, wait_for_state

TINY = "lifecycle/tiny.png"
OUT = [{"width": 8, "height": 8, "format": "png"}]


@pytest.fixture(scope="module", autouse=True)
def tiny_source() -> None:
    path = SOURCE_ROOT / TINY
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(imagegen.png(imagegen.quadrants(16, 16)))


_clients: list[PreviewClient] = []


@pytest.fixture(autouse=True)
def close_clients() -> Any:
    yield
    while _clients:
        _clients.pop().close()


def isolated(**extra: str) -> tuple[dict[str, str], PreviewClient]:
    """Settings with a namespace of their own: workers of other tests never see its jobs."""
    env = {"PREVIEW_NAMESPACE": "iso" + uuid.uuid4().hex[:10], **extra}
    client = PreviewClient(Settings.from_mapping(env))
    _clients.append(client)
    return env, client


def wait(
    client: PreviewClient,
    job_id: str,
    states: Any = ("succeeded", "failed", "cancelled"),
    timeout: float = 60,
) -> dict[str, Any]:
    return wait_for_state(client.status, job_id, states, timeout=timeout)


def log_count(worker: WorkerProcess, text: str) -> int:
    return worker.log.count(text)


def messages_of(redis_client: Any, namespace: str, job_id: str) -> list[str]:
    """The hashes in which the broker still holds a message of ``job_id``: queued, fetched
    but not acked, or delayed (a retry waiting for its time).  A message leaves them only
    when it is acked or dead-lettered."""
    found = []
    for queue in QUEUES.values():
        for key in (f"{namespace}:{queue}.msgs", f"{namespace}:{queue}.DQ.msgs"):
            for data in redis_client.hvals(key):
                args = dramatiq.Message.decode(data.encode()).args
                if args and isinstance(args[0], dict) and args[0].get("jobId") == job_id:
                    found.append(key)
    return found


def wait_until_handled(redis_client: Any, namespace: str, job_id: str) -> None:
    """Wait until the broker has no message of ``job_id`` left: every delivery of the job
    has run to its end, hooks and ack included."""
    wait_until(
        lambda: messages_of(redis_client, namespace, job_id),
        lambda left: not left,
        what=f"every message of {job_id} acked",
    )


def kill_worker_process(worker: WorkerProcess) -> None:
    (pid,) = worker.worker_pids()
    os.kill(pid, signal.SIGKILL)
    assert worker.process is not None
    worker.process.wait(timeout=30)


# --- states and progress -----------------------------------------------------------------


@pytest.mark.usefixtures("worker")
def test_a_job_moves_through_its_states_and_reports_progress(
    source_server: Any, job_id: str
) -> None:
    # Given a source that answers only when the test releases it
    body = imagegen.png(imagegen.quadrants(64, 64))
    url = source_server.add("/slow.png", body, stall=30)
    seen: list[tuple[str, int]] = []

    def observe() -> dict[str, Any]:
        status = get_status(job_id)
        pair = (status["state"], status["progress"])
        if not seen or seen[-1] != pair:
            seen.append(pair)
        return status

    # When the job is submitted, and its source answers once the worker is fetching it
    submit_preview({"jobId": job_id, "source": {"url": url}, "outputs": OUT * 3})
    source_server.wait_for_hits("/slow.png", 1)
    observe()
    source_server.release("/slow.png")
    # (sampled until it ends, to see each step of its progress)
    final = wait_until(
        observe,
        lambda status: status["state"] == "succeeded",
        timeout=30,
        interval=0.005,
        what=f"{job_id} succeeded",
    )
    # Then it was running, its progress only grew, and it ended at 100
    assert ("running", 0) in seen, seen
    progress = [p for _, p in seen]
    assert progress == sorted(progress), seen
    assert seen[-1] == ("succeeded", 100)
    assert final["createdAt"] <= final["startedAt"] <= final["finishedAt"]


# --- idempotency -------------------------------------------------------------------------


def test_a_duplicate_submit_returns_the_existing_job_and_a_changed_one_conflicts(
    job_id: str,
) -> None:
    _env, client = isolated()  # no worker: the job stays queued
    payload = {"jobId": job_id, "source": {"path": TINY}, "outputs": OUT, "metadata": {"a": "1"}}
    first = client.submit(payload)
    again = client.submit({**payload, "outputs": [{**OUT[0], "fit": "contain"}]})
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.job_id == job_id and again.state == "queued"
    with pytest.raises(JobConflict, match="different payload"):
        client.submit({**payload, "metadata": {"a": "2"}})


class Stamp(dramatiq.Middleware):
    """A host's middleware: adds an option before enqueue and notes every enqueue."""

    def __init__(self) -> None:
        self.enqueued: list[str] = []

    def before_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        message.options["stamp"] = "from-the-host"

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        self.enqueued.append(message.options["redis_message_id"])


def test_a_submit_records_and_enqueues_in_one_round_trip_with_the_hosts_hooks(
    job_id: str,
) -> None:
    with RedisServer() as server:
        namespace = "one" + uuid.uuid4().hex[:6]
        with PreviewClient.from_url(server.url, PREVIEW_NAMESPACE=namespace) as client:
            stamp = Stamp()
            client.broker.add_middleware(stamp)
            client.submit({"source": {"path": TINY}, "outputs": OUT})  # loads the scripts
            redis_client = server.client()
            redis_client.config_resetstat()
            payload = {"jobId": job_id, "source": {"path": TINY}, "outputs": OUT}
            assert client.submit(payload).duplicate is False
            calls = redis_client.info("commandstats")
            # One script call: the record and the message together.  Enqueueing apart
            # (Dramatiq's RedisBroker.enqueue) would be a second EVALSHA.
            assert calls["cmdstat_evalsha"]["calls"] == 1
            queue = f"{namespace}:preview-normal"
            ids = redis_client.lrange(queue, 0, -1)
            assert len(ids) == 2 and ids[-1] == stamp.enqueued[-1]
            message = dramatiq.Message.decode(redis_client.hget(queue + ".msgs", ids[-1]).encode())
            assert message.args[0]["jobId"] == job_id
            assert message.options["stamp"] == "from-the-host"
            assert message.options["preview_recorded"] is True
            assert client.status(job_id)["state"] == "queued"
            # A duplicate and a conflict enqueue nothing and tell no after_enqueue hook.
            assert client.submit(payload).duplicate is True
            with pytest.raises(JobConflict):
                client.submit({**payload, "page": 3})
            assert redis_client.llen(queue) == 2 and len(stamp.enqueued) == 2
            assert redis_client.hlen(queue + ".msgs") == 2
            redis_client.close()


class QuotaExceeded(dramatiq.middleware.MiddlewareError):
    pass


class Refuse(dramatiq.Middleware):
    """A host's middleware that refuses to enqueue (a quota, a closed tenant...): Dramatiq
    lets only a MiddlewareError out of a hook."""

    def before_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        raise QuotaExceeded("quota exceeded")


def test_a_host_hook_refusing_the_enqueue_leaves_no_job_and_no_message(job_id: str) -> None:
    with RedisServer() as server:
        namespace = "no" + uuid.uuid4().hex[:6]
        with PreviewClient.from_url(server.url, PREVIEW_NAMESPACE=namespace) as client:
            client.broker.add_middleware(Refuse())
            payload = {"jobId": job_id, "source": {"path": TINY}, "outputs": OUT}
            with pytest.raises(BrokerUnavailable, match="QuotaExceeded; the job was not queued"):
                client.submit(payload)
            with pytest.raises(JobNotFound):
                client.status(job_id)
        redis_client = server.client()
        assert redis_client.keys(f"{namespace}:*") == []
        redis_client.close()


def test_a_broker_on_another_redis_database_gets_its_message_there(job_id: str) -> None:
    with RedisServer() as server:
        namespace = "db" + uuid.uuid4().hex[:6]
        broker_url = server.url[: -len("/0")] + "/1"
        with PreviewClient.from_url(
            server.url, PREVIEW_NAMESPACE=namespace, PREVIEW_BROKER_URL=broker_url
        ) as client:
            client.submit({"jobId": job_id, "source": {"path": TINY}, "outputs": OUT})
            assert client.status(job_id)["state"] == "queued"
        store, broker_db = server.client(), redis.Redis.from_url(broker_url)
        queue = f"{namespace}:preview-normal"
        assert store.exists(f"{namespace}:job:{job_id}") == 1 and store.exists(queue) == 0
        assert broker_db.llen(queue) == 1
        (data,) = broker_db.hvals(queue + ".msgs")
        assert dramatiq.Message.decode(data).args[0]["jobId"] == job_id
        store.close()
        broker_db.close()


@pytest.mark.slow
def test_a_hundred_concurrent_submits_make_one_job_and_one_render(
    job_id: str, start_worker: Any, redis_client: Any
) -> None:
    env, client = isolated()
    worker = start_worker(env=env, threads=4)
    payload = {"jobId": job_id, "source": {"path": TINY}, "outputs": OUT}
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(lambda _: client.submit(payload), range(100)))
    assert sum(not a.duplicate for a in answers) == 1
    assert {a.job_id for a in answers} == {job_id}
    status = wait(client, job_id)
    assert status["state"] == "succeeded" and status["attempts"] == 1
    # Once no message of the job is left, nothing more can render it; stopping the worker
    # then reads its log to the end (a render logs "running" before its message is acked).
    wait_until_handled(redis_client, env["PREVIEW_NAMESPACE"], job_id)
    worker.stop()
    assert log_count(worker, f"job {job_id} running") == 1


@pytest.mark.slow
def test_a_message_sent_twice_renders_once(job_id: str, start_worker: Any) -> None:
    env, client = isolated()
    payload = {"jobId": job_id, "source": {"path": TINY}, "outputs": OUT}
    code = (
        "import dramatiq_preview as d, json, sys\n"
        f"p = json.loads({json.dumps(json.dumps(payload))})\n"
        "d.render_preview.send(p); d.render_preview.send(p)\n"
    )
    sent = subprocess.run(
        [PYTHON, "-c", code], env=python_env(**env), capture_output=True, text=True, timeout=60
    )
    assert sent.returncode == 0, sent.stderr
    worker = start_worker(env=env, threads=2)
    assert wait(client, job_id)["attempts"] == 1
    wait_for_log(worker, f"job {job_id} duplicate_skipped")
    wait_for_log(worker, f"job {job_id} succeeded")
    assert log_count(worker, f"job {job_id} running") == 1
    assert log_count(worker, f"job {job_id} succeeded") == 1


# --- worker death ------------------------------------------------------------------------

#: Short time limit (so the dead holder's lease expires soon) for the worker-death tests.
KILL_ENV = {"PREVIEW_TIME_LIMIT_MS": "3000"}


@pytest.mark.slow
def test_a_worker_killed_mid_render_has_its_job_redelivered_and_finished_once(
    source_server: Any, job_id: str, start_worker: Any
) -> None:
    # Given a job whose first fetch hangs, being processed by worker A
    env, client = isolated(**KILL_ENV)
    body = imagegen.png(imagegen.quadrants(32, 32))
    url = source_server.add("/hang-once.png", body, stall=60, stall_count=1)
    worker_a = start_worker(env=env, threads=1)
    client.submit({"jobId": job_id, "source": {"url": url}, "outputs": OUT})
    wait(client, job_id, states=("running",))
    assert source_server.wait_for_hits("/hang-once.png", 1) == 1
    # When A's worker process is killed with SIGKILL mid-job, and worker B starts
    kill_worker_process(worker_a)
    worker_b = start_worker(env=env, threads=1)
    # Then the job is redelivered to B and succeeds, rendered to success once
    status = wait(client, job_id, timeout=90)
    assert status["state"] == "succeeded", status
    assert status["attempts"] == 2
    # The status is written before the log line, and the log arrives through a pipe.
    wait_for_log(worker_b, f"job {job_id} succeeded")
    assert log_count(worker_b, f"job {job_id} succeeded") == 1
    assert source_server.hits("/hang-once.png") == 2


@pytest.mark.slow
def test_a_poison_pill_fails_as_worker_lost_after_max_deliveries(
    source_server: Any, job_id: str, start_worker: Any
) -> None:
    # Given a job whose worker process dies on every delivery (PREVIEW_MAX_DELIVERIES=2)
    env, client = isolated(**KILL_ENV, PREVIEW_MAX_DELIVERIES="2")
    url = source_server.add("/poison.png", b"", stall=60, stall_count=100)
    client.submit({"jobId": job_id, "source": {"url": url}, "outputs": OUT})
    for delivery in (1, 2):
        worker = start_worker(env=env, threads=1)
        assert source_server.wait_for_hits("/poison.png", delivery, timeout=60) == delivery
        kill_worker_process(worker)
    # When the job is delivered once more
    last = start_worker(env=env, threads=1)
    # Then it is failed as worker_lost, not rendered again, and dead-lettered
    status = wait(client, job_id, timeout=90)
    assert status["state"] == "failed"
    assert status["error"]["type"] == "worker_lost"
    assert status["attempts"] == 2
    assert source_server.hits("/poison.png") == 2
    wait_for_log(last, f"job {job_id} worker_lost")
    assert job_id in dlq_lines(env)


# --- priorities --------------------------------------------------------------------------


@pytest.mark.slow
def test_high_overtakes_a_backlog_of_500_and_low_is_not_starved(start_worker: Any) -> None:
    # Given 500 queued normal jobs, then one high and one low job
    env, client = isolated()
    run = uuid.uuid4().hex[:6]
    normal = [
        client.submit({"jobId": f"n{run}-{i}", "source": {"path": TINY}, "outputs": OUT}).job_id
        for i in range(500)
    ]
    high = client.submit(
        {"jobId": f"h{run}", "source": {"path": TINY}, "outputs": OUT, "priority": "high"}
    ).job_id
    low = client.submit(
        {"jobId": f"l{run}", "source": {"path": TINY}, "outputs": OUT, "priority": "low"}
    ).job_id
    # When one single-threaded worker starts on the backlog
    worker = start_worker(env=env, threads=1)
    high_done = wait(client, high, timeout=120)
    low_done = wait(client, low, timeout=120)
    worker.stop()
    # Then each started after only a few normal jobs, not after the backlog
    finished = [client.status(j)["finishedAt"] for j in normal]
    before_high = sum(1 for f in finished if f and f <= high_done["startedAt"])
    before_low = sum(1 for f in finished if f and f <= low_done["startedAt"])
    assert high_done["state"] == low_done["state"] == "succeeded"
    assert before_high <= 5, before_high
    assert before_low <= 10, before_low
    assert sum(1 for f in finished if f) < 450, "the backlog was not drained first"


# --- cancellation ------------------------------------------------------------------------


def test_a_queued_job_is_cancelled_at_once_and_never_rendered(
    job_id: str, start_worker: Any, output_dir: Path
) -> None:
    env, client = isolated()
    client.submit({"jobId": job_id, "source": {"path": TINY}, "outputs": OUT})
    assert client.cancel(job_id) == {"jobId": job_id, "state": "cancelled"}
    with pytest.raises(JobConflict, match="already cancelled"):
        client.cancel(job_id)
    # When a worker later drains the queue (a marker job proves it did)
    start_worker(env=env, threads=1)
    marker = client.submit({"source": {"path": TINY}, "outputs": OUT}).job_id
    assert wait(client, marker)["state"] == "succeeded"
    # Then the cancelled job never started
    status = client.status(job_id)
    assert status["state"] == "cancelled" and status["attempts"] == 0
    assert status["startedAt"] is None and status["finishedAt"]
    assert not (output_dir / job_id).exists()


@pytest.mark.usefixtures("worker")
def test_a_running_job_stops_at_its_next_checkpoint_and_is_not_retried(
    source_server: Any, job_id: str, output_dir: Path, wait_for: Any, redis_client: Any
) -> None:
    # Given a job whose worker is fetching its source, which holds its answer
    body = imagegen.png(imagegen.quadrants(32, 32))
    url = source_server.add("/cancel-me.png", body, stall=30)
    submit_preview({"jobId": job_id, "source": {"url": url}, "outputs": OUT})
    wait_for(job_id, states=("running",))
    source_server.wait_for_hits("/cancel-me.png", 1)
    # When it is cancelled, and the fetch ends
    assert cancel_preview(job_id) == {"jobId": job_id, "state": "running"}
    source_server.release("/cancel-me.png")
    # Then it stops as cancelled
    status = wait_for(job_id)
    assert status["state"] == "cancelled"
    assert status["attempts"] == 1 and status["result"] is None
    # And once the broker holds no message of it (a retry would be one), it is still
    # cancelled and was fetched once
    wait_until_handled(redis_client, os.environ["PREVIEW_NAMESPACE"], job_id)
    assert get_status(job_id)["state"] == "cancelled"
    assert source_server.hits("/cancel-me.png") == 1, "a cancelled job is never retried"
    assert not (output_dir / job_id).exists()


@pytest.mark.usefixtures("worker")
def test_a_finished_job_cannot_be_cancelled(job_id: str, wait_for: Any) -> None:
    submit_preview({"jobId": job_id, "source": {"path": TINY}, "outputs": OUT})
    assert wait_for(job_id)["state"] == "succeeded"
    with pytest.raises(JobConflict, match="already succeeded"):
        cancel_preview(job_id)
    with pytest.raises(JobNotFound):
        cancel_preview("no-such-job")


def test_cancel_works_from_another_process(job_id: str) -> None:
    env, client = isolated()
    client.submit({"jobId": job_id, "source": {"path": TINY}, "outputs": OUT})
    code = f"import dramatiq_preview as d; print(d.cancel_preview({job_id!r})['state'])"
    done = subprocess.run(
        [PYTHON, "-c", code], env=python_env(**env), capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout.strip()) == (0, "cancelled"), done.stderr
    assert client.status(job_id)["state"] == "cancelled"


# --- dead letters ------------------------------------------------------------------------


def cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "dramatiq_preview", *argv],
        env=python_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def dlq_lines(env: dict[str, str]) -> str:
    result = cli(env, "dlq", "list")
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_dead_letters_can_be_listed_requeued_and_purged(start_worker: Any) -> None:
    # Given three jobs that failed permanently because their source was missing
    env, client = isolated()
    start_worker(env=env, threads=2)
    run = uuid.uuid4().hex[:6]
    ids = [f"dead-{run}-{i}" for i in range(3)]
    for job in ids:
        client.submit({"jobId": job, "source": {"path": f"lifecycle/{job}.png"}, "outputs": OUT})
    for job in ids:
        assert wait(client, job)["state"] == "failed"
    # When listed / Then one line per dead job, starting with its jobId
    lines = dlq_lines(env).splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == sorted(ids)
    first = next(line for line in lines if line.startswith(ids[0]))
    assert "\tsource_not_found\t" in first and "\tattempts=1\t" in first
    as_json = [json.loads(x) for x in cli(env, "dlq", "list", "--json").stdout.splitlines()]
    assert {x["jobId"] for x in as_json} == set(ids)
    assert all(x["error"]["type"] == "source_not_found" for x in as_json)

    # When the source is fixed and one job requeued / Then it runs again and succeeds
    for job in ids:
        (SOURCE_ROOT / f"lifecycle/{job}.png").write_bytes(
            imagegen.png(imagegen.solid(4, 4, imagegen.RED))
        )
    requeued = cli(env, "dlq", "requeue", ids[0])
    assert (requeued.returncode, requeued.stdout.strip()) == (0, ids[0]), requeued.stderr
    status = wait(client, ids[0])
    assert status["state"] == "succeeded" and status["attempts"] == 2
    assert ids[0] not in dlq_lines(env)
    assert cli(env, "dlq", "requeue", "not-dead").returncode == 1

    # When everything is requeued / Then the rest succeed too
    assert sorted(cli(env, "dlq", "requeue", "--all").stdout.split()) == sorted(ids[1:])
    for job in ids[1:]:
        assert wait(client, job)["state"] == "succeeded"
    assert dlq_lines(env) == ""

    # When a new failure is purged / Then the list is empty and the job stays failed
    client.submit(
        {"jobId": f"dead-{run}-x", "source": {"path": "lifecycle/none.png"}, "outputs": OUT}
    )
    assert wait(client, f"dead-{run}-x")["state"] == "failed"
    wait_until(lambda: f"dead-{run}-x" in dlq_lines(env))
    purged = cli(env, "dlq", "purge")
    assert purged.stdout.strip() == "purged 1 dead message(s)"
    assert dlq_lines(env) == ""
    assert client.status(f"dead-{run}-x")["state"] == "failed"


# --- expiry ------------------------------------------------------------------------------


@pytest.mark.usefixtures("worker")
def test_every_key_we_write_expires(job_id: str, redis_client: Any, wait_for: Any) -> None:
    submit_preview({"jobId": job_id, "source": {"path": TINY}, "outputs": OUT})
    wait_for(job_id)
    ours = [
        k
        for pattern in ("*:job:*", "*:waiting:*")
        for k in redis_client.scan_iter(match=pattern, count=1000)
    ]
    assert ours
    ttl = int(os.environ.get("PREVIEW_JOB_TTL_SECONDS", "604800"))
    no_ttl = [k for k in ours if not 0 < redis_client.ttl(k) <= ttl]
    assert no_ttl == []
    # Dead letters are kept by the broker for the same time, then trimmed by Dramatiq
    assert render_preview.broker.dead_message_ttl == ttl * 1000


@pytest.mark.slow
def test_queues_dedicates_a_worker_to_one_lane(start_worker: Any, redis_client: Any) -> None:
    # Given a normal job waiting, and a worker restricted to the high lane
    env, client = isolated()
    normal = client.submit({"source": {"path": TINY}, "outputs": OUT}).job_id
    start_worker(env=env, threads=1, queues=["preview-high"])
    # When a high job is submitted
    high = client.submit({"source": {"path": TINY}, "outputs": OUT, "priority": "high"}).job_id
    # Then it renders high jobs only: by the time the high job is done, a consumer of the
    # normal lane, started with the high one, would have fetched the job that was waiting
    # there when it started, taking its message out of the lane.
    assert wait(client, high)["state"] == "succeeded"
    assert client.status(normal)["state"] == "queued"
    lane = f"{env['PREVIEW_NAMESPACE']}:preview-normal"
    waiting = [
        dramatiq.Message.decode(redis_client.hget(lane + ".msgs", message_id).encode())
        for message_id in redis_client.lrange(lane, 0, -1)
    ]
    assert [m.args[0]["jobId"] for m in waiting] == [normal], "the normal job was fetched"


def test_a_client_bound_to_a_redis_url(redis_server: Any, redis_client: Any, job_id: str) -> None:
    namespace = "url" + uuid.uuid4().hex[:6]
    with PreviewClient.from_url(redis_server.url, PREVIEW_NAMESPACE=namespace) as client:
        assert client.settings.redis_url == redis_server.url
        assert client.settings.broker_url == redis_server.url
        client.submit({"jobId": job_id, "source": {"path": TINY}, "outputs": OUT})
        assert client.status(job_id)["state"] == "queued"
    assert redis_client.exists(f"{namespace}:job:{job_id}") == 1

"""The JSON API behind the dashboard (contract §11): recent jobs and the dead-letter queues,
through Flask's test client against the private Redis and a real Redis broker's keys.

Each test has a namespace of its own, so its recent-jobs index and dead letters are its own.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import dramatiq
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from preview_http import PREFIX, TOKEN, bearer, job, make_app

from dramatiq_preview.dlq import dead_letters
from dramatiq_preview.flask.appstate import get_state
from dramatiq_preview.names import ACTOR_NAME, QUEUES
from dramatiq_preview.state import JobStore
from dramatiq_preview.testing import RedisServer

LANE = QUEUES["normal"]


@pytest.fixture
def app() -> Flask:
    return make_app(PREVIEW_NAMESPACE="jobs-api-" + uuid.uuid4().hex[:8])


def state_of(app: Flask) -> Any:
    state = get_state(app)
    assert state is not None
    return state


def submit(client: FlaskClient, **overrides: Any) -> str:
    response = client.post(f"{PREFIX}/job", json=job(**overrides))
    assert response.status_code == 202, response.json
    return str(response.json["jobId"])


def fail(store: JobStore, job_id: str, message: str = "not an image") -> None:
    claim = store.claim(job_id, token="tok", lease_ms=60_000, max_deliveries=3)
    assert claim.verdict == "run"
    error = {"type": "corrupt_source", "message": message, "retryable": False}
    store.finish(job_id, token="tok", outcome="failed", data=error)


def bury(app: Flask, job_id: str, seconds_ago: float = 0) -> None:
    """Fail the submitted job and put its message in the lane's dead letters, as a worker's
    last failed retry would (Dramatiq's Redis layout: ``.XQ`` zset and ``.XQ.msgs`` hash)."""
    state = state_of(app)
    broker = state.client.broker
    fail(state.client.store, job_id)
    payload = job(jobId=job_id)
    redis_id = str(uuid.uuid4())
    message = dramatiq.Message(
        queue_name=LANE,
        actor_name=ACTOR_NAME,
        args=(payload,),
        kwargs={},
        options={"redis_message_id": redis_id, "retries": 5},
    )
    base = f"{broker.namespace}:{LANE}.XQ"
    broker.client.zadd(base, {redis_id: int((time.time() - seconds_ago) * 1000)})
    broker.client.hset(base + ".msgs", redis_id, message.encode())


def test_jobs_lists_submitted_jobs_newest_first_as_status_objects(client: FlaskClient) -> None:
    ids = [submit(client, metadata={"n": str(n)}) for n in range(3)]
    response = client.get(f"{PREFIX}/jobs")
    assert response.status_code == 200
    jobs = response.json["jobs"]
    assert [j["jobId"] for j in jobs] == ids[::-1]
    assert jobs[0]["state"] == "queued" and jobs[0]["metadata"] == {"n": "2"}
    assert jobs[0] == client.get(f"{PREFIX}/job/{ids[2]}/status").json
    response = client.get(f"{PREFIX}/jobs?limit=2")
    assert [j["jobId"] for j in response.json["jobs"]] == [ids[2], ids[1]]


def test_jobs_filters_by_state(app: Flask, client: FlaskClient) -> None:
    ids = [submit(client) for _ in range(4)]
    fail(state_of(app).client.store, ids[1])
    client.post(f"{PREFIX}/job/{ids[2]}/cancel")
    failed = client.get(f"{PREFIX}/jobs?state=failed").json["jobs"]
    assert [j["jobId"] for j in failed] == [ids[1]]
    assert failed[0]["error"]["type"] == "corrupt_source"
    queued = client.get(f"{PREFIX}/jobs?state=queued").json["jobs"]
    assert [j["jobId"] for j in queued] == [ids[3], ids[0]]
    assert client.get(f"{PREFIX}/jobs?state=succeeded").json == {"jobs": []}


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("state=done", "query/state"),
        ("state=", "query/state"),
        ("limit=0", "query/limit"),
        ("limit=201", "query/limit"),
        ("limit=ten", "query/limit"),
        ("limit=%EF%BC%91", "query/limit"),  # a fullwidth digit one
        ("limit=", "query/limit"),
    ],
)
def test_jobs_refuses_bad_query_parameters_with_422(
    client: FlaskClient, query: str, path: str
) -> None:
    response = client.get(f"{PREFIX}/jobs?{query}")
    assert response.status_code == 422
    assert response.json["error"] == "validation_error"
    assert [d["path"] for d in response.json["details"]] == [path]


def test_dlq_lists_requeues_and_purges_dead_jobs(app: Flask, client: FlaskClient) -> None:
    first, second = submit(client), submit(client)
    bury(app, first, seconds_ago=2)
    bury(app, second, seconds_ago=1)
    letters = client.get(f"{PREFIX}/dlq").json["deadLetters"]
    assert [d["jobId"] for d in letters] == [first, second]
    assert letters[0]["error"] == {
        "type": "corrupt_source",
        "message": "not an image",
        "retryable": False,
    }
    assert letters[0]["failedAt"] and letters[0]["kind"] == "render"

    # Requeue one: it is queued again, out of the dead letters, and its message is on the lane
    response = client.post(f"{PREFIX}/dlq/{first}/requeue")
    assert response.status_code == 202
    assert response.json == {"jobId": first, "state": "queued", "requeued": 1}
    assert [d["jobId"] for d in client.get(f"{PREFIX}/dlq").json["deadLetters"]] == [second]
    assert client.get(f"{PREFIX}/job/{first}/status").json["state"] == "queued"
    broker = state_of(app).client.broker
    assert broker.client.llen(f"{broker.namespace}:{LANE}") >= 1

    # Not dead (any more): 404
    response = client.post(f"{PREFIX}/dlq/{first}/requeue")
    assert response.status_code == 404 and response.json["error"] == "not_found"
    assert "has no dead letter" in response.json["message"]

    # Purge: the rest goes, the job's record stays
    response = client.post(f"{PREFIX}/dlq/purge")
    assert (response.status_code, response.json) == (200, {"purged": 1})
    assert client.get(f"{PREFIX}/dlq").json == {"deadLetters": [], "total": 0}
    assert client.get(f"{PREFIX}/job/{second}/status").json["state"] == "failed"
    assert client.post(f"{PREFIX}/dlq/purge").json == {"purged": 0}


def test_requeue_of_an_unknown_or_malformed_job_id_is_404(client: FlaskClient) -> None:
    assert client.post(f"{PREFIX}/dlq/never-was/requeue").status_code == 404
    assert client.post(f"{PREFIX}/dlq/{'x' * 300}/requeue").status_code == 404
    assert client.get(f"{PREFIX}/dlq/purge").status_code == 405


def test_the_routes_need_the_token_when_one_is_set() -> None:
    app = make_app(PREVIEW_NAMESPACE="jobs-api-" + uuid.uuid4().hex[:8], PREVIEW_API_TOKEN=TOKEN)
    client = app.test_client()
    for method, path in [
        ("get", "/jobs"),
        ("get", "/dlq"),
        ("post", "/dlq/purge"),
        ("post", "/dlq/some-job/requeue"),
    ]:
        response = getattr(client, method)(PREFIX + path)
        assert response.status_code == 401, path
        assert response.json["error"] == "unauthorized"
    assert client.get(f"{PREFIX}/jobs", headers=bearer()).status_code == 200
    assert client.post(f"{PREFIX}/dlq/purge", headers=bearer()).json == {"purged": 0}


def test_the_authorize_hook_applies() -> None:
    app = make_app(
        PREVIEW_NAMESPACE="jobs-api-" + uuid.uuid4().hex[:8],
        authorize=lambda request: request.method == "GET",
    )
    client = app.test_client()
    assert client.get(f"{PREFIX}/dlq").status_code == 200
    response = client.post(f"{PREFIX}/dlq/purge")
    assert response.status_code == 403 and response.json["error"] == "forbidden"


def test_redis_down_is_503_json() -> None:
    server = RedisServer()  # never started: nothing listens on its port
    app = make_app(PREVIEW_REDIS_URL=server.url)
    client = app.test_client()
    for method, path in [("get", "/jobs"), ("get", "/dlq"), ("post", "/dlq/purge")]:
        response = getattr(client, method)(PREFIX + path)
        assert response.status_code == 503, (path, response.json)
        assert response.json["error"] == "unavailable"
        assert response.headers["Retry-After"]
    server.close()


def test_openapi_lists_the_routes(client: FlaskClient) -> None:
    paths = client.get(f"{PREFIX}/openapi.json").json["paths"]
    assert paths["/jobs"]["get"]["operationId"] == "listJobs"
    assert paths["/dlq"]["get"]["operationId"] == "listDeadLetters"
    assert paths["/dlq/{jobId}/requeue"]["post"]["responses"]["404"]
    assert paths["/dlq/purge"]["post"]["operationId"] == "purgeDeadLetters"
    limit = next(p for p in paths["/jobs"]["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 200)
    limit = next(p for p in paths["/dlq"]["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 1000)
    assert limit["schema"]["default"] == 200


def test_dlq_limit_keeps_the_newest_failures_and_says_the_total(
    app: Flask, client: FlaskClient
) -> None:
    # Given five dead jobs, failed one second apart
    ids = [submit(client) for _ in range(5)]
    for n, job_id in enumerate(ids):
        bury(app, job_id, seconds_ago=10 - n)
    # When two are asked for
    answer = client.get(f"{PREFIX}/dlq?limit=2").json
    # Then the two newest failures come, oldest first, with the number of all of them
    assert [d["jobId"] for d in answer["deadLetters"]] == ids[3:]
    assert answer["total"] == 5
    assert answer["deadLetters"][0]["error"]["type"] == "corrupt_source"
    # Without a limit: the default (200) keeps them all
    answer = client.get(f"{PREFIX}/dlq").json
    assert [d["jobId"] for d in answer["deadLetters"]] == ids and answer["total"] == 5
    assert client.get(f"{PREFIX}/dlq?limit=1000").json["total"] == 5


@pytest.mark.parametrize("limit", ["0", "1001", "ten", "", "-1", "%EF%BC%91"])
def test_dlq_refuses_a_limit_out_of_range_with_422(client: FlaskClient, limit: str) -> None:
    response = client.get(f"{PREFIX}/dlq?limit={limit}")
    assert response.status_code == 422
    assert [d["path"] for d in response.json["details"]] == ["query/limit"]


class CountingConnection(redis.Connection):
    """A real connection that counts its round trips (one packed send each)."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        super().send_packed_command(command, check_health)


def test_the_dlq_listing_reads_the_job_records_in_one_round_trip(
    app: Flask, client: FlaskClient
) -> None:
    # Given thirty dead jobs
    ids = [submit(client) for _ in range(30)]
    for n, job_id in enumerate(ids):
        bury(app, job_id, seconds_ago=100 - n)
    state = state_of(app)
    url = state.settings.redis_url
    pool = redis.ConnectionPool.from_url(
        url, decode_responses=True, connection_class=CountingConnection
    )
    counting = redis.Redis(connection_pool=pool)
    store = JobStore(counting, namespace=state.client.store.namespace, ttl_seconds=3600)
    letters = dead_letters(state.client.broker, store)
    try:
        counting.ping()  # the connection's own handshake is not the listing's
        # When they are listed, whole or cut
        CountingConnection.sends = 0
        listed = letters.list()
        # Then every record came in one round trip to the state store
        assert CountingConnection.sends == 1
        assert [d.job_id for d in listed] == ids
        assert listed[0].error is not None and listed[0].attempts == 1
        CountingConnection.sends = 0
        cut = letters.listing(5)
        assert CountingConnection.sends == 1
        assert [d.job_id for d in cut.letters] == ids[-5:] and cut.total == 30
    finally:
        counting.close()

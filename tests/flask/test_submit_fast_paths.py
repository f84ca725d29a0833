"""POST /job's shortcuts answer exactly what the long way did: the response body without a
marshmallow dump, the app state looked up once per request (status URLs under several
SCRIPT_NAMEs and prefixes, and the request counters, checked around them)."""

from __future__ import annotations

from flask import Flask
from preview_http import IDLE_NAMESPACE, PREFIX, job, make_app

from dramatiq_preview.flask import views
from dramatiq_preview.flask.schemas import SUBMIT_RESPONSE


def _long_way(app: Flask, job_id: str, base_url: str) -> str:
    """The status URL as ``local_url`` builds it, for a request to ``base_url``."""
    with app.test_request_context(f"{PREFIX}/job", base_url=base_url, method="POST"):
        return views.local_url(".job_status", job_id=job_id)


def test_the_status_url_is_the_one_url_for_builds_under_any_script_name() -> None:
    """Given an app, when jobs are submitted under several SCRIPT_NAMEs (hostile ones too)
    and job ids with every character the schema allows, then each statusUrl and Location
    is what local_url builds."""
    app = make_app(PREVIEW_NAMESPACE=IDLE_NAMESPACE)
    client = app.test_client()
    for base in (
        "http://localhost/",
        "http://localhost/mounted/here/",
        "http://localhost//evil.example/",
    ):
        for job_id in ("a", "A.b-c_d:e-" + "9" * 100, "J0b", "x:y"):
            payload = job(jobId=job_id)
            response = client.post(f"{PREFIX}/job", json=payload, base_url=base)
            assert response.status_code in (200, 202), response.json
            expected = _long_way(app, job_id, base)
            assert response.json["statusUrl"] == expected
            assert response.headers["Location"] == expected
            assert job_id in expected


def test_two_apps_with_different_prefixes_keep_their_own_urls() -> None:
    """Given two apps in one process with different prefixes, when they answer submits in
    turn, then each status URL carries its own app's prefix."""
    first = make_app(PREVIEW_NAMESPACE=IDLE_NAMESPACE)
    second = make_app(PREVIEW_URL_PREFIX="/other/prefix", PREVIEW_NAMESPACE=IDLE_NAMESPACE)
    for _ in range(2):
        a = first.test_client().post(f"{PREFIX}/job", json=job())
        b = second.test_client().post("/other/prefix/job", json=job())
        assert a.json["statusUrl"].startswith(f"{PREFIX}/job/")
        assert b.json["statusUrl"].startswith("/other/prefix/job/")


def test_the_body_is_what_the_schema_would_dump() -> None:
    """Given a new job and its duplicate, then each body equals its own schema dump."""
    client = make_app(PREVIEW_NAMESPACE=IDLE_NAMESPACE).test_client()
    payload = job()
    new = client.post(f"{PREFIX}/job", json=payload)
    again = client.post(f"{PREFIX}/job", json=payload)
    assert (new.status_code, again.status_code) == (202, 200)
    for response in (new, again):
        assert response.json == SUBMIT_RESPONSE.dump(response.json)
    assert set(new.json) == {"jobId", "state", "statusUrl"}
    assert again.json["duplicate"] is True


def test_request_counters_count_every_request() -> None:
    """Given one app, when it answers 5 new submits, 2 duplicates and a 422, then its
    request counter says so per status."""
    app = make_app(PREVIEW_NAMESPACE=IDLE_NAMESPACE)
    client = app.test_client()
    for _ in range(5):
        assert client.post(f"{PREFIX}/job", json=job()).status_code == 202
    payload = job()
    client.post(f"{PREFIX}/job", json=payload)
    for _ in range(2):
        assert client.post(f"{PREFIX}/job", json=payload).status_code == 200
    assert client.post(f"{PREFIX}/job", json={"outputs": []}).status_code == 422
    text = client.get(f"{PREFIX}/metrics").get_data(as_text=True)

    def count(status: int) -> float:
        line = next(
            x
            for x in text.splitlines()
            if x.startswith("preview_http_requests_total{")
            and 'endpoint="submit_job"' in x
            and f'status="{status}"' in x
        )
        return float(line.rsplit(" ", 1)[1])

    assert (count(202), count(200), count(422)) == (6, 2, 1)

"""End to end: a real `dramatiq dramatiq_preview` worker, a real Redis, real files."""

from __future__ import annotations

import subprocess
import textwrap
import uuid
from pathlib import Path
from typing import Any

import imagegen
import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message
from support import BASE_ENV, PYTHON, image_info, python_env, wait_for_log, wait_until

from dramatiq_preview import (
    PreviewClient,
    Settings,
    get_status,
    render_preview,
    submit_preview,
)
from dramatiq_preview.errors import StateStoreUnavailable
from dramatiq_preview.testing import RedisServer, free_port, wait_for_state

pytestmark = pytest.mark.usefixtures("worker")

FINAL = ("succeeded", "failed", "cancelled")


def put(source_root: Path, name: str, data: bytes) -> str:
    path = source_root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return name


def read_output(output_dir: Path, status: dict[str, Any], index: int) -> bytes:
    return (output_dir / status["result"]["outputs"][index]["path"]).read_bytes()


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A 400x300 JPEG and PNG in the source root (quadrants: red, green, blue, yellow)."""
    from support import SOURCE_ROOT

    pixels = imagegen.quadrants(400, 300)
    return {
        "jpeg": put(SOURCE_ROOT, "e2e/photo.jpg", imagegen.jpeg(pixels)),
        "png": put(SOURCE_ROOT, "e2e/photo.png", imagegen.png(pixels)),
    }


@pytest.mark.parametrize("source_format", ["jpeg", "png"])
def test_a_submitted_job_renders_every_output_with_the_requested_format_and_size(
    photo: dict[str, str], source_format: str, job_id: str, wait_for: Any, output_dir: Path
) -> None:
    # Given a 400x300 image and three outputs, one per format and fit mode
    outputs = [
        {"width": 200, "height": 200, "format": "webp"},  # contain -> 200x150
        {"width": 100, "height": 100, "format": "jpeg", "fit": "cover", "quality": 60},
        {"width": 120, "height": 40, "format": "png", "fit": "fill"},
    ]
    # When it is submitted and the worker renders it
    submission = submit_preview(
        {"jobId": job_id, "source": {"path": photo[source_format]}, "outputs": outputs}
    )
    assert (submission.job_id, submission.state, submission.duplicate) == (job_id, "queued", False)
    status = wait_for(job_id)
    # Then it succeeded on the first attempt with real files of the requested shape
    assert status["state"] == "succeeded", status
    assert status["attempts"] == 1 and status["progress"] == 100
    assert status["startedAt"] and status["finishedAt"] and status["error"] is None
    expected = [("webp", 200, 150), ("jpeg", 100, 100), ("png", 120, 40)]
    for index, (fmt, width, height) in enumerate(expected):
        data = read_output(output_dir, status, index)
        assert image_info(data) == (fmt, width, height)
        entry = status["result"]["outputs"][index]
        assert (entry["format"], entry["width"], entry["height"]) == (fmt, width, height)
        assert entry["bytes"] == len(data)
        assert entry["path"] == f"{job_id}/{index}.{'jpg' if fmt == 'jpeg' else fmt}"


def test_send_from_a_plain_python_process_is_rendered(
    photo: dict[str, str], job_id: str, wait_for: Any, output_dir: Path
) -> None:
    # Given a Python process without Flask that only imports the package and sends
    code = f"""
        import dramatiq_preview
        message = dramatiq_preview.render_preview.send({{
            "jobId": "{job_id}",
            "source": {{"path": "{photo["png"]}"}},
            "outputs": [{{"width": 64, "height": 64, "format": "webp"}}],
        }})
        print(message.args[0]["jobId"])
    """
    result = subprocess.run(
        [PYTHON, "-c", textwrap.dedent(code)],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == job_id
    # When the worker picks it up / Then the preview exists
    status = wait_for(job_id)
    assert status["state"] == "succeeded", status
    assert image_info(read_output(output_dir, status, 0)) == ("webp", 64, 48)


def test_a_missing_source_fails_at_once_and_is_dead_lettered(job_id: str, wait_for: Any) -> None:
    submit_preview(
        {
            "jobId": job_id,
            "source": {"path": "e2e/does-not-exist.jpg"},
            "outputs": [{"width": 8, "height": 8, "format": "png"}],
        }
    )
    status = wait_for(job_id)
    assert status["state"] == "failed"
    assert status["attempts"] == 1, "a permanent error must not be retried"
    assert status["error"]["type"] == "source_not_found"
    assert status["error"]["retryable"] is False
    assert "does-not-exist.jpg" in status["error"]["message"]
    assert str(Path(BASE_ENV["PREVIEW_SOURCE_ROOT"])) not in status["error"]["message"]
    wait_for_dead_letter(job_id)


def test_an_unsupported_file_fails_at_once(source_root: Path, job_id: str, wait_for: Any) -> None:
    name = put(source_root, "e2e/notes.jpg", b"these are not the pixels you are looking for\n")
    submit_preview(
        {
            "jobId": job_id,
            "source": {"path": name},
            "outputs": [{"width": 8, "height": 8, "format": "png"}],
        }
    )
    status = wait_for(job_id)
    assert status["state"] == "failed"
    assert status["attempts"] == 1
    assert status["error"]["type"] == "unsupported_format"


def test_a_transient_error_is_retried_with_backoff_then_dead_lettered(
    source_server: Any, job_id: str
) -> None:
    # Given a URL source that always answers 503
    url = source_server.add("/down.png", b"", fail=[503] * 10)
    submit_preview(
        {
            "jobId": job_id,
            "source": {"url": url},
            "outputs": [{"width": 8, "height": 8, "format": "png"}],
        }
    )
    # When the worker tries it / Then it goes through retrying and fails after the last retry
    # (a retry waits at least PREVIEW_MIN_BACKOFF_MS=100: sampled often enough to see it)
    retrying = wait_for_state(get_status, job_id, ("retrying", *FINAL), interval=0.005)
    assert retrying["state"] == "retrying", retrying
    assert retrying["nextAttemptAt"], "a retrying job says when it runs next"
    final = wait_for_state(get_status, job_id)
    assert final["state"] == "failed"
    assert final["attempts"] == 3  # PREVIEW_MAX_RETRIES=2 in the tests: 1 + 2 retries
    assert final["error"]["type"] == "source_unavailable"
    assert final["error"]["retryable"] is True
    assert source_server.hits("/down.png") == 3
    wait_for_dead_letter(job_id)


def test_a_transient_error_that_clears_succeeds_on_retry(
    source_server: Any, photo: dict[str, str], job_id: str, wait_for: Any
) -> None:
    png = imagegen.png(imagegen.quadrants(40, 30))
    url = source_server.add("/flaky.png", png, fail=[500], content_type="image/png")
    submit_preview(
        {
            "jobId": job_id,
            "source": {"url": url},
            "outputs": [{"width": 20, "height": 20, "format": "png"}],
        }
    )
    status = wait_for(job_id)
    assert status["state"] == "succeeded", status
    assert status["attempts"] == 2
    assert status["error"] is None


def test_a_message_that_bypassed_validation_fails_permanently_in_the_worker(
    redis_server: RedisServer, job_id: str, wait_for: Any
) -> None:
    # Given a broker with none of our middleware, as another service might have
    bare = RedisBroker(url=redis_server.url, namespace=BASE_ENV["PREVIEW_NAMESPACE"], middleware=[])
    bad = {"jobId": job_id, "source": {"path": 42}, "outputs": []}
    bare.enqueue(
        Message(
            queue_name="preview-normal",
            actor_name="render_preview",
            args=(bad,),
            kwargs={},
            options={},
        )
    )
    # When the worker receives it / Then it fails without a retry, with the schema errors
    status = wait_for(job_id)
    assert status["state"] == "failed"
    assert status["attempts"] == 0, "an invalid payload never starts rendering"
    assert status["error"]["type"] == "invalid_payload"
    assert {d["path"] for d in status["error"]["details"]} == {"outputs", "source/path"}
    wait_for_dead_letter(job_id)


def test_redis_down_gives_a_clear_error_and_leaves_nothing_behind(photo: dict[str, str]) -> None:
    # Given a client whose Redis is not running
    server = RedisServer()
    client = PreviewClient(
        Settings.from_mapping({"PREVIEW_REDIS_URL": server.url, "PREVIEW_NAMESPACE": "down"})
    )
    payload = {
        "source": {"path": photo["png"]},
        "outputs": [{"width": 8, "height": 8, "format": "png"}],
    }
    # When a job is submitted or looked up / Then the error says the store is unavailable
    with pytest.raises(StateStoreUnavailable, match=r"state store \(Redis\) is unavailable"):
        client.submit(payload)
    with pytest.raises(StateStoreUnavailable):
        client.status("anything")
    server.close()


def test_the_job_api_answers_unknown_ids_with_not_found() -> None:
    from dramatiq_preview import JobNotFound

    with pytest.raises(JobNotFound, match="no job with id 'nope'"):
        get_status("nope")


# --- helpers ------------------------------------------------------------------------------


def dead_job_ids() -> set[str]:
    from dramatiq_preview.config import get_settings
    from dramatiq_preview.dlq import dead_letters
    from dramatiq_preview.state import get_store

    dlq = dead_letters(render_preview.broker, get_store(get_settings()))
    return {letter.job_id for letter in dlq.list()}


def wait_for_dead_letter(job_id: str) -> None:
    """The job's state is written before the worker moves its message to the dead letters:
    wait for the move."""
    wait_until(
        dead_job_ids, lambda dead: job_id in dead, timeout=10, what=f"{job_id} dead-lettered"
    )


def test_a_state_store_outage_in_the_worker_is_retried_until_redis_is_back(
    redis_server: RedisServer, start_worker: Any, photo: dict[str, str], job_id: str
) -> None:
    # Given a worker whose state store (a Redis of its own) is down, and a message for it
    state = RedisServer()
    env = {
        "PREVIEW_REDIS_URL": state.url,
        "PREVIEW_BROKER_URL": redis_server.url,
        "PREVIEW_NAMESPACE": "outage",
        "PREVIEW_MAX_RETRIES": "20",
        "PREVIEW_MIN_BACKOFF_MS": "200",
        "PREVIEW_MAX_BACKOFF_MS": "500",
    }
    worker = start_worker(env=env, threads=1)
    bare = RedisBroker(url=redis_server.url, namespace="outage", middleware=[])
    payload = {
        "jobId": job_id,
        "source": {"path": photo["png"]},
        "outputs": [{"width": 8, "height": 8, "format": "png"}],
    }
    bare.enqueue(
        Message(
            queue_name="preview-normal",
            actor_name="render_preview",
            args=(payload,),
            kwargs={},
            options={},
        )
    )
    # When the worker has failed to reach it at least once (its claim waits for Redis,
    # holding the message), and Redis comes back
    wait_for_log(worker, f"claim job {job_id}: Redis unavailable; trying again")
    state.start()
    try:
        client = PreviewClient(Settings.from_mapping(env))
        # Then the job is recorded and rendered; nothing was lost
        status = wait_for_state(client.status, job_id, timeout=60)
        assert status["state"] == "succeeded", status
        assert status["attempts"] == 1, "attempts count deliveries that started rendering"
        client.close()
    finally:
        state.close()
        bare.client.close()


HOSTILE = {
    "flood.png": (lambda: imagegen.png_header_only(100_000, 100_000), "too_many_pixels"),
    "flood.gif": (lambda: imagegen.gif_header_only(65_535, 65_535), "too_many_pixels"),
    "reads-passwd.svg.png": (lambda: imagegen.SVG_READS_FILE, "unsupported_format"),
    "reads-passwd.mvg.jpg": (lambda: imagegen.MVG_READS_FILE, "unsupported_format"),
    "postscript.jpg": (lambda: imagegen.POSTSCRIPT, "unsupported_format"),
    "noise.jpg": (lambda: imagegen.random_bytes(4096), "unsupported_format"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_file_fails_permanently_and_the_worker_renders_the_next_job(
    name: str, source_root: Path, output_dir: Path, wait_for: Any, photo: dict[str, str]
) -> None:
    # Given a hostile upload and an ordinary job behind it
    make, expected = HOSTILE[name]
    hostile = put(source_root, f"e2e/hostile/{name}", make())
    run = uuid.uuid4().hex[:8]
    bad, good = f"hostile-{run}", f"after-{run}"
    outputs = [{"width": 32, "height": 32, "format": "png"}]
    submit_preview({"jobId": bad, "source": {"path": hostile}, "outputs": outputs})
    submit_preview({"jobId": good, "source": {"path": photo["png"]}, "outputs": outputs})
    # Then it fails at once with a clear error, leaves nothing, and the next job renders
    failed = wait_for(bad)
    assert failed["state"] == "failed" and failed["attempts"] == 1
    assert failed["error"]["type"] == expected
    assert "root:" not in failed["error"]["message"]  # nothing of /etc/passwd leaks
    assert not (output_dir / bad).exists()
    assert wait_for(good)["state"] == "succeeded"


def test_the_cve_2022_44268_png_renders_without_the_named_file(
    source_root: Path, output_dir: Path, wait_for: Any, job_id: str
) -> None:
    # Given a PNG whose text chunk asks ImageMagick to embed /etc/passwd
    name = put(source_root, "e2e/hostile/cve-2022-44268.png", imagegen.png_with_profile_text())
    submit_preview(
        {
            "jobId": job_id,
            "source": {"path": name},
            "outputs": [{"width": 16, "height": 16, "format": "png"}],
        }
    )
    status = wait_for(job_id)
    # Then the preview carries none of the file's content
    assert status["state"] == "succeeded", status
    data = read_output(output_dir, status, 0)
    assert b"root:" not in data and b"/bin/" not in data
    assert b"profile" not in data.lower()


def test_a_job_over_the_output_byte_cap_fails_at_once_and_keeps_no_output(
    redis_server: RedisServer,
    start_worker: Any,
    source_root: Path,
    output_dir: Path,
    job_id: str,
    tmp_path: Path,
) -> None:
    # Given a worker whose PREVIEW_MAX_OUTPUT_BYTES holds one 128x128 noise PNG (about
    # 58 KB) but not three
    env = {
        "PREVIEW_NAMESPACE": "outputcap",
        "PREVIEW_BROKER_URL": redis_server.url,
        "PREVIEW_MAX_OUTPUT_BYTES": "80000",
        "dramatiq_prom_port": str(free_port()),
        "dramatiq_prom_db": str(tmp_path / "prom"),
    }
    start_worker(env=env, threads=1)
    name = put(source_root, "e2e/noise.png", imagegen.png(imagegen.noise(128, 128)))
    outputs = [{"width": 128, "height": 128, "format": "png"}] * 3
    client = PreviewClient(Settings.from_mapping(env))
    try:
        # When a job asks for three of them
        client.submit({"jobId": job_id, "source": {"path": name}, "outputs": outputs})
        status = wait_for_state(client.status, job_id, timeout=60)
    finally:
        client.close()
    # Then it failed permanently on its first attempt, and none of its outputs is kept
    assert status["state"] == "failed", status
    assert status["attempts"] == 1, "a permanent error must not be retried"
    assert status["error"]["type"] == "output_too_large"
    assert status["error"]["retryable"] is False
    assert "PREVIEW_MAX_OUTPUT_BYTES" in status["error"]["message"]
    assert status["result"] is None
    assert [p for p in (output_dir / job_id).rglob("*") if p.is_file()] == []

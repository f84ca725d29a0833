"""`dramatiq-preview submit --wait` and `status --wait`: the final status and exit 0 or 3.

Jobs are rendered by the session's real worker, or moved through the real JobStore scripts
(jobs recorded without a broker message, which no worker ever sees).
"""

from __future__ import annotations

import io
import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import imagegen
import pytest
from support import PYTHON, SOURCE_ROOT, python_env, wait_until

from dramatiq_preview.cli import main
from dramatiq_preview.config import get_settings
from dramatiq_preview.state import JobStore, get_store


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, stdin=io.StringIO(""))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def picture() -> str:
    path = SOURCE_ROOT / "cli-wait" / "picture.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(imagegen.png(imagegen.quadrants(64, 48)))
    return "cli-wait/picture.png"


@pytest.fixture
def store() -> JobStore:
    """The store the command uses (the test-suite's namespace)."""
    return get_store(get_settings())


def payload_file(tmp_path: Path, job_id: str, source: str) -> str:
    path = tmp_path / "job.json"
    path.write_text(
        json.dumps(
            {
                "jobId": job_id,
                "source": {"path": source},
                "outputs": [{"width": 32, "height": 32, "format": "png"}],
            }
        )
    )
    return str(path)


def recorded(store: JobStore, job_id: str) -> None:
    """A queued job no worker will see (recorded without a broker message)."""
    outcome, _ = store.create(
        job_id, fp="fp", priority="normal", queue="preview-normal", metadata={}
    )
    assert outcome == "created"


def watchers(store: JobStore, job_id: str) -> int:
    channel = store.events_channel(job_id)
    return int(dict(store.client.pubsub_numsub(channel))[channel])


@pytest.mark.usefixtures("worker")
def test_submit_wait_prints_the_succeeded_status_and_exits_0(
    tmp_path: Path, job_id: str, picture: str
) -> None:
    code, out, err = run(
        "submit", "--wait", "--timeout", "120", payload_file(tmp_path, job_id, picture)
    )
    assert code == 0, err
    first, _, rest = out.partition("\n")
    assert first == job_id
    status = json.loads(rest)
    assert status["state"] == "succeeded" and status["progress"] == 100
    assert status["result"]["outputs"][0]["format"] == "png"


@pytest.mark.usefixtures("worker")
def test_submit_wait_of_a_failing_job_exits_3_with_its_error(tmp_path: Path, job_id: str) -> None:
    source = "cli-wait/missing.png"
    code, out, _ = run(
        "submit", "--wait", "--timeout", "120", payload_file(tmp_path, job_id, source)
    )
    assert code == 3
    status = json.loads(out.partition("\n")[2])
    assert status["state"] == "failed"
    assert status["error"]["type"] == "source_not_found"


def test_status_wait_follows_a_job_until_it_succeeds(store: JobStore, job_id: str) -> None:
    # Given a queued job and `status --wait` waiting for it
    recorded(store, job_id)
    answer: list[tuple[int, str, str]] = []
    waiter = threading.Thread(target=lambda: answer.append(run("status", "--wait", job_id)))
    waiter.start()
    wait_until(lambda: watchers(store, job_id), what="the command to watch the job")
    # When the job starts, it is still waiting
    assert store.claim(job_id, token="tok", lease_ms=60_000, max_deliveries=3).verdict == "run"
    waiter.join(timeout=0.5)
    assert waiter.is_alive() and not answer
    # and when it succeeds, the command prints the final status and exits 0
    result: dict[str, Any] = {"outputs": []}
    assert store.finish(job_id, token="tok", outcome="succeeded", data=result).verdict == "ok"
    waiter.join(timeout=60)
    assert answer, "status --wait did not return"
    code, out, err = answer[0]
    assert (code, err) == (0, "")
    assert json.loads(out)["state"] == "succeeded"
    # in the format `status` prints
    assert out == run("status", job_id)[1]


def test_status_wait_of_a_cancelled_job_exits_3(store: JobStore, job_id: str) -> None:
    recorded(store, job_id)
    assert store.cancel(job_id).outcome == "cancelled"
    code, out, _ = run("status", "--wait", job_id)
    assert code == 3
    assert json.loads(out)["state"] == "cancelled"


def test_status_wait_gives_up_after_the_timeout_with_exit_3(store: JobStore, job_id: str) -> None:
    recorded(store, job_id)
    code, out, err = run("status", "--wait", "--timeout", "0.5", job_id)
    assert (code, out) == (3, "")
    assert err == f"job {job_id!r} is not final after 0.5s: it is queued\n"
    # and it left no subscription behind (the server notices the closed connection on its
    # next turn of the event loop)
    wait_until(lambda: watchers(store, job_id), lambda n: n == 0, what="the unsubscribe")


def test_status_wait_of_an_unknown_job_exits_1() -> None:
    assert run("status", "--wait", "unknown-job") == (1, "", "no job with id 'unknown-job'\n")


def test_timeout_without_wait_exits_2() -> None:
    assert run("status", "--timeout", "5", "some-job") == (
        2,
        "",
        "status: --timeout goes with --wait\n",
    )


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf"])
def test_a_timeout_that_is_not_a_positive_number_exits_2(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:  # argparse refuses it, naming the option
        run("status", "--wait", "--timeout", value, "some-job")
    assert exited.value.code == 2
    assert "--timeout" in capsys.readouterr().err


@pytest.mark.usefixtures("worker")
def test_the_installed_command_waits_too(tmp_path: Path, job_id: str, picture: str) -> None:
    # Given the real console entry point, in its own process
    result = subprocess.run(
        [
            PYTHON,
            "-m",
            "dramatiq_preview",
            "submit",
            "--wait",
            payload_file(tmp_path, job_id, picture),
        ],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.partition("\n")[2])["state"] == "succeeded"

"""The `dramatiq-preview` command: exit codes and output of each subcommand."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import uuid
from pathlib import Path

import pytest
from support import PYTHON, python_env

from dramatiq_preview.cli import main
from dramatiq_preview.testing import RedisServer

GOOD = {"source": {"path": "cli/a.png"}, "outputs": [{"width": 8, "height": 8, "format": "png"}]}


def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, stdin=io.StringIO(stdin))
    return code, out.getvalue(), err.getvalue()


def write(tmp_path: Path, content: str | bytes, name: str = "job.json") -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


def test_validate_a_valid_file_exits_0(tmp_path: Path) -> None:
    assert run("validate", write(tmp_path, json.dumps(GOOD))) == (0, "valid\n", "")


def test_validate_prints_one_line_per_error_and_exits_1(tmp_path: Path) -> None:
    bad = dict(GOOD, outputs=[{"width": "8", "height": 0, "format": "png"}], extra=1)
    code, out, _ = run("validate", write(tmp_path, json.dumps(bad)))
    assert code == 1
    assert out.splitlines() == [
        "extra: is not allowed",
        "outputs/0/height: must be >= 1",
        "outputs/0/width: must be an integer",
    ]


def test_validate_reports_malformed_json_as_invalid(tmp_path: Path) -> None:
    path = write(tmp_path, '{"source": {"path": "a.png"},\n "outputs": [}')
    code, out, _ = run("validate", path)
    assert code == 1
    assert out.startswith(f"{path}: invalid JSON: ")
    assert "line 2" in out


def test_validate_reports_non_utf8_bytes_as_invalid(tmp_path: Path) -> None:
    code, out, _ = run("validate", write(tmp_path, b'{"a": "\xff"}'))
    assert code == 1
    assert "invalid JSON" in out


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_validate_exits_2_when_the_file_cannot_be_read(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "nope.json" if kind == "missing" else tmp_path
    code, out, err = run("validate", str(path))
    assert code == 2
    assert out == ""
    assert err.startswith(f"{path}: cannot read: ")


def test_validate_reads_standard_input() -> None:
    assert run("validate", "-", stdin=json.dumps(GOOD))[0] == 0
    code, out, _ = run("validate", "-", stdin=json.dumps({"outputs": []}))
    assert code == 1
    assert "source: is required" in out


def test_submit_prints_the_job_id_and_status_prints_json(
    tmp_path: Path, job_id: str, redis_server: RedisServer
) -> None:
    payload = dict(GOOD, jobId=job_id, metadata={"who": "cli"})
    code, out, err = run("submit", write(tmp_path, json.dumps(payload)))
    assert (code, out, err) == (0, f"{job_id}\n", "")
    # Submitting it again is a duplicate: same id, exit 0, a note on stderr
    code, out, err = run("submit", write(tmp_path, json.dumps(payload)))
    assert code == 0 and out == f"{job_id}\n" and "duplicate" in err
    code, out, _ = run("status", job_id)
    assert code == 0
    status = json.loads(out)
    assert status["jobId"] == job_id
    assert status["metadata"] == {"who": "cli"}


def test_submit_refuses_an_invalid_payload_with_exit_1(tmp_path: Path) -> None:
    code, out, err = run("submit", write(tmp_path, json.dumps({"source": {}})))
    assert code == 1 and out == ""
    assert "outputs: is required" in err


def test_status_and_cancel_of_an_unknown_job_exit_1() -> None:
    assert run("status", "unknown-job") == (1, "", "no job with id 'unknown-job'\n")
    assert run("cancel", "unknown-job")[0] == 1


def test_dlq_requeue_needs_an_id_or_all() -> None:
    code, _, err = run("dlq", "requeue")
    assert code == 2 and "JOB_ID or --all" in err


def cli_subprocess(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys; sys.argv[0] = 'dramatiq-preview'\n"
        "from dramatiq_preview.cli import main\n"
        f"sys.exit(main({list(argv)!r}))\n"
    )
    return subprocess.run(
        [PYTHON, "-c", code], env=python_env(**env), capture_output=True, text=True, timeout=60
    )


def test_redis_down_exits_3_with_a_message() -> None:
    server = RedisServer()  # never started: nothing listens on its port
    result = cli_subprocess("status", "x", PREVIEW_REDIS_URL=server.url)
    server.close()
    assert result.returncode == 3
    assert result.stderr.strip() == "the state store (Redis) is unavailable: ConnectionError"


@pytest.mark.parametrize("how", ["script", "python -m"])
def test_a_bad_setting_exits_4_naming_the_variable(how: str) -> None:
    env = {"PREVIEW_TIME_LIMIT_MS": "soon"}
    if how == "script":
        result = cli_subprocess("status", "x", **env)
    else:
        result = subprocess.run(
            [PYTHON, "-m", "dramatiq_preview", "status", "x"],
            env=python_env(**env),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 4, result.stderr
    assert result.stderr.strip() == (
        "dramatiq-preview: configuration error: "
        "PREVIEW_TIME_LIMIT_MS: expected an integer, got 'soon'"
    )


def test_validate_needs_no_settings(tmp_path: Path) -> None:
    # Contract §1: validate exits 0, 1 or 2 only; a bad PREVIEW_* does not concern it
    path = write(tmp_path, json.dumps(GOOD))
    result = cli_subprocess("validate", path, PREVIEW_TIME_LIMIT_MS="soon")
    assert (result.returncode, result.stdout) == (0, "valid\n"), result.stderr


def test_python_dash_m_runs_the_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "dramatiq_preview", "validate", write(tmp_path, json.dumps(GOOD))],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, "valid\n")


def test_help_lists_every_subcommand() -> None:
    out = io.StringIO()
    with pytest.raises(SystemExit) as info, contextlib.redirect_stdout(out):
        main(["--help"])
    assert info.value.code == 0
    for name in ("validate", "submit", "status", "cancel", "dlq", "health", "gc"):
        assert name in out.getvalue()


def test_health_prints_the_report_and_exits_by_status(redis_server: RedisServer) -> None:
    # The session's Redis answers; whether a worker is live decides ok or degraded
    code, out, _ = run("health")
    report = json.loads(out)
    assert report["redis"]["ok"] is True
    assert code == (0 if report["status"] == "ok" else 1)
    # With Redis unreachable, the report is "down" and the exit status 3
    server = RedisServer()
    result = cli_subprocess("health", PREVIEW_REDIS_URL=server.url)
    server.close()
    assert result.returncode == 3
    assert json.loads(result.stdout)["status"] == "down"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("[" * 100_000 + "]" * 100_000, "nested too deeply"), ('{"page": NaN}', "NaN is not")],
)
def test_validate_reports_hostile_json_as_invalid(tmp_path: Path, text: str, expected: str) -> None:
    code, out, _ = run("validate", write(tmp_path, text))
    assert code == 1
    assert "invalid JSON" in out and expected in out


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("inf", "must be a finite number of seconds"),
        ("1e308", "must be at most 60 seconds"),
        ("61", "must be at most 60 seconds"),
        ("nan", "must be a finite number of seconds"),
        ("-1", "must be more than 0 seconds"),
        ("0", "must be more than 0 seconds"),
        ("soon", "not a number of seconds: 'soon'"),
    ],
)
def test_health_refuses_a_timeout_that_is_not_a_sane_number_of_seconds(
    value: str, expected: str
) -> None:
    # Given a --timeout that is infinite, not a number, not positive or absurdly long
    err = io.StringIO()
    # When the command line is parsed / Then it is a usage error (exit 2), not "degraded"
    # (1) or "down" (3), and it says what is wrong
    with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(err):
        main(["health", "--timeout", value])
    assert info.value.code == 2
    assert f"argument --timeout: {expected}" in err.getvalue()


def test_health_with_an_infinite_timeout_exits_2_without_a_traceback() -> None:
    result = cli_subprocess("health", "--timeout", "inf")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "argument --timeout: must be a finite number of seconds" in result.stderr
    assert result.stdout == ""


def test_health_accepts_a_timeout_within_the_bounds(redis_server: RedisServer) -> None:
    code, out, _ = run("health", "--timeout", "60")
    assert json.loads(out)["redis"]["ok"] is True
    assert code in (0, 1)


def test_jobs_lists_the_newest_jobs_and_filters_by_state(tmp_path: Path) -> None:
    namespace = "cli-jobs-" + uuid.uuid4().hex[:8]
    ids = [f"cli-jobs-{n}-{uuid.uuid4().hex[:6]}" for n in range(3)]
    for job_id in ids:
        payload = dict(GOOD, jobId=job_id)
        result = cli_subprocess(
            "submit", write(tmp_path, json.dumps(payload)), PREVIEW_NAMESPACE=namespace
        )
        assert result.returncode == 0, result.stderr
    cancelled = cli_subprocess("cancel", ids[1], PREVIEW_NAMESPACE=namespace)
    assert cancelled.returncode == 0, cancelled.stderr

    result = cli_subprocess("jobs", PREVIEW_NAMESPACE=namespace)
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(line[0], line[1]) for line in lines] == [
        (ids[2], "queued"),
        (ids[1], "cancelled"),
        (ids[0], "queued"),
    ]
    result = cli_subprocess("jobs", "--state", "cancelled", "--json", PREVIEW_NAMESPACE=namespace)
    assert [json.loads(line)["jobId"] for line in result.stdout.splitlines()] == [ids[1]]
    result = cli_subprocess("jobs", "--limit", "1", PREVIEW_NAMESPACE=namespace)
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [ids[2]]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--state", "done"], "invalid choice: 'done'"),
        (["--limit", "0"], "must be from 1 to 1000, not 0"),
        (["--limit", "many"], "not an integer: 'many'"),
    ],
)
def test_jobs_refuses_a_bad_filter_with_exit_2(argv: list[str], message: str) -> None:
    with contextlib.redirect_stderr(io.StringIO()) as err, pytest.raises(SystemExit) as exited:
        run("jobs", *argv)
    assert exited.value.code == 2
    assert message in err.getvalue()


def test_jobs_with_redis_down_exits_3() -> None:
    server = RedisServer()  # never started: nothing listens on its port
    result = cli_subprocess("jobs", PREVIEW_REDIS_URL=server.url)
    server.close()
    assert result.returncode == 3
    assert result.stderr.strip() == "the state store (Redis) is unavailable: ConnectionError"

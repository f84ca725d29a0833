"""Retention (contract §9): outputs never outlive their job record by more than one sweep.

Against the private Redis and a real S3 server (SeaweedFS): records are made with the state
store's own script and expire as a TTL ends them (``PEXPIRE`` on the test's own keys); outputs
are files on disk or objects in a bucket, as a worker leaves them.  ``dramatiq-preview gc``
runs as a subprocess; the workers' sweep runs in a real ``dramatiq`` worker.  Every test has a
namespace of its own, so the shared Redis is never disturbed.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from support import PYTHON, python_env, wait_for_log, wait_until

from dramatiq_preview.broker import build_broker
from dramatiq_preview.config import Settings
from dramatiq_preview.middleware.retention import Retention
from dramatiq_preview.names import QUEUES, gc_lock_key
from dramatiq_preview.retention import SweepReport, sweep, sweep_if_due
from dramatiq_preview.state import get_store
from dramatiq_preview.testing import RedisServer, S3Server, free_port

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def namespace() -> str:
    return "gc-" + uuid.uuid4().hex[:10]


def new_job_id() -> str:
    return "gc-" + uuid.uuid4().hex


def settings_for(redis_url: str, ns: str, output_dir: str, **extra: str) -> Settings:
    values = {
        "PREVIEW_REDIS_URL": redis_url,
        "PREVIEW_NAMESPACE": ns,
        "PREVIEW_OUTPUT_DIR": output_dir,
        "PREVIEW_JOB_TTL_SECONDS": "60",
        **extra,
    }
    return Settings.from_mapping(values, {})


def record(settings: Settings, job_id: str) -> None:
    """Record ``job_id`` as queued, as a submit does."""
    get_store(settings).create(
        job_id, fp="fp", priority="normal", queue=QUEUES["normal"], metadata={}
    )


def expire(settings: Settings, redis_client: Any, job_id: str) -> None:
    """Let the record of ``job_id`` expire, as its TTL would end it."""
    key = get_store(settings).job_key(job_id)
    assert redis_client.pexpire(key, 1)
    wait_until(lambda: not redis_client.exists(key), what=f"{key} expired")


class DiskOutputs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def put(self, key: str) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(PNG)

    def stored(self) -> set[str]:
        # os.walk skips a directory that a sweeping worker removes while it is read.
        return {
            (Path(top) / name).relative_to(self.root).as_posix()
            for top, _dirs, files in os.walk(self.root)
            for name in files
        }

    def env(self) -> dict[str, str]:
        return {}


class BucketOutputs:
    """Outputs under ``s3://bucket/v1``; ``stored()`` lists the whole bucket, prefix included."""

    prefix = "v1"

    def __init__(self, server: S3Server) -> None:
        self.server = server
        self.bucket = server.create_bucket()
        self.url = f"s3://{self.bucket}/{self.prefix}"
        self.client = server.client()

    def put(self, key: str, *, prefixed: bool = True) -> None:
        full = f"{self.prefix}/{key}" if prefixed else key
        self.client.put_object(Bucket=self.bucket, Key=full, Body=PNG, ContentType="image/png")

    def stored(self) -> set[str]:
        found = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for item in page.get("Contents") or []:
                key = str(item["Key"])
                found.add(key.removeprefix(f"{self.prefix}/"))
        return found

    def env(self) -> dict[str, str]:
        return self.server.environment()


def gc(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``dramatiq-preview gc ...`` in a process of its own, with ``env`` over the tests'."""
    return subprocess.run(
        [PYTHON, "-m", "dramatiq_preview", "gc", *argv],
        env=python_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("backend", ["disk", "s3"])
def test_gc_removes_exactly_the_expired_jobs_outputs_and_nothing_of_a_live_job(
    backend: str, redis_server: RedisServer, redis_client: Any, tmp_path: Path, request: Any
) -> None:
    # Given two live jobs, two whose records expired and one that never had a record, each
    # with outputs, on disk or under an S3 prefix
    ns = namespace()
    outputs: Any = (
        DiskOutputs(tmp_path / "out")
        if backend == "disk"
        else BucketOutputs(request.getfixturevalue("s3_server"))
    )
    settings = settings_for(redis_server.url, ns, outputs.url)
    live, expired, never = [new_job_id(), new_job_id()], [new_job_id(), new_job_id()], new_job_id()
    for job_id in live + expired:
        record(settings, job_id)
    for job_id in (*live, *expired, never):
        outputs.put(f"{job_id}/0.webp")
        outputs.put(f"{job_id}/1.png")
    for job_id in expired:
        expire(settings, redis_client, job_id)
    gone = {f"{j}/{i}" for j in (*expired, never) for i in ("0.webp", "1.png")}
    kept = {f"{j}/{i}" for j in live for i in ("0.webp", "1.png")}
    if backend == "s3":
        # An expired job's id outside the prefix is not ours to sweep
        outputs.put(f"elsewhere/{expired[0]}/0.webp", prefixed=False)
        kept.add(f"elsewhere/{expired[0]}/0.webp")
    env = {"PREVIEW_NAMESPACE": ns, "PREVIEW_OUTPUT_DIR": outputs.url, **outputs.env()}

    # When an operator runs `gc --dry-run`
    result = gc("--dry-run", **env)
    # Then it lists each expired output, one per line, and removes nothing
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(lines[:-1]) == sorted(gone)
    assert lines[-1] == "would remove 6 output(s) of 3 expired job(s)"
    assert outputs.stored() == gone | kept

    # When they run `gc`
    result = gc(**env)
    # Then exactly the expired jobs' outputs are gone, and it says how many
    assert result.returncode == 0, result.stderr
    assert result.stdout == "removed 6 output(s) of 3 expired job(s)\n"
    assert outputs.stored() == kept

    # And a second run finds nothing left to remove
    assert gc(**env).stdout == "removed 0 output(s) of 0 expired job(s)\n"


def test_gc_json_reports_the_counts_and_a_dry_run_lists_the_paths(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given one live job and one job without a record, each with one output on disk
    ns, out = namespace(), DiskOutputs(tmp_path / "out")
    settings = settings_for(redis_server.url, ns, out.url)
    live, orphan = new_job_id(), new_job_id()
    record(settings, live)
    out.put(f"{live}/0.png")
    out.put(f"{orphan}/0.png")
    env = {"PREVIEW_NAMESPACE": ns, "PREVIEW_OUTPUT_DIR": out.url}

    # When gc runs with --json, first as a dry run
    dry = gc("--dry-run", "--json", **env)
    done = gc("--json", **env)

    # Then each prints one JSON object: the counts, and in the dry run the paths
    assert json.loads(dry.stdout) == {
        "dryRun": True,
        "jobsChecked": 2,
        "expiredJobs": 1,
        "outputs": 1,
        "paths": [f"{orphan}/0.png"],
    }
    assert json.loads(done.stdout) == {
        "dryRun": False,
        "jobsChecked": 2,
        "expiredJobs": 1,
        "outputs": 1,
    }
    assert out.stored() == {f"{live}/0.png"}


def test_gc_never_touches_names_that_are_not_job_ids(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given an output directory that also holds hidden files, notes, a name no job id can
    # have, and a symlink to a directory outside it, none of them with a job record
    ns, out = namespace(), DiskOutputs(tmp_path / "out")
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "0.png").write_bytes(PNG)
    out.put(".hidden/0.png")
    out.put(".hidden-file")
    out.put("notes.txt")
    out.put("not a job id/0.png")
    (out.root / "linked").symlink_to(outside / "keep", target_is_directory=True)
    before = out.stored()

    # When gc runs
    result = gc(PREVIEW_NAMESPACE=ns, PREVIEW_OUTPUT_DIR=out.url)

    # Then it removes nothing: not in the directory, not behind the symlink
    assert result.returncode == 0, result.stderr
    assert result.stdout == "removed 0 output(s) of 0 expired job(s)\n"
    assert out.stored() == before
    assert (outside / "keep" / "0.png").read_bytes() == PNG
    assert (out.root / "linked").is_symlink()


@pytest.mark.parametrize("backend", ["disk", "s3"])
def test_gc_removes_only_what_the_library_writes_under_a_job_like_name(
    backend: str, redis_server: RedisServer, s3_server: S3Server, tmp_path: Path
) -> None:
    # Given an output root that also holds files of the host's under names a job id could
    # have ("2024", "css", "42"), none of them with a job record, beside an expired job
    ns = namespace()
    out = DiskOutputs(tmp_path / "out") if backend == "disk" else BucketOutputs(s3_server)
    theirs = {"2024/report.pdf", "css/site.css", "42/cat.jpg", "42/0.webp.bak", "7/x/0.png"}
    for key in theirs:
        out.put(key)
    expired = new_job_id()
    out.put(f"{expired}/0.webp")
    out.put(f"{expired}/notes.txt")

    # When gc runs
    result = gc(PREVIEW_NAMESPACE=ns, PREVIEW_OUTPUT_DIR=out.url, **out.env())

    # Then only the expired job's output went; every other file stays
    assert result.returncode == 0, result.stderr
    assert result.stdout == "removed 1 output(s) of 1 expired job(s)\n"
    assert out.stored() == theirs | {f"{expired}/notes.txt"}


@pytest.mark.parametrize(
    ("outputs", "sources"),
    [
        ("{tmp}/shared", "{tmp}/shared"),
        ("{tmp}/shared", "{tmp}/shared/uploads"),
        ("{tmp}/shared/previews", "{tmp}/shared"),
        ("s3://bucket-a", "s3://bucket-a/users"),
        ("s3://bucket-a/v1", "s3://bucket-a/v1"),
    ],
)
def test_gc_refuses_an_output_root_that_overlaps_the_source_root(
    outputs: str, sources: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given an output root that is, holds or lies inside the source root, with a file in it
    (tmp_path / "shared" / "42").mkdir(parents=True)
    (tmp_path / "shared" / "42" / "0.png").write_bytes(PNG)
    env = {
        "PREVIEW_NAMESPACE": namespace(),
        "PREVIEW_OUTPUT_DIR": outputs.format(tmp=tmp_path),
        "PREVIEW_SOURCE_ROOT": sources.format(tmp=tmp_path),
    }
    # When gc runs
    result = gc(**env)
    # Then it refuses as a configuration error naming both settings, and removes nothing
    assert result.returncode == 4, result.stderr
    assert "PREVIEW_OUTPUT_DIR" in result.stderr and "PREVIEW_SOURCE_ROOT" in result.stderr
    assert (tmp_path / "shared" / "42" / "0.png").read_bytes() == PNG


def test_gc_with_s3_unreachable_says_so_and_exits_3(redis_server: RedisServer) -> None:
    # Given an output root in S3 where nothing answers
    env = {
        "PREVIEW_NAMESPACE": namespace(),
        "PREVIEW_OUTPUT_DIR": "s3://preview-gone/v1",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "2",
    }
    # When gc runs
    result = gc(**env)
    # Then it names the storage, the bucket and the trouble, without a traceback
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr.startswith(
        "dramatiq-preview gc: output storage unavailable: s3:ListBucket on bucket "
        "'preview-gone' failed: S3 did not answer"
    ), result.stderr
    assert "Traceback" not in result.stderr


def test_gc_with_refused_s3_credentials_says_so_and_exits_1(
    redis_server: RedisServer, s3_server: S3Server
) -> None:
    # Given an output bucket and a wrong secret key
    bucket = s3_server.create_bucket()
    env = {
        "PREVIEW_NAMESPACE": namespace(),
        "PREVIEW_OUTPUT_DIR": f"s3://{bucket}",
        **s3_server.environment(),
        "AWS_SECRET_ACCESS_KEY": "not-the-secret",
    }
    # When gc runs
    result = gc(**env)
    # Then S3's refusal is reported as such (a retry would not help)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"dramatiq-preview gc: output storage refused: S3 refused s3:ListBucket on bucket "
        f"'{bucket}'"
    ), result.stderr


def test_gc_with_redis_down_removes_nothing_and_exits_3(tmp_path: Path) -> None:
    # Given an output without a record, and a state store that does not answer
    out = DiskOutputs(tmp_path / "out")
    out.put(f"{new_job_id()}/0.png")
    down = RedisServer()  # never started: nothing listens on its port
    # When gc runs
    result = gc(PREVIEW_REDIS_URL=down.url, PREVIEW_OUTPUT_DIR=out.url)
    down.close()
    # Then it cannot tell expired from live: it removes nothing
    assert result.returncode == 3
    assert result.stderr.strip() == "the state store (Redis) is unavailable: ConnectionError"
    assert len(out.stored()) == 1


def test_two_sweeps_at_once_only_one_takes_the_lock(
    redis_server: RedisServer, redis_client: Any, tmp_path: Path
) -> None:
    # Given two workers whose interval is due at the same moment, and one expired output
    ns, out = namespace(), DiskOutputs(tmp_path / "out")
    settings = settings_for(redis_server.url, ns, out.url, PREVIEW_GC_INTERVAL_SECONDS="120")
    out.put(f"{new_job_id()}/0.png")
    start = threading.Barrier(2)
    reports: list[SweepReport | None] = []

    def worker(owner: str) -> None:
        start.wait()
        reports.append(sweep_if_due(settings, owner=owner))

    # When both try to sweep
    threads = [threading.Thread(target=worker, args=(name,)) for name in ("w1", "w2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # Then one swept and the other stood aside; the lock holds for the interval
    swept = [r for r in reports if r is not None]
    assert len(reports) == 2 and len(swept) == 1
    assert (swept[0].expired_jobs, swept[0].outputs) == (1, 1)
    assert out.stored() == set()
    assert 0 < redis_client.ttl(gc_lock_key(ns)) <= 120
    # And no one sweeps again until it expires, whoever asks
    assert sweep_if_due(settings, owner="w3") is None
    redis_client.pexpire(gc_lock_key(ns), 1)
    wait_until(lambda: not redis_client.exists(gc_lock_key(ns)), what="the lock expired")
    assert sweep_if_due(settings, owner="w3") is not None


def test_an_interval_of_0_turns_the_worker_sweep_off(
    redis_server: RedisServer, redis_client: Any, tmp_path: Path
) -> None:
    # Given PREVIEW_GC_INTERVAL_SECONDS=0 and an output without a record
    ns, out = namespace(), DiskOutputs(tmp_path / "out")
    settings = settings_for(redis_server.url, ns, out.url, PREVIEW_GC_INTERVAL_SECONDS="0")
    out.put(f"{new_job_id()}/0.png")
    retention = Retention(settings=settings)
    before = {t.name for t in threading.enumerate()}

    # When a worker boots, and when a sweep is due
    retention.after_worker_boot(StubBroker(), None)
    due = sweep_if_due(settings)
    retention.before_worker_shutdown(StubBroker(), None)

    # Then no sweeper thread started, no lock was taken and the output is still there
    assert "preview-retention" not in {t.name for t in threading.enumerate()} - before
    assert due is None
    assert not redis_client.exists(gc_lock_key(ns))
    assert len(out.stored()) == 1


def test_a_sweep_stops_between_jobs_when_asked(redis_server: RedisServer, tmp_path: Path) -> None:
    # Given three jobs without records, and a worker shutting down after the first removal
    ns, out = namespace(), DiskOutputs(tmp_path / "out")
    settings = settings_for(redis_server.url, ns, out.url)
    for _ in range(3):
        out.put(f"{new_job_id()}/0.png")
    stop = threading.Event()

    # When the sweep is told to stop as it removes the first job's outputs
    report = sweep(settings, stop=stop, on_output=lambda key: stop.set())

    # Then it ends there: what is left waits for the next sweep
    assert (report.expired_jobs, report.outputs) == (1, 1)
    assert len(out.stored()) == 2


def test_every_broker_gets_the_retention_middleware_with_keyword_arguments() -> None:
    # Given a broker built from settings
    broker = build_broker(Settings.from_mapping({"PREVIEW_REDIS_URL": "redis://127.0.0.1:1/0"}))
    try:
        # Then it carries Retention once, a Dramatiq middleware named as a noun
        assert [type(m) for m in broker.middleware].count(Retention) == 1
        assert issubclass(Retention, dramatiq.Middleware)
        with pytest.raises(TypeError):
            Retention(None)  # type: ignore[misc]  # keyword-only arguments
    finally:
        broker.client.close()


@pytest.mark.slow
def test_a_worker_sweeps_on_its_own_every_interval(
    redis_server: RedisServer, start_worker: Any, tmp_path: Path
) -> None:
    # Given a worker that sweeps every second, a live job and a job without a record
    ns, out = namespace(), DiskOutputs(tmp_path / "out")
    settings = settings_for(redis_server.url, ns, out.url)
    live, first, second = new_job_id(), new_job_id(), new_job_id()
    record(settings, live)
    out.put(f"{live}/0.png")
    out.put(f"{first}/0.png")
    worker = start_worker(
        {
            "PREVIEW_NAMESPACE": ns,
            "PREVIEW_OUTPUT_DIR": out.url,
            "PREVIEW_JOB_TTL_SECONDS": "60",
            "PREVIEW_GC_INTERVAL_SECONDS": "1",
            "dramatiq_prom_port": str(free_port()),
            "dramatiq_prom_db": str(tmp_path / "prom"),
        }
    )

    # When it has run a while, then another orphan appears
    wait_until(lambda: f"{first}/0.png" not in out.stored(), timeout=30, what="the first sweep")
    out.put(f"{second}/0.png")

    # Then a later sweep removes that one too, and the live job keeps its output throughout
    wait_until(lambda: f"{second}/0.png" not in out.stored(), timeout=30, what="a later sweep")
    assert out.stored() == {f"{live}/0.png"}
    # And the worker's log says what each sweep removed
    wait_for_log(worker, "retention sweep removed 1 output(s) of 1 expired job(s)")

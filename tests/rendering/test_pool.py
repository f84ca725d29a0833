"""The render pool: time limits, crashes, cancellation, recycling, threads, forks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import imagegen as g
import pytest
from render_helpers import Workspace, close_to, pixel

from dramatiq_preview.config import Settings
from dramatiq_preview.errors import (
    JobCancelled,
    PermanentError,
    RenderCrashed,
    RenderMemoryExceeded,
    RenderTimeout,
)
from dramatiq_preview.models import OutputSpec
from dramatiq_preview.rendering import Renderer, close_renderer, get_renderer
from dramatiq_preview.rendering.child import TEST_HOOKS_ENV


def _good(workspace: Workspace, renderer: Renderer) -> None:
    name = workspace.add("pool/good.png", g.png(g.quadrants(20, 20)))
    [result] = workspace.render(renderer, workspace.job(name, [OutputSpec(20, 20, "png")]))
    assert close_to(pixel(workspace.out / result.path, 2, 2)[:3], g.RED[:3], 5)


@pytest.fixture
def source(workspace: Workspace) -> str:
    return workspace.add("pool/source.png", g.png(g.quadrants(40, 20)))


def test_a_hanging_render_is_stopped_at_the_limit(
    renderer: Renderer, workspace: Workspace, source: str
) -> None:
    """Given a child that hangs (test hook), when the deadline passes, then RenderTimeout
    (transient) comes within a tick of it, checkpoint(None) was called while waiting, and
    the pool renders the next job."""
    spec = workspace.job(source, [OutputSpec(20, 20, "png")], job_id="test-hook-sleep-1")
    ticks: list[int | None] = []
    start = time.monotonic()
    with pytest.raises(RenderTimeout) as caught:
        workspace.render(renderer, spec, timeout=1.0, checkpoint=ticks.append)
    elapsed = time.monotonic() - start
    assert caught.value.retryable
    assert 0.9 < elapsed < 2.5
    assert ticks.count(None) >= 2
    assert workspace.files(spec) == []
    _good(workspace, renderer)


def test_the_hooks_need_the_environment_switch(
    workspace: Workspace, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a pool started without DRAMATIQ_PREVIEW_TEST_HOOKS, when a job id names a hook,
    then the job just renders: a payload alone cannot trigger a hook."""
    monkeypatch.delenv(TEST_HOOKS_ENV, raising=False)
    pool = Renderer(workspace.settings, processes=1)
    try:
        spec = workspace.job(source, [OutputSpec(20, 20, "png")], job_id="test-hook-crash-x")
        [result] = workspace.render(pool, spec, timeout=10)
        assert result.width == 20
    finally:
        pool.close()


def test_a_crashing_child_fails_only_its_job(
    renderer: Renderer, workspace: Workspace, source: str
) -> None:
    """Given a child that kills itself with SIGSEGV, when rendering, then RenderCrashed
    (permanent) and the next job renders in a fresh child."""
    spec = workspace.job(source, [OutputSpec(20, 20, "png")], job_id="test-hook-crash-1")
    with pytest.raises(RenderCrashed, match="SIGSEGV") as caught:
        workspace.render(renderer, spec)
    assert not caught.value.retryable
    _good(workspace, renderer)


def test_the_address_space_cap_fails_the_job_permanently(workspace: Workspace, source: str) -> None:
    """Given a 256 MiB cap and a child that allocates without end (test hook), then
    RenderMemoryExceeded (permanent) and the pool renders the next job."""
    settings = replace(workspace.settings, render_memory_mb=256)
    pool = Renderer(settings, processes=1, child_env={TEST_HOOKS_ENV: "1"})
    try:
        spec = workspace.job(source, [OutputSpec(20, 20, "png")], job_id="test-hook-oom-1")
        with pytest.raises(RenderMemoryExceeded) as caught:
            workspace.render(pool, spec)
        assert not caught.value.retryable
        _good(workspace, pool)
    finally:
        pool.close()


def test_a_bug_in_the_renderer_fails_only_its_job(workspace: Workspace, source: str) -> None:
    """Given a one-child pool and a job on which the child's code raises (test hook standing
    in for a bug), then that job fails with RenderCrashed (permanent), the child, which
    exits after such a report, is replaced, and the next job renders."""
    pool = Renderer(workspace.settings, processes=1, child_env={TEST_HOOKS_ENV: "1"})
    try:
        pool.warm()
        [first] = pool.child_pids()
        spec = workspace.job(source, [OutputSpec(20, 20, "png")], job_id="test-hook-raise-1")
        with pytest.raises(RenderCrashed, match="failed unexpectedly") as caught:
            workspace.render(pool, spec)
        assert not caught.value.retryable
        _good(workspace, pool)
        assert pool.child_pids() != [first]
    finally:
        pool.close()


def test_cancellation_at_a_checkpoint_kills_and_cleans_up(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given a three-output job, when the checkpoint raises JobCancelled after the first
    output was written, then the exception propagates, the written output is deleted and
    the pool renders the next job."""
    name = workspace.add("pool/multi.png", g.png(g.quadrants(80, 40)))
    spec = workspace.job(name, [OutputSpec(s, s, "png") for s in (60, 40, 20)])
    seen: list[int | None] = []

    def checkpoint(percent: int | None) -> None:
        seen.append(percent)
        if percent is not None and percent > 30:
            raise JobCancelled("cancelled")

    with pytest.raises(JobCancelled):
        workspace.render(renderer, spec, checkpoint=checkpoint)
    assert 30 in seen and any(p is not None and p > 30 for p in seen)
    assert workspace.files(spec) == []
    _good(workspace, renderer)


def test_progress_is_reported_per_stage(renderer: Renderer, workspace: Workspace) -> None:
    """Given two outputs, when rendered, then checkpoint sees 30 (decoded), 60 and 90."""
    name = workspace.add("pool/two.png", g.png(g.quadrants(40, 20)))
    spec = workspace.job(name, [OutputSpec(30, 30, "png"), OutputSpec(10, 10, "webp")])
    seen: list[int | None] = []
    workspace.render(renderer, spec, checkpoint=seen.append)
    assert [p for p in seen if p is not None] == [30, 60, 90]


def test_outputs_over_the_byte_cap_fail_permanently_and_none_is_kept(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Issue 19: given three outputs of T bytes together, when PREVIEW_MAX_OUTPUT_BYTES is
    T - 1, then the job fails permanently with output_too_large once the first two are
    written, those two are deleted, and the same child renders the next job; at exactly T
    the job succeeds."""
    name = workspace.add("pool/noise.png", g.png(g.noise(48, 48)))
    outputs = [OutputSpec(48, 48, "png"), OutputSpec(40, 40, "png"), OutputSpec(32, 32, "png")]
    total = sum(r.bytes for r in workspace.render(renderer, workspace.job(name, outputs)))

    exact = Renderer(replace(workspace.settings, max_output_bytes=total), processes=1)
    try:
        rendered = workspace.render(exact, workspace.job(name, outputs))
        assert sum(r.bytes for r in rendered) == total
    finally:
        exact.close()

    capped = Renderer(replace(workspace.settings, max_output_bytes=total - 1), processes=1)
    try:
        capped.warm()
        [child] = capped.child_pids()
        spec = workspace.job(name, outputs)
        seen: list[int | None] = []
        with pytest.raises(PermanentError) as caught:
            workspace.render(capped, spec, checkpoint=seen.append)
        assert (caught.value.type, caught.value.retryable) == ("output_too_large", False)
        assert f"{total - 1} bytes" in caught.value.message
        assert "PREVIEW_MAX_OUTPUT_BYTES" in caught.value.message
        assert [p for p in seen if p is not None] == [30, 50, 70]  # two outputs were written
        assert workspace.files(spec) == []
        _good(workspace, capped)
        assert capped.child_pids() == [child]
    finally:
        capped.close()


def test_an_exception_in_the_waiting_thread_kills_the_child(
    renderer: Renderer, workspace: Workspace, source: str
) -> None:
    """Given a hanging child, when checkpoint(None) raises (as Dramatiq's TimeLimitExceeded
    would), then that exception propagates promptly and the pool goes on."""

    class Interrupted(BaseException):
        pass

    def checkpoint(percent: int | None) -> None:
        if percent is None:
            raise Interrupted

    spec = workspace.job(source, [OutputSpec(20, 20, "png")], job_id="test-hook-sleep-2")
    start = time.monotonic()
    with pytest.raises(Interrupted):
        workspace.render(renderer, spec, timeout=30, checkpoint=checkpoint)
    assert time.monotonic() - start < 2
    _good(workspace, renderer)


def test_children_are_recycled(workspace: Workspace, source: str) -> None:
    """Given PREVIEW_RENDER_RECYCLE_AFTER=2, when three jobs render, then the third runs in a
    new child."""
    settings = replace(workspace.settings, render_recycle_after=2)
    pool = Renderer(settings, processes=1)
    try:
        pids = []
        for _ in range(3):
            spec = workspace.job(source, [OutputSpec(10, 10, "png")])
            workspace.render(pool, spec)
            pids.append(tuple(pool.child_pids()))
        assert len(pids[0]) == 1
        assert pids[1] == ()  # retired after its second render
        assert len(pids[2]) == 1 and pids[2] != pids[0]
    finally:
        pool.close()


def test_threads_share_the_pool(workspace: Workspace, source: str) -> None:
    """Given a pool of two and six threads, when all render at once, then all succeed."""
    pool = Renderer(workspace.settings, processes=2)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            spec = workspace.job(source, [OutputSpec(16 + i, 16, "png")], job_id=f"thread-{i}")
            [result] = workspace.render(pool, spec)
            assert result.width == 16 + i
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert len(pool.child_pids()) <= 2
    finally:
        pool.close()


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_get_renderer_is_a_per_process_singleton(session_settings: Settings) -> None:
    """Given the same settings, get_renderer returns one instance; a forked process gets
    its own; other settings replace it."""
    try:
        first = get_renderer(session_settings, processes=1)
        assert get_renderer(session_settings, processes=1) is first
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            ok = get_renderer(session_settings, processes=1) is not first
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
        os.close(write)
        assert os.read(read, 1) == b"1"
        os.waitpid(pid, 0)
        os.close(read)
        other = get_renderer(session_settings, processes=2)
        assert other is not first and other.processes == 2
    finally:
        close_renderer()


def test_children_die_with_the_worker(tmp_path: Path) -> None:
    """Given a worker process with a warm render child, when the worker is SIGKILLed, then
    the child exits too (PR_SET_PDEATHSIG)."""
    code = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from dramatiq_preview.config import Settings
        from dramatiq_preview.rendering import Renderer
        pool = Renderer(Settings(source_root=Path(sys.argv[1])), processes=1)
        pool.warm()
        print(pool.child_pids()[0], flush=True)
        time.sleep(60)
        """
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None
        child = int(worker.stdout.readline())
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_importing_the_package_does_not_load_wand() -> None:
    """Given a fresh interpreter, when dramatiq_preview.rendering and .sources are imported,
    then Wand is not (the web process has no ImageMagick)."""
    code = (
        "import sys, dramatiq_preview.rendering, dramatiq_preview.sources;"
        "print(any(m == 'wand' or m.startswith('wand.') for m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_render_children_get_no_cloud_credentials() -> None:
    # Given a worker environment with AWS credentials, an S3 endpoint and a Redis password
    from dramatiq_preview.rendering.pool import child_environment

    worker_env = {
        "PATH": "/usr/bin",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "AWS_SESSION_TOKEN": "token",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:8333",
        "AWS_PROFILE": "prod",
        "PREVIEW_REDIS_URL": "redis://:pw@redis:6379/0",
    }
    # When the environment of a render child is derived from it
    env = child_environment(worker_env)
    # Then none of them reaches the child
    assert env == {"PATH": "/usr/bin"}

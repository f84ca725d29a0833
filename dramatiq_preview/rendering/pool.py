"""A small pool of render children per worker process.

Dramatiq cannot interrupt C code, and ImageMagick's own time limit kills the whole process,
so renders run in child processes (:mod:`.child`) that the worker can kill: at the
deadline (:class:`RenderTimeout`, transient), when a checkpoint raises (cancellation,
Dramatiq's ``TimeLimitExceeded``), or after they crash.  Children are spawned lazily, one
at a time per free slot, from one long-lived thread (``PR_SET_PDEATHSIG`` fires when the
*thread* that started a child exits), and replaced after ``PREVIEW_RENDER_RECYCLE_AFTER``
renders or any failure that may have left them in a bad state.

This module does not import Wand.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..config import Settings
from ..errors import (
    CorruptSource,
    OutputTooLarge,
    PageOutOfRange,
    PreviewError,
    RenderCrashed,
    RenderMemoryExceeded,
    RenderTimeout,
    SourceTooLarge,
    SourceUnavailable,
    TooManyPixels,
    UnsupportedFormat,
)
from ..models import JobSpec, Placeholder, RenderedOutput, relative_output_path
from ..storage import JobOutputs
from .budget import OutputBudget
from .child import TEST_HOOKS_ENV, magick_environment
from .protocol import Channel, ChannelClosed, ProtocolError

logger = logging.getLogger(__name__)

Checkpoint = Callable[[int | None], None]

#: How often the waiting thread calls ``checkpoint(None)``.
TICK_SECONDS = 0.25
#: How long a new child may take to import Wand and say it is ready.
START_TIMEOUT_SECONDS = 30.0
#: Pool size when neither ``processes``, ``PREVIEW_RENDER_PROCESSES`` nor a booted worker's
#: thread count says (a direct ``render_preview(payload)`` call or a script); children are
#: only started when that many renders overlap.
DEFAULT_PROCESSES = 2

# Error types a child may report, mapped back to our classes.  Anything else is a crash.
_CHILD_ERRORS: dict[str, type[PreviewError]] = {
    cls.type: cls
    for cls in (
        CorruptSource,
        OutputTooLarge,
        PageOutOfRange,
        RenderCrashed,
        RenderMemoryExceeded,
        RenderTimeout,
        SourceTooLarge,
        SourceUnavailable,
        TooManyPixels,
        UnsupportedFormat,
    )
}

# Started with ``python -c``, without the current directory on sys.path.  The stand-in
# ``dramatiq_preview`` module lets the child import its modules without executing
# dramatiq_preview/__init__.py.  That is needed because importing the package root imports
# the actor, which builds a Dramatiq broker (``broker.default_broker``: a Redis broker from
# the settings, here the defaults, as the child's environment has no PREVIEW_* variable) and
# installs it as the global broker, loading the middleware, state and Redis client with it:
# a render child needs none of them.  Drop the stand-in when importing the root no longer
# builds a broker.
_BOOTSTRAP = """\
import sys, types
if sys.path and sys.path[0] == "":
    del sys.path[0]  # the working directory (absent under PYTHONSAFEPATH)
package = types.ModuleType("dramatiq_preview")
package.__path__ = [sys.argv[1]]
sys.modules["dramatiq_preview"] = package
from dramatiq_preview.rendering.child import main
sys.exit(main(sys.argv[2:]))
"""


#: What a render child keeps of the worker's environment: where Python and programs are,
#: the locale and the temporary directory, ImageMagick's and Wand's own variables, and the
#: test hooks switch.  Nothing else: the worker's environment carries secrets (Redis and
#: broker URLs with passwords, API tokens, cloud keys) that a child taken over by a hostile
#: file could copy into an output.
_CHILD_ENV_NAMES = frozenset(
    {"PATH", "LD_LIBRARY_PATH", "LANG", "LANGUAGE", "TMPDIR", "TZ", TEST_HOOKS_ENV}
)
_CHILD_ENV_PREFIXES = ("LC_", "PYTHON", "MAGICK_", "WAND_", "OMP_")


class RenderSource(Protocol):
    """What the renderer needs of a source: an open descriptor and its size, never a path.

    :class:`dramatiq_preview.sources.LocalSource` is one.  The descriptor goes to the render
    child as it is (``SCM_RIGHTS``) and stays open and owned by the caller.
    """

    @property
    def fd(self) -> int:
        """Open, read-only descriptor at any offset (readers start from byte 0 themselves)."""
        ...

    @property
    def size(self) -> int:
        """Size in bytes when opened; a source that has changed since fails the render
        (:class:`SourceUnavailable`, transient)."""
        ...


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of ``environ`` a render child inherits (see ``_CHILD_ENV_NAMES``)."""
    return {
        name: value
        for name, value in environ.items()
        if name in _CHILD_ENV_NAMES or name.startswith(_CHILD_ENV_PREFIXES)
    }


class _Child:
    """One render child and our end of its socket."""

    def __init__(self, proc: subprocess.Popen[bytes], channel: Channel) -> None:
        self.proc = proc
        self.channel = channel
        self.renders = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=5)
        self.channel.close()

    def exit_error(self) -> PreviewError:
        """The error for a child that vanished in the middle of a render."""
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = -signal.SIGKILL
        self.channel.close()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return RenderCrashed(f"the render process crashed ({name}) on this source")
        return RenderCrashed(f"the render process exited unexpectedly (status {code})")


@dataclass(frozen=True)
class _Options:
    processes: int
    memory_mb: int
    max_pixels: int
    recycle_after: int
    max_output_bytes: int


class Renderer:
    """Renders jobs in a pool of child processes.  Thread-safe; one per worker process.

    Parameters:
      settings: ``render_memory_mb``, ``max_pixels``, ``max_output_bytes``,
        ``render_recycle_after`` and ``render_processes`` are used.
      processes: Pool size; overrides ``PREVIEW_RENDER_PROCESSES``.  When both are 0/None,
        the booted worker's thread count (:func:`set_worker_threads`), else
        :data:`DEFAULT_PROCESSES`.
      child_env: Extra environment variables for the children (tests use it to enable
        the test hooks); by default children inherit this process's environment.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        processes: int | None = None,
        child_env: Mapping[str, str] | None = None,
    ) -> None:
        self.options = _options_for(settings, processes)
        self.child_env = dict(child_env or {})
        self.pid = os.getpid()
        self._cond = threading.Condition()
        self._idle: list[_Child] = []
        self._slots = 0  # children alive or being started
        self._closed = False
        self._warned_unsandboxed = False
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preview-spawn")

    @property
    def processes(self) -> int:
        return self.options.processes

    # --- public API ---------------------------------------------------------------

    def render(
        self,
        spec: JobSpec,
        source: RenderSource,
        destinations: JobOutputs,
        *,
        deadline: float,
        checkpoint: Checkpoint | None = None,
    ) -> list[RenderedOutput]:
        """Render every output of ``spec`` from ``source`` into ``destinations``.

        Parameters:
          spec: The job; its outputs, page and id.
          source: The open source (:class:`RenderSource`; a
            :class:`~dramatiq_preview.sources.LocalSource`, say).
          destinations: Where the outputs go (:func:`dramatiq_preview.storage.destinations`).
          deadline: ``time.monotonic()`` time by which the render must be done.
          checkpoint: Called in this thread with a percentage after each stage, and with
            ``None`` about every 0.25 s while waiting.  If it raises, the child is killed,
            outputs written so far are deleted, and the exception propagates.

        Returns:
          One :class:`RenderedOutput` per output, in request order; ``path`` is relative to
          the output root.  With ``spec.placeholder``, the first carries its
          :class:`~dramatiq_preview.models.Placeholder`.

        Raises:
          RenderTimeout: the deadline passed (transient).
          RenderMemoryExceeded: the address-space cap was hit (permanent).
          RenderCrashed: the child died (permanent).
          OutputTooLarge: the outputs together would exceed ``max_output_bytes``
            (permanent); none of them is kept.
          PermanentError: the source is unsupported, corrupt, too large or lacks the page.
          StorageError: an output could not be written (transient).
          StorageForbidden: storage refused an output (permanent).
        """
        if len(destinations) != len(spec.outputs):
            raise ValueError("need one destination per output")
        child = self._acquire(deadline, checkpoint)
        healthy = succeeded = False
        try:
            results = self._run(child, spec, source, destinations, deadline, checkpoint)
            healthy = succeeded = True
            return results
        except _ReportedError as reported:
            healthy = reported.healthy
            raise reported.error from None
        finally:
            # Also on exceptions raised by checkpoint (cancellation, TimeLimitExceeded):
            # the child may be mid-render, so it is killed rather than reused.
            if not succeeded:
                destinations.discard()
            self._release(child, healthy)

    def warm(self, count: int = 1) -> None:
        """Start up to ``count`` idle children now rather than on first use."""
        for _ in range(min(count, self.options.processes)):
            with self._cond:
                if self._closed or self._slots >= self.options.processes:
                    return
                self._slots += 1
            child = self._start()
            self._release(child, True, counted=False)

    def close(self) -> None:
        """Kill idle children now and busy ones when their render ends."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._slots -= len(idle)
            self._cond.notify_all()
        for child in idle:
            child.kill()
        self._spawner.shutdown(wait=False)

    def child_pids(self) -> list[int]:
        """Process ids of the idle children (for tests and diagnostics)."""
        with self._cond:
            return [c.pid for c in self._idle]

    # --- internals ----------------------------------------------------------------

    def _acquire(self, deadline: float, checkpoint: Checkpoint | None) -> _Child:
        while True:
            with self._cond:
                if self._closed:
                    raise RuntimeError("the renderer is closed")
                if self._idle:
                    return self._idle.pop()
                if self._slots < self.options.processes:
                    self._slots += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(min(TICK_SECONDS, remaining))
            if time.monotonic() >= deadline:
                raise RenderTimeout("the render time limit passed while waiting for a renderer")
            if checkpoint is not None:
                checkpoint(None)
        try:
            return self._start()
        except BaseException:
            with self._cond:
                self._slots -= 1
                self._cond.notify()
            raise

    def _release(self, child: _Child, healthy: bool, *, counted: bool = True) -> None:
        if counted:
            child.renders += 1
        keep = healthy and child.renders < self.options.recycle_after
        if os.getpid() != self.pid:
            # A forked copy of this renderer: the child belongs to the parent process.
            child.channel.close()
            return
        with self._cond:
            if keep and not self._closed:
                self._idle.append(child)
                self._cond.notify()
                return
            self._slots -= 1
            self._cond.notify()
        child.kill()

    def _start(self) -> _Child:
        # A dedicated thread spawns every child: PDEATHSIG is tied to the spawning thread.
        child = self._spawner.submit(self._spawn).result()
        try:
            frame = child.channel.recv(timeout=START_TIMEOUT_SECONDS)
        except (ChannelClosed, ProtocolError):
            frame = None
        if frame is None or frame[0].get("event") != "ready":
            child.kill()
            raise RenderCrashed("a render process could not be started; see the worker's log")
        unsandboxed = frame[0].get("unsandboxed")
        if unsandboxed and not self._warned_unsandboxed:
            self._warned_unsandboxed = True
            logger.warning("render processes run without part of their sandbox: %s", unsandboxed)
        return child

    def _spawn(self) -> _Child:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            package_dir = str(Path(__file__).resolve().parent.parent)
            env = child_environment(os.environ)
            env.update(self.child_env)
            env.update(magick_environment())
            argv = [
                sys.executable,
                "-c",
                _BOOTSTRAP,
                package_dir,
                str(theirs.fileno()),
                str(os.getpid()),
                str(self.options.memory_mb),
                str(self.options.max_pixels),
            ]
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=[theirs.fileno()],
                env=env,
                cwd="/",  # not the worker's directory: nothing there is the child's business
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return _Child(proc, Channel(ours))

    def _run(
        self,
        child: _Child,
        spec: JobSpec,
        source: RenderSource,
        destinations: JobOutputs,
        deadline: float,
        checkpoint: Checkpoint | None,
    ) -> list[RenderedOutput]:
        total = len(spec.outputs)
        results: dict[int, RenderedOutput] = {}
        budget = OutputBudget(self.options.max_output_bytes, total)
        job = {
            "job_id": spec.job_id,
            "page": spec.page,
            "outputs": [
                {
                    "width": o.width,
                    "height": o.height,
                    "format": o.format,
                    "fit": o.fit,
                    "quality": o.quality,
                }
                for o in spec.outputs
            ],
            "placeholder": spec.placeholder,
        }
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _ReportedError(RenderTimeout("the render time limit passed"), healthy=True)
        try:
            child.channel.send(
                {
                    "op": "render",
                    "job": job,
                    "size": int(source.size),
                    "timeout": remaining,
                    "max_output_bytes": self.options.max_output_bytes,
                },
                fds=[int(source.fd)],
            )
        except ChannelClosed:
            raise _ReportedError(child.exit_error(), healthy=False) from None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _ReportedError(
                    RenderTimeout("the render did not finish within the time limit"),
                    healthy=False,
                )
            try:
                frame = child.channel.recv(timeout=min(TICK_SECONDS, remaining))
            except ChannelClosed:
                raise _ReportedError(child.exit_error(), healthy=False) from None
            except ProtocolError:
                raise _ReportedError(
                    RenderCrashed("the render process sent garbage"), healthy=False
                ) from None
            if frame is None:
                if checkpoint is not None:
                    checkpoint(None)
                continue
            message, payload, fds = frame
            for fd in fds:
                os.close(fd)
            event = message.get("event")
            if event == "decoded":
                if checkpoint is not None:
                    checkpoint(30)
            elif event == "output":
                index = message.get("index")
                if not isinstance(index, int) or not 0 <= index < total or index in results:
                    raise _ReportedError(
                        RenderCrashed("the render process sent a bad output"), healthy=False
                    )
                try:
                    budget.take(len(payload))
                except OutputTooLarge as exc:
                    # The child counts too and should have stopped before this output: it
                    # did not, so it does not render another job.
                    raise _ReportedError(exc, healthy=False) from None
                placeholder = None
                if spec.placeholder and index == 0:
                    placeholder = _placeholder(message.get("placeholder"))
                    if placeholder is None:
                        raise _ReportedError(
                            RenderCrashed("the render process sent a bad placeholder"),
                            healthy=False,
                        )
                output = spec.outputs[index]
                # A storage error propagates: the child, still rendering, is not reused.
                destinations.write(index, payload)
                results[index] = RenderedOutput(
                    path=relative_output_path(spec.job_id, index, output).as_posix(),
                    width=int(message.get("width", 0)),
                    height=int(message.get("height", 0)),
                    format=output.format,
                    bytes=len(payload),
                    placeholder=placeholder,
                )
                if checkpoint is not None:
                    checkpoint(30 + 60 * len(results) // total)
            elif event == "done":
                if len(results) != total:
                    raise _ReportedError(
                        RenderCrashed("the render process skipped outputs"), healthy=False
                    )
                return [results[i] for i in range(total)]
            elif event == "error":
                kind = _CHILD_ERRORS.get(str(message.get("type")), RenderCrashed)
                text = str(message.get("message") or "the render failed")[:500]
                # The child says whether it exits after this report (memory errors and
                # its own bugs); otherwise it is ready for the next job.
                exiting = message.get("exiting", kind in (RenderMemoryExceeded, RenderCrashed))
                raise _ReportedError(kind(text), healthy=not exiting)
            else:
                raise _ReportedError(
                    RenderCrashed("the render process sent an unknown event"), healthy=False
                )


#: A BlurHash of 4x3 components (its first character says so) and an sRGB colour.
_BLURHASH = re.compile(r"L[0-9A-Za-z#$%*+,\-.:;=?@\[\]^_{|}~]{27}")
_COLOR = re.compile(r"#[0-9a-f]{6}")


def _placeholder(value: object) -> Placeholder | None:
    """The placeholder a child sent, or None when it is not one: what a child taken over
    by a hostile file sends goes into the job's result only in this exact shape."""
    if not isinstance(value, dict) or set(value) != {"blurhash", "color"}:
        return None
    hash_, color = value["blurhash"], value["color"]
    if not (isinstance(hash_, str) and _BLURHASH.fullmatch(hash_)):
        return None
    if not (isinstance(color, str) and _COLOR.fullmatch(color)):
        return None
    return Placeholder(blurhash=hash_, color=color)


class _ReportedError(Exception):
    def __init__(self, error: PreviewError, *, healthy: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.healthy = healthy


# --- per-process singleton ------------------------------------------------------------

_lock = threading.Lock()
_renderer: Renderer | None = None


def get_renderer(settings: Settings, *, processes: int | None = None) -> Renderer:
    """The renderer of this process, created on first use.

    A process forked from one that had a renderer gets its own (the parent's children are
    not ours to use).  Different settings or pool size replace it (the old one is closed).

    Parameters:
      settings: The worker's settings.
      processes: Pool size, normally the worker's thread count; see :class:`Renderer`.
    """
    global _renderer
    with _lock:
        current = _renderer
        wanted = _options_for(settings, processes)
        if current is not None and current.pid == os.getpid() and current.options == wanted:
            return current
        replaced = current if current is not None and current.pid == os.getpid() else None
        _renderer = Renderer(settings, processes=processes)
        created = _renderer
    if replaced is not None:
        replaced.close()
    return created


#: The thread count of this worker process (set when the worker boots, by the ``RenderPool``
#: middleware): by default a worker keeps at most one render child per thread.
_worker_threads: int | None = None


def set_worker_threads(count: int | None) -> None:
    """Size the pool of this process for a worker with ``count`` threads (None: forget)."""
    global _worker_threads
    _worker_threads = max(1, int(count)) if count else None


def _options_for(settings: Settings, processes: int | None) -> _Options:
    size = processes or settings.render_processes or _worker_threads or DEFAULT_PROCESSES
    return _Options(
        processes=max(1, size),
        memory_mb=settings.render_memory_mb,
        max_pixels=settings.max_pixels,
        recycle_after=settings.render_recycle_after,
        max_output_bytes=settings.max_output_bytes,
    )


def close_renderer() -> None:
    """Close this process's renderer, if any (at exit, and in tests)."""
    global _renderer
    with _lock:
        current, _renderer = _renderer, None
    if current is not None and current.pid == os.getpid():
        current.close()


def _forget_after_fork() -> None:
    global _renderer, _lock
    _lock = threading.Lock()
    _renderer = None


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(close_renderer)

"""A render child: a separate process that decodes untrusted files with ImageMagick.

Started by :class:`~dramatiq_preview.rendering.pool.Renderer` with ``subprocess`` (a fresh
interpreter: no ``fork`` of the multi-threaded worker), it

- asks the kernel to kill it when the worker dies (``PR_SET_PDEATHSIG``) and exits on end
  of file of its socket;
- points ImageMagick at the shipped policy and limits threads *before* Wand is imported;
- caps its own address space (``RLIMIT_AS``) and disables core dumps;
- then renders one job at a time: the job arrives as JSON with the source's descriptor
  (``SCM_RIGHTS``), outputs go back as frames, never written by the child itself.

Test hooks (a job id starting with ``test-hook-sleep``, ``test-hook-crash`` or
``test-hook-oom``) work only when the worker's environment has
``DRAMATIQ_PREVIEW_TEST_HOOKS=1``; a payload alone can never trigger them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import resource
import signal
import socket
import sys
import time
import traceback
from importlib import resources
from typing import Any

from ..errors import PreviewError, RenderCrashed, RenderMemoryExceeded
from ..models import JobSpec, OutputSpec
from . import sandbox
from .budget import OutputBudget
from .deathsig import die_with_parent
from .protocol import Channel, ChannelClosed

POLICY_DIR_ENV = "MAGICK_CONFIGURE_PATH"
TEST_HOOKS_ENV = "DRAMATIQ_PREVIEW_TEST_HOOKS"


def policy_dir() -> str:
    """The directory holding the shipped ``policy.xml``."""
    return str(resources.files("dramatiq_preview.rendering").joinpath("policy"))


def _wand_library_suffix() -> str | None:
    """The installed MagickWand's name suffix (``-6.Q16`` on Debian 12), found by a glob.

    Wand otherwise tries some twenty names through ``ctypes.util.find_library`` (each one
    runs ``ldconfig -p``), which costs about a second per render child.
    """
    for directory in ("/usr/lib/*-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"):
        for path in sorted(glob.glob(f"{directory}/libMagickWand*.so*")):
            name = os.path.basename(path)
            suffix = name[len("libMagickWand") : name.index(".so")]
            if suffix.startswith("-") or suffix == "":
                return suffix
    return None


def magick_environment() -> dict[str, str]:
    """Environment variables ImageMagick must see before Wand loads."""
    extra = {}
    suffix = os.environ.get("WAND_MAGICK_LIBRARY_SUFFIX") or _wand_library_suffix()
    if suffix:
        extra["WAND_MAGICK_LIBRARY_SUFFIX"] = suffix
    return extra | {
        POLICY_DIR_ENV: policy_dir(),
        "MAGICK_THREAD_LIMIT": "1",
        "OMP_NUM_THREADS": "1",
        # Never let ImageMagick spill pixel caches or temporary files into a shared place.
        "MAGICK_DISK_LIMIT": "0",
    }


def prepare_environment() -> None:
    """Set :func:`magick_environment` in ``os.environ`` (call before importing Wand)."""
    os.environ.update(magick_environment())


def _vm_size() -> int:
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cap_address_space(memory_mb: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # The cap is what a render may allocate on top of this process's baseline.
    cap = _vm_size() + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _run_hook(job_id: str) -> None:
    if os.environ.get(TEST_HOOKS_ENV) != "1" or not job_id.startswith("test-hook-"):
        return
    hook = job_id[len("test-hook-") :]
    if hook.startswith("sleep"):
        time.sleep(3600)
    elif hook.startswith("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    elif hook.startswith("raise"):
        raise RuntimeError("a test hook standing in for a bug in the renderer")
    elif hook.startswith("oom"):
        hog = []
        while True:  # until RLIMIT_AS says no
            hog.append(bytearray(64 << 20))


def _report(channel: Channel, error: PreviewError, *, exiting: bool) -> None:
    """Send a job's error; ``exiting`` tells the pool this process stops after it."""
    channel.send(
        {"event": "error", "type": error.type, "message": error.message, "exiting": exiting}
    )


def main(argv: list[str]) -> int:
    """Entry point: ``child SOCKET_FD PARENT_PID MEMORY_MB MAX_PIXELS``."""
    sock_fd, parent_pid, memory_mb, max_pixels = (int(a) for a in argv[:4])
    die_with_parent()
    if os.getppid() != parent_pid:
        return 0  # the worker died before we could ask to die with it
    prepare_environment()
    from . import engine  # child process: engine loads Wand, after prepare_environment()

    limits = engine.Limits(max_pixels=max_pixels, memory_mb=memory_mb)
    engine.configure(limits)
    _cap_address_space(memory_mb)
    channel = Channel(socket.socket(fileno=sock_fd))
    # Last step of the start-up: from here on this process can open no socket.
    unsandboxed = sandbox.restrict()
    channel.send({"event": "ready", "pid": os.getpid(), "unsandboxed": unsandboxed})
    while True:
        try:
            frame = channel.recv()
        except ChannelClosed:
            return 0
        assert frame is not None
        message, _, fds = frame
        if message.get("op") != "render" or len(fds) != 1:
            for extra in fds:
                os.close(extra)
            return 2
        fd = fds[0]
        fatal = False
        try:
            job: dict[str, Any] = message["job"]
            spec = JobSpec(
                job_id=str(job["job_id"]),
                page=int(job["page"]),
                outputs=tuple(OutputSpec(**o) for o in job["outputs"]),
                placeholder=bool(job.get("placeholder", False)),
            )
            deadline = time.monotonic() + float(message["timeout"])
            # Counted here too: a job over the cap stops at the first output that crosses
            # it, which is neither sent nor followed by more encoding, and this process
            # stays in the pool (the pool counts again, not trusting us).
            budget = OutputBudget(int(message["max_output_bytes"]), len(spec.outputs))
            _run_hook(spec.job_id)
            remaining = len(spec.outputs)
            outputs = engine.render(fd, int(message["size"]), spec, limits, deadline=deadline)
            with contextlib.closing(outputs):
                for item in outputs:
                    if item is None:
                        channel.send({"event": "decoded"})
                        continue
                    budget.take(len(item.data))
                    remaining -= 1
                    header: dict[str, Any] = {
                        "event": "output",
                        "index": item.index,
                        "width": item.width,
                        "height": item.height,
                    }
                    if item.placeholder is not None:
                        header["placeholder"] = item.placeholder.to_dict()
                    channel.send(
                        header,
                        item.data,
                        hold=remaining == 0,  # goes out together with "done"
                    )
            channel.send({"event": "done"})
        except ChannelClosed:
            return 0
        except PreviewError as exc:
            fatal = isinstance(exc, RenderMemoryExceeded)
            _report(channel, exc, exiting=fatal)
        except MemoryError:
            fatal = True
            _report(channel, RenderMemoryExceeded(engine.memory_message(limits)), exiting=True)
        except Exception:
            # A bug, not a property of the file: log it for operators, tell the job little,
            # and leave: whatever state the bug left behind must not meet the next job.
            traceback.print_exc()
            fatal = True
            crash = RenderCrashed("the renderer failed unexpectedly on this source")
            _report(channel, crash, exiting=True)
        finally:
            os.close(fd)
        if fatal:
            # After an allocation failure the heap may be fragmented or half-freed.
            return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))

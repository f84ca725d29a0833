"""The render children's seccomp filter: no sockets, with everything a render needs intact."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import imagegen as g
import pytest
from render_helpers import Workspace

from dramatiq_preview.models import OutputSpec
from dramatiq_preview.rendering import Renderer

PACKAGE_PARENT = Path(__file__).resolve().parents[2]

if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
    pytest.skip(
        f"the seccomp filter covers x86-64 and AArch64 Linux, not {platform.machine()}",
        allow_module_level=True,
    )

# Runs in a fresh interpreter: the filter cannot be taken off the process that installs it.
_PROBE = textwrap.dedent(
    """
    import json, os, socket, subprocess, sys
    from dramatiq_preview.rendering import sandbox
    port = int(sys.argv[1])
    # Another process of the same user, started before the filter (as the worker is).
    sleeper = subprocess.Popen(["sleep", "60"])
    report = {"restrict": sandbox.restrict()}
    def attempt(name, call):
        try:
            call()
            report[name] = "allowed"
        except PermissionError:
            report[name] = "refused"
    attempt("tcp", lambda: socket.create_connection(("127.0.0.1", port), timeout=2))
    attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    attempt("ipv6", lambda: socket.socket(socket.AF_INET6))
    attempt("unix", lambda: socket.socket(socket.AF_UNIX))
    attempt("socketpair", socket.socketpair)
    # That process is out of reach: no pidfd, no ptrace.
    attempt("pidfd_open", lambda: os.pidfd_open(sleeper.pid))
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    attached = libc.ptrace(16, sleeper.pid, None, None)  # PTRACE_ATTACH
    report["ptrace"] = "refused" if attached == -1 and ctypes.get_errno() == 13 else "allowed"
    sleeper.kill()
    # A program the child runs inherits the filter, and still runs.
    grandchild = subprocess.run(
        [sys.executable, "-c", "import socket; socket.socket()"], capture_output=True
    )
    report["grandchild_refused"] = b"PermissionError" in grandchild.stderr
    report["pdftocairo_runs"] = subprocess.run(["pdftocairo", "-v"],
                                               capture_output=True).returncode == 0
    with open(sys.argv[2], "wb") as fh:  # files still work
        fh.write(b"ok")
    print(json.dumps(report))
    """
)


def test_the_filter_refuses_every_socket_and_nothing_else(tmp_path: Path) -> None:
    """Given a process that installed the filter, then it cannot open a TCP, UDP, IPv6 or
    Unix socket, nor a socket pair (a listening server sees no connection), a program it
    starts cannot either, and files and subprocesses still work."""
    import json

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE, str(port), str(tmp_path / "written")],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PYTHONPATH": str(PACKAGE_PARENT), "PATH": "/usr/bin:/bin"},
        )
        assert probe.returncode == 0, probe.stderr
        with pytest.raises(TimeoutError):
            listener.accept()
    report = json.loads(probe.stdout)
    assert report["restrict"] is None
    for name in ("tcp", "udp", "ipv6", "unix", "socketpair", "pidfd_open", "ptrace"):
        assert report[name] == "refused", name
    assert report["grandchild_refused"] is True
    assert report["pdftocairo_runs"] is True
    assert (tmp_path / "written").read_bytes() == b"ok"


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def test_pool_children_render_under_the_filter(renderer: Renderer, workspace: Workspace) -> None:
    """Given the render pool, then every child runs in seccomp filter mode with
    no_new_privs, and renders images and PDF pages (poppler runs under the filter too)."""
    png = workspace.add("sandbox/a.png", g.png(g.quadrants(40, 40)))
    pdf = workspace.add("sandbox/a.pdf", g.pdf([g.RED]))
    for name in (png, pdf):
        [result] = workspace.render(renderer, workspace.job(name, [OutputSpec(20, 20, "png")]))
        assert max(result.width, result.height) == 20  # contain: the long side fits
    pids = renderer.child_pids()
    assert pids
    for pid in pids:
        status = _status(pid)
        assert status["Seccomp"] == "2", status.get("Seccomp")  # SECCOMP_MODE_FILTER
        assert status["NoNewPrivs"] == "1"

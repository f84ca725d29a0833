"""The render children's seccomp filter: no sockets, with everything a render needs intact."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
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
    terminal, tty = os.openpty()  # a terminal, as the worker's stderr may be
    report = {"restrict": sandbox.restrict_calls()}
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
    import fcntl, termios
    try:
        fcntl.ioctl(tty, termios.TIOCSTI, b"x")
        report["tiocsti"] = "allowed"
    except OSError as exc:  # EACCES is the filter's answer; the kernel's own are EPERM/EIO
        report["tiocsti"] = "refused" if exc.errno == 13 else f"errno {exc.errno}"
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
    for name in ("tcp", "udp", "ipv6", "unix", "socketpair", "pidfd_open", "ptrace", "tiocsti"):
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


# Runs a render pool in a process that forbids seccomp filters, as some container runtimes
# and old kernels do: prctl(PR_SET_SECCOMP) and seccomp() fail with EINVAL.
_NO_FILTERS = textwrap.dedent(
    """
    import ctypes, json, logging, platform, sys, time
    from pathlib import Path
    prctl_nr, seccomp_nr = {"x86_64": (157, 317), "aarch64": (167, 277)}[platform.machine()]
    ALLOW, EINVAL = 0x7FFF0000, 0x00050000 | 22
    program = [
        (0x20, 0, 0, 0),  # load the call number
        (0x15, 0, 3, prctl_nr),
        (0x20, 0, 0, 16),  # prctl: load its first argument
        (0x15, 3, 0, 22),  # PR_SET_SECCOMP -> refuse
        (0x06, 0, 0, ALLOW),
        (0x15, 1, 0, seccomp_nr),  # seccomp() -> refuse
        (0x06, 0, 0, ALLOW),
        (0x06, 0, 0, EINVAL),
    ]
    class Insn(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte),
                    ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    insns = (Insn * len(program))(*(Insn(*i) for i in program))
    prog = Prog(len(program), insns)
    assert libc.prctl(38, 1, 0, 0, 0) == 0
    assert libc.prctl(22, 2, ctypes.addressof(prog), 0, 0) == 0

    warnings = []
    class Keep(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())
    logging.getLogger("dramatiq_preview").addHandler(Keep(logging.WARNING))

    from dramatiq_preview.config import Settings
    from dramatiq_preview.models import JobSpec, OutputSpec
    from dramatiq_preview.rendering import Renderer
    from dramatiq_preview.sources import open_source
    from dramatiq_preview.storage import destinations
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    settings = Settings(source_root=root, output_dir=out)
    renderer = Renderer(settings, processes=1)
    spec = JobSpec(job_id="fallback", source_path="a.png", outputs=(OutputSpec(8, 8, "png"),))
    with open_source(spec, settings) as source:
        [result] = renderer.render(spec, source, destinations(out, spec),
                                   deadline=time.monotonic() + 30)
    renderer.close()
    print(json.dumps({"size": [result.width, result.height], "warnings": warnings}))
    """
)


def test_without_seccomp_the_pool_warns_once_and_still_renders(tmp_path: Path) -> None:
    """Given a kernel (or container) that refuses seccomp filters, then the worker logs why
    the render processes run without theirs, and renders as before."""
    import json

    root, out = tmp_path / "src", tmp_path / "out"
    root.mkdir()
    out.mkdir()
    (root / "a.png").write_bytes(g.png(g.quadrants(16, 16)))
    run = subprocess.run(
        [sys.executable, "-c", _NO_FILTERS, str(root), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PYTHONPATH": str(PACKAGE_PARENT),
            "PATH": "/usr/bin:/bin",
            "PREVIEW_REDIS_URL": "redis://127.0.0.1:1/0",
        },
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["size"] == [8, 8]
    [warning] = report["warnings"]
    assert "without part of their sandbox" in warning and "PR_SET_SECCOMP" in warning


_FILES_PROBE = textwrap.dedent(
    """
    import json, os, subprocess, sys
    del sys.path[0]  # as the render child's bootstrap does: not the working directory
    from dramatiq_preview.rendering import sandbox
    secret, scratch = sys.argv[1], sys.argv[2]
    # Another process of this user, as the worker is (it must not hold our output pipe).
    sleeper = subprocess.Popen(["sleep", "20"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    held = os.open(secret, os.O_RDONLY)  # opened before, like a source descriptor
    import ctypes
    abi = ctypes.CDLL(None).syscall(ctypes.c_long(444), None, ctypes.c_long(0), ctypes.c_long(1))
    report = {"restrict": sandbox.restrict_files(), "abi": abi, "sleeper": sleeper.pid}
    def attempt(name, call):
        try:
            report[name] = call()
        except PermissionError:
            report[name] = "refused"
    attempt("secret", lambda: open(secret).read())
    attempt("write", lambda: open(os.path.join(scratch, "new.txt"), "w").write("x"))
    attempt("worker_environ", lambda: open(f"/proc/{sleeper.pid}/environ", "rb").read())
    attempt("held", lambda: os.pread(held, 100, 0).decode())
    attempt("system", lambda: open("/usr/bin/env", "rb").read(4).hex())
    attempt("pdftocairo", lambda: subprocess.run(["pdftocairo", "-v"],
                                                 capture_output=True).returncode)
    attempt("etc", lambda: open("/etc/hostname").read())  # /etc is not all readable
    attempt("grandchild", lambda: subprocess.run(["cat", secret],
                                                 capture_output=True).returncode)
    attempt("signal", lambda: os.kill(sleeper.pid, 9))  # Landlock ABI 6: scoped
    print(json.dumps(report))
    """
)


def test_files_outside_the_system_and_python_are_out_of_reach(tmp_path: Path) -> None:
    """Given a process that applied the file rules (Landlock), then it cannot read a file
    outside the system and Python paths, write anywhere, or read another process's
    environment; a descriptor it held before stays readable, and programs still run."""
    import json

    secret = tmp_path / "secret.txt"
    secret.write_text("the database password")
    probe = subprocess.run(
        [sys.executable, "-c", _FILES_PROBE, str(secret), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PYTHONPATH": str(PACKAGE_PARENT), "PATH": "/usr/bin:/bin"},
    )
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout)
    if report["restrict"] is not None:
        pytest.skip(f"this kernel cannot confine files: {report['restrict']}")
    assert report["secret"] == "refused"
    assert report["write"] == "refused" and not (tmp_path / "new.txt").exists()
    assert report["worker_environ"] == "refused"
    assert report["held"] == "the database password"
    assert report["system"] == "7f454c46"  # an ELF header
    assert report["pdftocairo"] == 0
    assert report["etc"] == "refused"
    assert report["grandchild"] != 0  # cat cannot read it either
    if report["abi"] >= 6:
        assert report["signal"] == "refused"
    with contextlib.suppress(ProcessLookupError):
        os.kill(report["sleeper"], signal.SIGKILL)  # the probe could not


def test_pool_children_keep_no_secrets_of_the_worker_environment(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Given secrets in the worker's environment, then a render child's environment holds
    none of them (only PATH, locale, Python's, ImageMagick's), and it starts fully confined:
    the pool logs no warning."""
    monkeypatch.setenv("PREVIEW_REDIS_URL", "redis://:hunter2@redis.internal:6379/0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter3")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/lib")  # kept: a Python built elsewhere needs it
    pool = Renderer(workspace.settings, processes=1)
    try:
        with caplog.at_level("WARNING", logger="dramatiq_preview.rendering.pool"):
            name = workspace.add("sandbox/env.png", g.png(g.quadrants(16, 16)))
            workspace.render(pool, workspace.job(name, [OutputSpec(8, 8, "png")]))
        [pid] = pool.child_pids()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
    finally:
        pool.close()
    assert b"hunter" not in b"\0".join(environ)
    assert {"PATH", "LD_LIBRARY_PATH", "MAGICK_CONFIGURE_PATH"} <= names
    assert not {"PREVIEW_REDIS_URL", "AWS_SECRET_ACCESS_KEY", "HOME"} & names
    assert [r for r in caplog.records if "sandbox" in r.getMessage()] == []


def test_a_process_with_threads_is_not_half_confined() -> None:
    """Landlock and seccomp confine the calling thread only: a process that already runs
    another thread gets nothing installed, and says why."""
    code = textwrap.dedent(
        """
        import threading, time
        from dramatiq_preview.rendering import sandbox
        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
        print(sandbox.restrict())
        print(open("/proc/self/status").read().split("Seccomp:")[1].split()[0])
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(PACKAGE_PARENT), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr
    reason, seccomp_mode = run.stdout.split("\n")[:2]
    assert "2 threads" in reason
    assert seccomp_mode == "0"

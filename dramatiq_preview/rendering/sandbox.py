"""A seccomp filter for render children: no new sockets, no way into the worker.

A decoder exploited by a hostile file runs with the rights of the render child.  The child
has all it needs open before it takes its first job (its Unix socket to the worker; each
source arrives as a descriptor over that socket), and neither ImageMagick with our policy nor
``pdftocairo`` opens a socket.  So, once started, the child installs a filter that answers
``EACCES`` to

* ``socket()`` and ``socketpair()``: no connection to the network, to Redis, to a local
  daemon's Unix socket (Docker's, say), no exfiltration;
* ``io_uring_setup()``: io_uring can open and connect sockets without those calls;
* ``ptrace()``, ``process_vm_readv()``/``process_vm_writev()``, ``pidfd_open()`` and
  ``pidfd_getfd()``: no way into the worker (same user), whose Redis connections it could
  otherwise borrow;
* every call of another ABI (x32, i386), where the same calls have other numbers.

Not covered: ``/proc/<worker pid>/mem`` stays writable for a process of the same user unless
the kernel's Yama ``ptrace_scope`` is 1 or more (it then allows only descendants) or the
worker runs as another user than its children; see docs/security.md.

It first sets ``no_new_privs`` (the kernel's condition for an unprivileged filter; a setuid
program run from the child then gains nothing).  Filters are inherited: ``pdftocairo``, run
by the child, is bound by it too.  Only x86-64 and AArch64 Linux are covered; elsewhere
:func:`restrict` installs nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import sys

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

# Classic BPF, as seccomp reads it: load a 32-bit word of struct seccomp_data, compare, return.
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_OFFSET_NR = 0
_OFFSET_ARCH = 4

_X32_SYSCALL_BIT = 0x40000000


class _Arch:
    def __init__(self, audit_arch: int, denied: dict[str, int], *, x32: bool) -> None:
        self.audit_arch = audit_arch
        self.denied = denied
        self.x32 = x32


#: The system calls the filter refuses: new sockets, io_uring (which opens sockets by
#: itself), and the ways into another process of the same user (the worker holds Redis
#: connections): tracing it, reading or writing its memory, taking its descriptors.
DENIED_CALLS = (
    "socket",
    "socketpair",
    "io_uring_setup",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_open",
    "pidfd_getfd",
)

_ARCHES = {
    "x86_64": _Arch(
        0xC000003E,
        dict(zip(DENIED_CALLS, (41, 53, 425, 101, 310, 311, 434, 438), strict=True)),
        x32=True,
    ),
    "aarch64": _Arch(
        0xC00000B7,
        dict(zip(DENIED_CALLS, (198, 199, 425, 117, 270, 271, 434, 438), strict=True)),
        x32=False,
    ),
}


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def program(arch: _Arch) -> list[tuple[int, int, int, int]]:
    """The filter for ``arch`` as ``(code, jt, jf, k)`` instructions."""
    deny = "deny"
    body: list[tuple[int, int | str, int | str, int]] = [
        (_LD_W_ABS, 0, 0, _OFFSET_ARCH),
        (_JEQ_K, 0, deny, arch.audit_arch),  # another ABI: refused outright
        (_LD_W_ABS, 0, 0, _OFFSET_NR),
    ]
    if arch.x32:
        body.append((_JGE_K, deny, 0, _X32_SYSCALL_BIT))
    body += [(_JEQ_K, deny, 0, nr) for nr in arch.denied.values()]
    body.append((_RET_K, 0, 0, _RET_ALLOW))
    deny_at = len(body)
    body.append((_RET_K, 0, 0, _RET_ERRNO | errno.EACCES))

    def offset(target: int | str, here: int) -> int:
        # Jumps count the instructions skipped after this one.
        return deny_at - here - 1 if target == deny else int(target)

    return [(c, offset(t, i), offset(f, i), k) for i, (c, t, f, k) in enumerate(body)]


def restrict() -> str | None:
    """Install the filter on this process (and its future children).

    Returns:
      None when installed, else why not (an unsupported platform, or a kernel or container
      that refuses seccomp filters).
    """
    arch = _ARCHES.get(platform.machine()) if sys.platform == "linux" else None
    # The machine is the kernel's: a 32-bit interpreter on a 64-bit kernel would have every
    # one of its own calls refused as "another ABI".
    if arch is None or sys.maxsize <= 2**32:
        return f"no seccomp filter for {sys.platform}/{platform.machine()} (64-bit Linux only)"
    # prctl filters only the calling thread (and what it starts later).
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        return f"the render process has {threads} threads; the filter would cover only one"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    # prctl(option, arg2, arg3, arg4, arg5): unused arguments must be 0, so pass all five.
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    libc.prctl.restype = ctypes.c_int
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return f"prctl(PR_SET_NO_NEW_PRIVS) failed: {errno.errorcode.get(ctypes.get_errno())}"
    instructions = program(arch)
    filters = (_SockFilter * len(instructions))(*(_SockFilter(*i) for i in instructions))
    fprog = _SockFprog(len(instructions), filters)
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        return f"prctl(PR_SET_SECCOMP) failed: {errno.errorcode.get(ctypes.get_errno())}"
    return None

"""The render child's sandbox: it can read only system and Python files, write none, open
no socket, and not reach into the worker.

A decoder exploited by a hostile file runs with the rights of the render child.  The child
has all it needs open before it takes its first job (its Unix socket to the worker; each
source arrives as a descriptor over that socket), and neither ImageMagick with our policy,
libheif, nor ``pdftocairo`` and ``rsvg-convert`` open a socket or write a file.  So, once
started, the child confines itself (:func:`restrict`), and the programs it runs
(``pdftocairo``, ``rsvg-convert``) inherit both parts:

1. **Files** (Landlock, :func:`restrict_files`): read and execute only :func:`readable_paths`
   (programs, libraries, /etc, font caches, Python and this package, its own /proc entries),
   write only ``/dev/null``.  Home directories, application directories, /tmp and the
   source root are out of reach, so a hostile file cannot have the child read a secret and
   copy it into an output (the CVE-2022-44268 pattern).  Landlock also denies it
   ``ptrace`` and ``/proc/<pid>/mem``/``environ`` of processes outside its sandbox, the worker
   included.
2. **System calls** (seccomp, :func:`restrict_calls`), answered with ``EACCES``:

   * ``socket()`` and ``socketpair()``: no connection to the network, to Redis, to a local
     daemon's Unix socket (Docker's, say);
   * ``io_uring_setup()``: io_uring can open and connect sockets without those calls;
   * ``ptrace()``, ``process_vm_readv()``/``process_vm_writev()``, ``pidfd_open()`` and
     ``pidfd_getfd()``: no way into the worker (same user), whose Redis connections it
     could otherwise borrow, on kernels without Landlock too;
   * every call of another ABI (x32, i386), where the same calls have other numbers.

Both set ``no_new_privs`` (the kernel's condition for unprivileged confinement; a setuid
program run from the child then gains nothing).  Landlock needs Linux 5.13 with Landlock
enabled; the seccomp filter covers x86-64 and AArch64 with a 64-bit Python.  Where either is
unavailable, :func:`restrict` applies the other and says what is missing; the pool logs it.
The child's environment is also stripped of the worker's variables
(``pool.child_environment``): it holds no secrets to copy.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import platform
import stat
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
_OFFSET_ARG1 = 24  # low 32 bits of args[1] (little-endian)
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C

_X32_SYSCALL_BIT = 0x40000000


class _Arch:
    def __init__(self, audit_arch: int, denied: dict[str, int], *, ioctl: int, x32: bool) -> None:
        self.audit_arch = audit_arch
        self.denied = denied
        self.ioctl = ioctl
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
        ioctl=16,
        x32=True,
    ),
    "aarch64": _Arch(
        0xC00000B7,
        dict(zip(DENIED_CALLS, (198, 199, 425, 117, 270, 271, 434, 438), strict=True)),
        ioctl=29,
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
    # ioctl(fd, TIOCSTI or TIOCLINUX): no typing into a terminal the worker's stderr is on.
    body += [
        (_JEQ_K, 0, 3, arch.ioctl),  # not ioctl: on to "allow"
        (_LD_W_ABS, 0, 0, _OFFSET_ARG1),
        (_JEQ_K, deny, 0, _TIOCSTI),
        (_JEQ_K, deny, 0, _TIOCLINUX),
    ]
    body.append((_RET_K, 0, 0, _RET_ALLOW))
    deny_at = len(body)
    body.append((_RET_K, 0, 0, _RET_ERRNO | errno.EACCES))

    def offset(target: int | str, here: int) -> int:
        # Jumps count the instructions skipped after this one.
        return deny_at - here - 1 if target == deny else int(target)

    return [(c, offset(t, i), offset(f, i), k) for i, (c, t, f, k) in enumerate(body)]


def restrict() -> str | None:
    """Confine this process (and the programs it starts): files first, then system calls.

    Returns:
      None when both are in force, else what is missing and why (an unsupported platform,
      or a kernel or container that refuses Landlock or seccomp); the rest still applies.
    """
    # Both prctl(PR_SET_SECCOMP) and landlock_restrict_self confine the calling thread only
    # (and what it starts later).
    threads = len(os.listdir("/proc/self/task")) if sys.platform == "linux" else 1
    if threads != 1:
        return f"the render process has {threads} threads; confinement would cover only one"
    problems = [p for p in (restrict_files(), restrict_calls()) if p]
    return "; ".join(problems) or None


def restrict_calls() -> str | None:
    """Install the seccomp filter on this process (and its future children).

    Returns:
      None when installed, else why not (an unsupported platform, or a kernel or container
      that refuses seccomp filters).
    """
    arch = _ARCHES.get(platform.machine()) if sys.platform == "linux" else None
    # The machine is the kernel's: a 32-bit interpreter on a 64-bit kernel would have every
    # one of its own calls refused as "another ABI".
    if arch is None or sys.maxsize <= 2**32:
        return f"no seccomp filter for {sys.platform}/{platform.machine()} (64-bit Linux only)"
    libc = _libc()
    problem = _no_new_privs(libc)
    if problem:
        return problem
    instructions = program(arch)
    filters = (_SockFilter * len(instructions))(*(_SockFilter(*i) for i in instructions))
    fprog = _SockFprog(len(instructions), filters)
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        return f"prctl(PR_SET_SECCOMP) failed: {_last_error()}"
    return None


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    # prctl(option, arg2, arg3, arg4, arg5): unused arguments must be 0, so pass all five.
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    libc.prctl.restype = ctypes.c_int
    libc.syscall.restype = ctypes.c_long
    return libc


def _last_error() -> str:
    return str(errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()))


def _no_new_privs(libc: ctypes.CDLL) -> str | None:
    """Set ``no_new_privs``, the kernel's condition for both kinds of confinement."""
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return f"prctl(PR_SET_NO_NEW_PRIVS) failed: {_last_error()}"
    return None


# --- files: Landlock ---------------------------------------------------------------------

_SYS_LANDLOCK_CREATE_RULESET = 444  # the same numbers on every architecture
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_ABI1 = (1 << 13) - 1  # execute ... make_sym: every right of Landlock ABI 1
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_NET_BIND_TCP = 1 << 0  # ABI 4: handled and never allowed, so no TCP even without seccomp
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6: no signals to, no abstract sockets of,
_SCOPE_SIGNAL = 1 << 1  # processes outside the sandbox (the worker, the user's others)
_READ = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR

#: What the system side of a render reads: programs and libraries (ImageMagick's coder
#: modules, poppler), the few files of /etc they use (the linker cache, ImageMagick's
#: configuration and policy, fonts, time zone, locale aliases, user names), font caches, and
#: the process's own /proc entries (not the worker's).  Home directories, the rest of /etc
#: (where services keep secrets), /srv, /var, /opt, /tmp and the source root are not here:
#: sources arrive as open descriptors.
SYSTEM_PATHS = (
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/bin",
    "/sbin",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/fonts",
    "/etc/ImageMagick-6",
    "/etc/ImageMagick-7",
    "/etc/localtime",
    "/etc/locale.alias",
    "/etc/mime.types",
    "/etc/papersize",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/proc/self",  # this process's own entries only (resolved when the rules are made)
    "/var/cache/fontconfig",
)
_DEVICES = (("/dev/null", _FS_READ_FILE | _FS_WRITE_FILE), ("/dev/urandom", _FS_READ_FILE))


def readable_paths() -> list[str]:
    """Every path a render child may read after :func:`restrict_files`: the system ones;
    Python's prefixes, standard library and site-packages (not the rest of ``sys.path``,
    which may name an application directory); the directories of this package and of Wand;
    ImageMagick's configure path; and ``LD_LIBRARY_PATH``."""
    import site
    import sysconfig

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    python = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    python += [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    python += [p for p in site.getsitepackages() if p in sys.path]
    modules = []
    wand = sys.modules.get("wand")
    if wand is not None and wand.__file__:
        modules.append(os.path.dirname(os.path.abspath(wand.__file__)))
    split = os.pathsep
    env = [os.environ.get("MAGICK_CONFIGURE_PATH", ""), os.environ.get("LD_LIBRARY_PATH", "")]
    extra = [p for value in env for p in value.split(split) if os.path.isabs(p)]
    paths = [*SYSTEM_PATHS, *python, package, *modules, *extra]
    return list(dict.fromkeys(os.path.realpath(p) for p in paths if p and os.path.exists(p)))


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),  # ABI 4
        ("scoped", ctypes.c_uint64),  # ABI 6
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def restrict_files() -> str | None:
    """Allow this process (and the programs it starts) to read and run only
    :func:`readable_paths`, and to write nothing but ``/dev/null``; what is already open
    (the worker's socket, each source descriptor) stays usable.  Landlock also keeps it out
    of processes outside its sandbox: no ``ptrace``, no ``/proc/<worker pid>/mem``; from
    ABI 4 no TCP, and from ABI 6 no signals to them and no abstract Unix sockets of theirs.

    Returns:
      None when in force, else why not (no Landlock in this kernel, say).
    """
    if sys.platform != "linux":
        return f"no Landlock on {sys.platform}"
    libc = _libc()

    def call(*args: object) -> int:
        return int(libc.syscall(*(ctypes.c_long(a) if isinstance(a, int) else a for a in args)))

    abi = call(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return f"no Landlock in this kernel ({_last_error()})"
    handled = _FS_ABI1
    handled |= _FS_REFER if abi >= 2 else 0
    handled |= _FS_TRUNCATE if abi >= 3 else 0
    handled |= _FS_IOCTL_DEV if abi >= 5 else 0
    attr = _RulesetAttr(handled)
    size = 8  # the struct as the kernel's ABI knows it
    if abi >= 4:
        attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP
        size = 16
    if abi >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
        size = 24
    ruleset = call(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        return f"landlock_create_ruleset failed: {_last_error()}"
    try:
        rules = [(p, _READ) for p in readable_paths()] + list(_DEVICES)
        for path, access in rules:
            try:
                parent = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if not stat.S_ISDIR(os.fstat(parent).st_mode):
                    access &= _FILE_RIGHTS
                rule = _PathBeneath(access & handled, parent)
                # A rule that fails only leaves its path out: stricter, never looser.
                call(
                    _SYS_LANDLOCK_ADD_RULE,
                    ruleset,
                    _LANDLOCK_RULE_PATH_BENEATH,
                    ctypes.byref(rule),
                    0,
                )
            finally:
                os.close(parent)
        problem = _no_new_privs(libc)
        if problem:
            return problem
        if call(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            return f"landlock_restrict_self failed: {_last_error()}"
    finally:
        os.close(ruleset)
    return None

"""Tie a process's life to its parent's: Linux's ``PR_SET_PDEATHSIG``.

Render children ask for it first thing, and so do the poppler tools they run (between fork
and exec), so no decoder outlives the worker that wanted its result.  A module of its own,
importing nothing of ours, so that :mod:`.child` and :mod:`.pdf` share it without importing
each other.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent thread dies (no-op elsewhere).

    The signal fires when the *thread* that started this process exits, not the whole
    parent process; :class:`~dramatiq_preview.rendering.pool.Renderer` starts its children
    from one long-lived thread for that reason.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

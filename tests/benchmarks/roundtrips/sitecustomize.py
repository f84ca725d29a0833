"""Counts this process's Redis round trips, for ``bench_overhead.py`` (issue 17, target 2).

Python imports ``sitecustomize`` at start-up from ``sys.path``; the benchmark puts this
directory on ``PYTHONPATH`` of the worker it measures, with ``BENCH_ROUNDTRIPS_DIR`` set.
Every call of redis-py's ``send_packed_command`` is one round trip: one command, one
pipeline, or one script call (``EVALSHA``), whatever the server then runs for it.  A thread
writes the count to ``$BENCH_ROUNDTRIPS_DIR/<pid>`` every 0.2 s; it is restarted in
processes that ``dramatiq`` forks.  Without the variable, nothing is changed.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

_DIR = os.environ.get("BENCH_ROUNDTRIPS_DIR")
_count = 0
_lock = threading.Lock()


def _writer() -> None:
    path = os.path.join(_DIR or ".", str(os.getpid()))
    last = 0  # a process that makes no round trip writes nothing (render children)
    while True:
        if _count != last:
            last = _count
            with open(path + ".tmp", "w") as fh:
                fh.write(str(last))
            os.replace(path + ".tmp", path)
        time.sleep(0.2)


def _start() -> None:
    global _count
    _count = 0
    threading.Thread(target=_writer, name="roundtrip-counter", daemon=True).start()


def _install() -> None:
    from redis.connection import AbstractConnection

    original = AbstractConnection.send_packed_command

    def counted(self, command, check_health=True):  # type: ignore[no-untyped-def]
        global _count
        with _lock:
            _count += 1
        return original(self, command, check_health)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    _start()
    os.register_at_fork(after_in_child=_start)


if _DIR:
    # A process without redis-py makes no round trip.
    with contextlib.suppress(ImportError):
        _install()

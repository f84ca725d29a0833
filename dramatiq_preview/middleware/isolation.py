"""Isolation: which render deliveries a worker process runs, and running a suspect alone.

When a worker process dies, every render it was running dies with it, and the job that
killed it cannot be told from the jobs beside it.  So each delivery's claim names the
others its process runs (its "company", from :class:`RenderGate`): a death in company proves
nothing against a job, a death alone does (``lua/claim.lua``).  A job with a death on its
record is a suspect: its next delivery runs alone in its process (:meth:`RenderGate.isolate`
waits until the renders under way end and lets none start meanwhile), so that it either ends
cleanly or dies alone, and kills no ordinary job beside it.  A poison pill is then failed as
``worker_lost`` after ``PREVIEW_MAX_DELIVERIES`` deaths, and the job that merely shared its
process the first time renders alone and succeeds.

The gate is per worker process (the unit that dies), shared by its worker threads.
"""

from __future__ import annotations

import threading
import time


class RenderGate:
    """The render deliveries of one worker process, and the one running alone, if any.

    Ordinary deliveries :meth:`enter` side by side; a suspect :meth:`isolate`\\ s: it waits
    for the process to have no render under way, and no ordinary delivery enters while a
    suspect waits or runs (suspects go first, one at a time).  Every wait is bounded: a
    render holds the gate for at most its time limit and the write of its end, so the
    callers pass about that.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        #: thread id -> (job_id, token) of each delivery in the gate.
        self._running: dict[int, tuple[str, str]] = {}
        self._alone: int | None = None
        self._waiting = 0

    def enter(self, job_id: str, token: str, *, timeout: float) -> list[tuple[str, str]]:
        """Register the current thread's delivery; wait (up to ``timeout`` seconds) while a
        suspect waits or runs alone.  Returns the other deliveries under way (the company
        its claim names), the same job's other copies excepted."""
        me = threading.get_ident()
        end = time.monotonic() + timeout
        with self._cond:
            while self._alone is not None or self._waiting:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            others = [v for k, v in self._running.items() if k != me and v[0] != job_id]
            self._running[me] = (job_id, token)
            return others

    def isolate(self, job_id: str, token: str, *, timeout: float) -> bool:
        """Leave the gate, then wait (up to ``timeout`` seconds) to run alone: no other
        delivery under way, none entering.  Returns whether it does; when False, the
        current thread is no longer in the gate."""
        me = threading.get_ident()
        end = time.monotonic() + timeout
        with self._cond:
            self._running.pop(me, None)
            self._waiting += 1
            self._cond.notify_all()
            try:
                while self._alone is not None or self._running:
                    remaining = end - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                self._alone = me
                self._running[me] = (job_id, token)
                return True
            finally:
                self._waiting -= 1
                self._cond.notify_all()

    def leave(self) -> None:
        """Take the current thread's delivery out (a no-op when it is not in)."""
        me = threading.get_ident()
        with self._cond:
            if self._running.pop(me, None) is not None or self._alone == me:
                if self._alone == me:
                    self._alone = None
                self._cond.notify_all()

    @property
    def running(self) -> int:
        """How many deliveries are in the gate."""
        with self._cond:
            return len(self._running)


__all__ = ["RenderGate"]

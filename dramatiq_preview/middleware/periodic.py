"""A worker process's background chore: a daemon thread that calls :meth:`tick` over and over.

Presence beats, broker maintenance and the retention sweep each run this way; they differ in
what one tick does and in how long to wait before the first and between two ticks.
"""

from __future__ import annotations

import threading
from typing import TypeVar

_P = TypeVar("_P", bound="PeriodicThread")


class PeriodicThread:
    """Call :meth:`tick` from a daemon thread named :attr:`name`: after :meth:`first_delay`,
    then after each :meth:`next_delay`, until :meth:`stop`.

    :meth:`tick` must handle its own errors (log them); the thread carries on.
    """

    name = "preview-periodic"

    def __init__(self) -> None:
        #: Set by :meth:`stop`; a long tick may watch it to end early.
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def first_delay(self) -> float:
        """Seconds before the first tick (default: at once)."""
        return 0.0

    def next_delay(self) -> float:
        """Seconds between the end of one tick and the next."""
        raise NotImplementedError

    def tick(self) -> None:
        """One round of the chore."""
        raise NotImplementedError

    def start(self: _P) -> _P:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the tick under way, if any."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def _run(self) -> None:
        delay = self.first_delay()
        while not self.stopping.wait(delay):
            self.tick()
            delay = self.next_delay()


__all__ = ["PeriodicThread"]

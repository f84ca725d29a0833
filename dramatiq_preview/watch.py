"""Follow one job's events: its current status, then each change, until a final state.

Every transition script bumps the record's ``seq`` and, when the channel
``{ns}:job:{jobId}:events`` has a subscriber, publishes the whole record there in the same
atomic step (:mod:`dramatiq_preview.state`).  A watch subscribes, waits until Redis confirms
the subscription, and only then reads the record: every later change is published to a
subscriber that is already there, so none is missed.  A change published between the
subscription and the read arrives twice (in the record and as a message); ``seq`` tells
them apart, and a watch never yields an event older than one it has yielded.  A record
deleted and created again starts its ``seq`` over, under another ``incarnation``
(:class:`~dramatiq_preview.state.Version`): a message of another incarnation makes the
watch read the record, and the current record's status is yielded, whatever its ``seq``.

Pub/sub keeps no history, so a watch also re-reads the record whenever it has been idle for
``keepalive_seconds``: that catches a change published while redis-py was reconnecting the
subscriber, and a record that expired or was deleted (which nothing publishes).  Cost: one
Redis connection from the store's pool per open watch, held until it closes, and one
``HGETALL`` per idle period.  The SSE route (``GET /job/{jobId}/events``) and
:meth:`PreviewClient.wait <dramatiq_preview.client.PreviewClient.wait>` both follow jobs
with it (docs/events.md).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.client import PubSub

from .errors import JobNotFound, StateStoreUnavailable
from .state import (
    FINAL_STATES,
    JobStore,
    Version,
    record_from_event,
    status_from_record,
    version_of,
)

_T = TypeVar("_T")

#: How long Redis may take to confirm a subscription before the store counts as down.
SUBSCRIBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Event:
    """One status of the job: its :class:`~dramatiq_preview.state.Version` and the public
    status object (§5)."""

    version: Version
    status: dict[str, Any]

    @property
    def seq(self) -> int:
        """The record's change counter (rises by one per change of one record)."""
        return self.version.seq

    @property
    def id(self) -> str:
        """The event id, ``<incarnation>-<seq>`` (the ``id:`` of the SSE event)."""
        return str(self.version)

    @property
    def state(self) -> str:
        return str(self.status["state"])

    @property
    def final(self) -> bool:
        """Whether the job ended (succeeded, failed or cancelled): no event follows."""
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class KeepAlive:
    """Nothing changed for ``keepalive_seconds`` and the record is still there; ``version``
    is that of the last event (yielded or skipped as already seen)."""

    version: Version

    @property
    def seq(self) -> int:
        return self.version.seq


class JobWatch:
    """The events of one job, from a Redis subscription opened before the record is read.

    >>> with JobWatch(store, "cat-42", max_seconds=60).open() as events:
    ...     for item in events:
    ...         if isinstance(item, Event):
    ...             print(item.id, item.state, item.status["progress"])

    Iterating yields, in order: the current status (an :class:`Event`), one :class:`Event`
    per later change of state or progress, and a :class:`KeepAlive` after every idle
    ``keepalive_seconds``.  It ends after the event of a final state, or when
    ``max_seconds`` have passed since :meth:`open` began (the caller then opens another
    watch with ``last_seen``, as a browser's EventSource reconnects with ``Last-Event-ID``).
    A watch is iterated once, by one thread; ending the iteration (or :meth:`close`)
    releases its Redis connection.

    Parameters:
      store: the job store.
      job_id: the job to follow.
      last_seen: the version of the last event the caller already has.  When it is the
        current one, the current status is not yielded again, and a job already final
        yields nothing (:attr:`done`).  Any other version (an older event, or one of an
        earlier record of the same id) gets the current status.
      max_seconds: the lifetime of the watch, counted from the start of :meth:`open`, so
        the subscription's wait is part of it (None: no bound).
      keepalive_seconds: the idle time between keep-alives (and record re-reads).

    Raises (:meth:`open` and iteration):
      JobNotFound: no record for ``job_id``, or it expired or was deleted while watched.
      StateStoreUnavailable: Redis did not answer or refused a command.
      TimeoutError: (:meth:`open`) ``max_seconds`` ended before Redis confirmed the
        subscription; nothing was read.
    """

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        *,
        last_seen: Version | None = None,
        max_seconds: float | None = None,
        keepalive_seconds: float = 15.0,
    ) -> None:
        if keepalive_seconds <= 0:
            raise ValueError("keepalive_seconds must be more than 0")
        self.store = store
        self.job_id = job_id
        self.last_seen = last_seen
        self.max_seconds = max_seconds
        self.keepalive_seconds = keepalive_seconds
        self._pubsub: PubSub | None = None
        self._state = "new"  # new -> open -> iterating -> closed
        self._deadline = math.inf
        self._version = Version("", 0)
        self._status: dict[str, Any] | None = None
        self._first: Event | None = None
        self._done = False

    # -- life cycle -----------------------------------------------------------------------

    def open(self) -> JobWatch:
        """Subscribe to the job's channel, then read its record.

        Returns the watch itself.

        Raises:
          JobNotFound: the job has no record.
          StateStoreUnavailable: Redis did not answer (nothing is left open).
          TimeoutError: ``max_seconds`` ended before Redis confirmed the subscription
            (nothing is left open).
          RuntimeError: the watch was opened before.
        """
        if self._state != "new":
            raise RuntimeError("a JobWatch is opened once")
        self._state = "open"
        # The lifetime starts now, not once subscribed: a watch never outlives max_seconds
        # by the time Redis took to answer.
        if self.max_seconds is not None:
            self._deadline = time.monotonic() + self.max_seconds
        try:
            self._pubsub = self.store.client.pubsub()  # type: ignore[no-untyped-call]
            self._subscribe(self._pubsub)
            found = self.store.get_versioned(self.job_id)
            if found is None:
                raise JobNotFound(self.job_id)
        except BaseException:
            self.close()
            raise
        version, status = found
        self._version, self._status = version, status
        if self.last_seen != version:
            self._first = Event(version, status)
        else:
            self._done = status["state"] in FINAL_STATES
        return self

    def close(self) -> None:
        """Unsubscribe and give the connection back (safe to call more than once)."""
        self._state = "closed"
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            # reset() disconnects, which ends the subscription on the server.
            with contextlib.suppress(redis.RedisError, OSError):
                pubsub.close()

    def __enter__(self) -> JobWatch:
        if self._state == "new":
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the caller reads ------------------------------------------------------------

    @property
    def version(self) -> Version:
        """The version of the newest event seen (yielded, or skipped as already seen)."""
        return self._version

    @property
    def seq(self) -> int:
        """The ``seq`` of :attr:`version`."""
        return self._version.seq

    @property
    def status(self) -> dict[str, Any]:
        """The newest status seen.

        Raises:
          RuntimeError: the watch was never opened.
        """
        if self._status is None:
            raise RuntimeError("the JobWatch is not open")
        return self._status

    @property
    def done(self) -> bool:
        """Whether iterating would yield nothing: the job is final and ``last_seen`` says the
        caller has its final event already (an SSE client then gets 204)."""
        return self._done

    def __iter__(self) -> Iterator[Event | KeepAlive]:
        if self._state != "open":
            raise RuntimeError(f"a JobWatch is iterated once, after open() (it is {self._state})")
        self._state = "iterating"
        return self._events()

    # -- the loop ---------------------------------------------------------------------------

    def _events(self) -> Iterator[Event | KeepAlive]:
        try:
            first, self._first = self._first, None
            if first is not None:
                yield first
                if first.final:
                    return
            elif self._done:
                return
            idle_until = time.monotonic() + self.keepalive_seconds
            while True:
                now = time.monotonic()
                if now >= self._deadline:
                    return
                message = self._next_message(min(idle_until, self._deadline) - now)
                if message is not None:
                    event = self._on_message(message)
                    if event is None:
                        continue
                elif time.monotonic() < idle_until:
                    continue  # woken early: the lifetime bound, or a health-check answer
                else:
                    event = self._reread()
                idle_until = time.monotonic() + self.keepalive_seconds
                yield event if event is not None else KeepAlive(self._version)
                if event is not None and event.final:
                    return
        finally:
            self.close()

    def _subscribe(self, pubsub: PubSub) -> None:
        # SUBSCRIBE is sent without waiting for its answer; the record may be read only
        # after Redis confirmed it, or a change between the two could be missed.
        _guarded(lambda: pubsub.subscribe(self.store.events_channel(self.job_id)))
        unavailable = time.monotonic() + SUBSCRIBE_TIMEOUT
        while True:
            remaining = min(unavailable, self._deadline) - time.monotonic()
            if remaining <= 0:
                if self._deadline <= unavailable:
                    raise TimeoutError(
                        f"the watch of job {self.job_id!r} ended before Redis confirmed "
                        "its subscription"
                    )
                raise StateStoreUnavailable(
                    "the state store (Redis) is unavailable: no answer to SUBSCRIBE"
                )
            message = _get_message(pubsub, remaining)
            if message is not None and message.get("type") == "subscribe":
                return

    def _next_message(self, timeout: float) -> dict[str, Any] | None:
        pubsub = self._pubsub
        if pubsub is None:
            raise RuntimeError("the JobWatch is closed")
        return _get_message(pubsub, max(0.0, timeout))

    def _on_message(self, message: dict[str, Any]) -> Event | None:
        """The event a message of the subscription brings, if any."""
        kind = message.get("type")
        if kind == "message":
            return self._published(str(message["data"]))
        if kind == "subscribe":
            # redis-py reconnected and subscribed again: whatever was published meanwhile
            # is lost, so the record says what changed.
            return self._reread()
        return None

    def _published(self, data: str) -> Event | None:
        """The event of a published record, or None when it is not newer than the last.

        Raises:
          JobNotFound: (a record of another incarnation) the record is gone.
        """
        try:
            raw = record_from_event(data)
            version = version_of(raw)
        except (ValueError, TypeError):
            return None  # not a record our scripts published: nothing to follow
        if "state" not in raw:
            return None
        if version.incarnation != self._version.incarnation:
            # The record was deleted and created again while watched (its seq counts from
            # 0 again), or this is a late message of the record before the one read: only
            # the record says which one is current.
            return self._reread()
        if version.seq <= self._version.seq:
            return None
        self._version, self._status = version, status_from_record(self.job_id, raw)
        return Event(version, self._status)

    def _reread(self) -> Event | None:
        """The record as it is now: an event when its version changed, else None.

        Another incarnation is a record deleted and created again: its status is the
        truth from now on, whatever its ``seq``.

        Raises:
          JobNotFound: the record expired or was deleted.
        """
        found = self.store.get_versioned(self.job_id)
        if found is None:
            raise JobNotFound(self.job_id)
        version, status = found
        if version == self._version:
            return None
        self._version, self._status = version, status
        return Event(version, status)


def watch(
    store: JobStore,
    job_id: str,
    *,
    last_seen: Version | None = None,
    max_seconds: float | None = None,
    keepalive_seconds: float = 15.0,
) -> JobWatch:
    """An open :class:`JobWatch` of ``job_id``: subscribed, with the record read.

    Raises:
      JobNotFound: the job has no record.
      StateStoreUnavailable: Redis did not answer.
      TimeoutError: ``max_seconds`` ended before Redis confirmed the subscription.
    """
    return JobWatch(
        store,
        job_id,
        last_seen=last_seen,
        max_seconds=max_seconds,
        keepalive_seconds=keepalive_seconds,
    ).open()


def _get_message(pubsub: PubSub, timeout: float) -> dict[str, Any] | None:
    """The next message or subscription answer within ``timeout`` seconds, or None."""
    message: dict[str, Any] | None = _guarded(lambda: pubsub.get_message(timeout=timeout))
    return message


def _guarded(fn: Callable[[], _T]) -> _T:
    try:
        return fn()
    except redis.RedisError as exc:
        raise StateStoreUnavailable(
            f"the state store (Redis) is unavailable: {type(exc).__name__}"
        ) from exc


__all__ = ["SUBSCRIBE_TIMEOUT", "Event", "JobWatch", "KeepAlive", "Version", "watch"]

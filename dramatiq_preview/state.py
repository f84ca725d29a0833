"""The job state store: one Redis hash per job, changed only by atomic Lua scripts.

Keys (all under ``PREVIEW_NAMESPACE``, all with a TTL of ``PREVIEW_JOB_TTL_SECONDS`` that is
renewed on every write):

* ``{ns}:job:{jobId}`` — the job record (state, attempts, progress, times, error, result,
  metadata, the payload fingerprint, the render lease and the delivery counter).
* ``{ns}:waiting:{queue}`` — a sorted set of jobs waiting to start, scored by enqueue time;
  it gives the oldest waiting job's age without scanning the keyspace.  Entries older than
  the TTL are trimmed on one insert in 32, and the key itself expires with the TTL.
* ``{ns}:inflight`` — a sorted set of jobs running or retrying, scored by when their lease
  ends or their retry is due; a claim keeps the delivery's broker message in the record
  meanwhile, so that a job whose delivery was lost can be put back (:meth:`JobStore.sweep`).

Every transition is one script (``dramatiq_preview/lua/*.lua``, shipped in the package), so
a late ``running`` can never overwrite ``succeeded`` or ``cancelled``, and a job submitted
concurrently is created exactly once.

Events: every change of a job's state or progress bumps the record's ``seq`` and, when
the channel ``{ns}:job:{jobId}:events`` has a subscriber, publishes the whole record on it
in the same script (``lua/_shared.lua``), so a reader that subscribes first and then reads
the record misses no change (:mod:`dramatiq_preview.watch`).  ``seq`` counts within one
record: a record deleted and created again starts over, so each record also gets a random
``incarnation`` when it is created (:class:`Version`).  A final state of a job with a
webhook also arms its delivery (``webhook_seq``, ``webhook_due``; :meth:`JobStore.webhook`).

A job costs three round trips to the store on the happy path (create, claim, finish) plus
progress updates, which are throttled (``PREVIEW_PROGRESS_INTERVAL_MS``).  With a Redis
broker on the same server, create can also push the job's broker message
(:class:`BrokerMessage`).  Each script's answer is an enum (:class:`CreateOutcome`,
:class:`ClaimVerdict`, ...) that compares equal to its text.
"""

from __future__ import annotations

import enum
import functools
import json
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from typing import Any, NamedTuple, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .config import Settings
from .errors import StateStoreUnavailable, WorkerLost
from .fused_enqueue import BrokerMessage
from .models import PRIORITIES
from .validation import fingerprint

#: The fingerprint of a record made for a refused message (:meth:`JobStore.record_refused`).
UNRECORDED_FINGERPRINT = "unrecorded"

STATES = ("queued", "running", "retrying", "succeeded", "failed", "cancelled")
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})

_T = TypeVar("_T")

#: The scripts of the transitions, in ``dramatiq_preview/lua/NAME.lua``.
SCRIPTS = (
    "create",
    "claim",
    "progress",
    "finish",
    "cancel",
    "requeue",
    "webhook",
    "recent",
    "sweep",
)
#: The functions every script starts with (``lua/_shared.lua``).
SHARED = "_shared"


@functools.cache
def load_script(name: str) -> str:
    """The Lua source of one script as it runs: the shared functions, then the script
    (both read from the installed package)."""
    folder = resources.files("dramatiq_preview") / "lua"
    shared = (folder / f"{SHARED}.lua").read_text(encoding="utf-8")
    return shared + "\n" + (folder / f"{name}.lua").read_text(encoding="utf-8")


class _Answer(str, enum.Enum):
    """A script's answer: compares equal to its text (``ClaimVerdict.RUN == "run"``) and
    prints as it (Python 3.11 would print ``ClaimVerdict.RUN`` for a ``str`` mix-in)."""

    def __str__(self) -> str:
        return str(self.value)


class CreateOutcome(_Answer):
    """What :meth:`JobStore.create` did."""

    CREATED = "created"
    #: The id exists with the same payload fingerprint.
    DUPLICATE = "duplicate"
    #: The id exists with another payload.
    CONFLICT = "conflict"


class ClaimVerdict(_Answer):
    """What :meth:`JobStore.claim` decided for one delivery."""

    #: Render it: the lease is this delivery's.
    RUN = "run"
    #: Already succeeded or failed.
    DONE = "done"
    #: Cancelled before, and counted already.
    CANCELLED = "cancelled"
    #: Cancelled while it waited, and this is the first delivery to see it: count it.
    CANCELLED_WAITING = "cancelled_waiting"
    #: Its cancellation was requested while a delivery that then died held it; this claim
    #: ended it.
    CANCELLED_NOW = "cancelled_now"
    #: Another delivery holds a live lease (until ``Claim.lease_until``).
    BUSY = "busy"
    #: A delivery of this job died: it must run alone in its worker process (claim again
    #: with ``isolated=True``).  Nothing was taken.
    ISOLATE = "isolate"
    #: Failed now as ``worker_lost``: too many deliveries died.
    LOST = "lost"
    #: No record.
    MISSING = "missing"


class ProgressVerdict(enum.IntEnum):
    """What :meth:`JobStore.progress` tells the render (the script's integer reply)."""

    GO_ON = 0
    CANCEL_REQUESTED = 1
    #: This delivery no longer holds the job: it finished elsewhere or the lease was taken.
    LEASE_LOST = 2


class FinishVerdict(_Answer):
    """What :meth:`JobStore.finish` did."""

    #: Recorded (or, for ``release``, the lease dropped).
    OK = "ok"
    #: The job was already final; nothing changed.
    FINAL = "final"
    #: Another delivery runs the job; nothing changed.
    BUSY = "busy"
    #: No record.
    MISSING = "missing"


class CancelOutcome(_Answer):
    """What :meth:`JobStore.cancel` did."""

    #: A waiting job, cancelled now.
    CANCELLED = "cancelled"
    #: A running job: its render stops at its next checkpoint.
    RUNNING = "running"
    #: Already finished (succeeded, failed or cancelled); nothing changed.
    FINAL = "final"
    #: No record.
    MISSING = "missing"


class RequeueOutcome(_Answer):
    """What :meth:`JobStore.requeue` did."""

    #: A failed job, ``queued`` again.
    REQUEUED = "requeued"
    #: The job is not ``failed``; it was left as it is.
    NOT_FAILED = "not_failed"
    #: No record.
    MISSING = "missing"


class Version(NamedTuple):
    """Which event of which record a status is: the record's ``incarnation`` and ``seq``.

    ``seq`` rises by one with every change of state or progress of a record; a record
    deleted and created again (expiry, an operator, a submit whose enqueue failed, then the
    same jobId submitted again) starts over at 1 with another ``incarnation``, so a version
    of one record is never taken for one of another.  Printed as ``<incarnation>-<seq>``,
    the id of an event on ``GET /job/{jobId}/events``.
    """

    incarnation: str
    seq: int

    def __str__(self) -> str:
        return f"{self.incarnation}-{self.seq}"

    @classmethod
    def parse(cls, text: str) -> Version | None:
        """The version an event id names (``<incarnation>-<seq>``, as :meth:`__str__`
        prints it), or None for anything else, the plain ``<seq>`` ids of earlier releases
        included."""
        match = _VERSION.fullmatch(text)
        return None if match is None else cls(match[1], int(match[2]))


#: An event id: an incarnation (``secrets.token_hex``, or the ``created_at`` digits of an
#: older record) and a ``seq``.
_VERSION = re.compile(r"([0-9a-f]{1,32})-([0-9]{1,18})")


#: Share of submits that also trim stale entries from the waiting set and the recent-jobs
#: index.
PRUNE_CHANCE = 1 / 32

#: How many jobs the recent-jobs index keeps (newest by creation; a little more between trims).
RECENT_MAX = 10_000

#: Entries the recent-jobs script reads per step while it looks for jobs in one state.
_RECENT_BATCH = 200


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: Any) -> str | None:
    """ISO 8601 UTC text for a millisecond timestamp field (``None`` when unset)."""
    if ms in (None, "", "0", 0):
        return None
    dt = datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Claim:
    """What :meth:`JobStore.claim` decided for one delivery.

    ``verdict`` says what to do (:class:`ClaimVerdict`); ``attempts`` counts the deliveries
    that started rendering (``run``; for ``lost``, those that died); ``state`` is the job's
    state after the claim (None when ``missing`` or ``busy``); ``lease_until`` is when the
    live lease of a ``busy`` job ends (ms since the epoch).
    """

    verdict: ClaimVerdict
    attempts: int = 0
    state: str | None = None
    lease_until: int = 0
    #: The final event whose webhook delivery is not on the broker yet (0: none); the
    #: caller enqueues it (:mod:`dramatiq_preview.notify`).
    webhook_due: int = 0
    #: ``run``: how many earlier deliveries of the job ran past the time limit.
    overruns: int = 0


class SweepVerdict(_Answer):
    """What :meth:`JobStore.sweep` decided for an overdue job."""

    #: No longer running or retrying; dropped from the in-flight index.
    GONE = "gone"
    #: Not overdue after all (a delivery claimed it meanwhile).
    LIVE = "live"
    #: Put ``Swept.message`` on the broker again.
    REDELIVER = "redeliver"
    #: Failed now as ``worker_lost``: nothing to put back, or put back too often.
    LOST = "lost"


@dataclass(frozen=True)
class Swept:
    """What :meth:`JobStore.sweep` decided, the message to put back (``redeliver``) and the
    final event whose webhook is due (``lost``)."""

    verdict: SweepVerdict
    message: str = ""
    webhook_due: int = 0


@dataclass(frozen=True)
class Cancellation:
    """What :meth:`JobStore.cancel` did, and the job's state afterwards (``""`` when
    ``missing``; the final state when ``final``)."""

    outcome: CancelOutcome
    state: str
    #: As :attr:`Claim.webhook_due`.
    webhook_due: int = field(default=0, compare=False)


class Finished(tuple[FinishVerdict, str]):
    """What :meth:`JobStore.finish` did: ``(verdict, state)``, and in ``webhook_due`` the
    final event whose webhook delivery is not on the broker yet (0: none)."""

    webhook_due: int

    def __new__(cls, verdict: FinishVerdict, state: str, webhook_due: int = 0) -> Finished:
        self = super().__new__(cls, (verdict, state))
        self.webhook_due = webhook_due
        return self

    @property
    def verdict(self) -> FinishVerdict:
        return self[0]

    @property
    def state(self) -> str:
        return self[1]


class WebhookOp(_Answer):
    """What :meth:`JobStore.webhook` records."""

    #: The delivery message of the event is on the broker.
    QUEUED = "queued"
    #: An attempt failed; another follows.
    RETRY = "retry"
    DELIVERED = "delivered"
    #: The last attempt failed; no other follows.
    FAILED = "failed"


class JobStore:
    """Atomic reads and transitions of job records in Redis.

    Parameters:
      client: a ``redis.Redis`` with ``decode_responses=True``.
      namespace: the key prefix (``PREVIEW_NAMESPACE``).
      ttl_seconds: expiry of every key written (``PREVIEW_JOB_TTL_SECONDS``).

    Raises (every method):
      StateStoreUnavailable: Redis did not answer or refused the command.
    """

    def __init__(self, client: redis.Redis, *, namespace: str, ttl_seconds: int) -> None:
        self.client = client
        self.namespace = namespace
        self.ttl_seconds = ttl_seconds
        self._create = client.register_script(load_script("create"))
        self._claim = client.register_script(load_script("claim"))
        self._progress = client.register_script(load_script("progress"))
        self._finish = client.register_script(load_script("finish"))
        self._cancel = client.register_script(load_script("cancel"))
        self._requeue = client.register_script(load_script("requeue"))
        self._webhook = client.register_script(load_script("webhook"))
        self._recent = client.register_script(load_script("recent"))
        self._delete_unclaimed = client.register_script(_DELETE_UNCLAIMED)
        self._sweep = client.register_script(load_script("sweep"))

    # -- keys ---------------------------------------------------------------------------

    def job_key(self, job_id: str) -> str:
        return f"{self.namespace}:job:{job_id}"

    @property
    def waiting_prefix(self) -> str:
        return f"{self.namespace}:waiting:"

    def waiting_key(self, queue: str) -> str:
        return self.waiting_prefix + queue

    @property
    def inflight_key(self) -> str:
        """Jobs running or retrying, scored by when their lease ends or their retry is due
        (ms): the index :meth:`overdue` reads."""
        return f"{self.namespace}:inflight"

    @property
    def recent_key(self) -> str:
        """The recent-jobs index: a sorted set of jobIds scored by creation time (µs)."""
        return f"{self.namespace}:recent"

    def events_channel(self, job_id: str) -> str:
        """The pub/sub channel of the job's events (the scripts publish the whole record)."""
        return self.job_key(job_id) + ":events"

    # -- transitions --------------------------------------------------------------------

    def create(
        self,
        job_id: str,
        *,
        fp: str,
        priority: str,
        queue: str,
        metadata: dict[str, str],
        message: BrokerMessage | None = None,
        webhook_url: str = "",
    ) -> tuple[CreateOutcome, str]:
        """Record a new job as ``queued`` unless its id exists.

        ``webhook_url`` (when not empty) is where its final state is POSTed
        (:mod:`dramatiq_preview.webhooks`); the status then carries ``webhook``.

        With ``message``, a job that is created has its broker message enqueued in the same
        atomic step (one round trip instead of two; nothing to undo if either fails).

        Returns ``(outcome, state)``: ``state`` is ``queued`` for a job created now, else the
        existing job's (:class:`CreateOutcome`).
        """
        keys = [self.job_key(job_id), self.waiting_prefix, self.recent_key]
        extra: list[Any] = []
        if message is not None:
            keys += [message.queue_key, message.messages_key]
            extra = [message.message_id, message.data]
        res = self._call(
            self._create,
            keys,
            [
                fp,
                priority,
                queue,
                json.dumps(metadata),
                now_ms(),
                self.ttl_seconds,
                job_id,
                # Entries of jobs whose message vanished are trimmed now and then, not on
                # every submit: the set still cannot grow beyond a TTL's worth of them.
                "1" if random.random() < PRUNE_CHANCE else "0",  # noqa: S311 - not security
                webhook_url,
                # Tells this record from an earlier or later one of the same id (Version).
                secrets.token_hex(6),
                RECENT_MAX,
                time.time_ns() // 1000,
                *extra,
            ],
        )
        return CreateOutcome(res[0]), str(res[1])

    def record(
        self, normalized: dict[str, Any], *, queue: str, message: BrokerMessage | None = None
    ) -> tuple[CreateOutcome, str]:
        """:meth:`create` for a normalised payload (``validation.normalize``): the payload's
        fingerprint, priority, metadata and webhook, on ``queue``."""
        webhook = normalized.get("webhook")
        return self.create(
            normalized["jobId"],
            fp=fingerprint(normalized),
            priority=normalized["priority"],
            queue=queue,
            metadata=normalized["metadata"],
            message=message,
            webhook_url=str(webhook["url"]) if isinstance(webhook, dict) else "",
        )

    def record_refused(self, job_id: str, *, priority: object, queue: str) -> CreateOutcome:
        """Record a job whose message was refused before it was ever recorded (an invalid
        payload from a producer without our middleware), so that its failure can be looked
        up.  Its fingerprint matches no payload: submitting the id again is a conflict."""
        outcome, _state = self.create(
            job_id,
            fp=UNRECORDED_FINGERPRINT,
            priority=priority if isinstance(priority, str) and priority in PRIORITIES else "normal",
            queue=queue,
            metadata={},
        )
        return outcome

    def delete(self, job_id: str, queue: str) -> bool:
        """Remove a record created by a submit whose enqueue then failed, unless a delivery
        has claimed it meanwhile.

        An enqueue that failed may have reached the broker all the same (RabbitMQ took the
        message but its confirm was lost with the connection): when a worker already
        claimed the job, the record is its own and stays, so a resubmit cannot create the
        job afresh and render it a second time.  Returns whether the record was removed.
        """
        found = self._guard(
            lambda: self._delete_unclaimed(
                keys=[self.job_key(job_id), self.waiting_key(queue), self.recent_key],
                args=[job_id],
            )
        )
        return bool(found)

    def claim(
        self,
        job_id: str,
        *,
        token: str,
        lease_ms: int,
        max_deliveries: int,
        isolated: bool = True,
        company: Sequence[tuple[str, str]] = (),
        message: str = "",
    ) -> Claim:
        """Start a delivery: take the render lease, count the delivery, mark ``running``.

        A delivery left unfinished (its worker process died) counts against the job; the
        job is failed as ``worker_lost`` once ``max_deliveries`` died and one of them had
        its process to itself.  Until it ends cleanly, a job with a death runs alone in its
        process: a claim that is not ``isolated`` gets :attr:`ClaimVerdict.ISOLATE`.

        Parameters:
          isolated: no other render runs, nor will start, in the caller's process while
            this delivery runs (true of a caller that renders one job at a time).
          company: ``(job_id, token)`` of the other render deliveries of the caller's
            process: a death of the process is shared by all of them.
          message: the broker message of this delivery (encoded), kept while the job runs
            or waits for its retry so that :meth:`sweep` can put it back.
        """
        lost = WorkerLost(
            f"the worker process rendering this job died {max_deliveries} time(s) or more; "
            "not redelivered again"
        )
        others = [(other, tok) for other, tok in company if other != job_id]
        res = self._call(
            self._claim,
            [
                self.job_key(job_id),
                self.waiting_prefix,
                self.inflight_key,
                *(self.job_key(other) for other, _tok in others),
            ],
            [
                token,
                now_ms(),
                lease_ms,
                max_deliveries,
                self.ttl_seconds,
                job_id,
                json.dumps(lost.to_dict()),
                "1" if isolated else "0",
                message,
                *(tok for _other, tok in others),
            ],
        )
        verdict, value = ClaimVerdict(res[0]), str(res[1])
        due = _due(res)
        if verdict is ClaimVerdict.RUN:
            overruns = int(res[3]) if len(res) > 3 and res[3] else 0
            return Claim(verdict, attempts=int(value), state="running", overruns=overruns)
        if verdict is ClaimVerdict.BUSY:
            return Claim(verdict, lease_until=int(float(value)))
        if verdict is ClaimVerdict.ISOLATE:
            return Claim(verdict, state="running")
        if verdict is ClaimVerdict.LOST:
            return Claim(verdict, attempts=int(value), state="failed", webhook_due=due)
        return Claim(verdict, state=value or None, webhook_due=due)

    def progress(self, job_id: str, *, token: str, percent: int | None) -> ProgressVerdict:
        """Record progress (or only poll when ``percent`` is None).

        Returns whether to go on (:class:`ProgressVerdict`).
        """
        value = "" if percent is None else str(max(0, min(100, int(percent))))
        return ProgressVerdict(
            self._call(self._progress, [self.job_key(job_id)], [token, value, self.ttl_seconds])
        )

    def finish(
        self,
        job_id: str,
        *,
        token: str,
        outcome: str,
        data: dict[str, Any] | None = None,
        next_attempt_at: int | None = None,
        overrun: bool = False,
    ) -> Finished:
        """End a delivery with ``succeeded``, ``failed``, ``retrying``, ``cancelled`` or
        ``release`` (drop the lease only).

        A final state is never overwritten, and a job another delivery is running is left
        alone.  A ``succeeded`` or ``retrying`` outcome on a job whose cancellation was
        requested ends ``cancelled``.  Returns ``(verdict, state)``: the job's state
        afterwards (``""`` when ``missing``) and :class:`FinishVerdict` (:class:`Finished`).
        ``overrun`` (with ``retrying``) counts a render that ran past the time limit: the
        job's next claim reports it (:attr:`Claim.overruns`).
        """
        res = self._call(
            self._finish,
            [self.job_key(job_id), self.waiting_prefix, self.inflight_key],
            [
                token,
                outcome,
                now_ms(),
                self.ttl_seconds,
                json.dumps(data) if data is not None else "",
                "" if next_attempt_at is None else next_attempt_at,
                job_id,
                "1" if overrun else "0",
            ],
        )
        return Finished(FinishVerdict(res[0]), str(res[1]), _due(res))

    def overdue(self, margin_ms: int, *, limit: int = 100) -> list[str]:
        """Jobs of the in-flight index whose lease ended, or whose retry was due, more than
        ``margin_ms`` ago (at most ``limit``, most overdue first): :meth:`sweep` each."""
        found = self._guard(
            lambda: self.client.zrangebyscore(
                self.inflight_key, "-inf", now_ms() - margin_ms, start=0, num=limit
            )
        )
        return [str(job_id) for job_id in found]

    def sweep(self, job_id: str, *, margin_ms: int, max_sweeps: int) -> Swept:
        """Look again at an overdue job (:meth:`overdue`), atomically: put its message back
        (:attr:`SweepVerdict.REDELIVER`) when nothing claimed it within ``margin_ms`` of
        its due time, or fail it as ``worker_lost`` when there is no message or it was
        put back ``max_sweeps`` times to no avail (:class:`SweepVerdict`)."""
        lost = WorkerLost(
            "the worker rendering this job was lost and its delivery could not be put back"
        )
        res = self._call(
            self._sweep,
            [self.job_key(job_id), self.inflight_key, self.waiting_prefix],
            [now_ms(), margin_ms, self.ttl_seconds, job_id, json.dumps(lost.to_dict()), max_sweeps],
        )
        return Swept(SweepVerdict(res[0]), str(res[1] or ""), _due(res))

    def cancel(self, job_id: str) -> Cancellation:
        """Request cancellation: a waiting job is cancelled now, a running one stops at its
        next checkpoint, a finished one is left alone (:class:`CancelOutcome`)."""
        res = self._call(
            self._cancel,
            [self.job_key(job_id), self.waiting_prefix],
            [now_ms(), self.ttl_seconds, job_id],
        )
        return Cancellation(CancelOutcome(res[0]), str(res[1]), _due(res))

    def requeue(self, job_id: str, *, queue: str) -> RequeueOutcome:
        """Put a ``failed`` job back to ``queued`` on ``queue`` (dead-letter replay); a job
        in any other state is left alone."""
        return RequeueOutcome(
            self._call(
                self._requeue,
                [self.job_key(job_id), self.waiting_prefix],
                [now_ms(), self.ttl_seconds, job_id, queue],
            )
        )

    def webhook(self, job_id: str, op: WebhookOp, seq: int, error: str = "") -> str:
        """Record the delivery of the webhook of final event ``seq`` (:class:`WebhookOp`).

        Returns ``"ok"``, ``"stale"`` (the job ended again since; event ``seq`` is no
        longer the one to deliver) or ``"missing"``.
        """
        return str(
            self._call(
                self._webhook,
                [self.job_key(job_id)],
                [op.value, seq, self.ttl_seconds, error[:1000]],
            )
        )

    # -- reads --------------------------------------------------------------------------

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The public status object of a job (contract §5), or None when unknown."""
        found = self._guard(lambda: self.client.hgetall(self.job_key(job_id)))
        # The client decodes responses, so keys and values are str.
        raw = {str(k): str(v) for k, v in found.items()}
        if "state" not in raw:
            return None
        return status_from_record(job_id, raw)

    def get_many(self, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """:meth:`get` for each of ``job_ids`` (None for an unknown one), in one round trip."""
        ids = list(job_ids)

        def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(self.job_key(job_id))
            return pipe.execute()

        found = self._guard(run) if ids else []
        statuses: list[dict[str, Any] | None] = []
        for job_id, record in zip(ids, found, strict=True):
            raw = {str(k): str(v) for k, v in record.items()}
            statuses.append(status_from_record(job_id, raw) if "state" in raw else None)
        return statuses

    def get_with_seq(self, job_id: str) -> tuple[int, dict[str, Any]] | None:
        """The status (as :meth:`get`) and its event id ``seq``, or None when unknown."""
        found = self.get_versioned(job_id)
        return None if found is None else (found[0].seq, found[1])

    def get_versioned(self, job_id: str) -> tuple[Version, dict[str, Any]] | None:
        """The status (as :meth:`get`) and its :class:`Version`, or None when unknown."""
        found = self._guard(lambda: self.client.hgetall(self.job_key(job_id)))
        raw = {str(k): str(v) for k, v in found.items()}
        if "state" not in raw:
            return None
        return version_of(raw), status_from_record(job_id, raw)

    def recent(self, *, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The status objects of the newest jobs (by creation time), newest first.

        Parameters:
          state: only jobs in this state (None: any).
          limit: at most this many.

        The index holds the last :data:`RECENT_MAX` jobs created (and none older than the
        job TTL), so a state filter looks at those only; one script reads it, in one round
        trip.
        """
        found = self._call(
            self._recent,
            [self.recent_key, self.job_key("")],
            [state or "", limit, _RECENT_BATCH],
        )
        jobs = []
        for job_id, flat in zip(found[::2], found[1::2], strict=True):
            raw = {str(k): str(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
            jobs.append(status_from_record(str(job_id), raw))
        return jobs

    def existing(self, job_ids: Sequence[str]) -> set[str]:
        """Which of ``job_ids`` still have a record, in one round trip (retention)."""
        ids = list(job_ids)

        def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for job_id in ids:
                pipe.exists(self.job_key(job_id))
            return pipe.execute()

        found = self._guard(run) if ids else []
        return {job_id for job_id, count in zip(ids, found, strict=True) if count}

    def oldest_waiting(self, queue: str) -> float | None:
        """Age in seconds of the oldest job waiting to start on ``queue`` (None if none)."""

        def run() -> Any:
            return self.client.zrange(self.waiting_key(queue), 0, 0, withscores=True)

        entries = self._guard(run)
        if not entries:
            return None
        return max(0.0, time.time() - float(entries[0][1]) / 1000)

    # -- plumbing -----------------------------------------------------------------------

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return self._guard(lambda: script(keys=keys, args=args))

    @staticmethod
    def _guard(fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except redis.RedisError as exc:
            raise StateStoreUnavailable(
                f"the state store (Redis) is unavailable: {type(exc).__name__}"
            ) from exc


#: ``delete``: the record goes only while no delivery has claimed it (still ``queued``, no
#: attempt started).  KEYS: job, waiting set, recent index; ARGV: job_id.
_DELETE_UNCLAIMED = """
local h = redis.call('hmget', KEYS[1], 'state', 'attempts', 'deliveries')
if h[1] ~= 'queued' or (tonumber(h[2]) or 0) > 0 or (tonumber(h[3]) or 0) > 0 then
  return 0
end
redis.call('del', KEYS[1])
redis.call('zrem', KEYS[2], ARGV[1])
redis.call('zrem', KEYS[3], ARGV[1])
return 1
"""


def _due(res: Any) -> int:
    """The ``webhook_due`` element of a script's answer (0 when absent)."""
    return int(res[2]) if len(res) > 2 and res[2] else 0


def _json_or_none(text: str | None) -> Any:
    if not text:
        return None
    return json.loads(text)


def status_from_record(job_id: str, raw: dict[str, str]) -> dict[str, Any]:
    """Shape a raw job hash as the public status object."""
    return {
        "jobId": job_id,
        "state": raw["state"],
        "priority": raw.get("priority", "normal"),
        "attempts": int(raw.get("attempts") or 0),
        "progress": int(raw.get("progress") or 0),
        "createdAt": iso(raw.get("created_at")),
        "startedAt": iso(raw.get("started_at")),
        "finishedAt": iso(raw.get("finished_at")),
        "nextAttemptAt": iso(raw.get("next_attempt_at")),
        "error": _json_or_none(raw.get("error")),
        "result": _json_or_none(raw.get("result")) if raw["state"] == "succeeded" else None,
        "metadata": _json_or_none(raw.get("metadata")) or {},
        "webhook": _webhook(raw),
    }


def _webhook(raw: dict[str, str]) -> dict[str, Any] | None:
    if not raw.get("webhook_url"):
        return None
    return {
        "state": raw.get("webhook_state") or "pending",
        "attempts": int(raw.get("webhook_attempts") or 0),
        "lastError": raw.get("webhook_error") or None,
    }


def version_of(raw: dict[str, str]) -> Version:
    """The :class:`Version` of a raw job hash.  A record written before records had an
    ``incarnation`` goes by its ``created_at``.

    Raises:
      ValueError: ``seq`` is not an integer.
    """
    incarnation = raw.get("incarnation") or raw.get("created_at") or "0"
    return Version(incarnation, int(raw.get("seq") or 0))


def record_from_event(data: str) -> dict[str, str]:
    """The record a script published (a JSON array of field, value, field, value, ...)."""
    flat = json.loads(data)
    return {str(k): str(v) for k, v in zip(flat[0::2], flat[1::2], strict=True)}


_clients: dict[tuple[str, float], redis.Redis] = {}
_lock = threading.Lock()


def redis_client(url: str, *, socket_timeout: float = 5.0) -> redis.Redis:
    """A shared client per URL; no connection is made until the first command."""
    key = (url, socket_timeout)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_timeout=socket_timeout,
                socket_connect_timeout=min(socket_timeout, 2.0),
                health_check_interval=30,
                # One immediate retry covers a connection the server closed; more (redis-py
                # retries 3 times with backoff by default) would hold a web request for
                # several socket timeouts when Redis hangs.
                retry=Retry(NoBackoff(), 1),
            )
            _clients[key] = client
        return client


def get_store(settings: Settings) -> JobStore:
    """The job store for ``settings``, shared per (Redis URL, namespace, TTL): middleware
    asks for it on every message, and building one hashes six scripts."""
    return _store(settings.redis_url, settings.namespace, settings.job_ttl_seconds)


@functools.lru_cache(maxsize=32)
def _store(url: str, namespace: str, ttl_seconds: int) -> JobStore:
    return JobStore(redis_client(url), namespace=namespace, ttl_seconds=ttl_seconds)


__all__ = [
    "FINAL_STATES",
    "PRUNE_CHANCE",
    "SCRIPTS",
    "STATES",
    "CancelOutcome",
    "Cancellation",
    "Claim",
    "ClaimVerdict",
    "CreateOutcome",
    "FinishVerdict",
    "Finished",
    "JobStore",
    "ProgressVerdict",
    "RequeueOutcome",
    "SweepVerdict",
    "Swept",
    "Version",
    "WebhookOp",
    "get_store",
    "iso",
    "load_script",
    "now_ms",
    "record_from_event",
    "redis_client",
    "status_from_record",
    "version_of",
]

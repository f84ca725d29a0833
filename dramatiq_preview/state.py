"""The job state store: one Redis hash per job, changed only by atomic Lua scripts.

Keys (all under ``PREVIEW_NAMESPACE``, all with a TTL of ``PREVIEW_JOB_TTL_SECONDS`` that is
renewed on every write):

* ``{ns}:job:{jobId}`` — the job record (state, attempts, progress, times, error, result,
  metadata, the payload fingerprint, the render lease and the delivery counter).
* ``{ns}:waiting:{queue}`` — a sorted set of jobs waiting to start, scored by enqueue time;
  it gives the oldest waiting job's age without scanning the keyspace.  Entries older than
  the TTL are trimmed on one insert in 32, and the key itself expires with the TTL.

Every transition is one script, so a late ``running`` can never overwrite ``succeeded`` or
``cancelled``, and a job submitted concurrently is created exactly once.  A job costs three
round trips to the store on the happy path (create, claim, finish) plus progress updates,
which are throttled (``PREVIEW_PROGRESS_INTERVAL_MS``).  With a Redis broker on the same
server, create also pushes the job's broker message (:class:`BrokerMessage`).
"""

from __future__ import annotations

import functools
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .config import Settings
from .errors import StateStoreUnavailable, WorkerLost

STATES = ("queued", "running", "retrying", "succeeded", "failed", "cancelled")
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})

_CREATE = """
local job, waiting_prefix = KEYS[1], KEYS[2]
local fp, priority, queue, meta = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, ttl, job_id, prune = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8]
local cur = redis.call('hmget', job, 'fp', 'state')
if cur[2] then
  if cur[1] == fp then return {'duplicate', cur[2]} end
  return {'conflict', cur[2]}
end
-- Counters (attempts, progress, deliveries, cancel) start absent, which reads as 0.
redis.call('hset', job, 'state', 'queued', 'fp', fp, 'priority', priority, 'queue', queue,
  'metadata', meta, 'created_at', now)
redis.call('expire', job, ttl)
local waiting = waiting_prefix .. queue
redis.call('zadd', waiting, now, job_id)
if prune == '1' then
  redis.call('zremrangebyscore', waiting, '-inf', now - ttl * 1000)
end
redis.call('expire', waiting, ttl)
if KEYS[3] then
  -- A Redis broker on this server: enqueue in the same step, in Dramatiq's layout (a list
  -- of message ids and a hash of id -> message), so the job and its message exist together.
  redis.call('hset', KEYS[4], ARGV[9], ARGV[10])
  redis.call('rpush', KEYS[3], ARGV[9])
end
return {'created', 'queued'}
"""

_CLAIM = """
local job, waiting_prefix = KEYS[1], KEYS[2]
local token, now, lease_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_deliveries, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local job_id, lost_error = ARGV[6], ARGV[7]
local h = redis.call('hmget', job, 'state', 'lease', 'lease_until', 'cancel', 'queue')
local state = h[1]
if not state then return {'missing', ''} end
if state == 'succeeded' or state == 'failed' then return {'done', state} end
if state == 'cancelled' then
  -- A job cancelled while it waited is counted once, by the first delivery to see it.
  if redis.call('hdel', job, 'uncounted') == 1 then return {'cancelled_waiting', state} end
  return {'cancelled', state}
end
if h[2] and h[2] ~= '' and tonumber(h[3] or 0) > now then return {'busy', h[3]} end
local waiting = waiting_prefix .. (h[5] or '')
if h[4] == '1' then
  redis.call('hset', job, 'state', 'cancelled', 'finished_at', now, 'lease', '', 'lease_until', 0)
  redis.call('zrem', waiting, job_id)
  redis.call('expire', job, ttl)
  return {'cancelled_now', 'cancelled'}
end
local deliveries = redis.call('hincrby', job, 'deliveries', 1)
if deliveries > max_deliveries then
  redis.call('hset', job, 'state', 'failed', 'error', lost_error, 'finished_at', now,
    'lease', '', 'lease_until', 0, 'next_attempt_at', '')
  redis.call('zrem', waiting, job_id)
  redis.call('expire', job, ttl)
  return {'lost', tostring(deliveries - 1)}
end
local attempts = redis.call('hincrby', job, 'attempts', 1)
redis.call('hset', job, 'state', 'running', 'lease', token, 'lease_until', now + lease_ms,
  'next_attempt_at', '', 'progress', 0)
redis.call('hsetnx', job, 'started_at', now)
redis.call('zrem', waiting, job_id)
redis.call('expire', job, ttl)
return {'run', tostring(attempts)}
"""

_PROGRESS = """
local job = KEYS[1]
local token, percent, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local h = redis.call('hmget', job, 'state', 'lease', 'cancel')
if h[1] ~= 'running' or h[2] ~= token then return 2 end
if percent ~= '' then
  redis.call('hset', job, 'progress', percent)
  redis.call('expire', job, ttl)
end
if h[3] == '1' then return 1 end
return 0
"""

_FINISH = """
local job, waiting_prefix = KEYS[1], KEYS[2]
local token, outcome, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local data, next_at, job_id = ARGV[5], ARGV[6], ARGV[7]
local h = redis.call('hmget', job, 'state', 'lease', 'cancel', 'queue')
local state = h[1]
if not state then return {'missing', ''} end
local mine = token ~= '' and h[2] == token
if outcome == 'release' then
  if mine then redis.call('hset', job, 'lease', '', 'lease_until', 0, 'deliveries', 0) end
  return {'ok', state}
end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then
  if mine then redis.call('hset', job, 'lease', '', 'lease_until', 0, 'deliveries', 0) end
  return {'final', state}
end
if state == 'running' and not mine then return {'busy', state} end
local new = outcome
if h[3] == '1' and (outcome == 'succeeded' or outcome == 'retrying') then new = 'cancelled' end
if new == 'succeeded' then
  redis.call('hset', job, 'state', 'succeeded', 'progress', 100, 'result', data, 'error', '',
    'finished_at', now, 'next_attempt_at', '')
elseif new == 'failed' then
  redis.call('hset', job, 'state', 'failed', 'error', data, 'finished_at', now,
    'next_attempt_at', '')
elseif new == 'retrying' then
  redis.call('hset', job, 'state', 'retrying', 'error', data, 'next_attempt_at', next_at)
elseif new == 'cancelled' then
  redis.call('hset', job, 'state', 'cancelled', 'finished_at', now, 'next_attempt_at', '')
else
  return redis.error_reply('unknown outcome ' .. outcome)
end
redis.call('hset', job, 'lease', '', 'lease_until', 0, 'deliveries', 0)
if new ~= 'retrying' then
  -- A job that ends without being claimed (refused on receipt) was still "waiting".
  redis.call('zrem', waiting_prefix .. (h[4] or ''), job_id)
end
redis.call('expire', job, ttl)
return {'ok', new}
"""

_CANCEL = """
local job, waiting_prefix = KEYS[1], KEYS[2]
local now, ttl, job_id = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local h = redis.call('hmget', job, 'state', 'queue')
local state = h[1]
if not state then return 'missing' end
if state == 'queued' or state == 'retrying' then
  redis.call('hset', job, 'state', 'cancelled', 'cancel', 1, 'finished_at', now,
    'next_attempt_at', '', 'uncounted', 1)
  redis.call('zrem', waiting_prefix .. (h[2] or ''), job_id)
  redis.call('expire', job, ttl)
  return 'cancelled'
end
if state == 'running' then
  redis.call('hset', job, 'cancel', 1)
  redis.call('expire', job, ttl)
  return 'running'
end
return 'final:' .. state
"""

_REQUEUE = """
local job, waiting_prefix = KEYS[1], KEYS[2]
local now, ttl, job_id, queue = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local state = redis.call('hget', job, 'state')
if not state then return 'missing' end
if state ~= 'failed' then return state end
redis.call('hset', job, 'state', 'queued', 'error', '', 'finished_at', '', 'progress', 0,
  'deliveries', 0, 'cancel', 0, 'lease', '', 'lease_until', 0, 'next_attempt_at', '',
  'queue', queue)
redis.call('expire', job, ttl)
local waiting = waiting_prefix .. queue
redis.call('zadd', waiting, now, job_id)
redis.call('expire', waiting, ttl)
return 'requeued'
"""

_T = TypeVar("_T")

#: Share of submits that also trim stale entries from the waiting set.
PRUNE_CHANCE = 1 / 32


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: Any) -> str | None:
    """ISO 8601 UTC text for a millisecond timestamp field (``None`` when unset)."""
    if ms in (None, "", "0", 0):
        return None
    dt = datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class BrokerMessage:
    """A message to push onto a Dramatiq ``RedisBroker`` queue on the state store's server,
    in the broker's key layout: the list ``{namespace}:{queue}`` of message ids and the hash
    ``{namespace}:{queue}.msgs`` of id -> encoded message."""

    namespace: str
    queue: str
    message_id: str
    data: bytes


@dataclass(frozen=True)
class Claim:
    """What :meth:`JobStore.claim` decided for one delivery.

    ``verdict`` is ``run`` (render it), ``done`` (already succeeded or failed), ``cancelled``
    (cancelled before), ``cancelled_waiting`` (cancelled while it waited, and this is the
    first delivery to see it: count it), ``cancelled_now`` (its cancellation was requested
    while a delivery that then died held it, and this claim ended it),
    ``busy`` (another worker holds a live lease until ``lease_until``), ``lost`` (failed as
    ``worker_lost``) or ``missing`` (no record).
    """

    verdict: str
    attempts: int = 0
    state: str | None = None
    lease_until: int = 0


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
        self._create = client.register_script(_CREATE)
        self._claim = client.register_script(_CLAIM)
        self._progress = client.register_script(_PROGRESS)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)
        self._requeue = client.register_script(_REQUEUE)

    # -- keys ---------------------------------------------------------------------------

    def job_key(self, job_id: str) -> str:
        return f"{self.namespace}:job:{job_id}"

    @property
    def waiting_prefix(self) -> str:
        return f"{self.namespace}:waiting:"

    def waiting_key(self, queue: str) -> str:
        return self.waiting_prefix + queue

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
    ) -> tuple[str, str]:
        """Record a new job as ``queued`` unless its id exists.

        With ``message``, a job that is created has its broker message enqueued in the same
        atomic step (one round trip instead of two; nothing to undo if either fails).

        Returns ``(outcome, state)`` where outcome is ``created``, ``duplicate`` (same
        fingerprint; ``state`` is the existing job's) or ``conflict`` (different payload).
        """
        keys = [self.job_key(job_id), self.waiting_prefix]
        extra: list[Any] = []
        if message is not None:
            queue_key = f"{message.namespace}:{message.queue}"
            keys += [queue_key, queue_key + ".msgs"]
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
                *extra,
            ],
        )
        return str(res[0]), str(res[1])

    def record(
        self, normalized: dict[str, Any], *, queue: str, message: BrokerMessage | None = None
    ) -> tuple[str, str]:
        """:meth:`create` for a normalised payload (``validation.normalize``): the payload's
        fingerprint, priority and metadata, on ``queue``."""
        from .validation import fingerprint

        return self.create(
            normalized["jobId"],
            fp=fingerprint(normalized),
            priority=normalized["priority"],
            queue=queue,
            metadata=normalized["metadata"],
            message=message,
        )

    def delete(self, job_id: str, queue: str) -> None:
        """Remove a record created by a submit whose enqueue then failed."""

        def run() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self.job_key(job_id))
            pipe.zrem(self.waiting_key(queue), job_id)
            pipe.execute()

        self._guard(run)

    def claim(self, job_id: str, *, token: str, lease_ms: int, max_deliveries: int) -> Claim:
        """Start a delivery: take the render lease, count the delivery, mark ``running``."""
        lost = WorkerLost(
            f"the worker process rendering this job died {max_deliveries} time(s); "
            "not redelivered again"
        )
        res = self._call(
            self._claim,
            [self.job_key(job_id), self.waiting_prefix],
            [
                token,
                now_ms(),
                lease_ms,
                max_deliveries,
                self.ttl_seconds,
                job_id,
                json.dumps(lost.to_dict()),
            ],
        )
        verdict, value = str(res[0]), str(res[1])
        if verdict == "run":
            return Claim(verdict, attempts=int(value), state="running")
        if verdict == "busy":
            return Claim(verdict, lease_until=int(float(value)))
        if verdict == "lost":
            return Claim(verdict, attempts=int(value), state="failed")
        return Claim(verdict, state=value or None)

    def progress(self, job_id: str, *, token: str, percent: int | None) -> int:
        """Record progress (or only poll when ``percent`` is None).

        Returns 0 to go on, 1 when cancellation was requested, 2 when this delivery no longer
        holds the job (it finished elsewhere or the lease was taken over).
        """
        value = "" if percent is None else str(max(0, min(100, int(percent))))
        return int(
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
    ) -> tuple[str, str]:
        """End a delivery with ``succeeded``, ``failed``, ``retrying``, ``cancelled`` or
        ``release`` (drop the lease only).

        A final state is never overwritten, and a job another delivery is running is left
        alone.  A ``succeeded`` or ``retrying`` outcome on a job whose cancellation was
        requested ends ``cancelled``.  Returns ``(verdict, state)``: verdict ``ok``,
        ``final``, ``busy`` or ``missing``.
        """
        res = self._call(
            self._finish,
            [self.job_key(job_id), self.waiting_prefix],
            [
                token,
                outcome,
                now_ms(),
                self.ttl_seconds,
                json.dumps(data) if data is not None else "",
                "" if next_attempt_at is None else next_attempt_at,
                job_id,
            ],
        )
        return str(res[0]), str(res[1])

    def cancel(self, job_id: str) -> str:
        """Request cancellation.

        Returns ``cancelled`` (a waiting job, cancelled now), ``running`` (the render stops at
        its next checkpoint), ``missing``, or ``final:STATE`` for a job already finished.
        """
        return str(
            self._call(
                self._cancel,
                [self.job_key(job_id), self.waiting_prefix],
                [now_ms(), self.ttl_seconds, job_id],
            )
        )

    def requeue(self, job_id: str, *, queue: str) -> str:
        """Put a ``failed`` job back to ``queued`` (dead-letter replay).

        Returns ``requeued``, ``missing``, or the state that prevented it.
        """
        return str(
            self._call(
                self._requeue,
                [self.job_key(job_id), self.waiting_prefix],
                [now_ms(), self.ttl_seconds, job_id, queue],
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
    }


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

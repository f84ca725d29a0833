"""The Python job API: submit, status and cancel, from any process.

>>> from dramatiq_preview import submit_preview, get_status
>>> job = submit_preview({"source": {"path": "cat.jpg"},
...                       "outputs": [{"width": 256, "height": 256, "format": "webp"}]})
>>> get_status(job.job_id)["state"]
'queued'
>>> wait_for_preview(job.job_id, timeout=60)["state"]
'succeeded'

:class:`PreviewClient` binds the same calls to explicit settings (another Redis, another
broker), e.g. for a web process configured from Flask's ``app.config``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import dramatiq

from .broker import actor_broker, build_broker
from .config import Settings, get_settings
from .errors import (
    BrokerUnavailable,
    JobConflict,
    JobNotFound,
    PreviewError,
    WaitTimeout,
    WebhookNotQueued,
)
from .events import emit
from .fused_enqueue import (
    BrokerMessage,
    fused_enqueue_supported,
    shared_redis_namespace,
    with_redis_message_id,
)
from .names import ACTOR_NAME, RECORDED, broker_queues
from .netguard import check_webhook
from .notify import enqueue_webhook
from .state import STATES, CancelOutcome, CreateOutcome, JobStore, get_store
from .validation import normalize, validate
from .watch import Event, JobWatch

logger = logging.getLogger("dramatiq_preview.client")
_UNKNOWN = object()


@dataclass(frozen=True)
class Submission:
    """The answer to a submit: the job's id, its current state, and whether it existed."""

    job_id: str
    state: str
    duplicate: bool

    def to_dict(self) -> dict[str, Any]:
        return {"jobId": self.job_id, "state": self.state, "duplicate": self.duplicate}


class PreviewClient:
    """Submit, inspect and cancel preview jobs.

    Parameters:
      settings: the settings to use (default: the process-wide ones from the environment).
      broker: the broker to enqueue on.  By default the broker ``render_preview`` is declared
        on; a client whose ``PREVIEW_BROKER_URL`` or ``PREVIEW_NAMESPACE`` differs from the
        process-wide one builds its own broker from ``settings``.
      fused_enqueue: allow the fused enqueue (the default): with a plain Dramatiq
        ``RedisBroker`` of a tested version (:func:`fused_enqueue_supported`) on the state
        store's Redis server, database and credentials, the job's record and its message are
        written by one script.  False always records first, then calls ``broker.enqueue``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        broker: dramatiq.Broker | None = None,
        fused_enqueue: bool = True,
    ) -> None:
        self.settings = settings or get_settings()
        self._broker = broker
        self._own_broker: dramatiq.Broker | None = None
        self._store: JobStore | None = None
        # The broker's namespace, or None: _fused_namespace decides once.
        self._fused: object = _UNKNOWN if fused_enqueue else None

    @classmethod
    def from_url(cls, redis_url: str, **overrides: Any) -> PreviewClient:
        """A client for the state store (and, unless overridden, the broker) at ``redis_url``."""
        mapping = {"PREVIEW_REDIS_URL": redis_url, **overrides}
        return cls(Settings.from_mapping(mapping))

    @property
    def store(self) -> JobStore:
        if self._store is None:
            self._store = get_store(self.settings)
        return self._store

    @property
    def broker(self) -> dramatiq.Broker:
        if self._broker is None:
            here, default = self.settings, get_settings()
            if (here.broker_url, here.namespace) == (default.broker_url, default.namespace):
                self._broker = actor_broker()
            else:
                self._broker = self._own_broker = build_broker(self.settings)
        return self._broker

    def close(self) -> None:
        """Close the broker this client built for itself, if any (shared ones stay open)."""
        broker, self._own_broker = self._own_broker, None
        if broker is None:
            return
        if self._broker is broker:
            self._broker = None
            if self._fused is not None:
                self._fused = _UNKNOWN
        broker.close()
        client = getattr(broker, "client", None)
        if client is not None:
            # The Redis broker hands its client a pool the client does not close itself.
            client.close()
            client.connection_pool.disconnect()

    def __enter__(self) -> PreviewClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, payload: Any) -> Submission:
        """Validate, de-duplicate, record as ``queued`` and enqueue one job.

        Raises:
          InvalidPayload: the payload breaks the schema (nothing is recorded or enqueued).
          JobConflict: the jobId exists with a different payload.
          StateStoreUnavailable, BrokerUnavailable: Redis or the broker is down; nothing is
            left behind.
        """
        validate(payload)
        normalized = normalize(payload)
        check_webhook(normalized, self.settings)
        job_id = normalized["jobId"]
        queue = broker_queues(self.broker, self.settings.namespace).for_priority(
            normalized["priority"]
        )
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=queue,
            actor_name=ACTOR_NAME,
            args=(normalized,),
            kwargs={},
            options={RECORDED: True},
        )
        # With a Redis broker on the state store's server, the record and the message are
        # written by one script; otherwise the record comes first, then broker.enqueue.
        namespace = self._fused_namespace()
        pushed = None if namespace is None else self._encode_for(message, namespace, job_id)
        outcome, state = self.store.record(
            normalized, queue=queue, message=None if pushed is None else pushed[1]
        )
        if outcome is CreateOutcome.CONFLICT:
            raise JobConflict(f"jobId {job_id!r} was already used with a different payload")
        if outcome is CreateOutcome.DUPLICATE:
            emit("duplicate", job_id=job_id)
            return Submission(job_id, state, duplicate=True)
        if pushed is not None:
            self.broker.emit_after("enqueue", pushed[0], None)
            return Submission(job_id, "queued", duplicate=False)
        try:
            self.broker.enqueue(message)
        except Exception as exc:
            if self.store.delete(job_id, queue):
                raise _unavailable(job_id, exc) from exc
            # The message reached the broker after all (its confirm was lost) and a worker
            # has claimed the job: it is queued, and answering so keeps a resubmit from
            # creating it afresh (docs/reliability.md, defect 5).
            logger.warning(
                "enqueue of job %s reported %s, but a worker has the job already",
                job_id,
                type(exc).__name__,
            )
        return Submission(job_id, "queued", duplicate=False)

    def _fused_namespace(self) -> str | None:
        """The broker's namespace when submit may write the message itself: the broker is
        a plain ``RedisBroker`` on the state store's server, of a tested Dramatiq version."""
        if self._fused is _UNKNOWN:
            supported = fused_enqueue_supported()
            if not supported:
                logger.info(
                    "Dramatiq %s is not a version the fused enqueue was tested with; "
                    "submits use broker.enqueue",
                    dramatiq.__version__,
                )
            self._fused = (
                shared_redis_namespace(self.broker, self.store.client) if supported else None
            )
        return self._fused  # type: ignore[return-value]

    def _encode_for(
        self, message: dramatiq.Message[Any], namespace: str, job_id: str
    ) -> tuple[dramatiq.Message[Any], BrokerMessage]:
        """The message as ``RedisBroker.enqueue`` would push it: a fresh id, the broker's
        ``before_enqueue`` hooks (which may add options), then the encoding.  A duplicate or
        a conflict is then not enqueued, like an enqueue that failed: no ``after_enqueue``."""
        message = with_redis_message_id(message)
        try:
            self.broker.emit_before("enqueue", message, None)
            return message, BrokerMessage.of(message, namespace)
        except PreviewError:
            raise
        except Exception as exc:
            raise _unavailable(job_id, exc) from exc

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's status object (contract §5).

        Raises:
          JobNotFound: no job with this id (or its record expired).
        """
        status = self.store.get(job_id)
        if status is None:
            raise JobNotFound(job_id)
        return status

    def recent_jobs(self, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The status objects of the newest jobs (by creation), newest first.

        The recent-jobs index holds the last 10,000 jobs created within the job TTL
        (:data:`~dramatiq_preview.state.RECENT_MAX`); ``GET /jobs``, the dashboard and the
        CLI's ``jobs`` command read it through here.

        Parameters:
          state: only jobs in this state (None: any).
          limit: at most this many (1 to 1000).

        Raises:
          ValueError: an unknown state or a limit out of range.
          StateStoreUnavailable: Redis did not answer.
        """
        if state is not None and state not in STATES:
            raise ValueError(f"unknown state {state!r}; one of {', '.join(STATES)}")
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be from 1 to 1000, not {limit}")
        return self.store.recent(state=state, limit=limit)

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the job is final; return its final status object (contract §5).

        Follows the job's events (:mod:`dramatiq_preview.watch`), so it returns as soon as
        the final state is written, without polling.  ``timeout`` bounds the wait for Redis
        to confirm the subscription too; only a Redis that stops answering in the middle of
        a command can hold it longer, by up to the client's socket timeout.

        Parameters:
          job_id: the job.
          timeout: the longest wait in seconds (None: as long as it takes).

        Raises:
          WaitTimeout: the job was not final within ``timeout`` (it goes on; wait again),
            or Redis did not confirm the subscription within it (a ``TimeoutError``).
          JobNotFound: no job with this id, or its record expired while waiting.
          StateStoreUnavailable: Redis did not answer.
        """
        watch = JobWatch(
            self.store,
            job_id,
            max_seconds=timeout,
            keepalive_seconds=self.settings.events_keepalive_seconds,
        )
        try:
            watch.open()
        except TimeoutError:
            raise WaitTimeout(
                f"job {job_id!r}: Redis did not answer within {timeout or 0:g}s", job_id=job_id
            ) from None
        with watch:
            for item in watch:
                if isinstance(item, Event) and item.final:
                    return item.status
            state = watch.status["state"]
        raise WaitTimeout(
            f"job {job_id!r} is not final after {timeout or 0:g}s: it is {state}", job_id=job_id
        )

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job: a waiting job at once, a running one at its next checkpoint.

        Returns ``{"jobId", "state"}`` with ``cancelled``, or ``running`` while a running
        job is on its way to ``cancelled`` (asking again meanwhile answers the same).

        Raises:
          JobNotFound: no job with this id.
          JobConflict: the job already finished: succeeded, failed or cancelled.
        """
        answer = self.store.cancel(job_id)
        if answer.webhook_due:
            try:
                enqueue_webhook(self.broker, self.store, job_id, answer.webhook_due)
            except WebhookNotQueued:
                # Not lost: the job's render message, still on the broker, queues it when a
                # worker claims it (and finds the event still due).
                logger.warning("the webhook of cancelled job %s will be queued later", job_id)
        if answer.outcome is CancelOutcome.MISSING:
            raise JobNotFound(job_id)
        if answer.outcome is CancelOutcome.FINAL:
            raise JobConflict(f"job {job_id!r} already {answer.state}; it cannot be cancelled")
        return {"jobId": job_id, "state": answer.state}


def _unavailable(job_id: str, exc: Exception) -> BrokerUnavailable:
    """What a refused enqueue becomes (nothing of the job is left behind by then)."""
    logger.warning("enqueue of job %s failed: %s", job_id, exc)
    return BrokerUnavailable(
        f"the broker is unavailable: {type(exc).__name__}; the job was not queued"
    )


_default: PreviewClient | None = None


def default_client() -> PreviewClient:
    """The client the module-level functions use (process-wide settings and broker)."""
    global _default
    if _default is None or _default.settings is not get_settings():
        _default = PreviewClient()
    return _default


def submit_preview(payload: Any) -> Submission:
    """Validate, de-duplicate, record and enqueue ``payload``; see :meth:`PreviewClient.submit`."""
    return default_client().submit(payload)


def get_status(job_id: str) -> dict[str, Any]:
    """The status of ``job_id``; see :meth:`PreviewClient.status`."""
    return default_client().status(job_id)


def wait_for_preview(job_id: str, timeout: float | None = None) -> dict[str, Any]:
    """The final status of ``job_id``, once it ends; see :meth:`PreviewClient.wait`."""
    return default_client().wait(job_id, timeout)


def cancel_preview(job_id: str) -> dict[str, Any]:
    """Cancel ``job_id``; see :meth:`PreviewClient.cancel`."""
    return default_client().cancel(job_id)

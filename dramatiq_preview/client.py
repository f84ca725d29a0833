"""The Python job API: submit, status and cancel, from any process.

>>> from dramatiq_preview import submit_preview, get_status
>>> job = submit_preview({"source": {"path": "cat.jpg"},
...                       "outputs": [{"width": 256, "height": 256, "format": "webp"}]})
>>> get_status(job.job_id)["state"]
'queued'

:class:`PreviewClient` binds the same calls to explicit settings (another Redis, another
broker), e.g. for a web process configured from Flask's ``app.config``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import dramatiq

from .broker import RECORDED, build_broker, queue_for, shared_redis_namespace
from .config import Settings, get_settings
from .errors import BrokerUnavailable, JobConflict, JobNotFound, PreviewError
from .events import emit
from .state import BrokerMessage, JobStore, get_store
from .validation import normalize, validate

logger = logging.getLogger("dramatiq_preview.client")
_UNKNOWN = object()

assert RECORDED == "preview_recorded"  # spelled out as a keyword in submit()


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
    """

    def __init__(
        self, settings: Settings | None = None, *, broker: dramatiq.Broker | None = None
    ) -> None:
        self.settings = settings or get_settings()
        self._broker = broker
        self._own_broker: dramatiq.Broker | None = None
        self._store: JobStore | None = None
        self._fused: object = _UNKNOWN  # the broker's namespace, or None: _fused_namespace

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
            from .actors import render_preview

            here, default = self.settings, get_settings()
            if (here.broker_url, here.namespace) == (default.broker_url, default.namespace):
                self._broker = render_preview.broker
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
        from .actors import render_preview

        validate(payload)
        normalized = normalize(payload)
        job_id = normalized["jobId"]
        queue = queue_for(normalized["priority"])
        message = render_preview.message_with_options(args=(normalized,), preview_recorded=True)
        # With a Redis broker on the state store's server, the record and the message are
        # written by one script; otherwise the record comes first, then broker.enqueue.
        namespace = self._fused_namespace()
        pushed = None if namespace is None else self._encode_for(message, namespace, job_id)
        outcome, state = self.store.record(
            normalized, queue=queue, message=None if pushed is None else pushed[1]
        )
        if outcome == "conflict":
            raise JobConflict(f"jobId {job_id!r} was already used with a different payload")
        if outcome == "duplicate":
            emit("duplicate", job_id=job_id)
            return Submission(job_id, state, duplicate=True)
        if pushed is not None:
            self.broker.emit_after("enqueue", pushed[0], None)
            return Submission(job_id, "queued", duplicate=False)
        try:
            self.broker.enqueue(message)
        except Exception as exc:
            self.store.delete(job_id, queue)
            raise _unavailable(job_id, exc) from exc
        return Submission(job_id, "queued", duplicate=False)

    def _fused_namespace(self) -> str | None:
        """The broker's namespace when the broker is Redis on the state store's server."""
        if self._fused is _UNKNOWN:
            self._fused = shared_redis_namespace(self.broker, self.store.client)
        return self._fused  # type: ignore[return-value]

    def _encode_for(
        self, message: dramatiq.Message[Any], namespace: str, job_id: str
    ) -> tuple[dramatiq.Message[Any], BrokerMessage]:
        """The message as ``RedisBroker.enqueue`` would push it: a fresh id, the broker's
        ``before_enqueue`` hooks (which may add options), then the encoding.  A duplicate or
        a conflict is then not enqueued, like an enqueue that failed: no ``after_enqueue``."""
        message = message.copy(options={"redis_message_id": str(uuid.uuid4())})
        try:
            self.broker.emit_before("enqueue", message, None)
            data = message.encode()
        except PreviewError:
            raise
        except Exception as exc:
            raise _unavailable(job_id, exc) from exc
        message_id = message.options["redis_message_id"]
        return message, BrokerMessage(namespace, message.queue_name, message_id, data)

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's status object (contract §5).

        Raises:
          JobNotFound: no job with this id (or its record expired).
        """
        status = self.store.get(job_id)
        if status is None:
            raise JobNotFound(job_id)
        return status

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job: a waiting job at once, a running one at its next checkpoint.

        Returns ``{"jobId", "state"}`` with ``cancelled``, or ``running`` while a running
        job is on its way to ``cancelled`` (asking again meanwhile answers the same).

        Raises:
          JobNotFound: no job with this id.
          JobConflict: the job already finished: succeeded, failed or cancelled.
        """
        outcome = self.store.cancel(job_id)
        if outcome == "missing":
            raise JobNotFound(job_id)
        if outcome.startswith("final:"):
            state = outcome.removeprefix("final:")
            raise JobConflict(f"job {job_id!r} already {state}; it cannot be cancelled")
        return {"jobId": job_id, "state": outcome}


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


def cancel_preview(job_id: str) -> dict[str, Any]:
    """Cancel ``job_id``; see :meth:`PreviewClient.cancel`."""
    return default_client().cancel(job_id)

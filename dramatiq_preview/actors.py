"""The ``render_preview`` actor, the broker it is declared on, and :func:`setup_broker`."""

from __future__ import annotations

import dataclasses
from typing import Any

import dramatiq

from .broker import attach_middleware, default_broker, use_for_actor
from .config import get_settings
from .errors import PermanentError
from .jobs import run_job
from .models import JobResult
from .names import ACTOR_NAME, broker_queues
from .validation import new_job_id


class PreviewActor(dramatiq.Actor[Any, Any]):
    """The actor class of ``render_preview``: routes each message to its priority lane
    (the lanes of its broker and PREVIEW_NAMESPACE, :func:`~.names.broker_queues`).

    It also gives a payload without ``jobId`` a fresh one (on a copy: the caller's dict is
    left alone), so the id can be read back from the returned message's ``args[0]``.
    """

    def message_with_options(
        self, *, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> dramatiq.Message[Any]:
        queue_name = self.queue_name
        if len(args) == 1 and isinstance(args[0], dict) and not kwargs:
            payload = dict(args[0])
            if "jobId" not in payload:
                payload["jobId"] = new_job_id()
            args = (payload,)
            lanes = broker_queues(self.broker, get_settings().namespace)
            queue_name = lanes.for_priority(payload.get("priority", "normal"))
        message = super().message_with_options(args=args, kwargs=kwargs, **options)
        return dataclasses.replace(message, queue_name=queue_name)


_settings = get_settings()
_broker = default_broker()


@dramatiq.actor(
    actor_class=PreviewActor,
    actor_name=ACTOR_NAME,
    queue_name=broker_queues(_broker, _settings.namespace).default,
    broker=_broker,
    max_retries=_settings.max_retries,
    min_backoff=_settings.min_backoff_ms,
    max_backoff=_settings.max_backoff_ms,
    time_limit=_settings.time_limit_ms,
    throws=(PermanentError,),
)
def render_preview(payload: dict[str, Any]) -> JobResult | None:
    """Render the outputs of one job payload (see schemas/preview-job.schema.json).

    Returns the result (``{"outputs": [...]}``), or None when the job was cancelled or
    another delivery took it over.  In a worker, Dramatiq hands the result to the status
    middleware, which records it with ``succeeded``.  Permanent errors are raised at once
    and never retried; transient ones are retried by Dramatiq's ``Retries`` with
    exponential backoff.
    """
    return run_job(payload)


use_for_actor(render_preview.broker)


def setup_broker(broker: dramatiq.Broker) -> dramatiq.Broker:
    """Attach dramatiq-preview to a broker the host built itself.

    Adds our middleware (and Dramatiq's ``Retries``/``TimeLimit`` if missing), declares the
    priority lanes and the webhook queue, and declares ``render_preview`` on ``broker``; the
    webhook actor (``deliver_preview_webhook``, :mod:`.webhooks`) follows it there
    (:func:`~.broker.follow_actor_broker`).  Safe to call twice.
    Call it after building the broker and before starting workers or sending jobs; calling
    ``dramatiq.set_broker(broker)`` as well is up to the host.

    Returns:
      The same broker.
    """
    attach_middleware(broker)
    render_preview.broker = broker
    # The lanes depend on the broker (namespaced on RabbitMQ, not on Redis).
    render_preview.queue_name = broker_queues(broker, get_settings().namespace).default
    use_for_actor(broker)
    if broker.actors.get(ACTOR_NAME) is not render_preview:
        broker.declare_actor(render_preview)
    return broker

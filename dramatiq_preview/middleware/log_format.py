"""LogFormat: applies ``PREVIEW_LOG_FORMAT`` in each worker process (see :mod:`..logs`), and
keeps job payloads out of the log lines of every worker, in-process ones included."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dramatiq
from dramatiq.broker import MessageProxy

from ..config import Settings, get_settings
from ..logs import configure_logging
from ..messages import is_preview_message, job_id_of
from ..names import ACTOR_NAME


class _Shown(str):
    """Text that prints as itself with ``%s`` and ``%r`` alike (``Retrying message %r``)."""

    def __repr__(self) -> str:
        return str(self)


def _message_summary(value: Any) -> Any:
    """A ``render_preview`` message as ``render_preview(jobId=..., message_id=...)``.

    Dramatiq prints a message as its actor call, payload included: a signed source URL and
    the caller's metadata would end up in the log.
    """
    if isinstance(value, (dramatiq.Message, MessageProxy)) and is_preview_message(value):
        return _Shown(f"{ACTOR_NAME}(jobId={job_id_of(value)}, message_id={value.message_id})")
    return value


def _url_summary(value: Any) -> Any:
    """An http(s) URL without user information, query and fragment (httpx logs each request
    with its URL, and a source URL may be signed in its query)."""
    if not isinstance(value, str) and type(value).__name__ != "URL":
        return value
    text = str(value)
    if not text.startswith(("http://", "https://")):
        return value
    try:
        parts = urlsplit(text)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return _Shown("<a URL>")
    hidden = "?***" if parts.query or parts.fragment else ""
    return _Shown(urlunsplit((parts.scheme, host, parts.path, "", "")) + hidden)


class _RewriteArgs(logging.Filter):
    """Pass every record, with each of its arguments rewritten by ``rewrite``."""

    def __init__(self, rewrite: Callable[[Any], Any]) -> None:
        super().__init__()
        self._rewrite = rewrite

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(self._rewrite(arg) for arg in args)
        elif isinstance(args, Mapping):
            record.args = {key: self._rewrite(arg) for key, arg in args.items()}
        return True


class _ActorArgs(logging.Filter):
    """On the actor's own logger, ``Received args=%r kwargs=%r.`` shows the jobId only."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args and isinstance(args[0], (tuple, list)):
            kwargs = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
            call = SimpleNamespace(args=tuple(args[0]), kwargs=kwargs, message_id="")
            job_id = job_id_of(call) or "?"
            hidden: list[object] = [_Shown(f"<payload of job {job_id}>")]
            hidden += [_Shown("<hidden>") if arg else arg for arg in args[1:]]
            record.args = tuple(hidden)
        return True


_MESSAGES = _RewriteArgs(_message_summary)
_URLS = _RewriteArgs(_url_summary)
_ACTOR_ARGS = _ActorArgs()


class LogFormat(dramatiq.Middleware):
    """Apply ``PREVIEW_LOG_FORMAT`` in each worker process, right after Dramatiq set up logging,
    and keep job payloads out of Dramatiq's log lines in every worker.

    The format is applied only in processes booted by the ``dramatiq`` command; a host that
    starts a ``Worker`` itself keeps its own logging (see
    :func:`~dramatiq_preview.logs.configure_logging`).

    The payloads are kept out in every worker, in-process ones included: when a worker
    boots, filters go on the loggers of Dramatiq's worker, its threads, the broker and its
    middleware (a ``render_preview`` message in a line becomes
    ``render_preview(jobId=..., message_id=...)``), the actor's own logger (its debug line
    of the call's arguments shows the jobId only) and httpx's (a request's URL loses its
    user information, query and fragment).

    Parameters:
      settings: the settings to use; by default the process-wide ones, read at boot.
    """

    def __init__(self, *, settings: Settings | None = None) -> None:
        self._settings = settings

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        configure_logging(self._settings or get_settings())

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Before: the worker's threads start taking messages inside Worker.start().
        _install_filters(broker, worker)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # After: the threads exist now, and their own loggers are the ones that count.
        _install_filters(broker, worker)


def _install_filters(broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
    """Put the filters on every logger that may print a message (``addFilter`` adds a
    filter once, however often it is called)."""
    for logger in _message_loggers(broker, worker):
        logger.addFilter(_MESSAGES)
    actor = broker.actors.get(ACTOR_NAME)
    if actor is not None:
        actor.logger.addFilter(_ACTOR_ARGS)
    logging.getLogger("httpx").addFilter(_URLS)


def _message_loggers(broker: dramatiq.Broker, worker: dramatiq.Worker) -> Iterator[logging.Logger]:
    # By name, for the threads not started yet (Dramatiq names them so in dramatiq.worker)...
    yield logging.getLogger("dramatiq.worker.WorkerThread")
    queues = broker.get_declared_queues() | broker.get_declared_delay_queues()
    for queue in sorted(queues):
        yield logging.getLogger(f"dramatiq.worker.ConsumerThread({queue})")
    # ...and by object, for those started and whatever else holds a logger.
    threads = [*getattr(worker, "workers", ()), *getattr(worker, "consumers", {}).values()]
    for owner in (worker, broker, *broker.middleware, *threads):
        logger = getattr(owner, "logger", None)
        if isinstance(logger, logging.Logger):
            yield logger


__all__ = ["LogFormat"]

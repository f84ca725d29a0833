"""The fused enqueue: a submit writes its broker message in the same Lua script as its job
record, in the key layout of Dramatiq's ``RedisBroker``.

This module is the one place that knows that layout: the list ``{namespace}:{queue}`` of
message ids and the hash ``{namespace}:{queue}.msgs`` of id -> ``Message.encode()``, with
the id in the message's ``redis_message_id`` option (``RedisBroker.enqueue`` does the same;
``lua/create.lua`` writes the two keys).  Dramatiq may change that layout in any release, so
the path is used only with a plain ``RedisBroker`` of a major version we tested, on the state
store's server, database and credentials; anything else uses ``broker.enqueue``
(docs/broker.md, "One round trip per submit on Redis").

It also knows the argument layout of the broker's ``dispatch`` script, for
:func:`run_maintenance` (the ``Recovery`` middleware), under the same version guard.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis

#: Major versions of Dramatiq whose ``RedisBroker`` the fused enqueue was tested with; we
#: trust the layout within a major version we tested and fall back to ``broker.enqueue`` on
#: any other.  Adding a major here needs tests/test_fused_enqueue.py to pass against it.
TESTED_DRAMATIQ_MAJORS = frozenset({2})


def fused_enqueue_supported(version: str | None = None) -> bool:
    """Whether the installed Dramatiq (or ``version``) is one the fused enqueue was tested
    with: its major version is in :data:`TESTED_DRAMATIQ_MAJORS`.  An unparsable version
    is not."""
    text = dramatiq.__version__ if version is None else version
    major, _, _ = text.partition(".")
    return major.isdigit() and int(major) in TESTED_DRAMATIQ_MAJORS


def shared_redis_namespace(broker: dramatiq.Broker, client: Any) -> str | None:
    """The namespace of ``broker`` when it is a Dramatiq ``RedisBroker`` on the same Redis
    server and database, with the same credentials, as ``client`` (a ``redis.Redis``),
    else None."""
    if type(broker) is not RedisBroker:
        # A subclass may store or enqueue messages its own way: use its enqueue().
        return None
    namespace = getattr(broker, "namespace", None)
    broker_client = getattr(broker, "client", None)
    if not isinstance(namespace, str) or broker_client is None:
        return None
    if _server_of(broker_client) != _server_of(client):
        return None
    return namespace


def _server_of(client: Any) -> tuple[Any, ...]:
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    return (
        pool.connection_class,
        kwargs.get("host"),
        kwargs.get("port"),
        kwargs.get("path"),
        int(kwargs.get("db") or 0),
        # Other credentials may have other rights (ACLs): then each client writes its keys.
        kwargs.get("username"),
        kwargs.get("password"),
    )


def with_redis_message_id(message: dramatiq.Message[Any]) -> dramatiq.Message[Any]:
    """A copy of ``message`` with a fresh ``redis_message_id``, as ``RedisBroker.enqueue``
    gives each message before the broker's ``before_enqueue`` hooks run."""
    return message.copy(options={"redis_message_id": str(uuid.uuid4())})


@dataclass(frozen=True)
class BrokerMessage:
    """A message to push onto a ``RedisBroker`` queue on the state store's server, in the
    broker's key layout (see the module docstring)."""

    namespace: str
    queue: str
    message_id: str
    data: bytes

    @classmethod
    def of(cls, message: dramatiq.Message[Any], namespace: str) -> BrokerMessage:
        """Encode ``message`` (which carries its ``redis_message_id``) for ``namespace``."""
        return cls(
            namespace, message.queue_name, message.options["redis_message_id"], message.encode()
        )

    @property
    def queue_key(self) -> str:
        return f"{self.namespace}:{self.queue}"

    @property
    def messages_key(self) -> str:
        return f"{self.namespace}:{self.queue}.msgs"


#: The ``dispatch`` command :func:`run_maintenance` carries: it only reads queue sizes.
MAINTENANCE_COMMAND = "qsize"


def run_maintenance(broker: RedisBroker, queue_name: str) -> None:
    """Run ``broker``'s maintenance for ``queue_name`` now: the messages fetched from that
    queue by workers whose heartbeat is older than ``broker.heartbeat_timeout`` go back to
    it, and its dead letters older than ``broker.dead_message_ttl`` are dropped.

    Dramatiq runs this step inside its ``dispatch`` script only when a command draws it
    (``maintenance_chance`` in a million), and only for that command's queue.  Here it rides
    on :data:`MAINTENANCE_COMMAND` with ``do_maintenance`` forced to 1, in the arguments
    ``RedisBroker._dispatch`` builds: ``keys=[namespace]``, ``args=[command, now_ms, queue,
    broker_id, heartbeat_timeout, dead_message_ttl, do_maintenance, max_unpack_size]``.
    Like every broker command it also refreshes ``broker``'s own heartbeat.  Call it only
    when :func:`fused_enqueue_supported` holds.

    Raises:
      redis.RedisError: Redis could not be reached or refused the script.
    """
    args = [
        MAINTENANCE_COMMAND,
        current_millis(),
        queue_name,
        broker.broker_id,
        broker.heartbeat_timeout,
        broker.dead_message_ttl,
        1,
        broker._max_unpack_size(),  # type: ignore[no-untyped-call]
    ]
    broker.scripts["dispatch"](keys=[broker.namespace], args=args)

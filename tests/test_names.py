"""Queue names: one function names every queue, per namespace and broker (issue #16)."""

from __future__ import annotations

import itertools
import re

import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from dramatiq_preview.config import Settings
from dramatiq_preview.names import (
    ALL_QUEUES,
    DEFAULT_NAMESPACE,
    LANES,
    QUEUES,
    WEBHOOK_QUEUE,
    broker_queues,
    canonical_queue,
    queue_for,
    queue_name,
    queues,
)

#: Dramatiq's own rule for queue names (dramatiq/actor.py ``_queue_name_re``).
DRAMATIQ_QUEUE_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9._-]*")
#: Every character PREVIEW_NAMESPACE allows.
NAMESPACE_CHARS = "aZ09_.:-"


class SharedBroker:
    """Stands for a broker whose queue names are global to its server (RabbitMQ)."""


def test_the_default_namespace_keeps_the_historical_names() -> None:
    # Given the default namespace (or none) / Then the names are today's, on any broker
    for namespace in (None, DEFAULT_NAMESPACE):
        assert dict(queues(namespace).lanes) == {
            "high": "preview-high",
            "normal": "preview-normal",
            "low": "preview-low",
        }
        assert queues(namespace).webhooks == "preview-webhooks"
    assert Settings().namespace == DEFAULT_NAMESPACE
    assert broker_queues(SharedBroker(), DEFAULT_NAMESPACE) == queues()
    assert dict(queues().lanes) == QUEUES and WEBHOOK_QUEUE == "preview-webhooks"
    assert (*QUEUES.values(), WEBHOOK_QUEUE) == ALL_QUEUES


def test_another_namespace_is_in_every_queue_name() -> None:
    ours = queues("acme:staging.v2")
    assert ours.lanes["high"] == "preview.acme..staging.-v2.high"
    assert ours.all == (
        "preview.acme..staging.-v2.high",
        "preview.acme..staging.-v2.normal",
        "preview.acme..staging.-v2.low",
        "preview.acme..staging.-v2.webhooks",
    )
    assert ours.for_priority("low") == ours.lanes["low"] == queue_for("low", "acme:staging.v2")
    assert ours.for_priority("urgent") == ours.for_priority(None) == ours.default
    assert queues("staging").default == "preview.staging.normal"


@pytest.mark.parametrize(
    "namespace", ["0day", "-x", ".", ":", "a.DQ", "a.XQ", "x" * 64, ":" * 64, DEFAULT_NAMESPACE]
)
def test_every_name_is_a_valid_dramatiq_queue_name_that_keeps_its_suffixes(
    namespace: str,
) -> None:
    for name in queues(namespace).all:
        assert DRAMATIQ_QUEUE_NAME.fullmatch(name), name
        # A lane is never mistaken for Dramatiq's delay or dead-letter queue of another
        assert canonical_queue(name) == name
        assert canonical_queue(name + ".DQ") == canonical_queue(name + ".XQ") == name
        assert len(name) + 3 <= 255  # RabbitMQ's limit, with the .DQ/.XQ suffix


def test_distinct_namespaces_never_share_a_queue() -> None:
    # Given every namespace of up to four characters of each kind PREVIEW_NAMESPACE allows
    spaces = [
        "".join(chars)
        for size in range(1, 5)
        for chars in itertools.product(NAMESPACE_CHARS, repeat=size)
    ]
    # When each is mapped / Then no two of their queues (lanes and webhooks) coincide
    names = [name for ns in spaces for name in queues(ns).all]
    assert len(set(names)) == len(names)
    # and none is a historical name
    assert not set(names) & set(queues().all)


def test_redis_and_stub_brokers_keep_the_historical_names() -> None:
    # Redis isolates deployments by its key namespace; a stub broker shares nothing
    redis_broker = RedisBroker(url="redis://127.0.0.1:1/0", namespace="ns")  # type: ignore[no-untyped-call]
    try:
        assert broker_queues(redis_broker, "ns") == queues()
        assert broker_queues(StubBroker(middleware=[]), "ns") == queues()
    finally:
        redis_broker.close()
    assert broker_queues(SharedBroker(), "ns") == queues("ns")


def test_queue_name_is_the_one_source_of_the_lanes() -> None:
    for namespace in (None, "ns"):
        assert [queues(namespace).lanes[lane] for lane in LANES] == [
            queue_name(lane, namespace) for lane in LANES
        ]
        assert queues(namespace).webhooks == queue_name("webhooks", namespace)

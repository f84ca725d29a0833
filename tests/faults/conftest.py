"""The fault scenarios run only when asked for: ``make faults`` (``pytest tests/faults -m
faults``), or any run naming this directory or one of its files.  A plain ``pytest`` (``make
test``) skips the directory, whose scenarios take minutes and start their own servers.

Each scenario is parametrised over the broker (``redis``, ``rabbitmq``); the RabbitMQ ones
skip, with the reason, only when no RabbitMQ server answers at ``PREVIEW_TEST_AMQP_URL``.
Their figure lines are repeated at the end of the terminal report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from . import harness

HERE = Path(__file__).resolve().parent


def _asked_for(config: pytest.Config) -> bool:
    if "faults" in (config.option.markexpr or ""):
        return True
    base = config.invocation_params.dir
    for arg in config.args:
        path = (base / arg.split("::", 1)[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.resolve() != HERE and not _asked_for(config):
        return True
    return None


@pytest.fixture(
    params=[
        pytest.param("redis", id="redis"),
        pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def broker(request: pytest.FixtureRequest) -> str:
    """The broker of the scenario: ``redis`` or ``rabbitmq``."""
    kind = str(request.param)
    if kind == "rabbitmq":
        why = harness.rabbitmq_unavailable()
        if why:
            print(f"SCENARIO {request.node.name}: skipped: {why}", flush=True)
            pytest.skip(why)
    return kind


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if harness.FIGURES:
        terminalreporter.section("fault scenario figures")
        for line in harness.FIGURES:
            terminalreporter.write_line(line)

"""Helpers of the outage scenarios (RabbitMQ restart, storage outage): what HTTP clients got
while a server was down, renders in flight at a moment, and the error types of the job
lines of the worker logs.

The HTTP API is the real Flask app (``PreviewExtension``) driven in-process with its test
client, as in the Redis restart: :class:`Answers` keeps every answer with its time, so a
scenario can say what came back while the server was down and when full service returned.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any, NamedTuple

from dramatiq_preview.testing import S3Server

from .harness import Deployment


def quiet_port() -> int:
    """A free TCP port of 127.0.0.1 *below* the kernel's ephemeral range, for a server that
    is stopped and started again on the same port.

    :func:`~dramatiq_preview.testing.free_port` picks from the ephemeral range: while the
    server is down, any outgoing connection on the machine may get its port as a local
    port, and a client retrying ``connect(127.0.0.1:port)`` may even be connected to itself
    (TCP simultaneous open), after which the server cannot listen there again (seen here:
    ``eaddrinuse`` on a RabbitMQ restart).  Below the range, only a listener can take it.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            low = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def restartable_s3() -> S3Server:
    """An :class:`~dramatiq_preview.testing.S3Server` (not started) whose ports are all
    :func:`quiet_port` ones, so that it can start again on them after an outage.

    (``S3Server`` picks them with ``free_port``, in the ephemeral range: fine for a server
    that is started once.  It has no parameter for them, hence the attributes set here.)
    """
    server = S3Server()
    server._ports = {name: quiet_port() for name in server._ports}
    server.port = server._ports["s3"]
    return server


#: A job line that carries an error: ``job ID retrying (attempt N, 0.123s): type: message``.
_ERROR_LINE = re.compile(
    r"^\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[PID (?P<pid>\d+)\] \[[^\]]*\] "
    r"\[dramatiq_preview\.jobs\] \[\w+\] job (?P<job>\S+) (?P<event>\w+) "
    r"\(attempt [^,]+, [\d.]+s\): (?P<type>[\w]+): (?P<message>.*)$",
    re.MULTILINE,
)


class Answer(NamedTuple):
    at: float
    route: str
    status: int
    #: The JSON ``error`` code (or health ``status``), None if none.
    code: str | None
    json: bool


class Answers:
    """Every HTTP answer the clients got, with its time (thread-safe)."""

    def __init__(self) -> None:
        self.items: list[Answer] = []
        self._lock = threading.Lock()

    def add(self, route: str, response: Any) -> None:
        body = response.get_json(silent=True)
        code = (body.get("error") or body.get("status")) if isinstance(body, dict) else None
        with self._lock:
            self.items.append(
                Answer(time.time(), route, response.status_code, code, body is not None)
            )

    def between(self, start: float, end: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.items if start <= a.at <= end]

    def all(self) -> list[Answer]:
        with self._lock:
            return list(self.items)


def by_route(answers: Iterable[Answer]) -> dict[str, dict[int, int]]:
    """``{route: {status: count}}``."""
    codes: dict[str, dict[int, int]] = {}
    for a in answers:
        per = codes.setdefault(a.route, {})
        per[a.status] = per.get(a.status, 0) + 1
    return codes


def in_flight_at(deployment: Deployment, moment: float) -> dict[str, int]:
    """Renders running at ``moment`` per host: a ``running`` line before it with no later
    line of the same job from the same process before it."""
    last: dict[tuple[str, int, str], str] = {}
    for e in deployment.events():
        if e.at <= moment:
            last[(e.host, e.pid, e.job_id)] = e.event
    counts = dict.fromkeys(deployment.hosts, 0)
    for (host, _pid, _job), event in last.items():
        counts[host] += event == "running"
    return counts


class ErrorLine(NamedTuple):
    at: float
    job_id: str
    event: str  # retrying, failed, ...
    type: str
    message: str


def error_lines(deployment: Deployment) -> list[ErrorLine]:
    """Every job line with an error, of every host and incarnation, in time order."""
    found = []
    for host in deployment.hosts.values():
        for m in _ERROR_LINE.finditer(host.log):
            found.append(
                ErrorLine(
                    datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp(),
                    m["job"],
                    m["event"],
                    m["type"],
                    m["message"],
                )
            )
    return sorted(found)


def tally(lines: Iterable[ErrorLine]) -> dict[str, int]:
    """``{"event/type": count}``, most frequent first."""
    return dict(Counter(f"{line.event}/{line.type}" for line in lines).most_common())

"""Shared constants and helpers of the test-suite (import them from here, not conftest).

Importing this module sets up the environment (PREVIEW_* pointing at a private Redis port
and temp directories) before anything imports ``dramatiq_preview``, which reads its settings
once, at first import.  tests/conftest.py imports it first and starts that Redis.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from dramatiq_preview.testing import WorkerProcess

T = TypeVar("T")

for _name in [n for n in os.environ if n.startswith("PREVIEW_")]:
    del os.environ[_name]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


REDIS_PORT = _free_port()
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"
TMP = Path(tempfile.mkdtemp(prefix="preview-tests-"))
SOURCE_ROOT = TMP / "sources"
OUTPUT_DIR = TMP / "outputs"
SOURCE_ROOT.mkdir()
OUTPUT_DIR.mkdir()
REPO = Path(__file__).resolve().parent.parent

#: The settings every test process and worker starts from.
BASE_ENV = {
    "PREVIEW_REDIS_URL": REDIS_URL,
    "PREVIEW_NAMESPACE": "dptest",
    "PREVIEW_SOURCE_ROOT": str(SOURCE_ROOT),
    "PREVIEW_OUTPUT_DIR": str(OUTPUT_DIR),
    "PREVIEW_MAX_RETRIES": "2",
    "PREVIEW_MIN_BACKOFF_MS": "100",
    "PREVIEW_MAX_BACKOFF_MS": "400",
    "PREVIEW_TIME_LIMIT_MS": "20000",
    "PREVIEW_PROGRESS_INTERVAL_MS": "50",
    "PREVIEW_ALLOWED_URL_HOSTS": "localhost",
    "PREVIEW_ALLOW_PRIVATE_NETWORKS": "true",
    "PREVIEW_FETCH_READ_TIMEOUT_MS": "2000",
    "PREVIEW_BROKER_HEARTBEAT_TIMEOUT_MS": "2000",
    "PREVIEW_BROKER_MAINTENANCE_CHANCE": "200000",
    # Workers of many namespaces share OUTPUT_DIR here: a sweep would take the others' outputs.
    "PREVIEW_GC_INTERVAL_SECONDS": "0",
    # Dramatiq's Prometheus exposition of test workers: loopback, a free port, a temp dir.
    "dramatiq_prom_host": "127.0.0.1",
    "dramatiq_prom_port": str(_free_port()),
    "dramatiq_prom_db": str(TMP / "prometheus"),
}
os.environ.update(BASE_ENV)
# Worker subprocesses import the package from this checkout.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
)


def python_env(**extra: str) -> dict[str, str]:
    """The environment for a plain Python subprocess of the test-suite."""
    return {**os.environ, **extra}


PYTHON = sys.executable


def image_info(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) of an encoded image, read with ImageMagick."""
    from wand.image import Image

    with Image(blob=data) as img:
        return str(img.format).lower(), int(img.width), int(img.height)


def wait_until(
    check: Callable[[], T],
    accept: Callable[[T], object] = bool,
    *,
    timeout: float = 20,
    interval: float = 0.02,
    what: str | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``check()`` until ``accept`` holds for its value, and return that value.

    For what cannot notify us (a key in Redis, a log read from a pipe, an HTTP endpoint):
    it polls every ``interval`` seconds, so a test waits as long as the event takes and no
    longer, up to ``timeout``.  (Arguably a public helper, next to ``wait_for_state`` in
    ``dramatiq_preview.testing``.)

    Parameters:
      check: reads the current value.
      accept: says whether that value is the awaited one (default: truthy).
      what: the awaited event, for the failure message.
      ignore: exceptions of ``check`` that mean "not yet" (a port not listening yet).

    Raises:
      TimeoutError: naming ``what`` and the last value or error seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        seen: object
        try:
            seen = value = check()
        except ignore as exc:
            seen = exc
        else:
            if accept(value):
                return value
        if time.monotonic() >= deadline:
            label = what or getattr(check, "__name__", "condition")
            raise TimeoutError(f"{label}: not within {timeout:g}s; last seen: {_short(seen)}")
        time.sleep(interval)


def wait_for_log(worker: WorkerProcess, text: str, *, timeout: float = 20) -> None:
    """Wait until ``text`` is in the log of a worker (read from its pipe by a thread).

    Raises:
      TimeoutError: with the end of the log.
    """
    try:
        wait_until(lambda: text in worker.log, timeout=timeout)
    except TimeoutError:
        raise TimeoutError(
            f"{text!r} not in the worker log within {timeout:g}s; its end:\n{worker.log[-4000:]}"
        ) from None


def _short(value: Any, limit: int = 2000) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


#: Prometheus samples by (name, sorted labels).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """The samples of a Prometheus text exposition."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def rabbitmq_unavailable(url: str) -> str | None:
    """Why no RabbitMQ test can run against ``url`` (None when a server answers there)."""
    try:
        import pika  # optional: only the RabbitMQ tests call this
    except ImportError as exc:  # pragma: no cover - the rabbitmq extra is a test dependency
        return f"pika is not installed ({exc})"
    try:
        params = pika.URLParameters(url)
        params.socket_timeout = 2
        params.connection_attempts = 1
        pika.BlockingConnection(params).close()
    except Exception as exc:
        return f"no RabbitMQ at {url} ({type(exc).__name__}); set PREVIEW_TEST_AMQP_URL"
    return None


def delete_amqp_queues(url: str, namespace: str) -> None:
    """Delete the RabbitMQ queues of the deployment with ``namespace`` (its lanes and webhook
    queue with their ``.DQ``/``.XQ``) at ``url``.  For tests that use a namespace of their
    own: these queues are theirs alone, and would otherwise pile up on the shared vhost."""
    import pika  # optional: only the RabbitMQ tests call this

    # Not at the top: this module sets the environment the package reads when imported.
    from dramatiq_preview.names import queues

    if queues(namespace) == queues():
        return  # the historical names are shared: never delete them
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for name in queues(namespace).all:
            for queue in (name, name + ".DQ", name + ".XQ"):
                channel.queue_delete(queue)
    finally:
        connection.close()

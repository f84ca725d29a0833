"""Metrics: Dramatiq's Prometheus middleware, made right for our workers.

Dramatiq's ``Prometheus`` middleware (not a default in Dramatiq 2) keeps its multiprocess
files in one fixed directory that nothing cleans, so a restarted worker group adds up the
counters of every earlier run, and two worker groups on one host mix their numbers.  It
also does nothing for a ``Worker`` started in-process (there is no process boot and no
fork).  :class:`Metrics` keeps Dramatiq's metrics and fixes that:

* each run of ``dramatiq`` gets its own multiprocess directory under ``dramatiq_prom_db``
  (named after the main process), created clean at boot; directories of runs that have
  ended are removed;
* its exposition (a process forked by ``dramatiq``, on ``dramatiq_prom_host``:
  ``dramatiq_prom_port``) serves that directory, our job metrics and the scrape-time
  gauges read from Redis;
* a ``Worker`` started in-process gets the same metrics, in memory, served from a thread.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import dramatiq
from dramatiq.middleware import prometheus as dramatiq_prometheus
from dramatiq.middleware.prometheus import Prometheus

from ..config import Settings, get_settings
from ..logs import configure_logging
from ..metrics import (
    JobMetrics,
    prepare_run_directory,
    run_directory,
    start_server,
    worker_registry,
)

logger = logging.getLogger("dramatiq_preview.metrics")


class Metrics(Prometheus):
    """Dramatiq's ``Prometheus`` middleware with per-run directories and our job metrics.

    Parameters:
      settings: the settings to use; by default the process-wide ones, read at boot.
    """

    def __init__(self, *, settings: Settings | None = None) -> None:
        super().__init__()
        self._settings = settings
        #: "process" (booted by the dramatiq command), "thread" (a Worker started in-process).
        self.mode: str | None = None
        self.run_dir: str | None = None
        self.registry: Any = None
        self.job_metrics: Any = None
        self._server: Any = None

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    @property
    def forks(self) -> list[Any]:
        return [serve_worker_metrics]

    # -- boot and shutdown --------------------------------------------------------------

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        # Every worker process of one run, and its exposition fork, share the parent.
        run_dir = prepare_run_directory(os.getppid())
        # Prometheus reads this module global when it boots and when the worker stops.
        dramatiq_prometheus.DB_PATH = run_dir
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = run_dir
        _ensure_multiprocess_values()
        super().after_process_boot(broker)  # type: ignore[no-untyped-call]
        from prometheus_client import CollectorRegistry

        self.job_metrics = JobMetrics(CollectorRegistry())
        self.run_dir = run_dir
        self.mode = "process"

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self.mode is not None:
            return
        # A Worker started in-process: no process boot, no fork.  Keep the metrics in
        # memory (the host's environment is restored) and serve them from a thread.
        # Imported before Prometheus sets PROMETHEUS_MULTIPROC_DIR, so that prometheus_client
        # keeps the host's mode (in memory unless the host chose multiprocess itself).
        import prometheus_client  # noqa: F401
        from prometheus_client import CollectorRegistry

        saved = {
            k: os.environ.get(k) for k in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
        }
        try:
            super().after_process_boot(broker)  # type: ignore[no-untyped-call]
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        self.job_metrics = JobMetrics(CollectorRegistry())
        self.mode = "thread"
        collectors = [
            value
            for value in (*vars(self).values(), *vars(self.job_metrics).values())
            if _is_metric(value)
        ]
        self.registry = worker_registry(self.settings, broker, collectors=collectors)
        host, port = dramatiq_prometheus.HTTP_HOST, dramatiq_prometheus.HTTP_PORT
        try:
            self._server = start_server(self.registry, host, port)
        except OSError as exc:
            logger.warning(
                "cannot serve worker metrics on %s:%s (%s); set dramatiq_prom_port to a free "
                "port, or serve Metrics.registry yourself",
                host,
                port,
                exc,
            )

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self.mode == "process":
            super().after_worker_shutdown(broker, worker)  # type: ignore[no-untyped-call]
        elif self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- Dramatiq's message hooks, inert until the metrics exist ------------------------

    def after_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        if self.mode:
            super().after_nack(broker, message)  # type: ignore[no-untyped-call]

    def after_enqueue(self, broker: dramatiq.Broker, message: Any, delay: Any) -> None:
        if self.mode:
            super().after_enqueue(broker, message, delay)  # type: ignore[no-untyped-call]

    def before_delay_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if self.mode:
            super().before_delay_message(broker, message)  # type: ignore[no-untyped-call]

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if self.mode:
            super().before_process_message(broker, message)  # type: ignore[no-untyped-call]

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if self.mode:
            super().after_process_message(  # type: ignore[no-untyped-call]
                broker, message, result=result, exception=exception
            )

    # As in Dramatiq's Prometheus: a skipped message ends like a processed one.
    after_skip_message = after_process_message


# -- the exposition fork ---------------------------------------------------------------------


def serve_worker_metrics() -> int:
    """Serve the metrics of this ``dramatiq`` run (runs in a process forked by ``dramatiq``).

    It aggregates the run's multiprocess directory and adds the scrape-time gauges of the
    broker the workers use (found the way the workers find it, from the command line).
    """
    settings = get_settings()
    configure_logging(settings)
    run_dir = run_directory(os.getppid())
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    broker = _workers_broker()
    registry = worker_registry(settings, broker, path=run_dir)
    host, port = dramatiq_prometheus.HTTP_HOST, dramatiq_prometheus.HTTP_PORT
    try:
        server = start_server(registry, host, port)
    except OSError as exc:
        logger.error(
            "cannot serve worker metrics on %s:%s (%s); give each worker group on this host "
            "its own dramatiq_prom_port",
            host,
            port,
            exc,
        )
        return 1
    logger.info("serving worker metrics on http://%s:%s/metrics", host, port)
    try:
        # The server runs in a daemon thread; dramatiq stops this process with a signal.
        threading.Event().wait()
    finally:
        server.server_close()
    return 0


def _workers_broker() -> dramatiq.Broker | None:
    """The broker of the ``dramatiq`` command line this process was forked from."""
    try:
        from dramatiq.cli import import_broker, make_argument_parser

        args = make_argument_parser().parse_args(sys.argv[1:])  # type: ignore[no-untyped-call]
        _module, broker = import_broker(args.broker)  # type: ignore[no-untyped-call]
        return broker  # type: ignore[no-any-return]
    except (Exception, SystemExit) as exc:
        logger.warning("no scrape-time gauges: cannot load the workers' broker (%s)", exc)
        return None


def _ensure_multiprocess_values() -> None:
    """Switch prometheus_client to multiprocess values if it was imported before boot.

    prometheus_client picks its value class at import, from PROMETHEUS_MULTIPROC_DIR; a
    host module that imported it earlier would keep every worker's metrics in memory,
    invisible to the exposition process.
    """
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        logger.warning(
            "prometheus_client was imported before process boot; switching to multiprocess mode"
        )
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]


def _is_metric(value: Any) -> bool:
    from prometheus_client.metrics import MetricWrapperBase

    return isinstance(value, MetricWrapperBase)


__all__ = ["Metrics", "serve_worker_metrics"]

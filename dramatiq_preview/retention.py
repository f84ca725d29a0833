"""Retention: delete the outputs whose job record no longer exists (contract §9).

Job records expire after ``PREVIEW_JOB_TTL_SECONDS``; outputs on disk or in S3 have no TTL
of their own, so a sweep removes what a vanished record leaves behind.  It walks the job ids
that have outputs under ``PREVIEW_OUTPUT_DIR`` (:meth:`Storage.job_ids`) in batches, asks
Redis in one round trip per batch which of them still have a record, and removes the outputs
of the others.  Memory stays bounded by one batch, whatever the number of jobs (the
listing itself is the backend's: one S3 page at a time).

A job whose record exists is never touched; names under the root that are not job ids are
never touched either.  One window remains: a job id re-submitted after its record expired,
between the batch's check and the deletion, may lose the outputs it was writing; the check
and the deletion of one batch are seconds apart at most.

Workers run :func:`sweep_if_due` every ``PREVIEW_GC_INTERVAL_SECONDS`` (the ``Retention``
middleware); ``dramatiq-preview gc`` runs :func:`sweep` at once, without the lock.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from .config import Settings
from .errors import ConfigError, StateStoreUnavailable, StorageError
from .names import gc_lock_key
from .state import get_store
from .storage import Storage, open_storage, roots_overlap

logger = logging.getLogger("dramatiq_preview.retention")

_T = TypeVar("_T")

#: Job ids checked against Redis per round trip.
BATCH_SIZE = 500


@dataclass
class SweepReport:
    """What one sweep did (or, in a dry run, would do).

    It is filled in as the sweep goes, so a caller that passed its own report still knows
    what was removed when the sweep stopped on an error.
    """

    dry_run: bool = False
    #: Job ids that have outputs and were checked against Redis.
    jobs_checked: int = 0
    #: Jobs whose record is gone and that had outputs.
    expired_jobs: int = 0
    #: Outputs of those jobs: removed, or listed in a dry run.
    outputs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dryRun": self.dry_run,
            "jobsChecked": self.jobs_checked,
            "expiredJobs": self.expired_jobs,
            "outputs": self.outputs,
        }

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return f"{verb} {self.outputs} output(s) of {self.expired_jobs} expired job(s)"


def sweep(
    settings: Settings,
    *,
    dry_run: bool = False,
    on_output: Callable[[str], None] | None = None,
    batch_size: int = BATCH_SIZE,
    report: SweepReport | None = None,
    stop: threading.Event | None = None,
) -> SweepReport:
    """Remove the outputs of every job whose record no longer exists.

    Parameters:
      settings: ``output_dir`` is swept; records are looked up in its Redis and namespace.
      dry_run: list, remove nothing.
      on_output: called with each output's key (``{jobId}/{index}.{ext}``) of an expired
        job, before it is removed (or instead, in a dry run).
      batch_size: job ids per Redis round trip.
      report: filled in as the sweep goes (a new one by default).
      stop: when set, the sweep ends after the job it is on (a worker shutting down).

    Only what the library writes under ``{jobId}/`` is removed (outputs and temporary
    files: :func:`dramatiq_preview.storage.is_output_key`).  An output root belongs to one
    deployment (namespace): a job of another namespace has no record here.

    Raises:
      ConfigError: the output root is, contains or lies inside the source root.
      StateStoreUnavailable: Redis did not answer; nothing of the batch was removed.
      StorageError: storage did not answer (transient).
      StorageForbidden: storage refused the listing or the deletion.
    """
    if roots_overlap(settings.output_dir, settings.source_root):
        # Sources are no one's outputs: a sweep must never be able to reach them.
        raise ConfigError(
            "PREVIEW_OUTPUT_DIR",
            "is, contains or lies inside PREVIEW_SOURCE_ROOT; retention sweeps only an output "
            "root of its own",
        )
    report = report if report is not None else SweepReport(dry_run=dry_run)
    store = get_store(settings)
    storage = open_storage(settings.output_dir, settings)
    for batch in _batches(storage.job_ids(), batch_size):
        if stop is not None and stop.is_set():
            return report
        live = store.existing(batch)
        report.jobs_checked += len(batch)
        for job_id in batch:
            if job_id in live:
                continue
            if stop is not None and stop.is_set():
                return report
            count = _expire(storage, job_id, dry_run=dry_run, on_output=on_output)
            if count:
                report.expired_jobs += 1
                report.outputs += count
                logger.debug("job %s: %d output(s) of an expired record", job_id, count)
    return report


def take_lock(settings: Settings, owner: str, seconds: int | None = None) -> bool:
    """Take the sweep lock for ``seconds`` (default ``PREVIEW_GC_INTERVAL_SECONDS``).

    The lock is never released: it expires, so that however many workers try, one sweep
    runs per interval.  Returns whether ``owner`` got it.

    Raises:
      StateStoreUnavailable: Redis did not answer.
    """
    ttl = settings.gc_interval_seconds if seconds is None else seconds
    client = get_store(settings).client
    try:
        return bool(client.set(gc_lock_key(settings.namespace), owner, nx=True, ex=max(1, ttl)))
    except redis.RedisError as exc:
        raise StateStoreUnavailable(
            f"the state store (Redis) is unavailable: {type(exc).__name__}"
        ) from exc


def sweep_if_due(
    settings: Settings, *, owner: str | None = None, stop: threading.Event | None = None
) -> SweepReport | None:
    """Sweep if this caller takes the lock (:func:`take_lock`); ``None`` when another
    worker holds it or ``PREVIEW_GC_INTERVAL_SECONDS`` is 0.

    Raises: as :func:`sweep` and :func:`take_lock`.
    """
    if settings.gc_interval_seconds <= 0:
        return None
    if not take_lock(settings, owner or lock_owner()):
        return None
    return sweep(settings, stop=stop)


def lock_owner() -> str:
    """``host:pid:thread``: who holds the lock, for an operator reading the key."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def _expire(
    storage: Storage,
    job_id: str,
    *,
    dry_run: bool,
    on_output: Callable[[str], None] | None,
) -> int:
    if on_output is None and not dry_run:
        # One listing, not two: remove_job lists the job's keys itself.
        return _guarded(lambda: storage.remove_job(job_id))
    keys = _guarded(lambda: storage.output_keys(job_id))
    for key in keys:
        if on_output is not None:
            on_output(key)
    if dry_run:
        return len(keys)
    return _guarded(lambda: storage.remove_job(job_id))


def _guarded(call: Callable[[], _T]) -> _T:
    """``call()``, with a disk error turned into the transient :class:`StorageError`."""
    try:
        return call()
    except OSError as exc:
        # The backends wrap their own errors; a local listing (rglob) may still raise one.
        raise StorageError(f"the output storage failed: {exc.strerror or exc}") from None


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in _guarded_iter(items):
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _guarded_iter(items: Iterable[str]) -> Iterator[str]:
    iterator = iter(items)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except OSError as exc:
            raise StorageError(f"the output storage failed: {exc.strerror or exc}") from None
        yield item


__all__ = ["BATCH_SIZE", "SweepReport", "lock_owner", "sweep", "sweep_if_due", "take_lock"]

"""Storage for sources and outputs: a local directory or an S3 prefix (contract §9).

- :func:`open_storage` gives the process's :class:`Storage` for a root
  (``PREVIEW_SOURCE_ROOT`` or ``PREVIEW_OUTPUT_DIR``: a :class:`~pathlib.Path` or an
  :class:`~dramatiq_preview.config.S3Location`).
- :func:`destinations` gives the :class:`JobOutputs` a renderer writes a job's outputs to;
  :func:`remove_outputs` deletes them (cancellation, output cap).

Backends: :class:`~.local.LocalStorage` and :class:`~.s3.S3Storage`; what they share (the
interface, the key guard, spooling) is in :mod:`.base`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from ..config import S3Location, Settings, StorageRoot, get_settings
from ..errors import PreviewError
from ..models import CONTENT_TYPES, JobSpec, relative_output_path
from .base import (
    JOB_ID_RE,
    OUTPUT_CACHE_CONTROL,
    ObjectInfo,
    Storage,
    StoredObject,
    is_output_key,
    source_key,
    spool,
    too_large,
)
from .local import LocalStorage, atomic_write
from .s3 import S3Storage, classify

__all__ = [
    "JOB_ID_RE",
    "OUTPUT_CACHE_CONTROL",
    "JobOutputs",
    "LocalStorage",
    "ObjectInfo",
    "S3Storage",
    "Storage",
    "StoredObject",
    "atomic_write",
    "classify",
    "destinations",
    "is_output_key",
    "open_storage",
    "remove_outputs",
    "roots_overlap",
    "source_key",
    "spool",
    "too_large",
]

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_opened: dict[tuple[object, ...], Storage] = {}
#: The AWS variables an S3 client is built from: a change makes a new client.
_AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


def open_storage(root: StorageRoot | Storage, settings: Settings | None = None) -> Storage:
    """The storage of ``root``, one per root, AWS configuration and process.

    S3 clients are made on first use (boto3 reads the AWS configuration then) and remade
    after a fork or when an ``AWS_*`` variable changed.
    """
    if isinstance(root, Storage):
        return root
    if isinstance(root, S3Location):
        settings = settings or get_settings()
        timeouts = (settings.fetch_connect_timeout_ms, settings.fetch_read_timeout_ms)
        key: tuple[object, ...] = (
            root,
            os.getpid(),
            timeouts,
            tuple(os.environ.get(name) for name in _AWS_ENV),
        )
    else:
        key = (Path(os.path.abspath(root)),)
    storage = _opened.get(key)
    if storage is None:
        with _lock:
            storage = _opened.get(key)
            if storage is None:
                if len(_opened) > 64:
                    _opened.clear()
                if isinstance(root, S3Location):
                    storage = S3Storage(
                        root,
                        connect_timeout=timeouts[0] / 1000,
                        read_timeout=timeouts[1] / 1000,
                    )
                else:
                    storage = LocalStorage(root)
                _opened[key] = storage
    return storage


class JobOutputs:
    """Where a renderer writes one job's outputs: one key per output, in request order.

    :meth:`write` stores output ``index``; :meth:`discard` deletes what this object wrote
    (a render that failed half-way keeps nothing).  ``write_seconds`` is the time spent in
    :meth:`write` (a slow or unreachable S3 is not the render's doing: ``jobs.run_job``
    leaves it out when it judges whether a render overran the time limit).
    """

    def __init__(self, storage: Storage, spec: JobSpec) -> None:
        self.storage = storage
        self.keys = [
            relative_output_path(spec.job_id, i, o).as_posix() for i, o in enumerate(spec.outputs)
        ]
        self._types = [CONTENT_TYPES[o.format] for o in spec.outputs]
        self._written: list[str] = []
        self.write_seconds = 0.0

    def __len__(self) -> int:
        return len(self.keys)

    def write(self, index: int, data: bytes) -> None:
        """Store output ``index``.

        Raises:
          StorageError: storage did not take it (transient).
          StorageForbidden: storage refused it (permanent).
        """
        key = self.keys[index]
        started = time.monotonic()
        try:
            self.storage.put(key, data, self._types[index])
        finally:
            # Counted when the write fails or is interrupted (the time limit) as well.
            self.write_seconds += time.monotonic() - started
        self._written.append(key)

    def discard(self) -> None:
        """Delete the outputs written so far (best effort: a failure is logged)."""
        written, self._written = self._written, []
        if written:
            try:
                self.storage.delete(written)
            except Exception as exc:  # the render's own error is the one reported
                logger.warning("could not delete %d partial output(s): %s", len(written), exc)


def roots_overlap(a: StorageRoot | None, b: StorageRoot | None) -> bool:
    """Whether one root is the other or lies inside it (same bucket and prefix path, or
    the same directory tree)."""
    if a is None or b is None:
        return False
    if isinstance(a, S3Location) and isinstance(b, S3Location):
        if a.bucket != b.bucket:
            return False
        pa, pb = a.prefix.split("/") if a.prefix else [], b.prefix.split("/") if b.prefix else []
        shorter = min(len(pa), len(pb))
        return pa[:shorter] == pb[:shorter]
    if isinstance(a, S3Location) or isinstance(b, S3Location):
        return False
    ra, rb = Path(os.path.realpath(a)), Path(os.path.realpath(b))
    return ra == rb or ra.is_relative_to(rb) or rb.is_relative_to(ra)


def destinations(root: StorageRoot | Storage, spec: JobSpec) -> JobOutputs:
    """The outputs of ``spec`` under ``root`` (``PREVIEW_OUTPUT_DIR``)."""
    return JobOutputs(open_storage(root), spec)


def remove_outputs(root: StorageRoot | Storage, job_id: str) -> int:
    """Delete the outputs of ``job_id`` under ``root`` (a cancelled job, one over the output
    cap); the number of files removed.

    Best effort: when storage fails, a warning is logged and 0 returned; the retention sweep
    removes what is left once the job's record has expired.
    """
    try:
        return open_storage(root).remove_job(job_id)
    except PreviewError as exc:
        logger.warning("could not remove the outputs of job %s: %s", job_id, exc)
        return 0

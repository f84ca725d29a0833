"""What every storage backend offers: the interface, the key guard and the timing events.

Keys are relative POSIX paths (``{jobId}/{index}.{ext}`` for outputs, the job's
``source.path`` for sources).  A backend maps them under its root (a directory, or an S3
``bucket/prefix``) and never outside it.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .. import events
from ..errors import SourceForbidden, SourceTooLarge, SourceUnavailable
from ..models import EXTENSIONS

#: ``Cache-Control`` of every output: a job's outputs never change under the same key except
#: when a retried delivery writes the same pixels again; they stay private to the caller.
OUTPUT_CACHE_CONTROL = "private, max-age=3600"
#: A job id as the payload schema allows it: the only names a sweep looks at in the root.
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
#: What this library writes under ``{jobId}/``: outputs (``0.webp``...) and, on disk, the
#: temporary files of an interrupted atomic write.  Retention and cancellation delete
#: nothing else, so a root shared with other files (a directory called ``2024``) loses none.
_EXTENSIONS_ALT = "|".join(sorted({re.escape(e) for e in EXTENSIONS.values()}))
_OUTPUT_NAME_RE = re.compile(
    rf"^(?:[0-9]{{1,3}}\.(?:{_EXTENSIONS_ALT})|\.tmp-[A-Za-z0-9_]{{1,32}})$"
)


def is_output_key(key: str, job_id: str) -> bool:
    """Whether ``key`` is a file this library writes for ``job_id`` (an output or a
    temporary file of one)."""
    head, slash, name = key.partition("/")
    return head == job_id and bool(slash) and _OUTPUT_NAME_RE.fullmatch(name) is not None


@dataclass(frozen=True)
class ObjectInfo:
    """What a backend knows of one stored object."""

    key: str
    size: int
    etag: str | None
    modified: datetime | None
    content_type: str | None = None


@dataclass(frozen=True)
class StoredObject:
    """An object being read: its metadata and its bytes in chunks (close when done)."""

    info: ObjectInfo
    chunks: Iterator[bytes]
    #: ``(start, stop)`` when a byte range was asked for and served, else ``None``.
    span: tuple[int, int] | None = None
    #: Releases what the object holds (a connection) even when no chunk was read.
    release: Callable[[], None] | None = None

    def close(self) -> None:
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()
        if self.release is not None:
            self.release()


def source_key(relative: str, root_name: str = "PREVIEW_SOURCE_ROOT") -> str:
    """Check a job's ``source.path`` and give it as a normalised relative key.

    ``.`` segments are dropped and repeated slashes merged (as a file system reads them); a
    trailing ``/`` is kept (it names a directory, never a file).

    Raises:
      SourceForbidden: empty, a NUL byte, not Unicode, absolute, or a ``..`` segment.
    """
    if not relative or "\x00" in relative:
        raise SourceForbidden("the source path is empty or contains a NUL byte")
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        raise SourceForbidden("the source path is not valid Unicode text") from None
    if relative.startswith("/"):
        raise SourceForbidden(f"the source path must be relative to {root_name}")
    segments = relative.split("/")
    if ".." in segments:
        raise SourceForbidden("the source path must not contain '..'")
    kept = [s for s in segments if s not in ("", ".")]
    if not kept:
        raise SourceForbidden("the source path names the root itself, not a file")
    tail = "/" if segments[-1] in ("", ".") else ""
    return "/".join(kept) + tail


def too_large(max_bytes: int, declared: int | None = None) -> SourceTooLarge:
    """The error of a source over ``PREVIEW_MAX_SOURCE_BYTES`` (``declared``: its size)."""
    size = f"{declared} bytes" if declared is not None else "larger than allowed"
    return SourceTooLarge(
        f"the source is {size}; at most {max_bytes} bytes are allowed (PREVIEW_MAX_SOURCE_BYTES)"
    )


def spool(
    chunks: Iterator[bytes],
    *,
    max_bytes: int,
    spool_dir: Path | None,
    deadline: float,
    shown: str,
) -> tuple[int, int]:
    """Write ``chunks`` into an unlinked temporary file in ``spool_dir``.

    One chunk is in memory at a time.  Returns a descriptor of the file (the caller closes
    it) and the number of bytes written.  Exceptions of ``chunks`` propagate.

    Raises:
      SourceTooLarge: more than ``max_bytes`` arrived (the download stops there).
      SourceUnavailable: ``deadline`` (``time.monotonic()``) passed.
    """
    with tempfile.TemporaryFile(dir=spool_dir) as file:
        total = 0
        for chunk in chunks:
            total += len(chunk)
            if total > max_bytes:
                raise too_large(max_bytes)
            if time.monotonic() > deadline:
                raise SourceUnavailable(f"{shown} took too long to download")
            file.write(chunk)
        file.flush()
        return os.dup(file.fileno()), total


class Storage(ABC):
    """A root for sources or outputs.  Thread-safe; one per root per process.

    Errors: reads of sources raise the ``Source*`` errors of a job (the path is the
    caller's); every other operation raises
    :class:`~dramatiq_preview.errors.StorageError` when storage may answer later (transient)
    and :class:`~dramatiq_preview.errors.StorageForbidden` when it refused (permanent).
    """

    #: ``"local"`` or ``"s3"`` (health and metrics).
    kind: str

    # --- sources ---------------------------------------------------------------------

    @abstractmethod
    def open_source(
        self, relative: str, *, max_bytes: int, spool_dir: Path | None, deadline: float
    ) -> tuple[int, int]:
        """Open the source ``relative`` (after :func:`source_key`'s guard) for reading.

        Returns an open, read-only, seekable descriptor (the caller closes it) and the size
        checked against ``max_bytes``.  S3 objects are spooled into an unlinked temporary
        file in ``spool_dir`` first.

        Raises:
          SourceForbidden: the guard refused the path.
          SourceNotFound: no such file or key.
          SourceTooLarge: more than ``max_bytes``, found before the download.
          SourceUnavailable: storage did not answer in time (transient).
          StorageForbidden: credentials or permissions refused (permanent).
        """

    # --- outputs ---------------------------------------------------------------------

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` atomically: readers see the old object or the new
        one, never part of it.  Sets the content type and :data:`OUTPUT_CACHE_CONTROL`."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Delete ``keys`` (missing ones are fine)."""

    @abstractmethod
    def job_keys(self, job_id: str) -> list[str]:
        """Every key stored for ``job_id`` (under ``{job_id}/``), sorted."""

    @abstractmethod
    def job_ids(self) -> Iterator[str]:
        """The job ids that have outputs here (top-level names that are job ids)."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Size, ETag and modification time of ``key``, or ``None`` when it is missing."""

    @abstractmethod
    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> StoredObject | None:
        """Read ``key`` (``byte_range``: ``(start, stop)``, stop exclusive), or ``None``."""

    def presigned_url(self, key: str, ttl_seconds: int) -> str | None:
        """A URL that lets anyone GET ``key`` for ``ttl_seconds``; ``None`` if there is none."""
        return None

    def prepare(self) -> None:
        """Do the local set-up a first :meth:`ping` would (S3: load boto3, build the client),
        so that a timed check then measures storage, not imports."""
        return None

    @abstractmethod
    def ping(self) -> None:
        """Check that the root is reachable and usable; raise the errors above if not."""

    def output_keys(self, job_id: str) -> list[str]:
        """The keys under ``{job_id}/`` that this library wrote (:func:`is_output_key`)."""
        if not JOB_ID_RE.fullmatch(job_id):
            return []
        return [k for k in self.job_keys(job_id) if is_output_key(k, job_id)]

    def remove_job(self, job_id: str) -> int:
        """Delete the outputs of ``job_id`` (only what :meth:`output_keys` lists); the number
        of objects removed."""
        keys = self.output_keys(job_id)
        if keys:
            self.delete(keys)
        return len(keys)

    # --- timing -----------------------------------------------------------------------

    @contextmanager
    def timed(self, operation: str) -> Iterator[None]:
        """Emit a ``storage`` event (backend, operation, seconds, outcome) around a call."""
        start = time.perf_counter()
        outcome = "ok"
        try:
            yield
        except BaseException as exc:
            outcome = getattr(exc, "type", "error")
            raise
        finally:
            events.emit(
                "storage",
                backend=self.kind,
                operation=operation,
                seconds=time.perf_counter() - start,
                outcome=outcome,
            )

"""A local directory as storage: atomic writes by rename, guarded opens of sources.

Path guard for sources: the path is resolved (``realpath``) and must stay inside the root;
``..``, absolute paths and symlinks leaving the root are refused before anything is opened.
The file is then opened with ``O_NOFOLLOW`` and the descriptor's ``/proc/self/fd`` link is
checked again, so a directory swapped for a symlink between the check and the open is
caught.  A path names what ``open(2)`` would: ``img.png/``, ``img.png/.`` and ``img.png/x``
are not the file ``img.png`` (source not found), while ``./img.png`` is.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from ..errors import SourceForbidden, SourceNotFound, SourceTooLarge, StorageError
from .base import JOB_ID_RE, ObjectInfo, Storage, StoredObject, source_key

_CHUNK = 256 * 1024


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    Raises:
      StorageError: the directory cannot be created or the disk refused the write.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise StorageError(f"cannot write output {path.name}: {exc.strerror or exc}") from None


class LocalStorage(Storage):
    """Files under ``root`` (created on the first write)."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def path(self, key: str) -> Path:
        """The file of ``key`` (a relative key; callers check it resolves inside)."""
        return self.root / key

    # --- sources ---------------------------------------------------------------------

    def open_source(
        self, relative: str, *, max_bytes: int, spool_dir: Path | None, deadline: float
    ) -> tuple[int, int]:
        source_key(relative)
        with self.timed("get"):
            return self._open_guarded(relative, max_bytes)

    def _open_guarded(self, relative: str, max_bytes: int) -> tuple[int, int]:
        root = os.path.realpath(self.root)
        target = os.path.realpath(os.path.join(root, relative))
        if not _inside(target, root):
            # Say nothing about where a symlink points.
            raise SourceForbidden("the source path leaves PREVIEW_SOURCE_ROOT")
        shown = repr(relative[:200])
        # As open(2) reads it, a path ending in "/" or "/." names a directory: "img.png/" is
        # ENOTDIR for a file, never the file.  realpath drops that tail; it is put back here.
        if relative.rsplit("/", 1)[-1] in ("", "."):
            target = target.rstrip("/") + "/"
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        try:
            fd = os.open(target, flags)
        except FileNotFoundError:
            raise SourceNotFound(f"source file {shown} not found") from None
        except NotADirectoryError:
            raise SourceNotFound(
                f"source file {shown} not found: a part of it is not a directory"
            ) from None
        except IsADirectoryError:
            raise SourceNotFound(f"source {shown} is a directory, not a file") from None
        except OSError as exc:
            # ELOOP: the last component became a symlink after the check.
            raise SourceForbidden(
                f"source file {shown} cannot be opened ({exc.strerror})"
            ) from None
        try:
            # The descriptor, not the name, is what we read: check where it really points.
            opened = os.readlink(f"/proc/self/fd/{fd}")
            if not _inside(opened, root):
                raise SourceForbidden("the source path leaves PREVIEW_SOURCE_ROOT")
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise SourceNotFound(f"source {shown} is a directory, not a file")
            if not stat.S_ISREG(info.st_mode):
                raise SourceForbidden(f"source {shown} is not a regular file")
            if info.st_size > max_bytes:
                raise SourceTooLarge(
                    f"the source is {info.st_size} bytes; at most "
                    f"{max_bytes} are allowed (PREVIEW_MAX_SOURCE_BYTES)"
                )
            os.set_blocking(fd, True)
            return fd, info.st_size
        except BaseException:
            os.close(fd)
            raise

    # --- outputs ---------------------------------------------------------------------

    def put(self, key: str, data: bytes, content_type: str) -> None:
        with self.timed("put"):
            atomic_write(self.root / key, data)

    def delete(self, keys: list[str]) -> None:
        with self.timed("delete"):
            for key in keys:
                with contextlib.suppress(FileNotFoundError):
                    (self.root / key).unlink()

    def remove_job(self, job_id: str) -> int:
        count = super().remove_job(job_id)
        # The job's directory goes too, once nothing else is left in it.
        with contextlib.suppress(OSError):
            if count and JOB_ID_RE.fullmatch(job_id) and job_id not in (".", ".."):
                (self.root / job_id).rmdir()
        return count

    def job_keys(self, job_id: str) -> list[str]:
        # jobIds cannot contain "/" and never start with "."; still, never leave the root.
        if not JOB_ID_RE.fullmatch(job_id) or job_id in (".", ".."):
            return []
        target = self.root / job_id
        if not target.is_dir() or target.is_symlink():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in target.rglob("*")
            if p.is_file() and not p.is_symlink()
        )

    def job_ids(self) -> Iterator[str]:
        try:
            entries = os.scandir(self.root)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot list {self.root.name}: {exc.strerror or exc}") from None
        # One entry at a time: an output root holds one directory per retained job.
        with entries:
            for entry in entries:
                if (
                    JOB_ID_RE.fullmatch(entry.name)
                    and entry.name not in (".", "..")
                    and entry.is_dir(follow_symlinks=False)
                ):
                    yield entry.name

    def head(self, key: str) -> ObjectInfo | None:
        with self.timed("head"):
            target = self._inside_file(key)
            if target is None:
                return None
            info = target.stat()
        return ObjectInfo(
            key=key,
            size=info.st_size,
            etag=None,
            modified=datetime.fromtimestamp(info.st_mtime, timezone.utc),
        )

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> StoredObject | None:
        with self.timed("get"):
            target = self._inside_file(key)
            if target is None:
                return None
            try:
                # One open: the size and the bytes come from the same file, even when a
                # retried job replaces it (by rename) meanwhile.
                file = open(target, "rb")  # noqa: SIM115 - closed by the StoredObject
            except FileNotFoundError:
                return None
            info = os.fstat(file.fileno())
        start, stop = byte_range or (0, info.st_size)
        return StoredObject(
            info=ObjectInfo(
                key=key,
                size=info.st_size,
                etag=None,
                modified=datetime.fromtimestamp(info.st_mtime, timezone.utc),
            ),
            chunks=_read(file, start, stop),
            span=byte_range,
            release=file.close,
        )

    def _inside_file(self, key: str) -> Path | None:
        root = os.path.realpath(self.root)
        target = os.path.realpath(os.path.join(root, key))
        if not _inside(target, root) or not os.path.isfile(target):
            return None
        return Path(target)

    def ping(self) -> None:
        with self.timed("ping"):
            # The root may not exist yet (it is created on the first write): its nearest
            # existing ancestor must then be a writable directory.
            probe = self.root
            while not probe.exists() and probe.parent != probe:
                probe = probe.parent
            if not probe.is_dir():
                raise StorageError(f"{probe} is not a directory")
            if not os.access(probe, os.W_OK | os.X_OK):
                raise StorageError(f"{probe} is not writable by this process")


def _read(file: BinaryIO, start: int, stop: int) -> Iterator[bytes]:
    with file:
        file.seek(start)
        left = stop - start
        while left > 0:
            chunk = file.read(min(_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")

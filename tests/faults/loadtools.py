"""Helpers of the live-server scenarios (API fuzz, load, key audit): a gunicorn web process
of the deployment, HTTP exchanges with it, and the audit of every Redis key it left.

:class:`Gunicorn` serves :func:`webapp.create_app` (``tests/faults/webapp.py``) with the
deployment's settings, on a free port of 127.0.0.1, in a process group of its own.

:func:`audit_namespace` sorts every key of the deployment's Redis into the library's own
(each must expire within ``PREVIEW_JOB_TTL_SECONDS``), Dramatiq's Redis broker keys (which
carry no TTL by design: they must be *empty* once the workers stopped and the queues
drained, see :class:`NamespaceAudit`) and anything else (must be none).  Unlike
:meth:`harness.Deployment.audit_keys`, it knows every queue of the deployment, the webhook
queue included, names each offender, and runs one Dramatiq maintenance pass to show that the
heartbeat entries of stopped workers go.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name, xq_name

from dramatiq_preview.fused_enqueue import run_maintenance
from dramatiq_preview.names import queues
from dramatiq_preview.testing import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PREFIX = "/api/preview"
#: The bearer token of the live-server scenarios (``PREVIEW_API_TOKEN``).
TOKEN = "faults-token-" + os.urandom(8).hex()


# --- the web process ---------------------------------------------------------------------


class Gunicorn:
    """``gunicorn --worker-class gthread`` serving the deployment's API on a free port.

    Parameters:
      env: the deployment's settings (``PREVIEW_*``), over this process's environment.
      workers, threads: gunicorn's; ``timeout`` its worker timeout (an event stream holds a
        thread up to ``PREVIEW_EVENTS_MAX_SECONDS``, well under it).
    """

    def __init__(
        self, env: Mapping[str, str], *, workers: int = 2, threads: int = 4, timeout: int = 60
    ) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            **env,
            "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]),
            "FAULTS_SECRET_KEY": os.urandom(32).hex(),
        }
        self.args = [
            sys.executable,
            "-m",
            "gunicorn",
            f"--workers={workers}",
            f"--threads={threads}",
            "--worker-class=gthread",
            f"--bind=127.0.0.1:{self.port}",
            f"--timeout={timeout}",
            "--keep-alive=30",
            "--log-level=warning",
            "--chdir",
            str(HERE),
            "webapp:create_app()",
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="preview-faults-gunicorn-"))
        self.log_path = self._dir / "gunicorn.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        """What gunicorn and the app wrote (warnings, errors, tracebacks)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, *, timeout: float = 60) -> Gunicorn:
        """Start gunicorn and wait until the health route answers (any status).

        Raises:
          RuntimeError: gunicorn exited, or did not answer within ``timeout`` seconds.
        """
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self.args,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                request("GET", self.port, f"{PREFIX}/worker/health", timeout=5)
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not answer within {timeout:g}s:\n{self.log}")

    def stop(self, *, timeout: float = 30) -> None:
        """SIGTERM (gunicorn's graceful stop), then SIGKILL the group if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Gunicorn:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(
    method: str,
    port: int,
    path: str,
    *,
    body: Any = None,
    token: str | None = None,
    timeout: float = 30,
) -> tuple[int, Any]:
    """One HTTP exchange on a new connection: ``(status, JSON body or None)``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, None


# --- the key audit -----------------------------------------------------------------------


@dataclasses.dataclass
class NamespaceAudit:
    """Every key of a deployment's Redis, by owner (see :func:`audit_namespace`).

    "Back to empty", for Dramatiq's Redis broker keys once the workers stopped (SIGTERM)
    and the queues drained, means:

    * no message waiting or delayed: no queue list (``{ns}:{queue}``, ``{ns}:{queue}.DQ``)
      and no message body hash (``.msgs``) of any queue of the deployment, webhooks too;
    * no message held: no ``{ns}:__acks__.*`` set (a stopping worker gives back what it
      prefetched; an acked message leaves its set);
    * dead letters (``.XQ`` / ``.XQ.msgs``) only of the jobs that are dead, which Dramatiq
      keeps for its ``dead_message_ttl`` (``PREVIEW_JOB_TTL_SECONDS`` here) and prunes in
      maintenance;
    * ``{ns}:__heartbeats__`` holding only processes that are gone, none with a message
      held, so that one maintenance pass after the heartbeat timeout removes them all:
      :func:`audit_namespace` runs that pass (and removes the entry its own pass wrote) when
      asked, and then the key must be gone.
    """

    namespace: str
    #: Keys of the library (``{ns}:job:*``, ``{ns}:waiting:*``, ``{ns}:recent``, ...), by TTL.
    ours: dict[str, int]
    #: Dramatiq's Redis broker keys left, with their size (list/hash/set/zset length).
    broker_keys: dict[str, int]
    outside_namespace: list[str]
    ttl_max: int
    #: ``MEMORY USAGE key SAMPLES 0`` of every job record.
    record_bytes: list[int]
    #: ``MEMORY USAGE`` of all the library's keys together.
    ours_bytes: int
    #: Heartbeat entries before and after the maintenance pass (None: no pass run).
    heartbeats_before: int
    heartbeats_after: int | None
    #: RabbitMQ: messages per queue of the deployment's vhost (None on Redis).
    amqp_queues: dict[str, int] | None = None

    @property
    def without_ttl(self) -> list[str]:
        return sorted(k for k, t in self.ours.items() if t < 0)

    @property
    def ttl_too_long(self) -> list[str]:
        return sorted(k for k, t in self.ours.items() if t > self.ttl_max)

    @property
    def records(self) -> int:
        return len(self.record_bytes)

    def key_patterns(self) -> dict[str, int]:
        """The library's keys by pattern (:func:`key_pattern`)."""
        found: dict[str, int] = {}
        for key in self.ours:
            pattern = key_pattern(self.namespace, key)
            found[pattern] = found.get(pattern, 0) + 1
        return found

    def broker_left(self, *, dead_ok: bool = True) -> dict[str, int]:
        """Dramatiq keys that break "back to empty" (dead letters allowed if ``dead_ok``;
        heartbeats judged apart)."""
        return {
            k: n
            for k, n in self.broker_keys.items()
            if not k.endswith("__heartbeats__") and not (dead_ok and ".XQ" in k)
        }

    def dead_by_queue(self) -> dict[str, int]:
        """Dead messages per queue: the ``.XQ`` sets (Redis) or ``.XQ`` queues (RabbitMQ)."""
        if self.amqp_queues is not None:
            found = {q: n for q, n in self.amqp_queues.items() if q.endswith(".XQ")}
        else:
            prefix = self.namespace + ":"
            found = {
                k.removeprefix(prefix): n for k, n in self.broker_keys.items() if k.endswith(".XQ")
            }
        return {q: n for q, n in sorted(found.items()) if n}

    def dead_letters(self) -> int:
        return sum(self.dead_by_queue().values())

    def summary(self) -> str:
        mean = statistics.fmean(self.record_bytes) if self.record_bytes else 0.0
        per_record = self.ours_bytes / self.records if self.records else 0.0
        if self.amqp_queues is not None:
            live = {q: n for q, n in self.amqp_queues.items() if n and not q.endswith(".XQ")}
            broker = (
                f"RabbitMQ: {len(self.amqp_queues)} queues, messages left outside the dead "
                f"letters {sum(live.values())}, dead letters {self.dead_by_queue() or 0}; "
                f"Dramatiq keys in Redis {len(self.broker_keys)}"
            )
        else:
            left = self.broker_left()
            hb = f"{self.heartbeats_before}"
            if self.heartbeats_after is not None:
                hb += f" -> {self.heartbeats_after} after one maintenance pass"
            broker = (
                f"Dramatiq keys: messages waiting/delayed/held {sum(left.values())} "
                f"({len(left)} keys), dead letters {self.dead_by_queue() or 0}, heartbeat "
                f"entries {hb}"
            )
        return (
            f"{len(self.ours)} keys of ours ({self.key_patterns()}), without TTL "
            f"{len(self.without_ttl)}{' ' + str(self.without_ttl[:5]) if self.without_ttl else ''}"
            f", TTL above {self.ttl_max} s {len(self.ttl_too_long)}, outside the namespace "
            f"{len(self.outside_namespace)}; {self.records} job records, MEMORY USAGE mean "
            f"{mean:.0f} B (max {max(self.record_bytes, default=0)} B), all our keys "
            f"{per_record:.0f} B per record; {broker}"
        )


def key_pattern(namespace: str, key: str) -> str:
    """``{ns}:job:*``, ``{ns}:waiting:*`` (job ids and queue names as ``*``), or the key."""
    rest = key[len(namespace) + 1 :]
    head = rest.split(":", 1)[0]
    return f"{{ns}}:{head}:*" if head in ("job", "waiting") and ":" in rest else f"{{ns}}:{rest}"


class TtlWatch:
    """Samples the library's keys while a workload runs (:meth:`probe`, e.g. from a
    :class:`harness.Sampler`): which key patterns appeared, and every key seen without a
    TTL (the final audit only sees the keys left at the end: ``{ns}:inflight``,
    ``{ns}:waiting:*``, ``{ns}:workers`` or ``{ns}:gc:lock`` are gone by then)."""

    def __init__(self, client: redis.Redis, namespace: str, *, redis_broker: bool) -> None:
        self.client = client
        self.namespace = namespace
        self.broker_names = dramatiq_key_names(namespace) if redis_broker else set()
        self.redis_broker = redis_broker
        self.seen: set[str] = set()
        self.without_ttl: set[str] = set()
        self.samples = 0
        self.errors: list[str] = []

    def probe(self) -> None:
        try:
            self._probe()
        except redis.RedisError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _probe(self) -> None:
        prefix = self.namespace + ":"
        keys = [
            k
            for k in self.client.scan_iter(match=prefix + "*", count=1000)
            if not (
                self.redis_broker
                and (
                    k in self.broker_names
                    or k == prefix + "__heartbeats__"
                    or k.startswith(prefix + "__acks__.")
                )
            )
        ]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.ttl(key)
        for key, ttl in zip(keys, pipe.execute(), strict=True):
            pattern = key_pattern(self.namespace, key)
            self.seen.add(pattern)
            if int(ttl) == -1:  # -2: the key went between SCAN and TTL
                self.without_ttl.add(key)
        self.samples += 1


def _size(client: redis.Redis, key: str) -> int:
    kind = client.type(key)
    if kind == "list":
        return int(client.llen(key))
    if kind == "hash":
        return int(client.hlen(key))
    if kind == "set":
        return int(client.scard(key))
    if kind == "zset":
        return int(client.zcard(key))
    return 1


def dramatiq_key_names(namespace: str) -> set[str]:
    """Every key Dramatiq's ``RedisBroker`` may write for the deployment's queues (its acks
    and heartbeats apart): each queue, its delay and dead-letter queues, with their bodies.
    The queue names are the Redis broker's (:func:`~dramatiq_preview.names.broker_queues`:
    the historical ``preview-*`` names under the broker's namespace)."""
    names: set[str] = set()
    for queue in queues().all:
        for name in (queue, dq_name(queue), xq_name(queue)):
            names |= {f"{namespace}:{name}", f"{namespace}:{name}.msgs"}
    return names


def audit_namespace(
    client: redis.Redis,
    namespace: str,
    *,
    ttl_max: int,
    redis_broker: bool,
    maintenance: RedisBroker | None = None,
    amqp_queues: dict[str, int] | None = None,
) -> NamespaceAudit:
    """Sort every key of ``client``'s Redis (see the module docstring) and size them.

    Parameters:
      client: a client of the deployment's Redis (``decode_responses=True``).
      redis_broker: whether Dramatiq's broker keys live here (the Redis broker).
      maintenance: a ``RedisBroker`` on the deployment's namespace: when given, one
        maintenance pass is run for every queue (and its delay queue) before the heartbeats
        are counted again, and the entry of that broker removed afterwards.
      amqp_queues: RabbitMQ's queue depths, to carry in the result.
    """
    prefix = namespace + ":"
    broker_names = dramatiq_key_names(namespace) if redis_broker else set()
    keys = list(client.scan_iter(count=1000))
    outside = sorted(k for k in keys if not k.startswith(prefix))
    ours: list[str] = []
    broker_keys: dict[str, int] = {}
    heartbeats = f"{namespace}:__heartbeats__"
    for key in keys:
        if not key.startswith(prefix):
            continue
        if redis_broker and (
            key in broker_names or key == heartbeats or key.startswith(f"{prefix}__acks__.")
        ):
            broker_keys[key] = _size(client, key)
        else:
            ours.append(key)
    pipe = client.pipeline(transaction=False)
    for key in ours:
        pipe.ttl(key)
    ttls = dict(zip(ours, (int(t) for t in pipe.execute()), strict=True))
    pipe = client.pipeline(transaction=False)
    for key in ours:
        pipe.memory_usage(key, samples=0)
    sizes = dict(zip(ours, (int(s or 0) for s in pipe.execute()), strict=True))
    record_prefix = f"{prefix}job:"
    records = [n for k, n in sizes.items() if k.startswith(record_prefix)]
    before = broker_keys.get(heartbeats, 0)
    after: int | None = None
    if maintenance is not None:
        for queue in queues().all:
            for name in (queue, dq_name(queue)):
                run_maintenance(maintenance, name)
        client.zrem(heartbeats, maintenance.broker_id)
        after = int(client.zcard(heartbeats))
    return NamespaceAudit(
        namespace=namespace,
        ours=ttls,
        broker_keys=broker_keys,
        outside_namespace=outside,
        ttl_max=ttl_max,
        record_bytes=records,
        ours_bytes=sum(sizes.values()),
        heartbeats_before=before,
        heartbeats_after=after,
        amqp_queues=amqp_queues,
    )

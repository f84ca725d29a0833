"""The harness of the fault scenarios: a deployment, its worker hosts, and what they did.

A scenario builds a :class:`Deployment`: a private ``redis-server`` (the state store, and the
broker on Redis; :class:`PersistentRedis` when the scenario restarts it) or a RabbitMQ
virtual host of its own as the broker, its own ``PREVIEW_NAMESPACE``, source root, output
directory and URL source server, and a :class:`~dramatiq_preview.PreviewClient` on explicit
settings.  Worker "hosts" (:class:`Host`) are ``dramatiq dramatiq_preview --processes 1``
each in its own process group with its own temp directory, so one can be SIGKILLed (its
worker process alone, or the whole group with its render children) while the other runs.

Every figure comes from what the system recorded: job records (state, attempts, times),
the job lines of every worker log (``job ID running (attempt N, ...)``, timestamped to the
millisecond) and, on Redis, the broker's own keys (which worker held which message).
:func:`report` prints one ``SCENARIO name[broker]: ...`` line per scenario; the directory's
conftest repeats them in pytest's terminal summary.

Sizes: CI-sized by default; ``FAULTS_SCALE`` multiplies the job counts (``make soak``).
Every wait is bounded in time; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import dramatiq
import redis
import support
from sourceserver import SourceServer

from dramatiq_preview import PreviewClient, Settings
from dramatiq_preview.names import ALL_QUEUES
from dramatiq_preview.state import FINAL_STATES, status_from_record
from dramatiq_preview.testing import RedisServer, WorkerProcess, free_port

REPO = Path(__file__).resolve().parents[2]
#: A real photograph (640x427 JPEG) every scenario renders.
PHOTO = (REPO / "examples" / "images" / "rocket.jpg").read_bytes()
OUTPUTS = [
    {"width": 320, "height": 320, "format": "webp"},
    {"width": 160, "height": 160, "format": "jpeg"},
    {"width": 64, "height": 64, "format": "png"},
]

#: Multiplies the job counts of the scenarios: 1 in CI, more for ``make soak``.
SCALE = float(os.environ.get("FAULTS_SCALE", "1") or 1)
#: Short settings, so that recovery figures are seconds, not minutes.  A killed render's
#: job waits for its dead holder's lease (time limit + 5 s from its claim, then about 2 s
#: of put-back and delay-queue hops): about time limit + 7 s, which the bound covers with a
#: margin from a heartbeat timeout of 4 s (docs/reliability.md, "Recovery margin").
HEARTBEAT_TIMEOUT_MS = 4000
TIME_LIMIT_MS = 5000
#: Contract §7: a killed worker's job starts again within the broker heartbeat timeout plus
#: one render time limit and "a few" seconds (issue #16 says 5).
RECOVERY_BOUND = (HEARTBEAT_TIMEOUT_MS + TIME_LIMIT_MS) / 1000 + 5

AMQP_URL = os.environ.get("PREVIEW_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
#: Where the figure lines also go, one JSON object a line, when set.
REPORT_FILE = os.environ.get("FAULTS_REPORT")

#: Every figure line printed in this session, for the terminal summary.
FIGURES: list[str] = []


def scaled(count: int) -> int:
    """``count`` times :data:`SCALE`, at least 1."""
    return max(1, round(count * SCALE))


class DefectObserved(AssertionError):
    """A known defect of the package showed itself (the scenario's xfail names it)."""


def report(label: str, text: str, **figures: Any) -> str:
    """Print (and keep for the summary) one figure line: ``SCENARIO label: text``."""
    line = f"SCENARIO {label}: {text}"
    print(line, flush=True)
    FIGURES.append(line)
    if REPORT_FILE:
        record = {"scenario": label, "line": line, "at": time.time(), **figures}
        with open(REPORT_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
    return line


def percentile(values: Sequence[float], share: float) -> float:
    """The ``share`` (0..1) percentile of ``values`` (nearest rank); 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


# --- servers -----------------------------------------------------------------------------


class PersistentRedis:
    """A private ``redis-server`` with ``appendonly yes`` and ``appendfsync always`` on a
    fixed port and directory: :meth:`stop` (SIGTERM, as a service manager stops it) then
    :meth:`start` brings it back with its data, on the same address.

    (:class:`~dramatiq_preview.testing.RedisServer` runs without persistence and picks its
    directory itself, so it cannot stand in for a restarted production Redis.)
    """

    def __init__(self, executable: str | None = None) -> None:
        found = executable or shutil.which("redis-server")
        if not found:
            raise RuntimeError("redis-server is not installed")
        self.executable = found
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="preview-faults-aof-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def start(self, *, timeout: float = 20) -> PersistentRedis:
        args = [
            self.executable,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--loglevel",
            "warning",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        probe = self.client()
        try:
            while time.monotonic() < deadline:
                try:
                    if probe.ping():
                        return self
                except (redis.ConnectionError, redis.BusyLoadingError):
                    time.sleep(0.02)
        finally:
            probe.close()
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self, *, timeout: float = 20) -> None:
        """SIGTERM: Redis finishes its AOF and exits, as under a service manager."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@functools.cache
def rabbitmq_unavailable() -> str | None:
    """Why the RabbitMQ scenarios cannot run here (None when a server answers)."""
    return support.rabbitmq_unavailable(AMQP_URL)


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str] | None:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return None
    try:
        return subprocess.run(
            [ctl, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


class VirtualHost:
    """A RabbitMQ virtual host of the scenario's own (``rabbitmqctl add_vhost``), deleted
    with its queues afterwards: nothing another test or deployment uses is ever touched.

    Where ``rabbitmqctl`` cannot create one, the scenario runs on the vhost of
    ``PREVIEW_TEST_AMQP_URL`` and says so (its lanes are then shared: see issue #16).
    """

    def __init__(self) -> None:
        self.name = f"preview-faults-{uuid.uuid4().hex[:10]}"
        self.created = False
        self.note = ""

    @property
    def url(self) -> str:
        if not self.created:
            return AMQP_URL
        parts = urlsplit(AMQP_URL)
        return urlunsplit(parts._replace(path="/" + quote(self.name, safe="")))

    def create(self) -> VirtualHost:
        user = unquote(urlsplit(AMQP_URL).username or "guest")
        made = _rabbitmqctl("add_vhost", self.name)
        if made is None or made.returncode != 0:
            self.note = f"rabbitmqctl add_vhost failed, using {AMQP_URL}'s vhost"
            return self
        granted = _rabbitmqctl("set_permissions", "-p", self.name, user, ".*", ".*", ".*")
        if granted is None or granted.returncode != 0:
            _rabbitmqctl("delete_vhost", self.name)
            self.note = f"rabbitmqctl set_permissions failed, using {AMQP_URL}'s vhost"
            return self
        self.created = True
        return self

    def queue_depths(self) -> dict[str, int] | None:
        """Messages ready or unacknowledged per queue of this vhost (None if unknown)."""
        if not self.created:
            return None
        listed = _rabbitmqctl(
            "list_queues", "-p", self.name, "name", "messages", "--quiet", "--no-table-headers"
        )
        if listed is None or listed.returncode != 0:
            return None
        depths = {}
        for line in listed.stdout.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[1].isdigit():
                depths[fields[0]] = int(fields[1])
        return depths

    def delete(self) -> None:
        if self.created:
            _rabbitmqctl("delete_vhost", self.name)
            self.created = False


# --- worker hosts ------------------------------------------------------------------------

#: A job line of a worker log (dramatiq's text format; dramatiq_preview.events writes it).
_JOB_LINE = re.compile(
    r"^\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[PID (?P<pid>\d+)\] \[[^\]]*\] "
    r"\[dramatiq_preview\.jobs\] \[\w+\] job (?P<job>\S+) (?P<event>\w+) "
    r"\(attempt (?P<attempt>[^,]+),",
    re.MULTILINE,
)
#: Events that begin or end a delivery; a busy copy put back is logged apart, not here.
DELIVERY_EVENTS = frozenset({"running", "duplicate_skipped", "skipped", "cancelled", "worker_lost"})


@dataclasses.dataclass(frozen=True)
class JobEvent:
    """One job line of a worker log."""

    at: float  # seconds since the epoch (the log's millisecond timestamp)
    pid: int
    job_id: str
    event: str
    attempt: int | None
    host: str


def parse_events(log: str, host: str) -> list[JobEvent]:
    events = []
    for m in _JOB_LINE.finditer(log):
        attempt = m["attempt"]
        events.append(
            JobEvent(
                at=datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp(),
                pid=int(m["pid"]),
                job_id=m["job"],
                event=m["event"],
                attempt=int(attempt) if attempt.isdigit() else None,
                host=host,
            )
        )
    return events


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children, their children, ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        frontier += children
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclasses.dataclass(frozen=True)
class Kill:
    """A SIGKILL the harness sent: when, to which host, which worker process."""

    at: float  # time.time() just after the signal
    host: str
    pid: int
    whole_host: bool = False
    #: Render children and other descendants of the host alive just before the kill.
    descendants: tuple[int, ...] = ()


class Host:
    """A worker "host": ``dramatiq dramatiq_preview --processes 1 --threads N`` in its own
    process group (:class:`~dramatiq_preview.testing.WorkerProcess`), its own temp directory
    and Prometheus port.  It can be restarted; the logs of every incarnation are kept.
    """

    def __init__(self, name: str, env: Mapping[str, str], root: Path, *, threads: int) -> None:
        self.name = name
        self.dir = root / name
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        self.env = {
            **env,
            "TMPDIR": str(self.dir / "tmp"),
            "dramatiq_prom_host": "127.0.0.1",
            "dramatiq_prom_port": str(free_port()),
            "dramatiq_prom_db": str(self.dir / "prometheus"),
        }
        self.threads = threads
        self.incarnations: list[WorkerProcess] = []

    @property
    def current(self) -> WorkerProcess | None:
        return self.incarnations[-1] if self.incarnations else None

    def start(self) -> Host:
        proc = WorkerProcess(env=self.env, processes=1, threads=self.threads)
        self.incarnations.append(proc)
        proc.start(timeout=120)
        return self

    @property
    def running(self) -> bool:
        proc = self.current
        return bool(proc and proc.process and proc.process.poll() is None)

    def worker_pid(self) -> int:
        proc = self.current
        assert proc is not None, f"host {self.name} was never started"
        pids = proc.worker_pids()
        assert len(pids) == 1, f"host {self.name}: worker processes {pids}"
        return pids[0]

    def kill_worker(self) -> Kill:
        """SIGKILL the worker process (as the kernel's OOM killer would); ``dramatiq``'s
        main process then exits, as it does when a worker process dies."""
        proc = self.current
        assert proc is not None and proc.process is not None
        pid = self.worker_pid()
        others = tuple(descendants(pid))
        os.kill(pid, signal.SIGKILL)
        kill = Kill(time.time(), self.name, pid, descendants=others)
        proc.process.wait(timeout=60)
        proc.stop()
        return kill

    def kill_host(self) -> Kill:
        """SIGKILL everything of the host at once: its process group (dramatiq's main
        process, the worker process, the render children) and any descendant outside it."""
        proc = self.current
        assert proc is not None and proc.process is not None
        pid = self.worker_pid()
        everything = descendants(proc.process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.process.pid, signal.SIGKILL)
        for other in everything:
            with contextlib.suppress(ProcessLookupError):
                os.kill(other, signal.SIGKILL)
        kill = Kill(time.time(), self.name, pid, whole_host=True, descendants=tuple(everything))
        proc.process.wait(timeout=60)
        proc.stop()
        return kill

    def stop(self) -> None:
        proc = self.current
        if proc is not None:
            proc.stop(timeout=30)

    @property
    def log(self) -> str:
        return "".join(proc.log for proc in self.incarnations)

    def events(self) -> list[JobEvent]:
        return parse_events(self.log, self.name)


# --- a deployment ------------------------------------------------------------------------


@dataclasses.dataclass
class KeyAudit:
    """The Redis keys a deployment left, by owner (see :meth:`Deployment.audit_keys`)."""

    total: int
    outside_namespace: list[str]
    ours: int
    ours_without_ttl: list[str]
    ours_ttl_too_long: list[str]
    records: int
    record_bytes: list[int]
    #: Dramatiq's Redis broker keys: messages waiting, delayed, fetched-unacked, dead.
    broker_waiting: int
    broker_delayed: int
    broker_unacked: int
    broker_dead: int
    broker_heartbeats: int
    #: RabbitMQ: messages left per queue of the deployment's vhost (None on Redis).
    amqp_queues: dict[str, int] | None

    def summary(self) -> str:
        mean = statistics.fmean(self.record_bytes) if self.record_bytes else 0
        amqp = ""
        if self.amqp_queues is not None:
            left = {k: v for k, v in self.amqp_queues.items() if v}
            amqp = f", RabbitMQ messages left {left or 0}"
        return (
            f"{self.ours} keys of ours, without TTL {len(self.ours_without_ttl)}, "
            f"outside the namespace {len(self.outside_namespace)}; "
            f"{self.records} job records, MEMORY USAGE mean {mean:.0f} B "
            f"(max {max(self.record_bytes, default=0)} B); Dramatiq keys left: "
            f"waiting {self.broker_waiting}, delayed {self.broker_delayed}, "
            f"unacked {self.broker_unacked}, dead letters {self.broker_dead}, "
            f"heartbeat entries {self.broker_heartbeats}{amqp}"
        )


class Deployment:
    """One deployment of dramatiq-preview for one scenario (see the module docstring).

    Parameters:
      scenario: the scenario's name (``worker-crash``), for figure lines and names.
      broker: ``redis`` or ``rabbitmq``.
      persistent: run Redis with AOF persistence, restartable (:class:`PersistentRedis`).
      settings: ``PREVIEW_*`` settings over the scenario defaults.
      vhost: share this RabbitMQ vhost (another deployment's) instead of creating one.
    """

    def __init__(
        self,
        scenario: str,
        broker: str,
        *,
        persistent: bool = False,
        vhost: VirtualHost | None = None,
        **settings: str,
    ) -> None:
        self.scenario = scenario
        self.broker_kind = broker
        self.label = f"{scenario}[{broker}]"
        self.root = Path(tempfile.mkdtemp(prefix=f"preview-faults-{scenario}-"))
        self.redis: PersistentRedis | RedisServer = (
            PersistentRedis() if persistent else RedisServer()
        )
        self._own_vhost = broker == "rabbitmq" and vhost is None
        self.vhost = vhost if vhost is not None else VirtualHost() if broker == "rabbitmq" else None
        self.namespace = f"faults-{scenario}-{uuid.uuid4().hex[:6]}"
        self.sources = SourceServer()
        self.hosts: dict[str, Host] = {}
        self.kills: list[Kill] = []
        #: Redis broker: the jobs each kill (by index) took from the dead worker's acks.
        self.held: dict[int, set[str]] = {}
        self.settings = settings
        self.env: dict[str, str] = {}
        self._client: PreviewClient | None = None
        self._raw: redis.Redis | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Deployment:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.redis.start()
        if self.vhost is not None and self._own_vhost:
            self.vhost.create()
            if self.vhost.note:
                print(f"{self.label}: {self.vhost.note}", flush=True)
        self.sources.start()
        (self.root / "sources").mkdir()
        (self.root / "outputs").mkdir()
        self.env = {
            "PREVIEW_REDIS_URL": self.redis.url,
            "PREVIEW_BROKER_URL": self.vhost.url if self.vhost is not None else self.redis.url,
            "PREVIEW_NAMESPACE": self.namespace,
            "PREVIEW_SOURCE_ROOT": str(self.root / "sources"),
            "PREVIEW_OUTPUT_DIR": str(self.root / "outputs"),
            "PREVIEW_TIME_LIMIT_MS": str(TIME_LIMIT_MS),
            "PREVIEW_BROKER_HEARTBEAT_TIMEOUT_MS": str(HEARTBEAT_TIMEOUT_MS),
            # The library's default chance: recovery must not depend on luck.
            "PREVIEW_BROKER_MAINTENANCE_CHANCE": "1000",
            "PREVIEW_MAX_RETRIES": "3",
            "PREVIEW_MIN_BACKOFF_MS": "200",
            "PREVIEW_MAX_BACKOFF_MS": "2000",
            "PREVIEW_MAX_DELIVERIES": "3",
            "PREVIEW_PROGRESS_INTERVAL_MS": "500",
            "PREVIEW_FETCH_READ_TIMEOUT_MS": str(TIME_LIMIT_MS),
            "PREVIEW_ALLOWED_URL_HOSTS": "localhost",
            "PREVIEW_ALLOW_PRIVATE_NETWORKS": "true",
            "PREVIEW_GC_INTERVAL_SECONDS": "0",
            "PREVIEW_LOG_FORMAT": "text",
            "PREVIEW_JOB_TTL_SECONDS": "604800",
            **self.settings,
        }

    def close(self) -> None:
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                host.stop()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        with contextlib.suppress(Exception):
            self.sources.stop()
        self.redis.close()
        if self.vhost is not None and self._own_vhost:
            self.vhost.delete()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def client(self) -> PreviewClient:
        if self._client is None:
            self._client = PreviewClient(Settings.from_mapping(self.env))
        return self._client

    @property
    def raw(self) -> redis.Redis:
        """A Redis client of the harness's own (never shared with the library)."""
        if self._raw is None:
            self._raw = redis.Redis.from_url(self.redis.url, decode_responses=True)
        return self._raw

    # -- hosts --------------------------------------------------------------------------

    def start_host(self, name: str, *, threads: int = 2, **env: str) -> Host:
        host = Host(name, {**self.env, **env}, self.root / "hosts", threads=threads)
        self.hosts[name] = host
        return host.start()

    def kill_worker(self, host: str) -> Kill:
        """SIGKILL the host's worker process (:meth:`Host.kill_worker`), noting what it
        held (:meth:`note_held`)."""
        kill = self.hosts[host].kill_worker()
        self.kills.append(kill)
        self.note_held(kill)
        return kill

    def kill_host(self, host: str) -> Kill:
        """SIGKILL the whole host (:meth:`Host.kill_host`), noting what it held."""
        kill = self.hosts[host].kill_host()
        self.kills.append(kill)
        self.note_held(kill)
        return kill

    def note_held(self, kill: Kill) -> None:
        """Redis broker: note in :attr:`held` the jobs whose messages the killed worker had
        fetched, found by the message of a job it was rendering.  Called just after the
        kill: a dead worker's acks stay put until its heartbeat is older than the timeout.
        """
        if self.broker_kind != "redis":
            return
        flying = in_flight_at(self.events(), kill)
        _worker, jobs = dead_holder(self.held_messages(), flying)
        self.held[len(self.kills) - 1] = jobs

    def stop_hosts(self) -> None:
        for host in self.hosts.values():
            host.stop()

    def lines_about(self, text: str) -> list[str]:
        """The worker log lines (every host and incarnation) that mention ``text``, each
        followed by the exception that ended its traceback, if any."""
        found: list[str] = []
        for host in self.hosts.values():
            keep = False
            for line in host.log.splitlines():
                if line.startswith("["):
                    keep = text in line
                    if keep:
                        found.append(f"{host.name}: {line}")
                elif keep and re.match(r"^[\w.]+(Error|Exception|Exceeded|Unavailable)\b", line):
                    found.append(f"{host.name}:     {line}")
        return found

    def events(self) -> list[JobEvent]:
        """Every job line of every host and incarnation, in time order."""
        found = [e for host in self.hosts.values() for e in host.events()]
        return sorted(found, key=lambda e: e.at)

    # -- jobs ---------------------------------------------------------------------------

    def url_source(self, job_id: str, *, stall: float = 0.0, stall_count: int = 10**9) -> str:
        """A URL source of the photo, at a path of the job's own; every request for it
        waits ``stall`` seconds first (the first ``stall_count`` ones)."""
        path = f"/src/{job_id}.jpg"
        return self.sources.add(
            path, PHOTO, content_type="image/jpeg", stall=stall, stall_count=stall_count
        )

    def fetches(self, job_id: str) -> int:
        """How many times the job's URL source was requested (one per delivery that
        reached its fetch)."""
        route = self.sources.routes.get(f"/src/{job_id}.jpg")
        return route.hits if route else 0

    def payload(self, job_id: str, *, stall: float = 0.0, **extra: Any) -> dict[str, Any]:
        return {
            "jobId": job_id,
            "source": {"url": self.url_source(job_id, stall=stall)},
            "outputs": OUTPUTS,
            **extra,
        }

    def run_stream(
        self,
        job_ids: Sequence[str],
        rate: float,
        actions: Sequence[tuple[float, Callable[[], None]]] = (),
        *,
        stall: float = 0.0,
    ) -> float:
        """Submit one job per id at ``rate`` a second through the client, running
        ``actions`` on the way (:func:`run_stream`)."""

        def submit(i: int) -> None:
            self.client.submit(self.payload(job_ids[i], stall=stall))

        return run_stream(len(job_ids), rate, submit, actions)

    def statuses(self, job_ids: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """The status of each job (None when it has no record), in one round trip."""
        ids = list(job_ids)
        store = self.client.store
        pipe = self.raw.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(store.job_key(job_id))
        found = pipe.execute()
        return {
            job_id: status_from_record(job_id, raw) if raw.get("state") else None
            for job_id, raw in zip(ids, found, strict=True)
        }

    def wait_final(
        self, job_ids: Iterable[str], *, timeout: float
    ) -> dict[str, dict[str, Any] | None]:
        """Poll until every job is final or ``timeout`` seconds passed; the last statuses
        (Redis errors meanwhile count as "not yet")."""
        ids = list(job_ids)
        deadline = time.monotonic() + timeout
        last: dict[str, dict[str, Any] | None] = dict.fromkeys(ids)
        while True:
            with contextlib.suppress(redis.RedisError):
                last = self.statuses(ids)
                if all(s is not None and s["state"] in FINAL_STATES for s in last.values()):
                    return last
            if time.monotonic() >= deadline:
                return last
            time.sleep(0.25)

    def held_messages(self) -> dict[str, set[str]]:
        """Redis broker only: the jobs whose messages each worker (broker id) fetched and
        has not acknowledged yet, from Dramatiq's ``{ns}:__acks__.{id}.{queue}`` sets."""
        prefix = f"{self.namespace}:__acks__."
        held: dict[str, set[str]] = {}
        for key in self.raw.scan_iter(match=prefix + "*", count=1000):
            worker_id, _, queue = key[len(prefix) :].partition(".")
            ids = list(self.raw.smembers(key))
            if not ids:
                continue
            data = self.raw.hmget(f"{self.namespace}:{queue}.msgs", ids)
            for encoded in data:
                if encoded is None:
                    continue
                args = dramatiq.Message.decode(encoded.encode()).args
                if args and isinstance(args[0], dict) and "jobId" in args[0]:
                    held.setdefault(worker_id, set()).add(args[0]["jobId"])
        return held

    def broker_idle(self) -> bool:
        """Whether the broker holds no message of ours but dead letters: none waiting,
        delayed or being processed."""
        if self.vhost is not None:
            depths = self.vhost.queue_depths()
            if depths is None:
                return True  # unknown: the caller's other waits must do
            return not any(v for k, v in depths.items() if not k.endswith(".XQ"))
        audit = self.audit_keys()
        return audit.broker_waiting + audit.broker_delayed + audit.broker_unacked == 0

    # -- the key audit ------------------------------------------------------------------

    def audit_keys(self) -> KeyAudit:
        """Classify every key of the deployment's Redis: ours (must all expire within
        ``PREVIEW_JOB_TTL_SECONDS``), Dramatiq's Redis broker keys (queues, delay queues,
        acks, dead letters, heartbeats), and anything outside the namespace (must be none).
        Job records are sized with ``MEMORY USAGE``.  With RabbitMQ, also the messages left
        in the vhost's queues."""
        ns = self.namespace + ":"
        ttl_max = int(self.env["PREVIEW_JOB_TTL_SECONDS"])
        # Every queue of ours on a Redis broker: the lanes and the webhook deliveries.
        lanes = set(ALL_QUEUES)
        keys = list(self.raw.scan_iter(count=1000))
        outside = [k for k in keys if not k.startswith(ns)]
        ours: list[str] = []
        counts = dict.fromkeys(("waiting", "delayed", "unacked", "dead", "heartbeats"), 0)
        records: list[str] = []
        for key in keys:
            if not key.startswith(ns):
                continue
            rest = key[len(ns) :]
            base = rest.split(".", 1)[0]
            if rest == "__heartbeats__":
                counts["heartbeats"] += int(self.raw.zcard(key))
            elif rest.startswith("__acks__."):
                counts["unacked"] += int(self.raw.scard(key))
            elif base in lanes and self.broker_kind == "redis":
                kind = rest[len(base) :]
                if kind == "":
                    counts["waiting"] += int(self.raw.llen(key))
                elif kind == ".DQ":
                    counts["delayed"] += int(self.raw.llen(key))
                elif kind == ".XQ":
                    counts["dead"] += int(self.raw.zcard(key))
                # ``.msgs`` hashes hold the bodies of the ids counted above.
            else:
                ours.append(key)
                if rest.startswith("job:"):
                    records.append(key)
        pipe = self.raw.pipeline(transaction=False)
        for key in ours:
            pipe.ttl(key)
        ttls = dict(zip(ours, pipe.execute(), strict=True))
        pipe = self.raw.pipeline(transaction=False)
        for key in records:
            pipe.memory_usage(key, samples=0)
        sizes = [int(s or 0) for s in pipe.execute()]
        return KeyAudit(
            total=len(keys),
            outside_namespace=outside,
            ours=len(ours),
            ours_without_ttl=[k for k, t in ttls.items() if t < 0],
            ours_ttl_too_long=[k for k, t in ttls.items() if t > ttl_max],
            records=len(records),
            record_bytes=sizes,
            broker_waiting=counts["waiting"],
            broker_delayed=counts["delayed"],
            broker_unacked=counts["unacked"],
            broker_dead=counts["dead"],
            broker_heartbeats=counts["heartbeats"],
            amqp_queues=self.vhost.queue_depths() if self.vhost is not None else None,
        )

    def check_keys(self, *, dead_letters: int = 0) -> KeyAudit:
        """Stop the hosts, audit the keys, print the figure line and assert that every key
        of ours expires and that the broker holds nothing but ``dead_letters``."""
        self.stop_hosts()
        audit = self.audit_keys()
        report(f"key-audit after {self.label}", audit.summary())
        assert audit.outside_namespace == [], audit.outside_namespace
        assert audit.ours_without_ttl == [], audit.ours_without_ttl
        assert audit.ours_ttl_too_long == [], audit.ours_ttl_too_long
        assert (audit.broker_waiting, audit.broker_delayed, audit.broker_unacked) == (0, 0, 0)
        if audit.amqp_queues is not None:
            dead = sum(v for k, v in audit.amqp_queues.items() if k.endswith(".XQ"))
            live = {k: v for k, v in audit.amqp_queues.items() if v and not k.endswith(".XQ")}
            assert live == {}, live
            assert dead == dead_letters, audit.amqp_queues
        else:
            assert audit.broker_dead == dead_letters, audit
        return audit


# --- what the logs say -------------------------------------------------------------------


def successes_per_job(events: Iterable[JobEvent]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in events:
        if e.event == "succeeded":
            counts[e.job_id] = counts.get(e.job_id, 0) + 1
    return counts


def in_flight_at(events: Sequence[JobEvent], kill: Kill) -> set[str]:
    """Jobs the killed worker process was rendering: a ``running`` line of that process
    with no later line of the same job from it."""
    last: dict[str, str] = {}
    for e in events:
        if e.pid == kill.pid and e.at <= kill.at + 0.001:
            last[e.job_id] = e.event
    return {job for job, event in last.items() if event == "running"}


def recovery_after(events: Sequence[JobEvent], kill: Kill, job_id: str) -> float | None:
    """Seconds from the kill to the next delivery of ``job_id`` by another process (None
    if none came)."""
    for e in events:
        other = e.pid != kill.pid and e.at > kill.at
        if e.job_id == job_id and other and e.event in DELIVERY_EVENTS:
            return e.at - kill.at
    return None


@dataclasses.dataclass
class Recovery:
    """The jobs a kill took from a worker, and how long each took to start again."""

    kill: Kill
    in_flight: set[str]
    prefetched: set[str]
    seconds: dict[str, float | None]

    @property
    def longest(self) -> float:
        known = [s for s in self.seconds.values() if s is not None]
        return max(known, default=0.0)

    @property
    def never(self) -> list[str]:
        return [job for job, s in self.seconds.items() if s is None]


def recoveries(
    events: Sequence[JobEvent], kills: Sequence[Kill], held: Mapping[int, set[str]]
) -> list[Recovery]:
    """One :class:`Recovery` per kill: its in-flight jobs (from the log) and, on Redis,
    the messages the dead worker had fetched (``held``, by index in ``kills``)."""
    found = []
    for i, kill in enumerate(kills):
        flying = in_flight_at(events, kill)
        fetched = set(held.get(i, set())) - flying
        jobs = flying | fetched
        found.append(
            Recovery(kill, flying, fetched, {j: recovery_after(events, kill, j) for j in jobs})
        )
    return found


def dead_holder(
    held_after: Mapping[str, set[str]], in_flight: set[str]
) -> tuple[str | None, set[str]]:
    """Which broker id (of ``held_after``, read just after a kill) was the killed worker:
    the one holding the message of a job it was rendering."""
    for worker_id, jobs in held_after.items():
        if jobs & in_flight:
            return worker_id, set(jobs)
    return None, set()


# --- load --------------------------------------------------------------------------------


def run_stream(
    count: int,
    rate: float,
    submit: Callable[[int], None],
    actions: Sequence[tuple[float, Callable[[], None]]] = (),
) -> float:
    """Submit ``count`` jobs at ``rate`` a second (``submit(i)``) while a second thread runs
    each action at its offset in seconds from the start, one after the other (an action
    that waits for something does not hold the submits up).  Returns the seconds it all
    took, actions included.

    Raises:
      Whatever an action raised (after the submits are done).
    """
    start = time.monotonic()
    failures: list[BaseException] = []

    def act() -> None:
        for offset, action in sorted(actions, key=lambda a: a[0]):
            pause = start + offset - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            try:
                action()
            except BaseException as exc:
                failures.append(exc)
                return

    actor = threading.Thread(target=act, daemon=True, name="faults-actions")
    actor.start()
    for i in range(count):
        pause = start + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        submit(i)
    actor.join(timeout=600)
    if failures:
        raise failures[0]
    return time.monotonic() - start


def wait_until(
    check: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll ``check()`` until it is truthy and return it.

    Raises:
      TimeoutError: naming ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(interval)


class Sampler(threading.Thread):
    """Calls ``probe()`` every ``interval`` seconds from a daemon thread until stopped,
    keeping ``(time.time(), result)`` pairs."""

    def __init__(self, probe: Callable[[], Any], *, interval: float) -> None:
        super().__init__(daemon=True, name="faults-sampler")
        self.probe = probe
        self.interval = interval
        self.samples: list[tuple[float, Any]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.time(), self.probe()))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)

"""Storage benchmark: sources and outputs in S3 (SeaweedFS) against a local disk, one run.

Run either way (from the repository root)::

    python -m pytest tests/benchmarks/bench_storage.py -m benchmark -s   # BENCH_QUICK=1: quick
    python tests/benchmarks/bench_storage.py [--quick] [--jobs 360] [--photo-jobs 120] [--json]

Everything runs on this machine: a private SeaweedFS (``weed mini``, the same server the
tests use), private redis-servers and real workers (``dramatiq dramatiq_preview``).  It
measures (issue 12)

1. **throughput**: two workers with the same settings (``--processes 1 --threads 2``), one
   with ``PREVIEW_SOURCE_ROOT`` and ``PREVIEW_OUTPUT_DIR`` on the local disk, one with both in
   the same S3 bucket; each has its own redis-server, and both stay up the whole run.  Two
   workloads run one after the other on the same two workers:

   - **small job** (issue 12's): one 1600x1200 photo-like JPEG (0.8 MB) -> one 256 px WebP,
     eight different sources in turn; 360 jobs per side in batches of 20;
   - **photo job** (a typical preview job): one 4032x3024 photo-like JPEG (a phone photo,
     ~5 MB) -> three WebPs, 1024, 512 and 256 px, four different sources in turn; 120 jobs
     per side in batches of 15.

   Jobs go in batches, alternately to one worker and the other (ABBA order, so that neither
   always goes first); a batch's time runs from its first ``startedAt`` to its last
   ``finishedAt`` (an idle Dramatiq consumer wakes up after a backoff of up to a second: not
   counted).  The **wall ratio** is the median over pairs of adjacent batches of ``S3 jobs/s
   / local jobs/s`` (issue 12's target: >= 0.85 for the small job); the ratio of the totals
   is shown too.  Only one worker is busy at a time, but SeaweedFS runs on the same two CPUs:
   its own work is charged to S3.  The CPU time of each worker's process tree (render
   children included) and of SeaweedFS is read from ``/proc`` around every batch (SeaweedFS's
   also around the local batches: its idle baseline).

   The **worker-side ratio** is a projection derived from that measured CPU, not a measured
   throughput: the ratio the S3 side would have had if SeaweedFS's CPU ran elsewhere, as it
   does in production.  Over a side's batches, ``jobs/s = cores busy / CPU per job`` (CPU of
   the worker tree, plus SeaweedFS's on the S3 side, over the batches' time); assuming the S3
   worker keeps as many cores busy as the local one does once SeaweedFS is off the machine::

       projected ratio = local worker-tree CPU per job / S3 worker-tree CPU per job

   The same model with SeaweedFS's CPU charged to S3, ``local / (S3 worker + SeaweedFS)``, is
   printed next to the measured wall ratio as a check (they differ by the ratio of cores
   busy, also printed).  Request latency is not part of the projection.

   To explain the figures, a fresh process times one job's S3 requests alone (get_object +
   spool of the JPEG; put_object of each output, random bytes of the sizes the local worker
   wrote): wall time, its own CPU and SeaweedFS's.  It runs with botocore's default
   checksums (``AWS_REQUEST_CHECKSUM_CALCULATION`` / ``AWS_RESPONSE_CHECKSUM_VALIDATION`` =
   ``when_supported``: a CRC on every PutObject and GetObject since botocore 1.36) and with
   both set to ``when_required``, alternately (ABBA); the difference is what turning the
   checksums off would save per job.  The workers themselves run with the defaults.
2. **worker memory**: a fresh process sets both roots to S3, warms up (imports, S3 client,
   render child) on a tiny source, resets its peak RSS (``/proc/self/clear_refs``), then
   does what a worker does for one job: ``sources.open_source`` (get_object, spooled in
   1 MiB chunks into an unlinked temporary file) and ``Renderer.render`` through the render
   pool (the child decodes; the worker receives and stores the outputs).  The figure is
   ``VmHWM - VmRSS(before)`` over the object's size (target <= 1.2); the source is a 50 MB
   PNG of RGB noise (4096x4069, 16.7 Mpx, under the default 50 MiB
   ``PREVIEW_MAX_SOURCE_BYTES``).  Median of three processes.
3. **spool or stream**: for the same 50 MB object, in fresh processes, (a) get_object +
   ``read()`` into bytes, (b) our spool (``S3Storage.open_source``): time and peak RSS
   growth of the fetching process; (c) handing the data to another process: a reader
   process reads the spooled file through its descriptor (as the render child does), or
   receives the 50 MB through a pipe into one preallocated buffer (what a streamed design
   pays: ImageMagick needs the whole blob, or a seekable file, for most formats); and, end
   to end, the streamed design itself (get_object chunks written to a pipe while the reader
   buffers them) against spool + read.  Medians of three rounds.

docs/performance.md ("Storage (S3)") records the figures and the decision they support.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# One helper with bench_render.py for steps in fresh processes, also when run as a script.
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_render import run_python  # noqa: E402

MB = 1_000_000
#: The 50 MB source: RGB noise does not compress, so the PNG is the raw size plus ~0.01 %.
BIG_SIZE = (4096, 4069)
THROUGHPUT_TARGET = 0.85
MEMORY_TARGET = 1.2


@dataclass(frozen=True)
class Workload:
    """One kind of job: ``sources`` photo-like JPEGs of ``size`` -> WebPs ``widths`` px wide."""

    name: str
    size: tuple[int, int]
    widths: tuple[int, ...]
    sources: int
    warm_up: int  # jobs per side before the timed batches

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return [{"width": w, "height": w, "format": "webp"} for w in self.widths]

    def path(self, index: int) -> str:
        return f"{self.name}/p{index % self.sources}.jpg"

    def describe(self) -> str:
        widths = " + ".join(str(w) for w in self.widths)
        noun = "WebP" if len(self.widths) == 1 else "WebPs"
        return f"{self.size[0]}x{self.size[1]} JPEG -> {widths} px {noun}"


#: Issue 12's job, and a typical preview job (a phone photo, three sizes).
SMALL = Workload("small", (1600, 1200), (256,), sources=8, warm_up=4)
PHOTO = Workload("photo", (4032, 3024), (1024, 512, 256), sources=4, warm_up=2)


# --- sources ----------------------------------------------------------------------------


def photo_jpeg(width: int = 1600, height: int = 1200) -> bytes:
    """A photo-like JPEG (gradients, blurred noise, grain, hard edges; quality 90)."""
    import pyvips

    xyz = pyvips.Image.xyz(width, height)
    red = xyz[0] * (255 / width)
    green = xyz[1] * (255 / height)
    blue = pyvips.Image.gaussnoise(width, height, sigma=60, mean=128).gaussblur(6)
    grain = pyvips.Image.gaussnoise(width, height, sigma=12, mean=0)
    edges = ((xyz[0] // 200 + xyz[1] // 200) % 2) * 40
    image = (red.bandjoin([green, blue]) + grain + edges).cast("uchar")
    return bytes(image.jpegsave_buffer(Q=90, strip=True))


def noise_png(width: int, height: int) -> bytes:
    """An RGB PNG of uniform noise (incompressible: the file is the raw pixel size)."""
    import pyvips

    image = pyvips.Image.new_from_memory(os.urandom(width * height * 3), width, height, 3, "uchar")
    return bytes(image.pngsave_buffer(compression=1, strip=True))


# --- 1. throughput -----------------------------------------------------------------------


def proc_stats() -> dict[int, list[str]]:
    """The fields of ``/proc/PID/stat`` after the command name, for every process now
    (``[1]`` is the parent pid; ``[11:15]`` utime, stime, cutime, cstime in clock ticks)."""
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    # The command name may contain spaces and parentheses.
                    stats[int(entry)] = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
    return stats


def process_tree(stats: dict[int, list[str]], root: int) -> set[int]:
    """``root`` and every process below it, in ``stats`` (:func:`proc_stats`)."""
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in tree:
            tree.add(pid)
            todo.extend(p for p, fields in stats.items() if int(fields[1]) == pid)
    return tree


def _cpu_seconds(root: int) -> float:
    """CPU time (user + system) of ``root`` and every process below it, including children
    they already reaped (render children are recycled)."""
    stats = proc_stats()
    tree = process_tree(stats, root)
    return sum(sum(int(x) for x in stats[pid][11:15]) for pid in tree) / os.sysconf("SC_CLK_TCK")


def _pid(process: Any) -> int:
    assert process is not None, "not started"
    return int(process.pid)


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _run_batch(client: Any, workload: Workload, count: int, start_index: int) -> float:
    """Submit ``count`` jobs of ``workload``, wait until all succeeded; seconds from the first
    ``startedAt`` to the last ``finishedAt`` (millisecond timestamps written by the worker).

    Not from the first submit: an idle Dramatiq Redis consumer polls with a backoff of up to
    a second, so the wait before the first job starts is noise that depends on how long the
    worker idled, not on storage.
    """
    ids = []
    for i in range(count):
        payload = {
            "jobId": f"{workload.name}-{uuid.uuid4().hex}",
            "source": {"path": workload.path(start_index + i)},
            "outputs": workload.outputs,
        }
        ids.append(client.submit(payload).job_id)
    pending = list(ids)
    started: list[float] = []
    finished: list[float] = []
    deadline = time.monotonic() + 300
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} jobs did not finish")
        # Jobs finish about in order: stop at the first unfinished one (few status reads,
        # so the polling hardly competes with the worker for the CPUs).
        while pending:
            status = client.status(pending[0])
            if status["state"] == "succeeded":
                started.append(_timestamp(status["startedAt"]))
                finished.append(_timestamp(status["finishedAt"]))
                pending.pop(0)
            elif status["state"] in ("failed", "cancelled"):
                raise RuntimeError(f"job {pending[0]} {status['state']}: {status.get('error')}")
            else:
                break
        if pending:
            time.sleep(0.1)
    return max(finished) - min(started)


def _batches(
    workload: Workload,
    clients: dict[str, Any],
    pids: dict[str, int],
    weed: int,
    jobs: int,
    batch: int,
) -> dict[str, Any]:
    """ABBA batches of ``workload`` on both workers: throughput, ratios and CPU per job."""
    for side in ("local", "s3"):  # warm up: render children, S3 clients, this job's sizes
        _run_batch(clients[side], workload, workload.warm_up, 0)
    times: dict[str, list[float]] = {"local": [], "s3": []}
    cpu = {"local": 0.0, "s3": 0.0}  # worker process trees
    weed_cpu = {"local": 0.0, "s3": 0.0}  # SeaweedFS during each side's batches
    rounds = max(1, jobs // batch)
    for r in range(rounds):
        for side in ("local", "s3") if r % 2 == 0 else ("s3", "local"):
            before = _cpu_seconds(pids[side]), _cpu_seconds(weed)
            times[side].append(_run_batch(clients[side], workload, batch, r * batch))
            cpu[side] += _cpu_seconds(pids[side]) - before[0]
            weed_cpu[side] += _cpu_seconds(weed) - before[1]
    per_round = [
        (batch / s) / (batch / loc) for s, loc in zip(times["s3"], times["local"], strict=True)
    ]
    total = rounds * batch
    local_s, s3_s = sum(times["local"]), sum(times["s3"])
    return {
        "jobs_per_side": total,
        "batch": batch,
        "local_jobs_s": total / local_s,
        "s3_jobs_s": total / s3_s,
        "ratio_median": statistics.median(per_round),
        "ratio_total": local_s / s3_s,
        "ratio_rounds": per_round,
        # Measured CPU per job: the worker with its render children, and SeaweedFS (during
        # the S3 batches; during the local ones it only idles: its baseline).
        "local_worker_cpu_ms": cpu["local"] / total * 1000,
        "s3_worker_cpu_ms": cpu["s3"] / total * 1000,
        "s3_server_cpu_ms": weed_cpu["s3"] / total * 1000,
        "idle_server_cpu_ms": weed_cpu["local"] / total * 1000,
        # Cores busy over the batches' time: jobs/s = cores busy / CPU per job.
        "local_cores_busy": cpu["local"] / local_s,
        "s3_cores_busy": (cpu["s3"] + weed_cpu["s3"]) / s3_s,
        # Derived from the measured CPU (equal cores busy on both sides), not measured: the
        # check with SeaweedFS on these CPUs (as here), and the projection with it elsewhere.
        "cpu_model_ratio": cpu["local"] / (cpu["s3"] + weed_cpu["s3"]),
        "projected_ratio": cpu["local"] / cpu["s3"],
    }


def _output_bytes(out: Path, workload: Workload) -> list[int]:
    """The median size of each output the local worker wrote for ``workload``."""
    sizes: list[list[int]] = [[] for _ in workload.widths]
    for job in out.glob(f"{workload.name}-*"):
        for index in range(len(workload.widths)):
            file = job / f"{index}.webp"
            if file.exists():
                sizes[index].append(file.stat().st_size)
    return [int(statistics.median(s)) for s in sizes]


def throughput(
    s3: Any, bucket: str, work: Path, plan: list[tuple[Workload, int, int]]
) -> dict[str, dict[str, Any]]:
    """Each ``(workload, jobs per side, batch)`` of ``plan`` in turn, on the same workers."""
    from dramatiq_preview import PreviewClient, Settings
    from dramatiq_preview.testing import RedisServer, WorkerProcess

    local_src = work / "local-src"
    client = s3.client()
    source_mb: dict[str, float] = {}
    for workload, _, _ in plan:
        (local_src / workload.name).mkdir(parents=True)
        sizes = []
        for i in range(workload.sources):
            data = photo_jpeg(*workload.size)
            sizes.append(len(data))
            (local_src / workload.path(i)).write_bytes(data)
            client.put_object(Bucket=bucket, Key=f"src/{workload.path(i)}", Body=data)
        source_mb[workload.name] = statistics.mean(sizes) / MB
    common = {
        **s3.environment(),
        "PYTHONPATH": str(ROOT),
        "PREVIEW_GC_INTERVAL_SECONDS": "0",  # no sweep in the middle of a batch
        "PREVIEW_LOG_FORMAT": "text",
    }
    roots = {
        "local": {"PREVIEW_SOURCE_ROOT": str(local_src), "PREVIEW_OUTPUT_DIR": str(work / "out")},
        "s3": {
            "PREVIEW_SOURCE_ROOT": f"s3://{bucket}/src",
            "PREVIEW_OUTPUT_DIR": f"s3://{bucket}/out",
        },
    }
    results: dict[str, dict[str, Any]] = {}
    with RedisServer() as redis_local, RedisServer() as redis_s3:
        redis = {"local": redis_local, "s3": redis_s3}
        envs = {
            side: {**common, **roots[side], "PREVIEW_REDIS_URL": redis[side].url} for side in roots
        }
        clients = {side: PreviewClient(Settings.from_mapping(envs[side])) for side in envs}
        workers = {side: WorkerProcess(env=envs[side], processes=1, threads=2) for side in envs}
        with workers["local"], workers["s3"]:
            pids = {side: _pid(w.process) for side, w in workers.items()}
            weed = _pid(s3.process)
            for workload, jobs, batch in plan:
                figures = _batches(workload, clients, pids, weed, jobs, batch)
                figures["source_mb"] = source_mb[workload.name]
                figures["output_bytes"] = _output_bytes(work / "out", workload)
                results[workload.name] = figures
        for c in clients.values():
            c.close()
    return results


#: What one job's S3 requests cost in CPU: the worker's (boto3 + our spool) and the
#: server's, from a fresh process doing what a worker does for one job, many times.
_REQUESTS = textwrap.dedent(
    """
    import json, os, sys, time, uuid
    from dramatiq_preview.config import S3Location
    from dramatiq_preview.storage import open_storage

    bucket, server, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    prefix, sources = sys.argv[4], int(sys.argv[5])
    outputs = [os.urandom(int(n)) for n in sys.argv[6].split(",")]
    tick = os.sysconf("SC_CLK_TCK")

    def server_cpu():
        with open(f"/proc/{server}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / tick

    source = open_storage(S3Location(bucket, "src"))
    output = open_storage(S3Location(bucket, f"req/{uuid.uuid4().hex}"))

    def get(i):
        fd, _ = source.open_source(f"{prefix}/p{i % sources}.jpg", max_bytes=10**8,
                                   spool_dir=None, deadline=time.monotonic() + 60)
        os.close(fd)

    def put(i):
        for k, data in enumerate(outputs):
            output.put(f"j{i}/{k}.webp", data, "image/webp")

    out = {}
    for name, call in (("get", get), ("put", put)):
        for i in range(5):
            call(i)  # warm-up
        wall, cpu, srv = time.perf_counter(), time.process_time(), server_cpu()
        for i in range(count):
            call(i)
        out[name + "_wall_ms"] = (time.perf_counter() - wall) / count * 1000
        out[name + "_cpu_ms"] = (time.process_time() - cpu) / count * 1000
        out[name + "_server_cpu_ms"] = (server_cpu() - srv) / count * 1000
    print(json.dumps(out))
    """
)

#: botocore's default (since 1.36: a CRC on every PutObject and GetObject), and checksums
#: only where an operation requires them; set for the request-timing process only.
CHECKSUM_MODES = {
    "default": {
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_supported",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_supported",
    },
    "when_required": {
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    },
}


def request_costs(
    s3: Any, bucket: str, workload: Workload, output_bytes: list[int], count: int, rounds: int
) -> dict[str, dict[str, float]]:
    """One job's S3 requests timed in fresh processes, per checksum mode (ABBA; means)."""
    rows: dict[str, list[dict[str, Any]]] = {mode: [] for mode in CHECKSUM_MODES}
    args = (workload.name, str(workload.sources), ",".join(map(str, output_bytes)))
    for r in range(rounds):
        for mode in CHECKSUM_MODES if r % 2 == 0 else reversed(CHECKSUM_MODES):
            env = {**s3.environment(), **CHECKSUM_MODES[mode]}
            rows[mode].append(
                run_python(_REQUESTS, bucket, str(_pid(s3.process)), str(count), *args, env=env)
            )
    return {
        mode: {key: statistics.mean(row[key] for row in found) for key in found[0]}
        for mode, found in rows.items()
    }


# --- 2. worker memory --------------------------------------------------------------------

_PROC = textwrap.dedent(
    """
    def status(field, pid="self"):
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(field)

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    """
)

_WORKER_MEMORY = _PROC + textwrap.dedent(
    """
    import json, sys, time
    from dramatiq_preview.config import Settings
    from dramatiq_preview.models import JobSpec, OutputSpec
    from dramatiq_preview.rendering import get_renderer
    from dramatiq_preview.sources import open_source
    from dramatiq_preview.storage import destinations

    bucket = sys.argv[1]
    settings = Settings.from_mapping({
        "PREVIEW_SOURCE_ROOT": f"s3://{bucket}/src",
        "PREVIEW_OUTPUT_DIR": f"s3://{bucket}/out",
        "PREVIEW_TIME_LIMIT_MS": "300000",
    })
    renderer = get_renderer(settings, processes=1)

    def job(name, path):
        spec = JobSpec(job_id=name, source_path=path,
                       outputs=(OutputSpec(256, 256, "webp", quality=82),))
        t0 = time.perf_counter()
        with open_source(spec, settings) as source:
            t1 = time.perf_counter()
            renderer.render(spec, source, destinations(settings.output_dir, spec),
                            deadline=time.monotonic() + 300)
        return t1 - t0, time.perf_counter() - t1, source.size

    job("warm", "tiny.jpg")
    reset_peak()
    before = status("VmRSS")
    fetch, render, size = job("big", "big.png")
    peak = status("VmHWM")
    children = renderer.child_pids()
    child_peak = status("VmHWM", children[0]) if children else 0
    renderer.close()
    print(json.dumps({"growth": peak - before, "before": before, "size": size, "fetch_s": fetch,
                      "render_s": render, "child_hwm": child_peak}))
    """
)


# --- 3. spool or stream ------------------------------------------------------------------

#: The other end of a hand-over: reads a descriptor (a spooled file, from offset 0, in
#: 64 KiB reads as stdio does; or a pipe, into one buffer of the announced size).
_READER = _PROC + textwrap.dedent(
    """
    import json, os, sys, time
    fd, kind, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    reset_peak()
    before = status("VmRSS")
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    got = 0
    if kind == "file":
        while True:
            chunk = os.pread(fd, 65536, got)
            if not chunk:
                break
            got += len(chunk)
    else:
        buffer = bytearray(size)
        view = memoryview(buffer)
        while got < size:
            n = os.readv(fd, [view[got:]])
            if n == 0:
                break
            got += n
    elapsed = time.perf_counter() - t0
    print(json.dumps({"read_s": elapsed, "growth": status("VmHWM") - before, "bytes": got}),
          flush=True)
    """
)

_FETCH = _PROC + textwrap.dedent(
    """
    import fcntl, json, os, subprocess, sys, time
    from dramatiq_preview.config import S3Location
    from dramatiq_preview.storage import open_storage

    mode, bucket, reader_code = sys.argv[1], sys.argv[2], sys.argv[3]
    storage = open_storage(S3Location(bucket, "src"))
    client = storage.client()
    KEY = "src/big.png"

    def reader(fd, kind, size):
        proc = subprocess.Popen([sys.executable, "-c", reader_code, str(fd), kind, str(size)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                pass_fds=(fd,))
        assert proc.stdout.readline().strip() == "ready"
        return proc

    def finish(proc):
        result = json.loads(proc.stdout.readline())
        proc.stdin.close()
        proc.wait()
        return result

    def write_all(fd, data):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    # Warm up: the connection, the signing code, the spool code paths.
    storage.open_source("tiny.jpg", max_bytes=10**8, spool_dir=None,
                        deadline=time.monotonic() + 60)
    client.get_object(Bucket=bucket, Key="src/tiny.jpg")["Body"].read()
    size = client.head_object(Bucket=bucket, Key=KEY)["ContentLength"]
    out = {"size": size}
    reset_peak()
    before = status("VmRSS")
    if mode == "memory":
        t0 = time.perf_counter()
        data = client.get_object(Bucket=bucket, Key=KEY)["Body"].read()
        out["fetch_s"] = time.perf_counter() - t0
        out["growth"] = status("VmHWM") - before
        assert len(data) == size
    elif mode == "spool":
        t0 = time.perf_counter()
        fd, total = storage.open_source("big.png", max_bytes=10**8, spool_dir=None,
                                        deadline=time.monotonic() + 120)
        out["fetch_s"] = time.perf_counter() - t0
        out["growth"] = status("VmHWM") - before
        assert total == size
        # (c) the render child reads the spooled file through its descriptor.
        proc = reader(fd, "file", size)
        t0 = time.perf_counter()
        proc.stdin.write("go\\n")
        proc.stdin.flush()
        result = finish(proc)
        out["file_handover_s"] = time.perf_counter() - t0
        out["file_reader_growth"] = result["growth"]
        assert result["bytes"] == size
        # (c) the same bytes through a pipe (1 MiB pipe buffer), the reader buffering them.
        r, w = os.pipe()
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
        proc = reader(r, "pipe", size)
        os.close(r)
        t0 = time.perf_counter()
        proc.stdin.write("go\\n")
        proc.stdin.flush()
        offset = 0
        while offset < size:
            chunk = os.pread(fd, 1 << 20, offset)
            write_all(w, chunk)
            offset += len(chunk)
        os.close(w)
        result = finish(proc)
        out["pipe_handover_s"] = time.perf_counter() - t0
        out["pipe_reader_growth"] = result["growth"]
        assert result["bytes"] == size
        os.close(fd)
    elif mode == "stream":
        # The streamed design end to end: get_object chunks go down a pipe to the reader,
        # which must hold the whole blob; against it, spool + file hand-over.
        r, w = os.pipe()
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
        proc = reader(r, "pipe", size)
        os.close(r)
        reset_peak()
        before = status("VmRSS")
        t0 = time.perf_counter()
        proc.stdin.write("go\\n")
        proc.stdin.flush()
        body = client.get_object(Bucket=bucket, Key=KEY)["Body"]
        for chunk in body.iter_chunks(1 << 20):
            write_all(w, chunk)
        os.close(w)
        result = finish(proc)
        out["total_s"] = time.perf_counter() - t0
        out["growth"] = status("VmHWM") - before
        out["reader_growth"] = result["growth"]
        assert result["bytes"] == size
    print(json.dumps(out))
    """
)


def memory_and_transfer(s3: Any, bucket: str, repeats: int) -> dict[str, Any]:
    big = noise_png(*BIG_SIZE)
    client = s3.client()
    client.put_object(Bucket=bucket, Key="src/big.png", Body=big)
    client.put_object(Bucket=bucket, Key="src/tiny.jpg", Body=photo_jpeg(64, 48))
    env = s3.environment()
    worker: list[dict[str, Any]] = []
    fetch: dict[str, list[dict[str, Any]]] = {"memory": [], "spool": [], "stream": []}
    for _ in range(repeats):
        worker.append(run_python(_WORKER_MEMORY, bucket, env=env))
        for mode in fetch:
            fetch[mode].append(run_python(_FETCH, mode, bucket, _READER, env=env))

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(row[key] for row in rows))

    size = len(big)
    spool, memory, stream = fetch["spool"], fetch["memory"], fetch["stream"]
    return {
        "size_mb": size / MB,
        "worker_growth_mb": med(worker, "growth") / MB,
        "worker_growth_ratio": med(worker, "growth") / size,
        "worker_rss_before_mb": med(worker, "before") / MB,
        "worker_fetch_s": med(worker, "fetch_s"),
        "worker_render_s": med(worker, "render_s"),
        "child_hwm_mb": med(worker, "child_hwm") / MB,
        "memory_fetch_s": med(memory, "fetch_s"),
        "memory_growth_mb": med(memory, "growth") / MB,
        "spool_fetch_s": med(spool, "fetch_s"),
        "spool_growth_mb": med(spool, "growth") / MB,
        "file_handover_s": med(spool, "file_handover_s"),
        "file_reader_growth_mb": med(spool, "file_reader_growth") / MB,
        "pipe_handover_s": med(spool, "pipe_handover_s"),
        "pipe_reader_growth_mb": med(spool, "pipe_reader_growth") / MB,
        "spool_total_s": statistics.median(
            row["fetch_s"] + row["file_handover_s"] for row in spool
        ),
        "stream_total_s": med(stream, "total_s"),
        "stream_growth_mb": med(stream, "growth") / MB,
        "stream_reader_growth_mb": med(stream, "reader_growth") / MB,
    }


# --- the run -----------------------------------------------------------------------------


def run(
    jobs: int = 360,
    batch: int = 20,
    photo_jobs: int = 120,
    photo_batch: int = 15,
    repeats: int = 3,
    request_rounds: int = 2,
) -> dict[str, Any]:
    """Run every measurement and return the figures."""
    from dramatiq_preview.testing import S3Server

    with tempfile.TemporaryDirectory(prefix="preview-bench-s3-") as tmp, S3Server() as s3:
        bucket = s3.create_bucket()
        plan = [(SMALL, jobs, batch), (PHOTO, photo_jobs, photo_batch)]
        figures: dict[str, Any] = throughput(s3, bucket, Path(tmp), plan)
        for workload, count in ((SMALL, 400), (PHOTO, 60)):
            sizes = figures[workload.name]["output_bytes"]
            figures[workload.name]["requests"] = request_costs(
                s3, bucket, workload, sizes, count, request_rounds
            )
        figures.update(memory_and_transfer(s3, bucket, repeats))
    return figures


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _workload_report(letter: str, workload: Workload, w: dict[str, Any]) -> list[str]:
    rounds = ", ".join(f"{r:.2f}" for r in w["ratio_rounds"])
    kb = " + ".join(f"{n / 1000:.0f}" for n in w["output_bytes"])
    req, off = w["requests"]["default"], w["requests"]["when_required"]
    puts = "put_object" if len(workload.widths) == 1 else f"{len(workload.widths)} put_object"
    saved = (req["get_cpu_ms"] + req["put_cpu_ms"]) - (off["get_cpu_ms"] + off["put_cpu_ms"])
    saved_server = (req["get_server_cpu_ms"] + req["put_server_cpu_ms"]) - (
        off["get_server_cpu_ms"] + off["put_server_cpu_ms"]
    )
    return [
        f"   {letter}) {workload.name} job: {workload.describe()} ({w['source_mb']:.1f} MB "
        f"source; outputs {kb} KB), {w['jobs_per_side']} jobs per side in batches of "
        f"{w['batch']}:",
        f"      local {w['local_jobs_s']:.1f} jobs/s, S3 {w['s3_jobs_s']:.1f} jobs/s; "
        f"S3 / local (wall): median of pairs {w['ratio_median']:.2f} (pairs: {rounds}), "
        f"totals {w['ratio_total']:.2f}",
        f"      CPU per job (measured): worker + render children {w['local_worker_cpu_ms']:.1f} ms "
        f"local, {w['s3_worker_cpu_ms']:.1f} ms S3 "
        f"(+{w['s3_worker_cpu_ms'] - w['local_worker_cpu_ms']:.1f}); SeaweedFS "
        f"{w['s3_server_cpu_ms']:.1f} ms (idle baseline during local batches "
        f"{w['idle_server_cpu_ms']:.1f} ms)",
        f"      cores busy: local {w['local_cores_busy']:.2f}, S3 {w['s3_cores_busy']:.2f} "
        f"(worker + SeaweedFS); CPU model with SeaweedFS here: {w['local_worker_cpu_ms']:.1f} / "
        f"({w['s3_worker_cpu_ms']:.1f} + {w['s3_server_cpu_ms']:.1f}) = "
        f"{w['cpu_model_ratio']:.2f} (measured totals {w['ratio_total']:.2f})",
        f"      worker-side ratio, PROJECTED from measured CPU (SeaweedFS's CPU elsewhere): "
        f"{w['local_worker_cpu_ms']:.1f} / {w['s3_worker_cpu_ms']:.1f} = "
        f"{w['projected_ratio']:.2f}",
        f"      one job's S3 requests alone (fresh processes): get_object + spool "
        f"{req['get_wall_ms']:.1f} ms ({req['get_cpu_ms']:.1f} ms CPU here, "
        f"{req['get_server_cpu_ms']:.1f} ms in SeaweedFS), {puts} "
        f"{req['put_wall_ms']:.1f} ms ({req['put_cpu_ms']:.1f} + "
        f"{req['put_server_cpu_ms']:.1f} ms)",
        f"      with checksums when_required: get {off['get_cpu_ms']:.1f} + "
        f"{off['get_server_cpu_ms']:.1f} ms, put {off['put_cpu_ms']:.1f} + "
        f"{off['put_server_cpu_ms']:.1f} ms CPU: saves {saved:.2f} ms of worker CPU per job "
        f"({saved_server:.2f} ms in SeaweedFS)",
    ]


def report(f: dict[str, Any]) -> str:
    small, photo = f[SMALL.name], f[PHOTO.name]
    target = THROUGHPUT_TARGET
    lines = [
        "",
        "storage benchmark (SeaweedFS on this machine; worker --processes 1 --threads 2)",
        "1. throughput, S3 roots against local roots, same two workers, ABBA batches:",
        *_workload_report("a", SMALL, small),
        *_workload_report("b", PHOTO, photo),
        f"   against {target} (issue 12's target is the small job's wall ratio; the others "
        "are printed to choose the right one):",
        f"      small job, wall (issue 12)                      {small['ratio_median']:.3f} "
        f"-> {_verdict(small['ratio_median'] >= target)}",
        f"      small job, worker-side (projected from CPU)     {small['projected_ratio']:.3f} "
        f"-> {_verdict(small['projected_ratio'] >= target)}",
        f"      photo job, wall                                 {photo['ratio_median']:.3f} "
        f"-> {_verdict(photo['ratio_median'] >= target)}",
        f"      photo job, worker-side (projected from CPU)     {photo['projected_ratio']:.3f} "
        f"-> {_verdict(photo['projected_ratio'] >= target)}",
        f"2. worker peak RSS growth, one {f['size_mb']:.1f} MB PNG from S3 (fetch "
        f"{f['worker_fetch_s']:.2f} s + render {f['worker_render_s']:.2f} s):",
        f"   {f['worker_growth_mb']:.2f} MB over {f['worker_rss_before_mb']:.0f} MB = "
        f"{f['worker_growth_ratio']:.3f}x the file; target <= {MEMORY_TARGET}x -> "
        f"{_verdict(f['worker_growth_ratio'] <= MEMORY_TARGET)}",
        f"   (the render child's own peak RSS: {f['child_hwm_mb']:.0f} MB)",
        f"3. spool or stream, {f['size_mb']:.1f} MB object (medians):",
        "   step                                        time s   RSS growth MB",
        f"   (a) get_object + read() into bytes        {f['memory_fetch_s']:8.3f}"
        f"   {f['memory_growth_mb']:8.2f}  (fetching process)",
        f"   (b) get_object -> spooled temp file       {f['spool_fetch_s']:8.3f}"
        f"   {f['spool_growth_mb']:8.2f}  (fetching process)",
        f"   (c) child reads the spooled file          {f['file_handover_s']:8.3f}"
        f"   {f['file_reader_growth_mb']:8.2f}  (reading process)",
        f"   (c) pipe to child, child buffers it       {f['pipe_handover_s']:8.3f}"
        f"   {f['pipe_reader_growth_mb']:8.2f}  (reading process)",
        f"   end to end: spool (b) + file read (c)     {f['spool_total_s']:8.3f}"
        f"   {f['spool_growth_mb'] + f['file_reader_growth_mb']:8.2f}  (both processes)",
        f"   end to end: get_object -> pipe -> child   {f['stream_total_s']:8.3f}"
        f"   {f['stream_growth_mb'] + f['stream_reader_growth_mb']:8.2f}  (both processes;"
        f" reader {f['stream_reader_growth_mb']:.1f})",
    ]
    return "\n".join(lines)


#: run() arguments: full and quick (BENCH_QUICK=1, --quick).
FULL = {"jobs": 360, "batch": 20, "photo_jobs": 120, "photo_batch": 15, "repeats": 3}
QUICK = {
    "jobs": 60,
    "batch": 15,
    "photo_jobs": 30,
    "photo_batch": 15,
    "repeats": 1,
    "request_rounds": 1,
}


@pytest.mark.benchmark
def test_storage_benchmark(request: pytest.FixtureRequest) -> None:
    """Given SeaweedFS and a local disk, when workers render from each, then print ratios."""
    if "benchmark" not in (request.config.option.markexpr or ""):
        pytest.skip("run with -m benchmark")
    pytest.importorskip("pyvips")
    pytest.importorskip("boto3")
    figures = run(**(QUICK if os.environ.get("BENCH_QUICK") == "1" else FULL))
    print(report(figures))
    # Times and ratios are only printed (noise); memory does not depend on the machine's load.
    assert figures[SMALL.name]["ratio_median"] > 0
    assert figures[PHOTO.name]["ratio_median"] > 0
    assert figures["worker_growth_ratio"] <= MEMORY_TARGET


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs, one repeat")
    parser.add_argument("--jobs", type=int, default=None, help="small jobs per side (360)")
    parser.add_argument("--batch", type=int, default=None, help="small jobs per batch (20)")
    parser.add_argument("--photo-jobs", type=int, default=None, help="photo jobs per side (120)")
    parser.add_argument("--photo-batch", type=int, default=None, help="photo jobs per batch (15)")
    parser.add_argument("--repeats", type=int, default=None, help="memory/transfer repeats")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    options: dict[str, int] = dict(QUICK if args.quick else FULL)
    for name in ("jobs", "batch", "photo_jobs", "photo_batch", "repeats"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    start = time.monotonic()
    figures = run(**options)
    print(json.dumps(figures, indent=2) if args.json else report(figures))
    print(f"(took {time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()

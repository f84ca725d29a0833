"""Profile the full stack under issue 17's pipeline workload: where a job's CPU and Redis go.

Run from the repository root (needs ``py-spy``: ``pip install py-spy``, not a dependency)::

    python tests/benchmarks/profile_overhead.py [--jobs 2000] [--rate 250] [--top 25]

One worker (``--processes 1 --threads 4``) on a private redis-server, as target 1 of
``bench_overhead.py``, renders ``--jobs`` standard small jobs while ``py-spy record
--subprocesses --idle`` samples it (the render children included), then:

1. **CPU per job** by function: samples that are not idle, per process kind (the worker
   process; render children), and for each function its inclusive time per job, ours and
   Dramatiq's, from the collapsed stacks (``--top`` lines);
2. **Redis per job**: ``INFO commandstats`` around the timed jobs (commands run inside scripts
   included), and ``MONITOR`` over 20 jobs submitted one at a time: every command a client
   sent, in order, with the scripts named by their first line (what code path sent it).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _collapsed(path: Path) -> list[tuple[str, list[str], int]]:
    """(process kind, frames, samples) per line of py-spy's raw output (a render child's
    command line spans several lines: records start at ``process N:``)."""
    stacks = []
    for record in re.split(r"\n(?=process \d+:)", path.read_text().strip()):
        stack, _, count = record.rpartition(" ")
        parts = stack.split(";")
        processes = [p for p in parts if p.startswith("process ")]
        kind = "render child" if any("rendering.child" in p for p in processes) else "worker"
        frames = [p for p in parts if not p.startswith("process ")]
        stacks.append((kind, frames, int(count)))
    return stacks


def _name(frame: str) -> str:
    # py-spy's raw format: "function (path/to/file.py:line)"; keep function and file.
    function, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    if "/dramatiq_preview/" in file:
        file = "dramatiq_preview/" + file.split("/dramatiq_preview/", 1)[1]
    elif "site-packages/" in file:
        file = file.split("site-packages/", 1)[1]
    elif "/lib/python3" in file:
        file = file.split("/lib/", 1)[1]
    return f"{function} ({file})"


def cpu_profile(stacks: list[tuple[str, list[str], int]], jobs: int, rate: int, top: int) -> str:
    """Inclusive ms per job of the functions in the samples, per process kind."""
    per_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for kind, frames, count in stacks:
        totals[kind] += count
        seen = set()
        for frame in frames:
            name = _name(frame)
            if name not in seen:
                seen.add(name)
                per_kind[kind][name] += count
    ms = 1000 / rate / jobs
    lines = []
    for kind, counter in per_kind.items():
        lines.append(f"{kind}: {totals[kind] * ms:.2f} ms CPU per job (non-idle samples)")
        for name, count in counter.most_common(top):
            lines.append(f"  {count * ms:7.3f} ms  {name}")
    return "\n".join(lines)


def _scripts() -> dict[str, str]:
    """sha1 -> script name, for our Lua scripts and Dramatiq's dispatch.lua."""
    import dramatiq.brokers.redis as dredis

    names = {}
    sources = list((ROOT / "dramatiq_preview" / "lua").glob("*.lua"))
    sources += list(Path(dredis.__file__).parent.glob("redis/*.lua"))
    for path in sources:
        names[hashlib.sha1(path.read_bytes()).hexdigest()] = path.name
    return names


def monitor(ctx: dict[str, Any], jobs: int) -> list[str]:
    """Every command clients sent while ``jobs`` jobs ran one at a time, in order."""
    import redis

    from dramatiq_preview import PreviewClient, Settings

    client = PreviewClient(Settings.from_mapping(ctx["env"], {}))
    conn = redis.Redis.from_url(ctx["env"]["PREVIEW_REDIS_URL"], decode_responses=True)
    seen: list[str] = []
    stop = threading.Event()
    mon = conn.monitor()

    def listen() -> None:
        with mon as m:
            for entry in m.listen():
                if stop.is_set():
                    break
                seen.append(f"{entry['client_type']} {entry['client_address']} {entry['command']}")

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(0.3)
    payload = {
        "source": {"path": "standard.jpg"},
        "outputs": [{"width": 128, "height": 128, "format": "webp"}],
    }
    for _ in range(jobs):
        job_id = client.submit(dict(payload)).job_id
        while client.store.client.hget(client.store.job_key(job_id), "state") not in (
            b"succeeded",
            "succeeded",
        ):
            time.sleep(0.005)
        time.sleep(0.05)
    stop.set()
    conn.ping()
    thread.join(timeout=5)
    client.close()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--monitor-jobs", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "build" / "profile"))
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    import bench_overhead

    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="profile-overhead-"))
    bench_overhead._sources(tmp)
    with bench_overhead.system("full", tmp) as ctx:
        # Warm up (imports, render child, scripts), then sample the timed jobs only.
        bench_overhead.drive("full", ctx, 16)
        raw = out / "worker.collapsed"
        spy = subprocess.Popen(
            [
                pyspy,
                *("record", "--format", "raw", "--subprocesses", "--nonblocking"),
                *("--rate", str(args.rate), "--output", str(raw)),
                *("--pid", str(ctx["workers"].pids[0])),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)
        figures = bench_overhead.drive("full", ctx, args.jobs, stats=True)
        spy.send_signal(2)
        spy.wait(timeout=60)
        sequence = monitor(ctx, args.monitor_jobs)
    print(f"{args.jobs} jobs, {figures['jobs_per_second']:.1f} jobs/s under py-spy")
    print(cpu_profile(_collapsed(raw), args.jobs, args.rate, args.top))
    print("(py-spy: --idle is off, so samples are on-CPU or holding the GIL, roughly)")
    commands = {k: v / args.jobs for k, v in figures["commands"].items() if v > 0}
    print("Redis commands per job (INFO commandstats):")
    for name, value in sorted(commands.items(), key=lambda kv: -kv[1]):
        print(f"  {value:6.2f}  {name}")
    print(f"  {sum(commands.values()):6.2f}  total")
    names = _scripts()
    counted: collections.Counter[str] = collections.Counter()
    for line in sequence:
        kind, _address, command = line.split(" ", 2)
        if kind == "lua":
            continue
        words = command.split(" ")
        name = words[0].strip('"').lower()
        if name == "evalsha":
            name += " " + names.get(words[1].strip('"'), words[1][:10])
        counted[name] += 1
    print(f"client commands per job, MONITOR over {args.monitor_jobs} sequential jobs:")
    for name, count in counted.most_common():
        print(f"  {count / args.monitor_jobs:6.2f}  {name}")
    (out / "monitor.txt").write_text("\n".join(sequence))
    (out / "figures.json").write_text(json.dumps(figures, indent=2))
    print(f"(raw stacks: {raw}; MONITOR log: {out / 'monitor.txt'})")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()

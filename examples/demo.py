"""`make demo`: render the sample images in examples/images/ with a real worker.

It uses the Redis at PREVIEW_REDIS_URL (default redis://localhost:6379/0) when one answers,
otherwise it starts a private redis-server on a free port.  It starts a
`dramatiq dramatiq_preview` worker and the example Flask app (examples/flask_app), submits
every sample over HTTP with examples/flask_app/submit_samples.py, which prints each job's
state and output paths and downloads the outputs, and stops everything it started.  It ends
by drawing a contact sheet, each sample next to its previews in one PNG
(examples/contact_sheet.py), and prints its path: PREVIEW_OUTPUT_DIR/contact-sheet.png, or
the path given with ``--contact-sheet``.  Exit status 0 means every job succeeded.

``python examples/demo.py --submit`` submits through the Python API instead, to the worker
and Redis that PREVIEW_* describe (nothing is started), and draws the same sheet.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from contact_sheet import make_contact_sheet

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"
OUTPUT = Path(os.environ.get("PREVIEW_OUTPUT_DIR", Path.cwd() / "previews")).resolve()

#: What the demo asks for each sample: a 256 px WebP thumbnail and a 128 px JPEG square.
OUTPUTS = [
    {"width": 256, "height": 256, "format": "webp"},
    {"width": 128, "height": 128, "format": "jpeg", "fit": "cover", "quality": 80},
]
#: Notes next to the samples that are not samples (the rule of submit_samples.py).
NOTES = {".md", ".txt"}


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def main(contact_sheet: Path) -> int:
    # This process starts services; the jobs are submitted from a child process, because
    # dramatiq_preview reads PREVIEW_* once, when it is first imported.
    from dramatiq_preview.testing import RedisServer, WorkerProcess, free_port

    url = os.environ.get("PREVIEW_REDIS_URL", "redis://localhost:6379/0")
    private = None
    if redis_answers(url):
        print(f"using the Redis at {url}")
    else:
        private = RedisServer().start()
        url = private.url
        print(f"no Redis answered; started a private redis-server at {url}")
    env = {
        "PREVIEW_REDIS_URL": url,
        "PREVIEW_BROKER_URL": os.environ.get("PREVIEW_BROKER_URL", url),
        "PREVIEW_NAMESPACE": os.environ.get("PREVIEW_NAMESPACE", "dramatiq_preview_demo"),
        "PREVIEW_SOURCE_ROOT": str(IMAGES),
        "PREVIEW_OUTPUT_DIR": str(OUTPUT),
    }
    worker = WorkerProcess(env=env, processes=1, threads=2)
    web: subprocess.Popen[bytes] | None = None
    try:
        worker.start()
        print(f"worker started (pid {worker.process.pid if worker.process else '?'})")
        port = free_port()
        web = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flask",
                "--app",
                "examples.flask_app",
                "run",
                "--port",
                str(port),
            ],
            cwd=HERE.parent,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        api = f"http://127.0.0.1:{port}/api/preview"
        wait_for_http(f"{api}/worker/health", web)
        print(f"web app (examples/flask_app) serving {api}; outputs go under {OUTPUT}")
        with tempfile.TemporaryDirectory(prefix="preview-demo-") as tmp:
            summary = Path(tmp) / "summary.json"
            child = subprocess.run(
                [
                    sys.executable,
                    str(HERE / "flask_app" / "submit_samples.py"),
                    *("--url", api, "--download", tmp, "--summary", str(summary)),
                ],
                env={**os.environ, **env},
                check=False,
            )
            if summary.exists():
                draw_contact_sheet(json.loads(summary.read_text()), contact_sheet)
        return child.returncode
    finally:
        if web is not None:
            web.terminate()
            web.wait(timeout=10)
        worker.stop()
        if private is not None:
            private.close()
            print("stopped the private redis-server")


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait until ``url`` answers (any HTTP status) or the process exits."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the web app exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).close()  # noqa: S310 - loopback URL
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the web app did not answer at {url}")


def draw_contact_sheet(summary: list[dict[str, Any]], target: Path) -> None:
    path = make_contact_sheet(summary, target, title="dramatiq-preview: make demo")
    print(f"contact sheet (each sample next to its previews): {path.resolve()}")


def submit_samples(contact_sheet: Path) -> int:
    """Submit every sample, wait for each job and print its state and outputs."""
    from dramatiq_preview import get_status, submit_preview
    from dramatiq_preview.testing import wait_for_state

    run = uuid.uuid4().hex[:8]
    jobs = {}
    samples = sorted(
        p.name
        for p in IMAGES.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in NOTES
    )
    for sample in samples:
        payload = {
            "jobId": f"demo-{run}-{sample}",
            "source": {"path": sample},
            "outputs": OUTPUTS,
            "metadata": {"sample": sample},
        }
        jobs[sample] = submit_preview(payload).job_id
    started = time.monotonic()
    failures = 0
    summary = []
    for sample, job_id in jobs.items():
        status = wait_for_state(get_status, job_id, timeout=120)
        paths = [str(OUTPUT / o["path"]) for o in (status["result"] or {}).get("outputs", [])]
        detail = ", ".join(paths) if paths else (status["error"] or {}).get("message", "")
        print(f"{sample:<20} {status['state']:<10} {detail}")
        failures += status["state"] != "succeeded"
        summary.append({"sample": str(IMAGES / sample), "status": status, "saved": paths})
    print(f"{len(jobs)} jobs in {time.monotonic() - started:.1f}s, {failures} not succeeded")
    draw_contact_sheet(summary, contact_sheet)
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--submit", action="store_true", help="submit with the Python API; start nothing"
    )
    parser.add_argument(
        "--contact-sheet",
        type=Path,
        default=OUTPUT / "contact-sheet.png",
        help="where to write the contact sheet (default: %(default)s)",
    )
    args = parser.parse_args()
    sys.exit(submit_samples(args.contact_sheet) if args.submit else main(args.contact_sheet))

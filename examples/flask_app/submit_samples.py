"""Submit the sample images over HTTP, wait for each job, print its state and outputs.

Usage (the app and a worker running, both with PREVIEW_SOURCE_ROOT=examples/images)::

    python examples/flask_app/submit_samples.py [--url http://127.0.0.1:5000/api/preview]
        [--images examples/images] [--download DIR] [--summary FILE] [--timeout 120]

Each file in ``--images`` is submitted by its path relative to ``PREVIEW_SOURCE_ROOT``
(default: the images directory itself), asking for a 256 px WebP and a 128 px JPEG square;
notes kept next to the samples (``*.md``, ``*.txt``, dotfiles) are skipped.  When the
directory has no sample, a few PNG samples are generated into it first.  ``--summary``
writes what happened as JSON (each sample, its job's final status and, with ``--download``,
where each output was saved): ``examples/demo.py`` makes its contact sheet from it.
``PREVIEW_API_TOKEN``, when set, is sent as the bearer token.  Only the standard library
is used, so any HTTP client could do the same.

Exit status: 0 when every job succeeded, 1 otherwise, 2 when the API could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_IMAGES = HERE.parent / "images"
OUTPUTS = [
    {"width": 256, "height": 256, "format": "webp"},
    {"width": 128, "height": 128, "format": "jpeg", "fit": "cover", "quality": 80},
]
FINAL = {"succeeded", "failed", "cancelled"}
#: Files next to the samples that are not samples (examples/images/LICENSES.md).
NOTES = {".md", ".txt"}


def sample_files(directory: Path) -> list[Path]:
    """The samples in ``directory``, sorted by name: every file but notes and dotfiles."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in NOTES
    )


class Api:
    """The few calls the demo needs, with the bearer token when one is configured."""

    def __init__(self, base_url: str, token: str | None) -> None:
        if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
            raise SystemExit(f"--url must be an http:// or https:// URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.origin = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(self.base_url))
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def url(self, path: str) -> str:
        # statusUrl and output URLs are absolute paths; routes are relative to the base URL.
        return self.origin + path if path.startswith("/") else f"{self.base_url}/{path}"

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        # The scheme was checked in __init__: only http(s) URLs reach urlopen.
        request = urllib.request.Request(self.url(path), data, headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def download(self, path: str, target: Path) -> int:
        request = urllib.request.Request(self.url(path), headers=self.headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            data = response.read()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return len(data)


def make_samples(directory: Path) -> None:
    """Write two small PNGs (a gradient and a checkerboard) with the standard library."""
    directory.mkdir(parents=True, exist_ok=True)

    def png(width: int, height: int, pixel: Any) -> bytes:
        rows = b"".join(
            b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(width)) for y in range(height)
        )

        def chunk(kind: bytes, payload: bytes) -> bytes:
            crc = zlib.crc32(kind + payload)
            return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b"")
        )

    (directory / "gradient.png").write_bytes(png(320, 200, lambda x, y: (x * 255 // 319, y, 128)))
    checker = png(200, 200, lambda x, y: (255, 255, 255) if (x // 25 + y // 25) % 2 else (0, 0, 0))
    (directory / "checkerboard.png").write_bytes(checker)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:5000/api/preview")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--download", type=Path, help="save every output into this directory")
    parser.add_argument("--summary", type=Path, help="write the jobs and their outputs as JSON")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait in all")
    args = parser.parse_args(argv)

    images: Path = args.images.resolve()
    if not images.is_dir() or not sample_files(images):
        make_samples(images)
        print(f"generated sample images in {images}")
    root = Path(os.environ.get("PREVIEW_SOURCE_ROOT") or images).resolve()
    api = Api(args.url, os.environ.get("PREVIEW_API_TOKEN"))

    jobs: dict[str, tuple[Path, str]] = {}  # jobId -> (sample, statusUrl)
    refused = 0
    for sample in sample_files(images):
        try:
            relative = sample.relative_to(root).as_posix()
        except ValueError:
            print(f"{sample} is not inside PREVIEW_SOURCE_ROOT ({root})", file=sys.stderr)
            return 2
        payload = {"source": {"path": relative}, "outputs": OUTPUTS, "metadata": {"demo": "1"}}
        try:
            status, body = api.call("POST", "job", payload)
        except urllib.error.URLError as error:
            print(f"cannot reach {api.base_url}: {error.reason}", file=sys.stderr)
            return 2
        if status not in (200, 202):
            print(f"{sample.name}: {status} {body.get('error')}: {body.get('message')}")
            refused += 1
            continue
        jobs[body["jobId"]] = (sample, body["statusUrl"])
        print(f"submitted {sample.name:<22} jobId {body['jobId']}  ({status})")

    deadline = time.monotonic() + args.timeout
    results: dict[str, dict[str, Any]] = {}
    while len(results) < len(jobs) and time.monotonic() < deadline:
        for job_id, (_, status_url) in jobs.items():
            if job_id not in results:
                code, body = api.call("GET", status_url)
                if code == 200 and body["state"] in FINAL:
                    results[job_id] = body
        time.sleep(0.2)

    ok = bool(jobs) and not refused
    summary: list[dict[str, Any]] = []
    print()
    for job_id, (sample, _) in jobs.items():
        name = sample.name
        final = results.get(job_id)
        summary.append({"sample": str(sample), "jobId": job_id, "status": final, "saved": []})
        if final is None:
            print(f"{name:<22} still not finished after {args.timeout:.0f}s")
            ok = False
            continue
        print(f"{name:<22} {final['state']:<10} attempts={final['attempts']}")
        if final["state"] != "succeeded":
            ok = False
            reason = final.get("error") or {}
            print(f"{'':<22} {reason.get('type')}: {reason.get('message')}")
            continue
        for output in final["result"]["outputs"]:
            line = f"{'':<22} {output['path']:<44} {output['width']}x{output['height']}"
            if args.download:
                target = args.download / output["path"]
                size = api.download(output["url"], target)
                summary[-1]["saved"].append(str(target.resolve()))
                line += f"  downloaded {size} bytes"
            print(line)
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

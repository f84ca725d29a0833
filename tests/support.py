"""Shared constants and helpers of the test-suite (import them from here, not conftest).

Importing this module sets up the environment (PREVIEW_* pointing at a private Redis port
and temp directories) before anything imports ``dramatiq_preview``, which reads its settings
once, at first import.  tests/conftest.py imports it first and starts that Redis.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

for _name in [n for n in os.environ if n.startswith("PREVIEW_")]:
    del os.environ[_name]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


REDIS_PORT = _free_port()
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"
TMP = Path(tempfile.mkdtemp(prefix="preview-tests-"))
SOURCE_ROOT = TMP / "sources"
OUTPUT_DIR = TMP / "outputs"
SOURCE_ROOT.mkdir()
OUTPUT_DIR.mkdir()
REPO = Path(__file__).resolve().parent.parent

#: The settings every test process and worker starts from.
BASE_ENV = {
    "PREVIEW_REDIS_URL": REDIS_URL,
    "PREVIEW_NAMESPACE": "dptest",
    "PREVIEW_SOURCE_ROOT": str(SOURCE_ROOT),
    "PREVIEW_OUTPUT_DIR": str(OUTPUT_DIR),
    "PREVIEW_MAX_RETRIES": "2",
    "PREVIEW_MIN_BACKOFF_MS": "100",
    "PREVIEW_MAX_BACKOFF_MS": "400",
    "PREVIEW_TIME_LIMIT_MS": "20000",
    "PREVIEW_PROGRESS_INTERVAL_MS": "50",
    "PREVIEW_ALLOWED_URL_HOSTS": "localhost",
    "PREVIEW_ALLOW_PRIVATE_NETWORKS": "true",
    "PREVIEW_FETCH_READ_TIMEOUT_MS": "2000",
    "PREVIEW_BROKER_HEARTBEAT_TIMEOUT_MS": "2000",
    "PREVIEW_BROKER_MAINTENANCE_CHANCE": "200000",
    # Dramatiq's Prometheus exposition of test workers: loopback, a free port, a temp dir.
    "dramatiq_prom_host": "127.0.0.1",
    "dramatiq_prom_port": str(_free_port()),
    "dramatiq_prom_db": str(TMP / "prometheus"),
}
os.environ.update(BASE_ENV)
# Worker subprocesses import the package from this checkout.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
)


def python_env(**extra: str) -> dict[str, str]:
    """The environment for a plain Python subprocess of the test-suite."""
    return {**os.environ, **extra}


PYTHON = sys.executable


def image_info(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) of an encoded image, read with ImageMagick."""
    from wand.image import Image

    with Image(blob=data) as img:
        return str(img.format).lower(), int(img.width), int(img.height)

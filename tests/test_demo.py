"""`make demo` (examples/demo.py, the real script) and the samples it renders."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from support import REPO

from dramatiq_preview.testing import free_port

IMAGES = REPO / "examples" / "images"
NOTES = {".md", ".txt"}


def samples() -> list[Path]:
    return sorted(p for p in IMAGES.iterdir() if p.is_file() and p.suffix not in NOTES)


def demo_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a shell with no Redis at PREVIEW_REDIS_URL, as on a fresh machine."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREVIEW_", "dramatiq_prom_"))  # the test session's settings
    }
    env.update(
        PREVIEW_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        PREVIEW_OUTPUT_DIR=str(tmp_path / "previews"),
        # Dramatiq's Prometheus exposition of the demo's worker: not the session worker's port.
        dramatiq_prom_host="127.0.0.1",
        dramatiq_prom_port=str(free_port()),
        dramatiq_prom_db=str(tmp_path / "prometheus"),
    )
    return env


@pytest.mark.slow
def test_the_demo_renders_every_sample_and_draws_a_contact_sheet(tmp_path: Path) -> None:
    # Given no Redis answering at PREVIEW_REDIS_URL and an empty output directory
    env = demo_env(tmp_path)
    # When the demo runs as `make demo` runs it
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "demo.py")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # Then it started its own Redis, every sample succeeded (the licence note was left out)
    # and it stopped what it started
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "started a private redis-server" in result.stdout
    assert "stopped the private redis-server" in result.stdout
    names = [p.name for p in samples()]
    finals = re.findall(r"^(\S+)\s+(succeeded|failed|cancelled)\s+attempts=", result.stdout, re.M)
    assert finals == [(name, "succeeded") for name in names], out
    # And it drew the contact sheet where it says, under PREVIEW_OUTPUT_DIR
    sheet = tmp_path / "previews" / "contact-sheet.png"
    assert f"contact sheet (each sample next to its previews): {sheet}" in result.stdout
    with Image.open(sheet) as image:
        assert image.format == "PNG"
        width, height = image.size
        colours = image.convert("L").getextrema()
    # Two samples a line, each its source (<= 192 px) and its 256 and 128 px previews
    assert width >= 2 * (192 + 256 + 128)
    assert height >= math.ceil(len(names) / 2) * 256
    assert colours[0] < 64 < 192 < colours[1]  # not a blank page


def test_every_sample_has_a_licence_note() -> None:
    note = (IMAGES / "LICENSES.md").read_text()
    listed = re.findall(r"^\| `([^`]+)` \|", note, re.M)
    assert sorted(listed) == [p.name for p in samples()]


def test_the_samples_stay_small() -> None:
    assert sum(p.stat().st_size for p in IMAGES.iterdir()) < 3 * 1024 * 1024


def test_the_sample_pdf_is_what_its_script_writes(tmp_path: Path) -> None:
    # Given the script that made examples/images/document.pdf
    target = tmp_path / "document.pdf"
    # When it runs again
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make-sample-pdf"), "--out", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it writes the committed file, byte for byte: three pages of real text
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == (IMAGES / "document.pdf").read_bytes()
    text = subprocess.run(
        ["pdftotext", str(target), "-"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "Previews in the background" in text
    assert text.count("\f") == 3  # pdftotext ends each page with a form feed

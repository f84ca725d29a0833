"""Rasterise one PDF page with poppler (``pdfinfo`` + ``pdftocairo``, Debian package
``poppler-utils``), outside ImageMagick.

Debian's ImageMagick policy forbids the PDF coder (it would run Ghostscript), and an
application policy cannot lift a system denial.  Poppler parses PDF only, with no PostScript
interpreter, which is a smaller attack surface than Ghostscript.  Both tools read the
document from an inherited descriptor (``fd://0``), run with an empty environment, inherit
the render child's address-space cap and die with it, and are killed at the deadline.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence

from ..errors import CorruptSource, PageOutOfRange, RenderTimeout, TooManyPixels
from ..models import OutputSpec
from .deathsig import die_with_parent
from .geometry import required_scale

_PAGES_RE = re.compile(rb"^Pages:\s+(\d+)\s*$", re.M)
_SIZE_RE = re.compile(rb"^Page\s+\d+\s+size:\s+([\d.]+)\s+x\s+([\d.]+)\s+pts", re.M)
_LAST_PAGE_RE = re.compile(rb"the last page \((\d+)\)")
_ROT_RE = re.compile(rb"^Page\s+\d+\s+rot:\s+(\d+)", re.M)
#: Never rasterise a page larger than this on its long side, whatever the outputs ask.
MAX_RASTER_SIDE = 8192


def _run(
    argv: list[str], fd: int, deadline: float, what: str
) -> subprocess.CompletedProcess[bytes]:
    tool = shutil.which(argv[0], path="/usr/bin:/bin:/usr/local/bin")
    if tool is None:
        raise CorruptSource(f"PDF support needs {argv[0]} (Debian package poppler-utils)")
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise RenderTimeout("the render time limit was reached before the PDF was rasterised")
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        return subprocess.run(
            [tool, *argv[1:]],
            stdin=fd,
            capture_output=True,
            timeout=remaining,
            env={"PATH": "/usr/bin:/bin"},
            preexec_fn=die_with_parent,  # the render child is single-threaded
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RenderTimeout(f"{what} took longer than the render time limit") from None


def page_info(fd: int, page: int, deadline: float) -> tuple[int, float, float]:
    """``(page_count, width_pt, height_pt)`` of page ``page`` (0-based), rotation applied.

    Raises:
      CorruptSource: poppler cannot read the document.
      PageOutOfRange: ``page`` is beyond the last page.
    """
    number = page + 1
    done = _run(
        ["pdfinfo", "-f", str(number), "-l", str(number), "fd://0"], fd, deadline, "reading the PDF"
    )
    pages = _PAGES_RE.search(done.stdout)
    last = _LAST_PAGE_RE.search(done.stderr)
    if done.returncode != 0 and last is not None:
        count = int(last.group(1))  # poppler refuses a range past the last page
    elif done.returncode != 0 or pages is None:
        raise CorruptSource("the PDF cannot be read (damaged or encrypted)")
    else:
        count = int(pages.group(1))
    if page >= count:
        noun = "page" if count == 1 else "pages"
        raise PageOutOfRange(
            f"page {page} does not exist: the PDF has {count} {noun} (pages count from 0)"
        )
    size = _SIZE_RE.search(done.stdout)
    if size is None:
        raise CorruptSource("the PDF page has no size")
    width, height = float(size.group(1)), float(size.group(2))
    rot = _ROT_RE.search(done.stdout)
    if rot is not None and int(rot.group(1)) % 180 == 90:
        width, height = height, width
    if not (width > 0 and height > 0):
        raise CorruptSource("the PDF page has no size")
    return count, width, height


def rasterise(
    fd: int,
    page: int,
    outputs: Sequence[OutputSpec],
    *,
    max_pixels: int,
    deadline: float,
) -> bytes:
    """PNG bytes of page ``page``, large enough for the largest of ``outputs``.

    Raises:
      CorruptSource, PageOutOfRange, TooManyPixels, RenderTimeout.
    """
    _, width_pt, height_pt = page_info(fd, page, deadline)
    scale = max(required_scale(width_pt, height_pt, o) for o in outputs)
    long_side = max(width_pt, height_pt) * scale
    if long_side > MAX_RASTER_SIDE:
        scale = MAX_RASTER_SIDE / max(width_pt, height_pt)
    columns = math.ceil(width_pt * scale)
    rows = math.ceil(height_pt * scale)
    if columns * rows > max_pixels:
        raise TooManyPixels(
            f"page {page} would need {columns}x{rows} pixels; at most {max_pixels} are allowed"
        )
    number = str(page + 1)
    # The crop box is what viewers show and what pdfinfo measured; the size in pixels is
    # given outright, so no box the document declares can make the raster larger.
    done = _run(
        [
            "pdftocairo",
            "-png",
            "-singlefile",
            "-cropbox",
            "-f",
            number,
            "-l",
            number,
            "-scale-to-x",
            str(columns),
            "-scale-to-y",
            str(rows),
            "fd://0",
            "-",
        ],
        fd,
        deadline,
        "rasterising the PDF",
    )
    if done.returncode < 0:
        if done.returncode == -signal.SIGKILL:
            raise CorruptSource("rasterising the PDF ran out of memory")
        raise CorruptSource("the PDF rasteriser crashed on this document")
    if done.returncode != 0 or not done.stdout.startswith(b"\x89PNG"):
        raise CorruptSource("the PDF page cannot be rendered (damaged document)")
    return done.stdout

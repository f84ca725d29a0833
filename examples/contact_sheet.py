"""A contact sheet: each sample as it is stored, next to its previews, in one PNG.

``examples/demo.py`` calls :func:`make_contact_sheet` once every job has finished.  It can
also run on its own, on the summary that ``examples/flask_app/submit_samples.py --download
DIR --summary FILE`` writes::

    python examples/contact_sheet.py FILE contact-sheet.png

The sheet is drawn with Wand (ImageMagick), which dramatiq-preview installs anyway.  The
left tile of each sample is the file as stored, scaled down: a JPEG with an EXIF orientation
lies on its side there, and a GIF shows its first frame.  PDF pages are drawn by poppler's
``pdftocairo`` (ImageMagick's default policy forbids PDF).  The previews are shown at their
real size, on a checkerboard where they are transparent.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wand.color import Color
from wand.drawing import Drawing
from wand.exceptions import WandException
from wand.image import Image

PAD = 16
SOURCE_BOX = 192  # the largest side of a source tile
CAPTION = 40  # two lines of text under each tile
HEADER = 72
PER_LINE = 2  # samples side by side
TEXT, MUTED, FAILED = "#1f2933", "#616e7c", "#b42318"


def make_contact_sheet(
    summary: Sequence[Mapping[str, Any]], target: Path, *, title: str = "dramatiq-preview"
) -> Path:
    """Draw the sheet of ``summary`` into ``target`` (a PNG) and return ``target``.

    Parameters:
      summary: one entry per sample, as ``submit_samples.py --summary`` writes them:
        ``{"sample": path, "status": final status or None, "saved": [local output paths]}``.
      target: the PNG to write; its directory is created.
      title: the first line of the header.
    """
    previews = [_preview_boxes(entry) for entry in summary]
    extent = max((sum(_column(w) for w, _ in boxes) for boxes in previews), default=0)
    block_w = SOURCE_BOX + PAD + extent
    row_h = max([SOURCE_BOX, *(h for boxes in previews for _, h in boxes)]) + CAPTION
    per_line = min(PER_LINE, max(1, len(summary)))
    lines = math.ceil(len(summary) / per_line)
    width = PAD + per_line * (block_w + PAD)
    height = HEADER + lines * (row_h + PAD) + PAD
    with Image(width=width, height=height, background=Color("white")) as sheet:
        succeeded = sum(1 for e in summary if (e.get("status") or {}).get("state") == "succeeded")
        _write(sheet, PAD, 30, title, size=22, bold=True)
        _write(
            sheet,
            PAD,
            56,
            f"{len(summary)} samples, {succeeded} succeeded. Left: the source as stored; "
            "right: its previews at their real size.",
            size=14,
            colour=MUTED,
        )
        for index, entry in enumerate(summary):
            left = PAD + (index % per_line) * (block_w + PAD)
            top = HEADER + (index // per_line) * (row_h + PAD)
            _draw_sample(sheet, entry, left, top, row_h - CAPTION)
        sheet.strip()  # no creation date: the same samples make the same sheet
        sheet.alpha_channel = "remove"
        sheet.alpha_channel = "off"
        sheet.type = "truecolor"
        sheet.depth = 8
        sheet.format = "png"
        sheet.options["png:compression-level"] = "9"
        target.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(filename=str(target))
    return target


def _preview_boxes(entry: Mapping[str, Any]) -> list[tuple[int, int]]:
    """The size of each output the job asked for: its rendered size, or a stand-in."""
    status = entry.get("status") or {}
    outputs = (status.get("result") or {}).get("outputs") or []
    return [(int(o["width"]), int(o["height"])) for o in outputs] or [(256, 128)]


def _column(width: int) -> int:
    """The width a preview takes on the sheet: room for its caption, then a gap."""
    return max(width, 96) + PAD


def _draw_sample(sheet: Image, entry: Mapping[str, Any], left: int, top: int, box: int) -> None:
    source = Path(entry["sample"])
    status = entry.get("status") or {}
    with _source_tile(source) as (tile, facts):
        if tile is not None:
            _place(sheet, tile, left, top + (box - tile.height) // 2)
        else:
            _write(sheet, left, top + box // 2, "(no thumbnail)", colour=MUTED)
    caption_y = top + box + 16
    _write(sheet, left, caption_y, source.name, bold=True)
    _write(sheet, left, caption_y + 17, facts, size=12, colour=MUTED)

    x = left + SOURCE_BOX + PAD
    state = status.get("state", "not finished")
    if state != "succeeded":
        error = status.get("error") or {}
        _write(sheet, x, top + box // 2, f"{state}: {error.get('type', '')}", colour=FAILED)
        return
    outputs = status["result"]["outputs"]
    for output, saved in zip(outputs, entry.get("saved") or [], strict=False):
        with Image(filename=str(saved)) as preview:
            _place(sheet, preview, x, top + (box - preview.height) // 2)
        name = Path(output["path"]).name
        _write(sheet, x, caption_y, f"{name} {output['width']}x{output['height']}")
        _write(sheet, x, caption_y + 17, _size(output["bytes"]), size=12, colour=MUTED)
        x += _column(output["width"])


@contextmanager
def _source_tile(source: Path) -> Iterator[tuple[Image | None, str]]:
    """The source's first page or frame as stored, at most SOURCE_BOX wide and high."""
    size = _size(source.stat().st_size)
    with open(source, "rb") as file:
        magic = file.read(5)
    if magic == b"%PDF-":
        with _pdf_first_page(source) as (tile, pages):
            yield tile, f"PDF, {pages} pages, {size}" if pages else f"PDF, {size}"
        return
    try:
        first = Image(filename=f"{source}[0]")
    except WandException:  # a sample ImageMagick cannot read still gets its row
        yield None, size
        return
    with first:
        facts = f"{first.format} {first.width}x{first.height}"
        orientation = first.metadata.get("exif:Orientation", "1")
        if orientation != "1":
            facts += f", EXIF {orientation}"
        frames = _frame_count(source)
        if frames > 1:
            facts += f", {frames} frames"
        scale = min(1.0, SOURCE_BOX / max(first.width, first.height))
        first.resize(max(1, round(first.width * scale)), max(1, round(first.height * scale)))
        yield first, f"{facts}, {size}"


def _frame_count(source: Path) -> int:
    with Image.ping(filename=str(source)) as image:
        return len(image.sequence)


@contextmanager
def _pdf_first_page(source: Path) -> Iterator[tuple[Image | None, int]]:
    pages = 0
    if shutil.which("pdfinfo"):
        info = subprocess.run(["pdfinfo", str(source)], capture_output=True, text=True)
        for line in info.stdout.splitlines():
            if line.startswith("Pages:"):
                pages = int(line.split()[1])
    if not shutil.which("pdftocairo"):
        yield None, pages
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "page"
        args = ["pdftocairo", "-png", "-singlefile", "-f", "1", "-l", "1"]
        args += ["-scale-to", str(SOURCE_BOX), str(source), str(base)]
        done = subprocess.run(args, capture_output=True, check=False)
        if done.returncode != 0:
            yield None, pages
            return
        with Image(filename=str(base.with_suffix(".png"))) as page:
            yield page, pages


def _place(sheet: Image, tile: Image, left: int, top: int) -> None:
    """Composite ``tile`` at (left, top), over a checkerboard where it is transparent."""
    if tile.alpha_channel:
        with _checkerboard(tile.width, tile.height) as board:
            sheet.composite(board, left, top)
    sheet.composite(tile, left, top)


@contextmanager
def _checkerboard(width: int, height: int) -> Iterator[Image]:
    with Image(width=16, height=16, background=Color("#ffffff")) as cell:
        with Drawing() as draw:
            draw.fill_color = Color("#d9dde3")
            draw.rectangle(left=0, top=0, width=7, height=7)
            draw.rectangle(left=8, top=8, width=7, height=7)
            draw(cell)
        with Image(width=width, height=height) as board:
            board.texture(cell)
            yield board


def _write(
    sheet: Image,
    x: int,
    y: int,
    text: str,
    *,
    size: int = 13,
    bold: bool = False,
    colour: str = TEXT,
) -> None:
    with Drawing() as draw:
        draw.font_size = size
        draw.font_weight = 700 if bold else 400
        draw.fill_color = Color(colour)
        draw.text(x, y, text)
        draw(sheet)


def _size(count: int) -> str:
    return f"{count / 1024:.1f} KB" if count < 1024 * 1024 else f"{count / 1024**2:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python examples/contact_sheet.py SUMMARY.json OUT.png", file=sys.stderr)
        return 2
    summary = json.loads(Path(args[0]).read_text())
    print(f"contact sheet: {make_contact_sheet(summary, Path(args[1])).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

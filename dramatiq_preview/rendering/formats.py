"""Recognise a source's real type from its first bytes, never from its name or headers.

This module is import-safe in processes without ImageMagick.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Iterator

from ..errors import CorruptSource, TooManyPixels

#: File contents: bytes, or a read-only map of the file.
Data = bytes | mmap.mmap

#: How many leading bytes :func:`sniff` needs to decide.
SNIFF_BYTES = 1024

#: Input formats, mapped to the ImageMagick coder that decodes them.  The ones mapped to ""
#: never reach an ImageMagick coder: PDF and SVG are rasterised to a PNG first (by poppler,
#: :mod:`.pdf`, and librsvg, :mod:`.svg`), HEIC and AVIF are decoded by libheif
#: (:mod:`.heif`), whose pixels are handed to ImageMagick as they are.
INPUT_CODERS = {
    "jpeg": "jpeg",
    "png": "png",
    "webp": "webp",
    "gif": "gif",
    "tiff": "tiff",
    "bmp": "bmp",
    "heic": "",
    "avif": "",
    "pdf": "",
    "svg": "",
}

#: The formats libheif decodes.
HEIF_KINDS = ("heic", "avif")

SUPPORTED_TEXT = "JPEG, PNG, WebP, GIF, TIFF, BMP, HEIC, AVIF, PDF or SVG"

_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
#: WebP chunks that carry pixels or their layout: one cut short is a truncated file.
_WEBP_IMAGE_CHUNKS = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF"}
#: The bytes that start a GIF block: extension, image descriptor, trailer.
_GIF_BLOCK = re.compile(rb"[!,;]")
#: ISO-BMFF ``ftyp`` brands (ISO/IEC 23008-12 and the AVIF specification).  HEVC ones
#: name HEIC; AV1 ones AVIF; the codec-neutral ``mif1``/``msf1`` alone are decided by the
#: image items the file declares (see :func:`sniff`).
_HEIC_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"}
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"mif1", b"msf1"}
#: An SVG's first element, after an optional BOM, XML declaration, comments and DOCTYPE.
_SVG_ROOT = re.compile(
    rb"\A(?:\xef\xbb\xbf)?\s*(?:<\?xml[^>]{0,200}\?>\s*)?"
    rb"(?:(?:<!--.*?-->|<!DOCTYPE[^>\[]{0,400}(?:\[.*?\]\s*)?>)\s*)*<svg[\s>/]",
    re.S,
)


def sniff(head: bytes) -> str | None:
    """The format of a file starting with ``head``, or ``None`` when it is not supported.

    Parameters:
      head: At least the first :data:`SNIFF_BYTES` bytes of the file (fewer if it is shorter).

    Returns:
      One of the keys of :data:`INPUT_CODERS`, or ``None``.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:2] == b"BM" and len(head) >= 18:
        (dib_size,) = struct.unpack_from("<I", head, 14)
        if dib_size in _BMP_HEADER_SIZES:
            return "bmp"
        return None
    if head[4:8] == b"ftyp":
        return _heif_kind(head)
    # PDF readers accept a header anywhere in the first KiB; so does poppler.
    if b"%PDF-" in head[:SNIFF_BYTES]:
        return "pdf"
    if _SVG_ROOT.match(head[:SNIFF_BYTES]):
        return "svg"
    return None


def _heif_kind(head: bytes) -> str | None:
    """``heic`` or ``avif`` for an ISO-BMFF file whose ``ftyp`` names a HEIF still-image
    brand, else ``None`` (MP4 video, JPEG 2000 and other ISO-BMFF files).

    The name only labels the file (messages, metrics): both go to libheif, which takes the
    codec from the image item itself, never from the brand.  A file branded ``mif1`` (or
    ``msf1``) alone is AVIF when its first KiB declares an ``av01`` item, else HEIC.
    """
    (size,) = struct.unpack_from(">I", head, 0)
    if size < 16 or size % 4 or size > min(len(head), 256):
        return None
    brands = {head[8:12]} | {head[i : i + 4] for i in range(16, size, 4)}
    if brands & _AVIF_BRANDS:
        return "avif"
    if brands & _HEIC_BRANDS:
        return "heic"
    if brands & _HEIF_BRANDS:
        return "avif" if b"av01" in head[size:SNIFF_BYTES] else "heic"
    return None


def declared_size(data: Data, kind: str) -> tuple[int, int] | None:
    """Width and height a file's header declares, read without any decoder.

    This is a cheap first line against pixel floods (a few bytes declaring a huge canvas);
    ImageMagick's ``ping`` and the policy's limits are the second.  ``None`` when the
    header cannot be read here (the decoder will judge).
    """
    try:
        if kind == "png" and data[12:16] == b"IHDR":
            width, height = struct.unpack_from(">II", data, 16)
            return width, height
        if kind == "gif":
            width, height = struct.unpack_from("<HH", data, 6)
            return width, height
        if kind == "bmp":
            (header,) = struct.unpack_from("<I", data, 14)
            if header == 12:
                width, height = struct.unpack_from("<HH", data, 18)
                return width, height
            width, height = struct.unpack_from("<ii", data, 18)
            return abs(width), abs(height)
        if kind == "jpeg":
            return _jpeg_size(data)
        if kind == "webp":
            return _webp_size(data)
        if kind in HEIF_KINDS:
            return heif_primary_size(data)
    except (struct.error, IndexError):
        return None
    return None


def _jpeg_size(data: Data) -> tuple[int, int] | None:
    pos = 2
    while pos + 9 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return width, height
        if marker == 0xDA:
            return None
        pos += 2 + length
    return None


def _webp_size(data: Data) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8 ":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _boxes(data: Data, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """The ISO-BMFF boxes between ``start`` and ``end``: ``(type, payload start, box end)``.

    Stops at the first box whose size is impossible (libheif will report the damage).
    """
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos  # "to the end of the file"
        if size < header or pos + size > end:
            return
        yield kind, pos + header, pos + size
        pos += size


def heif_primary_size(data: Data) -> tuple[int, int] | None:
    """The stored width and height of a HEIF/AVIF file's primary image: its ``ispe``
    property (ISO/IEC 23008-12), found through ``meta`` > ``pitm`` and ``iprp`` > ``ipma``.

    A grid image (phones store photos as 512x512 tiles) declares the whole picture there.
    ``None`` when the boxes do not say (libheif then judges the file).
    """
    meta = next(((s, e) for kind, s, e in _boxes(data, 0, len(data)) if kind == b"meta"), None)
    if meta is None:
        return None
    primary: int | None = None
    properties: list[tuple[bytes, int, int]] = []
    associations: dict[int, list[int]] = {}
    for kind, start, end in _boxes(data, meta[0] + 4, meta[1]):  # meta is a FullBox
        if kind == b"pitm":
            primary = struct.unpack_from(">H" if data[start] == 0 else ">I", data, start + 4)[0]
        elif kind == b"iprp":
            for inner, s, e in _boxes(data, start, end):
                if inner == b"ipco":
                    properties = list(_boxes(data, s, e))
                elif inner == b"ipma":
                    _read_ipma(data, s, e, associations)
    if primary is None:
        return None
    for index in associations.get(primary, []):
        if 1 <= index <= len(properties) and properties[index - 1][0] == b"ispe":
            start = properties[index - 1][1]
            width, height = struct.unpack_from(">II", data, start + 4)  # after version/flags
            return width, height
    return None


def _read_ipma(data: Data, pos: int, end: int, associations: dict[int, list[int]]) -> None:
    """Add an ``ipma`` box's item -> property indexes (1-based into ``ipco``)."""
    version, flags = data[pos], int.from_bytes(data[pos + 1 : pos + 4], "big")
    (count,) = struct.unpack_from(">I", data, pos + 4)
    pos += 8
    # The count is the file's word: the box's end bounds the walk, not the count.
    for _ in range(count):
        if pos >= end:
            return
        if version < 1:
            (item,) = struct.unpack_from(">H", data, pos)
            pos += 2
        else:
            (item,) = struct.unpack_from(">I", data, pos)
            pos += 4
        n = data[pos]
        pos += 1
        indexes = associations.setdefault(item, [])
        for _ in range(n):
            if flags & 1:
                (value,) = struct.unpack_from(">H", data, pos)
                indexes.append(value & 0x7FFF)
                pos += 2
            else:
                indexes.append(data[pos] & 0x7F)
                pos += 1


def gif_frames(data: Data, stop_after: int) -> tuple[int, int, int]:
    """How many images a GIF holds (counting no further than ``stop_after`` + 1), the
    largest width x height and the longest side a frame descriptor declares among them.

    Walks the block structure only (no LZW decoding), skipping stray bytes as ImageMagick's
    reader does.  A damaged structure ends the count; the decoder reports the damage.
    """
    frames = largest = longest = 0
    try:
        flags = data[10]
        pos = 13 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
        while pos < len(data):
            block = data[pos]
            if block == 0x3B:  # trailer
                break
            if block == 0x21:  # extension: label, then sub-blocks
                pos = _skip_sub_blocks(data, pos + 2)
            elif block == 0x2C:  # image descriptor
                frames += 1
                if frames > stop_after:
                    break
                width, height = struct.unpack_from("<HH", data, pos + 5)
                largest = max(largest, width * height)
                longest = max(longest, width, height)
                local = data[pos + 9]
                pos += 10 + (3 * (2 << (local & 7)) if local & 0x80 else 0)
                pos = _skip_sub_blocks(data, pos + 1)  # after the LZW minimum code size
            else:
                # ImageMagick skips any other byte and reads on: so must this walk, or junk
                # before a descriptor would hide its size from the checks.
                found = _GIF_BLOCK.search(data, pos + 1)
                if found is None:
                    break
                pos = found.start()
    except (IndexError, struct.error):
        pass
    return frames, largest, longest


def _skip_sub_blocks(data: Data, pos: int) -> int:
    while True:
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos


def check_webp_structure(data: Data, max_frames: int) -> None:
    """Refuse a WebP whose chunk structure is broken; walks chunk headers only.

    ImageMagick 6 decodes a file whose VP8X header announces an animation but holds no
    frame into an image whose pixels were never written (heap leftovers): such files, and
    ones with no image data at all or chunks running past the end, are refused here.

    Raises:
      CorruptSource: the structure is broken.
      TooManyPixels: more than ``max_frames`` animation frames.
    """
    end = len(data)
    if end < 20:
        raise CorruptSource("the WebP source is truncated")
    (riff_size,) = struct.unpack_from("<I", data, 4)
    end = min(end, 8 + riff_size)
    pos = 12
    first = True
    animated = False
    frames = images = 0
    while pos + 8 <= end:
        fourcc = bytes(data[pos : pos + 4])
        (size,) = struct.unpack_from("<I", data, pos + 4)
        if pos + 8 + size > end:
            if fourcc in _WEBP_IMAGE_CHUNKS or first:
                raise CorruptSource("the WebP source is truncated")
            break  # cut metadata (EXIF, XMP...) at the end: the decoder ignores it too
        if first:
            if fourcc not in (b"VP8 ", b"VP8L", b"VP8X"):
                raise CorruptSource("the WebP source is damaged (no image header)")
            if fourcc == b"VP8X":
                if size < 10:
                    raise CorruptSource("the WebP source is damaged (bad VP8X header)")
                animated = bool(data[pos + 8] & 0x02)
            first = False
        if fourcc == b"ANMF":
            frames += 1
            if frames > max_frames:
                raise TooManyPixels(
                    f"the WebP has more than {max_frames} frames; at most {max_frames} are "
                    "supported"
                )
        elif fourcc in (b"VP8 ", b"VP8L"):
            images += 1
        pos += 8 + size + (size & 1)
    if first:
        raise CorruptSource("the WebP source is truncated")
    if animated and frames == 0:
        raise CorruptSource("the WebP source is damaged (an animation without frames)")
    if not animated and images == 0:
        raise CorruptSource("the WebP source is damaged (no image data)")

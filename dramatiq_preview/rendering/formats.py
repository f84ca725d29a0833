"""Recognise a source's real type from its first bytes, never from its name or headers.

This module is import-safe in processes without ImageMagick.
"""

from __future__ import annotations

import mmap
import re
import struct

from ..errors import CorruptSource, TooManyPixels

#: File contents: bytes, or a read-only map of the file.
Data = bytes | mmap.mmap

#: How many leading bytes :func:`sniff` needs to decide.
SNIFF_BYTES = 1024

#: Input formats, mapped to the ImageMagick coder that decodes them (PDF is rasterised by
#: poppler first and never reaches ImageMagick).
INPUT_CODERS = {
    "jpeg": "jpeg",
    "png": "png",
    "webp": "webp",
    "gif": "gif",
    "tiff": "tiff",
    "bmp": "bmp",
    "pdf": "",
}

SUPPORTED_TEXT = "JPEG, PNG, WebP, GIF, TIFF, BMP or PDF"

_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
#: WebP chunks that carry pixels or their layout: one cut short is a truncated file.
_WEBP_IMAGE_CHUNKS = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF"}
#: The bytes that start a GIF block: extension, image descriptor, trailer.
_GIF_BLOCK = re.compile(rb"[!,;]")


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
    # PDF readers accept a header anywhere in the first KiB; so does poppler.
    if b"%PDF-" in head[:SNIFF_BYTES]:
        return "pdf"
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
    except struct.error:
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

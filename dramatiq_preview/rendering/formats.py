"""Recognise a source's real type from its first bytes, never from its name or headers.

This module is import-safe in processes without ImageMagick.
"""

from __future__ import annotations

import struct

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

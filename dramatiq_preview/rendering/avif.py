"""AVIF encoding: libheif and its AV1 encoder (libaom), called through ctypes.

ImageMagick's own AVIF writer is not used.  Debian 12's ImageMagick 6.9.11-60 hands libheif
YCbCr planes only, so it drops alpha; it sets nothing but the quality, so libaom runs at
libheif's default speed 6 with libheif's default 4 threads (ImageMagick's thread limit does
not reach it): 2.5x the encode time of speed 8 for files about 5% smaller
(docs/rendering.md).
The same system libheif, called directly, takes the pixels with their alpha and the encoder
settings below.  Wand still does everything up to the final pixels.

libheif returns the file through ``heif_context_write``, whose callback returns a struct,
which ctypes callbacks cannot; so it is written with ``heif_context_write_to_file`` into a
memfd, by its ``/proc/self/fd`` name.  A memfd is memory, not a file in a directory: the
render child's sandbox, which lets it write no file (:mod:`.sandbox`), does not govern it.

Only :mod:`.engine` imports this module (which loads Wand), in render children.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any

from wand.api import library as magick

from ..errors import UnsupportedFormat
from . import libheif

#: libaom's speed (0 slowest and smallest .. 9 fastest).  At the SSIM of our WebP at quality
#: 82, a 1024 px photo at speed 8 takes 0.67x the WebP's bytes and 3.1x its encode time
#: (1.4x the whole job's); 9 keeps a third of that saving (0.90x); 7 saves 3% more in 1.8x
#: the time of 8, and 6 about 5% more (0.56x-0.76x over four runs) in 2.5x the time
#: (tests/benchmarks/bench_avif.py, medians of three photos; docs/rendering.md).
SPEED = 8
#: One encoder thread, as for ImageMagick (MAGICK_THREAD_LIMIT=1): concurrency comes from
#: worker threads, each with its own render child.
THREADS = 1

# libheif's enums (heif.h, stable since 1.x).
_COMPRESSION_AV1 = 4
_COLORSPACE_RGB = 1
_CHROMA_INTERLEAVED_RGB = 10
_CHROMA_INTERLEAVED_RGBA = 11
_CHANNEL_INTERLEAVED = 10
_ERROR_MEMORY = 6  # heif_error_Memory_allocation_error
_ERROR_ENCODER = 8  # heif_error_Encoder_plugin_error
_CHAR_PIXEL = 1  # ImageMagick's CharPixel storage type


_Error = libheif.Error


_P = libheif.P
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "heif_context_alloc": (_P, []),
    "heif_context_free": (None, [_P]),
    "heif_context_get_encoder_for_format": (_Error, [_P, ctypes.c_int, ctypes.POINTER(_P)]),
    "heif_encoder_release": (None, [_P]),
    "heif_encoder_set_lossy_quality": (_Error, [_P, ctypes.c_int]),
    "heif_encoder_set_parameter_integer": (_Error, [_P, ctypes.c_char_p, ctypes.c_int]),
    "heif_image_create": (
        _Error,
        [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(_P)],
    ),
    "heif_image_add_plane": (_Error, [_P, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]),
    "heif_image_get_plane": (_P, [_P, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]),
    "heif_image_release": (None, [_P]),
    "heif_context_encode_image": (_Error, [_P, _P, _P, _P, _P]),
    "heif_context_write_to_file": (_Error, [_P, ctypes.c_char_p]),
}


@functools.cache  # prototypes are set once per child, not per image
def _library() -> Any:
    """libheif with the prototypes this module uses (a render child that never writes
    AVIF never maps it)."""
    return libheif.bind(
        _SIGNATURES,
        "AVIF output needs libheif with an AV1 encoder, which is not installed "
        "(Debian 12: libheif1; Debian 13 and Ubuntu 24.04: libheif-plugin-aomenc too)",
    )


def _check(error: _Error, what: str) -> None:
    if error.code == 0:
        return
    if error.code == _ERROR_MEMORY:
        raise MemoryError(what)
    reason = (error.message or b"").decode("utf-8", "replace")[:200]
    raise RuntimeError(f"libheif could not {what}: {reason}")


def encode(
    wand: Any, width: int, height: int, quality: int, *, alpha: bool, speed: int = SPEED
) -> bytes:
    """An AVIF file of the pixels of ``wand`` (a MagickWand, sRGB, ``width`` x ``height``).

    Nothing but the pixels goes in: no EXIF, XMP or ICC profile (libheif writes an nclx box
    saying sRGB).  Chroma is 4:2:0, like our JPEG and WebP outputs.

    Parameters:
      wand: the image; only read.
      quality: 1..100, libheif's lossy quality (100 is not lossless).
      alpha: keep the alpha channel (an auxiliary AV1 image in the file, at ``quality``
        too).
      speed: libaom's speed, 0..9 (the benchmark compares them).

    Raises:
      UnsupportedFormat: libheif or its AV1 encoder is not installed.
      MemoryError: libheif or its encoder ran out of memory (the render's memory cap).
    """
    heif = _library()
    context = heif.heif_context_alloc()
    if not context:
        raise MemoryError("heif_context_alloc")
    encoder = _P()
    image = _P()
    try:
        error = heif.heif_context_get_encoder_for_format(
            context, _COMPRESSION_AV1, ctypes.byref(encoder)
        )
        if error.code != 0:
            raise UnsupportedFormat(
                "AVIF output needs an AV1 encoder for libheif, and none is installed "
                "(Debian 13 and Ubuntu 24.04: libheif-plugin-aomenc)"
            )
        _check(heif.heif_encoder_set_lossy_quality(encoder, quality), "set the quality")
        # Another AV1 encoder (rav1e, SVT-AV1) may lack one of these; its default then holds.
        for name, value in (
            (b"speed", speed),
            (b"threads", THREADS),
            # The caller's quality, not libheif's fixed 50: at 50 the edges of a cut-out
            # ring by up to 60 levels of 255, while a lossless-like 100 made a file with
            # many alpha edges 4x the size of one at 80 (and larger than our WebP).
            (b"alpha-quality", quality),
        ):
            heif.heif_encoder_set_parameter_integer(encoder, name, value)
        chroma, layout = (
            (_CHROMA_INTERLEAVED_RGBA, b"RGBA") if alpha else (_CHROMA_INTERLEAVED_RGB, b"RGB")
        )
        _check(
            heif.heif_image_create(width, height, _COLORSPACE_RGB, chroma, ctypes.byref(image)),
            "create an image",
        )
        _check(
            heif.heif_image_add_plane(image, _CHANNEL_INTERLEAVED, width, height, 8),
            "allocate the pixels",
        )
        stride = ctypes.c_int()
        plane = heif.heif_image_get_plane(image, _CHANNEL_INTERLEAVED, ctypes.byref(stride))
        if not plane:
            raise MemoryError("heif_image_get_plane")
        # Straight from ImageMagick's pixel cache into libheif's plane, row by row (the
        # plane's rows may be padded): no copy of the image in Python.
        for row in range(height):
            if not magick.MagickExportImagePixels(
                wand, 0, row, width, 1, layout, _CHAR_PIXEL, plane + row * stride.value
            ):
                raise RuntimeError("ImageMagick could not export the pixels")
        error = heif.heif_context_encode_image(context, image, encoder, None, None)
        if error.code == _ERROR_ENCODER:
            # The pixels are ours and valid: libaom fails ("Failed to initialize encoder",
            # "Failed to encode frame") when it cannot allocate, under the address-space cap.
            raise MemoryError("the AV1 encoder failed")
        _check(error, "encode")
        return _write(heif, context)
    finally:
        if image:
            heif.heif_image_release(image)
        if encoder:
            heif.heif_encoder_release(encoder)
        heif.heif_context_free(context)


def _write(heif: Any, context: int) -> bytes:
    fd = os.memfd_create("avif", os.MFD_CLOEXEC)
    try:
        _check(
            heif.heif_context_write_to_file(context, f"/proc/self/fd/{fd}".encode()),
            "write the file",
        )
        size = os.fstat(fd).st_size
        if size == 0:
            # libheif does not always report a failed open; an empty file is never AVIF.
            raise RuntimeError("libheif wrote no AVIF data")
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)

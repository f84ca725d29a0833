"""Decode HEIC/HEIF and AVIF with libheif (Debian/Ubuntu package ``libheif1``, plus its
decoder plugins where libheif has them), called directly rather than through ImageMagick.

ImageMagick 6.9.11 (Debian 12) has a HEIC coder built on the same libheif, but it asks
libheif for 4:2:0 YCbCr: it drops the alpha channel (transparent pixels come out opaque,
in whatever colour the encoder left under them), upsamples chroma by repeating samples and
converts with its own BT.601 formula whatever matrix the file declares.  libheif converts
to RGB(A) itself, from the file's own colour description, and applies the file's
transformations (``clap`` crop, ``irot`` rotation, ``imir`` mirror) while decoding.  So
this module decodes, and the engine hands ImageMagick the pixels: no ImageMagick coder
parses the file (the policy still denies HEIC).

- **Pages**: page 0 is the primary image (the one viewers show); pages 1, 2... are the
  file's other top-level images in libheif's order.  Thumbnails, alpha and depth planes and
  the tiles of a grid are parts of an image, not pages.  Image sequences stored as tracks
  (``msf1``/``avis`` brands) are not read, only the still images of their ``meta`` box.
- **Orientation**: the ``irot``/``imir`` properties are the orientation; an EXIF
  orientation in the file is not applied on top (HEIF says so, browsers do the same, and
  phones write both, so applying both would turn portraits twice).
- **Limits**: before anything is decoded, the chosen image's size (after rotation) is
  checked against ``max_pixels`` and the side limit; libheif is told the side limit too
  and decodes a grid's tiles one after another (dav1d and libde265 may still start a
  thread or two of their own: they run inside the sandboxed child all the same).
- **Colour**: an ICC profile (``colr`` of type ``prof``/``rICC``) is returned to be
  applied like a JPEG's.  A bare ``nclx`` description with Display P3 or BT.2020 primaries
  and an SDR transfer (what AVIF encoders write instead of a profile) is turned into the
  matching matrix profile; PQ and HLG (HDR) sources are rendered as decoded, without tone
  mapping.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptSource, PageOutOfRange, TooManyPixels, UnsupportedFormat
from . import icc, libheif

_P = libheif.P

# libheif's enums (libheif/heif.h); their values are part of its stable ABI.
_COLORSPACE_RGB = 1
_CHROMA_RGB = 10
_CHROMA_RGBA = 11
_CHANNEL_INTERLEAVED = 10
_ERROR_UNSUPPORTED_FILETYPE = 3
_ERROR_UNSUPPORTED_FEATURE = 4
_ERROR_MEMORY = 6
_ERROR_DECODER_PLUGIN = 7
_SUBERROR_SECURITY_LIMIT = 1000
_SUBERROR_UNSUPPORTED_CODEC = 3000
_COMPRESSION_HEVC = 1
_COMPRESSION_AV1 = 4
#: nclx primaries (ITU-T H.273) that sRGB viewers would misread, as xy chromaticities.
_NCLX_PRIMARIES = {
    9: ("BT.2020 (nclx)", ((0.708, 0.292), (0.170, 0.797), (0.131, 0.046))),
    12: ("Display P3 (nclx)", ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))),
}
#: nclx transfer characteristics close enough to sRGB's curve to be shown with it:
#: BT.709, unspecified, BT.601, sRGB, BT.2020 10 and 12 bit (PQ is 16, HLG 18).
_SDR_TRANSFERS = {1, 2, 6, 13, 14, 15}
#: The package that provides each codec's decoder on Debian 13 and Ubuntu 24.04, where
#: libheif loads decoders as plugins (Debian 12's libheif1 has them built in).
_DECODER_PACKAGES = {"heic": "libheif-plugin-libde265", "avif": "libheif-plugin-dav1d"}


_Error = libheif.Error


class _Nclx(ctypes.Structure):
    # The version 1 fields of struct heif_color_profile_nclx.
    _fields_ = [
        ("version", ctypes.c_uint8),
        ("color_primaries", ctypes.c_int),
        ("transfer_characteristics", ctypes.c_int),
        ("matrix_coefficients", ctypes.c_int),
        ("full_range_flag", ctypes.c_uint8),
    ]


#: The prototypes this module calls: ``name: ([argtypes], restype)``.
_SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "heif_context_alloc": ([], _P),
    "heif_context_free": ([_P], None),
    "heif_context_read_from_memory_without_copy": ([_P, _P, ctypes.c_size_t, _P], _Error),
    "heif_context_set_maximum_image_size_limit": ([_P, ctypes.c_int], None),
    "heif_context_set_max_decoding_threads": ([_P, ctypes.c_int], None),
    "heif_context_get_primary_image_ID": ([_P, ctypes.POINTER(ctypes.c_uint32)], _Error),
    "heif_context_get_list_of_top_level_image_IDs": (
        [_P, ctypes.POINTER(ctypes.c_uint32), ctypes.c_int],
        ctypes.c_int,
    ),
    "heif_context_get_number_of_top_level_images": ([_P], ctypes.c_int),
    "heif_context_get_image_handle": ([_P, ctypes.c_uint32, ctypes.POINTER(_P)], _Error),
    "heif_image_handle_release": ([_P], None),
    "heif_image_handle_get_width": ([_P], ctypes.c_int),
    "heif_image_handle_get_height": ([_P], ctypes.c_int),
    "heif_image_handle_has_alpha_channel": ([_P], ctypes.c_int),
    "heif_image_handle_get_raw_color_profile_size": ([_P], ctypes.c_size_t),
    "heif_image_handle_get_raw_color_profile": ([_P, _P], _Error),
    "heif_image_handle_get_nclx_color_profile": ([_P, ctypes.POINTER(_P)], _Error),
    "heif_nclx_color_profile_free": ([_P], None),
    "heif_decode_image": ([_P, ctypes.POINTER(_P), ctypes.c_int, ctypes.c_int, _P], _Error),
    "heif_image_get_width": ([_P, ctypes.c_int], ctypes.c_int),
    "heif_image_get_height": ([_P, ctypes.c_int], ctypes.c_int),
    "heif_image_get_plane_readonly": ([_P, ctypes.c_int, ctypes.POINTER(ctypes.c_int)], _P),
    "heif_image_release": ([_P], None),
    "heif_have_decoder_for_format": ([ctypes.c_int], ctypes.c_int),
}


@functools.cache  # prototypes are set once per child, not per image
def _library() -> ctypes.CDLL:
    """libheif with the prototypes this module uses.

    Raises:
      UnsupportedFormat: libheif is not installed.
    """
    return libheif.bind(
        {name: (restype, argtypes) for name, (argtypes, restype) in _SIGNATURES.items()},
        "HEIC and AVIF sources need libheif (Debian/Ubuntu package libheif1)",
    )


@dataclass(frozen=True)
class Picture:
    """A decoded image: 8-bit interleaved RGB or RGBA rows, valid inside :func:`decode`.

    Attributes:
      width, height: Size in pixels, transformations applied.
      alpha: Whether each pixel has a fourth (alpha) byte.
      pixels: Address of the first row.
      stride: Bytes from one row to the next (libheif may pad rows).
      profile: An ICC profile describing the pixels, or ``None`` for sRGB.
    """

    width: int
    height: int
    alpha: bool
    pixels: int
    stride: int
    profile: bytes | None


@contextlib.contextmanager
def decode(
    data: bytes, kind: str, page: int, *, max_pixels: int, max_side: int
) -> Iterator[Picture]:
    """Decode image ``page`` of the HEIF/AVIF file ``data``; the pixels live until exit.

    Parameters:
      data: The whole file (libheif reads it in place: keep it alive until exit).
      kind: ``heic`` or ``avif`` (for messages).
      page: 0 for the primary image, 1... for the other top-level images.
      max_pixels, max_side: Refuse larger images before decoding them.

    Raises:
      CorruptSource, UnsupportedFormat, TooManyPixels, PageOutOfRange; MemoryError when
      libheif cannot allocate.
    """
    lib = _library()
    label = kind.upper()
    context = lib.heif_context_alloc()
    if not context:
        raise MemoryError
    handle = _P()
    image = _P()
    try:
        lib.heif_context_set_maximum_image_size_limit(context, max_side)
        # Tiles one after another: a thread per tile would each reserve a stack under the
        # render child's address-space cap, and concurrency comes from the pool already
        # (like MAGICK_THREAD_LIMIT=1).
        lib.heif_context_set_max_decoding_threads(context, 0)
        _check(
            lib.heif_context_read_from_memory_without_copy(context, data, len(data), None),
            kind,
        )
        item = _image_id(lib, context, page, kind)
        _check(lib.heif_context_get_image_handle(context, item, ctypes.byref(handle)), kind)
        width = lib.heif_image_handle_get_width(handle)
        height = lib.heif_image_handle_get_height(handle)
        if width <= 0 or height <= 0:
            raise CorruptSource(f"the {label} source is damaged (an empty image)")
        if width * height > max_pixels:
            raise TooManyPixels(
                f"the source is {width}x{height} pixels; at most {max_pixels} pixels are "
                "allowed (PREVIEW_MAX_PIXELS)"
            )
        if max(width, height) > max_side:
            raise TooManyPixels(
                f"the source is {width}x{height} pixels; at most {max_side} pixels a side "
                "are allowed"
            )
        alpha = bool(lib.heif_image_handle_has_alpha_channel(handle))
        profile = _profile(lib, handle)
        _check(
            lib.heif_decode_image(
                handle,
                ctypes.byref(image),
                _COLORSPACE_RGB,
                _CHROMA_RGBA if alpha else _CHROMA_RGB,
                None,  # defaults: transformations applied
            ),
            kind,
        )
        stride = ctypes.c_int()
        pixels = lib.heif_image_get_plane_readonly(
            image, _CHANNEL_INTERLEAVED, ctypes.byref(stride)
        )
        columns = lib.heif_image_get_width(image, _CHANNEL_INTERLEAVED)
        rows = lib.heif_image_get_height(image, _CHANNEL_INTERLEAVED)
        if not pixels or columns <= 0 or rows <= 0 or stride.value < columns * (4 if alpha else 3):
            raise CorruptSource(f"the {label} source cannot be decoded")
        if (columns, rows) != (width, height):
            # The limits above were checked against the size the file declares; a codec
            # stream larger than that declaration is a lie, not a bigger picture.
            raise CorruptSource(
                f"the {label} source declares {width}x{height} pixels but holds {columns}x{rows}"
            )
        yield Picture(columns, rows, alpha, pixels, stride.value, profile)
    finally:
        if image:
            lib.heif_image_release(image)
        if handle:
            lib.heif_image_handle_release(handle)
        lib.heif_context_free(context)


def _image_id(lib: ctypes.CDLL, context: int, page: int, kind: str) -> int:
    """The item id of ``page``: the primary image, then the other top-level images."""
    primary = ctypes.c_uint32()
    _check(lib.heif_context_get_primary_image_ID(context, ctypes.byref(primary)), kind)
    if page == 0:
        return int(primary.value)
    count = lib.heif_context_get_number_of_top_level_images(context)
    ids = (ctypes.c_uint32 * max(count, 1))()
    count = lib.heif_context_get_list_of_top_level_image_IDs(context, ids, count)
    others = [int(i) for i in ids[:count] if i != primary.value]
    if page > len(others):
        images = len(others) + 1
        noun = "image" if images == 1 else "images"
        raise PageOutOfRange(
            f"page {page} does not exist: the {kind.upper()} has {images} {noun} "
            "(pages count from 0)"
        )
    return others[page - 1]


def _profile(lib: ctypes.CDLL, handle: _P) -> bytes | None:
    """The ICC profile of the image, or one made from its ``nclx`` primaries; ``None``
    when the pixels are sRGB (or close enough, or HDR, which is not tone-mapped)."""
    size = lib.heif_image_handle_get_raw_color_profile_size(handle)
    if 0 < size <= icc.MAX_PROFILE_BYTES:
        buffer = ctypes.create_string_buffer(size)
        if lib.heif_image_handle_get_raw_color_profile(handle, buffer).code == 0:
            return buffer.raw
    if size:
        return None  # too large to be a sane profile: shown as stored, like JPEG's
    nclx = _P()
    if lib.heif_image_handle_get_nclx_color_profile(handle, ctypes.byref(nclx)).code != 0:
        return None
    try:
        fields = ctypes.cast(nclx, ctypes.POINTER(_Nclx)).contents
        primaries, transfer = fields.color_primaries, fields.transfer_characteristics
    finally:
        lib.heif_nclx_color_profile_free(nclx)
    known = _NCLX_PRIMARIES.get(primaries)
    if known is None or transfer not in _SDR_TRANSFERS:
        return None
    return icc.matrix_profile(*known)


def _check(error: _Error, kind: str) -> None:
    """Raise the job error for a libheif error; the message is ours, not libheif's."""
    code, subcode = error.code, error.subcode
    if code == 0:
        return
    label = kind.upper()
    if subcode == _SUBERROR_SECURITY_LIMIT:
        raise TooManyPixels(f"the {label} source exceeds the decoder's size limits")
    if code == _ERROR_MEMORY:
        raise MemoryError
    if subcode == _SUBERROR_UNSUPPORTED_CODEC or code == _ERROR_DECODER_PLUGIN:
        lib = _library()
        wanted = _COMPRESSION_AV1 if kind == "avif" else _COMPRESSION_HEVC
        if not lib.heif_have_decoder_for_format(wanted):
            raise UnsupportedFormat(
                f"{label} sources need libheif's {'AV1' if kind == 'avif' else 'HEVC'} decoder "
                f"(Debian/Ubuntu package {_DECODER_PACKAGES[kind]}, or libheif1 on Debian 12)"
            )
    if code in (_ERROR_UNSUPPORTED_FILETYPE, _ERROR_UNSUPPORTED_FEATURE):
        raise UnsupportedFormat(
            f"the {label} source uses a feature that is not supported (an image sequence "
            "without a still image, or an unknown codec)"
        )
    raise CorruptSource(f"the {label} source is damaged or truncated and cannot be decoded")

"""The ImageMagick side of a render: decode once, derive every output, encode.

This module and two it uses for outputs (:mod:`.avif`, :mod:`.placeholder`) are the only
ones that import Wand.  Render children import it after
:func:`dramatiq_preview.rendering.child.prepare_environment` pointed ImageMagick at the
shipped policy; :func:`dramatiq_preview.rendering.render_in_process` does the same when Wand
is not loaded yet.

Decoding, per job:

1. The format comes from magic bytes (:mod:`.formats`); PDFs are rasterised by poppler
   (:mod:`.pdf`) and SVGs by librsvg (:mod:`.svg`) into a PNG first; HEIC and AVIF are
   decoded by libheif (:mod:`.heif`), whose pixels become the decoded image.
2. ``ping`` reads the header only: frame count, sizes and EXIF orientation.  More than
   ``max_pixels`` (or :data:`MAX_FRAMES` frames) fails before any pixel is decoded.
3. The one frame needed is decoded, JPEGs with a ``jpeg:size`` hint so libjpeg's DCT
   scaling shrinks them on load to the smallest size the largest output still needs.
4. Outputs are derived from largest to smallest, each from the previous uniform resize, so
   the big decode is resampled once.
5. A source tagged with an RGB colour profile other than sRGB, or a CMYK one
   (:mod:`.icc`), is converted to sRGB once, on whichever has fewer pixels: the decoded
   image, or the outputs made straight from it (up to the first uniform resize, from which
   the rest derive).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import mmap
import os
import time
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from typing import Any

from wand.api import library
from wand.color import Color
from wand.exceptions import (
    BaseError,
    BaseWarning,
    BlobError,
    CacheError,
    PolicyError,
    ResourceLimitError,
    WandException,
)
from wand.image import Image
from wand.version import QUANTUM_DEPTH, configure_options

from ..errors import (
    CorruptSource,
    PageOutOfRange,
    PermanentError,
    PreviewError,
    RenderMemoryExceeded,
    RenderTimeout,
    SourceUnavailable,
    TooManyPixels,
    UnsupportedFormat,
)
from ..models import JobSpec, OutputSpec, Placeholder
from . import avif, heif, icc, pdf, svg
from .formats import (
    HEIF_KINDS,
    INPUT_CODERS,
    SNIFF_BYTES,
    SUPPORTED_TEXT,
    check_webp_structure,
    declared_size,
    gif_frames,
    sniff,
)
from .geometry import Plan, plan, render_order, required_scale
from .placeholder import placeholder_of

#: Frames (GIF, TIFF pages) a source may have; the policy's ``list-length`` says the same.
MAX_FRAMES = 1000
#: Longest side of a source or frame; the policy's ``width`` and ``height`` (64KP) say the same.
MAX_SIDE = 64000
#: Largest output side the schema allows; enlargements never need more.
_MAX_OUTPUT_AREA = 4096 * 4096
#: What a render child keeps of PREVIEW_RENDER_MEMORY_MB for allocations outside
#: ImageMagick's pixel caches, at most (see :func:`cache_memory`).
_NON_CACHE_RESERVE = 256 * 1024 * 1024
#: Bytes of one pixel in ImageMagick 6's pixel cache (four channels of one quantum: 8 at
#: Q16, 16 with HDRI) and of one colormap index (one quantum, 4 bytes with HDRI).
_QUANTUM_BYTES = 4 if "HDRI" in str(configure_options().get("FEATURES", "")) else QUANTUM_DEPTH // 8
_PIXEL_BYTES = 4 * _QUANTUM_BYTES
_INDEX_BYTES = _QUANTUM_BYTES
#: libwebp's speed/size trade-off (0 fastest .. 6 smallest).  2 encodes a 1024 px preview
#: about 2.8x faster than libwebp's default 4 for about the same size and within 0.5 dB PSNR
#: (docs/performance.md).
WEBP_METHOD = "2"
_ORIENTATIONS_TRANSPOSED = {"left_top", "right_top", "right_bottom", "left_bottom"}
#: ImageMagick's StorageType for 8-bit samples (CharPixel).
_CHAR_PIXEL = 1

library.MagickProfileImage.argtypes = [
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.c_void_p,
    ctypes.c_size_t,
]
library.MagickProfileImage.restype = ctypes.c_bool


@dataclass(frozen=True)
class Limits:
    """Per-render limits, from the settings."""

    max_pixels: int
    memory_mb: int


@dataclass(frozen=True)
class Encoded:
    """One encoded output, ready to be written."""

    index: int
    data: bytes
    width: int
    height: int
    #: The output's placeholder, when the job asked for one and this is its first output.
    placeholder: Placeholder | None = None


def cache_memory(limits: Limits) -> int:
    """Bytes ImageMagick's pixel caches may hold at once (its ``memory`` and ``map``).

    The rest of ``memory_mb`` is left to everything else under the child's address-space
    cap (decoder buffers, the mapped source, encoded outputs, Python): 1/4 of it, at most
    :data:`_NON_CACHE_RESERVE`.  The default 2048 MiB thus gives 1792 MiB, enough for a
    colormapped 100 Mpx decode (:func:`_decode_peak`: 1.8 GB), which 3/4 (1536 MiB) was not.
    """
    memory = limits.memory_mb * 1024 * 1024
    return max(memory * 3 // 4, memory - _NON_CACHE_RESERVE)


def configure(limits: Limits) -> None:
    """Lower ImageMagick's resource limits for this process (the policy holds the ceilings)."""
    from wand.resource import limits as magick

    # The pixel cache lives in RAM: no disk cache (the policy sets disk to 0), no mmapped
    # files beyond the memory cap.  Exceeding them is a ResourceLimitError, or, when a
    # coder swallows it, a failed read (see _decode_peak).
    magick["memory"] = cache_memory(limits)
    magick["map"] = cache_memory(limits)
    magick["area"] = max(limits.max_pixels, _MAX_OUTPUT_AREA) * 2
    magick["thread"] = 1


def _decode_peak(columns: int, rows: int) -> int:
    """The most pixel cache the decode of a ``columns`` x ``rows`` frame may hold at once.

    ImageMagick 6 reads colormapped images (palette PNG, greyscale PNG of 8 bits or fewer,
    GIF, palette BMP and TIFF) by opening a plain cache, then reopening it with a colormap
    index per pixel, copying from the first: both are held for a moment.  When that second
    cache is refused, the refusal is recorded on the image being read, which the coder
    discards, so the read fails with no exception at all.
    """
    pixels = columns * rows
    return pixels * _PIXEL_BYTES + pixels * (_PIXEL_BYTES + _INDEX_BYTES)


def render(
    fd: int,
    size: int,
    spec: JobSpec,
    limits: Limits,
    *,
    deadline: float | None = None,
) -> Generator[Encoded | None, None, None]:
    """Decode the source behind ``fd`` once and yield its outputs, largest first.

    Yields ``None`` once, when the source is decoded, then one :class:`Encoded` per output.

    Raises:
      PreviewError: a permanent error for bad sources, :class:`RenderTimeout` when a PDF
        rasteriser runs past ``deadline``.
    """
    if deadline is None:
        deadline = time.monotonic() + 3600
    try:
        yield from _render(fd, size, spec, limits, deadline)
    except PreviewError:
        raise
    except MemoryError:
        raise RenderMemoryExceeded(memory_message(limits)) from None
    except WandException as exc:
        raise translate(exc, limits) from None


def _render(
    fd: int, size: int, spec: JobSpec, limits: Limits, deadline: float
) -> Iterator[Encoded | None]:
    # The size limit was checked on the size seen when the source was opened; a file that
    # grew (or shrank) since is not read, and one that changes during the decode is not used.
    _check_unchanged(fd, size)
    kind = sniff(os.pread(fd, SNIFF_BYTES, 0))
    if kind is None:
        raise UnsupportedFormat(f"the source is not a supported image ({SUPPORTED_TEXT})")
    page = spec.page
    source: _Input
    if kind == "pdf":
        png = pdf.rasterise(fd, page, spec.outputs, max_pixels=limits.max_pixels, deadline=deadline)
        kind, page, source = "png", 0, _Input(png, None)
    elif kind == "svg":
        png = svg.rasterise(
            fd, size, page, spec.outputs, max_pixels=limits.max_pixels, deadline=deadline
        )
        kind, page, source = "png", 0, _Input(png, None)
    else:
        source = _Input(None, fd)
    with source:
        _check_header(source.view(), kind, limits)
        if kind in HEIF_KINDS:
            decoded = _decode_heif(source.view(), kind, page, limits)
        else:
            coder = INPUT_CODERS[kind]
            columns, rows, transposed, frames = _ping(source, coder, page, limits)
            with _quiet():
                decoded = _decode(
                    source, coder, page, frames, spec.outputs, columns, rows, transposed, limits
                )
    with decoded as image:
        _check_unchanged(fd, size)
        yield None
        yield from _derive(
            image, spec.outputs, to_srgb=decoded.to_srgb, placeholder=spec.placeholder
        )


def _check_unchanged(fd: int, size: int) -> None:
    now = os.fstat(fd).st_size
    if now != size:
        # Perhaps an upload still being written: a retry opens it again, and checks its size.
        raise SourceUnavailable(
            f"the source changed while it was being read ({size} bytes when opened, {now} now)"
        )


class _Input:
    """What ImageMagick reads: a blob (a rasterised PDF page) or the source descriptor.

    Descriptors are read through a ``FILE *`` so that the JPEG decoder streams the file
    instead of holding a copy of it; Python-side header checks look at a read-only
    ``mmap`` of it, which only brings in the pages they touch.
    """

    def __init__(self, blob: bytes | None, fd: int | None) -> None:
        self.blob = blob
        self.fd = fd
        self._map: mmap.mmap | None = None

    def __enter__(self) -> _Input:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def view(self) -> bytes | mmap.mmap:
        if self.blob is not None:
            return self.blob
        if self._map is None:
            assert self.fd is not None
            self._map = mmap.mmap(self.fd, 0, prot=mmap.PROT_READ)
        return self._map

    def read_into(self, wand: Any, *, ping: bool) -> bool:
        if self.blob is not None:
            reader = library.MagickPingImageBlob if ping else library.MagickReadImageBlob
            return bool(reader(wand, self.blob, len(self.blob)))
        assert self.fd is not None
        dup = os.dup(self.fd)
        os.lseek(dup, 0, os.SEEK_SET)
        stream = _libc.fdopen(dup, b"rb")
        if not stream:
            os.close(dup)
            raise OSError("fdopen failed")
        try:
            reader = library.MagickPingImageFile if ping else library.MagickReadImageFile
            return bool(reader(wand, stream))
        finally:
            _libc.fclose(stream)  # closes dup


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
_libc.fdopen.restype = ctypes.c_void_p
_libc.fclose.argtypes = [ctypes.c_void_p]
_libc.fclose.restype = ctypes.c_int


def _prepare_read(image: Image, coder: str, selector: str = "") -> None:
    # The "coder:" prefix makes ImageMagick use our coder instead of guessing from content.
    library.MagickSetFormat(image.wand, coder.encode())
    library.MagickSetFilename(image.wand, f"{coder}:source{selector}".encode())


def _check_header(data: bytes | mmap.mmap, kind: str, limits: Limits) -> None:
    """Refuse pixel floods, frame floods and cut JPEGs before any decoder sees them."""
    size = declared_size(data, kind)
    if size is not None and size[0] * size[1] > limits.max_pixels:
        raise TooManyPixels(
            f"the source is {size[0]}x{size[1]} pixels; at most {limits.max_pixels} pixels "
            "are allowed (PREVIEW_MAX_PIXELS)"
        )
    if size is not None and max(size) > MAX_SIDE:
        raise TooManyPixels(
            f"the source is {size[0]}x{size[1]} pixels; at most {MAX_SIDE} pixels a side "
            "are allowed"
        )
    if kind == "gif":
        frames, largest, longest = gif_frames(data, MAX_FRAMES)
        if frames > MAX_FRAMES:
            raise TooManyPixels(
                f"the GIF has more than {MAX_FRAMES} frames; at most {MAX_FRAMES} are supported"
            )
        # A frame may be larger than the GIF's screen; ImageMagick allocates all of it, and
        # reports a side over the policy's limit as a failed memory allocation.
        if largest > limits.max_pixels:
            raise TooManyPixels(
                f"a frame of the GIF has {largest} pixels; at most {limits.max_pixels} pixels "
                "are allowed (PREVIEW_MAX_PIXELS)"
            )
        if longest > MAX_SIDE:
            raise TooManyPixels(
                f"a frame of the GIF is {longest} pixels long; at most {MAX_SIDE} are allowed"
            )
    if kind == "jpeg":
        _check_jpeg_complete(data)
    if kind == "webp":
        check_webp_structure(data, MAX_FRAMES)


def _ping(source: _Input, coder: str, page: int, limits: Limits) -> tuple[int, int, bool, int]:
    """Check frame count, page and pixel count from the headers alone."""
    with _quiet(), Image() as probe:
        _prepare_read(probe, coder)
        if not source.read_into(probe.wand, ping=True):
            probe.raise_exception()
            raise CorruptSource(f"the {coder.upper()} source cannot be read")
        frames = len(probe.sequence)
        if frames > MAX_FRAMES:
            raise TooManyPixels(
                f"the source has {frames} frames; at most {MAX_FRAMES} are supported"
            )
        if page >= frames:
            noun = "frame" if frames == 1 else "frames"
            raise PageOutOfRange(
                f"page {page} does not exist: the source has {frames} {noun} (pages count from 0)"
            )
        # Frames are looked at through the wand's iterator: Wand's ``sequence[i]`` clones
        # the frame, and cloning a 0x0 frame (a damaged header) aborts ImageMagick.
        # GIF and WebP frames up to the page are all decoded (see _decode): check each.
        first = 0 if coder in ("gif", "webp") else page
        for index in range(first, page + 1):
            library.MagickSetIteratorIndex(probe.wand, index)
            columns, rows = probe.width, probe.height
            if columns <= 0 or rows <= 0:
                raise CorruptSource(f"the {coder.upper()} source is damaged (an empty image)")
            canvas_w, canvas_h = probe.page[0] or columns, probe.page[1] or rows
            if max(columns * rows, canvas_w * canvas_h) > limits.max_pixels:
                raise TooManyPixels(
                    f"the source is {max(columns, canvas_w)}x{max(rows, canvas_h)} pixels; "
                    f"at most {limits.max_pixels} pixels are allowed (PREVIEW_MAX_PIXELS)"
                )
        orientation = probe.orientation
    transposed = orientation in _ORIENTATIONS_TRANSPOSED
    return columns, rows, transposed, frames


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Ignore ImageMagick warnings (unknown TIFF tags and the like); errors still raise.

    Never held across a ``yield`` of :func:`render`: the filter is process-wide.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BaseWarning)  # CoderWarning and friends too
        yield


class _Decoded:
    """Context manager holding the decoded, oriented, flattened frame."""

    def __init__(self, image: Image, owner: Image, to_srgb: bool) -> None:
        self.image = image
        self.owner = owner
        #: The image's profile must be applied (:func:`_to_srgb`) before encoding.
        self.to_srgb = to_srgb

    def __enter__(self) -> Image:
        return self.image

    def __exit__(self, *exc: object) -> None:
        if self.image is not self.owner:
            self.image.close()
        self.owner.close()


def _decode(
    source: _Input,
    coder: str,
    page: int,
    frames: int,
    outputs: tuple[OutputSpec, ...],
    columns: int,
    rows: int,
    transposed: bool,
    limits: Limits,
) -> _Decoded:
    owner = Image()
    image: Image = owner  # the frame to render: owner, or a composited copy
    try:
        if coder == "jpeg":
            # Displayed size after EXIF orientation; the hint is in stored orientation.
            shown_w, shown_h = (rows, columns) if transposed else (columns, rows)
            scale = max(required_scale(shown_w, shown_h, o) for o in outputs)
            if scale < 1:
                hint_w = max(1, math.ceil(columns * scale))
                hint_h = max(1, math.ceil(rows * scale))
                owner.options["jpeg:size"] = f"{hint_w}x{hint_h}"
        # GIF and animated WebP frames may only be deltas of earlier ones (a rectangle at
        # an offset): read up to the page and coalesce.
        if coder in ("gif", "webp") and page > 0:
            selector = f"[0-{page}]"
        elif frames > 1:
            selector = f"[{page}]"
        else:
            selector = ""
        _prepare_read(owner, coder, selector)
        if not source.read_into(owner.wand, ping=False):
            owner.raise_exception()
            if _decode_peak(columns, rows) > cache_memory(limits):
                # Nothing was said: most likely the refused colormapped cache, not the file.
                raise RenderMemoryExceeded(memory_message(limits))
            raise CorruptSource(f"the {coder.upper()} source cannot be decoded")
        # A GIF or WebP frame may be a rectangle at an offset on a larger canvas: what a
        # browser shows is the canvas, transparent where the first frame does not cover it,
        # so it is composited even when it is the only frame.
        library.MagickSetIteratorIndex(owner.wand, 0)
        canvas_w, canvas_h, x, y = owner.page
        width, height = owner.size
        if canvas_w < width or canvas_h < height:
            # A screen smaller than the first frame (or none): browsers make it the
            # frame's size, the frame at (0, 0); coalescing would crop the frame instead.
            owner.page = canvas_w, canvas_h, x, y = width, height, 0, 0
        placed = coder in ("gif", "webp") and (
            (x, y) != (0, 0) or (canvas_w, canvas_h) != (width, height)
        )
        if len(owner.sequence) > 1 or placed:
            owner.coalesce()
            image = Image(image=owner.sequence[len(owner.sequence) - 1])
            if placed:
                image.alpha_channel = "activate"  # coalescing left the uncovered part clear
        image.auto_orient()
        image.reset_coords()
        to_srgb = _needs_srgb(image)
        if image.colorspace not in ("srgb", "gray", "rgb") and not to_srgb:
            image.transform_colorspace("srgb")
        return _Decoded(image, owner, to_srgb)
    except BaseException:
        if image is not owner:
            image.close()
        owner.close()
        raise


def _decode_heif(data: bytes | mmap.mmap, kind: str, page: int, limits: Limits) -> _Decoded:
    """Decode a HEIC or AVIF image with libheif (:mod:`.heif`) into an ImageMagick image.

    libheif has applied the file's crop, rotation and mirroring, so the image is upright and
    carries no orientation to apply; its ICC profile (or one made from its ``nclx``
    primaries) is attached, to be applied like a JPEG's.
    """
    # libheif reads the file in place: a private copy, as the map may not be handed out.
    blob = bytes(data)
    image = Image()
    try:
        with heif.decode(
            blob, kind, page, max_pixels=limits.max_pixels, max_side=MAX_SIDE
        ) as picture:
            channels = b"RGBA" if picture.alpha else b"RGB"
            if picture.stride == picture.width * len(channels):
                done = library.MagickConstituteImage(
                    image.wand, picture.width, picture.height, channels, _CHAR_PIXEL, picture.pixels
                )
            else:
                # Padded rows: the first row makes the image, which grows to its size, then
                # the other rows are imported one at a time.
                done = library.MagickConstituteImage(
                    image.wand, picture.width, 1, channels, _CHAR_PIXEL, picture.pixels
                ) and library.MagickExtentImage(image.wand, picture.width, picture.height, 0, 0)
                for row in range(1, picture.height if done else 0):
                    address = picture.pixels + row * picture.stride
                    if not library.MagickImportImagePixels(
                        image.wand, 0, row, picture.width, 1, channels, _CHAR_PIXEL, address
                    ):
                        done = False
                        break
            if not done:
                image.raise_exception()
                raise RenderMemoryExceeded(memory_message(limits))
            if picture.profile is not None:
                library.MagickSetImageProfile(
                    image.wand, b"icc", picture.profile, len(picture.profile)
                )
        return _Decoded(image, image, _needs_srgb(image))
    except BaseException:
        image.close()
        raise


def _needs_srgb(image: Image) -> bool:
    """Whether ``image`` carries a profile that describes its pixels and that sRGB viewers
    would misread: RGB other than sRGB, or CMYK (whose profile says what its inks look like)."""
    space = image.colorspace
    if space not in ("srgb", "rgb", "cmyk"):
        return False
    profile = image.profiles["icc"] or image.profiles["icm"]
    if profile is None or (icc.colour_space(profile) == "CMYK") != (space == "cmyk"):
        return False
    return icc.needs_conversion(profile)


#: ImageMagick's reasons for refusing a profile (lcms could not read or use it).
_PROFILE_REFUSALS = (
    "corruptimageprofile",
    "unabletocreatecolortransform",
    "colorspacecolorprofilemismatch",
)


def is_profile_refusal(exc: BaseException) -> bool:
    """Whether ImageMagick's ``exc`` says the profile is unusable (not memory or the like).

    The reason is matched before the `` @ file/function/line`` suffix: every failure of the
    conversion names ``profile.c/ProfileImage`` there, and lcms' refusals come as
    ``ResourceLimitError`` like real memory failures.
    """
    reason = str(exc).split(" @ ")[0].lower().replace(" ", "")
    return any(refusal in reason for refusal in _PROFILE_REFUSALS)


def _to_srgb(image: Image) -> None:
    """Convert ``image`` from its embedded profile to sRGB.

    A profile lcms cannot use is dropped and the pixels are kept as they are (CMYK ones get
    ImageMagick's plain conversion), which is what browsers show for such a file; any other
    failure (memory) propagates.
    """
    target = icc.srgb()
    if library.MagickProfileImage(image.wand, b"icc", target, len(target)):
        return
    try:
        image.raise_exception()
    except WandException as exc:
        if not is_profile_refusal(exc):
            raise
    image.strip()
    if image.colorspace not in ("srgb", "gray", "rgb"):
        image.transform_colorspace("srgb")  # CMYK without a usable profile: the plain way


def _convert_first(columns: int, rows: int, outputs: tuple[OutputSpec, ...]) -> bool:
    """Whether converting the decoded image costs no more pixels than converting the copies
    :func:`_derive` makes from it: every output up to the first uniform resize, from which
    the rest derive.  True when outputs enlarge the source."""
    copies = 0
    for index in render_order(columns, rows, outputs):
        step = plan(columns, rows, outputs[index])
        copies += step.resize[0] * step.resize[1]
        if step.uniform:
            break
    return copies >= columns * rows


def _derive(
    image: Image,
    outputs: tuple[OutputSpec, ...],
    *,
    to_srgb: bool = False,
    placeholder: bool = False,
) -> Iterator[Encoded]:
    columns, rows = image.size
    has_alpha = bool(image.alpha_channel)
    if to_srgb and _convert_first(columns, rows, outputs):
        with _quiet():
            _to_srgb(image)
        to_srgb = False
    base = image
    try:
        for index in render_order(columns, rows, outputs):
            output = outputs[index]
            step = plan(base.width, base.height, output)
            # ImageMagick hands decoding warnings to whichever call comes next: all quiet.
            with _quiet():
                resized = base.clone()
            try:
                with _quiet():
                    final = _make(resized, step, convert=to_srgb and base is image)
                try:
                    with _quiet():
                        encoded = _encode(final, index, output, has_alpha)
                        if placeholder and index == 0:
                            # From the pixels before encoding: what the encoder loses
                            # changes neither the BlurHash nor the colour noticeably.
                            encoded = replace(encoded, placeholder=placeholder_of(final))
                    yield encoded
                finally:
                    if final is not resized:
                        final.close()
            except BaseException:
                resized.close()
                raise
            if step.uniform:
                # Every later output needs fewer pixels: derive it from this one.
                if base is not image:
                    base.close()
                base = resized
            else:
                resized.close()
    finally:
        if base is not image:
            base.close()


def _make(resized: Image, step: Plan, *, convert: bool) -> Image:
    """Turn ``resized`` (a copy of the image) into the output ``step`` plans, in place as
    far as it goes; the crop, when there is one, is a new image (``resized`` may become
    the source of later outputs)."""
    if step.source_crop is not None:
        left, top, width, height = step.source_crop
        resized.crop(left, top, width=width, height=height)
        resized.reset_coords()
    if resized.size != step.resize:
        _resize(resized, *step.resize)
    if convert:
        # Later outputs derive from this converted copy, or convert their own
        # (_convert_first chose this because the copies are smaller).
        _to_srgb(resized)
    if step.crop is None:
        return resized
    left, top, width, height = step.crop
    final = resized.clone()
    try:
        final.crop(left, top, width=width, height=height)
        final.reset_coords()
    except BaseException:
        final.close()
        raise
    return final


def _resize(image: Image, width: int, height: int) -> None:
    """Resample ``image`` to ``width`` x ``height``.

    Reductions use area averaging (ImageMagick's ``scale``): about five times faster than
    a Lanczos ``resize`` at Q16, and within 0.5 dB PSNR of it on photographs (measured in
    docs/performance.md).  Enlargements need an interpolating filter (Mitchell).
    """
    if width <= image.width and height <= image.height:
        image.scale(width, height)
    else:
        # An axis that shrinks is averaged down first: a Mitchell filter shrinking 64000
        # rows to 1 while the other axis grows would span every row, slowly, in a huge copy.
        if width < image.width:
            image.scale(width, image.height)
        elif height < image.height:
            image.scale(image.width, height)
        image.resize(width, height, filter="mitchell")
    if image.size != (width, height):
        # ImageMagick failed without saying why (seen on images it never decoded).
        raise CorruptSource("the source image is damaged and cannot be resized")


def _encode(image: Image, index: int, output: OutputSpec, has_alpha: bool) -> Encoded:
    if output.format == "avif":
        # libheif directly, not ImageMagick's AVIF writer, which drops alpha (.avif).  It
        # reads the pixels and nothing else: no stripped copy is needed.
        data = avif.encode(image.wand, image.width, image.height, output.quality, alpha=has_alpha)
        return Encoded(index=index, data=data, width=image.width, height=image.height)
    with image.clone() as out:
        # The decoded image keeps its "coder:source" filename, whose prefix would choose
        # the encoder over ``format``.
        library.MagickSetImageFilename(out.wand, b"")
        library.MagickSetFilename(out.wand, b"")
        out.strip()
        if output.format == "jpeg":
            if has_alpha:
                out.background_color = Color("white")
                out.alpha_channel = "remove"
                out.alpha_channel = "off"
            out.format = "jpeg"
            out.compression_quality = output.quality
            out.options["jpeg:sampling-factor"] = "4:2:0"
        elif output.format == "webp":
            out.format = "webp"
            out.compression_quality = output.quality
            out.options["webp:method"] = WEBP_METHOD
            if has_alpha:
                out.options["webp:alpha-quality"] = "100"
        else:
            out.format = "png"
            out.options["png:compression-level"] = "6"
            out.options["png:exclude-chunks"] = "date,time"
        library.MagickSetFormat(out.wand, out.format.encode())
        data = out.make_blob()
        return Encoded(index=index, data=data, width=out.width, height=out.height)


def _check_jpeg_complete(data: bytes | mmap.mmap) -> None:
    """Refuse a JPEG cut short: libjpeg would fill the missing part with grey, silently."""
    pos = 2
    end = len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            raise CorruptSource("the JPEG source is damaged (bad marker)")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: entropy-coded data follows until EOI
            # Look at the tail first: scanning a whole mapped file would page it all in.
            tail = max(pos, end - 65536)
            if data.rfind(b"\xff\xd9", tail) < 0 and data.rfind(b"\xff\xd9", pos, tail + 2) < 0:
                raise CorruptSource("the JPEG source is truncated")
            return
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        pos += 2 + length
    raise CorruptSource("the JPEG source is truncated")


def memory_message(limits: Limits) -> str:
    return (
        f"the render needed more than {limits.memory_mb} MiB of memory (PREVIEW_RENDER_MEMORY_MB)"
    )


def translate(exc: BaseException, limits: Limits) -> PermanentError | RenderTimeout:
    """A permanent error for an ImageMagick failure, without file names or contents."""
    text = str(exc).lower()
    # "width or height exceeds limit" comes as ImageError from some coders.
    too_large = isinstance(exc, ResourceLimitError | CacheError) and "too large" in text
    if "width or height" in text or too_large:
        return TooManyPixels("the source's dimensions exceed the allowed maximum")
    if isinstance(exc, ResourceLimitError | CacheError):
        if "list length" in text or "listlength" in text:
            return TooManyPixels(f"the source has more than {MAX_FRAMES} frames")
        if "time limit" in text:
            return RenderTimeout("the render took longer than the time limit")
        return RenderMemoryExceeded(memory_message(limits))
    if isinstance(exc, PolicyError):
        return UnsupportedFormat(
            f"the source uses a feature the image policy forbids ({SUPPORTED_TEXT} only)"
        )
    if isinstance(exc, BlobError | BaseError):
        return CorruptSource("the source image is damaged or truncated and cannot be decoded")
    return CorruptSource("the source image cannot be decoded")

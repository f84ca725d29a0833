"""Test inputs made at test time: images, PDFs and hostile files, from raw bytes.

PNG, GIF, BMP, TIFF and PDF are written byte by byte here, so generating them needs no
ImageMagick coder that our policy forbids.  JPEG and WebP are encoded with Wand from a PNG
(coders the policy allows).  Images are colour-coded so tests can check real pixels:

- :func:`quadrants` paints four solid quadrants (top-left, top-right, bottom-left,
  bottom-right), so fit, crop and orientation are visible from a few sample points;
- multi-frame GIF/TIFF and multi-page PDF use one solid colour per frame/page.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Sequence

RGBA = tuple[int, int, int, int]
Pixels = list[list[RGBA]]

RED: RGBA = (255, 0, 0, 255)
GREEN: RGBA = (0, 255, 0, 255)
BLUE: RGBA = (0, 0, 255, 255)
YELLOW: RGBA = (255, 255, 0, 255)
WHITE: RGBA = (255, 255, 255, 255)
BLACK: RGBA = (0, 0, 0, 255)
CLEAR: RGBA = (0, 0, 0, 0)
FRAME_COLOURS: list[RGBA] = [RED, GREEN, BLUE, YELLOW, WHITE, BLACK]

# --- pixel grids --------------------------------------------------------------------------


def solid(width: int, height: int, colour: RGBA) -> Pixels:
    return [[colour] * width for _ in range(height)]


def quadrants(
    width: int, height: int, colours: Sequence[RGBA] = (RED, GREEN, BLUE, YELLOW)
) -> Pixels:
    """Top-left, top-right, bottom-left, bottom-right quadrants in ``colours``."""
    tl, tr, bl, br = colours
    half_w, half_h = width // 2, height // 2
    return [
        [
            (tl if x < half_w else tr) if y < half_h else (bl if x < half_w else br)
            for x in range(width)
        ]
        for y in range(height)
    ]


def noise(width: int, height: int, seed: int = 1234) -> Pixels:
    """Opaque random colours: encodes to about 3 bytes a pixel in any format, at any size."""
    data = random_bytes(width * height * 3, seed)
    return [
        [
            (data[i], data[i + 1], data[i + 2], 255)
            for i in range(y * width * 3, (y + 1) * width * 3, 3)
        ]
        for y in range(height)
    ]


def stripes(width: int, height: int, colours: Sequence[RGBA]) -> Pixels:
    """Vertical stripes of equal width, left to right."""
    n = len(colours)
    return [[colours[min(n - 1, x * n // width)] for x in range(width)] for _ in range(height)]


# --- PNG --------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(
    pixels: Pixels,
    *,
    alpha: bool = True,
    text: dict[str, str] | None = None,
    icc: bytes | None = None,
) -> bytes:
    """An 8-bit RGB(A) PNG, optionally with ``tEXt`` chunks and an ``iCCP`` colour profile."""
    height, width = len(pixels), len(pixels[0])
    channels = 4 if alpha else 3
    raw = bytearray()
    for row in pixels:
        raw.append(0)
        for px in row:
            raw.extend(px[:channels])
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6 if alpha else 2, 0, 0, 0)
    chunks = [_chunk(b"IHDR", ihdr)]
    if icc is not None:
        chunks.append(_chunk(b"iCCP", b"profile\0\0" + zlib.compress(icc)))
    for key, value in (text or {}).items():
        chunks.append(_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")))
    chunks.append(_chunk(b"IDAT", zlib.compress(bytes(raw), 6)))
    chunks.append(_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def png_solid_fast(width: int, height: int) -> bytes:
    """A large black RGB PNG built without a per-pixel Python loop."""
    row = b"\0" + b"\0" * (width * 3)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(row * height, 1)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def png_grey_fast(width: int, height: int, *, bit_depth: int = 8) -> bytes:
    """A large greyscale PNG (colour type 0), black on the left half and white on the right,
    built without a per-pixel Python loop; it compresses to a few hundred KiB at 100 Mpx.

    ImageMagick 6 reads greyscale PNGs of 8 bits or fewer with a colormap (``PseudoClass``),
    unlike RGB ones: what issue 19 found at ``PREVIEW_MAX_PIXELS``.
    """
    per_byte = 8 // bit_depth
    row_bytes = (width + per_byte - 1) // per_byte
    half = row_bytes // 2
    row = b"\0" + b"\0" * half + b"\xff" * (row_bytes - half)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    idat = zlib.compress(row * height, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` with almost no data (pixel flood)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


# --- GIF --------------------------------------------------------------------------------


def _lzw_uncompressed(indices: bytes) -> bytes:
    """LZW data a GIF decoder accepts, with a clear code often enough to stay at 9 bits."""
    clear, end = 256, 257
    codes = []
    for start in range(0, len(indices), 250):
        codes.append(clear)
        codes.extend(indices[start : start + 250])
    codes.append(end)
    out = bytearray()
    acc = bits = 0
    for code in codes:
        acc |= code << bits
        bits += 9
        while bits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            bits -= 8
    if bits:
        out.append(acc & 0xFF)
    blocks = bytearray([8])  # minimum code size
    for i in range(0, len(out), 255):
        part = out[i : i + 255]
        blocks.append(len(part))
        blocks.extend(part)
    blocks.append(0)
    return bytes(blocks)


def gif(
    frames: Sequence[Pixels],
    *,
    screen: tuple[int, int] | None = None,
    transparent: bool = False,
) -> bytes:
    """A GIF89a with one full-size frame per pixel grid (global 256-colour palette).

    With ``transparent``, fully transparent pixels use palette index 255.
    """
    height, width = len(frames[0]), len(frames[0][0])
    screen_w, screen_h = screen or (width, height)
    palette: dict[tuple[int, int, int], int] = {}
    encoded = []
    for pixels in frames:
        indices = bytearray()
        for row in pixels:
            for r, g, b, a in row:
                if transparent and a == 0:
                    indices.append(255)
                    continue
                key = (r, g, b)
                if key not in palette:
                    palette[key] = len(palette)
                    assert len(palette) < 255, "too many colours for this tiny encoder"
                indices.append(palette[key])
        encoded.append(bytes(indices))
    table = bytearray(768)
    for (r, g, b), i in palette.items():
        table[i * 3 : i * 3 + 3] = bytes((r, g, b))
    out = bytearray(b"GIF89a")
    out += struct.pack("<HHBBB", screen_w, screen_h, 0xF7, 0, 0)
    out += table
    if len(frames) > 1:
        out += b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    for indices in encoded:
        flags = 0x01 if transparent else 0x00
        flags |= 0x04  # disposal: leave in place
        out += b"!\xf9\x04" + bytes([flags]) + struct.pack("<H", 10) + bytes([255, 0])
        out += b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
        out += _lzw_uncompressed(indices)
    out += b";"
    return bytes(out)


def gif_many_frames(count: int) -> bytes:
    """A 1x1 GIF with ``count`` frames (thousands of frames in a few dozen KiB)."""
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + _lzw_uncompressed(b"\x00")
    header = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    return header + frame * count + b";"


def gif_header_only(width: int, height: int) -> bytes:
    """A GIF declaring a ``width`` x ``height`` screen and frame with one pixel of data."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + _lzw_uncompressed(b"\x00")
    return header + frame + b";"


# --- BMP --------------------------------------------------------------------------------


def bmp(pixels: Pixels) -> bytes:
    """A 24-bit bottom-up BMP (no alpha)."""
    height, width = len(pixels), len(pixels[0])
    stride = (width * 3 + 3) & ~3
    data = bytearray()
    for row in reversed(pixels):
        line = bytearray()
        for r, g, b, _ in row:
            line += bytes((b, g, r))
        line += b"\0" * (stride - len(line))
        data += line
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(data), 2835, 2835, 0, 0)
    size = 14 + len(header) + len(data)
    return b"BM" + struct.pack("<IHHI", size, 0, 0, 14 + len(header)) + header + bytes(data)


# --- TIFF -------------------------------------------------------------------------------


def tiff(pages: Sequence[Pixels], *, alpha: bool = False, orientation: int = 1) -> bytes:
    """An uncompressed little-endian RGB(A) TIFF, one IFD per page."""
    channels = 4 if alpha else 3
    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    previous_next_offset = 4
    for pixels in pages:
        height, width = len(pixels), len(pixels[0])
        data = bytes(c for row in pixels for px in row for c in px[:channels])
        while len(out) % 2:
            out.append(0)
        data_offset = len(out)
        out += data
        while len(out) % 2:
            out.append(0)
        bits_offset = len(out)
        out += struct.pack("<" + "H" * channels, *([8] * channels))
        entries = [
            (256, 4, 1, width),
            (257, 4, 1, height),
            (258, 3, channels, bits_offset),
            (259, 3, 1, 1),
            (262, 3, 1, 2),
            (273, 4, 1, data_offset),
            (274, 3, 1, orientation),
            (277, 3, 1, channels),
            (278, 4, 1, height),
            (279, 4, 1, len(data)),
            (284, 3, 1, 1),
        ]
        if alpha:
            entries.append((338, 3, 1, 2))
        ifd_offset = len(out)
        struct.pack_into("<I", out, previous_next_offset, ifd_offset)
        out += struct.pack("<H", len(entries))
        for tag, kind, count, value in sorted(entries):
            if kind == 3 and count == 1:
                out += struct.pack("<HHIHH", tag, kind, count, value, 0)
            else:
                out += struct.pack("<HHII", tag, kind, count, value)
        previous_next_offset = len(out)
        out += b"\0\0\0\0"
    return bytes(out)


# --- JPEG and WebP (via Wand, coders our policy allows) ----------------------------------


def _via_wand(png_bytes: bytes, fmt: str, quality: int = 95) -> bytes:
    from wand.image import Image

    with Image(blob=png_bytes, format="png") as image:
        image.format = fmt
        image.compression_quality = quality
        if fmt == "jpeg":
            image.alpha_channel = "remove"
            image.options["jpeg:sampling-factor"] = "1x1"
        if fmt == "webp":
            image.options["webp:lossless"] = "true"
        return bytes(image.make_blob())


def jpeg(pixels: Pixels, *, orientation: int | None = None, quality: int = 95) -> bytes:
    """A baseline JPEG; with ``orientation``, an EXIF APP1 segment carrying that tag."""
    data = _via_wand(png(pixels, alpha=False), "jpeg", quality)
    if orientation is None:
        return data
    tiff_part = (
        b"MM\x00*"
        + struct.pack(">I", 8)
        + struct.pack(">H", 1)
        + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
        + struct.pack(">I", 0)
    )
    exif = b"Exif\x00\x00" + tiff_part
    app1 = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    return data[:2] + app1 + data[2:]


def with_icc(jpeg_data: bytes, profile: bytes) -> bytes:
    """``jpeg_data`` with ``profile`` in an APP2 ``ICC_PROFILE`` segment (one chunk)."""
    payload = b"ICC_PROFILE\0" + bytes([1, 1]) + profile
    app2 = b"\xff\xe2" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg_data[:2] + app2 + jpeg_data[2:]


def cmyk_jpeg(
    width: int, height: int, ink: tuple[int, int, int, int], profile: bytes | None = None
) -> bytes:
    """A solid CMYK JPEG (``ink`` as 0-255 cyan, magenta, yellow, black), optionally tagged
    with an ICC profile saying what those inks look like."""
    from wand.color import Color
    from wand.image import Image

    with Image(
        width=width, height=height, background=Color("cmyk({},{},{},{})".format(*ink))
    ) as image:
        assert image.colorspace == "cmyk"
        if profile is not None:
            image.profiles["icc"] = profile  # attached, not applied
        image.format = "jpeg"
        image.compression_quality = 100
        return bytes(image.make_blob())


def webp(pixels: Pixels) -> bytes:
    """A lossless WebP (keeps alpha and exact colours)."""
    return _via_wand(png(pixels, alpha=True), "webp")


def animated_webp(frames: Sequence[tuple[Pixels, tuple[int, int]]]) -> bytes:
    """A lossless animated WebP: each frame a pixel grid at an (x, y) offset on the canvas
    the first frame sets, so later frames can be deltas, as animation encoders make them."""
    from wand.image import Image

    canvas_h, canvas_w = len(frames[0][0]), len(frames[0][0][0])
    with Image() as animation:
        for pixels, (x, y) in frames:
            with Image(blob=png(pixels, alpha=True), format="png") as frame:
                frame.page = (canvas_w, canvas_h, x, y)
                frame.dispose = "none"
                animation.sequence.append(frame)
        animation.format = "webp"
        animation.options["webp:lossless"] = "true"
        return bytes(animation.make_blob())


def jpeg_header_only(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF segment is patched to declare ``width`` x ``height``."""
    data = bytearray(jpeg(solid(16, 16, RED)))
    pos = 2
    while pos < len(data):
        marker = data[pos + 1]
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if marker in (0xC0, 0xC1, 0xC2):
            struct.pack_into(">HH", data, pos + 5, height, width)
            break
        pos += 2 + length
    return bytes(data)


# --- PDF --------------------------------------------------------------------------------


def pdf(
    colours: Sequence[RGBA | tuple[RGBA, RGBA, RGBA, RGBA]],
    size: tuple[float, float] = (200, 100),
    crop_box: tuple[float, float, float, float] | None = None,
) -> bytes:
    """A PDF with one page per entry, ``size`` in points.

    An entry is one colour (the page is filled with it) or four (quadrants: top-left,
    top-right, bottom-left, bottom-right).  ``crop_box`` (x0, y0, x1, y1 in points) sets
    every page's CropBox: the part viewers show.
    """
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(colours)))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(colours)} >>".encode())
    w, h = size
    crop = "/CropBox [{} {} {} {}] ".format(*crop_box) if crop_box else ""
    for i, entry in enumerate(colours):
        if isinstance(entry[0], int):
            r, g, b, _ = entry  # type: ignore[misc]
            content = f"{r / 255:.3f} {g / 255:.3f} {b / 255:.3f} rg 0 0 {w} {h} re f".encode()
        else:
            # PDF's origin is bottom-left: top-left quadrant is at y = h/2.
            boxes = [(0, h / 2), (w / 2, h / 2), (0, 0), (w / 2, 0)]
            parts = []
            for (x, y), (r, g, b, _) in zip(boxes, entry, strict=True):  # type: ignore[arg-type]
                parts.append(
                    f"{r / 255:.3f} {g / 255:.3f} {b / 255:.3f} rg {x} {y} {w / 2} {h / 2} re f"
                )
            content = "\n".join(parts).encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {w} {h}] {crop}"
            f"/Contents {4 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
    ).encode()
    return bytes(out)


# --- hostile inputs ---------------------------------------------------------------------

MVG_READS_FILE = (
    b"push graphic-context\nviewbox 0 0 640 480\n"
    b"image over 0,0 0,0 'label:@/etc/passwd'\npop graphic-context\n"
)
MSL_READS_FILE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<image>\n'
    b'<read filename="/etc/passwd"/>\n<write filename="/tmp/preview-msl-leak.png"/>\n</image>\n'
)
SVG_READS_FILE = (
    b'<?xml version="1.0" standalone="no"?>\n'
    b'<svg width="640" height="480" xmlns="http://www.w3.org/2000/svg" '
    b'xmlns:xlink="http://www.w3.org/1999/xlink">\n'
    b'<image xlink:href="text:/etc/passwd" x="0" y="0" height="480" width="640"/>\n</svg>\n'
)
POSTSCRIPT = (
    b"%!PS-Adobe-3.0\n/Courier findfont 12 scalefont setfont\n"
    b"72 720 moveto (/etc/passwd) (r) file 100 string readstring pop show\nshowpage\n"
)


def _riff_chunk(fourcc: bytes, data: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1)


def _webp_file(chunks: Sequence[bytes]) -> bytes:
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _vp8x(width: int, height: int, flags: int) -> bytes:
    size = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return _riff_chunk(b"VP8X", bytes([flags, 0, 0, 0]) + size)


def _vp8l_chunk(width: int, height: int) -> bytes:
    """The VP8L chunk of a real lossless WebP."""
    data = webp(solid(width, height, RED))
    assert data[12:16] == b"VP8L", data[12:16]
    return data[12:]


def webp_animation_without_frames() -> bytes:
    """A VP8X header announcing an animation, then a still image and no frame: ImageMagick 6
    returns pixels it never wrote (heap leftovers) for it."""
    return _webp_file([_vp8x(64, 48, 0x02), _vp8l_chunk(64, 48)])


def webp_without_image_data() -> bytes:
    """A VP8X header followed by an ICC chunk only."""
    return _webp_file([_vp8x(64, 48, 0x20), _riff_chunk(b"ICCP", b"\0" * 128)])


def webp_many_frames(count: int) -> bytes:
    """An animated WebP of ``count`` 8x8 frames (one encoded frame, repeated)."""
    frame_header = bytes(6) + (7).to_bytes(3, "little") * 2 + (100).to_bytes(3, "little") + b"\0"
    frame = _riff_chunk(b"ANMF", frame_header + _vp8l_chunk(8, 8))
    anim = _riff_chunk(b"ANIM", bytes(4) + struct.pack("<H", 0))
    return _webp_file([_vp8x(8, 8, 0x02), anim] + [frame] * count)


def gif_oversized_frame(width: int, height: int) -> bytes:
    """A 4x4-screen GIF whose one frame descriptor declares ``width`` x ``height``."""
    data = bytearray(gif([solid(4, 4, RED)]))
    at = data.index(b"\x2c\x00\x00\x00\x00")  # the image descriptor, at (0, 0)
    data[at + 5 : at + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def gif_oversized_frame_behind_junk(width: int, height: int) -> bytes:
    """:func:`gif_oversized_frame` with a stray byte before the descriptor, which
    ImageMagick's reader skips (as must any check that means to see the frame)."""
    data = gif_oversized_frame(width, height)
    at = data.index(b"\x2c\x00\x00\x00\x00")
    return data[:at] + b"\x01" + data[at:]


def webp_with_cut_metadata() -> bytes:
    """A still WebP whose last chunk (XMP) declares a byte more than the file holds, a
    flaw decoders forgive."""
    image = webp(solid(16, 8, RED))[12:]
    xmp = b"XMP " + struct.pack("<I", 8) + b"<x:xmp/"  # 7 of the 8 bytes
    body = b"WEBP" + _vp8x(16, 8, 0x04) + image + xmp
    return b"RIFF" + struct.pack("<I", len(body)) + body


def jpeg_overfull_huffman_table() -> bytes:
    """A JPEG whose AC Huffman table declares one code too many: ImageMagick's ``ping``
    returns a 0x0 image for it (and Wand aborted the process cloning that image)."""
    data = bytearray(jpeg(quadrants(33, 17), quality=95))
    pos, tables = 2, 0
    while True:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xC4:
            tables += 1
            if data[pos + 4] >> 4 == 1:  # class 1: an AC table
                data[pos + 4 + 1 + 15] += 1  # BITS[16]: one more 16-bit code
                return bytes(data)
        pos += 2 + length


def png_with_profile_text(path: str = "/etc/passwd") -> bytes:
    """CVE-2022-44268: a PNG whose ``tEXt`` ``profile`` chunk names a local file."""
    return png(quadrants(32, 32), text={"profile": path})


def random_bytes(size: int, seed: int = 1234) -> bytes:
    return random.Random(seed).randbytes(size)


def truncated(data: bytes, fraction: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * fraction))]


def time_bomb_svg(shapes: int = 16, side: int = 2048) -> bytes:
    """An SVG of ``shapes`` large circles, each through a wide Gaussian blur: drawn at
    ``side`` px, each costs librsvg about a second of CPU, whatever the machine does."""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{side}" height="{side}" '
        f'viewBox="0 0 {side} {side}">',
        '<defs><filter id="b" x="-50%" y="-50%" width="200%" height="200%">'
        '<feGaussianBlur stdDeviation="60"/></filter></defs>',
    ]
    for i in range(shapes):
        parts.append(
            f'<circle cx="{i * 97 % side}" cy="{i * 211 % side}" r="{side // 3}" '
            f'fill="#{i * 40 % 256:02x}80c0" filter="url(#b)"/>'
        )
    parts.append("</svg>")
    return "".join(parts).encode()

"""HEIC/HEIF and AVIF sources, made here with maintained encoders (pillow-heif for HEIC,
Pillow's libavif plugin for AVIF), rendered through the real pool and checked pixel by pixel.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import time
from collections.abc import Callable
from typing import Any

import imagegen as g
import pillow_heif
import pytest
from PIL import Image
from render_helpers import Workspace, assert_colour_at, close_to, pixel, size_of

from dramatiq_preview.errors import CorruptSource, PageOutOfRange, TooManyPixels
from dramatiq_preview.models import OutputSpec
from dramatiq_preview.rendering import Renderer, icc
from dramatiq_preview.rendering.formats import declared_size, sniff

pillow_heif.register_heif_opener()

KINDS = ["heic", "avif"]
FORMAT = {"heic": "HEIF", "avif": "AVIF"}
QUAD = (g.RED, g.GREEN, g.BLUE, g.YELLOW)
#: Lossy coding of solid quadrants stays within this of the colour, away from the edges.
LOSSY = 12
DISPLAY_P3 = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))
ORANGE = (200, 100, 50)
#: ORANGE read as Display P3, in sRGB (test_colour.py derives it by hand).
ORANGE_P3_IN_SRGB = (215, 93, 31)


def picture(pixels: g.Pixels) -> Any:
    """A Pillow image of an imagegen pixel grid (RGBA)."""
    height, width = len(pixels), len(pixels[0])
    image = Image.new("RGBA", (width, height))
    image.putdata([px for row in pixels for px in row])
    return image


def encode(image: Any, kind: str, **options: Any) -> bytes:
    """``image`` as a HEIC (pillow-heif, x265) or AVIF (Pillow, libavif) file."""
    buffer = io.BytesIO()
    image.save(buffer, format=FORMAT[kind], quality=95, **options)
    return buffer.getvalue()


def quadrants(kind: str, width: int = 64, height: int = 32) -> bytes:
    return encode(picture(g.quadrants(width, height)).convert("RGB"), kind)


def with_ispe(data: bytes, width: int, height: int) -> bytes:
    """``data`` with every ``ispe`` (image size) property declaring ``width`` x ``height``."""
    out = bytearray(data)
    start = 0
    while (at := out.find(b"ispe", start)) >= 0:
        struct.pack_into(">II", out, at + 8, width, height)  # after version and flags
        start = at + 4
    return bytes(out)


def assert_quadrants(path: Any, width: int, height: int, tolerance: int = LOSSY) -> None:
    """The output at ``path`` shows QUAD upright: red top left ... yellow bottom right."""
    corners = [(2, 2), (width - 3, 2), (2, height - 3), (width - 3, height - 3)]
    for point, colour in zip(corners, QUAD, strict=True):
        assert_colour_at(path, [point], colour, tolerance)


@pytest.mark.parametrize("output_format", ["webp", "jpeg", "png"])
@pytest.mark.parametrize("kind", KINDS)
def test_heic_and_avif_render_to_every_output(
    renderer: Renderer, workspace: Workspace, kind: str, output_format: str
) -> None:
    """Given a 64x32 four-colour HEIC or AVIF, when rendered into a 40x40 box, then the
    output is 40x20 in the requested format with each quadrant's colour where it belongs."""
    data = quadrants(kind)
    assert sniff(data[:1024]) == kind
    name = workspace.add(f"heif/q.{kind}", data)
    spec = workspace.job(name, [OutputSpec(40, 40, output_format)])

    [result] = workspace.render(renderer, spec)

    path = workspace.out / result.path
    assert (result.width, result.height) == (40, 20)
    assert size_of(path) == (40, 20)
    assert_quadrants(path, 40, 20)


@pytest.mark.parametrize("alpha", [False, True])
def test_an_odd_width_whose_rows_the_decoder_pads_renders_whole(
    renderer: Renderer, workspace: Workspace, alpha: bool
) -> None:
    """Given a 37x19 HEIC (libheif pads each decoded row to an aligned length), with and
    without alpha, when rendered at its own size, then every corner has its colour: no
    row is shifted or left blank."""
    image = picture(g.quadrants(38, 20)).crop((0, 0, 37, 19))
    name = workspace.add(
        f"heif/odd-{alpha}.heic", encode(image if alpha else image.convert("RGB"), "heic")
    )
    spec = workspace.job(name, [OutputSpec(37, 19, "png")])

    [result] = workspace.render(renderer, spec)

    assert (result.width, result.height) == (37, 19)
    assert_quadrants(workspace.out / result.path, 37, 19)


@pytest.mark.parametrize("kind", KINDS)
def test_a_rotated_photo_comes_out_upright_exactly_once(
    renderer: Renderer, workspace: Workspace, kind: str
) -> None:
    """Given a photo stored on its side with "rotate 90 clockwise" (EXIF orientation 6,
    which the encoders turn into an ``irot`` box; pillow-heif also keeps the EXIF tag, as
    phones do), when rendered, then it is upright: turned once, not twice."""
    upright = picture(g.quadrants(64, 32)).convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 32x64, what the sensor saw
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, kind, exif=exif.tobytes())
    assert b"irot" in data
    if kind == "heic":  # the phone's double flag: both must not be applied
        assert pillow_heif.open_heif(io.BytesIO(data)).info["exif"].find(b"\x01\x12") >= 0
    name = workspace.add(f"heif/rotated.{kind}", data)
    spec = workspace.job(name, [OutputSpec(64, 64, "png")])

    [result] = workspace.render(renderer, spec)

    assert (result.width, result.height) == (64, 32)
    assert_quadrants(workspace.out / result.path, 64, 32)


@pytest.mark.parametrize("output_format", ["webp", "png"])
@pytest.mark.parametrize("kind", KINDS)
def test_transparent_pixels_stay_transparent(
    renderer: Renderer, workspace: Workspace, kind: str, output_format: str
) -> None:
    """Given a HEIC or AVIF with alpha (opaque red left, fully transparent right), when
    rendered to a format with alpha, then the right stays transparent and the left opaque
    red (ImageMagick 6.9's own HEIC coder would have made it all opaque)."""
    pixels = g.stripes(48, 32, [g.RED, g.CLEAR])
    data = encode(picture(pixels), kind)
    name = workspace.add(f"heif/alpha.{kind}", data)
    spec = workspace.job(name, [OutputSpec(48, 32, output_format)])

    [result] = workspace.render(renderer, spec)

    path = workspace.out / result.path
    left, right = pixel(path, 6, 16), pixel(path, 42, 16)
    assert close_to(left, (255, 0, 0, 255), LOSSY), left
    assert right[3] == 0, right


@pytest.mark.parametrize("kind", KINDS)
def test_a_display_p3_profile_is_converted_to_srgb(
    renderer: Renderer, workspace: Workspace, kind: str
) -> None:
    """Given an orange HEIC or AVIF tagged with a Display P3 ICC profile (``colr``), when
    rendered, then the output holds the sRGB colour of that orange, not the raw numbers."""
    profile = icc.matrix_profile("Display P3", DISPLAY_P3)
    data = encode(Image.new("RGB", (48, 32), ORANGE), kind, icc_profile=profile)
    name = workspace.add(f"heif/p3.{kind}", data)
    spec = workspace.job(name, [OutputSpec(24, 16, "png")])

    [result] = workspace.render(renderer, spec)

    got = pixel(workspace.out / result.path, 12, 8)[:3]
    assert close_to(got, ORANGE_P3_IN_SRGB, 4), got
    assert not close_to(got, ORANGE, 6), got


def test_display_p3_primaries_without_a_profile_are_converted_too(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given an orange HEIC that describes its colours as Display P3 by ``nclx`` codes only
    (primaries 12, sRGB transfer), as AVIF and HEIF encoders write instead of a profile,
    when rendered, then the output holds the sRGB colour of that orange."""
    data = encode(
        Image.new("RGB", (48, 32), ORANGE),
        "heic",
        color_primaries=12,
        transfer_characteristics=13,
        matrix_coefficients=6,
        full_range_flag=1,
    )
    name = workspace.add("heif/p3-nclx.heic", data)
    spec = workspace.job(name, [OutputSpec(24, 16, "png")])

    [result] = workspace.render(renderer, spec)

    got = pixel(workspace.out / result.path, 12, 8)[:3]
    assert close_to(got, ORANGE_P3_IN_SRGB, 4), got


def test_a_ten_bit_heic_renders_with_its_colours(renderer: Renderer, workspace: Workspace) -> None:
    """Given a 10-bit HEIC (as iPhones write for HDR photos, and most AVIF encoders for
    wide gamut), when rendered, then the quadrants keep their colours."""
    raw = b"".join(
        struct.pack("<HHH", *(v * 257 for v in px[:3])) for row in g.quadrants(64, 32) for px in row
    )
    heif = pillow_heif.from_bytes(mode="RGB;16", size=(64, 32), data=raw)
    buffer = io.BytesIO()
    heif.save(buffer, quality=95)
    assert pillow_heif.open_heif(io.BytesIO(buffer.getvalue())).info["bit_depth"] == 10
    name = workspace.add("heif/ten-bit.heic", buffer.getvalue())
    spec = workspace.job(name, [OutputSpec(64, 32, "png")])

    [result] = workspace.render(renderer, spec)

    assert_quadrants(workspace.out / result.path, 64, 32)


@pytest.fixture
def collection(workspace: Workspace) -> str:
    """A HEIC holding three images, red, green and blue, whose primary is the green one."""
    red, green, blue = (Image.new("RGB", (32, 16), c[:3]) for c in (g.RED, g.GREEN, g.BLUE))
    buffer = io.BytesIO()
    red.save(buffer, format="HEIF", save_all=True, append_images=[green, blue], primary_index=1)
    return workspace.add("heif/collection.heic", buffer.getvalue())


@pytest.mark.parametrize(("page", "colour"), [(0, g.GREEN), (1, g.RED), (2, g.BLUE)])
def test_page_zero_is_the_primary_image_then_the_others_in_order(
    renderer: Renderer, workspace: Workspace, collection: str, page: int, colour: g.RGBA
) -> None:
    """Given a HEIC of three images whose primary (the one viewers show) is the second,
    when page 0, 1 and 2 are asked for, then page 0 is the primary and the others follow in
    file order."""
    spec = workspace.job(collection, [OutputSpec(32, 16, "png")], page=page)

    [result] = workspace.render(renderer, spec)

    assert_colour_at(workspace.out / result.path, [(16, 8)], colour, LOSSY)


def test_a_page_beyond_the_last_image_says_how_many_there_are(
    renderer: Renderer, workspace: Workspace, collection: str
) -> None:
    """Given a HEIC of three images, when page 3 is asked for, then page_out_of_range says
    there are 3 images, and no output is written."""
    spec = workspace.job(collection, [OutputSpec(32, 16, "png")], page=3)

    with pytest.raises(PageOutOfRange, match="the HEIC has 3 images"):
        workspace.render(renderer, spec)
    assert workspace.files(spec) == []


def test_the_declared_size_is_read_from_the_primary_items_ispe() -> None:
    """The pixel check before decoding reads the ``ispe`` property of the primary image."""
    data = quadrants("avif", 64, 32)

    assert declared_size(data, "avif") == (64, 32)
    assert declared_size(with_ispe(data, 30000, 30000), "avif") == (30000, 30000)


@pytest.mark.parametrize("kind", KINDS)
def test_a_pixel_flood_is_refused_before_any_decoder_sees_it(
    renderer: Renderer, workspace: Workspace, kind: str
) -> None:
    """Given a file whose header declares 30000x30000 pixels and that holds no image data
    at all (cut right after its header boxes, so libheif could not even open it), when
    rendered, then it is too_many_pixels: the declared size was checked first."""
    data = with_ispe(quadrants(kind), 30000, 30000)
    header_only = data[: data.find(b"mdat") - 4]
    name = workspace.add(f"heif/flood.{kind}", header_only)
    spec = workspace.job(name, [OutputSpec(64, 64, "png")])

    start = time.monotonic()
    with pytest.raises(TooManyPixels, match="30000x30000") as caught:
        workspace.render(renderer, spec)

    assert "PREVIEW_MAX_PIXELS" in caught.value.message
    assert time.monotonic() - start < 5
    assert workspace.files(spec) == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_declaring_fewer_pixels_than_it_holds_is_refused(
    renderer: Renderer, workspace: Workspace, kind: str
) -> None:
    """Given a 1024x768 picture whose header declares 64x48, under a pixel cap of 10000,
    when rendered, then it is corrupt_source: the decoded size must be the declared one,
    which the cap was checked against."""
    data = with_ispe(quadrants(kind, 1024, 768), 64, 48)
    name = workspace.add(f"heif/liar.{kind}", data)
    spec = workspace.job(name, [OutputSpec(64, 64, "png")])
    capped = Renderer(dataclasses.replace(workspace.settings, max_pixels=10_000), processes=1)
    try:
        with pytest.raises(CorruptSource, match="declares 64x48 pixels but holds 1024x768"):
            workspace.render(capped, spec)
    finally:
        capped.close()
    assert workspace.files(spec) == []


CORRUPT: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda data: g.truncated(data),
    "header-then-garbage": lambda data: data[:40] + g.random_bytes(2048),
    "image-data-zeroed": lambda data: (
        data[: data.find(b"mdat") + 4] + bytes(len(data) - data.find(b"mdat") - 4)
    ),
}


@pytest.mark.parametrize("damage", list(CORRUPT))
@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_file_is_corrupt_source_and_the_pool_goes_on(
    renderer: Renderer, workspace: Workspace, kind: str, damage: str
) -> None:
    """Given a HEIC or AVIF cut in half, or whose boxes are garbage, or whose image data
    is all zeros, when rendered, then it fails with corrupt_source (permanent, without
    libheif's words), no output is left, and the next job renders."""
    data = CORRUPT[damage](quadrants(kind, 256, 128))
    name = workspace.add(f"heif/{damage}.{kind}", data)
    spec = workspace.job(name, [OutputSpec(64, 64, "png")])

    with pytest.raises(CorruptSource) as caught:
        workspace.render(renderer, spec)

    assert not caught.value.retryable
    assert kind.upper() in caught.value.message
    assert workspace.files(spec) == []
    good = workspace.add(f"heif/good.{kind}", quadrants(kind))
    [result] = workspace.render(renderer, workspace.job(good, [OutputSpec(64, 32, "png")]))
    assert_quadrants(workspace.out / result.path, 64, 32)


@pytest.mark.parametrize(
    ("brands", "item", "expected"),
    [
        (b"heic\0\0\0\0mif1heic", b"hvc1", "heic"),
        (b"avif\0\0\0\0avifmif1miaf", b"av01", "avif"),
        (b"mif1\0\0\0\0mif1miaf", b"av01", "avif"),
        (b"mif1\0\0\0\0mif1", b"hvc1", "heic"),
        (b"msf1\0\0\0\0msf1hevc", b"hvc1", "heic"),
        (b"avis\0\0\0\0avismsf1", b"av01", "avif"),
        (b"isom\0\0\0\0isomavc1mp41", b"avc1", None),
        (b"jp2 \0\0\0\0jp2 ", b"jp2h", None),
    ],
)
def test_the_ftyp_brands_name_the_format(brands: bytes, item: bytes, expected: str | None) -> None:
    """The ``ftyp`` brands decide: HEVC brands are HEIC, AV1 ones AVIF; a file branded
    only ``mif1``/``msf1`` is AVIF when it declares an ``av01`` item; other ISO-BMFF files
    (MP4 video, JPEG 2000) are not images we read."""
    ftyp = struct.pack(">I", 8 + len(brands)) + b"ftyp" + brands
    infe = b"\0\0\0\x15infe\x02\0\0\0\0\x01\0\0" + item + b"\0"

    assert sniff(ftyp + b"\0\0\0\x30meta" + infe) == expected

"""AVIF outputs, checked with a decoder that is neither ImageMagick nor libheif.

The outputs are read back with Pillow's own AVIF plugin (libavif with dav1d, bundled in
Pillow's wheels since 11.2); pillow-heif's wheels have no AV1 decoder.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import imagegen as g
import pytest
from PIL import Image, features
from render_helpers import Workspace, close_to

from dramatiq_preview.errors import RenderMemoryExceeded
from dramatiq_preview.models import OutputSpec
from dramatiq_preview.rendering import Renderer, icc

QUAD = (g.RED, g.GREEN, g.BLUE, g.YELLOW)
SOURCES: dict[str, Callable[[], bytes]] = {
    "png": lambda: g.png(g.quadrants(64, 32)),
    "jpeg": lambda: g.jpeg(g.quadrants(64, 32)),
    "gif": lambda: g.gif([g.quadrants(64, 32)]),
    "pdf": lambda: g.pdf([QUAD], size=(64, 32)),
}


def decode(path: Path) -> Image.Image:
    """The output at ``path``, decoded by Pillow's AVIF plugin."""
    assert features.check("avif"), "these tests need Pillow >= 11.2 (its AVIF plugin)"
    image = Image.open(io.BytesIO(path.read_bytes()))
    assert image.format == "AVIF"
    image.load()
    return image


def rgb_at(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    return tuple(image.convert("RGB").getpixel((x, y)))  # type: ignore[arg-type]


def mean_error(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference of two same-sized images, per 8-bit RGB sample."""
    pa, pb = a.convert("RGB").tobytes(), b.convert("RGB").tobytes()
    assert len(pa) == len(pb)
    return sum(abs(x - y) for x, y in zip(pa, pb, strict=True)) / len(pa)


@pytest.mark.parametrize("kind", list(SOURCES))
def test_an_avif_output_decodes_elsewhere_with_the_requested_size_and_colours(
    renderer: Renderer, workspace: Workspace, kind: str
) -> None:
    """Given a 64x32 four-colour image, when rendered as AVIF into a 40x40 box, then the
    file is an AVIF of 40x20 that another decoder reads, each quadrant where it belongs."""
    name = workspace.add(f"avif/q.{kind}", SOURCES[kind]())
    spec = workspace.job(name, [OutputSpec(40, 40, "avif")])

    [result] = workspace.render(renderer, spec)

    path = workspace.out / result.path
    assert result.path == f"{spec.job_id}/0.avif"
    assert (result.format, result.width, result.height) == ("avif", 40, 20)
    assert result.bytes == path.stat().st_size
    assert path.read_bytes()[4:12] == b"ftypavif"
    image = decode(path)
    assert image.size == (40, 20)
    for (x, y), colour in zip([(5, 4), (34, 4), (5, 15), (34, 15)], QUAD, strict=True):
        assert close_to(rgb_at(image, x, y), colour[:3]), (x, y, rgb_at(image, x, y))


def test_cover_gives_exactly_the_box(renderer: Renderer, workspace: Workspace) -> None:
    """Given an 80x40 image, when rendered as AVIF with cover into 30x30, then it is
    exactly 30x30 (the centre: green on the left, blue on the right)."""
    stripes = g.stripes(80, 40, (g.RED, g.GREEN, g.BLUE, g.YELLOW))
    name = workspace.add("avif/stripes.png", g.png(stripes, alpha=False))
    spec = workspace.job(name, [OutputSpec(30, 30, "avif", fit="cover")])

    [result] = workspace.render(renderer, spec)

    image = decode(workspace.out / result.path)
    assert image.size == (30, 30) == (result.width, result.height)
    assert close_to(rgb_at(image, 4, 15), g.GREEN[:3])
    assert close_to(rgb_at(image, 25, 15), g.BLUE[:3])


def test_a_higher_quality_gives_a_larger_and_closer_file(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given grey noise, when rendered as AVIF at quality 20 and at 90, then the quality
    90 file is larger and its pixels are closer to the source's."""
    # Grey: colour noise is mostly lost to 4:2:0 chroma at any quality.
    pixels = [[(v, v, v, 255) for v, _, _, _ in row] for row in g.noise(96, 96, seed=15)]
    name = workspace.add("avif/noise.png", g.png(pixels, alpha=False))
    spec = workspace.job(
        name, [OutputSpec(96, 96, "avif", quality=20), OutputSpec(96, 96, "avif", quality=90)]
    )

    low, high = workspace.render(renderer, spec)

    reference = Image.open(io.BytesIO(g.png(pixels, alpha=False)))
    assert high.bytes > 2 * low.bytes, (low.bytes, high.bytes)
    low_error = mean_error(decode(workspace.out / low.path), reference)
    high_error = mean_error(decode(workspace.out / high.path), reference)
    assert high_error < low_error / 2, (low_error, high_error)


def test_alpha_is_kept(renderer: Renderer, workspace: Workspace) -> None:
    """Given a PNG whose right half is transparent, when rendered as AVIF, then the file
    has an alpha channel: the right half transparent, the left half opaque red."""
    pixels = [[g.RED if x < 32 else g.CLEAR for x in range(64)] for _ in range(32)]
    name = workspace.add("avif/half-clear.png", g.png(pixels))
    spec = workspace.job(name, [OutputSpec(64, 32, "avif")])

    [result] = workspace.render(renderer, spec)

    image = decode(workspace.out / result.path)
    assert image.mode == "RGBA"
    left, right = image.getpixel((8, 16)), image.getpixel((56, 16))
    assert isinstance(left, tuple) and isinstance(right, tuple)
    assert close_to(left[:3], g.RED[:3]) and left[3] == 255, left
    assert right[3] == 0, right


def test_an_opaque_source_gives_no_alpha_channel(renderer: Renderer, workspace: Workspace) -> None:
    """Given an opaque JPEG, when rendered as AVIF, then the file has no alpha channel."""
    name = workspace.add("avif/opaque.jpg", g.jpeg(g.quadrants(64, 32)))
    spec = workspace.job(name, [OutputSpec(64, 32, "avif")])

    [result] = workspace.render(renderer, spec)

    assert decode(workspace.out / result.path).mode == "RGB"


def test_the_output_is_upright_and_carries_no_metadata(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given a sideways JPEG with EXIF orientation 6 and an ICC profile, when rendered as
    AVIF, then the picture is upright and the file holds no EXIF, XMP or ICC profile, only
    the nclx box that says sRGB."""
    data = g.with_icc(g.jpeg(g.quadrants(64, 32), orientation=6), icc.srgb())
    name = workspace.add("avif/sideways.jpg", data)
    spec = workspace.job(name, [OutputSpec(64, 64, "avif")])

    [result] = workspace.render(renderer, spec)

    path = workspace.out / result.path
    image = decode(path)
    assert image.size == (32, 64)
    assert close_to(rgb_at(image, 3, 3), g.BLUE[:3])
    assert close_to(rgb_at(image, 28, 3), g.RED[:3])
    assert "exif" not in image.info and "xmp" not in image.info
    assert "icc_profile" not in image.info
    raw = path.read_bytes()
    assert b"Exif" not in raw and b"xmpmeta" not in raw and b"prof" not in raw
    assert b"colrnclx" in raw


@pytest.mark.slow
def test_the_largest_box_fits_in_the_memory_cap(renderer: Renderer, workspace: Workspace) -> None:
    """Given a noisy image, when enlarged to a 4096x4096 AVIF (the largest output the schema
    allows) under the default memory cap, then the render succeeds and the file decodes."""
    name = workspace.add("avif/big-noise.png", g.png(g.noise(256, 256, seed=4), alpha=False))
    spec = workspace.job(name, [OutputSpec(4096, 4096, "avif")])

    [result] = workspace.render(renderer, spec, timeout=60)

    assert decode(workspace.out / result.path).size == (4096, 4096)


@pytest.mark.slow
def test_an_encoder_out_of_memory_fails_as_memory_limit(workspace: Workspace) -> None:
    """Given a 400 MiB render cap, when a 4096x4096 AVIF is asked (libaom cannot allocate
    its frame buffers under it), then the job fails as memory_limit (permanent), not as a
    crash, and the pool renders the next AVIF."""
    settings = replace(workspace.settings, render_memory_mb=400)
    pool = Renderer(settings, processes=1)
    name = workspace.add("avif/cap-noise.png", g.png(g.noise(256, 256, seed=5), alpha=False))
    try:
        spec = workspace.job(name, [OutputSpec(4096, 4096, "avif")])
        with pytest.raises(RenderMemoryExceeded, match="PREVIEW_RENDER_MEMORY_MB") as caught:
            workspace.render(pool, spec, timeout=60)
        assert not caught.value.retryable
        assert workspace.files(spec) == []

        [small] = workspace.render(pool, workspace.job(name, [OutputSpec(64, 64, "avif")]))
        assert decode(workspace.out / small.path).size == (64, 64)
    finally:
        pool.close()

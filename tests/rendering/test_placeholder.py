"""Placeholders: a BlurHash and the average colour of a job's first output.

Mean colours here are taken in linear light and brought back to sRGB, as the placeholder's
``color`` is (docs/rendering.md): that is the mean a blur shows.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import blurhash  # type: ignore[import-untyped]
import imagegen as g
import pytest
from PIL import Image
from render_helpers import Workspace

from dramatiq_preview.models import OutputSpec, Placeholder
from dramatiq_preview.rendering import Renderer, render_in_process
from dramatiq_preview.rendering.pool import _placeholder
from dramatiq_preview.sources import open_source
from dramatiq_preview.storage import destinations

#: How far (per 8-bit sRGB channel) the BlurHash's mean and ``color`` may be from the
#: output's own mean: the placeholder is computed from a copy of at most 32 px, and the
#: BlurHash keeps its mean to 8 bits and its 11 other terms to 19 levels each.
TOLERANCE = 6


def linear_mean(pixels: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """The mean of 8-bit sRGB ``pixels`` in linear light, as 8-bit sRGB."""
    r, g_, b = (
        blurhash.linear_to_srgb(sum(blurhash.srgb_to_linear(p[c]) for p in pixels) / len(pixels))
        for c in range(3)
    )
    return r, g_, b


def output_mean(path: Path) -> tuple[int, int, int]:
    """The mean colour of an output file, transparent parts on white."""
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        flat = Image.new("RGB", image.size, (255, 255, 255))
        rgba = image.convert("RGBA")
        flat.paste(rgba, mask=rgba.getchannel("A"))
        data = flat.tobytes()
    return linear_mean([tuple(data[i : i + 3]) for i in range(0, len(data), 3)])  # type: ignore[misc]


def blurhash_mean(hash_: str) -> tuple[int, int, int]:
    """The mean colour of the BlurHash, decoded by the library at 32x24."""
    rows = blurhash.decode(hash_, 32, 24)
    return linear_mean([tuple(p) for row in rows for p in row])


def rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def near(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = TOLERANCE) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def gradient(width: int, height: int) -> g.Pixels:
    """Red across, green down, a constant blue: every output mean is a different colour."""
    return [
        [(x * 255 // (width - 1), y * 255 // (height - 1), 96, 255) for x in range(width)]
        for y in range(height)
    ]


@pytest.mark.parametrize("fmt", ["png", "avif", "jpeg"])
def test_the_blurhash_and_the_colour_match_the_first_outputs_mean(
    renderer: Renderer, workspace: Workspace, fmt: str
) -> None:
    """Given a gradient and a job asking for a placeholder, when rendered, then the first
    output has a 4x3 BlurHash that the library decodes to the output's mean colour, and a
    ``color`` of that mean (within TOLERANCE per channel)."""
    name = workspace.add("placeholder/gradient.png", g.png(gradient(64, 48), alpha=False))
    spec = replace(workspace.job(name, [OutputSpec(128, 128, fmt)]), placeholder=True)

    [result] = workspace.render(renderer, spec)

    assert result.placeholder is not None
    hash_, color = result.placeholder.blurhash, result.placeholder.color
    assert blurhash.components(hash_) == (4, 3) and len(hash_) == 28
    mean = output_mean(workspace.out / result.path)
    assert near(blurhash_mean(hash_), mean), (blurhash_mean(hash_), mean)
    assert near(rgb(color), mean), (color, mean)


def test_the_placeholder_is_the_first_outputs_not_the_largest(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given four stripes (red, green, blue, yellow) and a first output that is a small
    cover crop of the middle (green and blue) after a larger contain output, when rendered,
    then the placeholder is of the green and blue crop, and only the first output has one."""
    stripes = g.png(g.stripes(80, 40, (g.RED, g.GREEN, g.BLUE, g.YELLOW)), alpha=False)
    name = workspace.add("placeholder/stripes.png", stripes)
    spec = replace(
        workspace.job(name, [OutputSpec(20, 40, "png", fit="cover"), OutputSpec(400, 400, "png")]),
        placeholder=True,
    )

    first, second = workspace.render(renderer, spec)

    assert first.placeholder is not None and second.placeholder is None
    assert near(rgb(first.placeholder.color), output_mean(workspace.out / first.path))
    assert near(rgb(first.placeholder.color), (0, 188, 188)), first.placeholder.color


def test_transparent_parts_count_as_white(renderer: Renderer, workspace: Workspace) -> None:
    """Given a PNG whose right half is transparent and left half red, when rendered as WebP
    with a placeholder, then the colour is red and white mixed as light mixes: #ffbcbc."""
    pixels = [[g.RED if x < 32 else g.CLEAR for x in range(64)] for _ in range(32)]
    name = workspace.add("placeholder/half-clear.png", g.png(pixels))
    spec = replace(workspace.job(name, [OutputSpec(64, 32, "webp")]), placeholder=True)

    [result] = workspace.render(renderer, spec)

    assert result.placeholder is not None
    assert near(rgb(result.placeholder.color), (255, 188, 188), 2), result.placeholder.color


def test_black_and_white_halves_mix_as_light(renderer: Renderer, workspace: Workspace) -> None:
    """Given a greyscale PNG, black on the left half and white on the right, when rendered
    with a placeholder, then the colour is #bcbcbc (half the light), not #808080, and the
    BlurHash's mean is the same grey."""
    name = workspace.add("placeholder/halves.png", g.png_grey_fast(50, 30))
    spec = replace(workspace.job(name, [OutputSpec(50, 30, "png")]), placeholder=True)

    [result] = workspace.render(renderer, spec)

    assert result.placeholder is not None
    assert result.placeholder.color == "#bcbcbc"
    assert near(blurhash_mean(result.placeholder.blurhash), (188, 188, 188))


def test_no_placeholder_unless_asked(renderer: Renderer, workspace: Workspace) -> None:
    """Given a job without ``placeholder``, when rendered, then no output has one."""
    name = workspace.add("placeholder/plain.png", g.png(gradient(32, 24), alpha=False))
    spec = workspace.job(name, [OutputSpec(32, 32, "png"), OutputSpec(16, 16, "avif")])

    results = workspace.render(renderer, spec)

    assert [r.placeholder for r in results] == [None, None]


def test_the_pool_and_the_calling_process_agree(renderer: Renderer, workspace: Workspace) -> None:
    """Given one job, when rendered by the pool and by render_in_process, then both give
    the same placeholder."""
    name = workspace.add("placeholder/both.png", g.png(gradient(40, 30), alpha=False))
    spec = replace(workspace.job(name, [OutputSpec(40, 40, "webp")]), placeholder=True)

    [pooled] = workspace.render(renderer, spec)
    with open_source(spec, workspace.settings) as source:
        [local] = render_in_process(spec, source, destinations(workspace.out, spec))

    assert pooled.placeholder == local.placeholder is not None


@pytest.mark.parametrize(
    "sent",
    [
        None,
        "LEHV6nWB2yk8pyo0adR*.7kCMdnj",
        {"blurhash": "LEHV6nWB2yk8pyo0adR*.7kCMdnj"},
        {"blurhash": "LEHV6nWB2yk8pyo0adR*.7kCMdnj", "color": "#ABCDEF"},
        {"blurhash": "LEHV6nWB2yk8pyo0adR*.7kCMdnj", "color": "red"},
        {"blurhash": "UEHV6nWB2yk8pyo0adR*.7kCMdnj", "color": "#abcdef"},
        {"blurhash": "LEHV6nWB2yk8pyo0adR*.7kCMdn", "color": "#abcdef"},
        {"blurhash": "LEHV6nWB2yk8pyo0adR*.7kCMdn<", "color": "#abcdef"},
        {"blurhash": 28, "color": "#abcdef"},
        {"blurhash": "LEHV6nWB2yk8pyo0adR*.7kCMdnj", "color": "#abcdef", "extra": "x"},
    ],
)
def test_the_worker_takes_only_a_well_formed_placeholder_from_a_child(sent: object) -> None:
    """Given what a render child taken over by a hostile file might send as a placeholder
    (not a 4x3 BlurHash, not a lower-case #rrggbb, extra keys), when the pool reads it, then
    it is refused (the render fails as render_crashed), never put into a job's result."""
    assert _placeholder(sent) is None


def test_the_worker_takes_a_well_formed_placeholder() -> None:
    """Given a well-formed placeholder from a child, when the pool reads it, then it is
    kept as sent."""
    sent = {"blurhash": "LEHV6nWB2yk8pyo0adR*.7kCMdnj", "color": "#abcdef"}

    assert _placeholder(sent) == Placeholder(**sent)

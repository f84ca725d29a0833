"""Every input format to every output format, with real pixel checks."""

from __future__ import annotations

import struct
from collections.abc import Callable

import imagegen as g
import pytest
from render_helpers import Workspace, assert_colour_at, close_to, pixel, size_of

from dramatiq_preview.errors import PageOutOfRange
from dramatiq_preview.models import OutputSpec
from dramatiq_preview.rendering import Renderer

QUAD = (g.RED, g.GREEN, g.BLUE, g.YELLOW)


def _quad_pdf() -> bytes:
    return g.pdf([QUAD], size=(64, 32))


INPUTS: dict[str, Callable[[], bytes]] = {
    "jpeg": lambda: g.jpeg(g.quadrants(64, 32)),
    "png": lambda: g.png(g.quadrants(64, 32)),
    "webp": lambda: g.webp(g.quadrants(64, 32)),
    "gif": lambda: g.gif([g.quadrants(64, 32)]),
    "tiff": lambda: g.tiff([g.quadrants(64, 32)]),
    "bmp": lambda: g.bmp(g.quadrants(64, 32)),
    "pdf": _quad_pdf,
}
MAGIC = {"webp": b"RIFF", "jpeg": b"\xff\xd8\xff", "png": b"\x89PNG"}


def _metadata_free(data: bytes, fmt: str) -> bool:
    if fmt == "jpeg":
        return b"Exif\x00\x00" not in data and b"http://ns.adobe.com/xap" not in data
    if fmt == "png":
        return not any(c in data for c in (b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"))
    return b"EXIF" not in data and b"XMP " not in data


@pytest.mark.parametrize("output_format", ["webp", "jpeg", "png"])
@pytest.mark.parametrize("input_format", list(INPUTS))
def test_every_input_to_every_output(
    renderer: Renderer, workspace: Workspace, input_format: str, output_format: str
) -> None:
    """Given a 64x32 four-colour image, when rendered into a 40x40 box, then the output is
    40x20 in the requested format, stripped, with each quadrant's colour where it belongs."""
    name = workspace.add(f"matrix/q.{input_format}", INPUTS[input_format]())
    spec = workspace.job(name, [OutputSpec(40, 40, output_format)])

    [result] = workspace.render(renderer, spec)

    path = workspace.out / result.path
    data = path.read_bytes()
    assert data.startswith(MAGIC[output_format])
    assert result.path == f"{spec.job_id}/0.{ {'jpeg': 'jpg'}.get(output_format, output_format) }"
    assert (result.width, result.height, result.bytes) == (40, 20, len(data))
    assert size_of(path) == (40, 20)
    assert _metadata_free(data, output_format)
    for (x, y), colour in zip([(5, 4), (34, 4), (5, 15), (34, 15)], QUAD, strict=True):
        assert close_to(pixel(path, x, y)[:3], colour[:3]), (x, y, pixel(path, x, y))


STRIPES = (g.RED, g.GREEN, g.BLUE, g.YELLOW)


@pytest.fixture
def striped(workspace: Workspace) -> str:
    """An 80x40 image of four vertical stripes, 20 px each."""
    return workspace.add("fit/stripes.png", g.png(g.stripes(80, 40, STRIPES)))


def test_contain_fits_inside_the_box(
    renderer: Renderer, workspace: Workspace, striped: str
) -> None:
    """Given 80x40 stripes, when fitted into 40x40 with contain, then all four stripes show in
    a 40x20 image (no padding, aspect kept)."""
    spec = workspace.job(striped, [OutputSpec(40, 40, "png", fit="contain")])
    [result] = workspace.render(renderer, spec)
    path = workspace.out / result.path
    assert size_of(path) == (40, 20)
    for i, colour in enumerate(STRIPES):
        assert close_to(pixel(path, i * 10 + 5, 10)[:3], colour[:3], 10)


def test_cover_crops_the_centre(renderer: Renderer, workspace: Workspace, striped: str) -> None:
    """Given 80x40 stripes, when covering 40x40, then the outer stripes are cropped away and
    the middle two fill the square."""
    spec = workspace.job(striped, [OutputSpec(40, 40, "png", fit="cover")])
    [result] = workspace.render(renderer, spec)
    path = workspace.out / result.path
    assert size_of(path) == (40, 40)
    assert close_to(pixel(path, 5, 20)[:3], g.GREEN[:3], 10)
    assert close_to(pixel(path, 34, 20)[:3], g.BLUE[:3], 10)


def test_cover_of_a_panorama_shows_its_centre(renderer: Renderer, workspace: Workspace) -> None:
    """Given a 400x20 panorama of five 80 px stripes, when covered into 16x16 (the source
    is cut first: scaling it whole would make 20x the box), then the preview is the middle
    stripe, edge to edge."""
    colours = (g.RED, g.GREEN, g.BLUE, g.YELLOW, g.WHITE)
    name = workspace.add("fit/panorama.png", g.png(g.stripes(400, 20, colours)))
    spec = workspace.job(name, [OutputSpec(16, 16, "png", fit="cover")])
    [result] = workspace.render(renderer, spec)
    path = workspace.out / result.path

    assert (result.width, result.height) == (16, 16)
    assert_colour_at(path, [(0, 0), (15, 0), (8, 8), (0, 15), (15, 15)], g.BLUE)


def test_cover_of_a_one_pixel_strip_enlarges_only_what_shows(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given a 1x11 strip whose middle row is blue, when covered into 2048x2048 (found by
    fuzzing: scaling it whole needs a 2048x22528 image), then the preview is that row."""
    rows = [[g.RED]] * 5 + [[g.BLUE]] + [[g.RED]] * 5
    name = workspace.add("fit/strip.png", g.png(rows))
    spec = workspace.job(name, [OutputSpec(2048, 2048, "png", fit="cover")])
    [result] = workspace.render(renderer, spec)

    assert (result.width, result.height) == (2048, 2048)
    assert close_to(pixel(workspace.out / result.path, 1024, 1024)[:3], g.BLUE[:3], 5)


def test_fill_that_grows_one_axis_and_shrinks_the_other(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given a 16x64000 image, when filled into 4096x2 (found by fuzzing: one Mitchell
    resize of both axes ran out of memory), then the 4096x2 output renders."""
    name = workspace.add("fit/tall.png", g.png_solid_fast(16, 64000))
    spec = workspace.job(name, [OutputSpec(4096, 2, "png", fit="fill")])
    [result] = workspace.render(renderer, spec)

    assert (result.width, result.height) == (4096, 2)
    assert pixel(workspace.out / result.path, 2048, 1)[:3] == (0, 0, 0)


def test_a_webp_with_cut_trailing_metadata_renders(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given a WebP whose trailing XMP chunk is a byte short, then it renders like its
    image (decoders forgive this; only cut image chunks are refused)."""
    name = workspace.add("formats/cut-xmp.webp", g.webp_with_cut_metadata())
    [result] = workspace.render(renderer, workspace.job(name, [OutputSpec(16, 16, "png")]))

    assert (result.width, result.height) == (16, 8)
    assert close_to(pixel(workspace.out / result.path, 8, 4)[:3], g.RED[:3], 5)


def test_fill_stretches_to_the_box(renderer: Renderer, workspace: Workspace, striped: str) -> None:
    """Given 80x40 stripes, when filling 40x40, then all four stripes are squeezed in."""
    spec = workspace.job(striped, [OutputSpec(40, 40, "png", fit="fill")])
    [result] = workspace.render(renderer, spec)
    path = workspace.out / result.path
    assert size_of(path) == (40, 40)
    for i, colour in enumerate(STRIPES):
        assert close_to(pixel(path, i * 10 + 5, 30)[:3], colour[:3], 10)


def test_small_sources_are_enlarged_to_the_box(renderer: Renderer, workspace: Workspace) -> None:
    """Given a 16x8 image, when rendered into 64x64 (contain), then it is 64x32."""
    name = workspace.add("fit/small.png", g.png(g.quadrants(16, 8)))
    spec = workspace.job(name, [OutputSpec(64, 64, "webp"), OutputSpec(10, 30, "png", "cover")])
    big, cover = workspace.render(renderer, spec)
    assert (big.width, big.height) == (64, 32)
    assert (cover.width, cover.height) == (10, 30)


@pytest.mark.parametrize(
    ("orientation", "size", "top_left", "top_right"),
    [
        (1, (64, 32), g.RED, g.GREEN),
        (3, (64, 32), g.YELLOW, g.BLUE),  # rotated 180
        (6, (32, 64), g.BLUE, g.RED),  # rotate 90 clockwise to display
        (8, (32, 64), g.GREEN, g.YELLOW),  # rotate 90 counter-clockwise
    ],
)
def test_exif_orientation_is_applied(
    renderer: Renderer,
    workspace: Workspace,
    orientation: int,
    size: tuple[int, int],
    top_left: g.RGBA,
    top_right: g.RGBA,
) -> None:
    """Given a JPEG stored sideways with an EXIF Orientation tag, when rendered, then the
    output is upright and carries no EXIF."""
    name = workspace.add(
        f"orient/{orientation}.jpg", g.jpeg(g.quadrants(64, 32), orientation=orientation)
    )
    spec = workspace.job(name, [OutputSpec(64, 64, "jpeg")])
    [result] = workspace.render(renderer, spec)
    path = workspace.out / result.path
    assert size_of(path) == size
    assert close_to(pixel(path, 3, 3)[:3], top_left[:3])
    assert close_to(pixel(path, size[0] - 4, 3)[:3], top_right[:3])
    assert b"Exif\x00\x00" not in path.read_bytes()


@pytest.mark.parametrize("kind", ["gif", "tiff"])
@pytest.mark.parametrize("page", [0, 1, 2])
def test_the_requested_frame_is_rendered(
    renderer: Renderer, workspace: Workspace, kind: str, page: int
) -> None:
    """Given a three-frame GIF/TIFF (red, green, blue), when page N is asked, then frame N's
    colour is rendered."""
    frames = [g.solid(24, 12, c) for c in (g.RED, g.GREEN, g.BLUE)]
    data = g.gif(frames) if kind == "gif" else g.tiff(frames)
    name = workspace.add(f"frames/three.{kind}", data)
    spec = workspace.job(name, [OutputSpec(24, 24, "png")], page=page)
    [result] = workspace.render(renderer, spec)
    expected = (g.RED, g.GREEN, g.BLUE)[page]
    assert close_to(pixel(workspace.out / result.path, 10, 5)[:3], expected[:3], 5)


def test_gif_frames_are_composited_over_earlier_ones(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given a GIF whose second frame is transparent on the left, when page 1 is asked, then
    the left shows the first frame through it (frames are coalesced, not read alone)."""
    first = g.solid(20, 10, g.RED)
    second = [[g.CLEAR if x < 10 else g.BLUE for x in range(20)] for _ in range(10)]
    name = workspace.add("frames/delta.gif", g.gif([first, second], transparent=True))
    spec = workspace.job(name, [OutputSpec(20, 20, "png")], page=1)
    [result] = workspace.render(renderer, spec)
    path = workspace.out / result.path
    assert close_to(pixel(path, 3, 5)[:3], g.RED[:3], 5)
    assert close_to(pixel(path, 16, 5)[:3], g.BLUE[:3], 5)


def test_a_gif_frame_smaller_than_its_screen_is_shown_on_the_screen(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given a one-frame GIF whose 10x10 blue frame sits at (30, 10) on a 40x20 screen,
    then the preview is the 40x20 screen as a browser shows it: blue at the frame's place,
    transparent elsewhere (not the 10x10 frame alone)."""
    data = bytearray(g.gif([g.solid(10, 10, g.BLUE)], screen=(40, 20)))
    at = data.index(b"\x2c\x00\x00\x00\x00")
    data[at + 1 : at + 5] = struct.pack("<HH", 30, 10)
    name = workspace.add("frames/placed.gif", bytes(data))
    [result] = workspace.render(renderer, workspace.job(name, [OutputSpec(40, 40, "png")]))
    path = workspace.out / result.path

    assert (result.width, result.height) == (40, 20)
    assert close_to(pixel(path, 35, 15), g.BLUE, 5)
    assert pixel(path, 5, 5)[3] == 0, pixel(path, 5, 5)


def test_a_gif_frame_larger_than_its_screen_is_shown_whole(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given a one-frame GIF whose 40x20 frame (red left, blue right) is larger than its
    10x10 screen, then the preview is the whole frame, as browsers show it (they make the
    screen the frame's size), not the screen's corner of it."""
    name = workspace.add(
        "frames/oversized.gif", g.gif([g.stripes(40, 20, (g.RED, g.BLUE))], screen=(10, 10))
    )
    [result] = workspace.render(renderer, workspace.job(name, [OutputSpec(80, 80, "png")]))
    path = workspace.out / result.path

    assert (result.width, result.height) == (80, 40)
    assert close_to(pixel(path, 10, 20)[:3], g.RED[:3], 5)
    assert close_to(pixel(path, 70, 20)[:3], g.BLUE[:3], 5)


@pytest.mark.parametrize("page", [0, 1, 2])
def test_animated_webp_frames_are_pages_composited_like_gif(
    renderer: Renderer, workspace: Workspace, page: int
) -> None:
    """Given an animated WebP: a red 40x20 frame, then a blue 10x10 delta at (30, 10), then a
    green 10x10 delta at (0, 0), when page N is asked, then the output is the whole 40x20
    canvas as a browser shows frame N, earlier frames showing around the delta."""
    data = g.animated_webp(
        [
            (g.solid(40, 20, g.RED), (0, 0)),
            (g.solid(10, 10, g.BLUE), (30, 10)),
            (g.solid(10, 10, g.GREEN), (0, 0)),
        ]
    )
    name = workspace.add("frames/animated.webp", data)
    spec = workspace.job(name, [OutputSpec(40, 40, "png")], page=page)
    [result] = workspace.render(renderer, spec)
    path = workspace.out / result.path

    assert (result.width, result.height) == (40, 20)
    assert close_to(pixel(path, 20, 5)[:3], g.RED[:3], 5)
    assert close_to(pixel(path, 35, 15)[:3], (g.BLUE if page >= 1 else g.RED)[:3], 5)
    assert close_to(pixel(path, 5, 5)[:3], (g.GREEN if page == 2 else g.RED)[:3], 5)


def test_animated_webp_page_beyond_the_last_says_how_many_frames(
    renderer: Renderer, workspace: Workspace
) -> None:
    data = g.animated_webp([(g.solid(8, 8, g.RED), (0, 0)), (g.solid(8, 8, g.BLUE), (0, 0))])
    name = workspace.add("frames/two.webp", data)
    with pytest.raises(PageOutOfRange, match="the source has 2 frames"):
        workspace.render(renderer, workspace.job(name, [OutputSpec(8, 8, "png")], page=2))


@pytest.mark.parametrize("page", [0, 1, 2])
def test_the_requested_pdf_page_is_rendered(
    renderer: Renderer, workspace: Workspace, page: int
) -> None:
    """Given a three-page PDF (red, green, blue), when page N is asked, then page N's colour
    is rendered at the requested size."""
    name = workspace.add("pdf/three.pdf", g.pdf([g.RED, g.GREEN, g.BLUE], size=(200, 100)))
    spec = workspace.job(name, [OutputSpec(400, 400, "png")], page=page)
    [result] = workspace.render(renderer, spec)
    path = workspace.out / result.path
    assert size_of(path) == (400, 200)
    expected = (g.RED, g.GREEN, g.BLUE)[page]
    assert close_to(pixel(path, 200, 100)[:3], expected[:3], 5)


def test_a_pdf_page_shows_its_crop_box(renderer: Renderer, workspace: Workspace) -> None:
    """Given a 200x100 pt page of four quadrants whose CropBox is the top-left quadrant,
    then the preview is that quadrant alone (what viewers show), at the box's size."""
    data = g.pdf([QUAD], size=(200, 100), crop_box=(0, 50, 100, 100))
    name = workspace.add("pdf/cropped.pdf", data)
    [result] = workspace.render(renderer, workspace.job(name, [OutputSpec(64, 64, "png")]))
    path = workspace.out / result.path

    assert (result.width, result.height) == (64, 32)
    assert_colour_at(path, [(2, 2), (61, 2), (2, 29), (61, 29), (32, 16)], g.RED)


def test_a_tiny_crop_box_on_a_big_page_renders_small(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given a 220x220 pt page with a 1x1 pt CropBox (found by fuzzing: the whole page was
    rasterised at the crop box's scale, 22000x22000 px), then a 100x100 preview renders."""
    name = workspace.add("pdf/pinhole.pdf", g.pdf([g.BLUE], size=(220, 220), crop_box=(0, 0, 1, 1)))
    [result] = workspace.render(renderer, workspace.job(name, [OutputSpec(100, 100, "png")]))

    assert (result.width, result.height) == (100, 100)
    assert close_to(pixel(workspace.out / result.path, 50, 50)[:3], g.BLUE[:3], 5)


def test_a_rotated_pdf_page_is_rendered_upright(renderer: Renderer, workspace: Workspace) -> None:
    """Given a 200x100 pt page of four quadrants with /Rotate 90 (clockwise), then the
    preview is 100 wide and 200 high, the top-left quadrant (red) now at the top right."""
    data = g.pdf([QUAD], size=(200, 100)).replace(b"/Type /Page ", b"/Rotate 90 /Type /Page ")
    name = workspace.add("pdf/rotated.pdf", data)
    [result] = workspace.render(renderer, workspace.job(name, [OutputSpec(200, 200, "png")]))
    path = workspace.out / result.path

    assert (result.width, result.height) == (100, 200)
    assert close_to(pixel(path, 75, 50)[:3], g.RED[:3], 5)
    assert close_to(pixel(path, 25, 150)[:3], g.YELLOW[:3], 5)


def test_pdf_page_beyond_the_last_says_how_many_pages(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given a three-page PDF, when page 3 is asked, then PageOutOfRange names 3 pages and no
    output exists."""
    name = workspace.add("pdf/three.pdf", g.pdf([g.RED, g.GREEN, g.BLUE]))
    spec = workspace.job(name, [OutputSpec(40, 40, "png")], page=3)
    with pytest.raises(PageOutOfRange, match="3 pages") as caught:
        workspace.render(renderer, spec)
    assert not caught.value.retryable
    assert workspace.files(spec) == []


def test_frame_beyond_the_last_says_how_many_frames(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given a two-frame GIF, when page 5 is asked, then PageOutOfRange names 2 frames."""
    name = workspace.add("frames/two.gif", g.gif([g.solid(4, 4, g.RED), g.solid(4, 4, g.BLUE)]))
    spec = workspace.job(name, [OutputSpec(40, 40, "png")], page=5)
    with pytest.raises(PageOutOfRange, match="2 frames"):
        workspace.render(renderer, spec)


@pytest.mark.parametrize("output_format", ["webp", "png"])
def test_alpha_is_kept_where_the_format_has_it(
    renderer: Renderer, workspace: Workspace, output_format: str
) -> None:
    """Given a PNG transparent on its left half, when rendered to WebP/PNG, then the left half
    stays transparent and the right half opaque blue."""
    half = [[g.CLEAR if x < 16 else g.BLUE for x in range(32)] for _ in range(16)]
    name = workspace.add("alpha/half.png", g.png(half))
    spec = workspace.job(name, [OutputSpec(32, 32, output_format)])
    [result] = workspace.render(renderer, spec)
    path = workspace.out / result.path
    assert pixel(path, 3, 8)[3] < 10
    assert close_to(pixel(path, 28, 8), g.BLUE, 10)


def test_alpha_is_flattened_on_white_for_jpeg(renderer: Renderer, workspace: Workspace) -> None:
    """Given a PNG transparent on its left half, when rendered to JPEG, then the left is white."""
    half = [[g.CLEAR if x < 16 else g.BLUE for x in range(32)] for _ in range(16)]
    name = workspace.add("alpha/half.png", g.png(half))
    spec = workspace.job(name, [OutputSpec(32, 32, "jpeg")])
    [result] = workspace.render(renderer, spec)
    path = workspace.out / result.path
    assert close_to(pixel(path, 3, 8)[:3], g.WHITE[:3], 12)
    assert close_to(pixel(path, 28, 8)[:3], g.BLUE[:3], 40)


def test_several_outputs_come_back_in_request_order(
    renderer: Renderer, workspace: Workspace
) -> None:
    """Given three outputs listed small, large, medium, when rendered (largest first inside),
    then results follow the request order with paths relative to the output dir."""
    name = workspace.add("multi/q.png", g.png(g.quadrants(200, 100)))
    outputs = [
        OutputSpec(20, 20, "png"),
        OutputSpec(160, 160, "webp"),
        OutputSpec(60, 60, "jpeg", fit="cover", quality=50),
    ]
    spec = workspace.job(name, outputs)
    small, large, medium = workspace.render(renderer, spec)
    assert (small.width, small.height, small.format) == (20, 10, "png")
    assert (large.width, large.height, large.format) == (160, 80, "webp")
    assert (medium.width, medium.height, medium.format) == (60, 60, "jpeg")
    assert [r.path for r in (small, large, medium)] == [
        f"{spec.job_id}/0.png",
        f"{spec.job_id}/1.webp",
        f"{spec.job_id}/2.jpg",
    ]
    for result in (small, large, medium):
        assert (workspace.out / result.path).stat().st_size == result.bytes
    assert close_to(pixel(workspace.out / small.path, 2, 2)[:3], g.RED[:3])


def test_render_in_process_matches_the_pool(renderer: Renderer, workspace: Workspace) -> None:
    """Given the same job, when rendered in-process and in the pool, then sizes and colours
    agree, progress is reported the same way, and a cancellation removes written outputs."""
    from dramatiq_preview.errors import JobCancelled
    from dramatiq_preview.rendering import render_in_process
    from dramatiq_preview.sources import open_source
    from dramatiq_preview.storage import destinations

    name = workspace.add("inproc/q.png", g.png(g.quadrants(80, 40)))
    spec = workspace.job(name, [OutputSpec(40, 40, "webp"), OutputSpec(20, 20, "png", "cover")])
    seen: list[int | None] = []
    with open_source(spec, workspace.settings) as source:
        local = render_in_process(
            spec, source, destinations(workspace.out, spec), checkpoint=seen.append
        )
    pooled = workspace.render(renderer, workspace.job(name, spec.outputs))
    assert [(r.width, r.height, r.format) for r in local] == [
        (r.width, r.height, r.format) for r in pooled
    ]
    assert seen == [30, 60, 90]
    assert close_to(pixel(workspace.out / local[1].path, 2, 2)[:3], g.RED[:3], 5)

    def cancel(percent: int | None) -> None:
        if percent is not None and percent > 30:
            raise JobCancelled("cancelled")

    cancelled = workspace.job(name, spec.outputs)
    with open_source(cancelled, workspace.settings) as source, pytest.raises(JobCancelled):
        render_in_process(
            cancelled, source, destinations(workspace.out, cancelled), checkpoint=cancel
        )
    assert workspace.files(cancelled) == []


def test_render_in_process_enforces_the_output_byte_cap(workspace: Workspace) -> None:
    """Issue 19: given PREVIEW_MAX_OUTPUT_BYTES one byte short of a job's outputs, when the
    job is rendered in-process, then it fails with output_too_large and keeps no output."""
    from dataclasses import replace

    from dramatiq_preview.config import get_settings, set_settings
    from dramatiq_preview.errors import PermanentError
    from dramatiq_preview.rendering import render_in_process
    from dramatiq_preview.sources import open_source
    from dramatiq_preview.storage import destinations

    name = workspace.add("inproc/noise.png", g.png(g.noise(48, 48)))
    outputs = [OutputSpec(48, 48, "png"), OutputSpec(32, 32, "webp")]
    spec = workspace.job(name, outputs)
    with open_source(spec, workspace.settings) as source:
        total = sum(
            r.bytes for r in render_in_process(spec, source, destinations(workspace.out, spec))
        )

    previous = get_settings()
    set_settings(replace(previous, max_output_bytes=total - 1))
    try:
        capped = workspace.job(name, outputs)
        seen: list[int | None] = []
        with (
            open_source(capped, workspace.settings) as source,
            pytest.raises(PermanentError) as caught,
        ):
            render_in_process(
                capped, source, destinations(workspace.out, capped), checkpoint=seen.append
            )
    finally:
        set_settings(previous)
    assert (caught.value.type, caught.value.retryable) == ("output_too_large", False)
    assert 60 in seen  # the first output was written before the cap was reached
    assert workspace.files(capped) == []
